/* test_ops.c - every backend op against a naive double-precision loop, plus
 * float16/bfloat16 conversion, views and the sticky backend error.
 *
 * The references below are written from the PyTorch definitions, not from
 * backend_cpu.c, and accumulate in double, so the tolerances measure the
 * float32 error of the op under test. Sizes are odd on purpose (not multiples
 * of the 16-wide GEMM slices, the 16384-element chunks, the im2col tiles or
 * the attention query blocks) so that every remainder path runs. The op cases
 * take a backend, so test_threads can rerun them with another team size.
 *
 * Tolerances are atol + rtol * |ref|. Where an op is one correctly rounded
 * float operation per element (add, mul, copies) the tolerance is 0; elsewhere
 * the comment at each check says where the float32 error comes from. */
#include "test_util.h"

#include "backend.h"

static pf_backend *g_be; /* the default CPU backend (threads from OMP_NUM_THREADS) */

/* ---- helpers ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

/* Uniform in [-1, 1), xorshift64*: deterministic across platforms. */
static float frand(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    uint64_t r = rng * 0x2545f4914f6cdd1dull;
    return (float)((double)(r >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

/* n floats uniform in [offset - scale, offset + scale). */
static float *randv(int64_t n, float scale, float offset) {
    float *v = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) v[i] = offset + scale * frand();
    return v;
}

static pf_tensor *up(pf_backend *be, int ndim, const int64_t *shape, const float *src) {
    return pf_from_host(be, ndim, shape, src);
}

/* An output tensor filled with NaN, so that an element the op forgets to
 * write fails the comparison. */
static pf_tensor *out_nan(pf_backend *be, int ndim, const int64_t *shape) {
    pf_tensor *t = pf_new(be, ndim, shape);
    int64_t n = pf_numel(t);
    float *nan = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) nan[i] = NAN;
    be->ops->upload(be, t, nan);
    free(nan);
    return t;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static void assert_ok(pf_backend *be) {
    pf_error err = {0};
    if (pf_backend_ok(be, &err) != 0) {
        print_error("backend failed: %s\n", err.msg);
        fail();
    }
}

/* Compares t (downloaded) with a double reference. */
static void expect(const char *what, const pf_tensor *t, const double *ref, double atol, double rtol) {
    assert_ok(t->be);
    size_t n = (size_t)pf_numel(t);
    float *got = malloc((n ? n : 1) * sizeof(float)), *want = malloc((n ? n : 1) * sizeof(float));
    pf_to_host(got, t);
    for (size_t i = 0; i < n; i++) want[i] = (float)ref[i];
    pf_assert_close(what, got, want, n, atol, rtol);
    free(got);
    free(want);
}

static double *dalloc(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(double)); }

/* ---- linear ---- */

static void linear_case(pf_backend *be, int64_t m, int64_t n, int64_t k, int with_bias) {
    float *x = randv(m * k, 1, 0), *w = randv(n * k, 1, 0), *b = randv(n, 1, 0);
    double *ref = dalloc(m * n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = with_bias ? b[j] : 0;
            for (int64_t p = 0; p < k; p++) s += (double)x[i * k + p] * w[j * k + p];
            ref[i * n + j] = s;
        }
    /* x as [m/... ] 3-D when m splits evenly, to exercise leading dims */
    int three = m % 3 == 0;
    pf_tensor *tx = three ? up(be, 3, SHAPE(3, m / 3, k), x) : up(be, 2, SHAPE(m, k), x);
    pf_tensor *tw = up(be, 2, SHAPE(n, k), w), *tb = up(be, 1, SHAPE(n), b);
    pf_tensor *ty = three ? out_nan(be, 3, SHAPE(3, m / 3, n)) : out_nan(be, 2, SHAPE(m, n));
    pf_linear(ty, tx, tw, with_bias ? tb : NULL);
    /* float32 dot products of k terms of size <= 1: the rounding error grows
     * with k (summation order depends on the BLAS kernel); measured 6e-6 at
     * k = 1000, so the bound below keeps a margin of about 6 */
    expect("linear", ty, ref, 2e-5 * (1 + (double)k / 256), 1e-5);
    pf_free(tx), pf_free(tw), pf_free(tb), pf_free(ty);
    free(x), free(w), free(b), free(ref);
}

static void linear_cases(pf_backend *be) {
    linear_case(be, 10, 19, 37, 1);  /* tiny: no GEMM split */
    linear_case(be, 7, 19, 37, 0);   /* no bias */
    linear_case(be, 300, 70, 129, 1); /* split over rows */
    linear_case(be, 3, 700, 1000, 1); /* split over columns (time embedding shape) */
}

static void test_linear(void **state) {
    (void)state;
    linear_cases(g_be);
}

/* ---- conv2d ---- */

static void conv_case(pf_backend *be, int64_t n, int64_t ci, int64_t h, int64_t w, int64_t co,
                      int64_t kh, int64_t kw, int stride, int pad, int with_bias) {
    int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (w + 2 * pad - kw) / stride + 1;
    float *x = randv(n * ci * h * w, 1, 0), *wt = randv(co * ci * kh * kw, 1, 0), *b = randv(co, 1, 0);
    double *ref = dalloc(n * co * ho * wo);
    for (int64_t i = 0; i < n; i++)
        for (int64_t o = 0; o < co; o++)
            for (int64_t oy = 0; oy < ho; oy++)
                for (int64_t ox = 0; ox < wo; ox++) {
                    double s = with_bias ? b[o] : 0;
                    for (int64_t c = 0; c < ci; c++)
                        for (int64_t ky = 0; ky < kh; ky++)
                            for (int64_t kx = 0; kx < kw; kx++) {
                                int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                                s += (double)x[((i * ci + c) * h + iy) * w + ix] *
                                     wt[((o * ci + c) * kh + ky) * kw + kx];
                            }
                    ref[((i * co + o) * ho + oy) * wo + ox] = s;
                }
    pf_tensor *tx = up(be, 4, SHAPE(n, ci, h, w), x), *tw = up(be, 4, SHAPE(co, ci, kh, kw), wt);
    pf_tensor *tb = up(be, 1, SHAPE(co), b), *ty = out_nan(be, 4, SHAPE(n, co, ho, wo));
    pf_conv2d(ty, tx, tw, with_bias ? tb : NULL, stride, pad);
    char what[96];
    snprintf(what, sizeof what, "conv2d %lldx%lld s%d p%d ci%lld", (long long)kh, (long long)kw,
             stride, pad, (long long)ci);
    /* sums of ci*kh*kw products of size <= 1, as for linear (measured 1.9e-5
     * at 576 terms) */
    expect(what, ty, ref, 2e-5 * (1 + (double)(ci * kh * kw) / 256), 1e-5);
    pf_free(tx), pf_free(tw), pf_free(tb), pf_free(ty);
    free(x), free(wt), free(b), free(ref);
}

static void conv_cases(pf_backend *be) {
    conv_case(be, 2, 5, 9, 11, 7, 3, 3, 2, 1, 1);  /* SD Downsample2D */
    conv_case(be, 2, 5, 9, 11, 7, 3, 3, 1, 1, 1);  /* resnet conv */
    conv_case(be, 2, 5, 9, 11, 7, 3, 3, 2, 0, 0);  /* stride 2 unpadded, no bias */
    conv_case(be, 2, 5, 9, 11, 7, 1, 1, 1, 0, 1);  /* 1x1: direct product */
    conv_case(be, 1, 64, 33, 33, 48, 1, 1, 1, 0, 1); /* 1x1 large enough to split */
    conv_case(be, 2, 5, 9, 11, 7, 1, 1, 2, 0, 1);  /* 1x1 strided: im2col path */
    conv_case(be, 1, 3, 6, 7, 4, 2, 3, 1, 2, 1);   /* non-square kernel, pad 2 */
    conv_case(be, 1, 64, 131, 67, 3, 3, 3, 1, 1, 1); /* columns exceed one im2col tile */
    conv_case(be, 1, 4, 7, 8, 5, 3, 3, 1, 0, 1);   /* stride 1 unpadded: the row-copy path's edges */
    conv_case(be, 1, 2, 3, 2, 3, 3, 3, 1, 3, 1);   /* padding wider than an input row */
    conv_case(be, 1, 2, 5, 1, 3, 1, 3, 1, 1, 0);   /* a one-pixel-wide input */
}

static void test_conv2d(void **state) {
    (void)state;
    conv_cases(g_be);
}

/* ---- group norm / layer norm ---- */

static double silu_d(double v) { return v / (1 + exp(-v)); }

static void group_norm_case(pf_backend *be, int ndim, const int64_t *shape, int groups, int silu,
                            int inplace) {
    int64_t n = shape[0], c = shape[1], s = 1;
    for (int i = 2; i < ndim; i++) s *= shape[i];
    int64_t numel = n * c * s;
    /* offset 5 with spread 2: |mean| > std, where a one-pass variance would fail */
    float *x = randv(numel, 2, 5), *g = randv(c, 1, 1), *b = randv(c, 1, 0);
    double *ref = dalloc(numel);
    const double eps = 1e-5;
    int64_t cpg = c / groups;
    for (int64_t i = 0; i < n; i++)
        for (int64_t gi = 0; gi < groups; gi++) {
            const float *xg = x + (i * c + gi * cpg) * s;
            double mean = 0, var = 0;
            for (int64_t j = 0; j < cpg * s; j++) mean += xg[j];
            mean /= (double)(cpg * s);
            for (int64_t j = 0; j < cpg * s; j++) var += (xg[j] - mean) * (xg[j] - mean);
            var /= (double)(cpg * s);
            for (int64_t j = 0; j < cpg * s; j++) {
                int64_t ch = gi * cpg + j / s;
                double v = (xg[j] - mean) / sqrt(var + eps) * g[ch] + b[ch];
                ref[(i * c + gi * cpg) * s + j] = silu ? silu_d(v) : v;
            }
        }
    pf_tensor *tx = up(be, ndim, shape, x), *tg = up(be, 1, SHAPE(c), g), *tb = up(be, 1, SHAPE(c), b);
    pf_tensor *ty = inplace ? tx : out_nan(be, ndim, shape);
    pf_group_norm(ty, tx, tg, tb, groups, (float)eps, silu);
    /* outputs are O(3); float32 rounding of (x - mean) * scale + shift is a few
     * ulp, and x itself carries 2.4e-7 of rounding relative to an offset of 5 */
    expect(silu ? "group_norm+silu" : "group_norm", ty, ref, 2e-6, 1e-5);
    if (!inplace) pf_free(ty);
    pf_free(tx), pf_free(tg), pf_free(tb);
    free(x), free(g), free(b), free(ref);
}

static void group_norm_cases(pf_backend *be) {
    group_norm_case(be, 4, SHAPE(2, 12, 5, 7), 4, 0, 0); /* 3 channels per group */
    group_norm_case(be, 4, SHAPE(2, 12, 5, 7), 4, 1, 0);
    group_norm_case(be, 4, SHAPE(2, 12, 5, 7), 3, 1, 1); /* in place */
    group_norm_case(be, 3, SHAPE(3, 6, 10), 2, 0, 0);
    group_norm_case(be, 4, SHAPE(2, 64, 16, 17), 32, 1, 0); /* SD: 32 groups, parallel */
    group_norm_case(be, 4, SHAPE(1, 6, 3, 3), 6, 0, 0);     /* one channel per group */
}

static void test_group_norm(void **state) {
    (void)state;
    group_norm_cases(g_be);
}

static void layer_norm_case(pf_backend *be, int ndim, const int64_t *shape, int inplace) {
    int64_t c = shape[ndim - 1], numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    float *x = randv(numel, 3, -4), *g = randv(c, 1, 1), *b = randv(c, 1, 0);
    double *ref = dalloc(numel);
    const double eps = 1e-5;
    for (int64_t r = 0; r < numel / c; r++) {
        const float *xr = x + r * c;
        double mean = 0, var = 0;
        for (int64_t j = 0; j < c; j++) mean += xr[j];
        mean /= (double)c;
        for (int64_t j = 0; j < c; j++) var += (xr[j] - mean) * (xr[j] - mean);
        var /= (double)c;
        for (int64_t j = 0; j < c; j++) ref[r * c + j] = (xr[j] - mean) / sqrt(var + eps) * g[j] + b[j];
    }
    pf_tensor *tx = up(be, ndim, shape, x), *tg = up(be, 1, SHAPE(c), g), *tb = up(be, 1, SHAPE(c), b);
    pf_tensor *ty = inplace ? tx : out_nan(be, ndim, shape);
    pf_layer_norm(ty, tx, tg, tb, (float)eps);
    /* as group norm: a few ulp of O(3) outputs */
    expect("layer_norm", ty, ref, 2e-6, 1e-5);
    if (!inplace) pf_free(ty);
    pf_free(tx), pf_free(tg), pf_free(tb);
    free(x), free(g), free(b), free(ref);
}

static void test_layer_norm(void **state) {
    (void)state;
    layer_norm_case(g_be, 3, SHAPE(3, 5, 37), 0);
    layer_norm_case(g_be, 3, SHAPE(3, 5, 37), 1);
    layer_norm_case(g_be, 3, SHAPE(2, 77, 768), 0); /* CLIP width, parallel */
    layer_norm_case(g_be, 1, SHAPE(5), 0);
}

/* ---- softmax ---- */

static void softmax_case(pf_backend *be, int ndim, const int64_t *shape, float scale, float offset,
                         int inplace) {
    int64_t c = shape[ndim - 1], numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    float *x = randv(numel, scale, offset);
    double *ref = dalloc(numel);
    for (int64_t r = 0; r < numel / c; r++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < c; j++) mx = fmax(mx, x[r * c + j]);
        for (int64_t j = 0; j < c; j++) sum += exp(x[r * c + j] - mx);
        for (int64_t j = 0; j < c; j++) ref[r * c + j] = exp(x[r * c + j] - mx) / sum;
    }
    pf_tensor *tx = up(be, ndim, shape, x), *ty = inplace ? tx : out_nan(be, ndim, shape);
    pf_softmax(ty, tx);
    /* x - max is rounded to float: up to ulp(|x|)/2 absolute in the exponent,
     * i.e. 4e-6 relative for inputs of size 100 (PyTorch has the same) */
    expect("softmax", ty, ref, 1e-7, 2e-5);
    if (!inplace) pf_free(ty);
    pf_free(tx);
    free(x), free(ref);
}

