/* test_cuda_ops.c - every CUDA backend op against its CPU twin (the CPU
 * backend's op on the same inputs), plus transfers, dtype conversion, the
 * caching allocator and the sticky error. Skipped, by name, where this binary
 * has no CUDA or the machine no GPU.
 *
 * Inputs are drawn once and rounded to float16 first, so both backends see
 * identical values and the comparison measures the CUDA op alone. Each case
 * prints one line: op, shape, NMSE = sum (gpu - cpu)^2 / sum cpu^2, its bound,
 * and the max abs error.
 *
 * Bounds: float16 storage rounds each value with relative error <= 2^-11
 * (4.9e-4), so a correct kernel whose output is rounded once lands near
 * NMSE 1e-7; attention also rounds its probabilities to fp16 for the tensor
 * cores (FlashAttention does the same), which keeps it below 1e-6.
 * NMSE_BOUND = 1e-5 leaves a margin of about 100, while a wrong index, mask
 * or missed tile gives 1e-3 or more. Pure data movement (copy, concat,
 * permute, upsample, embedding) must be exact. A NaN anywhere fails.
 *
 * Where a faster kernel path replaced an earlier one, the earlier one stays
 * behind an environment switch (kernels/backend_cuda.cu): attention, conv2d
 * and the elementwise, bias and group-norm ops run on a second CUDA backend
 * made with all of them set (the cases marked [legacy]).
 *
 * Every case also runs on the float32 CUDA backend (pf_backend_cuda_new_f32,
 * the cases marked [f32]) against the same CPU result: float32 against
 * float32, so only the order of accumulation and the exp/erf approximations
 * differ. A dot product of K terms then carries a relative error of about
 * 2^-24 sqrt(K) (4e-6 for SD's widest convolution, K = 4608), an NMSE near
 * 1e-11; NMSE_BOUND_F32 = 1e-10 is that with a margin of 10, while any value
 * that went through float16 (relative error 2^-11, NMSE 1e-7) fails by three
 * orders of magnitude. test_f32_range feeds values beyond float16's range
 * (65504), which the float16 backend cannot hold. */
#include "test_util.h"

#include "backend.h"

#define NMSE_BOUND 1e-5
#define NMSE_BOUND_F32 1e-10

static pf_backend *g_cpu;     /* the reference */
static pf_backend *g_gpu;     /* CUDA, default kernels */
static pf_backend *g_legacy;  /* CUDA with the earlier paths: generic attention, legacy conv2d, scalar kernels */
static pf_backend *g_f32;     /* CUDA, compute dtype float32 */
static pf_backend *g_wmma;    /* CUDA with PERFLOW_CUDA_ATTENTION=wmma: the earlier tensor-core attention */
static char g_why[1024];      /* why the tests are skipped */

#define NEED_GPU()                                                           \
    do {                                                                     \
        if (!g_gpu) {                                                        \
            print_message("test_cuda_ops: skipped (no GPU): %s\n", g_why);    \
            skip();                                                          \
        }                                                                    \
    } while (0)

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

/* ---- helpers ---- */

static uint64_t rng = 0x2545f4914f6cdd1dull;

static float frand(void) { /* uniform in [-1, 1), xorshift64* */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    uint64_t r = rng * 0x2545f4914f6cdd1dull;
    return (float)((double)(r >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static float round_f16(float v) { return pf_f16_to_f32(pf_f32_to_f16(v)); }

/* n values uniform in [offset - scale, offset + scale), rounded to float16. */
static float *hrand(int64_t n, float scale, float offset) {
    float *v = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) v[i] = round_f16(offset + scale * frand());
    return v;
}

static int64_t numel_of(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

static pf_tensor *up(pf_backend *be, int ndim, const int64_t *shape, const float *src) {
    return pf_from_host(be, ndim, shape, src);
}

/* An output filled with NaN: an element the op forgets to write fails. */
static pf_tensor *out_nan(pf_backend *be, int ndim, const int64_t *shape) {
    int64_t n = numel_of(ndim, shape);
    float *nan = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) nan[i] = NAN;
    pf_tensor *t = up(be, ndim, shape, nan);
    free(nan);
    return t;
}

static void assert_ok(pf_backend *be) {
    pf_error err = {0};
    pf_synchronize(be);
    if (pf_backend_ok(be, &err)) fail_msg("%s backend failed: %s", be->name, err.msg);
}

static float *down(const pf_tensor *t) {
    float *h = malloc((size_t)(pf_numel(t) ? pf_numel(t) : 1) * sizeof(float));
    pf_to_host(h, t);
    assert_ok(t->be);
    return h;
}

/* Prints the comparison line; fails on a NaN or an NMSE above bound (bound 0: exact). */
static void compare(const char *op, const char *what, const float *got, const float *ref, int64_t n, double bound) {
    double num = 0, den = 0, maxerr = 0;
    int64_t nan = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(got[i]) != isnan(ref[i])) {
            nan++;
            continue;
        }
        if (isnan(ref[i])) continue;
        double e = (double)got[i] - ref[i];
        num += e * e;
        den += (double)ref[i] * ref[i];
        if (fabs(e) > maxerr) maxerr = fabs(e);
    }
    double nmse = den > 0 ? num / den : num;
    int pass = nan == 0 && (bound == 0 ? num == 0 : nmse <= bound);
    printf("  %-14s %-46s nmse %.2e (<= %.0e) max|err| %.2e%s %s\n", op, what, nmse, bound, maxerr,
           nan ? " NaN-mismatch" : "", pass ? "ok" : "FAIL");
    fflush(stdout);
    if (!pass) fail_msg("%s %s: nmse %.3g above %.0e or %lld NaN mismatches", op, what, nmse, bound, (long long)nan);
}

/* An op case: builds its inputs on be from host arrays in ctx, runs the op,
 * frees the inputs and returns the output tensor. */
typedef pf_tensor *(*case_fn)(pf_backend *be, const void *ctx);

/* Runs fn on be and compares with ref (n values). */
static void check_on(pf_backend *be, const char *tag, const char *op, const char *what, case_fn fn, const void *ctx,
                     const float *ref, int64_t n, double bound) {
    pf_tensor *t = fn(be, ctx);
    assert_int_equal(t->dtype, be->compute_dtype);
    assert_int_equal(pf_numel(t), n);
    float *got = down(t);
    pf_free(t);
    char label[160];
    snprintf(label, sizeof label, "%s%s", what, tag);
    compare(op, label, got, ref, n, bound);
    free(got);
}

