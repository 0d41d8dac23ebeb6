/* intake.c - from a message to a job admitted to the batch (intake.h). */
#include "intake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answers.h"
#include "backoff.h"
#include "cancel.h"
#include "crash_count.h"
#include "heartbeat.h"
#include "job_limits.h"
#include "lease.h"
#include "log.h"
#include "notify.h"
#include "output_key.h"
#include "result.h"
#include "status.h"

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

/* With the lease just taken: counts a takeover from a worker that died
 * running the job (crash_count.h) and ends the job as poison once it took
 * down max_crashes workers. A batch candidate over the count is left for
 * later (lease and marker given back), to be ended when it comes first. */
static pf_intake_result crash_check(pf_worker *w, const rd_kafka_message_t *m, const pf_job *job, int first) {
    long long crashes = 0;
    pf_error e;
    if (pf_crash_begin(w->redis, job->job_id, w->cfg->result_ttl_s, &crashes, &e)) {
        pf_wlog(PF_LOG_WARN, "redis.failed", job->job_id, NULL, "crash count: %s", e.msg); /* best effort */
        return PF_INTAKE_RUN;
    }
    if (crashes && crashes < w->cfg->max_crashes)
        pf_wlog(PF_LOG_WARN, "job.taken_over", job->job_id, json_pack("{s:I}", "crashes", (json_int_t)crashes),
                "the job's last worker died while running it");
    if (crashes < w->cfg->max_crashes) return PF_INTAKE_RUN;
    (void)pf_crash_end(w->redis, job->job_id, &e);
    (void)pf_lease_release(w->redis, job->job_id, w->token, &e);
    if (!first) return PF_INTAKE_LATER;
    pf_ans_poison(w, m, job, crashes);
    return PF_INTAKE_DONE;
}

/* Checks a parsed job before it may run: record, cancel flag, deadline, lease.
 * first: the message at the head of the batch (it may wait for a lease held
 * elsewhere); otherwise a candidate to join the batch, which must be ready now
 * and is left alone (PF_INTAKE_LATER) if it is not. */
static pf_intake_result prepare(pf_worker *w, const rd_kafka_message_t *m, const pf_job *job, int first) {
    int stop;
    if (!first) {
        /* A batch candidate is never ended here: storing its offset while the
         * jobs before it are still running could commit past them. */
        char *rec = NULL;
        pf_error e;
        int rc = pf_result_get(w->redis, job->job_id, &rec, NULL, &e);
        free(rec);
        if (rc || rec) return PF_INTAKE_LATER;
    } else {
        if (pf_ans_replay(w, m, job, &stop)) return PF_INTAKE_DONE;
        if (stop) return PF_INTAKE_LATER;
    }
    int cancelled = 0;
    for (int attempt = 1;; attempt++) {
        pf_error e;
        if (!pf_cancel_requested(w->redis, job->job_id, &cancelled, &e)) break;
        if (pf_beat_redis_retry(w, job->job_id, "reading the cancel flag", attempt, &e)) return PF_INTAKE_LATER;
    }
    if (cancelled || (job->deadline_ms && pf_wall_ms() > job->deadline_ms)) {
        if (!first) return PF_INTAKE_LATER;
        json_t *st = pf_status_new(cancelled ? PF_ST_CANCELLED : PF_ST_FAILED, job->job_id, job->attempt,
                                   w->cfg->worker_id);
        if (!cancelled) pf_status_set_error(st, PF_ERR_DEADLINE, "the job's deadline passed before it started", 0, NULL);
        pf_ans_end_without_run(w, m, st, job->job_id);
        json_decref(st);
        return PF_INTAKE_DONE;
    }
    int said = 0;
    for (int attempt = 1;; attempt++) {
        int got;
        char holder[300];
        pf_error e;
        if (pf_lease_try(w->redis, job->job_id, w->token, w->cfg->lease_ttl_ms, &got, holder, sizeof holder, &e)) {
            if (pf_beat_redis_retry(w, job->job_id, "taking the lease", attempt, &e)) return PF_INTAKE_LATER;
            continue;
        }
        if (got) return crash_check(w, m, job, first);
        if (!first) return PF_INTAKE_LATER;
        /* A duplicate delivery while another worker runs the job: wait for it
         * to finish (then replay its result) or for its lease to expire. */
        if (!said) {
            pf_wlog(PF_LOG_INFO, "job.waiting", job->job_id, json_pack("{s:s}", "holder", holder),
                    "another worker holds the job's lease; waiting");
            pf_notify_status("waiting for job %s held elsewhere", job->job_id);
            pf_metrics_state(PF_WSTATE_WAITING);
            said = 1;
        }
        if (pf_beat_wait(w, 500, 1)) return PF_INTAKE_LATER;
        if (pf_ans_replay(w, m, job, &stop)) return PF_INTAKE_DONE;
        if (stop) return PF_INTAKE_LATER;
    }
}

