/* backend_cpu.c - the CPU backend: the readable float32 reference for every op.
 *
 * Plain loops in the style of llm.c's train_gpt2.c; matrix products go through
 * OpenBLAS cblas_sgemm, on the kernels blas_core.c chose from the processor's
 * features. Arguments were checked by the wrappers in backend.c,
 * so nothing here re-checks shapes.
 *
 * Threading uses one level only: OpenMP. OpenBLAS is switched to one thread
 * when the backend is made, and large products are split across OpenMP
 * threads by gemm() below, each thread calling a single-threaded sgemm on its
 * slice. Mixing OpenBLAS's own thread pool with OpenMP regions (attention
 * interleaves small products with softmax) would leave two pools of busy
 * threads competing for the same cores. Every parallel region names its team
 * size (num_threads) so the `threads` given at creation holds whichever thread
 * calls the op. Consequence: openblas_set_num_threads(1) is process-wide, so
 * other OpenBLAS users in the same process also run single-threaded. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "blas_core.h"

/* Elementwise loops are cut into chunks of this many elements, the unit of
 * work handed to a thread; small tensors run on the calling thread. */
#define CHUNK 16384
/* im2col scratch per thread, in floats (4 MiB): the full column matrix of
 * the VAE decoder's last convolutions (256 channels x 9 x 512x512) would be
 * 2.4 GB, so each thread takes tiles of output rows whose columns fit here
 * (swept from 0.5 to 32 MiB on the VAE decode: 2 to 16 MiB within noise). */
#ifndef COL_TILE
#define COL_TILE (1 << 20)
#endif
/* Attention score scratch per thread, in floats (4 MiB): query rows are taken
 * in blocks whose scores [rows, Lk] fit here, so SD at 512px (Lq = Lk = 4096)
 * uses blocks of 256 query rows instead of a 64 MiB score matrix per head. */
#define SCORE_BUDGET (1 << 20)
/* Without a causal mask and from this many keys on, attention runs key block by
 * key block with a running softmax (attention_blocked): the scores of a block
 * of FLASH_QB queries and FLASH_KB keys stay in the core's cache, and each key
 * block is packed for the product once per FLASH_QB queries rather than once
 * per SCORE_BUDGET / Lk (the refiner at 1024 px has 16384 keys per query). */
#ifndef FLASH_MIN_KEYS
#define FLASH_MIN_KEYS 2048
#endif
#define FLASH_QB 256
#define FLASH_KB 512

/* Freed blocks of at least this many bytes are kept for reuse (see cpu_alloc). */
#define CACHE_MIN_BYTES (64 << 10)
#define CACHE_SLOTS 256

typedef struct cpu_block {
    void *p;
    size_t n; /* bytes usable, as asked */
} cpu_block;

typedef struct cpu_state {
    int threads;          /* OpenMP team size for every op */
    pthread_mutex_t mu;   /* guards the block cache: tensors may be freed on any thread */
    cpu_block cache[CACHE_SLOTS];
    int ncache;
    size_t cached;        /* bytes in the cache */
    size_t in_use, peak;  /* bytes handed out (large blocks only) and their peak */
} cpu_state;

static int team(const pf_tensor *t) { return ((const cpu_state *)t->be->impl)->threads; }

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* ---- memory ---- */

/* Large blocks are cached: a forward pass allocates the same sizes step after
 * step, and each fresh large block from malloc is a new mapping whose pages the
 * kernel must fault in and zero (a tenth of a UNet step's time, measured with
 * perf). Blocks carry their size in a 64-byte header. A freed large block is
 * kept while the cache and the blocks in use together stay within the peak of
 * blocks in use, so the process holds no more than its working set needed; an
 * allocation the cache cannot serve first frees cached blocks down to that bound. */
static void *block_new(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n + 64) != 0) return NULL;
    *(size_t *)p = n;
    return (char *)p + 64;
}

static void block_free(void *p) { free((char *)p - 64); }

static size_t block_size(const void *p) { return *(const size_t *)((const char *)p - 64); }

/* 64-byte aligned memory of n bytes (never 0, so that an empty tensor is not
 * mistaken for a failed allocation), from the cache when it holds that size. */
static void *cache_alloc(cpu_state *st, size_t n) {
    if (n == 0) n = 1;
    if (n < CACHE_MIN_BYTES) return block_new(n);
    pthread_mutex_lock(&st->mu);
    void *p = NULL;
    for (int i = st->ncache - 1; i >= 0 && !p; i--) /* newest first: warm in the caches */
        if (st->cache[i].n == n) {
            p = st->cache[i].p;
            st->cache[i] = st->cache[--st->ncache];
            st->cached -= n;
        }
    /* a miss: make room so that what is held stays within the peak */
    while (!p && st->ncache && st->in_use + st->cached + n > (st->peak > st->in_use + n ? st->peak : st->in_use + n)) {
        cpu_block b = st->cache[0];
        st->cache[0] = st->cache[--st->ncache];
        st->cached -= b.n;
        block_free(b.p);
    }
    if (!p) p = block_new(n);
    if (p) {
        st->in_use += n;
        if (st->in_use > st->peak) st->peak = st->in_use;
    }
    pthread_mutex_unlock(&st->mu);
    return p;
}

static void cache_release(cpu_state *st, void *p) {
    if (!p) return;
    size_t n = block_size(p);
    if (n < CACHE_MIN_BYTES) {
        block_free(p);
        return;
    }
    pthread_mutex_lock(&st->mu);
    st->in_use -= n;
    if (st->ncache < CACHE_SLOTS && st->in_use + st->cached + n <= st->peak) {
        st->cache[st->ncache++] = (cpu_block){p, n};
        st->cached += n;
        p = NULL;
    }
    pthread_mutex_unlock(&st->mu);
    if (p) block_free(p);
}

