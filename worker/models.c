/* models.c - the warm LRU of loaded pipelines, their ControlNets, and control images (models.h). */
#include "models.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backoff.h"
#include "image.h"
#include "log.h"
#include "metrics.h"
#include "model_route.h"
#include "model_source.h"

#define MAX_MODELS 32

struct pf_models {
    pf_cache *cache;
    pf_backend *be;
    uint64_t budget;
    pf_model *m[MAX_MODELS];
    int n;
};

void pf_models_open(pf_models **out, pf_cache *cache, pf_backend *be, uint64_t budget_bytes) {
    pf_models *m = PF_CALLOC(1, sizeof *m);
    m->cache = cache;
    m->be = be;
    m->budget = budget_bytes;
    *out = m;
}

static void release_nets(pf_model *x) {
    for (int i = 0; i < x->n_nets; i++) pf_cache_release(x->nets[i]);
    x->n_nets = 0;
    free(x->nets_key);
    x->nets_key = NULL;
}

static void release_ips(pf_model *x) {
    for (int i = 0; i < x->n_ips; i++) pf_cache_release(x->ips[i]);
    x->n_ips = 0;
    free(x->ips_key);
    x->ips_key = NULL;
}

static void unload(pf_model *x) {
    pf_pipeline_free(x->pipe);
    pf_cache_release(x->base);
    pf_cache_release(x->config);
    pf_cache_release(x->delta);
    for (int i = 0; i < PF_JOB_MAX_LORAS; i++) pf_cache_release(x->loras[i]);
    release_nets(x);
    release_ips(x);
    free(x->key);
    free(x);
}

void pf_models_close(pf_models *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++) {
        PF_CHECK(!m->m[i]->in_use);
        unload(m->m[i]);
    }
    free(m);
}

/* Bytes of the regular files under path (following the cache's symlinks), two levels deep. */
static uint64_t tree_bytes(const char *path, int depth) {
    struct stat st;
    if (stat(path, &st)) return 0;
    if (S_ISREG(st.st_mode)) return (uint64_t)st.st_size;
    if (!S_ISDIR(st.st_mode) || depth > 2) return 0;
    DIR *d = opendir(path);
    if (!d) return 0;
    uint64_t sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        size_t nl = strlen(e->d_name);
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (stat(sub, &st)) continue;
        if (S_ISDIR(st.st_mode)) sum += tree_bytes(sub, depth + 1);
        else if (nl > 12 && !strcmp(e->d_name + nl - 12, ".safetensors")) sum += (uint64_t)st.st_size;
    }
    closedir(d);
    return sum;
}

static uint64_t lease_bytes(const pf_cache_lease *l) {
    return l ? tree_bytes(pf_cache_lease_path(l), 0) : 0;
}

/* Fetches one source through the cache into *lease; on error err's kind is
 * the storage layer's (transient unless it said permanent), its field and
 * the start of its message field. */
static int acquire(pf_models *m, pf_cache_lease **lease, pf_source_kind kind, const char *url, const char *sha256,
                   int fp16, const char *field, pf_error *err) {
    pf_model_source src;
    *lease = NULL;
    if (pf_model_source_init(&src, kind, url, sha256, fp16, err)) /* the job's URL: trying again will not help */
        pf_error_set_kind(err, PF_ERROR_PERMANENT, field);
    else if (pf_cache_acquire(lease, m->cache, &src, err))
        pf_error_set_kind(err, err->kind == PF_ERROR_PERMANENT ? PF_ERROR_PERMANENT : PF_ERROR_TRANSIENT, field);
    else
        return 0;
    return pf_error_prefix(err, "%s", field);
}

/* A source the engine read, for the messages: its local path, its URL and its job field. */
typedef struct named {
    const char *path, *url, *field;
} named;

/* Rewrites err so that it names each source by its URL rather than by the
 * cache's path (which means nothing to the client), and returns the field of
 * the first of src[0..n) that the message named, or NULL. */
