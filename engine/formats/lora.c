/* lora.c - LoRA files: grouping, checks, matching, and the fuse (lora.h). */
#include "lora.h"
#include "blas_core.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <string.h>

typedef struct module {
    pf_lora_key key;                   /* part, format, module name (role unused) */
    const pf_st_tensor *up, *down;     /* (out, r[, 1, 1]), (r, in[, kh, kw]) */
    const pf_st_tensor *alpha;         /* NULL when the file has none for it */
    int n_tensors;                     /* keys of the module in the file */
    int first;                         /* index (in keys) of its first key, for listings */
    int64_t rank;
    float factor;                      /* scale * alpha / rank, set when matched */
    int matched, applied;
    struct pf_lora *lora;
} module;

/* One key of the file, parsed. */
typedef struct key {
    const pf_st_tensor *t;
    pf_lora_key k;
    int ok;                            /* a LoRA key spelling */
    int dropped;                       /* kohya's dora_scale: dropped, as diffusers drops it */
    int module;                        /* index into mods, or -1 */
} key;

struct pf_lora {
    char *path;
    pf_safetensors *st;
    key *keys;                         /* st->count */
    module *mods;
    int n_mods;
    json_t *meta;                      /* lora_adapter_metadata, or NULL */
};

const char *pf_lora_path(const pf_lora *l) { return l->path; }
int pf_lora_num_tensors(const pf_lora *l) { return l->st->count; }

int pf_lora_num_modules(const pf_lora *l, pf_part part) {
    int n = 0;
    for (int i = 0; i < l->n_mods; i++) n += l->mods[i].key.part == (int)part || l->mods[i].key.part == -1;
    return n;
}

pf_lora_format pf_lora_format_of(const pf_lora *l) {
    int count[3] = {0};
    for (int i = 0; i < l->n_mods; i++) count[l->mods[i].key.format]++;
    return count[PF_LORA_KOHYA] >= count[PF_LORA_PEFT] && count[PF_LORA_KOHYA] >= count[PF_LORA_DIFFUSERS]
               ? PF_LORA_KOHYA
           : count[PF_LORA_PEFT] >= count[PF_LORA_DIFFUSERS] ? PF_LORA_PEFT
                                                             : PF_LORA_DIFFUSERS;
}

void pf_lora_close(pf_lora *l) {
    if (!l) return;
    json_decref(l->meta);
    pf_st_close(l->st);
    free(l->keys);
    free(l->mods);
    free(l->path);
    free(l);
}

/* Same component, same naming, same module. */
static int same_module(const pf_lora_key *a, const pf_lora_key *b) {
    return a->part == b->part && a->kohya == b->kohya && !strcmp(a->module, b->module);
}

static int by_module(const void *pa, const void *pb) {
    const key *a = *(const key *const *)pa, *b = *(const key *const *)pb;
    if (a->k.part != b->k.part) return a->k.part < b->k.part ? -1 : 1;
    if (a->k.kohya != b->k.kohya) return a->k.kohya - b->k.kohya;
    return strcmp(a->k.module, b->k.module);
}

static const char *role_name(const module *m, int up) {
    if (m->key.format == PF_LORA_PEFT) return up ? "lora_B" : "lora_A";
    return up ? "up" : "down";
}

/* The checks of one module (lora.h, pf_lora_open). */
static int check_module(pf_lora *l, module *m, pf_error *err) {
    const char *name = pf_st_quote(m->key.module);
    if (!m->up || !m->down)
        return pf_fail(err, "lora %s: module %s has %s but no %s", l->path, name, role_name(m, !m->up),
                       role_name(m, !!m->up));
    const pf_st_tensor *u = m->up, *d = m->down;
    int up_ok = u->ndim == 2 || (u->ndim == 4 && u->shape[2] == 1 && u->shape[3] == 1);
    if (!up_ok || (d->ndim != 2 && d->ndim != 4)) {
        char su[128], sd[128];
        return pf_fail(err, "lora %s: module %s: %s %s and %s %s are not a Linear or Conv2d LoRA pair", l->path, name,
                       role_name(m, 1), pf_shape_str_raw(u->ndim, u->shape, su, sizeof su), role_name(m, 0),
                       pf_shape_str_raw(d->ndim, d->shape, sd, sizeof sd));
    }
    if (u->shape[1] != d->shape[0])
        return pf_fail(err, "lora %s: module %s: rank mismatch: %s has rank %lld, %s has rank %lld", l->path, name,
                       role_name(m, 1), (long long)u->shape[1], role_name(m, 0), (long long)d->shape[0]);
    if (d->shape[0] < 1) return pf_fail(err, "lora %s: module %s has rank 0", l->path, name);
    m->rank = d->shape[0];
    if (m->alpha) {
        float a;
        if (pf_st_numel(m->alpha) != 1)
            return pf_fail(err, "lora %s: module %s: alpha is not a scalar", l->path, name);
        if (pf_st_read_f32(l->st, m->alpha, &a, err)) return -1;
        if (!isfinite(a)) return pf_fail(err, "lora %s: module %s: alpha is not finite", l->path, name);
    }
    return 0;
}