static void *cpu_alloc(pf_backend *be, size_t nbytes) { return cache_alloc(be->impl, nbytes); }

static void cpu_release(pf_backend *be, void *p) { cache_release(be->impl, p); }

static void cpu_upload(pf_backend *be, pf_tensor *dst, const float *src) {
    (void)be;
    pf_convert_from_f32(dst->data, dst->dtype, src, (size_t)pf_numel(dst));
}

static void cpu_download(pf_backend *be, float *dst, const pf_tensor *src) {
    (void)be;
    pf_convert_to_f32(dst, src->data, src->dtype, (size_t)pf_numel(src));
}

static void cpu_synchronize(pf_backend *be) { (void)be; }

/* backend.h, pf_backend_mem_available: MemAvailable, else free pages, else SIZE_MAX. */
static size_t cpu_mem_available(pf_backend *be) {
    (void)be;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kib;
        int found = 0;
        while (!found && fgets(line, sizeof line, f)) found = sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
        fclose(f);
        if (found) return kib > SIZE_MAX / 1024 ? SIZE_MAX : (size_t)kib * 1024;
    }
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0)
        return (size_t)pages > SIZE_MAX / (size_t)page ? SIZE_MAX : (size_t)pages * (size_t)page;
    return SIZE_MAX;
}

static void cpu_destroy(pf_backend *be) {
    cpu_state *st = be->impl;
    for (int i = 0; i < st->ncache; i++) block_free(st->cache[i].p);
    pthread_mutex_destroy(&st->mu);
    free(st);
    free(be);
}

/* ---- matrix product ---- */

/* c[m, n] = alpha * op(a)[m, k] @ op(b)[k, n] + beta * c, row-major, op
 * transposing when ta/tb is set. The larger of m and n is split into one slice
 * per thread (in multiples of 16 so slices keep whole register tiles); each
 * slice is an independent sgemm. With nt > 1, must not be called inside a
 * parallel region. */
static void gemm(int nt, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                 const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                 int64_t ldc) {
    if (m == 0 || n == 0) return;
    PF_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX &&
             ldc <= INT_MAX);
    int split_m = m >= n;
    int64_t units = ((split_m ? m : n) + 15) / 16;
    int64_t parts = 2.0 * m * n * k < 4e6 ? 1 : min64(nt, units);
    enum CBLAS_TRANSPOSE opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
#pragma omp parallel for num_threads(parts) if (parts > 1) schedule(static, 1)
    for (int64_t p = 0; p < parts; p++) {
        int64_t total = split_m ? m : n;
        int64_t lo = min64(total, units * p / parts * 16);
        int64_t hi = p == parts - 1 ? total : min64(total, units * (p + 1) / parts * 16);
        if (hi <= lo) continue;
        if (split_m)
            cblas_sgemm(CblasRowMajor, opa, opb, (int)(hi - lo), (int)n, (int)k, alpha,
                        a + (ta ? lo : lo * lda), (int)lda, b, (int)ldb, beta, c + lo * ldc, (int)ldc);
        else
            cblas_sgemm(CblasRowMajor, opa, opb, (int)m, (int)(hi - lo), (int)k, alpha, a, (int)lda,
                        b + (tb ? lo * ldb : lo), (int)ldb, beta, c + lo, (int)ldc);
    }
}

/* Fills y[rows, cols] with bias[row]: the product is then accumulated onto
 * it (beta = 1), as torch's addmm does. */
static void fill_rows(float *y, const float *bias, int64_t rows, int64_t cols, int nt) {
#pragma omp parallel for num_threads(nt) if (rows * cols > CHUNK) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) y[r * cols + j] = bias[r];
}

/* ---- ops ---- */

static void cpu_linear(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b) {
    int nt = team(y);
    int64_t n = w->shape[0], k = w->shape[1], m = n ? pf_numel(y) / n : 0;
    float *yp = y->data;
    if (b) {
        const float *bp = b->data;
#pragma omp parallel for num_threads(nt) if (m * n > CHUNK) schedule(static)
        for (int64_t r = 0; r < m; r++) memcpy(yp + r * n, bp, (size_t)n * sizeof(float));
    }
    /* y[m, n] = x[m, k] @ w[n, k]^T */
    gemm(nt, 0, 1, m, n, k, 1.0f, x->data, k, w->data, k, b ? 1.0f : 0.0f, yp, n);
}

/* Unfolds output rows [oh0, oh0 + rows) of one image x[ci, h, w] into
 * col[ci * kh * kw, rows * wo]: row (c, i, j) of col holds the input pixel
 * under kernel tap (i, j) for every output position (0 in the padding). */
static void im2col(float *col, const float *x, int64_t ci, int64_t h, int64_t w, int64_t kh,
                   int64_t kw, int stride, int pad, int64_t oh0, int64_t rows, int64_t wo, int nt) {
    int64_t kk = ci * kh * kw, cols = rows * wo;
#pragma omp parallel for num_threads(nt) if (kk * cols > CHUNK) schedule(static)
    for (int64_t r = 0; r < kk; r++) {
        int64_t c = r / (kh * kw), ki = (r / kw) % kh, kj = r % kw;
        for (int64_t oh = 0; oh < rows; oh++) {
            float *dst = col + r * cols + oh * wo;
            int64_t ih = (oh0 + oh) * stride - pad + ki;
            if (ih < 0 || ih >= h) {
                memset(dst, 0, (size_t)wo * sizeof(float));
                continue;
            }
            const float *src = x + (c * h + ih) * w;
            if (stride == 1) {
                /* a shifted copy of the input row: zeros where the tap falls in
                 * the padding, columns [lo, hi) from src[ow - pad + kj]. Scalar
                 * bounds checks made this a tenth of a VAE decode. */
                int64_t lo = min64(wo, max64(0, pad - kj)), hi = max64(lo, min64(wo, w + pad - kj));
                if (lo) memset(dst, 0, (size_t)lo * sizeof(float));
                if (hi > lo) memcpy(dst + lo, src + lo - pad + kj, (size_t)(hi - lo) * sizeof(float));
                if (hi < wo) memset(dst + hi, 0, (size_t)(wo - hi) * sizeof(float));
                continue;
            }
            for (int64_t ow = 0; ow < wo; ow++) {
                int64_t iw = ow * stride - pad + kj;
                dst[ow] = iw >= 0 && iw < w ? src[iw] : 0.0f;
            }
        }
    }
}

