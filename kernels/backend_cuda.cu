// backend_cuda.cu - the CUDA backend: the pf_backend_ops table of backend.h on
// one GPU, one stream, one cuBLAS handle and the caching allocator.
//
// Two compute dtypes, one table each: the ops are templates on the element
// type T (__half for pf_backend_cuda_new, float for pf_backend_cuda_new_f32),
// and a backend's ops pointer is the table of its dtype. The wrappers in
// engine/core/backend.c check that every tensor holds the backend's compute dtype,
// and P<T>() checks it again where a tensor becomes a device pointer.
//
// Where a faster kernel path replaced an earlier one, the earlier one stays
// reachable, read once when the backend is made, so that a path failing on
// some GPU can be bypassed without a rebuild (tests/test_cuda_ops.c runs both):
//   PERFLOW_CUDA_ATTENTION=generic  CUDA-core attention instead of the tensor-core kernels
//   PERFLOW_CUDA_ATTENTION=wmma     the wmma kernel (attention.cu) instead of attention_mma.cu
//   PERFLOW_CUDA_CONV=legacy        conv2d with per-call 64 MiB scratch, scalar im2col
//   PERFLOW_CUDA_VECTOR=0           scalar (2-byte) elementwise, bias and group-norm kernels
//
// Every op is enqueued on the backend's stream and returns without waiting;
// only upload, download, synchronize and embedding (whose ids live in host
// memory) wait for the stream. Arguments were checked by the wrappers in
// engine/backend.c. Each CUDA or cuBLAS status is checked; a failure becomes
// the backend's sticky error (pf_backend_set_error) with the call and CUDA's
// own message, and every later op is skipped by the wrappers. An error of an
// earlier asynchronous kernel surfaces at the next checked call, at the latest
// at the next download or synchronize, which model code reaches before it
// calls pf_backend_ok(). Nothing here aborts on a CUDA error.
//
// The kernels are in kernels/<op>.cu, one op each, with the CPU twin every
// one of them is tested against (tests/test_cuda_ops.c).
#include <cublas_v2.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backend.h"
}

#include "activation.cuh"
#include "allocator.cuh"
#include "attention.cuh"
#include "binary.cuh"
#include "concat.cuh"
#include "conv2d.cuh"
#include "convert.cuh"
#include "embedding.cuh"
#include "gemm.cuh"
#include "group_norm.cuh"
#include "layer_norm.cuh"
#include "permute.cuh"
#include "scale.cuh"
#include "softmax.cuh"
#include "upsample.cuh"

// Scratch of one im2col tile, in bytes (64 MiB), of the previous conv2d path
// (PERFLOW_CUDA_CONV=legacy): SD-1.5's VAE decoder at 512px would need 604 MB
// of fp16 columns for one image in its 128-channel 3x3 convolutions, so output
// rows are unfolded in tiles whose columns fit here. Budgets are bytes: the
// float32 backend's tiles hold half as many elements.
#define COL_BUDGET_BYTES ((int64_t)64 << 20)
// The default path's column scratch, in bytes (256 MiB): one buffer kept by
// the backend for its lifetime, grown to what the largest convolution so far
// needed (at most this). Tiles 4x larger than the legacy path's: the VAE
// decoder's 512px convolutions take 3 to 5 products instead of 10 to 19, a
// batch-16 UNet's 64x64 convolutions 2 strided-batched products instead of 8.
#define COL_BUDGET_FAST_BYTES ((int64_t)256 << 20)
// Host <-> device conversions go through a float32 device buffer of at most
// this many floats (64 MiB), whatever the tensor's size.
#define XFER_CHUNK ((int64_t)16 << 20)
// cuBLAS workspace (NVIDIA recommends 32 MiB on Hopper); ours, so that cuBLAS
// allocates nothing behind the allocator's back.
#define BLAS_WORKSPACE ((size_t)32 << 20)

typedef struct cuda_state {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    pf_cuda_allocator *alloc;
    int attention_kernel;  // PF_ATTN_*: PERFLOW_CUDA_ATTENTION=generic|wmma, else the default
    int legacy_conv;       // PERFLOW_CUDA_CONV=legacy: per-call 64 MiB scratch, scalar im2col
    int vec;               // 16-byte elementwise kernels; PERFLOW_CUDA_VECTOR=0 turns them off
    void *col;             // conv2d's column scratch (default path), col_bytes bytes
    size_t col_bytes;
} cuda_state;

