/* model_route.h - a job's model identity and where perflow submit routes it.
 *
 * Warm-model routing (issue 21, item 4). A worker that has a model loaded
 * runs that model's jobs without loading anything, so perflow submit sends
 * a model's jobs to a bounded set of partitions of the jobs topic (which
 * the consumer group hands to a bounded set of workers), and a worker
 * prefers, among the jobs it holds, those of a model it has loaded
 * (worker/prefer.c).
 *
 * The identity is everything the worker fuses into the weights it keeps
 * loaded, the worker's own model-cache key: base, configs, delta, fp16 and
 * each LoRA with its scale, each source as the URL and sha256 the job names
 * (not the bytes behind them: submit never fetches a model).
 *
 * The rule: the n-th job (0-based) of a model goes to partition
 * (start + n mod spread) mod partitions, where start is the first 8 hex
 * digits of the identity's SHA-256 read as a number; its message key is
 * "<identity sha256>/<n mod spread>". So a model's jobs take min(spread,
 * partitions) consecutive partitions in turn, and the next model starts
 * wherever its digest says. spread 1 sends a model to one partition (one
 * worker: a single-model batch would use one worker of the fleet); spread
 * >= partitions uses every partition, as unkeyed jobs do. ops/README.md
 * says how the default was chosen. */
#ifndef PF_MODEL_ROUTE_H
#define PF_MODEL_ROUTE_H

#include "digest.h"
#include "job.h"

/* perflow submit's default --route-spread: partitions per model (ops/README.md). */
#define PF_ROUTE_SPREAD_DEFAULT 2
#define PF_ROUTE_SPREAD_MAX 1024
/* Room for a routing key: 64 hex digits, '/', the index, the NUL. */
#define PF_ROUTE_KEY_MAX (PF_SHA256_HEX + 8)

/* The model identity as canonical JSON (sorted keys; LoRA scales as the
 * floats the engine gets, printed exactly by jansson): malloc'd, caller frees. */
char *pf_route_model_text(const pf_job *job);
/* The SHA-256 (hex) of pf_route_model_text. */
void pf_route_model_id(char out[PF_SHA256_HEX], const pf_job *job);
/* The partition of a model's n-th job (n >= 0, spread >= 1, partitions >= 1)
 * and its message key (key NULL: not wanted). */
int pf_route_partition(char key[PF_ROUTE_KEY_MAX], const char *model_id, long n, int spread, int partitions);

#endif