pf_intake_result pf_intake_take(pf_worker *w, const rd_kafka_message_t *m, pf_job *job, int first,
                                const pf_job *batch_head) {
    char field[PF_JOB_FIELD_MAX];
    pf_error e;
    if (pf_job_parse(job, m->payload, m->len, field, sizeof field, &e)) {
        if (!first) return PF_INTAKE_LATER;
        char keyid[PF_JOB_ID_MAX + 1];
        const char *id = job->job_id[0] ? job->job_id : key_job_id(keyid, m);
        if (id && pf_ans_already_answered(w, m, id, 1)) return PF_INTAKE_DONE;
        if (job->job_id[0]) {
            pf_ans_reject(w, m, job->job_id, 1, PF_ERR_INVALID, PF_ERR_INVALID, field, e.msg);
        } else if (id) { /* not a job, but its key names one: tell that job's submitter why */
            char msg[sizeof e.msg + 64];
            snprintf(msg, sizeof msg, "the message is not a valid job: %s", e.msg);
            pf_ans_reject(w, m, id, 1, PF_ERR_INVALID, "invalid_message", field, msg);
        } else {
            pf_ans_dead_letter_only(w, m, e.msg);
        }
        return PF_INTAKE_DONE;
    }
    if (pf_ans_already_answered(w, m, job->job_id, first)) {
        pf_job_free(job);
        return first ? PF_INTAKE_DONE : PF_INTAKE_LATER;
    }
    if (!first && !pf_job_same_model(batch_head, job)) {
        pf_job_free(job);
        return PF_INTAKE_LATER;
    }
    if (pf_job_supported(job, field, sizeof field, &e) || pf_job_limits_check(job, w->cfg, field, sizeof field, &e)) {
        if (first) pf_ans_reject(w, m, job->job_id, job->attempt, PF_ERR_UNSUPPORTED, PF_ERR_UNSUPPORTED, field, e.msg);
        pf_job_free(job);
        return first ? PF_INTAKE_DONE : PF_INTAKE_LATER;
    }
    pf_intake_result r = prepare(w, m, job, first);
    if (r != PF_INTAKE_RUN) pf_job_free(job);
    return r;
}

void pf_intake_admit(pf_worker *w, rd_kafka_message_t *m, pf_job *job, long long t_received) {
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
    pf_ans_note_state(w, job->job_id, st);
    json_decref(st);
    pf_exec_post(&w->exec, &j->job, PF_ST_ACCEPTED, json_deep_copy(extra));
    if (job->batch_id) json_object_set_new(extra, "batch_id", json_string(job->batch_id));
    json_object_set_new(extra, "topic", json_string(rd_kafka_topic_name(m->rkt)));
    json_object_set_new(extra, "partition", json_integer(m->partition));
    json_object_set_new(extra, "offset", json_integer(m->offset));
    json_object_set_new(extra, "attempt", json_integer(job->attempt));
    pf_wlog(PF_LOG_INFO, "job.accepted", job->job_id, extra, NULL);
}