/* y[co, rows * wo] of one image += w[co, kk] @ im2col(rows of x): one tile,
 * on the calling thread (its col scratch [kk, rows * wo]). */
static void conv_tile(float *yn, const float *xn, const float *wp, float *col, int64_t ci, int64_t h,
                      int64_t wi, int64_t co, int64_t kh, int64_t kw, int stride, int pad, int64_t oh0,
                      int64_t rows, int64_t wo, int64_t plane, float beta) {
    int64_t kk = ci * kh * kw, cols = rows * wo;
    im2col(col, xn, ci, h, wi, kh, kw, stride, pad, oh0, rows, wo, 1);
    /* y[co, tile columns] = w[co, kk] @ col[kk, cols] */
    gemm(1, 0, 0, co, cols, kk, 1.0f, wp, kk, col, cols, beta, yn + oh0 * wo, plane);
}

static void cpu_conv2d(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b,
                       int stride, int pad) {
    int nt = team(y);
    int64_t n = x->shape[0], ci = x->shape[1], h = x->shape[2], wi = x->shape[3];
    int64_t co = w->shape[0], kh = w->shape[2], kw = w->shape[3];
    int64_t ho = y->shape[2], wo = y->shape[3], plane = ho * wo;
    int64_t kk = ci * kh * kw;
    const float *xp = x->data, *wp = w->data;
    float *yp = y->data;
    if (pf_numel(y) == 0) return;
    float beta = b ? 1.0f : 0.0f;
    if (b)
        for (int64_t img = 0; img < n; img++) fill_rows(yp + img * co * plane, b->data, co, plane, nt);
    /* A 1x1 stride-1 unpadded convolution is already a product: x[n] is the
     * column matrix [ci, h*w]. */
    if (kh == 1 && kw == 1 && stride == 1 && pad == 0) {
        for (int64_t img = 0; img < n; img++)
            /* y[co, hw] = w[co, ci] @ x[ci, hw] */
            gemm(nt, 0, 0, co, plane, ci, 1.0f, wp, ci, xp + img * ci * h * wi, plane, beta,
                 yp + img * co * plane, plane);
        return;
    }
    /* Otherwise tiles of output rows, each unfolded and multiplied by one
     * thread in its own scratch of about COL_TILE floats: the column matrix
     * is packed by the sgemm while still in that core's cache, instead of
     * one large matrix written by all threads and read back from memory.
     * Each tile's sgemm also packs all the weights [co, kk] again, so a tile
     * has at least co columns where COL_TILE would allow fewer: packing the
     * weights then costs no more than packing the tile (a 1280-channel 3x3
     * convolution at 16x16 had tiles of 80 columns, and ran at 150 GFLOP/s a
     * core where whole images run at 200). */
    int64_t tile = min64(ho, max64(1, max64(COL_TILE / max64(1, kk * wo), (co + wo - 1) / wo)));
    /* at least one tile per thread where the images allow it */
    int64_t need = (nt + n - 1) / n;
    tile = min64(tile, max64(1, ho / need));
    int64_t per_img = (ho + tile - 1) / tile, tasks = n * per_img;
    int parts = (int)min64(nt, tasks);
    size_t scratch = (size_t)(kk * tile * wo);
    float *col = cache_alloc(y->be->impl, (size_t)parts * scratch * sizeof(float));
    if (!col) {
        pf_backend_set_error(y->be, "cpu backend: out of memory for conv2d scratch (%lld floats)",
                             (long long)((size_t)parts * scratch));
        return;
    }
#pragma omp parallel for num_threads(parts) if (parts > 1) schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t img = t / per_img, oh0 = (t % per_img) * tile;
        float *mine = col + (size_t)omp_get_thread_num() * scratch;
        conv_tile(yp + img * co * plane, xp + img * ci * h * wi, wp, mine, ci, h, wi, co, kh, kw, stride, pad,
                  oh0, min64(tile, ho - oh0), wo, plane, beta);
    }
    cache_release(y->be->impl, col);
}

static float silu(float v) { return v / (1.0f + expf(-v)); }

/* Mean and 1/sqrt(var + eps) of n floats, biased variance, two passes in
 * double: normalisation layers see activations with |mean| >> std, where a
 * one-pass float E[x^2] - E[x]^2 loses most of its digits. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void moments(const float *x, int64_t n,
                                                                                   float eps, float *mean,
                                                                                   float *rstd) {
    /* the sums in double lanes (the order of a vector sum, ~1e-16 apart from
     * a sequential one) */
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; i++) sum += x[i];
    double mu = sum / (double)n, sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - mu;
        sq += d * d;
    }
    *mean = (float)mu;
    *rstd = (float)(1.0 / sqrt(sq / (double)n + eps));
}

static inline float exp_neg(float x); /* below, with softmax */