static const char *name_sources(pf_error *err, const named *src, int n) {
    const char *field = NULL;
    for (int i = 0; i < n; i++) {
        if (!src[i].path || !src[i].path[0]) continue;
        const size_t pl = strlen(src[i].path), ul = strlen(src[i].url);
        char out[sizeof err->msg];
        size_t o = 0;
        int hit = 0;
        for (const char *p = err->msg; *p && o < sizeof out - 1;) {
            if (!strncmp(p, src[i].path, pl)) {
                size_t k = ul < sizeof out - 1 - o ? ul : sizeof out - 1 - o;
                memcpy(out + o, src[i].url, k);
                o += k;
                p += pl;
                hit = 1;
            } else {
                out[o++] = *p++;
            }
        }
        out[o] = '\0';
        memcpy(err->msg, out, o + 1);
        if (hit && !field) field = src[i].field;
    }
    return field;
}

/* Unloads idle models, least recently used first, until need more bytes fit. */
static void make_room(pf_models *m, uint64_t need) {
    for (;;) {
        uint64_t total = 0;
        int victim = -1;
        for (int i = 0; i < m->n; i++) {
            total += m->m[i]->bytes;
            if (!m->m[i]->in_use && (victim < 0 || m->m[i]->last_use < m->m[victim]->last_use)) victim = i;
        }
        if ((total + need <= m->budget && m->n < MAX_MODELS) || victim < 0) return;
        pf_wlog(PF_LOG_INFO, "model.unloaded", NULL,
                json_pack("{s:I}", "bytes", (json_int_t)m->m[victim]->bytes), "evicting %.300s to fit the budget",
                m->m[victim]->key);
        unload(m->m[victim]);
        m->m[victim] = m->m[--m->n];
        pf_metrics_model_evicted();
    }
}

static json_t *source_json(const pf_job_source *s) {
    return json_pack("[s, s?]", s->url ? s->url : "", s->sha256);
}

/* After a load, what each LoRA matched: one log line each, a warning when
 * some of its keys matched nothing (they were dropped). */
static void log_loras(const pf_job *job, const pf_lora_report *r) {
    for (int i = 0; i < job->n_loras; i++) {
        char field[PF_JOB_FIELD_MAX];
        snprintf(field, sizeof field, "model.loras[%d]", i);
        pf_wlog(PF_LOG_INFO, "model.lora", NULL,
                json_pack("{s:s, s:s, s:s, s:f, s:i, s:i}", "field", field, "url", job->loras[i].url, "format",
                          pf_lora_format_name(r[i].format), "scale", (double)job->loras[i].scale, "matched",
                          r[i].matched, "tensors", r[i].total),
                NULL);
        if (r[i].unmatched)
            pf_wlog(PF_LOG_WARN, "model.lora_unmatched", NULL,
                    json_pack("{s:s, s:s, s:i}", "field", field, "url", job->loras[i].url, "unmatched", r[i].unmatched),
                    "%d tensors matched no weight of the model and were dropped: %s", r[i].unmatched,
                    r[i].unmatched_keys);
    }
}

