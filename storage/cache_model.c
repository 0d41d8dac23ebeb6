/* cache_model.c - diffusers models in the cache: model_index.json decides the
 * files (model_index.c), they are fetched in parallel as blobs, a manifest
 * records which blob each file is, and a folder of symlinks (the view) gives
 * the engine the diffusers layout it loads. Sharded weights are found where
 * the weights file is absent (its *.safetensors.index[.fp16].json), and the
 * shards that index names are fetched in a second round. A lone component
 * folder (a ControlNetModel) goes the same way with a fixed plan instead of
 * model_index.json: config.json and the weights, whose digest, when the source
 * names one, is checked like a FILE source's (a sharded component cannot be
 * pinned so). A configs-only source (a single-file checkpoint's model_config)
 * is a model without its weights.
 *
 * A second acquire of the same model reads its manifest and pins the blobs:
 * no network access at all. Models are keyed by base URL and variant, so a
 * URL naming a moving revision ("main") keeps what was fetched first until
 * evicted; jobs that need a fixed revision name it in the URL. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache_internal.h"
#include "credentials.h"

#define MANIFEST_MAX_BYTES (1 << 20)

static void unpin_all(pf_cache_lease *l) {
    for (int i = 0; i < l->n; i++) close(l->fds[i]);
    l->n = 0;
}

static void lease_add(pf_cache_lease *l, const char *digest, int fd) {
    PF_CHECK(l->n < (int)(sizeof l->fds / sizeof l->fds[0]));
    l->fds[l->n] = fd;
    memcpy(l->digests[l->n], digest, PF_SHA256_HEX);
    l->n++;
}

static void link_target(char *out, size_t n, const char *relpath, const char *digest) {
    snprintf(out, n, "%s../../blobs/sha256/%s", strchr(relpath, '/') ? "../" : "", digest);
}

/* 1 when the view at path has exactly the manifest's links (extra files
 * would be harmless but a tampered link would not). */
static int view_matches(const char *path, const pf_manifest_file *files, int n) {
    for (int i = 0; i < n; i++) {
        char p[PF_CACHE_PATH], want[256], have[256];
        snprintf(p, sizeof p, "%s/%s", path, files[i].path);
        link_target(want, sizeof want, files[i].path, files[i].sha256);
        ssize_t r = readlink(p, have, sizeof have - 1);
        if (r < 0) return 0;
        have[r] = '\0';
        if (strcmp(have, want)) return 0;
    }
    return 1;
}

/* Makes <root>/models/<view key> for the manifest (built aside, renamed into place). */
static int ensure_view(pf_cache *c, const char *manifest_digest, const pf_manifest_file *files, int n, char *out,
                       size_t out_n, pf_error *err) {
    char vkey[PF_SHA256_HEX];
    pf_cache_key(vkey, "view", manifest_digest);
    snprintf(out, out_n, "%s/models/%.32s", c->root, vkey);
    for (int round = 0; round < 3; round++) {
        struct stat st;
        if (!lstat(out, &st)) {
            if (S_ISDIR(st.st_mode) && view_matches(out, files, n)) return 0;
            pf_cache_remove_view(out);
        }
        char tmp[PF_CACHE_PATH];
        snprintf(tmp, sizeof tmp, "%s/tmp/view.XXXXXX", c->root);
        if (!mkdtemp(tmp)) return pf_fail(err, "cache: creating a model folder in %s/tmp: %s", c->root, strerror(errno));
        int rc = 0;
        for (int i = 0; i < n && !rc; i++) {
            char p[PF_CACHE_PATH], target[256];
            snprintf(p, sizeof p, "%s/%s", tmp, files[i].path);
            char *slash = strrchr(p, '/');
            if (strchr(files[i].path, '/')) {
                *slash = '\0';
                if (mkdir(p, 0755) && errno != EEXIST) rc = -1;
                *slash = '/';
            }
            link_target(target, sizeof target, files[i].path, files[i].sha256);
            if (!rc && symlink(target, p)) rc = -1;
        }
        if (rc) {
            int e = errno;
            pf_cache_remove_view(tmp);
            return pf_fail(err, "cache: building a model folder: %s", strerror(e));
        }
        chmod(tmp, 0755); /* mkdtemp made it 0700 */
        if (!rename(tmp, out)) return 0;
        pf_cache_remove_view(tmp); /* another process made it first: check theirs */
    }
    return pf_fail(err, "cache: could not put the model folder %s in place", out);
}