/* Runs fn on the CPU and on the CUDA backend (and on the legacy one too when
 * both), then on the float32 CUDA backend, and compares. bound is the float16
 * backends' bound; 0 (exact) holds for every backend. */
static void check(const char *op, const char *what, case_fn fn, const void *ctx, double bound, int both) {
    pf_tensor *r = fn(g_cpu, ctx);
    float *ref = down(r);
    int64_t n = pf_numel(r);
    pf_free(r);
    check_on(g_gpu, "", op, what, fn, ctx, ref, n, bound);
    if (both && g_legacy) check_on(g_legacy, " [legacy]", op, what, fn, ctx, ref, n, bound);
    if (g_f32) check_on(g_f32, " [f32]", op, what, fn, ctx, ref, n, bound == 0 ? 0 : NMSE_BOUND_F32);
    free(ref);
}

/* ---- transfers, conversion, allocator ---- */

/* Upload then download through a tensor of dtype dt on be equals the host rounding. */
static void roundtrip(pf_backend *be, pf_dtype dt, const float *v, int64_t n) {
    pf_tensor *t = pf_new_dtype(be, dt, 1, SHAPE(n));
    pf_upload(t, v);
    float *got = down(t);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float want = dt == PF_F16 ? round_f16(v[i]) : dt == PF_BF16 ? pf_bf16_to_f32(pf_f32_to_bf16(v[i])) : v[i];
        if (isnan(want) ? !isnan(got[i]) : memcmp(&want, &got[i], 4) != 0) {
            if (bad++ < 5) print_error("%s: %.9g -> %.9g, want %.9g\n", pf_dtype_name(dt), v[i], got[i], want);
        }
    }
    printf("  %-14s %-46s %lld of %lld differ from the host conversion %s\n", "transfer", pf_dtype_name(dt),
           (long long)bad, (long long)n, bad ? "FAIL" : "ok");
    if (bad) print_error("on the %s backend of compute dtype %s\n", be->name, pf_dtype_name(be->compute_dtype));
    assert_int_equal(bad, 0);
    free(got);
    pf_free(t);
}

static void test_transfers(void **state) {
    (void)state;
    NEED_GPU();
    /* specials: zeros, subnormals of both formats, overflow, inf, NaN, ties */
    const float special[] = {0.0f, -0.0f, 1.0f, -2.5f, 6e-8f, 3e-5f, 6.1e-5f, 65504.0f, 65520.0f, 1e6f, -1e30f,
                             1e-40f, INFINITY, -INFINITY, NAN, 1.0009765625f, 1.00048828125f, 3.14159265f};
    int64_t n = 100000 + (int64_t)(sizeof special / sizeof *special);
    float *v = malloc((size_t)n * sizeof *v);
    memcpy(v, special, sizeof special);
    for (int64_t i = (int64_t)(sizeof special / sizeof *special); i < n; i++)
        v[i] = frand() * powf(2.0f, (float)(i % 40) - 20.0f);
    roundtrip(g_gpu, PF_F16, v, n);
    roundtrip(g_gpu, PF_BF16, v, n);
    roundtrip(g_gpu, PF_F32, v, n);
    if (g_f32) {
        roundtrip(g_f32, PF_F32, v, n);
        roundtrip(g_f32, PF_F16, v, n);
    }
    free(v);

    /* larger than one 16 Mi-float transfer chunk */
    n = ((int64_t)16 << 20) + 1234;
    v = hrand(n, 1, 0);
    roundtrip(g_gpu, PF_F16, v, n);
    if (g_f32) roundtrip(g_f32, PF_F32, v, n);
    free(v);

    /* a view of rows 1..2 overwrites only those rows */
    float *all = hrand(4000, 1, 0), *mid = hrand(2000, 1, 0);
    pf_tensor *t = up(g_gpu, 2, SHAPE(4, 1000), all);
    pf_tensor *s = pf_slice0(t, 1, 2);
    pf_upload(s, mid);
    float *got = down(t);
    for (int i = 0; i < 4000; i++) {
        float want = i >= 1000 && i < 3000 ? mid[i - 1000] : all[i];
        if (got[i] != want) fail_msg("slice upload: element %d is %g, want %g", i, got[i], want);
    }
    printf("  %-14s %-46s ok\n", "transfer", "upload into a pf_slice0 view");
    free(got), free(all), free(mid);
    pf_free(s), pf_free(t);
}

static void test_allocator(void **state) {
    (void)state;
    NEED_GPU();
    pf_mem_stats a, b, c;
    pf_backend_cuda_mem_stats(g_gpu, &a);
    pf_tensor *t = pf_new1(g_gpu, 1 << 20); /* 2 MiB of halves */
    pf_backend_cuda_mem_stats(g_gpu, &b);
    assert_true(b.in_use >= a.in_use + (2u << 20));
    assert_true(b.peak_in_use >= b.in_use && b.peak_reserved >= b.reserved && b.reserved >= b.in_use);
    pf_free(t);
    pf_backend_cuda_mem_stats(g_gpu, &c);
    assert_int_equal(c.in_use, a.in_use);
    /* the same size again comes from the cache: no new device allocation */
    t = pf_new1(g_gpu, 1 << 20);
    pf_backend_cuda_mem_stats(g_gpu, &c);
    assert_int_equal(c.device_allocs, b.device_allocs);
    pf_free(t);
    pf_backend_cuda_reset_peak(g_gpu);
    pf_backend_cuda_mem_stats(g_gpu, &c);
    assert_int_equal(c.peak_in_use, c.in_use);
    /* a CPU backend has no device memory */
    pf_backend_cuda_mem_stats(g_cpu, &c);
    assert_int_equal(c.peak_reserved, 0);
    printf("  %-14s %-46s ok (%ld device allocations so far)\n", "allocator", "cache reuse, stats",
           b.device_allocs);
}

