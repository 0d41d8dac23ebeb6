/* backend.c - the op wrappers model code calls, and the sticky backend error.
 *
 * Every pf_* op here does the same three things before dispatching through
 * y->be->ops: return at once when the backend has already failed (so model
 * code can run a whole forward and check pf_backend_ok() once), check with
 * PF_CHECK that every tensor lives on y's backend in its compute dtype, and
 * check the shapes and aliasing rules documented in backend.h. Backends can
 * therefore assume well-formed arguments and stay free of checks. */
#include "backend.h"
#include "profile.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void pf_backend_set_error(pf_backend *be, const char *fmt, ...) {
    if (be->failed) return; /* the first failure is the one worth reporting */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->errmsg, sizeof be->errmsg, fmt, ap);
    va_end(ap);
    be->failed = 1;
}

int pf_backend_ok(pf_backend *be, pf_error *err) {
    if (!be->failed) return 0;
    return pf_fail(err, "%s", be->errmsg);
}

/* Synchronizes even after a failure: work queued before it may still be
 * running and must finish before the caller frees its tensors. */
void pf_synchronize(pf_backend *be) { be->ops->synchronize(be); }

void pf_backend_free(pf_backend *be) {
    if (be) be->ops->destroy(be);
}

/* PERFLOW_MEM_BUDGET as backend.h defines it: 1 and the value for a plain
 * decimal byte count that fits size_t, else 0. strtoull alone would accept
 * leading spaces, a sign (wrapping "-1" to ULLONG_MAX) and trailing junk. */
static int budget_from_env(size_t *out) {
    const char *s = getenv("PERFLOW_MEM_BUDGET");
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno == ERANGE || v > SIZE_MAX) return 0;
    *out = (size_t)v;
    return 1;
}

size_t pf_backend_mem_available(pf_backend *be) {
    size_t budget;
    if (budget_from_env(&budget)) return budget;
    return be->ops->mem_available(be);
}

/* Runs call, timed under bucket op when PERFLOW_PROFILE=1 (profile.h). */
#define TIMED(be, op, call)                          \
    do {                                             \
        const double t0_ = pf_profile_begin(be);     \
        call;                                        \
        pf_profile_end(be, op, t0_);                 \
    } while (0)

/* ---- argument checks shared by the wrappers ---- */

/* t lives on y's backend and holds that backend's compute dtype. */
static void check_on(const pf_tensor *y, const pf_tensor *t) {
    PF_CHECK(t != NULL);
    PF_CHECK(t->be == y->be);
    PF_CHECK(t->dtype == y->be->compute_dtype);
}

static int overlaps(const pf_tensor *a, const pf_tensor *b) {
    uintptr_t a0 = (uintptr_t)a->data, a1 = a0 + pf_nbytes(a);
    uintptr_t b0 = (uintptr_t)b->data, b1 = b0 + pf_nbytes(b);
    return a0 < b1 && b0 < a1;
}

/* The output must not share any storage with the input. */
static void check_disjoint(const pf_tensor *y, const pf_tensor *x) { PF_CHECK(!overlaps(y, x)); }

/* The output may be the input itself (same storage, same size) but must not
 * partly overlap it: in-place ops read and write element i together, a shifted
 * overlap would read elements already written. */
static void check_inplace_ok(const pf_tensor *y, const pf_tensor *x) {
    PF_CHECK((y->data == x->data && pf_nbytes(y) == pf_nbytes(x)) || !overlaps(y, x));
}

static void check_same_shape(const pf_tensor *a, const pf_tensor *b) { PF_CHECK(pf_same_shape(a, b)); }

/* a and b agree on dimensions [0, ndim-1). */
static void check_same_leading(const pf_tensor *a, const pf_tensor *b) {
    PF_CHECK(a->ndim == b->ndim);
    for (int i = 0; i < a->ndim - 1; i++) PF_CHECK(a->shape[i] == b->shape[i]);
}

/* ---- ops ---- */

void pf_linear(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b) {
    if (y->be->failed) return;
    check_on(y, x);
    check_on(y, w);
    PF_CHECK(w->ndim == 2);
    int64_t n = w->shape[0], k = w->shape[1];
    PF_CHECK(x->shape[x->ndim - 1] == k);
    PF_CHECK(y->shape[y->ndim - 1] == n);
    check_same_leading(y, x);
    if (b) {
        check_on(y, b);
        PF_CHECK(pf_numel(b) == n);
        check_disjoint(y, b);
    }
    check_disjoint(y, x);
    check_disjoint(y, w);
    TIMED(y->be, "linear", y->be->ops->linear(y, x, w, b));
}