static void test_softmax(void **state) {
    (void)state;
    softmax_case(g_be, 2, SHAPE(7, 33), 3, 0, 0);
    softmax_case(g_be, 2, SHAPE(7, 33), 100, 0, 0);  /* exp(100) overflows float without the max */
    softmax_case(g_be, 2, SHAPE(7, 33), 10, -200, 0); /* exp(-200) underflows to 0 without it */
    softmax_case(g_be, 3, SHAPE(2, 3, 1000), 5, 0, 1); /* in place, parallel */
    softmax_case(g_be, 1, SHAPE(1), 5, 0, 0);
}

/* ---- attention ---- */

static void attention_case(pf_backend *be, int64_t bsz, int64_t lq, int64_t lk, int64_t c, int heads,
                           int causal) {
    /* q scaled by 4 so that the softmax is peaked, not near uniform */
    float *q = randv(bsz * lq * c, 4, 0), *k = randv(bsz * lk * c, 1, 0), *v = randv(bsz * lk * c, 1, 0);
    double *ref = dalloc(bsz * lq * c), *p = dalloc(lk);
    int64_t d = c / heads;
    for (int64_t b = 0; b < bsz; b++)
        for (int h = 0; h < heads; h++)
            for (int64_t i = 0; i < lq; i++) {
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < lk; j++) {
                    double s = 0;
                    for (int64_t e = 0; e < d; e++)
                        s += (double)q[(b * lq + i) * c + h * d + e] * k[(b * lk + j) * c + h * d + e];
                    p[j] = causal && j > i ? -INFINITY : s / sqrt((double)d);
                    mx = fmax(mx, p[j]);
                }
                for (int64_t j = 0; j < lk; j++) sum += (p[j] = exp(p[j] - mx));
                for (int64_t e = 0; e < d; e++) {
                    double o = 0;
                    for (int64_t j = 0; j < lk; j++) o += p[j] / sum * v[(b * lk + j) * c + h * d + e];
                    ref[(b * lq + i) * c + h * d + e] = o;
                }
            }
    pf_tensor *tq = up(be, 3, SHAPE(bsz, lq, c), q), *tk = up(be, 3, SHAPE(bsz, lk, c), k);
    pf_tensor *tv = up(be, 3, SHAPE(bsz, lk, c), v), *to = out_nan(be, 3, SHAPE(bsz, lq, c));
    pf_attention(to, tq, tk, tv, heads, causal);
    /* scores carry ~d * 6e-8 * |q||k| of float error, which becomes a relative
     * error of the weights; outputs are averages of |v| <= 1 */
    expect(causal ? "attention causal" : "attention", to, ref, 5e-6, 1e-5);
    pf_free(tq), pf_free(tk), pf_free(tv), pf_free(to);
    free(q), free(k), free(v), free(ref), free(p);
}