static void test_errors(void **state) {
    (void)state;
    NEED_GPU();
    pf_error err = {0};
    assert_null(pf_backend_cuda_new(999, &err));
    assert_non_null(strstr(err.msg, "does not exist"));
    assert_null(pf_backend_cuda_new_f32(999, &err));
    assert_non_null(strstr(err.msg, "does not exist"));
    assert_null(pf_backend_open("cuda:999", 0, &err));
    assert_non_null(strstr(err.msg, "cuda:999"));
    assert_null(pf_backend_open("tpu", 0, &err));
    assert_non_null(strstr(err.msg, "unknown device"));
    /* an unsupported op leaves a sticky error, later ops are skipped, nothing aborts */
    pf_backend *be = pf_backend_cuda_new(0, &err);
    assert_non_null(be);
    float *h = hrand(2 * 3 * 600, 1, 0);
    pf_tensor *q = up(be, 3, SHAPE(2, 3, 600), h), *o = pf_new3(be, 2, 3, 600);
    pf_attention(o, q, q, q, 1, 0); /* head dim 600 > 512 */
    assert_int_equal(pf_backend_ok(be, &err), -1);
    assert_non_null(strstr(err.msg, "not supported"));
    pf_scale(o, q, 2.0f, 0.0f); /* skipped */
    assert_non_null(strstr(be->errmsg, "attention"));
    printf("  %-14s %-46s ok (%s)\n", "errors", "bad device, unsupported op", err.msg);
    pf_free(q), pf_free(o);
    pf_backend_free(be);
    free(h);
}

/* ---- linear ---- */

typedef struct lin_ctx {
    int64_t m, k, n;
    int bias;
    float *x, *w, *b;
} lin_ctx;

static pf_tensor *lin_fn(pf_backend *be, const void *p) {
    const lin_ctx *c = p;
    pf_tensor *x = up(be, 2, SHAPE(c->m, c->k), c->x), *w = up(be, 2, SHAPE(c->n, c->k), c->w);
    pf_tensor *b = up(be, 1, SHAPE(c->n), c->b), *y = out_nan(be, 2, SHAPE(c->m, c->n));
    pf_linear(y, x, w, c->bias ? b : NULL);
    pf_free(x), pf_free(w), pf_free(b);
    return y;
}

static void lin_case(int64_t m, int64_t k, int64_t n, int bias) {
    lin_ctx c = {m, k, n, bias, hrand(m * k, 1, 0), hrand(n * k, 1.0f / sqrtf((float)k), 0), hrand(n, 1, 0)};
    char what[96];
    snprintf(what, sizeof what, "x(%lld, %lld) w(%lld, %lld)%s", (long long)m, (long long)k, (long long)n,
             (long long)k, bias ? " +b" : "");
    check("linear", what, lin_fn, &c, NMSE_BOUND, 1);
    free(c.x), free(c.w), free(c.b);
}

static void test_linear(void **state) {
    (void)state;
    NEED_GPU();
    lin_case(154, 768, 768, 1);  /* CLIP projections, B = 2 */
    lin_case(8192, 320, 320, 0); /* UNet to_q at 64x64, B = 2 */
    lin_case(8192, 320, 2560, 1); /* GEGLU projection */
    lin_case(2, 320, 1280, 1);   /* time embedding */
    lin_case(37, 33, 19, 1);     /* odd sizes */
    lin_case(5, 1, 3, 0);
}

/* ---- conv2d ---- */

typedef struct conv_ctx {
    int64_t n, ci, h, w, co, kh, kw;
    int stride, pad, bias;
    float *x, *wt, *b;
} conv_ctx;

static pf_tensor *conv_fn(pf_backend *be, const void *p) {
    const conv_ctx *c = p;
    int64_t ho = (c->h + 2 * c->pad - c->kh) / c->stride + 1, wo = (c->w + 2 * c->pad - c->kw) / c->stride + 1;
    pf_tensor *x = up(be, 4, SHAPE(c->n, c->ci, c->h, c->w), c->x);
    pf_tensor *w = up(be, 4, SHAPE(c->co, c->ci, c->kh, c->kw), c->wt), *b = up(be, 1, SHAPE(c->co), c->b);
    pf_tensor *y = out_nan(be, 4, SHAPE(c->n, c->co, ho, wo));
    pf_conv2d(y, x, w, c->bias ? b : NULL, c->stride, c->pad);
    pf_free(x), pf_free(w), pf_free(b);
    return y;
}

static void conv_case(int64_t n, int64_t ci, int64_t h, int64_t w, int64_t co, int64_t kh, int64_t kw, int stride,
                      int pad, int bias, const char *note) {
    int64_t kk = ci * kh * kw;
    conv_ctx c = {n, ci, h, w, co, kh, kw, stride, pad, bias, hrand(n * ci * h * w, 1, 0),
                  hrand(co * kk, 1.0f / sqrtf((float)kk), 0), hrand(co, 1, 0)};
    char what[128];
    snprintf(what, sizeof what, "x(%lld,%lld,%lld,%lld) %lldx%lld s%d p%d co%lld %s", (long long)n, (long long)ci,
             (long long)h, (long long)w, (long long)kh, (long long)kw, stride, pad, (long long)co, note);
    check("conv2d", what, conv_fn, &c, NMSE_BOUND, 1);
    free(c.x), free(c.wt), free(c.b);
}

static void test_conv2d(void **state) {
    (void)state;
    NEED_GPU();
    conv_case(2, 320, 64, 64, 320, 3, 3, 1, 1, 1, "UNet resnet");
    conv_case(2, 64, 32, 32, 64, 3, 3, 2, 1, 1, "Downsample2D");
    conv_case(2, 5, 9, 11, 7, 3, 3, 2, 0, 0, "VAE downsample, odd");
    conv_case(2, 64, 17, 19, 48, 1, 1, 1, 0, 1, "1x1 direct");
    conv_case(2, 5, 9, 11, 7, 1, 1, 2, 0, 1, "1x1 strided: im2col");
    conv_case(1, 3, 6, 7, 4, 2, 3, 1, 2, 1, "2x3 pad 2");
    conv_case(3, 64, 192, 192, 8, 3, 3, 1, 1, 1, "one image per chunk");
    conv_case(1, 128, 256, 256, 16, 3, 3, 1, 1, 1, "row tiles (VAE decoder)");
    /* SD-1.5 at 512px: the VAE decoder's mid level, its 256-channel level (row
     * tiles on both paths), conv_out (3 uneven tiles of 171 rows on the
     * default path), and a batch-16 UNet resnet conv (2 chunks of 8 images) */
    conv_case(1, 512, 64, 64, 512, 3, 3, 1, 1, 1, "VAE mid");
    conv_case(1, 256, 256, 256, 256, 3, 3, 1, 1, 1, "VAE up 256");
    conv_case(1, 128, 512, 512, 3, 3, 3, 1, 1, 1, "VAE conv_out");
    conv_case(16, 320, 64, 64, 320, 3, 3, 1, 1, 1, "UNet, batch 16");
    conv_case(3, 8, 13, 13, 5, 3, 3, 1, 1, 0, "wo 13: scalar im2col");
}

