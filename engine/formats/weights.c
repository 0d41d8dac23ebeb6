/* weights.c - named weights from safetensors files (one, sharded, or an LDM
 * checkpoint's part seen through convert.c), plus delta weights and patches.
 *
 * PeRFlow publishes its UNet as delta weights dW against a base family; the
 * merged weight is W = W_base + dW, summed in float32 tensor by tensor as the
 * tensor is loaded, before the patches (LoRAs, fused in lora.c) and the
 * conversion to the backend's dtype. Merging at load time keeps one copy of
 * each weight in memory and lets any base be used. */
#include "weights.h"

#include <jansson.h>
#include <stdarg.h>
#include <string.h>

#include "fileio.h"

typedef struct patch {
    pf_weights_patch_fn fn;
    void *ctx;
} patch;

typedef struct entry {
    char *name;                  /* the engine's name */
    const pf_safetensors *file;
    const pf_st_tensor *t;
    int64_t first;               /* first element of t in this view */
    int transposed;              /* t is (shape[1], shape[0]): read and transposed (pf_weights_add_transposed) */
    int ndim;
    int64_t shape[PF_MAX_DIMS];
    patch *patches;
    int n_patches;
} entry;

struct pf_weights {
    char *label;
    pf_safetensors **files;
    int n_files;
    entry *entries;              /* sorted by name once sealed */
    int count, cap;
    int sealed;
    pf_weights *delta;           /* NULL: no delta */
    float *scratch;              /* the host copy of the tensor being loaded, kept between loads: */
    size_t scratch_n;            /* a fresh buffer each time would fault in every page again */
};

pf_weights *pf_weights_new(const char *label) {
    pf_weights *w = PF_CALLOC(1, sizeof *w);
    w->label = PF_STRDUP(label);
    return w;
}

const pf_safetensors *pf_weights_add_file(pf_weights *w, pf_safetensors *st) {
    w->files = realloc(w->files, (size_t)(w->n_files + 1) * sizeof *w->files);
    PF_CHECK(w->files != NULL);
    w->files[w->n_files++] = st;
    return st;
}

