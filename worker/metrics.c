/* metrics.c - the worker's metrics registry, Prometheus text rendering and the
 * libmicrohttpd server of /metrics, /healthz and /readyz (metrics.h). */
#include "metrics.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the registry --------------------------------------------------------
 *
 * Families are fixed (the table below, in rendering order); samples are
 * created on first use with their label set preformatted, so recording is a
 * lookup in a short array under one mutex. The label values all come from
 * the worker's own constants (states, error codes, stages), so the number of
 * samples is bounded; a full table drops new label sets rather than grow. */

enum { F_JOBS, F_REQUEUED, F_REPLAYED, F_DLQ, F_STAGE, F_IMAGES, F_BATCH_JOBS, F_BATCH_IMAGES, F_HITS, F_MISSES,
       F_DOWNLOADS, F_DOWNLOAD_BYTES, F_EVICTIONS, F_EVICTED_BYTES, F_LOADS, F_MODEL_EVICTIONS, F_MODELS,
       F_MODEL_BYTES, F_DEVICE_MEM, F_RUNNING, F_STATE, F_INFO, F_READY, F_RS_HITS, F_RS_MISSES, F_RS_ERRORS, F_LAG, F_COUNT };

typedef struct family {
    const char *name, *type, *help;
} family;

static const family families[F_COUNT] = {
    [F_JOBS] = {"perflow_jobs_total", "counter", "Jobs ended with a terminal status, by state and error code."},
    [F_REQUEUED] = {"perflow_jobs_requeued_total", "counter", "Retryable failures re-enqueued for another attempt."},
    [F_REPLAYED] = {"perflow_jobs_replayed_total", "counter",
                    "Redeliveries of finished jobs answered from their Redis record without running."},
    [F_DLQ] = {"perflow_dead_letters_total", "counter", "Messages sent to the dead-letter topic, by error code."},
    [F_STAGE] = {"perflow_stage_duration_seconds", "histogram",
                 "Time per stage: download and load per model fetch, text/denoise/decode per text-to-image "
                 "engine call, refine per refine call, upload per job."},
    [F_IMAGES] = {"perflow_images_total", "counter", "Images uploaded by succeeded jobs, by stage."},
    [F_BATCH_JOBS] = {"perflow_batch_jobs", "histogram", "Jobs per engine call."},
    [F_BATCH_IMAGES] = {"perflow_batch_images", "histogram", "Distinct images per engine call."},
    [F_HITS] = {"perflow_model_cache_hits_total", "counter", "Models and ControlNets found already loaded."},
    [F_MISSES] = {"perflow_model_cache_misses_total", "counter",
                  "Models and ControlNets fetched through the disk cache and loaded."},
    [F_DOWNLOADS] = {"perflow_cache_downloads_total", "counter", "Files downloaded into the disk cache."},
    [F_DOWNLOAD_BYTES] = {"perflow_cache_download_bytes_total", "counter", "Bytes downloaded into the disk cache."},
    [F_EVICTIONS] = {"perflow_cache_evictions_total", "counter", "Blobs evicted from the disk cache."},
    [F_EVICTED_BYTES] = {"perflow_cache_evicted_bytes_total", "counter", "Bytes evicted from the disk cache."},
    [F_LOADS] = {"perflow_model_loads_total", "counter", "Models and ControlNets loaded onto the device."},
    [F_MODEL_EVICTIONS] = {"perflow_model_evictions_total", "counter",
                           "Loaded models unloaded to fit the model memory budget."},
    [F_MODELS] = {"perflow_models_loaded", "gauge", "Models loaded now (the warm set)."},
    [F_MODEL_BYTES] = {"perflow_model_memory_bytes", "gauge", "Estimated bytes of the loaded models' weights."},
    [F_DEVICE_MEM] = {"perflow_device_memory_bytes", "gauge",
                      "Device memory of the engine's backend (CUDA; 0 on the CPU): in use and reserved."},
    [F_RUNNING] = {"perflow_jobs_running", "gauge", "Jobs in the batch being run."},
    [F_STATE] = {"perflow_worker_state", "gauge", "1 for the worker's current state."},
    [F_INFO] = {"perflow_worker_info", "gauge", "The worker's id and engine backend."},
    [F_READY] = {"perflow_ready", "gauge", "1 when /readyz answers 200."},
    [F_RS_HITS] = {"perflow_result_store_hits_total", "counter",
                   "Images copied from the result store instead of computed."},
    [F_RS_MISSES] = {"perflow_result_store_misses_total", "counter",
                     "Images looked up in the result store and not found (then computed)."},
    [F_RS_ERRORS] = {"perflow_result_store_errors_total", "counter",
                     "Result store lookups or records that failed (the image was computed, or not recorded)."},
    [F_LAG] = {"perflow_consumer_lag", "gauge",
               "Messages of an assigned jobs partition not yet committed by the group (high watermark minus "
               "committed offset), as librdkafka last saw them."},
};