/* ---- normalisation, softmax ---- */

typedef struct norm_ctx {
    int ndim;
    int64_t shape[PF_MAX_DIMS];
    int groups, silu, inplace;
    float *x, *g, *b;
} norm_ctx;

static pf_tensor *gn_fn(pf_backend *be, const void *p) {
    const norm_ctx *c = p;
    pf_tensor *x = up(be, c->ndim, c->shape, c->x), *g = up(be, 1, SHAPE(c->shape[1]), c->g);
    pf_tensor *b = up(be, 1, SHAPE(c->shape[1]), c->b);
    pf_tensor *y = c->inplace ? x : out_nan(be, c->ndim, c->shape);
    pf_group_norm(y, x, g, b, c->groups, 1e-6f, c->silu);
    if (!c->inplace) pf_free(x);
    pf_free(g), pf_free(b);
    return y;
}

static pf_tensor *ln_fn(pf_backend *be, const void *p) {
    const norm_ctx *c = p;
    int64_t ch = c->shape[c->ndim - 1];
    pf_tensor *x = up(be, c->ndim, c->shape, c->x), *g = up(be, 1, SHAPE(ch), c->g);
    pf_tensor *b = up(be, 1, SHAPE(ch), c->b);
    pf_tensor *y = c->inplace ? x : out_nan(be, c->ndim, c->shape);
    pf_layer_norm(y, x, g, b, 1e-5f);
    if (!c->inplace) pf_free(x);
    pf_free(g), pf_free(b);
    return y;
}

static pf_tensor *sm_fn(pf_backend *be, const void *p) {
    const norm_ctx *c = p;
    pf_tensor *x = up(be, c->ndim, c->shape, c->x);
    pf_tensor *y = c->inplace ? x : out_nan(be, c->ndim, c->shape);
    pf_softmax(y, x);
    if (!c->inplace) pf_free(x);
    return y;
}

static void norm_case(const char *op, case_fn fn, int ndim, const int64_t *shape, int groups, int silu, int inplace,
                      float scale, float offset) {
    norm_ctx c = {ndim, {0}, groups, silu, inplace, NULL, NULL, NULL};
    memcpy(c.shape, shape, (size_t)ndim * sizeof *shape);
    int64_t ch = fn == ln_fn ? shape[ndim - 1] : shape[1];
    c.x = hrand(numel_of(ndim, shape), scale, offset);
    c.g = hrand(ch, 0.5f, 1);
    c.b = hrand(ch, 0.5f, 0);
    char what[128], s[64];
    snprintf(what, sizeof what, "%s%s%s x%g%+g", pf_shape_str_raw(ndim, shape, s, sizeof s), silu ? " +silu" : "",
             inplace ? " in-place" : "", (double)scale, (double)offset);
    if (groups) snprintf(what + strlen(what), sizeof what - strlen(what), " G%d", groups);
    check(op, what, fn, &c, NMSE_BOUND, fn == gn_fn);
    free(c.x), free(c.g), free(c.b);
}

static void test_group_norm(void **state) {
    (void)state;
    NEED_GPU();
    norm_case("group_norm", gn_fn, 4, SHAPE(2, 320, 64, 64), 32, 1, 0, 2, 5);   /* |mean| > std */
    norm_case("group_norm", gn_fn, 4, SHAPE(2, 320, 64, 64), 32, 0, 1, 1, 0);
    norm_case("group_norm", gn_fn, 4, SHAPE(1, 128, 256, 256), 32, 1, 1, 1, 0.5f); /* 64 chunks a group */
    norm_case("group_norm", gn_fn, 4, SHAPE(3, 6, 5, 7), 3, 1, 0, 1, 0);
    norm_case("group_norm", gn_fn, 2, SHAPE(2, 64), 32, 0, 0, 1, 0); /* S = 1 */
    norm_case("group_norm", gn_fn, 4, SHAPE(2, 64, 1, 8), 32, 1, 0, 1, 0); /* groups of 16 values */
    norm_case("group_norm", gn_fn, 4, SHAPE(16, 320, 64, 64), 32, 1, 0, 1, 0.5f); /* UNet, batch 16 */
}

static void test_layer_norm(void **state) {
    (void)state;
    NEED_GPU();
    norm_case("layer_norm", ln_fn, 3, SHAPE(2, 4096, 320), 0, 0, 0, 2, 5);
    norm_case("layer_norm", ln_fn, 3, SHAPE(1, 77, 768), 0, 0, 1, 1, 0);
    norm_case("layer_norm", ln_fn, 2, SHAPE(3, 5), 0, 0, 0, 1, 0);
    norm_case("layer_norm", ln_fn, 2, SHAPE(7, 1283), 0, 0, 1, 1, 0);
}

static void test_softmax(void **state) {
    (void)state;
    NEED_GPU();
    norm_case("softmax", sm_fn, 4, SHAPE(2, 8, 77, 77), 0, 0, 0, 4, 0);
    norm_case("softmax", sm_fn, 2, SHAPE(3, 1000), 0, 0, 1, 8, 0);
    norm_case("softmax", sm_fn, 2, SHAPE(5, 1), 0, 0, 0, 1, 0);
}

/* ---- attention ---- */

typedef struct attn_ctx {
    int64_t b, lq, lk, c;
    int heads, causal;
    float *q, *k, *v;
} attn_ctx;