void pf_conv2d(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b,
               int stride, int pad) {
    if (y->be->failed) return;
    check_on(y, x);
    check_on(y, w);
    PF_CHECK(x->ndim == 4 && w->ndim == 4 && y->ndim == 4);
    PF_CHECK(stride >= 1 && pad >= 0);
    PF_CHECK(w->shape[1] == x->shape[1]); /* no grouped convolutions */
    int64_t ho = (x->shape[2] + 2 * pad - w->shape[2]) / stride + 1;
    int64_t wo = (x->shape[3] + 2 * pad - w->shape[3]) / stride + 1;
    PF_CHECK(x->shape[2] + 2 * pad >= w->shape[2] && x->shape[3] + 2 * pad >= w->shape[3]);
    PF_CHECK(y->shape[0] == x->shape[0] && y->shape[1] == w->shape[0]);
    PF_CHECK(y->shape[2] == ho && y->shape[3] == wo);
    if (b) {
        check_on(y, b);
        PF_CHECK(pf_numel(b) == w->shape[0]);
        check_disjoint(y, b);
    }
    check_disjoint(y, x);
    check_disjoint(y, w);
    const char *op = w->shape[2] == 1 && w->shape[3] == 1 ? "conv2d 1x1" : "conv2d kxk";
    TIMED(y->be, op, y->be->ops->conv2d(y, x, w, b, stride, pad));
}

void pf_group_norm(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma,
                   const pf_tensor *beta, int groups, float eps, int fuse_silu) {
    if (y->be->failed) return;
    check_on(y, x);
    check_on(y, gamma);
    check_on(y, beta);
    check_same_shape(y, x);
    PF_CHECK(x->ndim >= 2 && groups >= 1 && x->shape[1] % groups == 0);
    PF_CHECK(pf_numel(gamma) == x->shape[1] && pf_numel(beta) == x->shape[1]);
    check_inplace_ok(y, x);
    check_disjoint(y, gamma);
    check_disjoint(y, beta);
    const char *op = fuse_silu ? "group_norm+silu" : "group_norm";
    TIMED(y->be, op, y->be->ops->group_norm(y, x, gamma, beta, groups, eps, fuse_silu));
}

void pf_layer_norm(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma,
                   const pf_tensor *beta, float eps) {
    if (y->be->failed) return;
    check_on(y, x);
    check_on(y, gamma);
    check_on(y, beta);
    check_same_shape(y, x);
    int64_t c = x->shape[x->ndim - 1];
    PF_CHECK(pf_numel(gamma) == c && pf_numel(beta) == c);
    check_inplace_ok(y, x);
    check_disjoint(y, gamma);
    check_disjoint(y, beta);
    TIMED(y->be, "layer_norm", y->be->ops->layer_norm(y, x, gamma, beta, eps));
}

void pf_softmax(pf_tensor *y, const pf_tensor *x) {
    if (y->be->failed) return;
    check_on(y, x);
    check_same_shape(y, x);
    check_inplace_ok(y, x);
    TIMED(y->be, "softmax", y->be->ops->softmax(y, x));
}

void pf_attention(pf_tensor *out, const pf_tensor *q, const pf_tensor *k, const pf_tensor *v,
                  int heads, int causal) {
    if (out->be->failed) return;
    check_on(out, q);
    check_on(out, k);
    check_on(out, v);
    PF_CHECK(q->ndim == 3 && k->ndim == 3 && v->ndim == 3);
    check_same_shape(out, q);
    check_same_shape(k, v);
    PF_CHECK(k->shape[0] == q->shape[0] && k->shape[2] == q->shape[2]);
    PF_CHECK(heads >= 1 && q->shape[2] % heads == 0);
    check_disjoint(out, q);
    check_disjoint(out, k);
    check_disjoint(out, v);
    const char *op = causal ? "attention causal" : q->shape[1] == k->shape[1] ? "attention self" : "attention cross";
    TIMED(out->be, op, out->be->ops->attention(out, q, k, v, heads, causal));
}

void pf_activation(pf_tensor *y, const pf_tensor *x, pf_act act) {
    if (y->be->failed) return;
    check_on(y, x);
    check_same_shape(y, x);
    check_inplace_ok(y, x);
    PF_CHECK(act >= PF_ACT_SILU && act <= PF_ACT_QUICK_GELU);
    TIMED(y->be, "activation", y->be->ops->activation(y, x, act));
}

void pf_geglu(pf_tensor *y, const pf_tensor *x) {
    if (y->be->failed) return;
    check_on(y, x);
    check_same_leading(y, x);
    PF_CHECK(x->shape[x->ndim - 1] == 2 * y->shape[y->ndim - 1]);
    check_disjoint(y, x);
    TIMED(y->be, "geglu", y->be->ops->geglu(y, x));
}

/* Checks a broadcasting binary op and hands backends b with a's ndim: a b of
 * fewer dimensions is left-padded with 1s (numpy rules) in a header copy. */
