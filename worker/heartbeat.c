/* heartbeat.c - what every wait of the worker keeps going (heartbeat.h). */
#include "heartbeat.h"

#include <stdio.h>

#include "backoff.h"
#include "lease.h"
#include "log.h"
#include "notify.h"

#define HEALTH_EVERY_MS 5000 /* how often /readyz's broker and Redis checks run (metrics on) */

/* Watches the signals: the first starts the drain, the second (or the end of
 * the grace period while a job runs) abandons. */
static void watch_signals(pf_worker *w) {
    int n = (int)pf_worker_signals;
    if (n >= 1 && !w->draining) {
        w->draining = 1;
        w->drain_deadline = pf_now_ms() + w->cfg->drain_grace_s * 1000;
        pf_notify_stopping();
        pf_metrics_state(PF_WSTATE_DRAINING);
        pf_wlog(PF_LOG_INFO, "worker.draining", NULL, json_pack("{s:I}", "grace_s", (json_int_t)w->cfg->drain_grace_s),
                "stopping: no new jobs; the running job has %ld s to finish", w->cfg->drain_grace_s);
    }
    if (!atomic_load(&w->abandon) && (n >= 2 || (w->draining && w->nbatch && pf_now_ms() > w->drain_deadline))) {
        atomic_store(&w->abandon, 1);
        pf_wlog(PF_LOG_WARN, "worker.abandon", NULL, NULL, "%s: abandoning the running job",
                n >= 2 ? "second signal" : "drain grace period over");
    }
}

/* What /readyz reports: whether a broker and Redis answer the loop now.
 * Checked from the loop (which owns both connections) every few seconds,
 * only when metrics are served. */
void pf_beat_health(pf_worker *w) {
    long long now = pf_now_ms();
    if (!w->metrics || (w->last_health && now - w->last_health < HEALTH_EVERY_MS)) return;
    w->last_health = now;
    pf_error ke = {0}, re = {0};
    int kafka = !pf_producer_reachable(w->producer, 1000, &ke);
    redisReply *rep = pf_wredis_cmd(w->redis, &re, "PING");
    if (rep) freeReplyObject(rep);
    char why[sizeof ke.msg + sizeof re.msg + 4];
    snprintf(why, sizeof why, "%s%s%s", ke.msg, ke.msg[0] && !rep ? "; " : "", rep ? "" : re.msg);
    pf_metrics_health(kafka, rep != NULL, why);
}

/* Renews the leases of the batch in flight every third of their TTL: for
 * as long as the batch is here, from its admission through the run to the
 * end of pf_ans_finish(), whose durable sends may wait on a broker far
 * longer than a TTL (a lease that lapsed there would let another worker take
 * the job over while its status is on the way). */
static void renew_leases(pf_worker *w) {
    const pf_worker_config *cfg = w->cfg;
    long long now = pf_now_ms();
    if (!w->nbatch || now - w->last_renew < cfg->lease_ttl_ms / 3) return;
    w->last_renew = now;
    for (int i = 0; i < w->nbatch; i++) {
        int held = 1;
        pf_error e;
        const char *id = w->jobs[i].job.job_id;
        if (pf_lease_renew(w->redis, id, w->token, cfg->lease_ttl_ms, &held, &e))
            pf_wlog(PF_LOG_WARN, "redis.failed", id, NULL, "renewing the lease: %s", e.msg);
        else if (!held)
            pf_wlog(PF_LOG_WARN, "job.lease_lost", id, NULL,
                    "the lease expired and may have been taken; the job's output keys are the same either way");
    }
}

void pf_beat_tick(pf_worker *w, int ms) {
    pf_consumer_serve(w->consumer);
    pf_producer_poll(w->producer, ms);
    renew_leases(w);
    pf_notify_watchdog();
    watch_signals(w);
    pf_beat_health(w);
}

int pf_beat_wait(pf_worker *w, long ms, int stop_on_drain) {
    for (long long until = pf_now_ms() + ms; pf_now_ms() < until;) {
        pf_beat_tick(w, 50);
        if (atomic_load(&w->abandon) || (stop_on_drain && w->draining)) return 1;
    }
    return 0;
}

int pf_beat_redis_retry(pf_worker *w, const char *job_id, const char *what, int attempt, const pf_error *e) {
    pf_wlog(PF_LOG_WARN, "redis.failed", job_id, NULL, "%s: %s", what, e->msg);
    return pf_beat_wait(w, pf_backoff_ms(attempt, w->cfg->retry_base_ms, w->cfg->retry_max_ms), 1) ? -1 : 0;
}