#define MAX_SAMPLES 256
#define MAX_HISTS 24
#define MAX_BUCKETS 16

typedef struct sample {
    int fam;
    char labels[192]; /* preformatted: state="x",code="y" */
    double v;
} sample;

typedef struct hist {
    int fam;
    char labels[64];
    const double *bounds;
    int nb;
    uint64_t counts[MAX_BUCKETS]; /* per bucket, not cumulative */
    uint64_t count;
    double sum;
} hist;

static const double seconds_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64};
static const char *const stages[] = {"download", "load", "text", "denoise", "decode", "refine", "upload"};
static const char *const state_names[PF_WSTATE_COUNT] = {"starting", "idle", "running", "waiting", "draining"};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static sample samples[MAX_SAMPLES];
static int nsamples;
static hist hists[MAX_HISTS];
static int nhists;
static int seeded;
static int kafka_ok, redis_ok, checked, fail_streak;
static char not_ready[256] = "the worker has not checked the broker and Redis yet";

/* Appends a label pair to buf (escaping \, " and newlines as the format wants). */
static void add_label(char *buf, size_t n, const char *name, const char *value) {
    size_t o = strlen(buf);
    o += (size_t)snprintf(buf + o, o < n ? n - o : 0, "%s%s=\"", o ? "," : "", name);
    for (const char *p = value ? value : ""; *p && o + 3 < n; p++) {
        if (*p == '\\' || *p == '"') buf[o++] = '\\', buf[o++] = *p;
        else if (*p == '\n') buf[o++] = '\\', buf[o++] = 'n';
        else buf[o++] = *p;
    }
    if (o + 1 < n) buf[o++] = '"';
    buf[o < n ? o : n - 1] = '\0';
}

/* The sample of fam with labels, created at 0 when new; NULL when the table is full. Under lock. */
static sample *get(int fam, const char *labels) {
    for (int i = 0; i < nsamples; i++)
        if (samples[i].fam == fam && !strcmp(samples[i].labels, labels)) return &samples[i];
    if (nsamples == MAX_SAMPLES) return NULL;
    sample *s = &samples[nsamples++];
    s->fam = fam;
    snprintf(s->labels, sizeof s->labels, "%s", labels);
    s->v = 0;
    return s;
}

static hist *get_hist(int fam, const char *labels, const double *bounds, int nb) {
    for (int i = 0; i < nhists; i++)
        if (hists[i].fam == fam && !strcmp(hists[i].labels, labels)) return &hists[i];
    if (nhists == MAX_HISTS) return NULL;
    hist *h = &hists[nhists++];
    memset(h, 0, sizeof *h);
    h->fam = fam;
    snprintf(h->labels, sizeof h->labels, "%s", labels);
    h->bounds = bounds;
    h->nb = nb;
    return h;
}

/* The series that exist from the start, at 0, so that dashboards and rate()
 * see them before the first event. Under lock. */