static void attention_cases(pf_backend *be) {
    attention_case(be, 2, 13, 7, 24, 3, 0);  /* cross attention, Lq != Lk */
    attention_case(be, 2, 13, 7, 24, 3, 1);  /* causal with Lq > Lk */
    attention_case(be, 1, 5, 9, 12, 2, 1);   /* causal with Lq < Lk */
    attention_case(be, 1, 77, 77, 32, 4, 1); /* CLIP shape, scaled down */
    attention_case(be, 1, 300, 4100, 16, 2, 0); /* key blocks with a running softmax, short last ones */
    attention_case(be, 2, 70, 2600, 80, 2, 0);  /* the same with SD's head width 40 */
    attention_case(be, 1, 37, 2100, 320, 2, 0); /* head width 160: values in 64 + 64 + 32 columns */
    attention_case(be, 1, 600, 2050, 8, 1, 1);  /* causal over several query blocks */
}

static void test_attention(void **state) {
    (void)state;
    attention_cases(g_be);
}

/* ---- elementwise ---- */

static double act_ref(double x, pf_act act) {
    switch (act) {
    case PF_ACT_SILU: return x / (1 + exp(-x));
    case PF_ACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case PF_ACT_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case PF_ACT_QUICK_GELU: return x / (1 + exp(-1.702 * x));
    }
    return NAN;
}

