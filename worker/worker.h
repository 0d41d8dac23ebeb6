/* worker.h - the job loop: from a Kafka message to a terminal status and a
 * stored offset, at least once, with nothing produced twice that a client
 * could mistake for new work.
 *
 * For every message, in order:
 *   answered before (result.h)        -> offset committed, nothing sent: it was
 *                                        delivered again only because the worker
 *                                        that answered it died before its commit
 *   not a job, no usable id           -> dead-letter topic
 *   not a job, its key is a job id    -> "rejected" for that id (why it is not a
 *                                        job) + dead-letter topic
 *   invalid or unsupported job        -> "rejected" (naming the field) + dead-letter topic
 *   a terminal result is recorded     -> that status re-posted ("replayed": true), with the dead
 *                                        letter recorded with it, nothing run (a resubmission:
 *                                        another message for the same job; or a worker died
 *                                        before the broker acknowledged the first post)
 *   a cancel request exists           -> "cancelled"
 *   the deadline passed               -> "failed", code "deadline"
 *   another worker holds the lease    -> wait (serving the group) until it finishes or its lease expires
 *   otherwise                         -> lease taken, "accepted", run on the job thread
 * and after a run: "succeeded" | "cancelled" | "failed" (deadline, permanent:
 * + dead letter) | transient failure: re-enqueued with attempt + 1 and
 * "failed" with "retryable": true, or past max_attempts "failed" + dead letter.
 * Every send that ends a message (terminal status, re-enqueue, dead letter) is
 * acknowledged by the broker (acks=all) before the message is noted as
 * answered in Redis and its offset stored and committed (at once, not at the
 * next auto-commit); terminal results are recorded in Redis before their
 * status is sent. So a job's terminal event is posted once in effect: twice
 * only when a worker dies between the broker's acknowledgement and the
 * answered note (a Redis round trip), and then the second carries
 * "replayed": true.
 *
 * While a job runs the loop pauses every partition and keeps polling (group
 * membership, max.poll.interval.ms), renews the job's lease, reads its cancel
 * flag, pings the systemd watchdog and watches the signals. The lease is
 * renewed until the job is released, also while its end is being sent (a
 * broker may hold that send for longer than the lease's TTL).
 *
 * Signals (pf_worker_signals counts them): the first stops fetching, lets the
 * running job finish within drain_grace_s, stores its offset and leaves the
 * group; the second (or the grace running out) abandons the job: no status, no
 * offset, lease released, so another worker redoes it. */
#ifndef PF_WORKER_H
#define PF_WORKER_H

#include <signal.h>

#include "backend.h"
#include "cache.h"
#include "worker_config.h"
#include "credentials.h"
#include "s3.h"

/* Incremented by the process's SIGTERM / SIGINT handler. */
extern volatile sig_atomic_t pf_worker_signals;
/* Set while a batch runs once every job of it is cancelled, past its deadline
 * or past max_job_seconds (checked every cancel_poll_ms), cleared when a batch
 * starts. main hands it to the cache (pf_cache_config.cancel), so such jobs
 * stop a running download at once; the partial file stays for a resume. */
extern volatile int pf_worker_download_stop;

typedef struct pf_worker pf_worker;

/* Connects to Kafka and Redis with everything the loop needs; the cache, the
 * backend, the S3 settings and the credentials are borrowed and must outlive
 * the worker. cfg must have worker_id and work_dir filled. */
int pf_worker_open(pf_worker **out, const pf_worker_config *cfg, pf_cache *cache, pf_backend *be,
                   const pf_s3_config *s3, const pf_credentials *cred, pf_error *err);
/* Runs until drained (a signal, or one job with cfg->once). Returns 0 after a
 * clean drain, 1 when a running job had to be abandoned. */
int pf_worker_run(pf_worker *w);
/* Leaves the group (committing stored offsets) and frees the worker. */
void pf_worker_close(pf_worker *w);

#endif