static void seed(void) {
    if (seeded) return;
    seeded = 1;
    char l[64];
    for (size_t i = 0; i < sizeof stages / sizeof *stages; i++) {
        l[0] = '\0';
        add_label(l, sizeof l, "stage", stages[i]);
        get_hist(F_STAGE, l, seconds_bounds, (int)(sizeof seconds_bounds / sizeof *seconds_bounds));
    }
    for (int s = 0; s < 2; s++) {
        l[0] = '\0';
        add_label(l, sizeof l, "stage", s ? "refine" : "generate");
        get_hist(F_BATCH_JOBS, l, batch_bounds, (int)(sizeof batch_bounds / sizeof *batch_bounds));
        get_hist(F_BATCH_IMAGES, l, batch_bounds, (int)(sizeof batch_bounds / sizeof *batch_bounds));
    }
    get(F_JOBS, "state=\"succeeded\",code=\"\"");
    get(F_RS_HITS, "");
    get(F_RS_MISSES, "");
    get(F_RS_ERRORS, "");
    get(F_REPLAYED, "");
    get(F_DOWNLOADS, "");
    get(F_DOWNLOAD_BYTES, "");
    get(F_EVICTIONS, "");
    get(F_EVICTED_BYTES, "");
    get(F_MODEL_EVICTIONS, "");
    get(F_MODELS, "");
    get(F_MODEL_BYTES, "");
    get(F_DEVICE_MEM, "kind=\"in_use\"");
    get(F_DEVICE_MEM, "kind=\"reserved\"");
    get(F_RUNNING, "");
    for (int s = 0; s < PF_WSTATE_COUNT; s++) {
        l[0] = '\0';
        add_label(l, sizeof l, "state", state_names[s]);
        sample *x = get(F_STATE, l);
        if (x && s == PF_WSTATE_STARTING) x->v = 1;
    }
    get(F_READY, "");
}

static void add(int fam, const char *labels, double v) {
    pthread_mutex_lock(&lock);
    seed();
    sample *s = get(fam, labels);
    if (s) s->v += v;
    pthread_mutex_unlock(&lock);
}

static void set(int fam, const char *labels, double v) {
    pthread_mutex_lock(&lock);
    seed();
    sample *s = get(fam, labels);
    if (s) s->v = v;
    pthread_mutex_unlock(&lock);
}

static void observe(int fam, const char *labels, const double *bounds, int nb, double v) {
    pthread_mutex_lock(&lock);
    seed();
    hist *h = get_hist(fam, labels, bounds, nb);
    if (h) {
        int b = 0;
        while (b < nb && v > bounds[b]) b++;
        if (b < nb) h->counts[b]++;
        h->count++;
        h->sum += v;
    }
    pthread_mutex_unlock(&lock);
}

static void one_label(char *buf, size_t n, const char *name, const char *value) {
    buf[0] = '\0';
    add_label(buf, n, name, value);
}

void pf_metrics_init(const char *worker_id, const char *backend) {
    char l[192] = "";
    add_label(l, sizeof l, "worker_id", worker_id);
    add_label(l, sizeof l, "backend", backend);
    set(F_INFO, l, 1);
}

void pf_metrics_job_ended(const char *state, const char *code) {
    char l[192] = "";
    add_label(l, sizeof l, "state", state);
    add_label(l, sizeof l, "code", code);
    add(F_JOBS, l, 1);
}

void pf_metrics_job_requeued(const char *code) {
    char l[96];
    one_label(l, sizeof l, "code", code);
    add(F_REQUEUED, l, 1);
}

void pf_metrics_result_store(int hits, int misses, int errors) {
    if (hits) add(F_RS_HITS, "", hits);
    if (misses) add(F_RS_MISSES, "", misses);
    if (errors) add(F_RS_ERRORS, "", errors);
}

void pf_metrics_job_replayed(void) {
    add(F_REPLAYED, "", 1);
}

void pf_metrics_dead_letter(const char *code) {
    char l[96];
    one_label(l, sizeof l, "code", code);
    add(F_DLQ, l, 1);
}

void pf_metrics_stage(const char *stage, long long ms) {
    size_t i = 0;
    while (i < sizeof stages / sizeof *stages && strcmp(stages[i], stage)) i++;
    if (i == sizeof stages / sizeof *stages || ms < 0) return;
    char l[64];
    one_label(l, sizeof l, "stage", stage);
    observe(F_STAGE, l, seconds_bounds, (int)(sizeof seconds_bounds / sizeof *seconds_bounds), (double)ms / 1000.0);
}