static void test_activation(void **state) {
    (void)state;
    const int64_t n = 40000; /* several chunks, the last one short */
    float *x = randv(n, 10, 0);
    const float special[] = {0, -0.0f, 30, -30, 100, -100, 1e-20f, -1e-20f, 88.8f, -88.8f};
    memcpy(x, special, sizeof special);
    double *ref = dalloc(n);
    const char *names[] = {"silu", "gelu", "gelu_tanh", "quick_gelu"};
    for (int a = PF_ACT_SILU; a <= PF_ACT_QUICK_GELU; a++) {
        for (int64_t i = 0; i < n; i++) ref[i] = act_ref(x[i], (pf_act)a);
        pf_tensor *tx = up(g_be, 2, SHAPE(8, n / 8), x), *ty = out_nan(g_be, 2, SHAPE(8, n / 8));
        pf_activation(ty, tx, (pf_act)a);
        /* a few ulp from expf/erff/tanhf; gelu(x) for x << 0 is 1 + erf(..), a
         * cancellation whose absolute error is ~|x| * 6e-8 */
        expect(names[a], ty, ref, 1e-6, 1e-5);
        pf_activation(tx, tx, (pf_act)a); /* in place */
        expect(names[a], tx, ref, 1e-6, 1e-5);
        pf_free(tx), pf_free(ty);
    }
    free(x), free(ref);
}

static void test_geglu(void **state) {
    (void)state;
    const int64_t rows = 2 * 5, nh = 40;
    float *x = randv(rows * 2 * nh, 4, 0);
    double *ref = dalloc(rows * nh);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < nh; j++)
            ref[r * nh + j] = x[r * 2 * nh + j] * act_ref(x[r * 2 * nh + nh + j], PF_ACT_GELU);
    pf_tensor *tx = up(g_be, 3, SHAPE(2, 5, 2 * nh), x), *ty = out_nan(g_be, 3, SHAPE(2, 5, nh));
    pf_geglu(ty, tx);
    expect("geglu", ty, ref, 4e-6, 1e-5); /* gelu's error times |h| <= 4 */
    pf_free(tx), pf_free(ty);
    free(x), free(ref);
}

/* a [shape] op b [bshape] with numpy broadcasting, reference by index arithmetic. */
static void binary_case(pf_backend *be, int ndim, const int64_t *shape, int bndim, const int64_t *bshape,
                        int is_mul, int inplace) {
    int64_t n = 1, nb = 1, bfull[PF_MAX_DIMS];
    for (int i = 0; i < ndim; i++) n *= shape[i];
    for (int i = 0; i < bndim; i++) nb *= bshape[i];
    for (int i = 0; i < ndim; i++) bfull[i] = i < ndim - bndim ? 1 : bshape[i - (ndim - bndim)];
    float *a = randv(n, 1, 0), *b = randv(nb, 2, 0);
    double *ref = dalloc(n);
    for (int64_t i = 0; i < n; i++) {
        int64_t rem = i, boff = 0, bs = 1;
        for (int d = ndim - 1; d >= 0; d--) {
            int64_t idx = rem % shape[d];
            rem /= shape[d];
            boff += (bfull[d] == 1 ? 0 : idx) * bs;
            bs *= bfull[d];
        }
        ref[i] = is_mul ? (double)a[i] * b[boff] : (double)a[i] + b[boff];
    }
    pf_tensor *ta = up(be, ndim, shape, a), *tb = up(be, bndim, bshape, b);
    pf_tensor *ty = inplace ? ta : out_nan(be, ndim, shape);
    if (is_mul)
        pf_mul(ty, ta, tb);
    else
        pf_add(ty, ta, tb);
    /* one float operation per element, exactly rounded: the double result
     * rounded to float is the same number */
    expect(is_mul ? "mul" : "add", ty, ref, 0, 0);
    if (!inplace) pf_free(ty);
    pf_free(ta), pf_free(tb);
    free(a), free(b), free(ref);
}

