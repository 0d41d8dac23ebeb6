/* submit_redis.h - what `perflow submit` and `perflow status` read and write
 * in the workers' Redis: the job records the workers keep (result.h:
 * "<job_prefix>:<job_id>:result|state|lease|cancel") and the batch index that
 * submit keeps so that a batch can be listed later:
 *
 *   <batch_prefix>:<batch_id>:jobs   hash: job_id -> {"i": position, "prompt",
 *                                    "negative_prompt", "seed", "line"}
 *   <batch_prefix>:<batch_id>:meta   {"batch_id", "settings", "jobs", "submitted"}
 *
 * both kept as long as the workers keep results (ttl_s). Many keys go in one
 * command (MGET, HSET) of at most PF_SR_CHUNK keys. */
#ifndef PF_SUBMIT_REDIS_H
#define PF_SUBMIT_REDIS_H

#include <jansson.h>

#include "redis_conn.h"

#define PF_SR_CHUNK 500
#define PF_BATCH_PREFIX "pf:batch" /* the batch index's keys */

/* out[i] receives the value of "<job_prefix>:<ids[i]>:<what>" parsed as JSON
 * (NULL when absent or not JSON; caller decrefs), for i < n. */
int pf_sr_job_values(pf_wredis *r, const char *const *ids, long n, const char *what, json_t **out, pf_error *err);
/* exists[i] = 1 when "<job_prefix>:<ids[i]>:<what>" exists. */
int pf_sr_job_exists(pf_wredis *r, const char *const *ids, long n, const char *what, int *exists, pf_error *err);

/* Adds the n entries (entries[i] for ids[i]) to the batch index and sets its
 * meta; both expire after ttl_s. */
int pf_sr_index_put(pf_wredis *r, const char *batch_prefix, const char *batch_id, const char *const *ids,
                    json_t *const *entries, long n, const json_t *meta, long ttl_s, pf_error *err);
/* The batch's meta (NULL when the batch is unknown: *meta NULL, no error) and
 * its entries: a JSON object job_id -> entry. */
int pf_sr_index_get(pf_wredis *r, const char *batch_prefix, const char *batch_id, json_t **meta, json_t **entries,
                    pf_error *err);

#endif