void pf_metrics_engine_call(long long t0, long long t_text, long long t_denoise, long long t1) {
    if (t_text) pf_metrics_stage("text", t_text - t0);
    if (t_text && t_denoise) pf_metrics_stage("denoise", t_denoise - t_text);
    if (t_denoise) pf_metrics_stage("decode", t1 - t_denoise);
}

void pf_metrics_batch(const char *stage, int jobs, int images) {
    char l[64];
    one_label(l, sizeof l, "stage", stage);
    const int nb = (int)(sizeof batch_bounds / sizeof *batch_bounds);
    observe(F_BATCH_JOBS, l, batch_bounds, nb, jobs);
    observe(F_BATCH_IMAGES, l, batch_bounds, nb, images);
}

void pf_metrics_images(const char *stage, int n) {
    char l[64];
    one_label(l, sizeof l, "stage", stage);
    add(F_IMAGES, l, n);
}

void pf_metrics_engine_result(int failed) {
    pthread_mutex_lock(&lock);
    fail_streak = failed ? fail_streak + 1 : 0;
    pthread_mutex_unlock(&lock);
}

void pf_metrics_model_lookup(const char *kind, int warm) {
    char l[64];
    one_label(l, sizeof l, "kind", kind);
    add(warm ? F_HITS : F_MISSES, l, 1);
}

void pf_metrics_model_loaded(const char *kind) {
    char l[64];
    one_label(l, sizeof l, "kind", kind);
    add(F_LOADS, l, 1);
}

void pf_metrics_model_evicted(void) {
    add(F_MODEL_EVICTIONS, "", 1);
}

void pf_metrics_models(int loaded, uint64_t bytes) {
    set(F_MODELS, "", loaded);
    set(F_MODEL_BYTES, "", (double)bytes);
}

void pf_metrics_device_memory(uint64_t in_use, uint64_t reserved) {
    set(F_DEVICE_MEM, "kind=\"in_use\"", (double)in_use);
    set(F_DEVICE_MEM, "kind=\"reserved\"", (double)reserved);
}

void pf_metrics_state(pf_worker_state st) {
    for (int s = 0; s < PF_WSTATE_COUNT; s++) {
        char l[64];
        one_label(l, sizeof l, "state", state_names[s]);
        set(F_STATE, l, s == (int)st);
    }
}

void pf_metrics_jobs_running(int n) {
    set(F_RUNNING, "", n);
}

void pf_metrics_consumer_lag(const char *topic, const int *partitions, const long long *lags, int n) {
    char prefix[320];
    one_label(prefix, sizeof prefix, "topic", topic);
    size_t np = strlen(prefix);
    pthread_mutex_lock(&lock);
    seed();
    /* The topic's samples go (a revoked partition is no longer this worker's lag) ... */
    int k = 0;
    for (int i = 0; i < nsamples; i++)
        if (!(samples[i].fam == F_LAG && !strncmp(samples[i].labels, prefix, np) && samples[i].labels[np] == ','))
            samples[k++] = samples[i];
    nsamples = k;
    /* ... and the assigned partitions' come back. */
    for (int i = 0; i < n; i++) {
        char l[192], part[16];
        snprintf(l, sizeof l, "%s", prefix);
        snprintf(part, sizeof part, "%d", partitions[i]);
        add_label(l, sizeof l, "partition", part);
        sample *x = get(F_LAG, l);
        if (x) x->v = (double)lags[i];
    }
    pthread_mutex_unlock(&lock);
}

void pf_metrics_health(int kafka, int redis, const char *why) {
    pthread_mutex_lock(&lock);
    kafka_ok = kafka;
    redis_ok = redis;
    checked = 1;
    snprintf(not_ready, sizeof not_ready, "%s", why ? why : "");
    pthread_mutex_unlock(&lock);
}

