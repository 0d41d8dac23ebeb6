/* submit_manifest.h - the manifest of a batch (`perflow submit --manifest`,
 * `perflow status --batch ID --manifest`): one JSON object per line and per
 * job, in submission order:
 *
 *   {"batch_id", "job_id", "prompt", "negative_prompt", "seed", "line" (the
 *    prompt file's line, when there was a file), "settings" (everything else
 *    the job asked for: model, size, steps, guidance, refine, output
 *    template, ...), "state" (succeeded, failed, rejected, cancelled, or
 *    submitted / running when the batch had not finished), "outputs" (each
 *    image's url, sha256, size, index, seed, stage), "error" (code, message,
 *    field)}
 *
 * written to a local file (put in place whole: a reader never sees half of
 * it) or uploaded to s3://BUCKET/KEY with the storage layer's S3 client
 * (credentials and endpoint from the environment, as `perflow put`). */
#ifndef PF_SUBMIT_MANIFEST_H
#define PF_SUBMIT_MANIFEST_H

#include <jansson.h>
#include <stdint.h>

#include "error.h"

typedef struct pf_manifest pf_manifest;

/* Starts a manifest for dest (a path, or s3://BUCKET/KEY): lines go to a
 * temporary file beside dest (in $TMPDIR for S3). Error when dest's folder
 * cannot be written or the S3 destination is malformed. */
int pf_manifest_open(pf_manifest **out, const char *dest, pf_error *err);
/* Appends one line: the job's fields, and from status (a terminal status
 * event or record, or NULL) its outputs and error. state NULL takes status's
 * state. settings and status are borrowed. */
int pf_manifest_add(pf_manifest *m, const char *batch_id, const char *job_id, const char *prompt,
                    const char *negative_prompt, uint64_t seed, long line, const json_t *settings,
                    const json_t *status, const char *state, pf_error *err);
/* commit 1: puts the file in place (or uploads it); commit 0: throws it
 * away. Frees m either way (NULL is fine). Error when writing, renaming or
 * uploading fails; the destination is then unchanged. */
int pf_manifest_close(pf_manifest *m, int commit, pf_error *err);
/* Lines added so far. */
long pf_manifest_lines(const pf_manifest *m);

#endif