/* y[i] = (x[i] - mean) * scale + shift for i < n, then SiLU when with_silu
 * is set; y may alias x. SiLU as v / (1 + e^-v) with the vector exp_neg of
 * e^-|v| (so that it never overflows): for v < 0, v e^v / (1 + e^v). expf
 * one value at a time was a tenth of a VAE decode. Clones as softmax_row. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void
norm_row(float *y, const float *x, int64_t n, float mean, float scale, float shift, int with_silu) {
    if (!with_silu) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] - mean) * scale + shift;
        return;
    }
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        const float v = (x[i] - mean) * scale + shift;
        const float t = exp_neg(v < 0.0f ? v : -v), r = 1.0f / (1.0f + t);
        y[i] = v < 0.0f ? v * t * r : v * r;
    }
}

static void cpu_group_norm(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma,
                           const pf_tensor *beta, int groups, float eps, int fuse_silu) {
    int nt = team(y);
    int64_t n = x->shape[0], c = x->shape[1], s = pf_numel_from(x, 2);
    int64_t cpg = c / groups, gsize = cpg * s;
    const float *gp = gamma->data, *bp = beta->data;
    /* [N, C, S] with C = groups x cpg: group (n, g) is one contiguous run. */
#pragma omp parallel for num_threads(nt) if (n * c * s > CHUNK) schedule(static)
    for (int64_t t = 0; t < n * groups; t++) {
        const float *xg = (const float *)x->data + t * gsize;
        float *yg = (float *)y->data + t * gsize;
        float mean, rstd;
        if (gsize == 0) continue;
        moments(xg, gsize, eps, &mean, &rstd);
        int64_t c0 = (t % groups) * cpg;
        for (int64_t ch = 0; ch < cpg; ch++)
            norm_row(yg + ch * s, xg + ch * s, s, mean, rstd * gp[c0 + ch], bp[c0 + ch], fuse_silu);
    }
}

static void cpu_layer_norm(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma,
                           const pf_tensor *beta, float eps) {
    int nt = team(y);
    int64_t c = x->shape[x->ndim - 1], rows = c ? pf_numel(x) / c : 0;
    const float *gp = gamma->data, *bp = beta->data;
#pragma omp parallel for num_threads(nt) if (rows * c > CHUNK) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = (const float *)x->data + r * c;
        float *yr = (float *)y->data + r * c;
        float mean, rstd;
        moments(xr, c, eps, &mean, &rstd);
        for (int64_t i = 0; i < c; i++) yr[i] = (xr[i] - mean) * rstd * gp[i] + bp[i];
    }
}

/* exp(x) for x <= 0 in float32 to about 1 ulp, written so that the compiler
 * vectorises the loops that call it (libm's expf is a call per element: the
 * attention's softmax spent more time in it than in its matrix products).
 * Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, then Cephes' degree-5
 * polynomial for e^r - 1 - r, scaled by 2^k through the exponent bits.
 * Below -87.3 (where expf leaves the normal range) it returns 0. */
static inline float exp_neg(float x) {
    const float lo = -87.33654f;
    float xc = x < lo ? lo : x;
    /* k = rint(xc / ln2): adding and removing 1.5 * 2^23 rounds to the nearest
     * integer (ties to even) in any vector width, where roundf is a call */
    float k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - k * 0.693359375f; /* ln2 split in two for an exact k * ln2_hi */
    r = r - k * -2.12194440e-4f;
    float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)k + 127) << 23};
    return x < lo ? 0.0f : p * scale.f;
}

/* In-place softmax of row[0, n); the max is subtracted so exp never overflows.
 * Built for AVX-512, AVX2 and plain x86-64, chosen at load by the CPU (GCC's
 * target_clones): the sums run in float lanes, which changes the last bits
 * against a sequential double sum (~1e-7 relative), far below what the
 * reference comparisons allow. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void softmax_row(float *row, const float *in,
                                                                                       int64_t n) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < n; j++) mx = in[j] > mx ? in[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; j++) {
        float e = exp_neg(in[j] - mx);
        row[j] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < n; j++) row[j] *= inv;
}

/* One key block of the running softmax: row[0, n) is first scaled by scale,
 * then becomes exp(row - m_new) with m_new = max(m_old, max(row)); *l becomes
 * *l * exp(m_old - m_new) + the sum of the new values. Returns m_new. Clones
 * as softmax_row. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static float
softmax_block(float *row, int64_t n, float scale, float m_old, float *l) {
    float mx = m_old;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < n; j++) {
        row[j] *= scale;
        mx = row[j] > mx ? row[j] : mx;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; j++) {
        float e = exp_neg(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    *l = (m_old == -INFINITY ? 0.0f : *l * exp_neg(m_old - mx)) + sum;
    return mx;
}

static void cpu_softmax(pf_tensor *y, const pf_tensor *x) {
    int nt = team(y);
    int64_t c = x->shape[x->ndim - 1], rows = c ? pf_numel(x) / c : 0;
#pragma omp parallel for num_threads(nt) if (rows * c > CHUNK) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        softmax_row((float *)y->data + r * c, (const float *)x->data + r * c, c);
}

/* 16 floats; on AVX-512 one register, on AVX2 two, otherwise four (GCC splits it). */
typedef float v16f __attribute__((vector_size(64)));

/* v = 16 floats at p (any alignment); a macro, as a function returning a 64-byte
 * vector has an ABI that differs by target */
#define LOAD16(v, p) memcpy(&(v), (p), sizeof(v))

/* Multiply-adds fused (FMA) in the block kernels: GCC contracts nothing under -std=c11 */
#if defined(__clang__)
#define PF_FP_CONTRACT
#else
#define PF_FP_CONTRACT __attribute__((optimize("fp-contract=fast")))
#endif

/* Complete unrolling of the register-tile loops, so that the accumulators stay
 * in registers (-O2 does not unroll them by itself). */
#define PF_UNROLL _Pragma("GCC unroll 4")