int pf_lora_open(pf_lora **out, const char *path, pf_error *err) {
    *out = NULL;
    pf_safetensors *st;
    if (pf_st_open(&st, path, err)) return -1;
    pf_lora *l = PF_CALLOC(1, sizeof *l);
    l->path = PF_STRDUP(path);
    l->st = st;
    l->keys = PF_CALLOC((size_t)st->count + 1, sizeof *l->keys);
    key **order = PF_CALLOC((size_t)st->count + 1, sizeof *order);
    int n = 0, rc = -1;
    for (int i = 0; i < st->count; i++) {
        key *k = &l->keys[i];
        k->t = &st->tensors[i];
        k->module = -1;
        k->ok = pf_lora_key_parse(&k->k, k->t->name) == 0;
        if (!k->ok) continue;
        if (k->k.role == PF_LORA_DORA && k->k.format == PF_LORA_KOHYA) {
            k->dropped = 1;
            continue;
        }
        order[n++] = k;
    }
    qsort(order, (size_t)n, sizeof *order, by_module);
    l->mods = PF_CALLOC((size_t)n + 1, sizeof *l->mods);
    for (int i = 0; i < n; i++) {
        key *k = order[i];
        if (!l->n_mods || !same_module(&l->mods[l->n_mods - 1].key, &k->k)) {
            module *m = &l->mods[l->n_mods++];
            m->key = k->k;
            m->first = (int)(k - l->keys);
            m->lora = l;
        }
        module *m = &l->mods[l->n_mods - 1];
        k->module = l->n_mods - 1;
        m->n_tensors++;
        const char *q = pf_st_quote(k->t->name);
        switch (k->k.role) {
        case PF_LORA_DOWN: m->down = k->t; break;
        case PF_LORA_UP: m->up = k->t; break;
        case PF_LORA_ALPHA: m->alpha = k->t; break;
        case PF_LORA_MID:
            pf_fail(err, "lora %s: %s: LoCon's CP decomposition (lora_mid) is not supported", path, q);
            goto done;
        case PF_LORA_DORA:
            pf_fail(err, "lora %s: %s: DoRA (magnitude vectors) is not supported", path, q);
            goto done;
        case PF_LORA_BIAS:
            pf_fail(err, "lora %s: %s: LoRA biases (PEFT's lora_bias) are not supported", path, q);
            goto done;
        }
    }
    for (int i = 0; i < l->n_mods; i++)
        if (check_module(l, &l->mods[i], err)) goto done;
    const char *meta = pf_st_meta(st, "lora_adapter_metadata");
    if (meta) {
        json_error_t je;
        l->meta = json_loads(meta, 0, &je);
        if (!json_is_object(l->meta)) {
            pf_fail(err, "lora %s: its lora_adapter_metadata is not a JSON object", path);
            goto done;
        }
    }
    rc = 0;
done:
    free(order);
    if (rc) {
        pf_lora_close(l);
        return -1;
    }
    *out = l;
    return 0;
}

/* ---------------------------------------------------------------- alpha */

/* PEFT's metadata value PART.name, or NULL. */
static json_t *meta_get(const pf_lora *l, pf_part part, const char *name) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", pf_part_name(part), name);
    return l->meta ? json_object_get(l->meta, k) : NULL;
}

/* peft's pattern match of alpha_pattern / rank_pattern keys (get_pattern_key):
 * a key names the module or a dotted suffix of it; a leading "^" anchors it
 * at the start. Keys are matched literally, not as regular expressions. */
static int pattern_matches(const char *pattern, const char *module) {
    if (pattern[0] == '^') return !strcmp(pattern + 1, module);
    size_t n = strlen(pattern), m = strlen(module);
    return m >= n && !strcmp(module + m - n, pattern) && (m == n || module[m - n - 1] == '.');
}