/* The model from its manifest alone: 1 done, 0 something is missing. */
static int open_cached(pf_cache *c, const pf_model_source *src, const char *skey, pf_cache_lease *l) {
    char digest[PF_SHA256_HEX], url[PF_URL_MAX + 16];
    uint64_t size;
    int fd;
    if (!pf_cache_ref_read(c, skey, digest, &size, url, sizeof url)) return 0;
    if (pf_cache_pin(c, digest, size, &fd, NULL) != 1) return 0;
    lease_add(l, digest, fd);
    char *text;
    size_t len;
    pf_manifest_file *files = PF_CALLOC(PF_MODEL_MAX_FILES, sizeof *files);
    int n = 0, ok = 0;
    if (!pf_cache_read_fd(&text, &len, fd, MANIFEST_MAX_BYTES, NULL)) {
        ok = !pf_manifest_parse(files, &n, PF_MODEL_MAX_FILES, text, len, NULL);
        free(text);
    }
    for (int i = 0; ok && i < n; i++) {
        int f;
        ok = pf_cache_pin(c, files[i].sha256, files[i].size, &f, NULL) == 1;
        if (ok) lease_add(l, files[i].sha256, f);
    }
    if (ok) ok = !ensure_view(c, digest, files, n, l->path, sizeof l->path, NULL);
    free(files);
    if (!ok) {
        unpin_all(l);
        return 0;
    }
    for (int i = 0; i < l->n; i++) pf_cache_touch(c, l->digests[i], l->fds[i]);
    return 1;
}

typedef struct batch {
    pf_cache *c;
    const pf_model_source *src;
    pf_model_file *plan;     /* PF_MODEL_MAX_FILES entries; shards are appended after the first round */
    int n;
    pf_manifest_file *files; /* what was found, per plan entry */
    pf_cache_got *got;
    int *present;
    pthread_mutex_t lock;
    int next;
    volatile int cancel;
    int failed;
    pf_error err;
} batch;

/* Fetches plan entry i: its path, else (weights) its sharded form, then the
 * fallback variant and its sharded form, each tried only when the one before
 * is absent (HTTP 404). */
static int fetch_one(batch *b, int i, pf_error *err) {
    const pf_model_file *f = &b->plan[i];
    char index[2][PF_RELPATH_MAX];
    const char *tries[4];
    int nt = 0;
    for (int v = 0; v < 2; v++) {
        const char *p = v ? f->fallback : f->path;
        if (!p[0]) continue;
        tries[nt++] = p;
        if (f->weights && !pf_model_shard_index_name(index[v], sizeof index[v], p, NULL)) tries[nt++] = index[v];
    }
    /* a component's digest is its weights file's (whichever variant is fetched); an index cannot stand for shards */
    const int pinned = (b->src->kind == PF_SOURCE_COMPONENT || b->src->kind == PF_SOURCE_IMAGE_ENCODER) &&
                       b->src->sha256[0] && f->weights;
    pf_error first = {0};
    for (int t = 0; t < nt; t++) {
        char url[PF_URL_MAX];
        const int is_index = pf_model_is_shard_index(tries[t]);
        if (pf_model_source_file_url(url, sizeof url, b->src, tries[t], err)) return -1;
        if (!pf_cache_acquire_url(b->c, url, pinned && !is_index ? b->src->sha256 : NULL, &b->cancel, &b->got[i],
                                  err)) {
            if (pinned && is_index) {
                close(b->got[i].fd);
                pf_error_set_kind(err, PF_ERROR_PERMANENT, NULL);
                return pf_fail(err, "%s: the weights are sharded, and a sha256 names one weights file: it cannot "
                                    "pin the shards (leave it out)", url);
            }
            snprintf(b->files[i].path, sizeof b->files[i].path, "%s", tries[t]);
            memcpy(b->files[i].sha256, b->got[i].digest, PF_SHA256_HEX);
            b->files[i].size = b->got[i].size;
            b->present[i] = 1;
            return 0;
        }
        if (b->got[i].http_status != 404) return -1;
        if (t == 0) first = *err;
    }
    if (f->optional) return 0;
    if (err && nt > 1) /* the first name is the one people look for; say the others were tried */
        pf_fail(err, "%s (and %s)", first.msg,
                f->weights ? "its other variant and sharded forms" : "its other variant");
    pf_error_set_kind(err, PF_ERROR_PERMANENT, NULL);
    return -1;
}

