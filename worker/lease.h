/* lease.h - a running job's lease in Redis, so that a duplicate delivery on
 * another worker waits instead of running the job a second time at once.
 *
 * The lease is "<prefix>:<job_id>:lease" = the holder's token, SET NX PX with a
 * TTL and renewed every third of it from the moment the job is taken until
 * its end is acknowledged and the lease released. A worker that is
 * killed stops renewing; its lease expires and the redelivered job runs again
 * elsewhere, writing the same output keys (output_key.h). Renewal and release
 * are compare-and-set scripts, so a worker never extends or deletes a lease
 * that expired and was taken over. */
#ifndef PF_LEASE_H
#define PF_LEASE_H

#include "redis_conn.h"

/* Tries to take the lease: *got = 1 when token now holds it; else 0 and
 * holder (n bytes) receives the current holder's token ("" if it vanished). */
int pf_lease_try(pf_wredis *r, const char *job_id, const char *token, long ttl_ms, int *got, char *holder, size_t n,
                 pf_error *err);
/* Extends the lease if token holds it; *held = 0 when it was lost. */
int pf_lease_renew(pf_wredis *r, const char *job_id, const char *token, long ttl_ms, int *held, pf_error *err);
/* Deletes the lease if token holds it. */
int pf_lease_release(pf_wredis *r, const char *job_id, const char *token, pf_error *err);

#endif