int pf_models_get(pf_models *m, const pf_job *job, pf_model **out, pf_model_timing *t,
                  void (*on_fetch)(void *), void *ctx, pf_error *err) {
    *out = NULL;
    pf_error_set_kind(err, PF_ERROR_NONE, NULL);
    memset(t, 0, sizeof *t);
    char *key = pf_route_model_text(job); /* the LRU key: everything fused into the weights */
    for (int i = 0; i < m->n; i++)
        if (!m->m[i]->in_use && !strcmp(m->m[i]->key, key)) {
            free(key);
            m->m[i]->in_use = 1;
            m->m[i]->last_use = pf_now_ms();
            t->warm = 1;
            *out = m->m[i];
            pf_metrics_model_lookup("model", 1);
            return 0;
        }
    pf_metrics_model_lookup("model", 0);
    if (on_fetch) on_fetch(ctx);
    pf_model *x = PF_CALLOC(1, sizeof *x);
    x->key = key;
    long long t0 = pf_now_ms();
    if (acquire(m, &x->base, job->base_file ? PF_SOURCE_FILE : PF_SOURCE_DIFFUSERS, job->base.url, job->base.sha256,
                job->fp16, "model.base", err) ||
        (job->config.url &&
         acquire(m, &x->config, PF_SOURCE_CONFIGS, job->config.url, NULL, 0, "model.config", err)) ||
        (job->delta.url &&
         acquire(m, &x->delta, PF_SOURCE_FILE, job->delta.url, job->delta.sha256, 0, "model.delta", err)))
        goto fail;
    char fields[PF_JOB_MAX_LORAS][PF_JOB_FIELD_MAX];
    pf_lora_spec loras[PF_JOB_MAX_LORAS];
    for (int i = 0; i < job->n_loras; i++) {
        snprintf(fields[i], sizeof fields[i], "model.loras[%d]", i);
        if (acquire(m, &x->loras[i], PF_SOURCE_FILE, job->loras[i].url, job->loras[i].sha256, 0, fields[i],
                    err))
            goto fail;
        loras[i] = (pf_lora_spec){pf_cache_lease_path(x->loras[i]), job->loras[i].scale};
    }
    t->download_ms = pf_now_ms() - t0;
    x->bytes = lease_bytes(x->base) + lease_bytes(x->delta);
    for (int i = 0; i < job->n_loras; i++) x->bytes += lease_bytes(x->loras[i]);
    make_room(m, x->bytes);
    t0 = pf_now_ms();
    pf_lora_report reports[PF_JOB_MAX_LORAS];
    pf_model_spec spec = {pf_cache_lease_path(x->base), x->config ? pf_cache_lease_path(x->config) : NULL,
                          x->delta ? pf_cache_lease_path(x->delta) : NULL, loras, job->n_loras, reports};
    if (pf_pipeline_load_model(&x->pipe, m->be, &spec, err)) {
        /* A LoRA names itself in the engine's messages, and names the base it
         * does not fit: the LoRAs are looked for first, the base last. */
        named src[PF_JOB_MAX_LORAS + 3];
        int n = 0;
        for (int i = 0; i < job->n_loras; i++) src[n++] = (named){loras[i].path, job->loras[i].url, fields[i]};
        src[n++] = (named){spec.delta, job->delta.url, "model.delta"};
        src[n++] = (named){spec.model_config, job->config.url, "model.config"};
        src[n++] = (named){spec.model, job->base.url, "model.base"};
        const char *field = name_sources(err, src, n);
        if (field && strcmp(field, "model.base")) {
            pf_error_set_kind(err, PF_ERROR_INVALID, field);
            pf_error_prefix(err, "%s", field);
        } else {
            pf_error_set_kind(err, PF_ERROR_MODEL, "model.base");
            pf_error_prefix(err, "loading the model");
        }
        unload(x);
        return -1;
    }
    x->family = pf_family_name(pf_pipeline_family(x->pipe));
    t->load_ms = pf_now_ms() - t0;
    log_loras(job, reports);
    pf_metrics_stage("download", t->download_ms);
    pf_metrics_stage("load", t->load_ms);
    pf_metrics_model_loaded("model");
    PF_CHECK(m->n < MAX_MODELS);
    m->m[m->n++] = x;
    x->in_use = 1;
    x->last_use = pf_now_ms();
    pf_wlog(PF_LOG_INFO, "model.loaded", NULL,
            json_pack("{s:I, s:I, s:I, s:i, s:s, s:i}", "bytes", (json_int_t)x->bytes, "download_ms",
                      (json_int_t)t->download_ms, "load_ms", (json_int_t)t->load_ms, "models_loaded", m->n, "family",
                      x->family, "loras", job->n_loras),
            "%.600s", x->key);
    *out = x;
    return 0;
fail:
    unload(x);
    return -1;
}

int pf_models_control_net(const pf_job *job, int i) {
    return (job->refine.on ? 1 : 0) + i;
}

