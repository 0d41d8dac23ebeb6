/* submit_shards.h - `perflow submit --shard-size N`: a dataset as shard jobs.
 *
 * The rows of the prompt file times the seeds of --seeds (a row's own seed
 * pins it) become samples, in file order and then seed order; every N
 * consecutive samples are one shard job (worker/shard.h) whose output is the
 * --output template with {shard} replaced by the shard's number, zero-padded
 * to 5 digits (more when there are more shards), so the same inputs always
 * give the same shard numbers and URLs. The batch id is the user's or "d" and
 * 12 hex digits of the SHA-256 of every shard's job; a shard's job id is
 * "<batch id>-<shard number>", so a re-submit of the same inputs is the same
 * jobs (answered from the workers' records), and a changed prompt list is a
 * new batch whose unchanged samples the result store serves.
 *
 * With --wait the shards are followed on the status topic to the end, with a
 * progress line of samples done, samples/s and an ETA, and a dataset
 * manifest is written beside the shards: the template's folder +
 * "manifest.jsonl", one JSON line per shard (shard, url, sha256, size,
 * samples, samples_from_store, model digests, settings, job id, state).
 * With Redis the shards go into the batch index as perflow submit's jobs do
 * (entries with "shard" and "samples", meta with "shards" and "samples"), so
 * that `perflow status --batch` counts shards and samples. */
#ifndef PF_SUBMIT_SHARDS_H
#define PF_SUBMIT_SHARDS_H

#include <jansson.h>
#include <stdint.h>

#include "error.h"
#include "submit_prompts.h"
#include "worker_config.h"

typedef struct pf_shard_plan_in {
    const pf_prompt_list *rows;
    const char *negative;     /* the command line's negative prompt, NULL: none */
    const char *source;       /* the prompt file's name, for messages */
    const json_t *tmpl;       /* the job every shard shares (settings, model, output), without prompts or seeds */
    uint64_t seed_lo, seed_hi;
    long shard_size;
    const char *output;       /* the template with {shard} */
    const char *batch_id;     /* the user's, or NULL */
    int wait, dry_run;
    double timeout;           /* --wait's limit in seconds, 0: none */
    const char *redis;        /* the batch index's Redis (perflow status --batch), NULL: none */
} pf_shard_plan_in;

/* Plans, checks (every shard job through the workers' parser), sends and
 * (with wait) follows the shards and writes the manifest. Returns the exit
 * status: 0 when everything was sent (and with wait, every shard
 * succeeded), 1 otherwise with a message printed. */
int pf_submit_shards(const pf_shard_plan_in *in, const pf_worker_config *cfg, const char *jobs_topic);

#endif
