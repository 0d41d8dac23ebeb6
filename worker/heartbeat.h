/* heartbeat.h - what every wait of the worker's main thread keeps going: the
 * consumer group and the producer served, the batch's leases renewed, the
 * systemd watchdog fed, the signals watched (drain, abandon) and, with
 * metrics on, /readyz's broker and Redis checks. The loop never waits any
 * other way, so none of these lapses while it waits on a job, a broker or
 * Redis. */
#ifndef PF_HEARTBEAT_H
#define PF_HEARTBEAT_H

#include "worker_state.h"

/* Keeps the group, the producer, the batch's leases and systemd served for about ms. */
void pf_beat_tick(pf_worker *w, int ms);
/* Sleeps ms while ticking; returns 1 when the worker must give up waiting
 * (abandon, or draining when stop_on_drain). */
int pf_beat_wait(pf_worker *w, long ms, int stop_on_drain);
/* After a failed Redis read (e) for job_id: logs it and waits out the backoff
 * of attempt; -1 when the worker must stop waiting (abandon or drain). */
int pf_beat_redis_retry(pf_worker *w, const char *job_id, const char *what, int attempt, const pf_error *e);
/* Runs /readyz's broker and Redis checks if they are due (metrics on only). */
void pf_beat_health(pf_worker *w);

#endif