static pf_tensor *attn_fn(pf_backend *be, const void *p) {
    const attn_ctx *a = p;
    pf_tensor *q = up(be, 3, SHAPE(a->b, a->lq, a->c), a->q), *k = up(be, 3, SHAPE(a->b, a->lk, a->c), a->k);
    pf_tensor *v = up(be, 3, SHAPE(a->b, a->lk, a->c), a->v), *o = out_nan(be, 3, SHAPE(a->b, a->lq, a->c));
    pf_attention(o, q, k, v, a->heads, a->causal);
    pf_free(q), pf_free(k), pf_free(v);
    return o;
}

static void attn_case(int64_t b, int64_t lq, int64_t lk, int64_t c, int heads, int causal, float qscale,
                      const char *note) {
    /* q scaled so that scores have a spread of a few units: softmax neither
     * uniform nor one-hot */
    attn_ctx a = {b, lq, lk, c, heads, causal, hrand(b * lq * c, qscale, 0), hrand(b * lk * c, 1, 0),
                  hrand(b * lk * c, 1, 0)};
    char what[128];
    snprintf(what, sizeof what, "B%lld Lq%lld Lk%lld D%lld h%d%s %s", (long long)b, (long long)lq, (long long)lk,
             (long long)(c / heads), heads, causal ? " causal" : "", note);
    check("attention", what, attn_fn, &a, NMSE_BOUND, 1);
    if (g_wmma) { /* the kernel attention_mma.cu replaced, kept behind the switch */
        pf_tensor *r = attn_fn(g_cpu, &a);
        float *ref = down(r);
        check_on(g_wmma, " [wmma]", "attention", what, attn_fn, &a, ref, pf_numel(r), NMSE_BOUND);
        pf_free(r);
        free(ref);
    }
    free(a.q), free(a.k), free(a.v);
}

static void test_attention(void **state) {
    (void)state;
    NEED_GPU();
    attn_case(2, 4096, 4096, 320, 8, 0, 1, "SD-1.5 self, 64x64");
    attn_case(2, 4096, 77, 320, 8, 0, 1, "SD-1.5 cross");
    attn_case(2, 1024, 1024, 640, 8, 0, 1, "SD-1.5 self, 32x32");
    attn_case(2, 256, 77, 1280, 8, 0, 1, "SD-1.5 cross, 16x16");
    attn_case(2, 1024, 1024, 640, 10, 0, 1, "SD-2 (D 64)");
    attn_case(1, 77, 77, 768, 12, 1, 1, "CLIP causal");
    attn_case(2, 100, 77, 192, 3, 1, 1, "causal, Lq != Lk");
    attn_case(1, 1024, 1024, 512, 1, 0, 0.2f, "VAE mid block (D 512)");
    attn_case(1, 300, 300, 300, 1, 0, 0.3f, "D 300");
    attn_case(1, 70, 70, 256, 1, 0, 0.5f, "D 256");
    attn_case(2, 64, 64, 32, 8, 0, 1, "tiny (D 4)");
    attn_case(2, 33, 17, 64, 8, 0, 1, "tiny (D 8), partial tiles");
    attn_case(1, 50, 50, 21, 3, 1, 1, "D 7: scalar loads");
    attn_case(3, 1, 5, 16, 2, 0, 1, "one query");
    attn_case(1, 200, 200, 64, 1, 0, 8, "peaked softmax");
    attn_case(3, 130, 77, 480, 3, 0, 1, "D 160, partial query and key tiles");
    attn_case(2, 70, 200, 240, 3, 0, 1, "D 80, Lk > Lq");
    attn_case(1, 65, 65, 100, 1, 0, 1, "D 100: padded to 112, scalar loads");
    attn_case(2, 300, 300, 1280, 20, 0, 1, "SDXL (D 64, 20 heads)");
}

/* ---- elementwise ---- */

typedef struct ew_ctx {
    int ndim, bdim;
    int64_t shape[PF_MAX_DIMS], bshape[PF_MAX_DIMS];
    int kind; /* activation: pf_act; binary: 0 add, 1 mul */
    int inplace;
    float *a, *b;
} ew_ctx;

static pf_tensor *act_fn(pf_backend *be, const void *p) {
    const ew_ctx *c = p;
    pf_tensor *x = up(be, c->ndim, c->shape, c->a);
    pf_tensor *y = c->inplace ? x : out_nan(be, c->ndim, c->shape);
    pf_activation(y, x, (pf_act)c->kind);
    if (!c->inplace) pf_free(x);
    return y;
}

static pf_tensor *geglu_fn(pf_backend *be, const void *p) {
    const ew_ctx *c = p;
    int64_t ys[PF_MAX_DIMS];
    memcpy(ys, c->shape, sizeof ys);
    ys[c->ndim - 1] /= 2;
    pf_tensor *x = up(be, c->ndim, c->shape, c->a), *y = out_nan(be, c->ndim, ys);
    pf_geglu(y, x);
    pf_free(x);
    return y;
}

static pf_tensor *binary_fn(pf_backend *be, const void *p) {
    const ew_ctx *c = p;
    pf_tensor *a = up(be, c->ndim, c->shape, c->a), *b = up(be, c->bdim, c->bshape, c->b);
    pf_tensor *y = c->inplace ? a : out_nan(be, c->ndim, c->shape);
    if (c->kind)
        pf_mul(y, a, b);
    else
        pf_add(y, a, b);
    if (!c->inplace) pf_free(a);
    pf_free(b);
    return y;
}

static pf_tensor *scale_fn(pf_backend *be, const void *p) {
    const ew_ctx *c = p;
    pf_tensor *x = up(be, c->ndim, c->shape, c->a);
    pf_tensor *y = c->inplace ? x : out_nan(be, c->ndim, c->shape);
    pf_scale(y, x, 1.0f / 0.18215f, 0.25f);
    if (!c->inplace) pf_free(x);
    return y;
}

/* Rows 1..2 of a[3, 12] + rows 1..2 of b, then SiLU and a scale in place:
 * the views start 12 halves (24 bytes) into their tensors, so the 16-byte
 * kernels must step aside although the element count (24) suits them. */
