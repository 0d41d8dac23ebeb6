/* models.c - the warm LRU of loaded pipelines (models.h). */
#include "models.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backoff.h"
#include "failure.h"
#include "log.h"
#include "metrics.h"
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

static void unload(pf_model *x) {
    pf_pipeline_free(x->pipe);
    pf_cache_release(x->base);
    pf_cache_release(x->delta);
    pf_cache_release(x->controlnet);
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

/* Whether a failed acquire may succeed later: the storage layer's own class
 * (storage/failure.h) for the last failing call on this thread. */
static pf_model_failure classify(void) {
    return pf_storage_failure() == PF_STORAGE_PERMANENT ? PF_MODEL_PERMANENT : PF_MODEL_TRANSIENT;
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
                json_pack("{s:I}", "bytes", (json_int_t)m->m[victim]->bytes), "evicting %.200s to fit the budget",
                m->m[victim]->key);
        unload(m->m[victim]);
        m->m[victim] = m->m[--m->n];
        pf_metrics_model_evicted();
    }
}

int pf_models_get(pf_models *m, const pf_job *job, pf_model **out, pf_model_timing *t, pf_model_failure *failure,
                  void (*on_fetch)(void *), void *ctx, pf_error *err) {
    *out = NULL;
    *failure = PF_MODEL_OK;
    memset(t, 0, sizeof *t);
    char key[sizeof m->m[0]->key];
    snprintf(key, sizeof key, "%s|fp16=%d|%s|%s", job->base.url, job->fp16, job->delta.url ? job->delta.url : "",
             job->delta.sha256 ? job->delta.sha256 : "");
    for (int i = 0; i < m->n; i++)
        if (!m->m[i]->in_use && !strcmp(m->m[i]->key, key)) {
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
    snprintf(x->key, sizeof x->key, "%s", key);
    long long t0 = pf_now_ms();
    pf_model_source src;
    if (pf_model_source_init(&src, PF_SOURCE_DIFFUSERS, job->base.url, NULL, job->fp16, err) ||
        pf_cache_acquire(&x->base, m->cache, &src, err)) {
        pf_error_prefix(err, "model.base");
        goto fail_fetch;
    }
    if (job->delta.url && (pf_model_source_init(&src, PF_SOURCE_FILE, job->delta.url, job->delta.sha256, 0, err) ||
                           pf_cache_acquire(&x->delta, m->cache, &src, err))) {
        pf_error_prefix(err, "model.delta");
        goto fail_fetch;
    }
    t->download_ms = pf_now_ms() - t0;
    x->bytes = tree_bytes(pf_cache_lease_path(x->base), 0) + (x->delta ? tree_bytes(pf_cache_lease_path(x->delta), 0) : 0);
    make_room(m, x->bytes);
    t0 = pf_now_ms();
    if (pf_pipeline_load(&x->pipe, m->be, pf_cache_lease_path(x->base), x->delta ? pf_cache_lease_path(x->delta) : NULL,
                         err)) {
        pf_error_prefix(err, "loading the model");
        *failure = PF_MODEL_PERMANENT;
        unload(x);
        return -1;
    }
    t->load_ms = pf_now_ms() - t0;
    pf_metrics_stage("download", t->download_ms);
    pf_metrics_stage("load", t->load_ms);
    pf_metrics_model_loaded("model");
    PF_CHECK(m->n < MAX_MODELS);
    m->m[m->n++] = x;
    x->in_use = 1;
    x->last_use = pf_now_ms();
    pf_wlog(PF_LOG_INFO, "model.loaded", NULL,
            json_pack("{s:I, s:I, s:I, s:i}", "bytes", (json_int_t)x->bytes, "download_ms", (json_int_t)t->download_ms,
                      "load_ms", (json_int_t)t->load_ms, "models_loaded", m->n),
            "%.300s", key);
    *out = x;
    return 0;
fail_fetch:
    *failure = classify();
    unload(x);
    return -1;
}

int pf_models_controlnet(pf_models *m, pf_model *model, const pf_job *job, pf_model_timing *t,
                         pf_model_failure *failure, void (*on_fetch)(void *), void *ctx, pf_error *err) {
    const pf_job_source *cn = &job->refine.controlnet;
    PF_CHECK(model->in_use && job->refine.on && cn->url);
    *failure = PF_MODEL_OK;
    memset(t, 0, sizeof *t);
    char key[sizeof model->cn_key];
    snprintf(key, sizeof key, "%s|fp16=%d|%s", cn->url, job->fp16, cn->sha256 ? cn->sha256 : "");
    if (model->controlnet && !strcmp(model->cn_key, key)) {
        t->warm = 1;
        pf_metrics_model_lookup("controlnet", 1);
        return 0;
    }
    pf_metrics_model_lookup("controlnet", 0);
    if (on_fetch) on_fetch(ctx);
    long long t0 = pf_now_ms();
    pf_model_source src;
    pf_cache_lease *lease = NULL;
    if (pf_model_source_init(&src, PF_SOURCE_COMPONENT, cn->url, cn->sha256, job->fp16, err) ||
        pf_cache_acquire(&lease, m->cache, &src, err)) {
        *failure = classify();
        return pf_error_prefix(err, "refine.controlnet");
    }
    t->download_ms = pf_now_ms() - t0;
    uint64_t bytes = tree_bytes(pf_cache_lease_path(lease), 0);
    make_room(m, bytes); /* model is in use: only other models go */
    t0 = pf_now_ms();
    if (pf_pipeline_set_controlnet(model->pipe, pf_cache_lease_path(lease), err)) {
        pf_cache_release(lease);
        *failure = PF_MODEL_PERMANENT;
        return pf_error_prefix(err, "refine.controlnet: loading the ControlNet");
    }
    t->load_ms = pf_now_ms() - t0;
    pf_metrics_stage("download", t->download_ms);
    pf_metrics_stage("load", t->load_ms);
    pf_metrics_model_loaded("controlnet");
    pf_cache_release(model->controlnet); /* the pipeline let go of the old one's weights */
    model->bytes = model->bytes - model->cn_bytes + bytes;
    model->controlnet = lease;
    model->cn_bytes = bytes;
    snprintf(model->cn_key, sizeof model->cn_key, "%s", key);
    pf_wlog(PF_LOG_INFO, "model.controlnet_loaded", NULL,
            json_pack("{s:I, s:I, s:I}", "bytes", (json_int_t)bytes, "download_ms", (json_int_t)t->download_ms,
                      "load_ms", (json_int_t)t->load_ms),
            "%.300s", key);
    return 0;
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