static int64_t numel_of(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

void pf_weights_add(pf_weights *w, const char *name, const pf_safetensors *st, const pf_st_tensor *t, int64_t first,
                    int ndim, const int64_t *shape) {
    PF_CHECK(!w->sealed && ndim >= 0 && ndim <= PF_MAX_DIMS);
    PF_CHECK(first >= 0 && first + numel_of(ndim, shape) <= pf_st_numel(t));
    if (w->count == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 256;
        w->entries = realloc(w->entries, (size_t)w->cap * sizeof *w->entries);
        PF_CHECK(w->entries != NULL);
    }
    entry *e = &w->entries[w->count++];
    memset(e, 0, sizeof *e);
    e->name = PF_STRDUP(name);
    e->file = st;
    e->t = t;
    e->first = first;
    e->ndim = ndim;
    memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
}

void pf_weights_add_transposed(pf_weights *w, const char *name, const pf_safetensors *st, const pf_st_tensor *t) {
    PF_CHECK(t->ndim == 2);
    pf_weights_add(w, name, st, t, 0, 2, (int64_t[]){t->shape[1], t->shape[0]});
    w->entries[w->count - 1].transposed = 1;
}

static int by_name(const void *a, const void *b) { return strcmp(((const entry *)a)->name, ((const entry *)b)->name); }

int pf_weights_seal(pf_weights *w, pf_error *err) {
    qsort(w->entries, (size_t)w->count, sizeof *w->entries, by_name);
    w->sealed = 1;
    for (int i = 1; i < w->count; i++) {
        const entry *a = &w->entries[i - 1], *b = &w->entries[i];
        if (!strcmp(a->name, b->name))
            return pf_fail(err, "%s: tensors \"%s\" and \"%s\" both give \"%s\"", w->label, pf_st_quote(a->t->name),
                           pf_st_quote(b->t->name), pf_st_quote(a->name));
    }
    return 0;
}

static entry *find(const pf_weights *w, const char *name) {
    PF_CHECK(w->sealed);
    entry key = {.name = (char *)name};
    return bsearch(&key, w->entries, (size_t)w->count, sizeof key, by_name);
}

void pf_weights_close(pf_weights *w) {
    if (!w) return;
    for (int i = 0; i < w->count; i++) {
        free(w->entries[i].name);
        free(w->entries[i].patches);
    }
    free(w->entries);
    for (int i = 0; i < w->n_files; i++) pf_st_close(w->files[i]);
    free(w->files);
    pf_weights_close(w->delta);
    free(w->scratch);
    free(w->label);
    free(w);
}

/* ---------------------------------------------------------------- opening */

/* One file: every tensor under its own name and shape. */
static int open_file(pf_weights **out, const char *path, pf_error *err) {
    pf_safetensors *st;
    if (pf_st_open(&st, path, err)) return -1;
    pf_weights *w = pf_weights_new(path);
    pf_weights_add_file(w, st);
    for (int i = 0; i < st->count; i++)
        pf_weights_add(w, st->tensors[i].name, st, &st->tensors[i], 0, st->tensors[i].ndim, st->tensors[i].shape);
    if (pf_weights_seal(w, err)) { /* unreachable: names in a file are unique */
        pf_weights_close(w);
        return -1;
    }
    *out = w;
    return 0;
}

void pf_shard_index_free(pf_shard_index *idx) {
    for (int i = 0; i < idx->count; i++) {
        free(idx->names[i]);
        free(idx->shards[i]);
    }
    free(idx->names);
    free(idx->shards);
    memset(idx, 0, sizeof *idx);
}

int pf_shard_index_parse(pf_shard_index *out, const char *json, size_t len, const char *label, pf_error *err) {
    memset(out, 0, sizeof *out);
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return pf_fail(err, "%s: not valid JSON (%s, line %d)", label, pf_st_quote(je.text), je.line);
    json_t *map = json_object_get(root, "weight_map");
    int rc = -1;
    if (!json_is_object(root) || !json_is_object(map)) {
        pf_fail(err, "%s: not a sharded-weights index (no \"weight_map\" object)", label);
        goto done;
    }
    size_t n = json_object_size(map);
    if (n == 0) {
        pf_fail(err, "%s: \"weight_map\" is empty", label);
        goto done;
    }
    out->names = PF_CALLOC(n, sizeof *out->names);
    out->shards = PF_CALLOC(n, sizeof *out->shards);
    const char *key;
    json_t *v;
    json_object_foreach(map, key, v) {
        const char *s = json_string_value(v);
        if (!s) {
            pf_fail(err, "%s: weight_map \"%s\" is not a file name", label, pf_st_quote(key));
            goto done;
        }
        if (!*key || !*s || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..")) {
            pf_fail(err, "%s: weight_map \"%s\" names \"%s\", not a file beside the index", label, pf_st_quote(key),
                    pf_st_quote(s));
            goto done;
        }
        out->names[out->count] = PF_STRDUP(key);
        out->shards[out->count] = PF_STRDUP(s);
        out->count++;
    }
    rc = 0;
done:
    json_decref(root);
    if (rc) pf_shard_index_free(out);
    return rc;
}

/* Reads a whole small text file (an index). */
static char *read_text(const char *path, size_t *len, pf_error *err) {
    char *text;
    return pf_read_text_file(&text, len, path, err) ? NULL : text; /* capped: pf_text_limit */
}

/* A sharded set: the index's weight_map, each shard opened once. */
static int open_index(pf_weights **out, const char *path, pf_error *err) {
    size_t len;
    char *text = read_text(path, &len, err);
    if (!text) return -1;
    pf_shard_index idx;
    int rc = pf_shard_index_parse(&idx, text, len, path, err);
    free(text);
    if (rc) return -1;
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path) : 1;
    const char *dir = slash ? path : ".";
    pf_weights *w = pf_weights_new(path);
    rc = -1;
    for (int i = 0; i < idx.count; i++) {
        const pf_safetensors *st = NULL;
        for (int k = 0; k < w->n_files && !st; k++) {
            const char *p = w->files[k]->path, *base = strrchr(p, '/');
            if (!strcmp(base ? base + 1 : p, idx.shards[i])) st = w->files[k];
        }
        if (!st) {
            char shard[4096];
            pf_safetensors *opened;
            snprintf(shard, sizeof shard, "%.*s/%s", dir_len, dir, idx.shards[i]);
            if (pf_st_open(&opened, shard, err)) {
                pf_error_prefix(err, "sharded weights %s", path);
                goto done;
            }
            st = pf_weights_add_file(w, opened);
        }
        const pf_st_tensor *t = pf_st_find(st, idx.names[i]);
        if (!t) {
            pf_fail(err, "sharded weights %s: the index puts \"%s\" in %s, which does not hold it", path,
                    pf_st_quote(idx.names[i]), st->path);
            goto done;
        }
        pf_weights_add(w, t->name, st, t, 0, t->ndim, t->shape);
    }
    rc = pf_weights_seal(w, err); /* unreachable failure: JSON keys are unique */
done:
    pf_shard_index_free(&idx);
    if (rc) {
        pf_weights_close(w);
        return -1;
    }
    *out = w;
    return 0;
}