static void binary_cases(pf_backend *be) {
    for (int mul = 0; mul <= 1; mul++) {
        binary_case(be, 4, SHAPE(2, 3, 5, 7), 4, SHAPE(2, 3, 5, 7), mul, 0);       /* same shape */
        binary_case(be, 1, SHAPE(40001), 1, SHAPE(40001), mul, 1);                 /* chunks, in place */
        binary_case(be, 4, SHAPE(2, 3, 5, 7), 4, SHAPE(2, 3, 1, 1), mul, 0);       /* time embedding */
        binary_case(be, 4, SHAPE(2, 33, 40, 41), 4, SHAPE(2, 33, 1, 1), mul, 1);   /* same, parallel */
        binary_case(be, 3, SHAPE(2, 9, 13), 3, SHAPE(1, 1, 13), mul, 0);           /* bias [1,1,C] */
        binary_case(be, 3, SHAPE(2, 9, 13), 1, SHAPE(13), mul, 0);                 /* bias [C], left-padded */
        binary_case(be, 4, SHAPE(2, 3, 5, 7), 4, SHAPE(1, 3, 1, 7), mul, 0);       /* general */
        binary_case(be, 4, SHAPE(2, 3, 5, 7), 4, SHAPE(2, 1, 5, 1), mul, 0);       /* general */
        binary_case(be, 4, SHAPE(2, 3, 5, 7), 4, SHAPE(1, 1, 1, 1), mul, 0);       /* scalar */
        binary_case(be, 3, SHAPE(1, 3, 1), 3, SHAPE(1, 1, 1), mul, 0);             /* size-1 dims in a */
        binary_case(be, 3, SHAPE(300, 3, 70000 / 300), 3, SHAPE(300, 1, 1), mul, 0); /* many short rows */
    }
}

static void test_add_mul(void **state) {
    (void)state;
    binary_cases(g_be);
}

static void test_scale(void **state) {
    (void)state;
    const int64_t n = 33333;
    float *x = randv(n, 3, 0);
    double *ref = dalloc(n);
    for (int64_t i = 0; i < n; i++) ref[i] = (double)0.18215f * x[i] - 0.5;
    pf_tensor *tx = up(g_be, 1, SHAPE(n), x), *ty = out_nan(g_be, 1, SHAPE(n));
    pf_scale(ty, tx, 0.18215f, -0.5f);
    /* two float roundings (product, sum) against one: at most about 1 ulp */
    expect("scale", ty, ref, 1e-7, 2e-7);
    pf_scale(tx, tx, 0.18215f, -0.5f);
    expect("scale in place", tx, ref, 1e-7, 2e-7);
    pf_free(tx), pf_free(ty);
    free(x), free(ref);
}

/* ---- data movement ---- */

static void concat_case(const int64_t *sa, const int64_t *sb, int axis) {
    int64_t sy[4], na = 1, nb = 1;
    for (int i = 0; i < 4; i++) {
        sy[i] = i == axis ? sa[i] + sb[i] : sa[i];
        na *= sa[i];
        nb *= sb[i];
    }
    float *a = randv(na, 1, 0), *b = randv(nb, 1, 0);
    double *ref = dalloc(na + nb);
    for (int64_t i = 0; i < na + nb; i++) { /* y index -> source element */
        int64_t idx[4], rem = i;
        for (int d = 3; d >= 0; d--) {
            idx[d] = rem % sy[d];
            rem /= sy[d];
        }
        int from_b = idx[axis] >= sa[axis];
        if (from_b) idx[axis] -= sa[axis];
        const int64_t *s = from_b ? sb : sa;
        int64_t off = ((idx[0] * s[1] + idx[1]) * s[2] + idx[2]) * s[3] + idx[3];
        ref[i] = from_b ? b[off] : a[off];
    }
    pf_tensor *ta = up(g_be, 4, sa, a), *tb = up(g_be, 4, sb, b), *ty = out_nan(g_be, 4, sy);
    pf_concat(ty, ta, tb, axis);
    expect("concat", ty, ref, 0, 0);
    pf_free(ta), pf_free(tb), pf_free(ty);
    free(a), free(b), free(ref);
}

static void test_concat(void **state) {
    (void)state;
    concat_case(SHAPE(2, 3, 5, 7), SHAPE(1, 3, 5, 7), 0); /* classifier-free guidance batch */
    concat_case(SHAPE(2, 3, 5, 7), SHAPE(2, 4, 5, 7), 1); /* UNet skip connections */
    concat_case(SHAPE(2, 3, 5, 7), SHAPE(2, 3, 2, 7), 2);
    concat_case(SHAPE(2, 3, 5, 7), SHAPE(2, 3, 5, 1), 3);
    concat_case(SHAPE(2, 40, 20, 21), SHAPE(2, 30, 20, 21), 1); /* parallel */
}

/* F.interpolate(mode="nearest") to any size. The reference index is computed
 * in double precision ((i * in) / out, floored), which agrees with torch's
 * float32 rule at these sizes; the tables below are torch's own output. */
static void upsample_case(int64_t n, int64_t c, int64_t h, int64_t w, int64_t ho, int64_t wo) {
    float *x = randv(n * c * h * w, 1, 0);
    double *ref = dalloc(n * c * ho * wo);
    for (int64_t i = 0; i < n * c; i++)
        for (int64_t y = 0; y < ho; y++)
            for (int64_t xx = 0; xx < wo; xx++) {
                int64_t sy = (int64_t)floor((double)y * h / ho), sx = (int64_t)floor((double)xx * w / wo);
                ref[(i * ho + y) * wo + xx] = x[(i * h + (sy < h ? sy : h - 1)) * w + (sx < w ? sx : w - 1)];
            }
    pf_tensor *tx = up(g_be, 4, SHAPE(n, c, h, w), x), *ty = out_nan(g_be, 4, SHAPE(n, c, ho, wo));
    pf_upsample_nearest(ty, tx);
    expect("upsample_nearest", ty, ref, 0, 0);
    pf_free(tx), pf_free(ty);
    free(x), free(ref);
}

