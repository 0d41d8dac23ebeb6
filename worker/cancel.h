/* cancel.h - cancel requests. A client cancels a job by setting the Redis key
 * "<prefix>:<job_id>:cancel" (any value; give it a TTL, e.g.
 * `SET pf:job:J:cancel 1 EX 86400`). The worker reads it when the job arrives
 * (the job ends "cancelled" without running) and, while the job runs, every
 * cancel_poll_ms: the engine stops before its next step and nothing is
 * uploaded. A key rather than a control topic because the request must be seen
 * by whichever worker holds the job, now or after a redelivery: a key is read
 * when needed, while a broadcast topic would have every worker read and
 * remember every cancel ever sent. */
#ifndef PF_CANCEL_H
#define PF_CANCEL_H

#include "redis_conn.h"

/* *yes = 1 when a cancel request exists for job_id. */
int pf_cancel_requested(pf_wredis *r, const char *job_id, int *yes, pf_error *err);

#endif