int pf_weights_open(pf_weights **out, const char *path, pf_error *err) {
    *out = NULL;
    size_t n = strlen(path);
    return n >= 5 && !strcmp(path + n - 5, ".json") ? open_index(out, path, err) : open_file(out, path, err);
}

/* ---------------------------------------------------------------- delta */

/* Appends up to `room` names present in a but not in b to buf. Both are sorted. */
static int list_missing(char *buf, size_t n, const pf_weights *a, const pf_weights *b, int room) {
    int found = 0;
    for (int i = 0, j = 0; i < a->count && found < room; i++) {
        while (j < b->count && strcmp(b->entries[j].name, a->entries[i].name) < 0) j++;
        if (j < b->count && !strcmp(b->entries[j].name, a->entries[i].name)) continue;
        size_t used = strlen(buf);
        snprintf(buf + used, n - used, "%s\"%s\"", found ? ", " : "", pf_st_quote(a->entries[i].name));
        found++;
    }
    return found;
}

int pf_weights_set_delta(pf_weights *w, const char *delta_path, pf_error *err) {
    pf_weights *d;
    if (pf_weights_open(&d, delta_path, err)) return -1;
    char only_base[512] = "", only_delta[512] = "";
    int nb = list_missing(only_base, sizeof only_base, w, d, 3);
    int nd = list_missing(only_delta, sizeof only_delta, d, w, 3);
    if (nb || nd) {
        pf_fail(err, "delta weights %s do not match the base %s: %s%s%s%s%s (%d vs %d tensors)", delta_path,
                w->label, nb ? "missing in the delta: " : "", only_base, nb && nd ? "; " : "",
                nd ? "not in the base: " : "", only_delta, d->count, w->count);
        pf_weights_close(d);
        return -1;
    }
    for (int i = 0; i < d->count; i++) {
        const entry *a = &w->entries[i], *b = &d->entries[i];
        int same = a->ndim == b->ndim;
        for (int k = 0; same && k < a->ndim; k++) same = a->shape[k] == b->shape[k];
        if (!same) {
            char sa[128], sb[128];
            pf_fail(err, "delta weights %s: tensor \"%s\" has shape %s, the base %s has %s", delta_path,
                    pf_st_quote(b->name), pf_shape_str_raw(b->ndim, b->shape, sb, sizeof sb), w->label,
                    pf_shape_str_raw(a->ndim, a->shape, sa, sizeof sa));
            pf_weights_close(d);
            return -1;
        }
    }
    pf_weights_close(w->delta);
    w->delta = d;
    return 0;
}

/* ---------------------------------------------------------------- access */

int pf_weights_has(const pf_weights *w, const char *name) { return find(w, name) != NULL; }

int pf_weights_count(const pf_weights *w) { return w->count; }

const char *pf_weights_name(const pf_weights *w, int i) {
    PF_CHECK(w->sealed && i >= 0 && i < w->count);
    return w->entries[i].name;
}

int pf_weights_shape(const pf_weights *w, const char *name, int64_t *shape) {
    const entry *e = find(w, name);
    if (!e) return -1;
    memcpy(shape, e->shape, sizeof e->shape);
    return e->ndim;
}

int64_t pf_weights_numel(const pf_weights *w, const char *name) {
    const entry *e = find(w, name);
    return e ? numel_of(e->ndim, e->shape) : 0;
}

const pf_st_tensor *pf_weights_source(const pf_weights *w, const char *name, const pf_safetensors **file) {
    const entry *e = find(w, name);
    if (file) *file = e ? e->file : NULL;
    return e ? e->t : NULL;
}

const char *pf_weights_label(const pf_weights *w) { return w->label; }

const pf_safetensors *pf_weights_file(const pf_weights *w) {
    PF_CHECK(w->n_files > 0);
    return w->files[0];
}