static void test_upsample(void **state) {
    (void)state;
    upsample_case(2, 3, 5, 7, 10, 14);   /* 2x, diffusers' Upsample2D */
    upsample_case(2, 3, 23, 6, 45, 12);  /* a 45-row latent's skip, one side 2x */
    upsample_case(1, 2, 5, 7, 7, 9);     /* any ratio */
    upsample_case(1, 2, 4, 4, 4, 4);     /* identity */
    upsample_case(1, 40, 30, 33, 59, 65); /* large enough for the parallel path */
    /* torch.nn.functional.interpolate(arange(in), size=out, mode="nearest") */
    static const struct {
        int in, out;
        int idx[45];
    } torch_idx[] = {
        {23, 45, {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11,
                  11, 12, 12, 13, 13, 14, 14, 15, 15, 16, 16, 17, 17, 18, 18, 19, 19, 20, 20, 21, 21, 22}},
        {5, 7, {0, 0, 1, 2, 2, 3, 4}},
        {3, 10, {0, 0, 0, 0, 1, 1, 1, 2, 2, 2}},
        {12, 23, {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11}},
    };
    for (size_t t = 0; t < sizeof torch_idx / sizeof *torch_idx; t++)
        for (int i = 0; i < torch_idx[t].out; i++)
            if (pf_nearest_index(i, torch_idx[t].in, torch_idx[t].out) != torch_idx[t].idx[i])
                fail_msg("nearest index %d of %d -> %d: got %lld, torch %d", i, torch_idx[t].in, torch_idx[t].out,
                         (long long)pf_nearest_index(i, torch_idx[t].in, torch_idx[t].out), torch_idx[t].idx[i]);
}

static void permute_case(int ndim, const int64_t *shape, const int *perm) {
    int64_t n = 1, sy[PF_MAX_DIMS], xs[PF_MAX_DIMS];
    for (int i = 0; i < ndim; i++) n *= shape[i];
    for (int i = 0; i < ndim; i++) sy[i] = shape[perm[i]];
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        xs[i] = s;
        s *= shape[i];
    }
    float *x = randv(n, 1, 0);
    double *ref = dalloc(n);
    for (int64_t i = 0; i < n; i++) { /* y[i0..] = x[i_perm^-1 ...]: y dim d is x dim perm[d] */
        int64_t rem = i, off = 0;
        for (int d = ndim - 1; d >= 0; d--) {
            off += (rem % sy[d]) * xs[perm[d]];
            rem /= sy[d];
        }
        ref[i] = x[off];
    }
    pf_tensor *tx = up(g_be, ndim, shape, x), *ty = out_nan(g_be, ndim, sy);
    pf_permute(ty, tx, perm);
    expect("permute", ty, ref, 0, 0);
    pf_free(tx), pf_free(ty);
    free(x), free(ref);
}

static void test_permute(void **state) {
    (void)state;
    permute_case(4, SHAPE(2, 3, 4, 5), (const int[]){0, 2, 3, 1}); /* NCHW -> NHWC */
    permute_case(4, SHAPE(2, 3, 4, 5), (const int[]){0, 3, 1, 2}); /* NHWC -> NCHW */
    permute_case(4, SHAPE(2, 3, 4, 5), (const int[]){0, 2, 1, 3}); /* split heads */
    permute_case(4, SHAPE(2, 3, 4, 5), (const int[]){3, 1, 0, 2});
    permute_case(4, SHAPE(2, 3, 4, 5), (const int[]){0, 1, 2, 3}); /* identity */
    permute_case(3, SHAPE(7, 1, 9), (const int[]){2, 1, 0});
    permute_case(2, SHAPE(130, 257), (const int[]){1, 0}); /* parallel */
    permute_case(5, SHAPE(2, 3, 2, 3, 2), (const int[]){4, 2, 0, 3, 1});
}

static void test_embedding_copy(void **state) {
    (void)state;
    const int64_t v = 11, c = 6, count = 8;
    const int32_t ids[8] = {0, 10, 3, 3, 7, 1, 10, 0};
    float *table = randv(v * c, 1, 0);
    double *ref = dalloc(count * c);
    for (int64_t i = 0; i < count; i++)
        for (int64_t j = 0; j < c; j++) ref[i * c + j] = table[ids[i] * c + j];
    pf_tensor *tt = up(g_be, 2, SHAPE(v, c), table), *ty = out_nan(g_be, 3, SHAPE(2, 4, c));
    pf_embedding(ty, tt, ids, count);
    expect("embedding", ty, ref, 0, 0);
    pf_tensor *tc = out_nan(g_be, 2, SHAPE(8, c));
    pf_copy(tc, ty); /* same numel, another shape */
    expect("copy", tc, ref, 0, 0);
    pf_free(tt), pf_free(ty), pf_free(tc);
    free(table), free(ref);

    /* an id outside the table is an input error: reported, not an abort */
    pf_backend *be = pf_backend_cpu_new(1);
    float small[4] = {1, 2, 3, 4};
    pf_tensor *t2 = up(be, 2, SHAPE(2, 2), small), *y2 = out_nan(be, 2, SHAPE(1, 2));
    const int32_t bad[1] = {2};
    pf_embedding(y2, t2, bad, 1);
    pf_error err = {0};
    assert_int_equal(pf_backend_ok(be, &err), -1);
    assert_non_null(strstr(err.msg, "embedding"));
    pf_free(t2), pf_free(y2);
    pf_backend_free(be);
}

/* ---- storage dtypes, views, sticky error ---- */

/* Reference rounding of a float to a format with `mbits` fraction bits and
 * minimum normal exponent emin, computed in double: scale by the quantum (a
 * power of two, exact), round half to even with rint(), scale back. Returns
 * the value, inf on overflow of `maxval`. Independent of tensor.c's bit code. */