static pf_tensor *view_fn(pf_backend *be, const void *p) {
    const ew_ctx *c = p;
    pf_tensor *a = up(be, 2, c->shape, c->a), *b = up(be, 2, c->bshape, c->b);
    pf_tensor *va = pf_slice0(a, 1, 2), *vb = pf_slice0(b, 1, 2), *y = out_nan(be, 2, SHAPE(3, 12));
    pf_tensor *vy = pf_slice0(y, 1, 2);
    pf_add(vy, va, vb);
    pf_activation(vy, vy, PF_ACT_SILU);
    pf_scale(vy, vy, 0.5f, 0.25f);
    pf_tensor *out = pf_new2(be, 2, 12);
    pf_copy(out, vy);
    pf_free(vy), pf_free(va), pf_free(vb), pf_free(y), pf_free(a), pf_free(b);
    return out;
}

static void test_activation(void **state) {
    (void)state;
    NEED_GPU();
    static const char *names[] = {"silu", "gelu", "gelu_tanh", "quick_gelu"};
    for (int act = PF_ACT_SILU; act <= PF_ACT_QUICK_GELU; act++) {
        ew_ctx c = {3, 0, {2, 77, 3072}, {0}, act, act % 2, hrand(2 * 77 * 3072, 6, 0), NULL};
        char what[64];
        snprintf(what, sizeof what, "%s (2, 77, 3072)%s", names[act], c.inplace ? " in-place" : "");
        check("activation", what, act_fn, &c, NMSE_BOUND, 1);
        free(c.a);
    }
    ew_ctx g = {3, 0, {2, 4096, 2560}, {0}, 0, 0, hrand(2 * 4096 * 2560, 3, 0), NULL};
    check("geglu", "(2, 4096, 2560) -> (2, 4096, 1280)", geglu_fn, &g, NMSE_BOUND, 1);
    free(g.a);
    ew_ctx g2 = {2, 0, {3, 14}, {0}, 0, 0, hrand(42, 3, 0), NULL};
    check("geglu", "(3, 14) -> (3, 7)", geglu_fn, &g2, NMSE_BOUND, 1);
    free(g2.a);
}

static void binary_case(int ndim, const int64_t *shape, int bdim, const int64_t *bshape, int mul, int inplace,
                        const char *note) {
    ew_ctx c = {ndim, bdim, {0}, {0}, mul, inplace, NULL, NULL};
    memcpy(c.shape, shape, (size_t)ndim * sizeof *shape);
    memcpy(c.bshape, bshape, (size_t)bdim * sizeof *bshape);
    c.a = hrand(numel_of(ndim, shape), 2, 0);
    c.b = hrand(numel_of(bdim, bshape), 2, 0);
    char what[128], sa[48], sb[48];
    snprintf(what, sizeof what, "%s %s %s%s %s", pf_shape_str_raw(ndim, shape, sa, sizeof sa), mul ? "*" : "+",
             pf_shape_str_raw(bdim, bshape, sb, sizeof sb), inplace ? " in-place" : "", note);
    check(mul ? "mul" : "add", what, binary_fn, &c, NMSE_BOUND, 1);
    free(c.a), free(c.b);
}

static void test_add_mul(void **state) {
    (void)state;
    NEED_GPU();
    for (int mul = 0; mul < 2; mul++) {
        binary_case(4, SHAPE(2, 320, 64, 64), 4, SHAPE(2, 320, 64, 64), mul, 1, "same shape");
        binary_case(4, SHAPE(2, 320, 64, 64), 4, SHAPE(2, 320, 1, 1), mul, 0, "time embedding");
        binary_case(3, SHAPE(2, 77, 768), 1, SHAPE(768), mul, 0, "row vector");
        binary_case(4, SHAPE(2, 4, 3, 5), 4, SHAPE(2, 1, 3, 1), mul, 0, "general");
        binary_case(5, SHAPE(2, 3, 1, 4, 5), 5, SHAPE(1, 3, 1, 1, 5), mul, 1, "5-D");
        binary_case(2, SHAPE(3, 7), 1, SHAPE(1), mul, 0, "scalar");
    }
    ew_ctx v = {2, 2, {3, 12}, {3, 12}, 0, 0, hrand(36, 2, 0), hrand(36, 2, 0)};
    check("add", "views 24 bytes into their tensors (scalar path)", view_fn, &v, NMSE_BOUND, 1);
    free(v.a), free(v.b);
    ew_ctx c = {4, 0, {2, 4, 64, 64}, {0}, 0, 1, hrand(2 * 4 * 64 * 64, 4, 0), NULL};
    check("scale", "(2, 4, 64, 64) / 0.18215 + 0.25 in-place", scale_fn, &c, NMSE_BOUND, 1);
    c.inplace = 0;
    check("scale", "(2, 4, 64, 64) / 0.18215 + 0.25", scale_fn, &c, NMSE_BOUND, 1);
    free(c.a);
}

/* ---- data movement (exact) ---- */

typedef struct move_ctx {
    int ndim;
    int64_t ashape[PF_MAX_DIMS], bshape[PF_MAX_DIMS];
    int axis;      /* concat */
    int perm[PF_MAX_DIMS];
    int32_t *ids;  /* embedding */
    int64_t count;
    float *a, *b;
} move_ctx;

static pf_tensor *concat_fn(pf_backend *be, const void *p) {
    const move_ctx *c = p;
    int64_t ys[PF_MAX_DIMS];
    memcpy(ys, c->ashape, sizeof ys);
    ys[c->axis] += c->bshape[c->axis];
    pf_tensor *a = up(be, c->ndim, c->ashape, c->a), *b = up(be, c->ndim, c->bshape, c->b);
    pf_tensor *y = out_nan(be, c->ndim, ys);
    pf_concat(y, a, b, c->axis);
    pf_free(a), pf_free(b);
    return y;
}

static pf_tensor *upsample_fn(pf_backend *be, const void *p) {
    const move_ctx *c = p;
    const int64_t *s = c->ashape;
    /* bshape holds the output size; zeros: 2x */
    const int64_t ho = c->bshape[2] ? c->bshape[2] : 2 * s[2], wo = c->bshape[3] ? c->bshape[3] : 2 * s[3];
    pf_tensor *x = up(be, 4, s, c->a), *y = out_nan(be, 4, SHAPE(s[0], s[1], ho, wo));
    pf_upsample_nearest(y, x);
    pf_free(x);
    return y;
}