/* c[r, e] = (add ? c[r, e] : 0) + sum_j a[r, j] * b[j, e] for r < NR, e < 16 * NV, j < k: one
 * register tile of mm_block (NR x NV accumulators, 16 on AVX-512), summing
 * over j in order. NR and NV are constants where it is inlined. */
static inline __attribute__((always_inline)) void mm_tile(float *c, int64_t ldc, const float *a, int64_t lda,
                                                          const float *b, int64_t ldb, int64_t k, int add,
                                                          const int nr, const int nv) {
    v16f acc[4][4];
    PF_UNROLL for (int r = 0; r < nr; r++)
        PF_UNROLL for (int u = 0; u < nv; u++) {
            acc[r][u] = (v16f){0};
            if (add) LOAD16(acc[r][u], c + r * ldc + 16 * u);
        }
    for (int64_t j = 0; j < k; j++) {
        v16f bv[4];
        PF_UNROLL for (int u = 0; u < nv; u++) LOAD16(bv[u], b + j * ldb + 16 * u);
        PF_UNROLL for (int r = 0; r < nr; r++) {
            const v16f x = (v16f){0} + a[r * lda + j];
            PF_UNROLL for (int u = 0; u < nv; u++) acc[r][u] += x * bv[u];
        }
    }
    PF_UNROLL for (int r = 0; r < nr; r++)
        PF_UNROLL for (int u = 0; u < nv; u++) memcpy(c + r * ldc + 16 * u, &acc[r][u], sizeof(v16f));
}

/* c[rows, n] = (add ? c : 0) + a[rows, k] @ b[k, n], n a multiple of 16, all row-major with
 * the given row strides: the two products of attention_blocked, whose sizes
 * suit a library GEMM badly. The scores q @ k^T have an inner size of 40 (SD's
 * head width), and the values p @ v an outer one of 40: sgemm spends as long
 * packing its operands as multiplying them. Here a is read in place, four rows
 * at a time against up to 64 columns of b held in registers, and b (a key
 * block: the keys transposed, or the values) stays in L1/L2 across the rows.
 * Built for AVX-512, AVX2 and plain x86-64, chosen at load by the CPU (GCC's
 * target_clones). */
__attribute__((target_clones("avx512f", "avx2", "default"))) PF_FP_CONTRACT static void
mm_block(float *c, int64_t ldc, const float *a, int64_t lda, const float *b, int64_t ldb, int add, int rows,
         int64_t k, int64_t n) {
    for (int64_t e0 = 0; e0 < n; e0 += 64) {
        const int nv = (int)min64(4, (n - e0) / 16);
        int r = 0;
        for (; r + 4 <= rows; r += 4) {
            float *cr = c + r * ldc + e0;
            const float *ar = a + r * lda, *be = b + e0;
            switch (nv) {
            case 1: mm_tile(cr, ldc, ar, lda, be, ldb, k, add, 4, 1); break;
            case 2: mm_tile(cr, ldc, ar, lda, be, ldb, k, add, 4, 2); break;
            case 3: mm_tile(cr, ldc, ar, lda, be, ldb, k, add, 4, 3); break;
            default: mm_tile(cr, ldc, ar, lda, be, ldb, k, add, 4, 4); break;
            }
        }
        for (; r < rows; r++) {
            float *cr = c + r * ldc + e0;
            const float *ar = a + r * lda, *be = b + e0;
            switch (nv) {
            case 1: mm_tile(cr, ldc, ar, lda, be, ldb, k, add, 1, 1); break;
            case 2: mm_tile(cr, ldc, ar, lda, be, ldb, k, add, 1, 2); break;
            case 3: mm_tile(cr, ldc, ar, lda, be, ldb, k, add, 1, 3); break;
            default: mm_tile(cr, ldc, ar, lda, be, ldb, k, add, 1, 4); break;
            }
        }
    }
}

/* Attention over key blocks with a running softmax (FlashAttention's order of
 * work, in float32): per query row the running max m and sum l; each key block
 * rescales what is accumulated by exp(m_old - m_new). The same softmax as
 * softmax_row up to float rounding (the exponent's max is the running one). */