static double round_ref(float f, int mbits, int emin, double maxval) {
    double a = fabs((double)f);
    int e;
    frexp(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    e -= 1;
    if (e < emin) e = emin; /* subnormal range: fixed quantum */
    double quantum = ldexp(1.0, e - mbits);
    double r = rint(a / quantum) * quantum; /* rint: round half to even */
    /* values at or past the halfway point above maxval round to infinity */
    if (r > maxval) r = INFINITY;
    return copysign(r, (double)f);
}

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void check_rounding(float f, int is_bf16) {
    double want = is_bf16 ? round_ref(f, 7, -126, 3.3895313892515355e38) : round_ref(f, 10, -14, 65504.0);
    uint16_t h = is_bf16 ? pf_f32_to_bf16(f) : pf_f32_to_f16(f);
    double got = is_bf16 ? pf_bf16_to_f32(h) : pf_f16_to_f32(h);
    if (got != want || signbit(got) != signbit(want)) {
        uint32_t u;
        memcpy(&u, &f, 4);
        print_error("%s(%.9g = 0x%08x): got 0x%04x = %.9g, want %.9g\n", is_bf16 ? "bf16" : "f16",
                    (double)f, (unsigned)u, h, got, want);
        fail();
    }
}

static void test_f16_bf16(void **state) {
    (void)state;
    /* decoding: known bit patterns */
    assert_true(pf_f16_to_f32(0x3c00) == 1.0f);
    assert_true(pf_f16_to_f32(0xc000) == -2.0f);
    assert_true(pf_f16_to_f32(0x0001) == ldexpf(1, -24)); /* smallest subnormal */
    assert_true(pf_f16_to_f32(0x03ff) == 1023 * ldexpf(1, -24));
    assert_true(pf_f16_to_f32(0x0400) == ldexpf(1, -14));
    assert_true(pf_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(isinf(pf_f16_to_f32(0x7c00)) && pf_f16_to_f32(0x7c00) > 0);
    assert_true(isinf(pf_f16_to_f32(0xfc00)) && pf_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(pf_f16_to_f32(0x7e00)));
    assert_true(pf_f16_to_f32(0x8000) == 0 && signbit(pf_f16_to_f32(0x8000)));
    assert_true(pf_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(pf_bf16_to_f32(0x7f7f) == 3.3895313892515355e38f);

    /* every half and every bfloat16 survives a round trip through float
     * (NaN stays NaN of the same sign; its payload may change) */
    for (uint32_t u = 0; u < 65536; u++) {
        uint16_t h = (uint16_t)u;
        float f = pf_f16_to_f32(h), g = pf_bf16_to_f32(h);
        if (isnan(f)) {
            uint16_t back = pf_f32_to_f16(f);
            assert_true((back & 0x7c00) == 0x7c00 && (back & 0x3ff) && (back & 0x8000) == (h & 0x8000));
        } else if (pf_f32_to_f16(f) != h) {
            print_error("f16 0x%04x -> %g -> 0x%04x\n", h, (double)f, pf_f32_to_f16(f));
            fail();
        }
        if (isnan(g))
            assert_true(isnan(pf_bf16_to_f32(pf_f32_to_bf16(g))));
        else
            assert_int_equal(pf_f32_to_bf16(g), h);
    }

    /* rounding ties and edges, f16 */
    assert_int_equal(pf_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);     /* tie -> even (down) */
    assert_int_equal(pf_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3c02); /* tie -> even (up) */
    assert_int_equal(pf_f32_to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)), 0x3c01);
    assert_int_equal(pf_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(pf_f32_to_f16(65520.0f), 0x7c00); /* tie between 65504 and 2^16: inf */
    assert_int_equal(pf_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(pf_f32_to_f16(-INFINITY), 0xfc00);
    assert_int_equal(pf_f32_to_f16(ldexpf(1, -24)), 0x0001);
    assert_int_equal(pf_f32_to_f16(ldexpf(1, -25)), 0x0000);       /* tie with 0 -> 0 */
    assert_int_equal(pf_f32_to_f16(ldexpf(1.0001f, -25)), 0x0001); /* just above the tie */
    assert_int_equal(pf_f32_to_f16(3 * ldexpf(1, -25)), 0x0002);   /* 1.5 quanta -> 2 */
    assert_int_equal(pf_f32_to_f16(ldexpf(1, -14) - ldexpf(1, -25)), 0x0400); /* into the normals */
    assert_int_equal(pf_f32_to_f16(-1e-10f), 0x8000);
    assert_int_equal(pf_f32_to_f16(ldexpf(1, -130)), 0x0000); /* float subnormal */
    uint16_t hn = pf_f32_to_f16(NAN);
    assert_true((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff));

    /* rounding ties and edges, bf16 */
    assert_int_equal(pf_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3f80);
    assert_int_equal(pf_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3f82);
    assert_int_equal(pf_f32_to_bf16(3.4028235e38f), 0x7f80); /* FLT_MAX rounds to inf */
    assert_int_equal(pf_f32_to_bf16(-INFINITY), 0xff80);
    assert_true(isnan(pf_bf16_to_f32(pf_f32_to_bf16(NAN))));
    assert_true(isnan(pf_bf16_to_f32(pf_f32_to_bf16(bits_to_f32(0x7f800001))))); /* NaN must not become inf */

    /* random floats against the double reference: exponents around each
     * format's range (including its subnormals), and raw random bits */
    for (int i = 0; i < 2000000; i++) {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        uint64_t r = rng * 0x2545f4914f6cdd1dull;
        uint32_t man = (uint32_t)(r & 0x7fffff), sign = (uint32_t)(r >> 63) << 31;
        uint32_t e16 = 127 - 28 + (uint32_t)((r >> 32) % 46); /* 2^-28 .. 2^17 */
        if (man & 1) man &= ~0x1fffu, man |= (uint32_t)(r >> 40) & 0x1000u; /* many exact ties */
        check_rounding(bits_to_f32(sign | e16 << 23 | man), 0);
        uint32_t raw = (uint32_t)(r >> 16);
        if (!isnan(bits_to_f32(raw))) {
            check_rounding(bits_to_f32(raw), 1);
            check_rounding(bits_to_f32(raw), 0);
        }
        uint32_t tie = (raw & ~0xffffu) | ((r & 1) ? 0x8000u : (raw & 0xffffu));
        if (!isnan(bits_to_f32(tie))) check_rounding(bits_to_f32(tie), 1);
    }

    /* tensors in a storage dtype: upload converts from, download to float32 */
    float src[7] = {1.0f, -2.5f, 65519.0f, 1e-7f, 1.0f + ldexpf(1, -11), 3.0e38f, -0.0f};
    for (int dt = PF_F16; dt <= PF_BF16; dt++) {
        pf_tensor *t = pf_new_dtype(g_be, (pf_dtype)dt, 1, SHAPE(7));
        g_be->ops->upload(g_be, t, src);
        float back[7];
        pf_to_host(back, t);
        for (int i = 0; i < 7; i++) {
            uint16_t want = dt == PF_F16 ? pf_f32_to_f16(src[i]) : pf_f32_to_bf16(src[i]);
            assert_int_equal(((uint16_t *)t->data)[i], want);
            float wf = dt == PF_F16 ? pf_f16_to_f32(want) : pf_bf16_to_f32(want);
            assert_memory_equal(&back[i], &wf, 4);
        }
        assert_int_equal(pf_nbytes(t), 14);
        pf_free(t);
    }
}

static void test_view_slice(void **state) {
    (void)state;
    float x[24];
    for (int i = 0; i < 24; i++) x[i] = (float)i;
    pf_tensor *t = up(g_be, 3, SHAPE(4, 3, 2), x);
    pf_tensor *v = pf_view2(t, 12, 2);
    assert_ptr_equal(v->data, t->data);
    assert_int_equal(v->ndim, 2);
    assert_int_equal(v->shape[0], 12);
    assert_int_equal(v->shape[2], 1);
    assert_int_equal(v->owns, 0);
    pf_tensor *s = pf_slice0(t, 1, 2); /* rows 1..2: elements 6..17 */
    assert_int_equal(s->shape[0], 2);
    assert_int_equal(s->shape[1], 3);
    assert_ptr_equal(s->data, (float *)t->data + 6);
    float got[24];
    pf_to_host(got, s);
    for (int i = 0; i < 12; i++) assert_true(got[i] == (float)(6 + i));
    pf_scale(s, s, 2.0f, 0.0f); /* ops on a slice write through to the parent */
    pf_free(s);
    pf_free(v); /* a view does not free the parent's storage */
    pf_to_host(got, t);
    for (int i = 0; i < 24; i++) assert_true(got[i] == (i >= 6 && i < 18 ? 2.0f * (float)i : (float)i));
    pf_tensor *e = pf_slice0(t, 4, 0); /* empty slice at the end */
    assert_int_equal(pf_numel(e), 0);
    pf_free(e);
    pf_free(t);
    assert_ok(g_be);
}

static void test_sticky_error(void **state) {
    (void)state;
    pf_backend *be = pf_backend_cpu_new(2);
    float ones[6] = {1, 1, 1, 1, 1, 1};
    pf_tensor *x = up(be, 2, SHAPE(2, 3), ones);
    pf_tensor *w = up(be, 2, SHAPE(3, 3), (float[9]){0});
    pf_error err = {0};
    assert_int_equal(pf_backend_ok(be, &err), 0);

    /* 2^60 floats: no machine has this; the allocation fails cleanly */
    pf_tensor *huge = pf_new2(be, (int64_t)1 << 30, (int64_t)1 << 30);
    assert_non_null(huge);
    assert_null(huge->data);
    assert_int_equal(pf_backend_ok(be, &err), -1);
    assert_non_null(strstr(err.msg, "out of memory"));
    char first[sizeof err.msg];
    strcpy(first, err.msg);

    /* every later op is a no-op, even on tensors without storage */
    pf_scale(x, x, 5.0f, 1.0f);
    for (int i = 0; i < 6; i++) assert_true(((float *)x->data)[i] == 1.0f);
    pf_tensor *y = pf_new2(be, 2, 3);
    assert_null(y->data);
    pf_linear(y, x, w, NULL);
    pf_add(y, y, x);
    pf_softmax(huge, huge);
    pf_synchronize(be);
    float host[6] = {7, 7, 7, 7, 7, 7};
    pf_to_host(host, x); /* a failed backend downloads zeros */
    for (int i = 0; i < 6; i++) assert_true(host[i] == 0.0f);

    /* the first message is kept */
    pf_backend_set_error(be, "a later failure");
    assert_int_equal(pf_backend_ok(be, &err), -1);
    assert_string_equal(err.msg, first);
    assert_int_equal(pf_backend_ok(be, NULL), -1);

    pf_free(huge), pf_free(y), pf_free(x), pf_free(w);
    pf_free(NULL);
    pf_backend_free(be);
}

/* The op cases again with other team sizes: an odd team splits GEMMs and
 * chunks unevenly; a team of one runs every loop on the calling thread. */
static void test_threads(void **state) {
    (void)state;
    int teams[2] = {3, 1};
    for (int i = 0; i < 2; i++) {
        pf_backend *be = pf_backend_cpu_new(teams[i]);
        linear_cases(be);
        conv_cases(be);
        group_norm_cases(be);
        attention_cases(be);
        binary_cases(be);
        assert_ok(be);
        pf_backend_free(be);
    }
}

static int setup(void **state) {
    (void)state;
    g_be = pf_backend_cpu_new(0);
    return g_be ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    pf_backend_free(g_be);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),     cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_group_norm), cmocka_unit_test(test_layer_norm),
        cmocka_unit_test(test_softmax),    cmocka_unit_test(test_attention),
        cmocka_unit_test(test_activation), cmocka_unit_test(test_geglu),
        cmocka_unit_test(test_add_mul),    cmocka_unit_test(test_scale),
        cmocka_unit_test(test_concat),     cmocka_unit_test(test_upsample),
        cmocka_unit_test(test_permute),    cmocka_unit_test(test_embedding_copy),
        cmocka_unit_test(test_f16_bf16),   cmocka_unit_test(test_view_slice),
        cmocka_unit_test(test_sticky_error), cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