int pf_metrics_ready(char *why, size_t n) {
    pthread_mutex_lock(&lock);
    int ok = checked && kafka_ok && redis_ok && fail_streak < 3;
    if (!ok) {
        if (checked && kafka_ok && redis_ok)
            snprintf(why, n, "the device is not usable: the last %d engine calls failed", fail_streak);
        else
            snprintf(why, n, "%s", not_ready[0] ? not_ready : "not ready");
    } else if (n) {
        why[0] = '\0';
    }
    pthread_mutex_unlock(&lock);
    return ok;
}

/* ---- the disk cache's events, from its log lines ------------------------ */

static pf_log_sink storage_inner;

/* "GET URL: cached N bytes as sha256 ..." and "cache: evicted sha256 D (N bytes)",
 * the lines storage/cache.c and cache_evict.c write for these events. */
static void storage_line(void *ctx, int level, const char *line) {
    (void)ctx;
    const char *p;
    if (!strncmp(line, "GET ", 4) && (p = strstr(line, ": cached ")) && strstr(p, " bytes as sha256 ")) {
        add(F_DOWNLOADS, "", 1);
        add(F_DOWNLOAD_BYTES, "", strtod(p + 9, NULL));
    } else if (!strncmp(line, "cache: evicted sha256 ", 22) && (p = strchr(line, '('))) {
        add(F_EVICTIONS, "", 1);
        add(F_EVICTED_BYTES, "", strtod(p + 1, NULL));
    }
    if (storage_inner.fn && level <= storage_inner.level) storage_inner.fn(storage_inner.ctx, level, line);
}

pf_log_sink pf_metrics_storage_sink(pf_log_sink inner) {
    storage_inner = inner;
    pf_log_sink s = {storage_line, NULL, inner.level > PF_LOG_INFO ? inner.level : PF_LOG_INFO};
    return s;
}

/* ---- rendering ----------------------------------------------------------- */

typedef struct text {
    char *s;
    size_t len, cap;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        PF_CHECK(k >= 0);
        if ((size_t)k < t->cap - t->len) {
            t->len += (size_t)k;
            return;
        }
        t->cap = 2 * t->cap + (size_t)k;
        t->s = realloc(t->s, t->cap);
        PF_CHECK(t->s);
    }
}

/* Prometheus wants integers without an exponent and floats as Go prints them; %.17g is exact. */
static void put_value(text *t, double v) {
    if (v == (double)(int64_t)v && v > -9e15 && v < 9e15) put(t, "%" PRId64 "\n", (int64_t)v);
    else put(t, "%.17g\n", v);
}

char *pf_metrics_render(void) {
    text t = {PF_MALLOC(8192), 0, 8192};
    t.s[0] = '\0';
    char why[8];
    set(F_READY, "", pf_metrics_ready(why, sizeof why));
    pthread_mutex_lock(&lock);
    for (int f = 0; f < F_COUNT; f++) {
        const family *fm = &families[f];
        put(&t, "# HELP %s %s\n# TYPE %s %s\n", fm->name, fm->help, fm->name, fm->type);
        if (!strcmp(fm->type, "histogram")) {
            for (int i = 0; i < nhists; i++) {
                const hist *h = &hists[i];
                if (h->fam != f) continue;
                const char *sep = h->labels[0] ? "," : "";
                uint64_t cum = 0;
                for (int b = 0; b < h->nb; b++) {
                    cum += h->counts[b];
                    put(&t, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", fm->name, h->labels, sep, h->bounds[b], cum);
                }
                put(&t, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", fm->name, h->labels, sep, h->count);
                put(&t, "%s_sum{%s} ", fm->name, h->labels);
                put_value(&t, h->sum);
                put(&t, "%s_count{%s} %" PRIu64 "\n", fm->name, h->labels, h->count);
            }
            continue;
        }
        for (int i = 0; i < nsamples; i++) {
            const sample *s = &samples[i];
            if (s->fam != f) continue;
            if (s->labels[0]) put(&t, "%s{%s} ", fm->name, s->labels);
            else put(&t, "%s ", fm->name);
            put_value(&t, s->v);
        }
    }
    pthread_mutex_unlock(&lock);
    return t.s;
}

/* ---- the HTTP server ----------------------------------------------------- */

struct pf_metrics_server {
    struct MHD_Daemon *d;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, char *body, const char *type) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **req_cls) {
    (void)cls, (void)version, (void)upload_data;
    static int first;
    if (!*req_cls) { /* the headers are in; answer on the next call, once any body is read */
        *req_cls = &first;
        return MHD_YES;
    }
    if (*upload_data_size) { /* a body nobody asked for: read past it */
        *upload_data_size = 0;
        return MHD_YES;
    }
    const char *plain = "text/plain; charset=utf-8";
    if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, PF_STRDUP("only GET and HEAD\n"), plain);
    if (!strcmp(url, "/metrics"))
        return reply(c, MHD_HTTP_OK, pf_metrics_render(), "text/plain; version=0.0.4; charset=utf-8");
    if (!strcmp(url, "/healthz")) return reply(c, MHD_HTTP_OK, PF_STRDUP("ok\n"), plain);
    if (!strcmp(url, "/readyz")) {
        char why[300], body[320];
        int ok = pf_metrics_ready(why, sizeof why);
        snprintf(body, sizeof body, "%s\n", ok ? "ready" : why);
        return reply(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, PF_STRDUP(body), plain);
    }
    return reply(c, MHD_HTTP_NOT_FOUND, PF_STRDUP("not found: try /metrics, /healthz or /readyz\n"), plain);
}