static void *fetch_worker(void *arg) {
    batch *b = arg;
    for (;;) {
        pthread_mutex_lock(&b->lock);
        int i = b->cancel ? b->n : b->next++;
        pthread_mutex_unlock(&b->lock);
        if (i >= b->n) break;
        pf_error e = {0};
        if (fetch_one(b, i, &e)) {
            pthread_mutex_lock(&b->lock);
            if (!b->failed) {
                b->failed = 1;
                b->err = e;
            }
            b->cancel = 1; /* the model cannot be complete: stop the other downloads */
            pthread_mutex_unlock(&b->lock);
        }
    }
    return NULL;
}

/* Fetches plan entries b->next..b->n with up to cfg.parallel threads. */
static void fetch_round(batch *b) {
    int nthreads = b->c->cfg.parallel < b->n - b->next ? b->c->cfg.parallel : b->n - b->next;
    pthread_t threads[16];
    int started = 0;
    for (int t = 0; t < nthreads && t < 16; t++)
        if (!pthread_create(&threads[t], NULL, fetch_worker, b)) started++;
    if (started == 0) fetch_worker(b);
    for (int t = 0; t < started; t++) pthread_join(threads[t], NULL);
}

/* After the first round: each weights index that was fetched adds its shards
 * to the plan. On error the batch has failed (permanently: the server's index
 * is unusable). */
static void plan_shards(batch *b) {
    const int n0 = b->n;
    for (int i = 0; i < n0 && !b->failed; i++) {
        if (!b->present[i] || !pf_model_is_shard_index(b->files[i].path)) continue;
        char *text = NULL, url[PF_URL_MAX] = "";
        size_t len;
        pf_error e = {0};
        pf_model_source_file_url(url, sizeof url, b->src, b->files[i].path, NULL);
        int rc = pf_cache_read_fd(&text, &len, b->got[i].fd, PF_SHARD_INDEX_MAX_BYTES, &e);
        if (rc) pf_error_prefix(&e, "%s", url);
        else rc = pf_model_shard_plan(b->plan, &b->n, PF_MODEL_MAX_FILES, b->files[i].path, text, len, &e);
        free(text);
        /* a shard that is also a planned file of the model is fetched once */
        for (int k = n0; !rc && k < b->n; k++)
            for (int j = 0; j < n0; j++)
                if (b->present[j] && !strcmp(b->files[j].path, b->plan[k].path)) {
                    b->plan[k--] = b->plan[--b->n];
                    break;
                }
        if (rc) {
            b->failed = 1;
            b->err = e;
            pf_error_set_kind(&b->err, PF_ERROR_PERMANENT, NULL);
            pf_error_prefix(&b->err, "model %s", b->src->url);
        }
    }
}

/* The plan of a diffusers model: model_index.json, fetched here (and pinned
 * in *idx), decides the rest. configs: a configs-only source, whose plan is
 * model_index.json and the components' files without their weights. */
static int plan_from_index(pf_cache *c, const pf_model_source *src, int configs, pf_model_file *plan, int *n,
                           pf_cache_got *idx, pf_error *err) {
    char url[PF_URL_MAX];
    if (pf_model_source_file_url(url, sizeof url, src, "model_index.json", err) ||
        pf_cache_acquire_url(c, url, NULL, NULL, idx, err))
        return -1;
    char *text;
    size_t len;
    if (pf_cache_read_fd(&text, &len, idx->fd, PF_MODEL_INDEX_MAX_BYTES, err)) {
        pf_error_prefix(err, "%s", url);
        if (configs || idx->size > PF_MODEL_INDEX_MAX_BYTES) pf_error_set_kind(err, PF_ERROR_PERMANENT, NULL);
        close(idx->fd);
        return -1;
    }
    int rc = configs ? pf_model_index_plan_configs(plan, n, PF_MODEL_MAX_FILES, text, len, err)
                     : pf_model_index_plan(plan, n, PF_MODEL_MAX_FILES, text, len, src->prefer_fp16, err);
    free(text);
    if (rc) {
        close(idx->fd);
        pf_error_set_kind(err, PF_ERROR_PERMANENT, NULL); /* the server's model index is unusable */
        return pf_error_prefix(err, "model%s %s", configs ? " configs" : "", src->url);
    }
    PF_CHECK(!strcmp(plan[0].path, "model_index.json"));
    return 0;
}