template <typename T>
static pf_backend_ops cuda_ops_table();
static const pf_backend_ops cuda_ops_f16 = cuda_ops_table<__half>();
static const pf_backend_ops cuda_ops_f32 = cuda_ops_table<float>();

static bool is_cuda(const pf_backend *be) { return be && (be->ops == &cuda_ops_f16 || be->ops == &cuda_ops_f32); }

static cuda_state *st_of(const pf_backend *be) { return (cuda_state *)be->impl; }
static cuda_state *st_of(const pf_tensor *t) { return st_of(t->be); }
static cudaStream_t stream_of(const pf_tensor *t) { return st_of(t)->stream; }

// ---- error handling ----

// True when e is success; else records "cuda backend: what: message" as the sticky error.
static bool ok(pf_backend *be, cudaError_t e, const char *what) {
    if (e == cudaSuccess) return true;
    pf_backend_set_error(be, "cuda backend: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
    return false;
}

static bool ok_blas(pf_backend *be, cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return true;
    pf_backend_set_error(be, "cuda backend: %s: %s (%s)", what, cublasGetStatusString(s), cublasGetStatusName(s));
    return false;
}

// Makes the backend's device current for the calling thread (another backend
// on another device may have changed it).
static bool enter(pf_backend *be) { return ok(be, cudaSetDevice(st_of(be)->device), "cudaSetDevice"); }

// Scratch device memory for one op; NULL (and the sticky error) on failure.
// Released with put(): stream order makes an immediate release safe.
static void *get(pf_backend *be, size_t n, const char *what) {
    cudaError_t e = cudaSuccess;
    void *p = pf_cuda_allocator_get(st_of(be)->alloc, n, &e);
    if (!p) pf_backend_set_error(be, "cuda backend: %s: cannot allocate %zu bytes of scratch: %s", what, n,
                                 cudaGetErrorString(e));
    return p;
}
static void put(pf_backend *be, void *p) { pf_cuda_allocator_put(st_of(be)->alloc, p); }

// cuBLAS takes int sizes.
static bool fits_int(pf_backend *be, const char *what, int64_t a, int64_t b, int64_t c) {
    if (a <= 0x7fffffff && b <= 0x7fffffff && c <= 0x7fffffff) return true;
    pf_backend_set_error(be, "cuda backend: %s: a matrix dimension exceeds cuBLAS's int range", what);
    return false;
}

// A tensor's data as a device array of T: its dtype must be T's (the wrappers
// checked the backend's compute dtype, and the table was chosen by it).
template <typename T>
static T *P(const pf_tensor *t) {
    PF_CHECK(t->dtype == pf_dtype_of<T>());
    return (T *)t->data;
}

// ---- memory ----

static void *cuda_alloc(pf_backend *be, size_t nbytes) {
    if (!enter(be)) return NULL;
    cudaError_t e = cudaSuccess;
    void *p = pf_cuda_allocator_get(st_of(be)->alloc, nbytes, &e);
    // Out of memory is reported by the caller (tensor.c) with the tensor's
    // shape; any other failure is an earlier error surfacing: keep its text.
    if (!p && e != cudaErrorMemoryAllocation) ok(be, e, "cudaMalloc");
    return p;
}

static void cuda_release(pf_backend *be, void *p) { put(be, p); }

// float32 host -> device: straight for F32 tensors, else through a float32
// device buffer and the conversion kernel, XFER_CHUNK floats at a time. The
// final wait lets the caller free src as soon as this returns.
static void cuda_upload(pf_backend *be, pf_tensor *dst, const float *src) {
    if (!enter(be)) return;
    cuda_state *st = st_of(be);
    const int64_t n = pf_numel(dst);
    if (n == 0) return;
    if (dst->dtype == PF_F32) {
        if (ok(be, cudaMemcpyAsync(dst->data, src, (size_t)n * 4, cudaMemcpyHostToDevice, st->stream), "upload"))
            ok(be, cudaStreamSynchronize(st->stream), "upload");
        return;
    }
    const int64_t chunk = n < XFER_CHUNK ? n : XFER_CHUNK;
    float *buf = (float *)get(be, (size_t)chunk * 4, "upload");
    if (!buf) return;
    const size_t es = pf_dtype_size(dst->dtype);
    for (int64_t off = 0; off < n; off += chunk) {
        const int64_t cnt = n - off < chunk ? n - off : chunk;
        if (!ok(be, cudaMemcpyAsync(buf, src + off, (size_t)cnt * 4, cudaMemcpyHostToDevice, st->stream), "upload") ||
            !ok(be, pf_cuda_from_f32((char *)dst->data + off * es, dst->dtype, buf, cnt, st->stream), "upload"))
            break;
    }
    ok(be, cudaStreamSynchronize(st->stream), "upload");
    put(be, buf);
}

// device -> float32 host, the mirror of cuda_upload.
static void cuda_download(pf_backend *be, float *dst, const pf_tensor *src) {
    if (!enter(be)) return;
    cuda_state *st = st_of(be);
    const int64_t n = pf_numel(src);
    if (n == 0) return;
    if (src->dtype == PF_F32) {
        if (ok(be, cudaMemcpyAsync(dst, src->data, (size_t)n * 4, cudaMemcpyDeviceToHost, st->stream), "download"))
            ok(be, cudaStreamSynchronize(st->stream), "download");
        return;
    }
    const int64_t chunk = n < XFER_CHUNK ? n : XFER_CHUNK;
    float *buf = (float *)get(be, (size_t)chunk * 4, "download");
    if (!buf) return;
    const size_t es = pf_dtype_size(src->dtype);
    for (int64_t off = 0; off < n; off += chunk) {
        const int64_t cnt = n - off < chunk ? n - off : chunk;
        if (!ok(be, pf_cuda_to_f32(buf, (const char *)src->data + off * es, src->dtype, cnt, st->stream),
                "download") ||
            !ok(be, cudaMemcpyAsync(dst + off, buf, (size_t)cnt * 4, cudaMemcpyDeviceToHost, st->stream), "download"))
            break;
    }
    ok(be, cudaStreamSynchronize(st->stream), "download");
    put(be, buf);
}

static void cuda_synchronize(pf_backend *be) {
    if (enter(be)) ok(be, cudaStreamSynchronize(st_of(be)->stream), "cudaStreamSynchronize");
}

// backend.h, pf_backend_mem_available: the driver's free bytes plus the
// allocator's cached blocks (reserved, not in use), which pf_cuda_allocator_get
// returns to the driver before it gives up on a cudaMalloc. A failed query
// becomes the sticky error and reports 0: nothing fits on a broken device.
static size_t cuda_mem_available(pf_backend *be) {
    size_t free_bytes = 0, total = 0;
    if (!enter(be) || !ok(be, cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo")) return 0;
    pf_mem_stats s;
    pf_cuda_allocator_stats(st_of(be)->alloc, &s);
    return free_bytes + (s.reserved - s.in_use);
}

static void cuda_destroy(pf_backend *be) {
    cuda_state *st = st_of(be);
    cudaSetDevice(st->device);
    cudaStreamSynchronize(st->stream);
    if (st->blas) cublasDestroy(st->blas);
    pf_cuda_allocator_free(st->alloc); // the cuBLAS workspace and the column scratch too
    cudaStreamDestroy(st->stream);
    free(st);
    free(be);
}

// ---- ops ----

template <typename T>
static void cuda_linear(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b) {
    pf_backend *be = y->be;
    if (!enter(be)) return;
    const int64_t n = w->shape[0], k = w->shape[1], m = n ? pf_numel(y) / n : 0;
    if (!fits_int(be, "linear", m, n, k)) return;
    T *yp = P<T>(y);
    if (b && !ok(be, pf_cuda_fill_bias(yp, P<T>(b), st_of(y)->vec, 1, n, m * n, stream_of(y)), "linear bias")) return;
    // y[m, n] = x[m, k] @ w[n, k]^T (+ y holding the bias)
    const float beta = b ? 1.0f : 0.0f;
    ok_blas(be, pf_cuda_gemm(st_of(y)->blas, 0, 1, m, n, k, 1.0f, P<T>(x), k, 0, P<T>(w), k, 0, beta, yp, n, 0, 1),
            "linear: cublasGemmEx");
}

// The column scratch of the default conv2d path: st->col grown to at least n
// elements of T. Stream order makes reuse safe: the next convolution's im2col
// is enqueued after the previous one's product. NULL (and the sticky error) on failure.
template <typename T>
static T *col_scratch(pf_backend *be, int64_t n) {
    cuda_state *st = st_of(be);
    const size_t bytes = (size_t)n * sizeof(T);
    if (st->col_bytes < bytes) {
        put(be, st->col);
        st->col = NULL;
        st->col_bytes = 0;
        if (!(st->col = get(be, bytes, "conv2d"))) return NULL;
        st->col_bytes = bytes;
    }
    return (T *)st->col;
}

// Cutting total into pieces of at most `most`: the size of each of the
// ceil(total / most) pieces when they are made as even as possible (16 rows
// in tiles of at most 14 give 8 + 8, not 14 + 2).
static int64_t even_piece(int64_t total, int64_t most) {
    const int64_t pieces = (total + most - 1) / most;
    return (total + pieces - 1) / pieces;
}

// im2col + one cuBLAS product per tile: y_img[co, P] = w[co, kk] @ col_img[kk, P].
// Whole images are unfolded together when their columns fit the budget (one
// strided-batched product for all of them); otherwise one image's output rows
// are unfolded in tiles. The default path (budget COL_BUDGET_FAST, the
// backend's persistent scratch, 16-byte im2col and bias stores) evens out its
// chunks and tiles, so the last is not a sliver; PERFLOW_CUDA_CONV=legacy
// takes the previous path (COL_BUDGET, per-call scratch, scalar im2col).
template <typename T>
static void cuda_conv2d(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b, int stride,
                        int pad) {
    pf_backend *be = y->be;
    if (!enter(be)) return;
    cuda_state *st = st_of(y);
    const int64_t n = x->shape[0], ci = x->shape[1], h = x->shape[2], wi = x->shape[3];
    const int64_t co = w->shape[0], kh = w->shape[2], kw = w->shape[3];
    const int64_t ho = y->shape[2], wo = y->shape[3], plane = ho * wo, kk = ci * kh * kw;
    if (pf_numel(y) == 0) return;
    if (!fits_int(be, "conv2d", co, plane, kk)) return;
    const int legacy = st->legacy_conv, vec = st->vec && !legacy;
    T *yp = P<T>(y);
    const T *xp = P<T>(x), *wp = P<T>(w);
    if (b && !ok(be, pf_cuda_fill_bias(yp, P<T>(b), vec, plane, co, pf_numel(y), st->stream), "conv2d bias")) return;
    const float beta = b ? 1.0f : 0.0f;
    if (kh == 1 && kw == 1 && stride == 1 && pad == 0) { // x[img] already is the column matrix [ci, P]
        ok_blas(be,
                pf_cuda_gemm(st->blas, 0, 0, co, plane, ci, 1.0f, wp, ci, 0, xp, plane, ci * plane, beta, yp, plane,
                             co * plane, n),
                "conv2d 1x1: cublasGemmStridedBatchedEx");
        return;
    }
    const int64_t budget = (legacy ? COL_BUDGET_BYTES : COL_BUDGET_FAST_BYTES) / (int64_t)sizeof(T);
    const int64_t per_img = kk * plane;
    if (per_img <= budget) {
        int64_t imgs = n < budget / per_img ? n : budget / per_img;
        if (!legacy) imgs = even_piece(n, imgs);
        T *col = legacy ? (T *)get(be, (size_t)(imgs * per_img) * sizeof(T), "conv2d")
                        : col_scratch<T>(be, imgs * per_img);
        if (!col) return;
        for (int64_t i0 = 0; i0 < n; i0 += imgs) {
            const int64_t cnt = n - i0 < imgs ? n - i0 : imgs;
            if (!ok(be, pf_cuda_im2col(col, xp + i0 * ci * h * wi, vec, cnt, ci, h, wi, (int)kh, (int)kw, stride, pad,
                                       0, ho, wo, st->stream),
                    "conv2d im2col") ||
                !ok_blas(be, pf_cuda_gemm(st->blas, 0, 0, co, plane, kk, 1.0f, wp, kk, 0, col, plane, per_img, beta,
                                          yp + i0 * co * plane, plane, co * plane, cnt),
                         "conv2d: cublasGemmStridedBatchedEx"))
                break;
        }
        if (legacy) put(be, col);
        return;
    }
    int64_t tile = budget / (kk * wo);
    if (tile < 1) tile = 1;
    if (tile > ho) tile = ho;
    if (!legacy) tile = even_piece(ho, tile);
    T *col = legacy ? (T *)get(be, (size_t)(kk * tile * wo) * sizeof(T), "conv2d") : col_scratch<T>(be, kk * tile * wo);
    if (!col) return;
    for (int64_t img = 0; img < n && !be->failed; img++) {
        for (int64_t oh0 = 0; oh0 < ho; oh0 += tile) {
            const int64_t rows = ho - oh0 < tile ? ho - oh0 : tile, cols = rows * wo;
            // y_img[co, oh0 * wo + (0..cols)] = w[co, kk] @ col[kk, cols]; rows of y are `plane` apart
            if (!ok(be, pf_cuda_im2col(col, xp + img * ci * h * wi, vec, 1, ci, h, wi, (int)kh, (int)kw, stride, pad,
                                       oh0, rows, wo, st->stream),
                    "conv2d im2col") ||
                !ok_blas(be, pf_cuda_gemm(st->blas, 0, 0, co, cols, kk, 1.0f, wp, kk, 0, col, cols, 0, beta,
                                          yp + img * co * plane + oh0 * wo, plane, 0, 1),
                         "conv2d: cublasGemmEx"))
                break;
        }
    }
    if (legacy) put(be, col);
}

template <typename T>
static void cuda_group_norm(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma, const pf_tensor *beta,
                            int groups, float eps, int fuse_silu) {
    pf_backend *be = y->be;
    if (!enter(be)) return;
    const int64_t n = x->shape[0], c = x->shape[1], s = pf_numel_from(x, 2);
    if (n * c * s == 0) return;
    float *scratch = (float *)get(be, pf_cuda_group_norm_scratch(n, c, s, groups), "group_norm");
    if (!scratch) return;
    ok(be,
       pf_cuda_group_norm(P<T>(y), P<T>(x), P<T>(gamma), P<T>(beta), scratch, eps, fuse_silu, st_of(y)->vec, n, c, s,
                          groups, stream_of(y)),
       "group_norm");
    put(be, scratch);
}

template <typename T>
static void cuda_layer_norm(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma, const pf_tensor *beta,
                            float eps) {
    if (!enter(y->be)) return;
    const int64_t c = x->shape[x->ndim - 1], rows = c ? pf_numel(x) / c : 0;
    ok(y->be, pf_cuda_layer_norm(P<T>(y), P<T>(x), P<T>(gamma), P<T>(beta), eps, rows, c, stream_of(y)), "layer_norm");
}

template <typename T>
static void cuda_softmax(pf_tensor *y, const pf_tensor *x) {
    if (!enter(y->be)) return;
    const int64_t c = x->shape[x->ndim - 1], rows = c ? pf_numel(x) / c : 0;
    ok(y->be, pf_cuda_softmax(P<T>(y), P<T>(x), rows, c, stream_of(y)), "softmax");
}

template <typename T>
static void cuda_attention(pf_tensor *out, const pf_tensor *q, const pf_tensor *k, const pf_tensor *v, int heads,
                           int causal) {
    pf_backend *be = out->be;
    if (!enter(be)) return;
    const int64_t bsz = q->shape[0], lq = q->shape[1], lk = k->shape[1], c = q->shape[2];
    if (c / heads > PF_ATTN_MAX_HEAD_DIM || bsz * heads > 65535) {
        pf_backend_set_error(be, "cuda backend: attention with head dim %lld and %lld batch x heads is not supported "
                                 "(at most %d and 65535)",
                             (long long)(c / heads), (long long)(bsz * heads), PF_ATTN_MAX_HEAD_DIM);
        return;
    }
    ok(be,
       pf_cuda_attention(P<T>(out), P<T>(q), P<T>(k), P<T>(v), bsz, lq, lk, c, heads, causal,
                         st_of(be)->attention_kernel, stream_of(out)),
       "attention");
}

template <typename T>
static void cuda_activation(pf_tensor *y, const pf_tensor *x, pf_act act) {
    if (!enter(y->be)) return;
    ok(y->be, pf_cuda_activation(P<T>(y), P<T>(x), (int)act, st_of(y)->vec, pf_numel(x), stream_of(y)), "activation");
}

template <typename T>
static void cuda_geglu(pf_tensor *y, const pf_tensor *x) {
    if (!enter(y->be)) return;
    const int64_t nh = y->shape[y->ndim - 1], rows = nh ? pf_numel(y) / nh : 0;
    ok(y->be, pf_cuda_geglu(P<T>(y), P<T>(x), st_of(y)->vec, rows, nh, stream_of(y)), "geglu");
}

template <typename T>
static void binary(pf_tensor *y, const pf_tensor *a, const pf_tensor *b, int is_mul) {
    if (!enter(y->be)) return;
    const pf_bcast plan = pf_cuda_bcast_plan(a->ndim, a->shape, b->shape);
    ok(y->be, pf_cuda_binary(P<T>(y), P<T>(a), P<T>(b), &plan, is_mul, st_of(y)->vec, pf_numel(a), stream_of(y)),
       is_mul ? "mul" : "add");
}
template <typename T>
static void cuda_add(pf_tensor *y, const pf_tensor *a, const pf_tensor *b) { binary<T>(y, a, b, 0); }
template <typename T>
static void cuda_mul(pf_tensor *y, const pf_tensor *a, const pf_tensor *b) { binary<T>(y, a, b, 1); }

template <typename T>
static void cuda_scale(pf_tensor *y, const pf_tensor *x, float alpha, float beta) {
    if (!enter(y->be)) return;
    ok(y->be, pf_cuda_scale(P<T>(y), P<T>(x), alpha, beta, st_of(y)->vec, pf_numel(x), stream_of(y)), "scale");
}

template <typename T>
static void cuda_concat(pf_tensor *y, const pf_tensor *a, const pf_tensor *b, int axis) {
    if (!enter(y->be)) return;
    int64_t outer = 1;
    for (int i = 0; i < axis; i++) outer *= a->shape[i];
    ok(y->be,
       pf_cuda_concat(P<T>(y), P<T>(a), P<T>(b), st_of(y)->vec, outer, pf_numel_from(a, axis), pf_numel_from(b, axis),
                      stream_of(y)),
       "concat");
}

template <typename T>
static void cuda_upsample_nearest(pf_tensor *y, const pf_tensor *x) {
    if (!enter(y->be)) return;
    ok(y->be,
       pf_cuda_upsample_nearest(P<T>(y), P<T>(x), st_of(y)->vec, x->shape[0] * x->shape[1], x->shape[2], x->shape[3],
                                y->shape[2], y->shape[3], stream_of(y)),
       "upsample_nearest");
}

template <typename T>
static void cuda_permute(pf_tensor *y, const pf_tensor *x, const int *perm) {
    if (!enter(y->be)) return;
    ok(y->be, pf_cuda_permute(P<T>(y), P<T>(x), perm, x->ndim, x->shape, stream_of(y)), "permute");
}

// The ids are host memory the caller may reuse when this returns: they are
// copied to the device and waited for before the gather is enqueued.
template <typename T>
static void cuda_embedding(pf_tensor *y, const pf_tensor *table, const int32_t *ids, int64_t count) {
    pf_backend *be = y->be;
    if (!enter(be) || count == 0) return;
    cudaStream_t s = stream_of(y);
    int32_t *dids = (int32_t *)get(be, (size_t)count * sizeof *ids, "embedding");
    if (!dids) return;
    if (ok(be, cudaMemcpyAsync(dids, ids, (size_t)count * sizeof *ids, cudaMemcpyHostToDevice, s), "embedding ids") &&
        ok(be, cudaStreamSynchronize(s), "embedding ids"))
        ok(be, pf_cuda_embedding(P<T>(y), P<T>(table), dids, count, table->shape[1], s), "embedding");
    put(be, dids);
}

static void cuda_copy(pf_tensor *y, const pf_tensor *x) {
    if (!enter(y->be) || pf_nbytes(x) == 0) return;
    ok(y->be, cudaMemcpyAsync(y->data, x->data, pf_nbytes(x), cudaMemcpyDeviceToDevice, stream_of(y)), "copy");
}

template <typename T>
static pf_backend_ops cuda_ops_table() {
    pf_backend_ops o;
    memset(&o, 0, sizeof o);
    o.alloc = cuda_alloc;
    o.release = cuda_release;
    o.upload = cuda_upload;
    o.download = cuda_download;
    o.synchronize = cuda_synchronize;
    o.destroy = cuda_destroy;
    o.mem_available = cuda_mem_available;
    o.linear = cuda_linear<T>;
    o.conv2d = cuda_conv2d<T>;
    o.group_norm = cuda_group_norm<T>;
    o.layer_norm = cuda_layer_norm<T>;
    o.softmax = cuda_softmax<T>;
    o.attention = cuda_attention<T>;
    o.activation = cuda_activation<T>;
    o.geglu = cuda_geglu<T>;
    o.add = cuda_add<T>;
    o.mul = cuda_mul<T>;
    o.scale = cuda_scale<T>;
    o.concat = cuda_concat<T>;
    o.upsample_nearest = cuda_upsample_nearest<T>;
    o.permute = cuda_permute<T>;
    o.embedding = cuda_embedding<T>;
    o.copy = cuda_copy;
    return o;
}

// ---- creation and queries ----

int pf_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // no driver / no device: not an error for the caller
        return 0;
    }
    return n;
}

// pf_backend_cuda_new and pf_backend_cuda_new_f32: a backend of compute dtype dt.
static pf_backend *cuda_new(int device, pf_dtype dt, pf_error *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        pf_fail(err, "CUDA is not usable on this machine: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
        return NULL;
    }
    if (count == 0) {
        pf_fail(err, "no CUDA device found");
        return NULL;
    }
    if (device < 0 || device >= count) {
        pf_fail(err, "CUDA device %d does not exist (this machine has %d: cuda:0 to cuda:%d)", device, count,
                count - 1);
        return NULL;
    }
    cuda_state *st = (cuda_state *)PF_CALLOC(1, sizeof *st);
    st->device = device;
    const char *attn = getenv("PERFLOW_CUDA_ATTENTION");
    st->attention_kernel = !attn                     ? PF_ATTN_DEFAULT
                           : !strcmp(attn, "generic") ? PF_ATTN_GENERIC
                           : !strcmp(attn, "wmma")    ? PF_ATTN_WMMA
                                                      : PF_ATTN_DEFAULT;
    const char *conv = getenv("PERFLOW_CUDA_CONV"), *vec = getenv("PERFLOW_CUDA_VECTOR");
    st->legacy_conv = conv && !strcmp(conv, "legacy");
    st->vec = !(vec && !strcmp(vec, "0"));
    cublasStatus_t bs = CUBLAS_STATUS_SUCCESS;
    const char *what = "cudaSetDevice";
    if ((e = cudaSetDevice(device)) != cudaSuccess) goto fail;
    what = "cudaStreamCreate";
    if ((e = cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking)) != cudaSuccess) goto fail;
    st->alloc = pf_cuda_allocator_new(st->stream);
    what = "cuBLAS workspace";
    if (!(st->blas_ws = pf_cuda_allocator_get(st->alloc, BLAS_WORKSPACE, &e))) goto fail;
    what = "cublasCreate";
    if ((bs = cublasCreate(&st->blas)) != CUBLAS_STATUS_SUCCESS) goto fail_blas;
    what = "cublasSetStream";
    if ((bs = cublasSetStream(st->blas, st->stream)) != CUBLAS_STATUS_SUCCESS) goto fail_blas;
    what = "cublasSetWorkspace";
    if ((bs = cublasSetWorkspace(st->blas, st->blas_ws, BLAS_WORKSPACE)) != CUBLAS_STATUS_SUCCESS) goto fail_blas;
    {
        pf_backend *be = (pf_backend *)PF_CALLOC(1, sizeof *be);
        be->name = "cuda";
        be->ops = dt == PF_F32 ? &cuda_ops_f32 : &cuda_ops_f16;
        be->compute_dtype = dt;
        be->device = device;
        be->impl = st;
        return be;
    }
fail_blas:
    pf_fail(err, "CUDA device %d: %s: %s", device, what, cublasGetStatusString(bs));
    goto cleanup;
fail:
    cudaGetLastError();
    pf_fail(err, "CUDA device %d: %s: %s (%s)", device, what, cudaGetErrorString(e), cudaGetErrorName(e));
cleanup:
    if (st->blas) cublasDestroy(st->blas);
    pf_cuda_allocator_free(st->alloc);
    if (st->stream) cudaStreamDestroy(st->stream);
    free(st);
    return NULL;
}

pf_backend *pf_backend_cuda_new(int device, pf_error *err) { return cuda_new(device, PF_F16, err); }

pf_backend *pf_backend_cuda_new_f32(int device, pf_error *err) { return cuda_new(device, PF_F32, err); }

void pf_backend_cuda_mem_stats(const pf_backend *be, pf_mem_stats *out) {
    memset(out, 0, sizeof *out);
    if (is_cuda(be)) pf_cuda_allocator_stats(st_of(be)->alloc, out);
}

void pf_backend_cuda_reset_peak(pf_backend *be) {
    if (is_cuda(be)) pf_cuda_allocator_reset_peak(st_of(be)->alloc);
}
