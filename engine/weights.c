/* weights.c - named weights from a safetensors file, plus optional delta weights.
 *
 * PeRFlow publishes its UNet as delta weights dW against a base family; the
 * merged weight is W = W_base + dW, summed in float32 tensor by tensor as the
 * tensor is loaded, before conversion to the backend's dtype. Merging at load
 * time keeps one copy of each weight in memory and lets any base be used. */
#include "weights.h"

#include <stdarg.h>
#include <string.h>

struct pf_weights {
    pf_safetensors *base;
    pf_safetensors *delta; /* NULL: no delta */
};

int pf_weights_open(pf_weights **out, const char *path, pf_error *err) {
    *out = NULL;
    pf_safetensors *st;
    if (pf_st_open(&st, path, err)) return -1;
    pf_weights *w = PF_CALLOC(1, sizeof *w);
    w->base = st;
    *out = w;
    return 0;
}

/* Appends up to `room` names present in a but not in b to buf. Both are sorted. */
static int list_missing(char *buf, size_t n, const pf_safetensors *a, const pf_safetensors *b, int room) {
    int found = 0;
    for (int i = 0, j = 0; i < a->count && found < room; i++) {
        while (j < b->count && strcmp(b->tensors[j].name, a->tensors[i].name) < 0) j++;
        if (j < b->count && !strcmp(b->tensors[j].name, a->tensors[i].name)) continue;
        size_t used = strlen(buf);
        snprintf(buf + used, n - used, "%s\"%s\"", found ? ", " : "", a->tensors[i].name);
        found++;
    }
    return found;
}

int pf_weights_set_delta(pf_weights *w, const char *delta_path, pf_error *err) {
    pf_safetensors *d;
    if (pf_st_open(&d, delta_path, err)) return -1;
    char only_base[512] = "", only_delta[512] = "";
    int nb = list_missing(only_base, sizeof only_base, w->base, d, 3);
    int nd = list_missing(only_delta, sizeof only_delta, d, w->base, 3);
    if (nb || nd) {
        pf_fail(err, "delta weights %s do not match the base %s: %s%s%s%s%s (%d vs %d tensors)", delta_path,
                w->base->path, nb ? "missing in the delta: " : "", only_base, nb && nd ? "; " : "",
                nd ? "not in the base: " : "", only_delta, d->count, w->base->count);
        pf_st_close(d);
        return -1;
    }
    for (int i = 0; i < d->count; i++) {
        const pf_st_tensor *a = &w->base->tensors[i], *b = &d->tensors[i];
        int same = a->ndim == b->ndim;
        for (int k = 0; same && k < a->ndim; k++) same = a->shape[k] == b->shape[k];
        if (!same) {
            char sa[128], sb[128];
            pf_fail(err, "delta weights %s: tensor \"%s\" has shape %s, the base %s has %s", delta_path,
                    b->name, pf_shape_str_raw(b->ndim, b->shape, sb, sizeof sb), w->base->path,
                    pf_shape_str_raw(a->ndim, a->shape, sa, sizeof sa));
            pf_st_close(d);
            return -1;
        }
    }
    pf_st_close(w->delta);
    w->delta = d;
    return 0;
}

void pf_weights_close(pf_weights *w) {
    if (!w) return;
    pf_st_close(w->base);
    pf_st_close(w->delta);
    free(w);
}

int pf_weights_has(const pf_weights *w, const char *name) { return pf_st_find(w->base, name) != NULL; }

const pf_safetensors *pf_weights_file(const pf_weights *w) { return w->base; }

pf_tensor *pf_weights_load(pf_weights *w, pf_backend *be, const char *name, int ndim,
                           const int64_t *shape, pf_error *err) {
    const pf_st_tensor *t = pf_st_find(w->base, name);
    if (!t) {
        pf_fail(err, "%s: missing tensor \"%s\"", w->base->path, name);
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int k = 0; same && k < ndim; k++) same = t->shape[k] == shape[k];
    if (!same) {
        char want[128], got[128];
        pf_fail(err, "%s: tensor \"%s\" has shape %s, the config implies %s", w->base->path, name,
                pf_shape_str_raw(t->ndim, t->shape, got, sizeof got),
                pf_shape_str_raw(ndim, shape, want, sizeof want));
        return NULL;
    }
    int64_t n = pf_st_numel(t);
    float *host = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!host) {
        pf_fail(err, "%s: out of memory reading tensor \"%s\"", w->base->path, name);
        return NULL;
    }
    pf_tensor *out = NULL;
    if (pf_st_read_f32(w->base, t, host, err)) goto done;
    if (w->delta) {
        float *dh = malloc((size_t)(n ? n : 1) * sizeof(float));
        if (!dh) {
            pf_fail(err, "%s: out of memory reading delta tensor \"%s\"", w->delta->path, name);
            goto done;
        }
        if (pf_st_read_f32(w->delta, pf_st_find(w->delta, name), dh, err)) {
            free(dh);
            goto done;
        }
        for (int64_t i = 0; i < n; i++) host[i] += dh[i];
        free(dh);
    }
    out = pf_from_host(be, ndim, shape, host);
    if (pf_backend_ok(be, err)) {
        pf_error_prefix(err, "loading \"%s\"", name);
        pf_free(out);
        out = NULL;
    }
done:
    free(host);
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