void pf_weights_add_patch(pf_weights *w, const char *name, pf_weights_patch_fn fn, void *ctx) {
    entry *e = find(w, name);
    PF_CHECK(e != NULL);
    e->patches = realloc(e->patches, (size_t)(e->n_patches + 1) * sizeof *e->patches);
    PF_CHECK(e->patches != NULL);
    e->patches[e->n_patches++] = (patch){fn, ctx};
}

int pf_weights_patched(const pf_weights *w) {
    int n = 0;
    for (int i = 0; i < w->count; i++) n += w->entries[i].n_patches > 0;
    return n;
}

/* base + delta + patches of e into dst (numel floats). */
static int read_entry(pf_weights *w, const entry *e, float *dst, pf_error *err) {
    int64_t n = numel_of(e->ndim, e->shape);
    if (e->transposed) {
        int64_t R = e->shape[1], C = e->shape[0]; /* the file's (R, C) */
        float *src = malloc((size_t)(n ? n : 1) * sizeof *src);
        if (!src) return pf_fail(err, "%s: out of memory reading tensor \"%s\"", w->label, e->name);
        int rc = pf_st_read_f32_range(e->file, e->t, 0, n, src, err);
        for (int64_t i = 0; !rc && i < R; i++)
            for (int64_t j = 0; j < C; j++) dst[j * R + i] = src[i * C + j];
        free(src);
        if (rc) return -1;
    } else if (pf_st_read_f32_range(e->file, e->t, e->first, n, dst, err)) {
        return -1;
    }
    if (w->delta) {
        const entry *de = find(w->delta, e->name); /* same names and shapes: pf_weights_set_delta */
        float *dh = malloc((size_t)(n ? n : 1) * sizeof(float));
        if (!dh) return pf_fail(err, "%s: out of memory reading delta tensor \"%s\"", w->delta->label, e->name);
        int rc = read_entry(w->delta, de, dh, err);
        for (int64_t i = 0; !rc && i < n; i++) dst[i] += dh[i];
        free(dh);
        if (rc) return -1;
    }
    for (int i = 0; i < e->n_patches; i++)
        if (e->patches[i].fn(e->patches[i].ctx, dst, e->ndim, e->shape, err)) return -1;
    return 0;
}

int pf_weights_read(pf_weights *w, const char *name, float *dst, pf_error *err) {
    const entry *e = find(w, name);
    if (!e) return pf_fail(err, "%s: missing tensor \"%s\"", w->label, pf_st_quote(name));
    return read_entry(w, e, dst, err);
}

pf_tensor *pf_weights_load(pf_weights *w, pf_backend *be, const char *name, int ndim,
                           const int64_t *shape, pf_error *err) {
    const entry *e = find(w, name);
    if (!e) {
        pf_fail(err, "%s: missing tensor \"%s\"", w->label, pf_st_quote(name));
        return NULL;
    }
    int same = e->ndim == ndim;
    for (int k = 0; same && k < ndim; k++) same = e->shape[k] == shape[k];
    if (!same) {
        char want[128], got[128];
        pf_fail(err, "%s: tensor \"%s\" has shape %s, the config implies %s", w->label, pf_st_quote(name),
                pf_shape_str_raw(e->ndim, e->shape, got, sizeof got),
                pf_shape_str_raw(ndim, shape, want, sizeof want));
        return NULL;
    }
    size_t n = (size_t)numel_of(ndim, shape);
    if (n > w->scratch_n) {
        free(w->scratch);
        w->scratch_n = 0;
        if (!(w->scratch = malloc(n * sizeof(float)))) {
            pf_fail(err, "%s: out of memory reading tensor \"%s\"", w->label, name);
            return NULL;
        }
        w->scratch_n = n;
    }
    pf_tensor *out = NULL;
    if (read_entry(w, e, w->scratch, err) == 0) {
        out = pf_from_host(be, ndim, shape, w->scratch);
        if (pf_backend_ok(be, err)) {
            pf_error_prefix(err, "loading \"%s\"", name);
            pf_free(out);
            out = NULL;
        }
    }
    return out;
}

pf_tensor *pf_weights_loadf(pf_weights *w, pf_backend *be, pf_error *err, int ndim,
                            const int64_t *shape, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return pf_weights_load(w, be, name, ndim, shape, err);
}

pf_tensor *pf_loader_get(pf_loader *l, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (l->failed) return NULL;
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    pf_tensor *t = pf_weights_loadf(l->w, l->be, l->err, ndim, shape, "%s%s", l->prefix, name);
    if (!t) l->failed = 1;
    return t;
}
