/* result.h - the idempotency record: a job's terminal status, kept in Redis
 * under "<prefix>:<job_id>:result" for result_ttl_s. A redelivered job whose
 * record exists is answered by re-posting that status, without running again.
 *
 * Recorded: succeeded, cancelled, and final failures. Not recorded: rejected
 * jobs (a corrected job may be resubmitted under the same id) and retryable
 * failures (the next attempt must run).
 *
 * A failure that sent the job to the dead-letter topic keeps the dead letter
 * beside it, "<prefix>:<job_id>:dead_letter" (its headers and payload, as the
 * worker wrote them), written with the result in one step: a worker that dies
 * after recording but before the broker acknowledged the status and dead
 * letter leaves both to be re-posted by the redelivery (a consumer of the
 * dead-letter topic may see one twice, never none). A separate key, so that
 * the result stays the status `perflow status` shows. */
#ifndef PF_RESULT_H
#define PF_RESULT_H

#include "redis_conn.h"

/* *json receives the recorded status (malloc'd, caller frees) or NULL when the
 * job has none; *dead_letter (when dead_letter is not NULL) the dead letter
 * recorded with it, or NULL. Error when Redis cannot be asked. */
int pf_result_get(pf_wredis *r, const char *job_id, char **json, char **dead_letter, pf_error *err);
/* Records json as the job's terminal status for ttl_s seconds, with the dead
 * letter sent with it (NULL: none; an older one is removed). */
int pf_result_put(pf_wredis *r, const char *job_id, const char *json, const char *dead_letter, long ttl_s,
                  pf_error *err);

/* The job's latest state for people and `perflow status` (never read by a
 * worker): "<prefix>:<job_id>:state" = a status event (accepted, rejected,
 * failed and re-enqueued, or terminal), kept ttl_s. Unlike the result it is
 * written for rejections too, which must not block a corrected resubmission. */
int pf_state_put(pf_wredis *r, const char *job_id, const char *json, long ttl_s, pf_error *err);

/* Answered messages: "<prefix>:<job_id>:acked", a set of "topic/partition/offset"
 * of the job's messages whose end (terminal status, re-enqueue or dead letter)
 * the broker acknowledged, kept ttl_s. A message delivered again because its
 * offset was not committed yet (the worker was killed in between) is found
 * here and ends without a second terminal event; a new message for the same
 * job (a resubmission) is not, and gets the recorded status replayed. */
int pf_answered_add(pf_wredis *r, const char *job_id, const char *where, long ttl_s, pf_error *err);
/* *yes = 1 when where is among the job's answered messages. */
int pf_answered_has(pf_wredis *r, const char *job_id, const char *where, int *yes, pf_error *err);

#endif