static void attention_blocked(pf_tensor *out, const pf_tensor *q, const pf_tensor *k, const pf_tensor *v, int heads) {
    int nt = team(out);
    const int64_t bsz = q->shape[0], lq = q->shape[1], lk = k->shape[1], c = q->shape[2], d = c / heads;
    const int64_t qb = min64(lq, FLASH_QB), nblk = (lq + qb - 1) / qb, tasks = bsz * heads * nblk;
    const int parts = (int)min64(nt, tasks);
    /* per thread: scores (qb, FLASH_KB), the accumulator (qb, dp), m and l (qb), the
     * key block's values (FLASH_KB, dp); shared: the keys transposed per head, (B, heads,
     * d, nkb * FLASH_KB), zero past Lk so that the score kernel may read whole blocks */
    const int64_t dp = (d + 15) / 16 * 16;
    const int64_t per = qb * FLASH_KB + qb * dp + 2 * qb + FLASH_KB * dp, nkb = (lk + FLASH_KB - 1) / FLASH_KB;
    const int64_t lkp = nkb * FLASH_KB;
    float *scratch = cache_alloc(out->be->impl, (size_t)(parts * per + bsz * heads * d * lkp) * sizeof(float));
    if (!scratch) {
        pf_backend_set_error(out->be, "cpu backend: out of memory for attention scratch (%lld floats)",
                             (long long)(parts * per + bsz * heads * d * lkp));
        return;
    }
    float *ktall = scratch + parts * per;
    /* block by block, (d, FLASH_KB) each: rows FLASH_KB floats apart, not Lk (a stride of
     * 64 KiB would put every row of a block in the same few L1 sets) */
#pragma omp parallel for num_threads(nt) collapse(2) schedule(static)
    for (int64_t bh = 0; bh < bsz * heads; bh++)
        for (int64_t jb = 0; jb < nkb; jb++) {
            const float *src = (const float *)k->data + (bh / heads) * lk * c + (bh % heads) * d;
            float *dst = ktall + (bh * nkb + jb) * d * FLASH_KB;
            for (int64_t e = 0; e < d; e++)
                for (int64_t jj = 0; jj < FLASH_KB; jj++) {
                    const int64_t j = jb * FLASH_KB + jj;
                    dst[e * FLASH_KB + jj] = j < lk ? src[j * c + e] : 0.0f;
                }
        }
    const float scale = 1.0f / sqrtf((float)d);
    PF_CHECK(lk <= INT_MAX && c <= INT_MAX);
#pragma omp parallel num_threads(parts) if (parts > 1)
    {
        float *s = scratch + (int64_t)omp_get_thread_num() * per, *acc = s + qb * FLASH_KB, *m = acc + qb * dp,
              *l = m + qb, *vb = l + qb;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            const int64_t b = t / (heads * nblk), h = (t / nblk) % heads, i0 = (t % nblk) * qb;
            const int rows = (int)min64(qb, lq - i0);
            const float *qp = (const float *)q->data + (b * lq + i0) * c + h * d;
            float *op = (float *)out->data + (b * lq + i0) * c + h * d;
            for (int r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0.0f;
            for (int64_t j0 = 0; j0 < lk; j0 += FLASH_KB) {
                const int kn = (int)min64(FLASH_KB, lk - j0);
                const float *vp = (const float *)v->data + (b * lk + j0) * c + h * d;
                /* s[rows, kn] = q_h[rows, d] @ k_h[kn, d]^T (scaled by the softmax), in
                 * whole vectors: the transposed keys are zero past Lk */
                mm_block(s, FLASH_KB, qp, c, ktall + ((b * heads + h) * nkb + j0 / FLASH_KB) * d * FLASH_KB, FLASH_KB,
                         0, rows, d, (kn + 15) / 16 * 16);
                for (int r = 0; r < rows; r++) {
                    float *row = s + (int64_t)r * FLASH_KB;
                    const float mn = softmax_block(row, kn, scale, m[r], &l[r]);
                    /* rescale what the earlier key blocks gave this row */
                    const float corr = j0 ? exp_neg(m[r] - mn) : 0.0f;
                    float *a = acc + (int64_t)r * dp;
                    for (int64_t e = 0; e < dp; e++) a[e] = j0 ? a[e] * corr : 0.0f;
                    m[r] = mn;
                }
                /* vb[kn, dp] = v_h[kn, d], zero past d */
                for (int j = 0; j < kn; j++) {
                    memcpy(vb + j * dp, vp + (int64_t)j * c, (size_t)d * sizeof(float));
                    for (int64_t e = d; e < dp; e++) vb[j * dp + e] = 0.0f;
                }
                /* acc[rows, dp] += p[rows, kn] @ vb[kn, dp] */
                mm_block(acc, dp, s, FLASH_KB, vb, dp, 1, rows, kn, dp);
            }
            for (int r = 0; r < rows; r++) {
                const float inv = 1.0f / l[r];
                for (int64_t e = 0; e < d; e++) op[(int64_t)r * c + e] = acc[(int64_t)r * dp + e] * inv;
            }
        }
    }
    cache_release(out->be->impl, scratch);
}

/* Work items are (batch, head, block of query rows); each thread owns one
 * score buffer [qb, Lk] and runs single-threaded sgemms on it. Heads are
 * strided views of q/k/v (row stride C), which sgemm's lda expresses directly,
 * so nothing is transposed or copied. */
static void cpu_attention(pf_tensor *out, const pf_tensor *q, const pf_tensor *k,
                          const pf_tensor *v, int heads, int causal) {
    int nt = team(out);
    int64_t bsz = q->shape[0], lq = q->shape[1], lk = k->shape[1], c = q->shape[2];
    int64_t d = c / heads;
    if (pf_numel(out) == 0) return;
    if (lk == 0) { /* no keys: torch returns NaN rows, nothing to attend */
        for (int64_t i = 0; i < pf_numel(out); i++) ((float *)out->data)[i] = NAN;
        return;
    }
    if (!causal && lk >= FLASH_MIN_KEYS) {
        attention_blocked(out, q, k, v, heads);
        return;
    }
    int64_t qb = min64(lq, max64(1, SCORE_BUDGET / lk));
    int64_t nblk = (lq + qb - 1) / qb, tasks = bsz * heads * nblk;
    int parts = (int)min64(nt, tasks);
    float *scores = cache_alloc(out->be->impl, (size_t)(parts * qb * lk) * sizeof(float));
    if (!scores) {
        pf_backend_set_error(out->be, "cpu backend: out of memory for attention scores (%lld floats)",
                             (long long)(parts * qb * lk));
        return;
    }
    float scale = 1.0f / sqrtf((float)d);
    PF_CHECK(lk <= INT_MAX && c <= INT_MAX);
#pragma omp parallel num_threads(parts) if (parts > 1)
    {
        float *s = scores + (int64_t)omp_get_thread_num() * qb * lk;
        /* dynamic: with a causal mask later query blocks do more work */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t b = t / (heads * nblk), h = (t / nblk) % heads, i0 = (t % nblk) * qb;
            int rows = (int)min64(qb, lq - i0);
            /* keys this block can see: all, or up to its last query when causal */
            int kmax = (int)(causal ? min64(lk, i0 + rows) : lk);
            const float *qp = (const float *)q->data + (b * lq + i0) * c + h * d;
            const float *kp = (const float *)k->data + b * lk * c + h * d;
            const float *vp = (const float *)v->data + b * lk * c + h * d;
            float *op = (float *)out->data + (b * lq + i0) * c + h * d;
            /* s[rows, kmax] = scale * q_h[rows, d] @ k_h[kmax, d]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kmax, (int)d, scale, qp,
                        (int)c, kp, (int)c, 0.0f, s, (int)lk);
            for (int r = 0; r < rows; r++) {
                float *row = s + (int64_t)r * lk;
                int64_t valid = causal ? min64(kmax, i0 + r + 1) : kmax;
                softmax_row(row, row, valid);
                for (int64_t j = valid; j < kmax; j++) row[j] = 0.0f;
            }
            /* out_h[rows, d] = p[rows, kmax] @ v_h[kmax, d] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, (int)d, kmax, 1.0f, s,
                        (int)lk, vp, (int)c, 0.0f, op, (int)c);
        }
    }
    cache_release(out->be->impl, scores);
}

/* gelu(x) exact, as torch.nn.functional.gelu(approximate="none"). */
static float gelu(float v) { return 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2)); }