int pf_cache_acquire_model(pf_cache *c, const pf_model_source *src, pf_cache_lease *l, pf_error *err) {
    const int encoder = src->kind == PF_SOURCE_IMAGE_ENCODER;
    const int component = src->kind == PF_SOURCE_COMPONENT || encoder, configs = src->kind == PF_SOURCE_CONFIGS;
    const char *kind = encoder ? "image_encoder" : component ? "component" : configs ? "configs" : "model";
    char skey[PF_SHA256_HEX], name[PF_URL_MAX + 128];
    /* A component (or a configs-only folder) is keyed apart from a model at
     * the same URL (another plan), and by its digest, so that a pinned job
     * never opens a manifest made without the check. Diffusers models keep
     * their original keys. */
    snprintf(name, sizeof name, "%s%s%s%s%s",
             encoder ? "image_encoder:" : component ? "component:" : configs ? "configs:" : "",
             src->prefer_fp16 ? "fp16:" : "", src->url, src->sha256[0] ? "@" : "", src->sha256);
    pf_cache_key(skey, "model", name);
    if (open_cached(c, src, skey, l)) return 0;

    pf_model_file *plan = PF_CALLOC(PF_MODEL_MAX_FILES, sizeof *plan);
    int n = 0, first = 0; /* plan entries already fetched (model_index.json) */
    pf_cache_got idx;
    if (encoder     ? pf_model_image_encoder_plan(plan, &n, PF_MODEL_MAX_FILES, src->prefer_fp16, err)
        : component ? pf_model_component_plan(plan, &n, PF_MODEL_MAX_FILES, src->prefer_fp16, err)
        : plan_from_index(c, src, configs, plan, &n, &idx, err)) {
        free(plan);
        return -1;
    }
    batch b = {.c = c, .src = src, .plan = plan, .n = n};
    b.files = PF_CALLOC(PF_MODEL_MAX_FILES, sizeof *b.files);
    b.got = PF_CALLOC(PF_MODEL_MAX_FILES, sizeof *b.got);
    b.present = PF_CALLOC(PF_MODEL_MAX_FILES, sizeof *b.present);
    pthread_mutex_init(&b.lock, NULL);
    if (!component) {
        b.got[0] = idx;
        b.present[0] = 1;
        snprintf(b.files[0].path, sizeof b.files[0].path, "model_index.json");
        memcpy(b.files[0].sha256, idx.digest, PF_SHA256_HEX);
        b.files[0].size = idx.size;
        first = 1;
    }
    b.next = first;
    fetch_round(&b);
    if (!b.failed) { /* sharded weights: their shards, once the indexes are known */
        const int n0 = b.n;
        plan_shards(&b);
        b.next = n0; /* the workers of the first round left it past n0 */
        if (!b.failed && b.n > n0) fetch_round(&b);
    }
    n = b.n;
    int rc = b.failed ? -1 : 0;
    if (rc && err) *err = b.err;

    pf_manifest_file *files = PF_CALLOC((size_t)n, sizeof *files);
    int nf = 0;
    for (int i = 0; i < n; i++)
        if (b.present[i]) files[nf++] = b.files[i];
    if (!rc) { /* the manifest first, then every file, all pinned by the lease */
        char *manifest = pf_manifest_format(files, nf, src->url);
        pf_cache_got mg;
        rc = pf_cache_store_bytes(c, manifest, strlen(manifest), &mg, err);
        if (!rc) {
            lease_add(l, mg.digest, mg.fd);
            char ref_url[PF_URL_MAX + 16];
            snprintf(ref_url, sizeof ref_url, "%s%s:%s", kind, src->prefer_fp16 ? "+fp16" : "", src->url);
            rc = pf_cache_ref_write(c, skey, mg.digest, mg.size, ref_url, err) ||
                 ensure_view(c, mg.digest, files, nf, l->path, sizeof l->path, err);
        }
        free(manifest);
    }
    for (int i = 0; i < n; i++) {
        if (!b.present[i]) continue;
        if (rc)
            close(b.got[i].fd);
        else
            lease_add(l, b.got[i].digest, b.got[i].fd);
    }
    if (rc) unpin_all(l);
    pthread_mutex_destroy(&b.lock);
    free(files);
    free(b.files);
    free(b.got);
    free(b.present);
    free(plan);
    if (rc && err) pf_secret_scrub(err->msg, sizeof err->msg);
    return rc;
}
