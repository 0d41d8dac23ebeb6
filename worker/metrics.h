/* metrics.h - the worker's metrics and health checks, served over HTTP by
 * libmicrohttpd when the metrics_listen setting names an address (off by
 * default: a worker opens no port it was not asked to).
 *
 *   GET /metrics   Prometheus text format 0.0.4 (below)
 *   GET /healthz   200 "ok": the process is alive and its HTTP thread answers
 *   GET /readyz    200 "ready", or 503 with the reason: the broker and Redis
 *                  answered the main loop's last check (every few seconds) and
 *                  the device is usable (fewer than 3 engine calls in a row
 *                  failed)
 *
 * The metrics (every name starts with perflow_):
 *   jobs_total{state,code}               jobs ended: succeeded, failed (final),
 *                                         rejected, cancelled; code is the
 *                                         status error code ("" on success)
 *   jobs_requeued_total{code}            retryable failures re-enqueued
 *   jobs_replayed_total                  redeliveries answered from Redis
 *   dead_letters_total{code}             messages sent to the dead-letter topic
 *   stage_duration_seconds{stage}        histogram: download, load (per model
 *                                         fetch and load), text, denoise,
 *                                         decode (per text-to-image engine
 *                                         call), refine (per refine call),
 *                                         upload (per job)
 *   images_total{stage}                  images uploaded by succeeded jobs
 *                                         (stage "base" or "refined")
 *   batch_jobs{stage}, batch_images{stage}  histograms per engine call
 *   model_cache_hits_total{kind}         model / controlnet already loaded
 *   model_cache_misses_total{kind}       had to be fetched through the cache and loaded
 *   cache_downloads_total, cache_download_bytes_total   files fetched into the disk cache
 *   cache_evictions_total, cache_evicted_bytes_total    blobs evicted from it
 *   model_loads_total{kind}, model_evictions_total      the warm set of loaded models
 *   models_loaded, model_memory_bytes    the warm set now
 *   device_memory_bytes{kind}            in_use and reserved (CUDA; 0 on the CPU)
 *   jobs_running                         jobs in the batch being run
 *   worker_state{state}                  1 for the current state, 0 for the others
 *   worker_info{worker_id,backend}       1
 *   ready                                1 when /readyz answers 200
 *   consumer_lag{topic,partition}        per assigned jobs partition: messages not
 *                                         yet committed by the group (high watermark
 *                                         minus committed offset; from the log start
 *                                         while nothing is committed), from
 *                                         librdkafka's statistics every 5 s
 *
 * Every recording function is thread-safe (the job thread and the main loop
 * both record) and cheap; none fails. Before pf_metrics_init they record into
 * the process-wide registry all the same, so a worker without metrics_listen
 * pays a mutex per event and nothing else. */
#ifndef PF_METRICS_H
#define PF_METRICS_H

#include <stdint.h>

#include "error.h"
#include "storage_log.h"

typedef enum {
    PF_WSTATE_STARTING,
    PF_WSTATE_IDLE,     /* waiting for jobs */
    PF_WSTATE_RUNNING,  /* a batch runs */
    PF_WSTATE_WAITING,  /* a duplicate delivery waits for another worker's lease */
    PF_WSTATE_DRAINING, /* a signal came: no new jobs */
    PF_WSTATE_COUNT
} pf_worker_state;

/* Sets the labels of worker_info. */
void pf_metrics_init(const char *worker_id, const char *backend);

/* A job ended with a terminal status: state is a status.h PF_ST_* terminal
 * state, code its error code or NULL. */
void pf_metrics_job_ended(const char *state, const char *code);
void pf_metrics_job_requeued(const char *code);
void pf_metrics_job_replayed(void);
/* Result store lookups: images found (hits), not found (misses), and
 * lookups or records that failed (errors). */
void pf_metrics_result_store(int hits, int misses, int errors);
void pf_metrics_dead_letter(const char *code);
/* One observation of stage ("download", "load", "text", "denoise", "decode",
 * "refine", "upload") taking ms milliseconds; unknown stages are ignored. */
void pf_metrics_stage(const char *stage, long long ms);
/* A text-to-image engine call that started at t0, finished encoding the
 * prompts at t_text (its first step's cancel check), finished its last step
 * at t_denoise and returned at t1 (monotonic ms): text, denoise and decode
 * observations. t_text or t_denoise 0 (the call failed before) records only
 * what is known. */
void pf_metrics_engine_call(long long t0, long long t_text, long long t_denoise, long long t1);
/* An engine call of stage ("generate", "refine") over jobs jobs and images images. */
void pf_metrics_batch(const char *stage, int jobs, int images);
/* Outputs uploaded by a succeeded job, per stage. */
void pf_metrics_images(const char *stage, int n);
/* An engine call ended: failed (1) or not (0); 3 failures in a row make the
 * device not ready until a call succeeds. */
void pf_metrics_engine_result(int failed);
/* The warm set: kind "model" or "controlnet" asked for and found loaded (warm 1) or not. */
void pf_metrics_model_lookup(const char *kind, int warm);
void pf_metrics_model_loaded(const char *kind);
void pf_metrics_model_evicted(void);
void pf_metrics_models(int loaded, uint64_t bytes);
void pf_metrics_device_memory(uint64_t in_use, uint64_t reserved);
void pf_metrics_state(pf_worker_state s);
void pf_metrics_jobs_running(int n);
/* What the main loop's last checks found: kafka_ok, redis_ok, and why not
 * (NULL or "" when both are fine). */
/* The consumer lag of topic's assigned partitions now (n of them; lags[i] of
 * partitions[i]): replaces what was recorded for topic before. */
void pf_metrics_consumer_lag(const char *topic, const int *partitions, const long long *lags, int n);
void pf_metrics_health(int kafka_ok, int redis_ok, const char *why);

/* A storage log sink that counts the disk cache's downloads and evictions
 * from its lines and hands every line at or below inner's level on to
 * inner. The storage layer reports those events only as log lines; this
 * keeps the count here instead of widening its API. The returned sink's
 * level is PF_LOG_INFO whatever inner's (the counted lines are INFO). Only one
 * such sink exists per process (it refers to a static copy of inner). */
pf_log_sink pf_metrics_storage_sink(pf_log_sink inner);

/* The metrics in Prometheus text format, malloc'd (caller frees). Never NULL. */
char *pf_metrics_render(void);
/* 1 when ready; else 0 and why (n bytes) says what is not. */
int pf_metrics_ready(char *why, size_t n);

typedef struct pf_metrics_server pf_metrics_server;

/* Serves /metrics, /healthz and /readyz on listen: "HOST:PORT" with HOST an
 * IPv4 address, "[IPv6]:PORT", or ":PORT" for 127.0.0.1 ("0.0.0.0:PORT" for
 * every interface); PORT 0 picks a free port (*port receives the one bound).
 * At most 8 connections per client address, 256 in all, closed after 5 s
 * idle. Error on a malformed address or when the port cannot be bound. */
int pf_metrics_start(pf_metrics_server **out, const char *listen, int *port, pf_error *err);
/* Stops serving (waits for the HTTP thread) and frees; NULL is fine. */
void pf_metrics_stop(pf_metrics_server *s);

#endif
