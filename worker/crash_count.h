/* crash_count.h - how many workers a job has taken down, in Redis, so that a
 * job whose model kills its worker (out of memory, a crash in a decoder) is
 * not handed to every worker of the fleet in turn.
 *
 * While a job runs, "<prefix>:<job_id>:running" is set; it is deleted when the
 * job's batch ends (normally or not, as long as the process lives). A worker
 * that takes a job's lease and finds the marker still there takes the job over
 * from a worker that died while running it, and adds one to
 * "<prefix>:<job_id>:crashes". Once that count reaches max_crashes the job is
 * not run again: it fails with code "poison" and goes to the dead-letter
 * topic. Both keys live result_ttl_s. */
#ifndef PF_CRASH_COUNT_H
#define PF_CRASH_COUNT_H

#include "redis_conn.h"

#define PF_ERR_POISON "poison" /* failed: the job took down max_crashes workers */

/* Marks job_id running (ttl_s) and sets *crashes to its crash count, after
 * adding one when the marker was already there. One atomic script. */
int pf_crash_begin(pf_wredis *r, const char *job_id, long ttl_s, long long *crashes, pf_error *err);
/* Removes the running marker of job_id. */
int pf_crash_end(pf_wredis *r, const char *job_id, pf_error *err);

#endif