/* alpha / rank (alpha / sqrt(rank) with use_rslora) of m matched in part. */
static double alpha_over_rank(const pf_lora *l, const module *m, pf_part part, const char *target) {
    double rank = (double)m->rank, alpha = rank;
    if (m->alpha) {
        float a = 0;
        pf_error ignored;
        pf_st_read_f32(l->st, m->alpha, &a, &ignored); /* checked readable at open */
        return a / rank;
    }
    json_t *la = meta_get(l, part, "lora_alpha"), *pat = meta_get(l, part, "alpha_pattern");
    if (json_is_number(la)) alpha = json_number_value(la);
    /* the module's name as peft sees it: the weight's name without ".weight" */
    char mod[512];
    snprintf(mod, sizeof mod, "%.*s", (int)(strlen(target) - 7), target);
    const char *pk;
    json_t *pv;
    if (json_is_object(pat)) {
        json_object_foreach(pat, pk, pv) {
            if (json_is_number(pv) && pattern_matches(pk, mod)) alpha = json_number_value(pv);
        }
    }
    int rs = json_is_true(meta_get(l, part, "use_rslora"));
    return alpha / (rs ? sqrt(rank) : rank);
}

/* ---------------------------------------------------------------- fuse */

/* pf_weights_patch_fn: W += factor * up @ down, in float32 (cblas_sgemm with beta 1). */
static int fuse(void *ctx, float *W, int ndim, const int64_t *shape, pf_error *err) {
    module *m = ctx;
    const pf_lora *l = m->lora;
    int64_t out = shape[0], r = m->rank, in = pf_st_numel(m->down) / r;
    float *up = malloc((size_t)(out * r) * sizeof *up), *down = malloc((size_t)(r * in) * sizeof *down);
    int rc = -1;
    if (!up || !down) {
        pf_fail(err, "lora %s: out of memory", l->path);
    } else if (!pf_st_read_f32(l->st, m->up, up, err) && !pf_st_read_f32(l->st, m->down, down, err)) {
        (void)ndim;
        pf_blas_select();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)in, (int)r, m->factor, up, (int)r,
                    down, (int)in, 1.0f, W, (int)in);
        m->applied = 1;
        rc = 0;
    }
    free(up);
    free(down);
    return rc;
}

/* Drops trailing 1s of dims [1, ndim): a Linear LoRA fits a 1x1 convolution. */
static int squeezed(int ndim, const int64_t *shape) {
    while (ndim > 2 && shape[ndim - 1] == 1) ndim--;
    return ndim;
}

int pf_lora_attach(pf_lora *l, pf_weights *w, pf_part part, float scale, int layers_per_block, pf_error *err) {
    int matched = 0;
    for (int i = 0; i < l->n_mods; i++) {
        module *m = &l->mods[i];
        if (m->matched || (m->key.part != (int)part && m->key.part != -1)) continue;
        char target[600];
        if (pf_lora_resolve(target, sizeof target, w, part, &m->key, layers_per_block)) continue;
        int64_t ws[PF_MAX_DIMS];
        int wn = pf_weights_shape(w, target, ws);
        const pf_st_tensor *d = m->down;
        int dn = squeezed(d->ndim, d->shape), sn = squeezed(wn, ws);
        int fits = wn >= 2 && m->up->shape[0] == ws[0] && dn == sn;
        for (int k = 1; fits && k < sn; k++) fits = d->shape[k] == ws[k];
        if (!fits) {
            char su[128], sd[128], sw[128];
            return pf_fail(err, "lora %s: %s (%s %s, %s %s) does not fit the model's %s %s %s (a LoRA for another model?)",
                           l->path, pf_st_quote(m->key.module), role_name(m, 1),
                           pf_shape_str_raw(m->up->ndim, m->up->shape, su, sizeof su), role_name(m, 0),
                           pf_shape_str_raw(d->ndim, d->shape, sd, sizeof sd), pf_part_name(part),
                           pf_st_quote(target), pf_shape_str_raw(wn, ws, sw, sizeof sw));
        }
        m->factor = (float)(scale * alpha_over_rank(l, m, part, target));
        m->matched = 1;
        pf_weights_add_patch(w, target, fuse, m);
        matched++;
    }
    return matched;
}

int pf_lora_matched(const pf_lora *l, int applied) {
    int n = 0;
    for (int i = 0; i < l->n_mods; i++)
        if (applied ? l->mods[i].applied : l->mods[i].matched) n += l->mods[i].n_tensors;
    return n;
}

int pf_lora_unmatched(const pf_lora *l, int applied, char *buf, size_t n) {
    int count = 0, listed = 0;
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < l->st->count; i++) {
        const key *k = &l->keys[i];
        if (k->module >= 0 && (applied ? l->mods[k->module].applied : l->mods[k->module].matched)) continue;
        count++;
        if (used + 220 >= n) continue; /* room kept for the closing "... and N more" */
        used += (size_t)snprintf(buf + used, n - used, "%s\"%s\"%s", listed ? ", " : "", pf_st_quote(k->t->name),
                                 k->dropped ? " (dropped)" : "");
        listed++;
    }
    if (count > listed) snprintf(buf + used, n - used, " ... and %d more", count - listed);
    return count;
}
