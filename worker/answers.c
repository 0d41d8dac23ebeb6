/* answers.c - everything that ends a message of the worker's loop (answers.h). */
#include "answers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "crash_count.h"
#include "heartbeat.h"
#include "log.h"
#include "result.h"
#include "status.h"

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
            pf_beat_tick(w, 50);
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
        if (pf_beat_wait(w, pf_backoff_ms(attempt, w->cfg->retry_base_ms, w->cfg->retry_max_ms), 0)) return -1;
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

/* ---- records in Redis ---------------------------------------------------- */

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
        if (pf_beat_wait(w, pf_backoff_ms(attempt, w->cfg->retry_base_ms, w->cfg->retry_max_ms), 0)) {
            rc = -1;
            break;
        }
    }
    free(d);
    free(s);
    return rc;
}

void pf_ans_note_state(pf_worker *w, const char *job_id, const json_t *st) {
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

int pf_ans_already_answered(pf_worker *w, const rd_kafka_message_t *m, const char *job_id, int first) {
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

void pf_ans_dead_letter_only(pf_worker *w, const rd_kafka_message_t *m, const char *message) {
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

void pf_ans_reject(pf_worker *w, const rd_kafka_message_t *m, const char *job_id, int attempt, const char *code,
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
    pf_ans_note_state(w, job_id, st);
    if (!send_status(w, st, &(dead_letter){d.h, n, m->payload, m->len}, NULL, NULL)) {
        pf_metrics_job_ended(PF_ST_REJECTED, code);
        pf_metrics_dead_letter(dlq_code);
        store_offset(w, m, job_id);
    }
    json_decref(st);
}


void pf_ans_end_without_run(pf_worker *w, const rd_kafka_message_t *m, json_t *st, const char *job_id) {
    pf_wlog(PF_LOG_INFO, "job.ended", job_id,
            json_pack("{s:s}", "state", json_string_value(json_object_get(st, "state"))), NULL);
    if (record_result(w, job_id, st, NULL)) return;
    pf_ans_note_state(w, job_id, st);
    if (send_status(w, st, NULL, NULL, NULL)) return;
    pf_metrics_job_ended(json_string_value(json_object_get(st, "state")),
                         json_string_value(json_object_get(json_object_get(st, "error"), "code")));
    store_offset(w, m, job_id);
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

int pf_ans_replay(pf_worker *w, const rd_kafka_message_t *m, const pf_job *job, int *stop) {
    char *rec = NULL, *drec = NULL;
    *stop = 0;
    for (int attempt = 1;; attempt++) {
        pf_error e;
        if (!pf_result_get(w->redis, job->job_id, &rec, &drec, &e)) break;
        if (pf_beat_redis_retry(w, job->job_id, "reading the result record", attempt, &e)) {
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
    int recorded_dl = drec != NULL;
    free(drec);
    dead_letter dl;
    pf_header h[9];
    int has_dl = ddoc && dead_letter_load(&dl, h, ddoc, m);
    if (recorded_dl && !has_dl)
        pf_wlog(PF_LOG_WARN, "job.bad_record", job->job_id, NULL, "the recorded dead letter is not one; leaving it out");
    json_object_set_new(st, "replayed", json_true());
    pf_wlog(PF_LOG_INFO, "job.replayed", job->job_id,
            json_pack("{s:s, s:b}", "state", json_string_value(json_object_get(st, "state")), "dead_letter", has_dl),
            "already finished: re-posting its terminal status without running it");
    if (!send_status(w, st, has_dl ? &dl : NULL, NULL, NULL)) {
        pf_metrics_job_replayed();
        for (int i = 0; has_dl && i < dl.n; i++) /* counted by the code the dead letter carries */
            if (!strcmp(dl.h[i].name, "perflow-error-code")) pf_metrics_dead_letter(dl.h[i].value);
        store_offset(w, m, job->job_id);
    }
    json_decref(ddoc);
    json_decref(st);
    return 1;
}

void pf_ans_poison(pf_worker *w, const rd_kafka_message_t *m, const pf_job *job, long long crashes) {
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
        pf_ans_note_state(w, job->job_id, st);
        if (!send_status(w, st, &dl, NULL, NULL)) {
            pf_metrics_job_ended(PF_ST_FAILED, PF_ERR_POISON);
            pf_metrics_dead_letter(PF_ERR_POISON);
            store_offset(w, m, job->job_id);
        }
    }
    json_decref(st);
}

static long long since(long long t0) {
    return t0 ? pf_now_ms() - t0 : 0;
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

int pf_ans_finish(pf_worker *w, rd_kafka_message_t *m, pf_exec_job *j) {
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
    pf_ans_note_state(w, job->job_id, st);
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
