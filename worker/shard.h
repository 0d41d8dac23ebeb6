/* shard.h - shard jobs: a job's samples (job.h, pf_job_sample) made in engine
 * batches and written as one WebDataset tar.
 *
 * The tar holds, per sample, in key order: {key}.json (the sample's prompts,
 * seed and meta, every setting as it ran, the model's URLs and content
 * digests, the numerics class, the image identity, whether the image came
 * from the result store, timings, the job, batch and shard ids), {key}.png
 * (the 8-bit RGB image, a PNG without text: the result store's bytes) and
 * {key}.txt (the prompt). Keys are the shard number in 6 digits and the
 * sample's index in 4 ("0000030017"), so they are unique across a dataset
 * and sorted within the tar. Members are regular files of mode 0644, owner 0,
 * mtime 0 (libarchive, POSIX ustar/pax).
 *
 * The tar is written to the work folder and uploaded whole when every sample
 * is in it (pf_s3_put_file: a single PUT, or a multipart upload completed
 * only at the end above the multipart threshold; file:// as a temporary file
 * renamed into place), so the object at output.url appears only complete. A
 * redelivered shard job (a worker killed mid-shard) starts again from the
 * first sample and takes every sample made before from the result store, so
 * it resumes rather than recomputes (with the store off it recomputes).
 * "running" status events say samples_done and samples_total after each
 * engine batch. */
#ifndef PF_SHARD_H
#define PF_SHARD_H

#include "execute.h"

/* Runs the shard job j (j->job.samples) on model (loaded, in use; j's checks
 * passed) and fills j's outcome: SUCCEEDED with one output (the tar's URL,
 * sha256, size, samples), or the failure of the first sample that failed
 * (its message names samples[i]). */
void pf_shard_run(pf_exec *x, pf_model *model, pf_exec_job *j);

/* The tar member key of sample index of shard (out: at least 11 bytes). */
void pf_shard_key(char *out, size_t n, int shard, int index);

#endif