static void act_run(float *y, const float *x, int64_t n, pf_act act) {
    switch (act) {
    case PF_ACT_SILU:
        for (int64_t i = 0; i < n; i++) y[i] = silu(x[i]);
        break;
    case PF_ACT_GELU:
        for (int64_t i = 0; i < n; i++) y[i] = gelu(x[i]);
        break;
    case PF_ACT_GELU_TANH: {
        const float k0 = 0.7978845608028654f, k1 = 0.044715f; /* sqrt(2/pi) */
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            y[i] = 0.5f * v * (1.0f + tanhf(k0 * (v + k1 * v * v * v)));
        }
        break;
    }
    case PF_ACT_QUICK_GELU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        break;
    }
}

static void cpu_activation(pf_tensor *y, const pf_tensor *x, pf_act act) {
    int nt = team(y);
    int64_t n = pf_numel(x), nchunk = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(nt) if (nchunk > 1) schedule(static)
    for (int64_t ch = 0; ch < nchunk; ch++) {
        int64_t i0 = ch * CHUNK;
        act_run((float *)y->data + i0, (const float *)x->data + i0, min64(CHUNK, n - i0), act);
    }
}

static void cpu_geglu(pf_tensor *y, const pf_tensor *x) {
    int nt = team(y);
    int64_t nh = y->shape[y->ndim - 1], rows = nh ? pf_numel(y) / nh : 0;
#pragma omp parallel for num_threads(nt) if (rows * nh > CHUNK) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = (const float *)x->data + r * 2 * nh; /* (h, gate) halves */
        float *yr = (float *)y->data + r * nh;
        for (int64_t j = 0; j < nh; j++) yr[j] = xr[j] * gelu(xr[nh + j]);
    }
}

/* y[i] = a[i] op b[i * bstep]: bstep 0 broadcasts one b value over the run. */
static void binary_run(float *y, const float *a, const float *b, int64_t n, int bstep, int is_mul) {
    if (bstep) {
        if (is_mul)
            for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i];
        else
            for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    } else {
        float s = b[0];
        if (is_mul)
            for (int64_t i = 0; i < n; i++) y[i] = a[i] * s;
        else
            for (int64_t i = 0; i < n; i++) y[i] = a[i] + s;
    }
}

/* Broadcasting add/mul (b already has a's ndim, see backend.c). Adjacent
 * dimensions that b either matches or broadcasts alike are merged first, so
 * the common cases reduce to a contiguous run per row: same shape is one run
 * of numel; [N,C,1,1] onto [N,C,H,W] is N*C runs of H*W with one b value each;
 * [1,1,C] onto [B,L,C] is B*L runs of C against the same b row. The general
 * case is the same loop with b's offset computed per row. */
static void cpu_binary(pf_tensor *y, const pf_tensor *a, const pf_tensor *b, int is_mul) {
    int nt = team(y);
    int64_t size[PF_MAX_DIMS], bstride[PF_MAX_DIMS];
    int bcast[PF_MAX_DIMS], m = 0;
    for (int i = 0; i < a->ndim; i++) {
        if (a->shape[i] == 1) continue;
        int bc = b->shape[i] == 1;
        if (m > 0 && bcast[m - 1] == bc) {
            size[m - 1] *= a->shape[i];
        } else {
            size[m] = a->shape[i];
            bcast[m++] = bc;
        }
    }
    if (m == 0) { /* a single element */
        size[0] = 1;
        bcast[0] = 0;
        m = 1;
    }
    int64_t run = 1;
    for (int i = m - 1; i >= 0; i--) {
        bstride[i] = bcast[i] ? 0 : run;
        if (!bcast[i]) run *= size[i];
    }
    int64_t len = size[m - 1], numel = pf_numel(a);
    if (numel == 0) return;
    int64_t rows = numel / len, nchunk = (len + CHUNK - 1) / CHUNK, tasks = rows * nchunk;
    int bstep = !bcast[m - 1];
    const float *ap = a->data, *bp = b->data;
    float *yp = y->data;
#pragma omp parallel for num_threads(nt) if (numel > CHUNK && tasks > 1) schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t r = t / nchunk, i0 = (t % nchunk) * CHUNK, boff = 0, rem = r;
        for (int i = m - 2; i >= 0; i--) {
            boff += (rem % size[i]) * bstride[i];
            rem /= size[i];
        }
        binary_run(yp + r * len + i0, ap + r * len + i0, bp + boff + (bstep ? i0 : 0),
                   min64(CHUNK, len - i0), bstep, is_mul);
    }
}

