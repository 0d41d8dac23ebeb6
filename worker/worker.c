/* worker.c - the job loop (worker.h). */
#include "worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backoff.h"
#include "cancel.h"
#include "consumer.h"
#include "crash_count.h"
#include "execute.h"
#include "image_identity.h"
#include "job.h"
#include "job_limits.h"
#include "lease.h"
#include "log.h"
#include "metrics.h"
#include "models.h"
#include "notify.h"
#include "output_key.h"
#include "producer.h"
#include "redis_conn.h"
#include "result.h"
#include "result_store.h"
#include "status.h"

#define MAX_BATCH 64
#define LOOKAHEAD 16 /* messages taken ahead of the running job */
#define HEALTH_EVERY_MS 5000 /* how often /readyz's broker and Redis checks run (metrics on) */

volatile sig_atomic_t pf_worker_signals;
volatile int pf_worker_download_stop;

struct pf_worker {
    const pf_worker_config *cfg;
    pf_consumer *consumer;
    pf_producer *producer;
    pf_wredis *redis;
    pf_models *models;
    pf_exec exec;
    pf_backend *be;
    pf_metrics_server *metrics; /* NULL: metrics_listen not set */
    long long last_health;      /* monotonic ms of the last readiness check */
    long long last_renew;       /* monotonic ms of the batch's last lease renewal */
    atomic_int abandon;
    char token[300];           /* this process's lease token */
    int draining;
    long long drain_deadline;  /* monotonic ms */
    int abandoned;             /* a job was given up (exit status 1) */
    int handled;               /* messages brought to an end, for --once */
    /* The batch in flight: its messages (owned here until they are ended or
     * abandoned) and its jobs, contiguous for pf_exec_batch. */
    rd_kafka_message_t *msgs[MAX_BATCH];
    pf_exec_job jobs[MAX_BATCH];
    int nbatch;
    atomic_int thread_done;
};