int pf_models_controlnets(pf_models *m, pf_model *model, const pf_job *job, pf_model_timing *t,
                          void (*on_fetch)(void *), void *ctx, pf_error *err) {
    PF_CHECK(model->in_use);
    pf_error_set_kind(err, PF_ERROR_NONE, NULL);
    memset(t, 0, sizeof *t);
    /* the nets in pipeline order: the refiner's tile first (net 0, what a refine run without controls takes) */
    const pf_job_source *want[PF_MAX_CONTROLS];
    char fields[PF_MAX_CONTROLS][PF_JOB_FIELD_MAX];
    int n = 0;
    if (job->refine.on) {
        snprintf(fields[n], sizeof fields[n], "refine.controlnet");
        want[n++] = &job->refine.controlnet;
    }
    for (int i = 0; i < job->n_controls; i++) {
        PF_CHECK(n < PF_MAX_CONTROLS && pf_models_control_net(job, i) == n);
        snprintf(fields[n], sizeof fields[n], "control[%d].controlnet", i);
        want[n++] = &job->control[i].controlnet;
    }
    if (n == 0) {
        t->warm = 1; /* nothing to attach: whatever the model holds is not used */
        return 0;
    }
    json_t *k = json_pack("{s:b, s:[]}", "fp16", job->fp16, "nets");
    for (int i = 0; i < n; i++) json_array_append_new(json_object_get(k, "nets"), source_json(want[i]));
    char *key = json_dumps(k, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(k);
    PF_CHECK(key);
    if (model->nets_key && !strcmp(model->nets_key, key)) {
        free(key);
        t->warm = 1;
        pf_metrics_model_lookup("controlnet", 1);
        return 0;
    }
    pf_metrics_model_lookup("controlnet", 0);
    if (on_fetch) on_fetch(ctx);
    long long t0 = pf_now_ms();
    pf_cache_lease *leases[PF_MAX_CONTROLS] = {0};
    const char *dirs[PF_MAX_CONTROLS];
    uint64_t bytes = 0;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        rc = acquire(m, &leases[i], PF_SOURCE_COMPONENT, want[i]->url, want[i]->sha256, job->fp16, fields[i],
                     err);
        if (!rc) {
            dirs[i] = pf_cache_lease_path(leases[i]);
            bytes += lease_bytes(leases[i]);
        }
    }
    if (!rc) {
        t->download_ms = pf_now_ms() - t0;
        make_room(m, bytes); /* model is in use: only other models go */
        t0 = pf_now_ms();
        if (pf_pipeline_set_controlnets(model->pipe, dirs, n, err)) {
            named src[PF_MAX_CONTROLS];
            for (int i = 0; i < n; i++) src[i] = (named){dirs[i], want[i]->url, fields[i]};
            const char *field = name_sources(err, src, n);
            pf_error_set_kind(err, PF_ERROR_MODEL, field);
            pf_error_prefix(err, "%s: loading the ControlNet", field ? field : fields[0]);
            rc = -1;
        }
    }
    if (rc) {
        for (int i = 0; i < n; i++) pf_cache_release(leases[i]);
        free(key);
        return -1;
    }
    t->load_ms = pf_now_ms() - t0;
    pf_metrics_stage("download", t->download_ms);
    pf_metrics_stage("load", t->load_ms);
    pf_metrics_model_loaded("controlnet");
    release_nets(model); /* the pipeline let go of the old ones' weights */
    model->bytes = model->bytes - model->nets_bytes + bytes;
    for (int i = 0; i < n; i++) model->nets[i] = leases[i];
    model->n_nets = n;
    model->nets_bytes = bytes;
    model->nets_key = key;
    pf_wlog(PF_LOG_INFO, "model.controlnet_loaded", NULL,
            json_pack("{s:I, s:I, s:I, s:i}", "bytes", (json_int_t)bytes, "download_ms", (json_int_t)t->download_ms,
                      "load_ms", (json_int_t)t->load_ms, "nets", n),
            "%.600s", key);
    return 0;
}