static void cpu_add(pf_tensor *y, const pf_tensor *a, const pf_tensor *b) { cpu_binary(y, a, b, 0); }
static void cpu_mul(pf_tensor *y, const pf_tensor *a, const pf_tensor *b) { cpu_binary(y, a, b, 1); }

static void cpu_scale(pf_tensor *y, const pf_tensor *x, float alpha, float beta) {
    int nt = team(y);
    int64_t n = pf_numel(x);
    const float *xp = x->data;
    float *yp = y->data;
#pragma omp parallel for num_threads(nt) if (n > CHUNK) schedule(static)
    for (int64_t i = 0; i < n; i++) yp[i] = alpha * xp[i] + beta;
}

static void cpu_concat(pf_tensor *y, const pf_tensor *a, const pf_tensor *b, int axis) {
    int nt = team(y);
    int64_t outer = 1;
    for (int i = 0; i < axis; i++) outer *= a->shape[i];
    /* per outer index: a's block then b's block, both contiguous */
    int64_t na = pf_numel_from(a, axis), nb = pf_numel_from(b, axis);
    const float *ap = a->data, *bp = b->data;
    float *yp = y->data;
#pragma omp parallel for num_threads(nt) if (outer * (na + nb) > CHUNK && outer > 1) schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        memcpy(yp + o * (na + nb), ap + o * na, (size_t)na * sizeof(float));
        memcpy(yp + o * (na + nb) + na, bp + o * nb, (size_t)nb * sizeof(float));
    }
}

/* One output row at a time: its source row by pf_nearest_index, columns from a
 * table computed once. */
static void cpu_upsample_nearest(pf_tensor *y, const pf_tensor *x) {
    int nt = team(y);
    const int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3];
    const int64_t ho = y->shape[2], wo = y->shape[3];
    int64_t *col = malloc((size_t)wo * sizeof *col);
    if (!col) {
        pf_backend_set_error(y->be, "cpu backend: out of memory for upsample");
        return;
    }
    for (int64_t j = 0; j < wo; j++) col[j] = pf_nearest_index(j, w, wo);
#pragma omp parallel for num_threads(nt) if (planes * ho * wo > CHUNK) schedule(static)
    for (int64_t r = 0; r < planes * ho; r++) {
        const int64_t p = r / ho, i = r % ho, si = pf_nearest_index(i, h, ho);
        const float *src = (const float *)x->data + (p * h + si) * w;
        float *dst = (float *)y->data + r * wo;
        for (int64_t j = 0; j < wo; j++) dst[j] = src[col[j]];
    }
    free(col);
}

static void cpu_permute(pf_tensor *y, const pf_tensor *x, const int *perm) {
    int nt = team(y);
    int nd = x->ndim;
    int64_t xstride[PF_MAX_DIMS], step[PF_MAX_DIMS]; /* step[i]: x stride of y's dim i */
    int64_t s = 1;
    for (int i = nd - 1; i >= 0; i--) {
        xstride[i] = s;
        s *= x->shape[i];
    }
    for (int i = 0; i < nd; i++) step[i] = xstride[perm[i]];
    int64_t inner = y->shape[nd - 1], numel = pf_numel(y);
    if (numel == 0) return;
    int64_t rows = numel / inner, istep = step[nd - 1];
    const float *xp = x->data;
    float *yp = y->data;
#pragma omp parallel for num_threads(nt) if (numel > CHUNK) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = 0, rem = r;
        for (int i = nd - 2; i >= 0; i--) {
            off += (rem % y->shape[i]) * step[i];
            rem /= y->shape[i];
        }
        float *dst = yp + r * inner;
        for (int64_t j = 0; j < inner; j++) dst[j] = xp[off + j * istep];
    }
}

static void cpu_embedding(pf_tensor *y, const pf_tensor *table, const int32_t *ids, int64_t n) {
    int64_t c = table->shape[1];
    for (int64_t i = 0; i < n; i++)
        memcpy((float *)y->data + i * c, (const float *)table->data + (int64_t)ids[i] * c,
               (size_t)c * sizeof(float));
}

static void cpu_copy(pf_tensor *y, const pf_tensor *x) { memcpy(y->data, x->data, pf_nbytes(x)); }

static const pf_backend_ops cpu_ops = {
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_upload,
    .download = cpu_download,
    .synchronize = cpu_synchronize,
    .destroy = cpu_destroy,
    .mem_available = cpu_mem_available,
    .linear = cpu_linear,
    .conv2d = cpu_conv2d,
    .group_norm = cpu_group_norm,
    .layer_norm = cpu_layer_norm,
    .softmax = cpu_softmax,
    .attention = cpu_attention,
    .activation = cpu_activation,
    .geglu = cpu_geglu,
    .add = cpu_add,
    .mul = cpu_mul,
    .scale = cpu_scale,
    .concat = cpu_concat,
    .upsample_nearest = cpu_upsample_nearest,
    .permute = cpu_permute,
    .embedding = cpu_embedding,
    .copy = cpu_copy,
};

/* threads <= 0 takes omp_get_max_threads(): all cores unless OMP_NUM_THREADS
 * says otherwise, so deployments can cap the team without code changes. */
pf_backend *pf_backend_cpu_new(int threads) {
    pf_backend *be = PF_CALLOC(1, sizeof *be);
    cpu_state *st = PF_CALLOC(1, sizeof *st);
    st->threads = threads > 0 ? threads : omp_get_max_threads();
    pthread_mutex_init(&st->mu, NULL);
    pf_blas_select(); /* already done before main; this links blas_core.o into every program */
    openblas_set_num_threads(1); /* see the title comment: OpenMP is the only level */
    be->name = "cpu";
    be->ops = &cpu_ops;
    be->compute_dtype = PF_F32;
    be->impl = st;
    return be;
}