static void binary(pf_tensor *y, const pf_tensor *a, const pf_tensor *b, int is_mul) {
    if (y->be->failed) return;
    check_on(y, a);
    check_on(y, b);
    check_same_shape(y, a);
    PF_CHECK(b->ndim <= a->ndim);
    pf_tensor bb = *b;
    int pad = a->ndim - b->ndim;
    bb.ndim = a->ndim;
    for (int i = 0; i < PF_MAX_DIMS; i++) bb.shape[i] = 1;
    for (int i = 0; i < b->ndim; i++) bb.shape[pad + i] = b->shape[i];
    for (int i = 0; i < a->ndim; i++) PF_CHECK(bb.shape[i] == a->shape[i] || bb.shape[i] == 1);
    check_inplace_ok(y, a);
    check_disjoint(y, b);
    if (is_mul)
        TIMED(y->be, "mul", y->be->ops->mul(y, a, &bb));
    else
        TIMED(y->be, "add", y->be->ops->add(y, a, &bb));
}

void pf_add(pf_tensor *y, const pf_tensor *a, const pf_tensor *b) { binary(y, a, b, 0); }
void pf_mul(pf_tensor *y, const pf_tensor *a, const pf_tensor *b) { binary(y, a, b, 1); }

void pf_scale(pf_tensor *y, const pf_tensor *x, float alpha, float beta) {
    if (y->be->failed) return;
    check_on(y, x);
    check_same_shape(y, x);
    check_inplace_ok(y, x);
    TIMED(y->be, "scale", y->be->ops->scale(y, x, alpha, beta));
}

void pf_concat(pf_tensor *y, const pf_tensor *a, const pf_tensor *b, int axis) {
    if (y->be->failed) return;
    check_on(y, a);
    check_on(y, b);
    PF_CHECK(a->ndim == b->ndim && y->ndim == a->ndim);
    PF_CHECK(axis >= 0 && axis < a->ndim);
    for (int i = 0; i < a->ndim; i++) {
        if (i == axis)
            PF_CHECK(y->shape[i] == a->shape[i] + b->shape[i]);
        else
            PF_CHECK(a->shape[i] == b->shape[i] && y->shape[i] == a->shape[i]);
    }
    check_disjoint(y, a);
    check_disjoint(y, b);
    TIMED(y->be, "concat", y->be->ops->concat(y, a, b, axis));
}

void pf_upsample_nearest(pf_tensor *y, const pf_tensor *x) {
    if (y->be->failed) return;
    check_on(y, x);
    PF_CHECK(x->ndim == 4 && y->ndim == 4);
    PF_CHECK(y->shape[0] == x->shape[0] && y->shape[1] == x->shape[1]);
    PF_CHECK(x->shape[2] >= 1 && x->shape[3] >= 1 && y->shape[2] >= 1 && y->shape[3] >= 1);
    check_disjoint(y, x);
    TIMED(y->be, "upsample_nearest", y->be->ops->upsample_nearest(y, x));
}

void pf_permute(pf_tensor *y, const pf_tensor *x, const int *perm) {
    if (y->be->failed) return;
    check_on(y, x);
    PF_CHECK(y->ndim == x->ndim);
    int seen[PF_MAX_DIMS] = {0};
    for (int i = 0; i < x->ndim; i++) {
        PF_CHECK(perm[i] >= 0 && perm[i] < x->ndim && !seen[perm[i]]);
        seen[perm[i]] = 1;
        PF_CHECK(y->shape[i] == x->shape[perm[i]]);
    }
    check_disjoint(y, x);
    TIMED(y->be, "permute", y->be->ops->permute(y, x, perm));
}

/* An id outside the table is not an invariant of this program: ids come from a
 * tokenizer whose vocabulary file may not match the checkpoint. It is reported
 * through the sticky error instead of aborting. */
void pf_embedding(pf_tensor *y, const pf_tensor *table, const int32_t *ids, int64_t count) {
    if (y->be->failed) return;
    check_on(y, table);
    PF_CHECK(table->ndim == 2 && count >= 0);
    int64_t v = table->shape[0], c = table->shape[1];
    PF_CHECK(y->shape[y->ndim - 1] == c && pf_numel(y) == count * c);
    check_disjoint(y, table);
    for (int64_t i = 0; i < count; i++) {
        if (ids[i] < 0 || ids[i] >= v) {
            pf_backend_set_error(y->be, "embedding: id %d at position %lld is outside the table of %lld rows",
                                 (int)ids[i], (long long)i, (long long)v);
            return;
        }
    }
    TIMED(y->be, "embedding", y->be->ops->embedding(y, table, ids, count));
}

void pf_copy(pf_tensor *y, const pf_tensor *x) {
    if (y->be->failed) return;
    check_on(y, x);
    PF_CHECK(pf_numel(y) == pf_numel(x));
    check_disjoint(y, x);
    TIMED(y->be, "copy", y->be->ops->copy(y, x));
}