static pf_tensor *permute_fn(pf_backend *be, const void *p) {
    const move_ctx *c = p;
    int64_t ys[PF_MAX_DIMS];
    for (int i = 0; i < c->ndim; i++) ys[i] = c->ashape[c->perm[i]];
    pf_tensor *x = up(be, c->ndim, c->ashape, c->a), *y = out_nan(be, c->ndim, ys);
    pf_permute(y, x, c->perm);
    pf_free(x);
    return y;
}

static pf_tensor *embedding_fn(pf_backend *be, const void *p) {
    const move_ctx *c = p;
    pf_tensor *t = up(be, 2, c->ashape, c->a), *y = out_nan(be, 3, SHAPE(1, c->count, c->ashape[1]));
    pf_embedding(y, t, c->ids, c->count);
    pf_free(t);
    return y;
}

static pf_tensor *copy_fn(pf_backend *be, const void *p) {
    const move_ctx *c = p;
    pf_tensor *x = up(be, 2, c->ashape, c->a), *y = out_nan(be, 3, SHAPE(1, c->ashape[0], c->ashape[1]));
    pf_copy(y, x);
    pf_free(x);
    return y;
}

static void test_data_movement(void **state) {
    (void)state;
    NEED_GPU();
    char what[128], s1[48], s2[48];
    const int64_t cat_a[][4] = {{2, 1280, 8, 8}, {2, 640, 16, 16}, {3, 5, 4, 3}, {2, 3, 5, 4}};
    for (int axis = 0; axis < 4; axis++) {
        move_ctx c = {4, {0}, {0}, axis, {0}, NULL, 0, NULL, NULL};
        memcpy(c.ashape, cat_a[axis], sizeof cat_a[axis]);
        memcpy(c.bshape, cat_a[axis], sizeof cat_a[axis]);
        c.bshape[axis] = axis == 1 ? 320 : 2;
        c.a = hrand(numel_of(4, c.ashape), 1, 0);
        c.b = hrand(numel_of(4, c.bshape), 1, 0);
        snprintf(what, sizeof what, "%s ++ %s axis %d", pf_shape_str_raw(4, c.ashape, s1, sizeof s1),
                 pf_shape_str_raw(4, c.bshape, s2, sizeof s2), axis);
        check("concat", what, concat_fn, &c, 0, 1);
        free(c.a), free(c.b);
    }
    move_ctx u = {4, {2, 640, 32, 32}, {0}, 0, {0}, NULL, 0, hrand(2 * 640 * 32 * 32, 1, 0), NULL};
    check("upsample", "(2, 640, 32, 32) -> (2, 640, 64, 64)", upsample_fn, &u, 0, 1);
    free(u.a);
    move_ctx u2 = {4, {1, 3, 5, 7}, {0}, 0, {0}, NULL, 0, hrand(105, 1, 0), NULL};
    check("upsample", "(1, 3, 5, 7)", upsample_fn, &u2, 0, 1);
    free(u2.a);
    /* diffusers' forwarded upsample_size: a 45 x 80 latent's 23 x 40 -> 45 x 80, and any ratio */
    move_ctx u3 = {4, {2, 320, 23, 40}, {0, 0, 45, 80}, 0, {0}, NULL, 0, hrand(2 * 320 * 23 * 40, 1, 0), NULL};
    check("upsample", "(2, 320, 23, 40) -> (45, 80)", upsample_fn, &u3, 0, 1);
    free(u3.a);
    move_ctx u4 = {4, {1, 3, 5, 7}, {0, 0, 7, 9}, 0, {0}, NULL, 0, hrand(105, 1, 0), NULL};
    check("upsample", "(1, 3, 5, 7) -> (7, 9)", upsample_fn, &u4, 0, 1);
    free(u4.a);

    const struct {
        int ndim;
        int64_t shape[PF_MAX_DIMS];
        int perm[PF_MAX_DIMS];
    } perms[] = {
        {3, {2, 320, 4096}, {0, 2, 1}},   /* NCHW -> tokens */
        {3, {2, 4096, 320}, {0, 2, 1}},   /* back */
        {3, {3, 33, 47}, {0, 2, 1}},      /* partial tiles */
        {2, {77, 768}, {1, 0}},
        {4, {2, 3, 5, 7}, {0, 2, 3, 1}},
        {4, {2, 3, 5, 7}, {3, 1, 0, 2}},
        {5, {2, 3, 4, 5, 6}, {4, 0, 3, 1, 2}},
        {4, {2, 3, 5, 7}, {0, 1, 3, 2}},
    };
    for (size_t i = 0; i < sizeof perms / sizeof *perms; i++) {
        move_ctx c = {perms[i].ndim, {0}, {0}, 0, {0}, NULL, 0, NULL, NULL};
        memcpy(c.ashape, perms[i].shape, sizeof c.ashape);
        memcpy(c.perm, perms[i].perm, sizeof c.perm);
        c.a = hrand(numel_of(c.ndim, c.ashape), 1, 0);
        int n = snprintf(what, sizeof what, "%s perm", pf_shape_str_raw(c.ndim, c.ashape, s1, sizeof s1));
        for (int d = 0; d < c.ndim; d++) n += snprintf(what + n, sizeof what - (size_t)n, " %d", c.perm[d]);
        check("permute", what, permute_fn, &c, 0, 0);
        free(c.a);
    }

    int32_t ids[154];
    for (int i = 0; i < 154; i++) ids[i] = (int32_t)((i * 7919) % 1000);
    move_ctx e = {2, {1000, 768}, {0}, 0, {0}, ids, 154, hrand(1000 * 768, 1, 0), NULL};
    check("embedding", "table (1000, 768), 154 ids", embedding_fn, &e, 0, 0);
    free(e.a);
    move_ctx cp = {2, {77, 768}, {0}, 0, {0}, NULL, 0, hrand(77 * 768, 1, 0), NULL};
    check("copy", "(77, 768) -> (1, 77, 768)", copy_fn, &cp, 0, 0);
    free(cp.a);
}

/* ---- the float32 backend ---- */

/* pf_backend_cuda_new_f32 gives a float32 CUDA backend where there is a GPU,
 * and a NULL with a message otherwise (CPU-only builds: device.c's stand-in).
 * Runs on every machine. */