int pf_models_ip_adapters(pf_models *m, pf_model *model, const pf_job *job, pf_model_timing *t,
                          void (*on_fetch)(void *), void *ctx, pf_error *err) {
    PF_CHECK(model->in_use);
    pf_error_set_kind(err, PF_ERROR_NONE, NULL);
    memset(t, 0, sizeof *t);
    const int n = job->n_ip;
    if (n == 0) {
        t->warm = 1; /* nothing to attach: whatever the model holds is not used */
        return 0;
    }
    json_t *k = json_pack("{s:b, s:o, s:[]}", "fp16", job->fp16, "encoder", source_json(&job->ip[0].image_encoder),
                          "adapters");
    for (int i = 0; i < n; i++) json_array_append_new(json_object_get(k, "adapters"), source_json(&job->ip[i].adapter));
    char *key = json_dumps(k, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(k);
    PF_CHECK(key);
    if (model->ips_key && !strcmp(model->ips_key, key)) {
        free(key);
        t->warm = 1;
        pf_metrics_model_lookup("ip_adapter", 1);
        return 0;
    }
    pf_metrics_model_lookup("ip_adapter", 0);
    if (on_fetch) on_fetch(ctx);
    long long t0 = pf_now_ms();
    pf_cache_lease *leases[PF_JOB_MAX_IP_ADAPTERS + 1] = {0};
    char fields[PF_JOB_MAX_IP_ADAPTERS + 1][PF_JOB_FIELD_MAX];
    const char *files[PF_JOB_MAX_IP_ADAPTERS];
    uint64_t bytes = 0;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        snprintf(fields[i], sizeof fields[i], "ip_adapters[%d].adapter", i);
        rc = acquire(m, &leases[i], PF_SOURCE_FILE, job->ip[i].adapter.url, job->ip[i].adapter.sha256, 0, fields[i],
                     err);
        if (!rc) files[i] = pf_cache_lease_path(leases[i]);
    }
    snprintf(fields[n], sizeof fields[n], "ip_adapters[0].image_encoder");
    if (!rc)
        rc = acquire(m, &leases[n], PF_SOURCE_IMAGE_ENCODER, job->ip[0].image_encoder.url,
                     job->ip[0].image_encoder.sha256, job->fp16, fields[n], err);
    for (int i = 0; !rc && i <= n; i++) bytes += lease_bytes(leases[i]);
    if (!rc) {
        t->download_ms = pf_now_ms() - t0;
        make_room(m, bytes); /* model is in use: only other models go */
        t0 = pf_now_ms();
        if (pf_pipeline_set_ip_adapters(model->pipe, files, n, pf_cache_lease_path(leases[n]), err)) {
            named src[PF_JOB_MAX_IP_ADAPTERS + 1];
            for (int i = 0; i < n; i++) src[i] = (named){files[i], job->ip[i].adapter.url, fields[i]};
            src[n] = (named){pf_cache_lease_path(leases[n]), job->ip[0].image_encoder.url, fields[n]};
            const char *field = name_sources(err, src, n + 1);
            pf_error_set_kind(err, PF_ERROR_INVALID, field ? field : fields[0]);
            pf_error_prefix(err, "%s", field ? field : "ip_adapters");
            rc = -1;
        }
    }
    if (rc) {
        for (int i = 0; i <= n; i++) pf_cache_release(leases[i]);
        free(key);
        return -1;
    }
    t->load_ms = pf_now_ms() - t0;
    pf_metrics_stage("download", t->download_ms);
    pf_metrics_stage("load", t->load_ms);
    pf_metrics_model_loaded("ip_adapter");
    release_ips(model); /* the pipeline let go of the old ones' weights */
    model->bytes = model->bytes - model->ips_bytes + bytes;
    for (int i = 0; i <= n; i++) model->ips[i] = leases[i];
    model->n_ips = n + 1;
    model->ips_bytes = bytes;
    model->ips_key = key;
    pf_wlog(PF_LOG_INFO, "model.ip_adapter_loaded", NULL,
            json_pack("{s:I, s:I, s:I, s:i}", "bytes", (json_int_t)bytes, "download_ms", (json_int_t)t->download_ms,
                      "load_ms", (json_int_t)t->load_ms, "adapters", n),
            "%.600s", key);
    return 0;
}

int pf_models_image(pf_models *m, const pf_job_source *src, const char *field, long max_pixels, uint8_t **rgb, int *w,
                    int *h, pf_error *err) {
    *rgb = NULL;
    pf_error_set_kind(err, PF_ERROR_NONE, NULL);
    pf_cache_lease *lease;
    if (acquire(m, &lease, PF_SOURCE_FILE, src->url, src->sha256, 0, field, err)) return -1;
    int rc = pf_image_read_max(pf_cache_lease_path(lease), max_pixels, rgb, w, h, err);
    if (rc) {
        named n = {pf_cache_lease_path(lease), src->url, field};
        name_sources(err, &n, 1);
        pf_error_set_kind(err, PF_ERROR_INVALID, field);
        pf_error_prefix(err, "%s", field);
    }
    pf_cache_release(lease);
    return rc;
}

void pf_models_put(pf_models *m, pf_model *model) {
    (void)m;
    if (!model) return;
    model->in_use = 0;
    model->last_use = pf_now_ms();
}

int pf_models_loaded(const pf_models *m, uint64_t *bytes) {
    uint64_t b = 0;
    for (int i = 0; i < m->n; i++) b += m->m[i]->bytes;
    if (bytes) *bytes = b;
    return m->n;
}

int pf_models_has(const pf_models *m, const char *key) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->m[i]->key, key)) return 1;
    return 0;
}
