/* worker.c - the job loop (worker.h): a message taken (intake.h), its
 * batch run on the job thread while the loop supervises it, each job ended
 * (answers.h); every wait goes through heartbeat.h. */
#include "worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answers.h"
#include "backoff.h"
#include "cancel.h"
#include "crash_count.h"
#include "heartbeat.h"
#include "image_identity.h"
#include "intake.h"
#include "lease.h"
#include "log.h"
#include "model_route.h"
#include "models.h"
#include "notify.h"
#include "result_store.h"
#include "worker_state.h"

#define LOOKAHEAD 16 /* messages taken ahead of the running job */

volatile sig_atomic_t pf_worker_signals;
volatile int pf_worker_download_stop;

/* ---- running ------------------------------------------------------------- */

static void *job_thread(void *arg) {
    pf_worker *w = arg;
    pf_exec_batch(&w->exec, w->jobs, w->nbatch);
    atomic_store(&w->thread_done, 1);
    return NULL;
}

/* While the job thread runs: keep the group served and the leases renewed
 * (tick), read the cancel flags, watch the signals. */
static void supervise(pf_worker *w) {
    const pf_worker_config *cfg = w->cfg;
    long long last_cancel = 0;
    while (!atomic_load(&w->thread_done)) {
        pf_beat_tick(w, 5); /* short: the job's end is seen within 5 ms */
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

/* The consumer's warm-model preference (prefer.h), called on held messages
 * while no job thread runs: while a batch is being gathered, a job that can
 * join it (the same model and size as its first); between batches, a job
 * whose model is loaded. A message that does not parse is not preferred (it
 * is ended in its turn). */
static int warm_message(const rd_kafka_message_t *m, void *ctx) {
    pf_worker *w = ctx;
    pf_job job;
    if (pf_job_parse(&job, m->payload, m->len, (char[PF_JOB_FIELD_MAX]){0}, PF_JOB_FIELD_MAX, &(pf_error){0}))
        return 0;
    int warm;
    if (w->nbatch) {
        warm = pf_job_same_model(&job, &w->jobs[0].job);
    } else {
        char *key = pf_route_model_text(&job);
        warm = !job.samples && pf_models_has(w->models, key);
        free(key);
    }
    pf_job_free(&job);
    return warm;
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
    pf_intake_result r = pf_intake_take(w, m, &job, 1, NULL);
    if (r != PF_INTAKE_RUN) {
        if (r == PF_INTAKE_LATER && !w->draining && !atomic_load(&w->abandon)) {
            pf_consumer_unread(w->consumer, m); /* try again shortly */
            pf_beat_wait(w, 200, 1);
            return;
        }
        rd_kafka_message_destroy(m); /* ended, or left for redelivery when draining */
        return;
    }
    pf_intake_admit(w, m, &job, t_received);
    /* Jobs for the same model and size that are already here join the batch,
     * up to max_batch images; the first one that cannot join ends it. */
    int images = job.num_images;
    while (!cfg->once && w->nbatch < PF_WORKER_MAX_BATCH && pf_consumer_pending(w->consumer)) {
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
        if (!fits || pf_intake_take(w, next, &nj, 0, &w->jobs[0].job) != PF_INTAKE_RUN) {
            pf_consumer_unread(w->consumer, next);
            break;
        }
        images += nj.num_images;
        pf_intake_admit(w, next, &nj, t_next);
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
            if (pf_ans_finish(w, w->msgs[i], &w->jobs[i])) {
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
    pf_consumer_prefer(w->consumer, warm_message, w, cfg->prefer_warm);
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
    pf_beat_health(w); /* /readyz answers from the first moment on */
    pf_metrics_state(PF_WSTATE_IDLE);
    pf_notify_ready("waiting for jobs");
    while (!atomic_load(&w->abandon)) {
        pf_beat_tick(w, 0);
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
        /* The warm-model preference chooses among every held job, the one
         * just polled included (put back where it was: the front when it came
         * straight from librdkafka, before anything fill took after it). */
        if (w->cfg->prefer_warm && pf_consumer_pending(w->consumer)) {
            pf_consumer_unread(w->consumer, m);
            if (!(m = pf_consumer_poll(w->consumer, 0))) continue;
        }
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