/* Parses "HOST:PORT", "[V6]:PORT" or ":PORT" into ss. */
static int parse_listen(struct sockaddr_storage *ss, const char *listen, pf_error *err) {
    memset(ss, 0, sizeof *ss);
    char host[128];
    const char *colon;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':' || (size_t)(close - listen - 1) >= sizeof host)
            return pf_fail(err, "metrics_listen '%s' must be HOST:PORT, [IPV6]:PORT or :PORT", listen);
        snprintf(host, sizeof host, "%.*s", (int)(close - listen - 1), listen + 1);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon || (size_t)(colon - listen) >= sizeof host)
            return pf_fail(err, "metrics_listen '%s' must be HOST:PORT, [IPV6]:PORT or :PORT", listen);
        snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535)
        return pf_fail(err, "metrics_listen '%s': the port must be a number from 0 to 65535", listen);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (listen[0] == '[') {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &v6->sin6_addr) != 1)
            return pf_fail(err, "metrics_listen '%s': '%s' is not an IPv6 address", listen, host);
    } else {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        /* ":PORT" is loopback: serving every interface is a choice to write out (0.0.0.0:PORT) */
        if (!host[0]) v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (inet_pton(AF_INET, host, &v4->sin_addr) != 1)
            return pf_fail(err, "metrics_listen '%s': '%s' is not an IPv4 address (names are not resolved)", listen,
                           host);
    }
    return 0;
}

int pf_metrics_start(pf_metrics_server **out, const char *listen, int *port, pf_error *err) {
    *out = NULL;
    struct sockaddr_storage ss;
    if (parse_listen(&ss, listen, err)) return -1;
    /* One event loop (MHD_USE_AUTO: epoll here), so idle connections cost a
     * descriptor, not a thread. A client may hold PER_IP connections, all
     * clients together MAX_CONNS, and a connection that says nothing for
     * IDLE_S seconds is closed: with 16 in all and 10 s, 16 idle connections
     * locked the health probe out and got healthy workers killed. */
    enum { MAX_CONNS = 256, PER_IP = 8, IDLE_S = 5 };
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    /* A scrape is small and quick: a few connections, a short timeout, so a
     * stuck client cannot hold the thread. */
    struct MHD_Daemon *d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR,
                                            (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNS,
                                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)PER_IP,
                                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_S, MHD_OPTION_END);
    if (!d) return pf_fail(err, "metrics_listen %s: cannot listen there (address in use or not local?)", listen);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    if (port) *port = info ? info->port : 0;
    pf_metrics_server *s = PF_CALLOC(1, sizeof *s);
    s->d = d;
    *out = s;
    return 0;
}

void pf_metrics_stop(pf_metrics_server *s) {
    if (!s) return;
    MHD_stop_daemon(s->d);
    free(s);
}