static void test_f32_backend(void **state) {
    (void)state;
    pf_error err = {0};
    pf_backend *be = pf_backend_cuda_new_f32(0, &err);
#ifndef PF_HAVE_CUDA
    assert_null(be);
    assert_non_null(strstr(err.msg, "built without CUDA"));
#endif
    if (!be) {
        assert_true(err.msg[0] != '\0');
        assert_null(g_gpu); /* the float16 backend could not be made either */
        printf("  %-14s %-46s ok (no backend: %s)\n", "f32 backend", "constructor", err.msg);
        return;
    }
    assert_int_equal(be->compute_dtype, PF_F32);
    pf_tensor *t = pf_new1(be, 10);
    assert_int_equal(t->dtype, PF_F32);
    pf_free(t);
    pf_backend_free(be);
    printf("  %-14s %-46s ok\n", "f32 backend", "constructor, compute dtype float32");
}

/* n values uniform in [-scale, scale), not rounded: beyond float16's range for scale > 65504. */
static float *wide(int64_t n, float scale) {
    float *v = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) v[i] = scale * frand();
    return v;
}

/* Runs fn on the CPU and on the float32 CUDA backend only, and compares. */
static void check_f32(const char *op, const char *what, case_fn fn, const void *ctx) {
    pf_tensor *r = fn(g_cpu, ctx);
    float *ref = down(r);
    int64_t n = pf_numel(r);
    pf_free(r);
    check_on(g_f32, " [f32]", op, what, fn, ctx, ref, n, NMSE_BOUND_F32);
    free(ref);
}

/* Values float16 cannot hold (|x| > 65504), as in SDXL's VAE decoder: the
 * float32 backend keeps them through products, normalisation, attention and
 * the elementwise ops. */
static void test_f32_range(void **state) {
    (void)state;
    NEED_GPU();
    if (!g_f32) fail_msg("the float32 CUDA backend could not be made");
    conv_ctx cv = {1, 64, 32, 32, 32, 3, 3, 1, 1, 1, wide(64 * 32 * 32, 1e6f), wide(32 * 576, 1.0f / 24),
                   wide(32, 1e5f)};
    check_f32("conv2d", "x(1,64,32,32) 3x3 co32, |x| < 1e6", conv_fn, &cv);
    free(cv.x), free(cv.wt), free(cv.b);
    lin_ctx ln = {77, 640, 320, 1, wide(77 * 640, 3e5f), wide(320 * 640, 0.04f), wide(320, 1e5f)};
    check_f32("linear", "x(77, 640) w(320, 640) +b, |x| < 3e5", lin_fn, &ln);
    free(ln.x), free(ln.w), free(ln.b);
    norm_ctx gn = {4, {2, 128, 32, 32}, 32, 1, 0, wide(2 * 128 * 32 * 32, 2e5f), hrand(128, 0.5f, 1),
                   hrand(128, 0.5f, 0)};
    check_f32("group_norm", "(2, 128, 32, 32) +silu G32, |x| < 2e5", gn_fn, &gn);
    free(gn.x), free(gn.g), free(gn.b);
    attn_ctx at = {1, 256, 256, 512, 1, 0, wide(256 * 512, 0.3f), wide(256 * 512, 30), wide(256 * 512, 1e5f)};
    check_f32("attention", "B1 Lq256 Lk256 D512 h1, |v| < 1e5", attn_fn, &at);
    free(at.q), free(at.k), free(at.v);
    ew_ctx bc = {4, 4, {2, 128, 16, 16}, {2, 128, 16, 16}, 0, 0, wide(2 * 128 * 16 * 16, 1e5f),
                 wide(2 * 128 * 16 * 16, 1e5f)};
    check_f32("add", "(2, 128, 16, 16) + same, |x| < 1e5", binary_fn, &bc);
    bc.kind = 1;
    check_f32("mul", "(2, 128, 16, 16) * same, |x| < 1e5", binary_fn, &bc);
    check_f32("scale", "(2, 128, 16, 16) / 0.18215 + 0.25, |x| < 1e5", scale_fn, &bc);
    bc.kind = PF_ACT_SILU;
    check_f32("activation", "silu (2, 128, 16, 16), |x| < 1e5", act_fn, &bc);
    free(bc.a), free(bc.b);
}

int main(void) {
    g_cpu = pf_backend_cpu_new(0);
    pf_error err = {0};
    g_gpu = pf_backend_cuda_new(0, &err);
    if (!g_gpu) {
        snprintf(g_why, sizeof g_why, "%s", err.msg);
    } else {
        setenv("PERFLOW_CUDA_ATTENTION", "generic", 1);
        setenv("PERFLOW_CUDA_CONV", "legacy", 1);
        setenv("PERFLOW_CUDA_VECTOR", "0", 1);
        g_legacy = pf_backend_cuda_new(0, &err);
        unsetenv("PERFLOW_CUDA_ATTENTION");
        unsetenv("PERFLOW_CUDA_CONV");
        unsetenv("PERFLOW_CUDA_VECTOR");
        if (!g_legacy) fprintf(stderr, "test_cuda_ops: second CUDA backend: %s\n", err.msg);
        setenv("PERFLOW_CUDA_ATTENTION", "wmma", 1);
        g_wmma = pf_backend_cuda_new(0, &err);
        unsetenv("PERFLOW_CUDA_ATTENTION");
        if (!g_wmma) fprintf(stderr, "test_cuda_ops: wmma-attention CUDA backend: %s\n", err.msg);
        g_f32 = pf_backend_cuda_new_f32(0, &err);
        if (!g_f32) fprintf(stderr, "test_cuda_ops: float32 CUDA backend: %s\n", err.msg);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transfers),  cmocka_unit_test(test_allocator),  cmocka_unit_test(test_errors),
        cmocka_unit_test(test_linear),     cmocka_unit_test(test_conv2d),     cmocka_unit_test(test_group_norm),
        cmocka_unit_test(test_layer_norm), cmocka_unit_test(test_softmax),    cmocka_unit_test(test_attention),
        cmocka_unit_test(test_activation), cmocka_unit_test(test_add_mul),    cmocka_unit_test(test_data_movement),
        cmocka_unit_test(test_f32_backend), cmocka_unit_test(test_f32_range),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    pf_backend_free(g_f32);
    pf_backend_free(g_wmma);
    pf_backend_free(g_legacy);
    pf_backend_free(g_gpu);
    pf_backend_free(g_cpu);
    return rc;
}
