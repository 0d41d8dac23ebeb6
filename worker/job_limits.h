/* job_limits.h - the operator's bounds on what one job may cost: pixels, steps,
 * images and seconds (worker settings max_pixels, max_steps, max_images,
 * max_job_seconds). The schema's compile-time caps (job.h) bound what any
 * worker parses; these bound what this worker runs, so a fleet of small GPUs
 * can refuse a job a large one would take. A job over a limit is rejected
 * ("unsupported") naming the field and the limit; a job that runs past
 * max_job_seconds fails with code "timeout" (execute.c). */
#ifndef PF_JOB_LIMITS_H
#define PF_JOB_LIMITS_H

#include <stddef.h>

#include "error.h"
#include "job.h"
#include "worker_config.h"

#define PF_ERR_TIMEOUT "timeout" /* failed: the job ran past max_job_seconds */

/* Checks job against cfg's limits. Sizes still 0 (the family's default,
 * filled once the model is loaded) are not checked; call again after. Error
 * names the field in field (n bytes) and the limit in err. */
int pf_job_limits_check(const pf_job *job, const pf_worker_config *cfg, char *field, size_t n, pf_error *err);

#endif
