/* outputs.h - the last step of a job on the job thread (execute.h): its images
 * written as PNG files, each with its provenance text (provenance.h: the
 * resolved request, the job's sources by URL), and uploaded to the
 * destinations its output template names, with retries. */
#ifndef PF_OUTPUTS_H
#define PF_OUTPUTS_H

#include <stdint.h>

#include "execute.h"

/* One stage's images of a job. */
typedef struct pf_image_set {
    const char *stage;  /* PF_STAGE_BASE, PF_STAGE_REFINED */
    const uint8_t *rgb; /* job->num_images images of w x h, 8-bit RGB */
    int w, h;
} pf_image_set;

/* Posts "uploading", then writes the job's images of each set in turn and
 * uploads them (cfg->retries tries each, backing off); fills j->outputs and
 * the upload time, and ends the job: succeeded, failed (upload, retryable),
 * or rejected when a destination is not allowed (field output.url). */
void pf_exec_store(pf_exec *x, pf_exec_job *j, const pf_image_set *sets, int nsets);

#endif
