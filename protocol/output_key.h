/* output_key.h - object keys (or destinations) for a job's results, from a
 * template such as "s3://outputs/{job_id}/{index}-{seed}.png".
 *
 * The same job gives the same keys, so a job that is retried or delivered
 * twice overwrites its own results instead of adding new ones. Job ids come
 * from the job queue and are hostile: only [A-Za-z0-9._-] is accepted, not
 * starting with '.', so a key never climbs out of its prefix on a file://
 * destination. */
#ifndef PF_OUTPUT_KEY_H
#define PF_OUTPUT_KEY_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* 1 when s is a usable job id: 1 to 128 of [A-Za-z0-9._-], not starting
 * with '.' (so it is one safe path segment of an output key). */
int pf_job_id_ok(const char *s);

/* Expands {job_id}, {index} and {seed} in tmpl into out (n bytes). Any other
 * '{' or '}' is an error, as is an invalid job id (1 to 128 bytes), a
 * negative index or a result that does not fit. */
int pf_output_key(char *out, size_t n, const char *tmpl, const char *job_id, int index, uint64_t seed, pf_error *err);

/* Checks a destination (an expanded template) against the operator's allow
 * lists: a file:///PATH only under file_root (a folder), an s3://BUCKET/KEY
 * only under one entry of s3_prefixes (comma-separated "bucket" or
 * "bucket/prefix" entries, each a folder: "renders/out" allows
 * s3://renders/out/... but not s3://renders/outside). A NULL or empty list
 * refuses its scheme; the error names the setting to set (file_output_root,
 * s3_output_prefixes), and any other scheme is refused. Jobs are hostile: a
 * job may otherwise overwrite any object the worker's credentials can write,
 * the model bucket included. */
int pf_output_allowed(const char *dest, const char *file_root, const char *s3_prefixes, pf_error *err);

#endif