/* ---- the heartbeat of every wait --------------------------------------- */

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
static void check_health(pf_worker *w) {
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
 * end of finish(), whose durable sends may wait on a broker far longer than
 * a TTL (a lease that lapsed there would let another worker take the job
 * over while its status is on the way). */
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

/* Keeps the group, the producer, the batch's leases and systemd served for about ms. */
static void tick(pf_worker *w, int ms) {
    pf_consumer_serve(w->consumer);
    pf_producer_poll(w->producer, ms);
    renew_leases(w);
    pf_notify_watchdog();
    watch_signals(w);
    check_health(w);
}

/* Sleeps ms while ticking; returns 1 when the worker must give up waiting
 * (abandon, or draining when stop_on_drain). */
static int wait_ticking(pf_worker *w, long ms, int stop_on_drain) {
    for (long long until = pf_now_ms() + ms; pf_now_ms() < until;) {
        tick(w, 50);
        if (atomic_load(&w->abandon) || (stop_on_drain && w->draining)) return 1;
    }
    return 0;
}

/* ---- durable sends ------------------------------------------------------ */

typedef struct send_req {
    const char *topic, *key;
    const char *value;
    size_t len;
    const pf_header *headers;
    int nheaders;
} send_req;

/* Sends every request and waits until the broker acknowledged all of them,
 * retrying failed ones with backoff (the broker may be away for a while).
 * Returns -1 only when the job is abandoned meanwhile. */
static int send_durable(pf_worker *w, const send_req *reqs, int n) {
    pf_delivery *d[4] = {0};
    int ok[4] = {0};
    PF_CHECK(n <= 4);
    for (int attempt = 1;; attempt++) {
        for (int i = 0; i < n; i++) {
            if (ok[i] || d[i]) continue;
            pf_error e;
            if (pf_producer_send(w->producer, reqs[i].topic, reqs[i].key, reqs[i].value, reqs[i].len, reqs[i].headers,
                                 reqs[i].nheaders, &d[i], &e))
                pf_wlog(PF_LOG_WARN, "kafka.send_failed", reqs[i].key, NULL, "%s", e.msg);
        }
        for (;;) { /* wait for every report */
            int pending = 0;
            for (int i = 0; i < n; i++) pending += d[i] && !d[i]->done;
            if (!pending) break;
            tick(w, 50);
            if (atomic_load(&w->abandon)) {
                for (int i = 0; i < n; i++) pf_delivery_release(w->producer, d[i]);
                return -1;
            }
        }
        int all = 1, fatal = 0;
        for (int i = 0; i < n; i++) {
            if (ok[i]) continue;
            if (d[i] && !d[i]->failed) {
                ok[i] = 1;
            } else {
                all = 0;
                if (d[i]) {
                    fatal |= d[i]->fatal;
                    pf_wlog(PF_LOG_WARN, "kafka.delivery_failed", reqs[i].key,
                            json_pack("{s:s, s:i}", "topic", reqs[i].topic, "attempt", attempt), "%s", d[i]->error);
                }
            }
            pf_delivery_release(w->producer, d[i]);
            d[i] = NULL;
        }
        if (all) return 0;
        char why[512];
        if (fatal || pf_producer_fatal(w->producer, why, sizeof why)) {
            /* An idempotent producer that hit a fatal error refuses everything: start a new one. */
            pf_wlog(PF_LOG_ERROR, "kafka.producer_reset", NULL, NULL, "the producer failed for good; opening a new one");
            pf_producer *np;
            pf_error e;
            if (!pf_producer_open(&np, w->cfg, &e)) {
                pf_producer_close(w->producer, 0);
                w->producer = np;
                w->exec.producer = np;
            }
        }
        if (wait_ticking(w, pf_backoff_ms(attempt, w->cfg->retry_base_ms, w->cfg->retry_max_ms), 0)) return -1;
    }
}

/* A dead letter to send with a status: the message's payload and its headers. */
typedef struct dead_letter {
    const pf_header *h;
    int n;
    const void *payload;
    size_t len;
} dead_letter;

/* A status event, durably, with its dead letter (dl NULL: none) or its
 * re-enqueued job (requeue NULL: none). Returns -1 when abandoned. */
static int send_status(pf_worker *w, const json_t *st, const dead_letter *dl, const char *requeue,
                       const char *requeue_topic) {
    char *s = pf_status_dump(st);
    const char *job_id = json_string_value(json_object_get(st, "job_id"));
    send_req r[3];
    int n = 0;
    r[n++] = (send_req){w->cfg->status_topic, job_id, s, strlen(s), NULL, 0};
    if (dl) r[n++] = (send_req){w->cfg->dead_letter_topic, job_id, dl->payload, dl->len, dl->h, dl->n};
    if (requeue) r[n++] = (send_req){requeue_topic, job_id, requeue, strlen(requeue), NULL, 0};
    int rc = send_durable(w, r, n);
    free(s);
    return rc;
}

/* ---- Redis with retries -------------------------------------------------- */

/* The recorded form of a dead letter (result.h): {"headers": [[name, value],
 * ...], "payload": the message as text}. The payload is left out when it is
 * not UTF-8 (a job's never is: it parsed as JSON); the redelivered message,
 * which has the same bytes, stands in for it then. malloc'd. */
static char *dead_letter_dump(const dead_letter *dl) {
    json_t *h = json_array();
    for (int i = 0; i < dl->n; i++) json_array_append_new(h, json_pack("[s, s]", dl->h[i].name, dl->h[i].value));
    json_t *o = json_pack("{s:o}", "headers", h);
    json_t *p = json_stringn(dl->payload, dl->len);
    if (p) json_object_set_new(o, "payload", p);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* Records a terminal result and the dead letter sent with it (dl NULL:
 * none), retrying while Redis is away. -1 when abandoned. */
static int record_result(pf_worker *w, const char *job_id, const json_t *st, const dead_letter *dl) {
    char *s = pf_status_dump(st);
    char *d = dl ? dead_letter_dump(dl) : NULL;
    int rc = 0;
    for (int attempt = 1;; attempt++) {
        pf_error e;
        if (!pf_result_put(w->redis, job_id, s, d, w->cfg->result_ttl_s, &e)) break;
        pf_wlog(PF_LOG_WARN, "redis.failed", job_id, NULL, "recording the result: %s", e.msg);
        if (wait_ticking(w, pf_backoff_ms(attempt, w->cfg->retry_base_ms, w->cfg->retry_max_ms), 0)) {
            rc = -1;
            break;
        }
    }
    free(d);
    free(s);
    return rc;
}

/* Notes a job's latest state for `perflow status` (result.h): best effort,
 * once, as nothing depends on it. */
static void note_state(pf_worker *w, const char *job_id, const json_t *st) {
    char *s = pf_status_dump(st);
    pf_error e;
    if (pf_state_put(w->redis, job_id, s, w->cfg->result_ttl_s, &e))
        pf_wlog(PF_LOG_DEBUG, "redis.failed", job_id, NULL, "noting the state: %s", e.msg);
    free(s);
}

/* ---- ending a message ---------------------------------------------------- */

/* "topic/partition/offset": a message's place, as the answered set keeps it. */
static void message_place(char *out, size_t n, const rd_kafka_message_t *m) {
    snprintf(out, n, "%s/%d/%lld", rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset);
}

/* Called once everything that ends m is acknowledged: notes m as answered
 * for job_id (NULL: a message without a job), stores its offset and commits
 * it at once. The note comes first: a worker killed between the
 * acknowledgement and the commit leaves the message to be delivered again,
 * and the note is what lets that delivery end without a second terminal
 * event (result.h). It is best effort: without it the redelivery replays
 * the recorded status, as before. */
static void store_offset(pf_worker *w, const rd_kafka_message_t *m, const char *job_id) {
    pf_error e;
    if (job_id) {
        char where[300];
        message_place(where, sizeof where, m);
        if (pf_answered_add(w->redis, job_id, where, w->cfg->result_ttl_s, &e))
            pf_wlog(PF_LOG_WARN, "redis.failed", job_id, NULL, "noting the message as answered: %s", e.msg);
    }
    if (pf_consumer_store(w->consumer, m, &e))
        pf_wlog(PF_LOG_WARN, "kafka.store_failed", job_id, NULL, "%s", e.msg);
    else
        pf_consumer_commit(w->consumer, m);
    w->handled++;
}

/* 1 when m itself was answered before (its offset was not committed in
 * time): nothing is sent again. first: m heads the batch, and is ended here
 * (offset stored and committed); otherwise it is only reported. Redis being
 * away counts as "not answered": the usual checks follow and wait for it. */
static int already_answered(pf_worker *w, const rd_kafka_message_t *m, const char *job_id, int first) {
    char where[300];
    int yes = 0;
    pf_error e;
    message_place(where, sizeof where, m);
    if (pf_answered_has(w->redis, job_id, where, &yes, &e) || !yes) return 0;
    if (first) {
        pf_wlog(PF_LOG_INFO, "job.redelivered", job_id,
                json_pack("{s:s, s:i, s:I}", "topic", rd_kafka_topic_name(m->rkt), "partition", (int)m->partition,
                          "offset", (json_int_t)m->offset),
                "this message was answered before its offset was committed: committing it, sending nothing");
        w->handled++;
        pf_error se;
        if (pf_consumer_store(w->consumer, m, &se)) pf_wlog(PF_LOG_WARN, "kafka.store_failed", job_id, NULL, "%s", se.msg);
        else pf_consumer_commit(w->consumer, m);
    }
    return 1;
}

/* The dead-letter headers of m: where it came from and why it is here. */
typedef struct dlq_info {
    pf_header h[9];
    char partition[16], offset[32], attempt[16];
} dlq_info;

static int dlq_headers(dlq_info *d, const pf_worker *w, const rd_kafka_message_t *m, const char *job_id, int attempt,
                       const char *code, const char *message, const char *field) {
    snprintf(d->partition, sizeof d->partition, "%d", (int)m->partition);
    snprintf(d->offset, sizeof d->offset, "%lld", (long long)m->offset);
    snprintf(d->attempt, sizeof d->attempt, "%d", attempt);
    int n = 0;
    d->h[n++] = (pf_header){"perflow-error-code", code};
    d->h[n++] = (pf_header){"perflow-error-message", message};
    d->h[n++] = (pf_header){"perflow-source-topic", rd_kafka_topic_name(m->rkt)};
    d->h[n++] = (pf_header){"perflow-source-partition", d->partition};
    d->h[n++] = (pf_header){"perflow-source-offset", d->offset};
    d->h[n++] = (pf_header){"perflow-attempt", d->attempt};
    d->h[n++] = (pf_header){"perflow-worker-id", w->cfg->worker_id};
    if (job_id && *job_id) d->h[n++] = (pf_header){"perflow-job-id", job_id};
    if (field && *field) d->h[n++] = (pf_header){"perflow-error-field", field};
    return n;
}

/* A message that is not a job at all: dead letter only (there is no job id to
 * address a status to). */
static void dead_letter_only(pf_worker *w, const rd_kafka_message_t *m, const char *message) {
    dlq_info d;
    char scrubbed[1024];
    snprintf(scrubbed, sizeof scrubbed, "%s", message);
    pf_secret_scrub(scrubbed, sizeof scrubbed);
    int n = dlq_headers(&d, w, m, NULL, 0, "invalid_message", scrubbed, NULL);
    pf_wlog(PF_LOG_WARN, "job.dead_letter", NULL,
            json_pack("{s:s, s:i, s:I}", "topic", rd_kafka_topic_name(m->rkt), "partition", (int)m->partition,
                      "offset", (json_int_t)m->offset),
            "%s", scrubbed);
    send_req r = {w->cfg->dead_letter_topic, NULL, m->payload, m->len, d.h, n};
    if (m->key_len) { /* keep the original key, if printable enough to pass as one */
        static char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(m->key_len < 255 ? m->key_len : 255), (const char *)m->key);
        r.key = key;
    }
    if (send_durable(w, &r, 1)) return;
    pf_metrics_dead_letter("invalid_message");
    store_offset(w, m, NULL);
}

/* "rejected" + dead letter for a job that is invalid or that this worker
 * cannot run. dlq_code: the dead letter's code, which differs from the
 * status's code only for a message that is no job at all but whose key names
 * one (invalid_message there, invalid_job in the status). */
static void reject(pf_worker *w, const rd_kafka_message_t *m, const char *job_id, int attempt, const char *code,
                   const char *dlq_code, const char *field, const char *message) {
    char scrubbed[1024];
    snprintf(scrubbed, sizeof scrubbed, "%s", message);
    pf_secret_scrub(scrubbed, sizeof scrubbed);
    json_t *st = pf_status_new(PF_ST_REJECTED, job_id, attempt, w->cfg->worker_id);
    pf_status_set_error(st, code, scrubbed, 0, field);
    pf_wlog(PF_LOG_WARN, "job.rejected", job_id, json_pack("{s:s, s:s}", "code", code, "field", field ? field : ""),
            "%s", scrubbed);
    dlq_info d;
    int n = dlq_headers(&d, w, m, job_id, attempt, dlq_code, scrubbed, field);
    note_state(w, job_id, st);
    if (!send_status(w, st, &(dead_letter){d.h, n, m->payload, m->len}, NULL, NULL)) {
        pf_metrics_job_ended(PF_ST_REJECTED, code);
        pf_metrics_dead_letter(dlq_code);
        store_offset(w, m, job_id);
    }
    json_decref(st);
}

/* The job id a message's Kafka key names, if it is one (producers key jobs
 * by job id; schemas/README.md: 1 to 128 of [A-Za-z0-9._-], not starting
 * with '.'), copied into out; else NULL. For messages whose body cannot be
 * read as a job, so that the submitter still hears why. */
static const char *key_job_id(char out[PF_JOB_ID_MAX + 1], const rd_kafka_message_t *m) {
    if (!m->key || m->key_len < 1 || m->key_len > PF_JOB_ID_MAX) return NULL;
    memcpy(out, m->key, m->key_len);
    out[m->key_len] = '\0';
    /* a NUL inside the key would shorten it to another id */
    return strlen(out) == m->key_len && pf_job_id_ok(out) ? out : NULL;
}

/* A terminal status that needs no run: recorded, sent, offset stored. */
static void end_without_run(pf_worker *w, const rd_kafka_message_t *m, json_t *st, const char *job_id) {
    pf_wlog(PF_LOG_INFO, "job.ended", job_id,
            json_pack("{s:s}", "state", json_string_value(json_object_get(st, "state"))), NULL);
    if (record_result(w, job_id, st, NULL)) return;
    note_state(w, job_id, st);
    if (send_status(w, st, NULL, NULL, NULL)) return;
    pf_metrics_job_ended(json_string_value(json_object_get(st, "state")),
                         json_string_value(json_object_get(json_object_get(st, "error"), "code")));
    store_offset(w, m, job_id);
}

/* ---- before a run -------------------------------------------------------- */

typedef enum { PREP_DONE, PREP_RUN, PREP_LATER } prep_result;

/* A Redis read with retries while Redis is away; -1 when the worker must stop waiting. */
static int redis_retry(pf_worker *w, const char *job_id, const char *what, int attempt, const pf_error *e) {
    pf_wlog(PF_LOG_WARN, "redis.failed", job_id, NULL, "%s: %s", what, e->msg);
    return wait_ticking(w, pf_backoff_ms(attempt, w->cfg->retry_base_ms, w->cfg->retry_max_ms), 1) ? -1 : 0;
}

/* Reads a recorded dead letter (dead_letter_dump) into *dl, its headers in
 * h (9 at most) and its payload that of m when the record has none; 0 when
 * the record is not one (it is then left out: the status still goes). The
 * strings point into doc. */
static int dead_letter_load(dead_letter *dl, pf_header h[9], const json_t *doc, const rd_kafka_message_t *m) {
    const json_t *hs = json_object_get(doc, "headers"), *p = json_object_get(doc, "payload");
    if (!json_is_array(hs) || json_array_size(hs) > 9 || (p && !json_is_string(p))) return 0;
    size_t i;
    const json_t *pair;
    json_array_foreach(hs, i, pair) {
        const char *k = json_string_value(json_array_get(pair, 0)), *v = json_string_value(json_array_get(pair, 1));
        if (!k || !v) return 0;
        h[i] = (pf_header){k, v};
    }
    *dl = p ? (dead_letter){h, (int)i, json_string_value(p), json_string_length(p)}
            : (dead_letter){h, (int)i, m->payload, m->len};
    return 1;
}

/* Re-posts a recorded terminal status, with the dead letter recorded with
 * it (result.h); 1 if there was one. */
static int replay_if_recorded(pf_worker *w, const rd_kafka_message_t *m, const pf_job *job, int *stop) {
    char *rec = NULL, *drec = NULL;
    *stop = 0;
    for (int attempt = 1;; attempt++) {
        pf_error e;
        if (!pf_result_get(w->redis, job->job_id, &rec, &drec, &e)) break;
        if (redis_retry(w, job->job_id, "reading the result record", attempt, &e)) {
            *stop = 1;
            return 0;
        }
    }
    if (!rec) return 0;
    json_t *st = json_loads(rec, 0, NULL);
    free(rec);
    if (!json_is_object(st)) { /* a record we did not write: ignore it and run */
        json_decref(st);
        free(drec);
        pf_wlog(PF_LOG_WARN, "job.bad_record", job->job_id, NULL, "the result record is not a status; running the job");
        return 0;
    }
    json_t *ddoc = drec ? json_loads(drec, JSON_ALLOW_NUL, NULL) : NULL;
    free(drec);
    dead_letter dl;
    pf_header h[9];
    int has_dl = ddoc && dead_letter_load(&dl, h, ddoc, m);
    if (ddoc && !has_dl)
        pf_wlog(PF_LOG_WARN, "job.bad_record", job->job_id, NULL, "the recorded dead letter is not one; leaving it out");
    json_object_set_new(st, "replayed", json_true());
    pf_wlog(PF_LOG_INFO, "job.replayed", job->job_id,
            json_pack("{s:s, s:b}", "state", json_string_value(json_object_get(st, "state")), "dead_letter", has_dl),
            "already finished: re-posting its terminal status without running it");
    if (!send_status(w, st, has_dl ? &dl : NULL, NULL, NULL)) {
        pf_metrics_job_replayed();
        if (has_dl) pf_metrics_dead_letter(json_string_value(json_object_get(json_object_get(st, "error"), "code")));
        store_offset(w, m, job->job_id);
    }
    json_decref(ddoc);
    json_decref(st);
    return 1;
}

/* Checks a parsed job before it may run: record, cancel flag, deadline, lease.
 * first: the message at the head of the batch (it may wait for a lease held
 * elsewhere); otherwise a candidate to join the batch, which must be ready now
 * and is left alone (PREP_LATER) if it is not. */
/* With the lease just taken: counts a takeover from a worker that died
 * running the job (crash_count.h) and ends the job as poison once it took
 * down max_crashes workers. A batch candidate over the count is left for
 * later (lease and marker given back), to be ended when it comes first. */
static prep_result crash_check(pf_worker *w, const rd_kafka_message_t *m, const pf_job *job, int first) {
    long long crashes = 0;
    pf_error e;
    if (pf_crash_begin(w->redis, job->job_id, w->cfg->result_ttl_s, &crashes, &e)) {
        pf_wlog(PF_LOG_WARN, "redis.failed", job->job_id, NULL, "crash count: %s", e.msg); /* best effort */
        return PREP_RUN;
    }
    if (crashes && crashes < w->cfg->max_crashes)
        pf_wlog(PF_LOG_WARN, "job.taken_over", job->job_id, json_pack("{s:I}", "crashes", (json_int_t)crashes),
                "the job's last worker died while running it");
    if (crashes < w->cfg->max_crashes) return PREP_RUN;
    (void)pf_crash_end(w->redis, job->job_id, &e);
    (void)pf_lease_release(w->redis, job->job_id, w->token, &e);
    if (!first) return PREP_LATER;
    char msg[256];
    snprintf(msg, sizeof msg, "the job took down %lld workers (max_crashes %d): not run again", crashes,
             w->cfg->max_crashes);
    json_t *st = pf_status_new(PF_ST_FAILED, job->job_id, job->attempt, w->cfg->worker_id);
    pf_status_set_error(st, PF_ERR_POISON, msg, 0, NULL);
    pf_wlog(PF_LOG_ERROR, "job.poison", job->job_id, json_pack("{s:I}", "crashes", (json_int_t)crashes), "%s", msg);
    dlq_info d;
    int n = dlq_headers(&d, w, m, job->job_id, job->attempt, PF_ERR_POISON, msg, NULL);
    dead_letter dl = {d.h, n, m->payload, m->len};
    if (!record_result(w, job->job_id, st, &dl)) {
        note_state(w, job->job_id, st);
        if (!send_status(w, st, &dl, NULL, NULL)) {
            pf_metrics_job_ended(PF_ST_FAILED, PF_ERR_POISON);
            pf_metrics_dead_letter(PF_ERR_POISON);
            store_offset(w, m, job->job_id);
        }
    }
    json_decref(st);
    return PREP_DONE;
}

static prep_result prepare(pf_worker *w, const rd_kafka_message_t *m, const pf_job *job, int first) {
    int stop;
    if (!first) {
        /* A batch candidate is never ended here: storing its offset while the
         * jobs before it are still running could commit past them. */
        char *rec = NULL;
        pf_error e;
        int rc = pf_result_get(w->redis, job->job_id, &rec, NULL, &e);
        free(rec);
        if (rc || rec) return PREP_LATER;
    } else {
        if (replay_if_recorded(w, m, job, &stop)) return PREP_DONE;
        if (stop) return PREP_LATER;
    }
    int cancelled = 0;
    for (int attempt = 1;; attempt++) {
        pf_error e;
        if (!pf_cancel_requested(w->redis, job->job_id, &cancelled, &e)) break;
        if (redis_retry(w, job->job_id, "reading the cancel flag", attempt, &e)) return PREP_LATER;
    }
    if (cancelled || (job->deadline_ms && pf_wall_ms() > job->deadline_ms)) {
        if (!first) return PREP_LATER;
        json_t *st = pf_status_new(cancelled ? PF_ST_CANCELLED : PF_ST_FAILED, job->job_id, job->attempt,
                                   w->cfg->worker_id);
        if (!cancelled) pf_status_set_error(st, PF_ERR_DEADLINE, "the job's deadline passed before it started", 0, NULL);
        end_without_run(w, m, st, job->job_id);
        json_decref(st);
        return PREP_DONE;
    }
    int said = 0;
    for (int attempt = 1;; attempt++) {
        int got;
        char holder[300];
        pf_error e;
        if (pf_lease_try(w->redis, job->job_id, w->token, w->cfg->lease_ttl_ms, &got, holder, sizeof holder, &e)) {
            if (redis_retry(w, job->job_id, "taking the lease", attempt, &e)) return PREP_LATER;
            continue;
        }
        if (got) return crash_check(w, m, job, first);
        if (!first) return PREP_LATER;
        /* A duplicate delivery while another worker runs the job: wait for it
         * to finish (then replay its result) or for its lease to expire. */
        if (!said) {
            pf_wlog(PF_LOG_INFO, "job.waiting", job->job_id, json_pack("{s:s}", "holder", holder),
                    "another worker holds the job's lease; waiting");
            pf_notify_status("waiting for job %s held elsewhere", job->job_id);
            pf_metrics_state(PF_WSTATE_WAITING);
            said = 1;
        }
        if (wait_ticking(w, 500, 1)) return PREP_LATER;
        if (replay_if_recorded(w, m, job, &stop)) return PREP_DONE;
        if (stop) return PREP_LATER;
    }
}

/* Parses m; ends it at once when it is not a runnable job. Returns PREP_RUN
 * with *job filled (the caller frees it) when it may run. */
static prep_result take_message(pf_worker *w, const rd_kafka_message_t *m, pf_job *job, int first,
                                const pf_job *batch_head) {
    char field[PF_JOB_FIELD_MAX];
    pf_error e;
    if (pf_job_parse(job, m->payload, m->len, field, sizeof field, &e)) {
        if (!first) return PREP_LATER;
        char keyid[PF_JOB_ID_MAX + 1];
        const char *id = job->job_id[0] ? job->job_id : key_job_id(keyid, m);
        if (id && already_answered(w, m, id, 1)) return PREP_DONE;
        if (job->job_id[0]) {
            reject(w, m, job->job_id, 1, PF_ERR_INVALID, PF_ERR_INVALID, field, e.msg);
        } else if (id) { /* not a job, but its key names one: tell that job's submitter why */
            char msg[sizeof e.msg + 64];
            snprintf(msg, sizeof msg, "the message is not a valid job: %s", e.msg);
            reject(w, m, id, 1, PF_ERR_INVALID, "invalid_message", field, msg);
        } else {
            dead_letter_only(w, m, e.msg);
        }
        return PREP_DONE;
    }
    if (already_answered(w, m, job->job_id, first)) {
        pf_job_free(job);
        return first ? PREP_DONE : PREP_LATER;
    }
    if (!first && !pf_job_same_model(batch_head, job)) {
        pf_job_free(job);
        return PREP_LATER;
    }
    if (pf_job_supported(job, field, sizeof field, &e) || pf_job_limits_check(job, w->cfg, field, sizeof field, &e)) {
        if (first) reject(w, m, job->job_id, job->attempt, PF_ERR_UNSUPPORTED, PF_ERR_UNSUPPORTED, field, e.msg);
        pf_job_free(job);
        return first ? PREP_DONE : PREP_LATER;
    }
    prep_result r = prepare(w, m, job, first);
    if (r != PREP_RUN) pf_job_free(job);
    return r;
}

/* ---- running ------------------------------------------------------------- */

static void *job_thread(void *arg) {
    pf_worker *w = arg;
    pf_exec_batch(&w->exec, w->jobs, w->nbatch);
    atomic_store(&w->thread_done, 1);
    return NULL;
}

static long long since(long long t0) {
    return t0 ? pf_now_ms() - t0 : 0;
}

/* While the job thread runs: keep the group served and the leases renewed
 * (tick), read the cancel flags, watch the signals. */
static void supervise(pf_worker *w) {
    const pf_worker_config *cfg = w->cfg;
    long long last_cancel = 0;
    while (!atomic_load(&w->thread_done)) {
        tick(w, 5); /* short: the job's end is seen within 5 ms */
        long long now = pf_now_ms();
        if (now - last_cancel >= cfg->cancel_poll_ms) {
            last_cancel = now;
            for (int i = 0; i < w->nbatch; i++) {
                int yes = 0;
                pf_error e;
                if (atomic_load(&w->jobs[i].cancel)) continue;
                if (pf_cancel_requested(w->redis, w->jobs[i].job.job_id, &yes, &e))
                    pf_wlog(PF_LOG_DEBUG, "redis.failed", w->jobs[i].job.job_id, NULL, "cancel flag: %s", e.msg);
                else if (yes) {
                    pf_wlog(PF_LOG_INFO, "job.cancel_requested", w->jobs[i].job.job_id, NULL, NULL);
                    atomic_store(&w->jobs[i].cancel, 1);
                }
            }
            /* a download for nobody is stopped (pf_worker_download_stop) */
            int wanted = 0;
            for (int i = 0; i < w->nbatch && !wanted; i++) {
                const pf_exec_job *j = &w->jobs[i];
                wanted = !atomic_load(&j->cancel) && !(j->job.deadline_ms && pf_wall_ms() > j->job.deadline_ms) &&
                         !(j->t_limit && now > j->t_limit);
            }
            pf_worker_download_stop = !wanted || atomic_load(&w->abandon);
        }
    }
}

/* engine_ms is the text-to-image call; refine jobs add refine_ms, the refine call. */
static json_t *timings(const pf_exec_job *j, long long total) {
    json_t *t = json_pack("{s:I, s:I, s:I, s:I, s:I}", "download_ms", (json_int_t)j->download_ms, "load_ms",
                          (json_int_t)j->load_ms, "engine_ms", (json_int_t)j->engine_ms, "upload_ms",
                          (json_int_t)j->upload_ms, "total_ms", (json_int_t)total);
    if (j->job.refine.on) json_object_set_new(t, "refine_ms", json_integer(j->refine_ms));
    /* the model's family, known once it loaded (absent when the job ended before) */
    if (j->family) json_object_set_new(t, "family", json_string(j->family));
    return t;
}

/* Counts a job of a finished batch whose end was acknowledged. */
static void job_metrics(const pf_exec_job *j, const char *state, const char *code, int requeued, int dlq) {
    if (requeued) pf_metrics_job_requeued(code);
    else pf_metrics_job_ended(state, code);
    if (dlq) pf_metrics_dead_letter(code);
    size_t i;
    json_t *o;
    json_array_foreach(j->outputs, i, o) pf_metrics_images(json_string_value(json_object_get(o, "stage")), 1);
}

/* Ends one job of a finished batch: status, record, re-enqueue or dead
 * letter as its outcome says, then its offset. Returns -1 when abandoned. */
static int finish(pf_worker *w, rd_kafka_message_t *m, pf_exec_job *j) {
    const pf_worker_config *cfg = w->cfg;
    const pf_job *job = &j->job;
    json_t *st = NULL;
    int record = 1, dlq = 0, rc = 0;
    char *requeue = NULL;
    switch (j->outcome) {
    case PF_OUT_SUCCEEDED:
        st = pf_status_new(PF_ST_SUCCEEDED, job->job_id, job->attempt, cfg->worker_id);
        json_object_set(st, "outputs", j->outputs);
        json_object_set_new(st, "timings", timings(j, since(j->t_accepted)));
        json_object_set_new(st, "batch_jobs", json_integer(j->batch_jobs));
        if (j->job.refine.on) json_object_set_new(st, "refine_batch_jobs", json_integer(j->refine_batch_jobs));
        json_object_set_new(st, "retries", json_integer(j->retries));
        break;
    case PF_OUT_CANCELLED:
        st = pf_status_new(PF_ST_CANCELLED, job->job_id, job->attempt, cfg->worker_id);
        break;
    case PF_OUT_REJECTED:
        st = pf_status_new(PF_ST_REJECTED, job->job_id, job->attempt, cfg->worker_id);
        pf_status_set_error(st, j->code, j->err.msg, 0, j->field);
        record = 0;
        dlq = j->dead_letter;
        break;
    case PF_OUT_FAILED:
    default: {
        int again = j->retryable && job->attempt < cfg->max_attempts;
        st = pf_status_new(PF_ST_FAILED, job->job_id, job->attempt, cfg->worker_id);
        char msg[sizeof j->err.msg + 64];
        if (j->retryable && !again)
            snprintf(msg, sizeof msg, "%s (attempt %d of %d)", j->err.msg, job->attempt, cfg->max_attempts);
        else
            snprintf(msg, sizeof msg, "%s", j->err.msg);
        pf_status_set_error(st, j->code[0] ? j->code : PF_ERR_INTERNAL, msg, again, NULL);
        json_object_set_new(st, "timings", timings(j, since(j->t_accepted)));
        if (again) {
            requeue = pf_job_with_attempt(m->payload, m->len, job->attempt + 1);
            json_object_set_new(st, "next_attempt", json_integer(job->attempt + 1));
            record = 0;
        } else {
            dlq = j->dead_letter || j->retryable; /* retries exhausted, or permanent */
        }
        break;
    }
    }
    const char *state = json_string_value(json_object_get(st, "state"));
    json_t *err = json_object_get(st, "error");
    pf_wlog(j->outcome == PF_OUT_SUCCEEDED ? PF_LOG_INFO : PF_LOG_WARN, "job.finished", job->job_id,
            json_pack("{s:s, s:i, s:O?, s:b, s:b}", "state", state, "attempt", job->attempt, "error", err, "requeued",
                      requeue != NULL, "dead_letter", dlq),
            NULL);
    dlq_info d;
    int nd = 0;
    if (dlq)
        nd = dlq_headers(&d, w, m, job->job_id, job->attempt, json_string_value(json_object_get(err, "code")),
                         json_string_value(json_object_get(err, "message")),
                         json_string_value(json_object_get(err, "field")));
    dead_letter dl = {d.h, nd, m->payload, m->len};
    long long t_end = pf_now_ms();
    note_state(w, job->job_id, st);
    if ((record && record_result(w, job->job_id, st, dlq ? &dl : NULL)) ||
        send_status(w, st, dlq ? &dl : NULL, requeue, rd_kafka_topic_name(m->rkt))) {
        rc = -1;
    } else {
        job_metrics(j, state, json_string_value(json_object_get(err, "code")), requeue != NULL, dlq);
        store_offset(w, m, job->job_id);
        /* The overheads the benchmark reports: accepted -> engine start, engine end -> terminal status acked. */
        if (j->t_engine_start)
            pf_wlog(PF_LOG_INFO, "job.overhead", job->job_id,
                    json_pack("{s:I, s:I, s:I, s:I, s:I}", "received_to_engine_ms",
                              (json_int_t)(j->t_engine_start - j->t_received), "before_engine_ms",
                              (json_int_t)(j->t_engine_start - j->t_accepted), "after_engine_ms",
                              (json_int_t)(pf_now_ms() - j->t_engine_end), "status_ack_ms",
                              (json_int_t)(pf_now_ms() - t_end), "engine_ms",
                              (json_int_t)(j->engine_ms + j->refine_ms)),
                    NULL);
    }
    free(requeue);
    json_decref(st);
    return rc;
}

/* Releases the batch: leases, jobs, messages. */
static void clear_batch(pf_worker *w) {
    for (int i = 0; i < w->nbatch; i++) {
        pf_error e;
        if (pf_crash_end(w->redis, w->jobs[i].job.job_id, &e))
            pf_wlog(PF_LOG_WARN, "redis.failed", w->jobs[i].job.job_id, NULL, "clearing the running mark: %s", e.msg);
        if (pf_lease_release(w->redis, w->jobs[i].job.job_id, w->token, &e))
            pf_wlog(PF_LOG_WARN, "redis.failed", w->jobs[i].job.job_id, NULL, "releasing the lease: %s", e.msg);
        json_decref(w->jobs[i].outputs);
        pf_job_free(&w->jobs[i].job);
        rd_kafka_message_destroy(w->msgs[i]);
    }
    w->nbatch = 0;
}

/* Adds a prepared job (taken up at t_received) to the batch and says so. */
static void admit(pf_worker *w, rd_kafka_message_t *m, pf_job *job, long long t_received) {
    pf_exec_job *j = &w->jobs[w->nbatch];
    memset(j, 0, sizeof *j);
    if (!w->nbatch) w->last_renew = pf_now_ms(); /* the first lease was just taken */
    j->job = *job;
    j->t_received = t_received;
    j->t_accepted = pf_now_ms();
    if (w->cfg->max_job_seconds) j->t_limit = j->t_accepted + w->cfg->max_job_seconds * 1000;
    w->msgs[w->nbatch++] = m;
    long long queued = -1;
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    if (ts > 0) queued = pf_wall_ms() - ts;
    json_t *extra = json_pack("{s:I}", "queued_ms", (json_int_t)queued);
    json_t *st = pf_status_new(PF_ST_ACCEPTED, job->job_id, job->attempt, w->cfg->worker_id);
    note_state(w, job->job_id, st);
    json_decref(st);
    pf_exec_post(&w->exec, &j->job, PF_ST_ACCEPTED, json_deep_copy(extra));
    if (job->batch_id) json_object_set_new(extra, "batch_id", json_string(job->batch_id));
    json_object_set_new(extra, "topic", json_string(rd_kafka_topic_name(m->rkt)));
    json_object_set_new(extra, "partition", json_integer(m->partition));
    json_object_set_new(extra, "offset", json_integer(m->offset));
    json_object_set_new(extra, "attempt", json_integer(job->attempt));
    pf_wlog(PF_LOG_INFO, "job.accepted", job->job_id, extra, NULL);
}

/* The gauges a batch changes, read while no job thread runs (the models and
 * the backend are the job thread's otherwise). */
static void after_batch(pf_worker *w) {
    uint64_t bytes;
    int n = pf_models_loaded(w->models, &bytes);
    pf_metrics_models(n, bytes);
    pf_mem_stats ms;
    pf_backend_cuda_mem_stats(w->be, &ms);
    pf_metrics_device_memory(ms.in_use, ms.reserved);
    pf_metrics_jobs_running(0);
    pf_metrics_state(w->draining ? PF_WSTATE_DRAINING : PF_WSTATE_IDLE);
}

/* Handles m (and the jobs that batch with it); m is owned from here on. */
static void handle(pf_worker *w, rd_kafka_message_t *m) {
    const pf_worker_config *cfg = w->cfg;
    pf_job job;
    long long t_received = pf_now_ms();
    prep_result r = take_message(w, m, &job, 1, NULL);
    if (r != PREP_RUN) {
        if (r == PREP_LATER && !w->draining && !atomic_load(&w->abandon)) {
            pf_consumer_unread(w->consumer, m); /* try again shortly */
            wait_ticking(w, 200, 1);
            return;
        }
        rd_kafka_message_destroy(m); /* ended, or left for redelivery when draining */
        return;
    }
    admit(w, m, &job, t_received);
    /* Jobs for the same model and size that are already here join the batch,
     * up to max_batch images; the first one that cannot join ends it. */
    int images = job.num_images;
    while (!cfg->once && w->nbatch < MAX_BATCH && pf_consumer_pending(w->consumer)) {
        rd_kafka_message_t *next = pf_consumer_poll(w->consumer, 0);
        if (!next) break; /* held back for a higher-priority topic */
        long long t_next = pf_now_ms();
        pf_job nj;
        int fits = 0;
        if (pf_job_parse(&nj, next->payload, next->len, (char[PF_JOB_FIELD_MAX]){0}, PF_JOB_FIELD_MAX,
                         &(pf_error){0}) == 0) {
            fits = images + nj.num_images <= cfg->max_batch;
            pf_job_free(&nj);
        }
        if (!fits || take_message(w, next, &nj, 0, &w->jobs[0].job) != PREP_RUN) {
            pf_consumer_unread(w->consumer, next);
            break;
        }
        images += nj.num_images;
        admit(w, next, &nj, t_next);
    }
    pf_notify_status("running %d job(s): %s%s", w->nbatch, w->jobs[0].job.job_id, w->nbatch > 1 ? ", ..." : "");
    pf_metrics_state(PF_WSTATE_RUNNING);
    pf_metrics_jobs_running(w->nbatch);
    atomic_store(&w->thread_done, 0);
    pf_worker_download_stop = 0;
    pthread_t th;
    if (pthread_create(&th, NULL, job_thread, w)) {
        pf_wlog(PF_LOG_ERROR, "worker.thread_failed", NULL, NULL, "could not start the job thread");
        atomic_store(&w->abandon, 1);
    } else {
        supervise(w);
        pthread_join(th, NULL);
    }
    /* What a chaos run counts as computations: the engine finished for the
     * job, whatever happens to its outputs after. */
    for (int i = 0; i < w->nbatch; i++)
        if (w->jobs[i].t_engine_end)
            pf_wlog(PF_LOG_INFO, "job.computed", w->jobs[i].job.job_id,
                    json_pack("{s:I, s:i}", "engine_ms", (json_int_t)(w->jobs[i].engine_ms + w->jobs[i].refine_ms),
                              "batch_jobs", w->nbatch),
                    NULL);
    if (atomic_load(&w->abandon)) {
        for (int i = 0; i < w->nbatch; i++)
            pf_wlog(PF_LOG_WARN, "job.abandoned", w->jobs[i].job.job_id, NULL,
                    "no status and no offset: the job will be delivered again");
        w->abandoned = 1;
    } else {
        for (int i = 0; i < w->nbatch; i++)
            if (finish(w, w->msgs[i], &w->jobs[i])) {
                w->abandoned = 1;
                break;
            }
    }
    clear_batch(w);
    after_batch(w);
    pf_notify_status("idle");
}

/* ---- the loop ------------------------------------------------------------ */

/* At start: waits up to 5 s for a broker to answer. A TLS or SASL failure
 * meanwhile (a certificate that does not verify, a refused password) is a
 * configuration error: the worker must not start and sit there unable to
 * take a job. A broker that is merely away is waited for by the loop. */
static int check_kafka(pf_worker *w, pf_error *err) {
    char why[512];
    for (long long until = pf_now_ms() + 5000; pf_now_ms() < until;) {
        pf_error e;
        if (!pf_producer_reachable(w->producer, 500, &e)) return 0;
        pf_producer_poll(w->producer, 0); /* error callbacks run here */
        if (pf_producer_security_error(w->producer, why, sizeof why))
            return pf_fail(err, "kafka %s: %s (check the TLS and SASL settings: PERFLOW_KAFKA_*, "
                                "$CREDENTIALS_DIRECTORY/kafka.*)", w->cfg->brokers, why);
    }
    pf_wlog(PF_LOG_WARN, "kafka.unreachable", NULL, json_pack("{s:s}", "brokers", w->cfg->brokers),
            "no broker answered within 5 s; the worker waits for one");
    return 0;
}

/* Every topic the worker uses exists and may be used: a missing or forbidden one is a
 * start error naming it (a worker that waited would never get a job or post a status). */
static int check_topics(pf_worker *w, const char *const *topics, int ntopics, pf_error *err) {
    for (int i = 0; i < ntopics; i++)
        if (pf_producer_topic_ok(w->producer, topics[i], "READ", 5000, err)) return -1;
    if (pf_producer_topic_ok(w->producer, w->cfg->status_topic, "WRITE", 5000, err)) return -1;
    if (w->cfg->dead_letter_topic[0] && pf_producer_topic_ok(w->producer, w->cfg->dead_letter_topic, "WRITE", 5000, err))
        return -1;
    return 0;
}

int pf_worker_open(pf_worker **out, const pf_worker_config *cfg, pf_cache *cache, pf_backend *be,
                   const pf_s3_config *s3, const pf_credentials *cred, pf_error *err) {
    *out = NULL;
    pf_worker *w = PF_CALLOC(1, sizeof *w);
    w->cfg = cfg;
    char buf[1024];
    const char *topics[PF_WORKER_MAX_TOPICS];
    int ntopics;
    unsigned char rnd[8] = {0};
    FILE *ur = fopen("/dev/urandom", "rb");
    if (ur) {
        if (fread(rnd, 1, sizeof rnd, ur) != sizeof rnd) memset(rnd, 0, sizeof rnd);
        fclose(ur);
    }
    snprintf(w->token, sizeof w->token, "%s:%02x%02x%02x%02x%02x%02x%02x%02x", cfg->worker_id, rnd[0], rnd[1], rnd[2],
             rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    if (pf_worker_config_topics(cfg, buf, sizeof buf, topics, PF_WORKER_MAX_TOPICS, &ntopics, err) ||
        pf_wredis_open(&w->redis, cfg->redis, cfg->job_prefix, 2000, err) || pf_producer_open(&w->producer, cfg, err) ||
        check_kafka(w, err) || check_topics(w, topics, ntopics, err) || pf_consumer_open(&w->consumer, cfg, topics, ntopics, err)) {
        pf_worker_close(w);
        return -1;
    }
    pf_models_open(&w->models, cache, be, cfg->model_memory);
    w->exec = (pf_exec){cfg, w->models, w->producer, s3, cred, &w->abandon, NULL, pf_image_numerics(be->name)};
    if (cfg->result_store && cfg->result_store_url[0]) {
        /* its own Redis connection: the job thread uses it, the main loop keeps w->redis */
        if (pf_rstore_open(&w->exec.rstore, cfg->redis, cfg->result_store_prefix, cfg->result_store_url,
                           cfg->result_store_retention_s, s3, cred, cfg->work_dir, err)) {
            pf_worker_close(w);
            return -1;
        }
        pf_wlog(PF_LOG_INFO, "result_store.on", NULL,
                json_pack("{s:s, s:s, s:I}", "url", cfg->result_store_url, "numerics", w->exec.numerics,
                          "retention_s", (json_int_t)cfg->result_store_retention_s),
                NULL);
    }
    w->be = be;
    pf_metrics_init(cfg->worker_id, be->name);
    int port = 0;
    if (cfg->metrics_listen[0]) {
        if (pf_metrics_start(&w->metrics, cfg->metrics_listen, &port, err)) {
            pf_worker_close(w);
            return -1;
        }
        pf_wlog(PF_LOG_INFO, "metrics.listening", NULL,
                json_pack("{s:s, s:i}", "listen", cfg->metrics_listen, "port", port),
                "serving /metrics, /healthz and /readyz");
    }
    pf_wlog(PF_LOG_INFO, "worker.started", NULL,
            json_pack("{s:s, s:s, s:s, s:s, s:i}", "brokers", cfg->brokers, "group", cfg->group, "topics",
                      cfg->jobs_topics, "backend", be->name, "max_batch", cfg->max_batch),
            NULL);
    *out = w;
    return 0;
}

int pf_worker_run(pf_worker *w) {
    check_health(w); /* /readyz answers from the first moment on */
    pf_metrics_state(PF_WSTATE_IDLE);
    pf_notify_ready("waiting for jobs");
    while (!atomic_load(&w->abandon)) {
        tick(w, 0);
        if (w->draining || (w->cfg->once && w->handled > 0)) break;
        if (!pf_consumer_pending(w->consumer)) pf_consumer_resume(w->consumer);
        rd_kafka_message_t *m = pf_consumer_poll(w->consumer, 100);
        if (!m) continue;
        /* Take what has arrived with it before pausing: a pause drops messages
         * fetched but not yet taken, and fetching resumes only some time after
         * the resume (up to a second with librdkafka 2.0), so the next jobs are
         * kept at hand; they also make up batches. */
        if (!w->cfg->once)
            pf_consumer_fill(w->consumer, (w->cfg->max_batch > LOOKAHEAD ? w->cfg->max_batch : LOOKAHEAD) - 1,
                             (int)w->cfg->batch_wait_ms);
        pf_consumer_pause(w->consumer);
        handle(w, m);
        if (!w->draining) pf_metrics_state(PF_WSTATE_IDLE); /* after a run, a replay or a wait */
    }
    if (!w->draining) pf_notify_stopping(); /* --once */
    pf_wlog(PF_LOG_INFO, "worker.stopped", NULL, json_pack("{s:i, s:b}", "handled", w->handled, "abandoned",
                                                          w->abandoned),
            NULL);
    return w->abandoned ? 1 : 0;
}

void pf_worker_close(pf_worker *w) {
    if (!w) return;
    pf_metrics_stop(w->metrics); /* first: its thread reads nothing of the worker, but stops answering now */
    pf_consumer_close(w->consumer); /* commits the stored offsets and leaves the group */
    if (w->producer) pf_producer_close(w->producer, 5000);
    pf_models_close(w->models);
    pf_rstore_close(w->exec.rstore);
    pf_wredis_close(w->redis);
    free(w);
}
