/* backend.h - the interface every compute backend implements, and the ops
 * model code calls.
 *
 * Model code (clip.c, unet.c, vae.c, ...) only calls the pf_* functions below;
 * they dispatch on the output tensor's backend. The CPU backend
 * (backend_cpu.c) is the readable reference; the CUDA backend (kernels/)
 * implements the same table. A backend adds no op that model code could call
 * directly: new ops are added here, to every backend, with a parity test.
 *
 * Conventions: outputs first; all tensors of one call live on the same backend
 * and are in its compute dtype; shapes are checked with PF_CHECK (model code
 * computes them, so a mismatch is a bug, not an input error). Ops never
 * allocate their output: the caller passes it, so memory use is visible in
 * model code. Unless an op says so, outputs must not alias inputs. */
#ifndef PF_BACKEND_H
#define PF_BACKEND_H

#include <math.h>

#include "tensor.h"

typedef enum pf_act {
    PF_ACT_SILU = 0,       /* x * sigmoid(x) */
    PF_ACT_GELU = 1,       /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
    PF_ACT_GELU_TANH = 2,  /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    PF_ACT_QUICK_GELU = 3, /* x * sigmoid(1.702 x) (CLIP) */
} pf_act;

typedef struct pf_backend_ops {
    /* memory */
    void *(*alloc)(pf_backend *be, size_t nbytes);  /* NULL on failure */
    void (*release)(pf_backend *be, void *p);
    void (*upload)(pf_backend *be, pf_tensor *dst, const float *src);   /* host f32 -> dst */
    void (*download)(pf_backend *be, float *dst, const pf_tensor *src); /* src -> host f32 */
    void (*synchronize)(pf_backend *be);
    void (*destroy)(pf_backend *be);
    size_t (*mem_available)(pf_backend *be); /* see pf_backend_mem_available; never fails */

    /* ops: see the pf_* wrappers below for each contract */
    void (*linear)(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b);
    void (*conv2d)(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b,
                   int stride, int pad);
    void (*group_norm)(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma,
                       const pf_tensor *beta, int groups, float eps, int fuse_silu);
    void (*layer_norm)(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma,
                       const pf_tensor *beta, float eps);
    void (*softmax)(pf_tensor *y, const pf_tensor *x);
    void (*attention)(pf_tensor *out, const pf_tensor *q, const pf_tensor *k, const pf_tensor *v,
                      int heads, int causal);
    void (*activation)(pf_tensor *y, const pf_tensor *x, pf_act act);
    void (*geglu)(pf_tensor *y, const pf_tensor *x);
    void (*add)(pf_tensor *y, const pf_tensor *a, const pf_tensor *b);
    void (*mul)(pf_tensor *y, const pf_tensor *a, const pf_tensor *b);
    void (*scale)(pf_tensor *y, const pf_tensor *x, float alpha, float beta);
    void (*concat)(pf_tensor *y, const pf_tensor *a, const pf_tensor *b, int axis);
    void (*upsample_nearest)(pf_tensor *y, const pf_tensor *x);
    void (*permute)(pf_tensor *y, const pf_tensor *x, const int *perm);
    void (*embedding)(pf_tensor *y, const pf_tensor *table, const int32_t *ids, int64_t n);
    void (*copy)(pf_tensor *y, const pf_tensor *x);
} pf_backend_ops;

struct pf_backend {
    const char *name;            /* "cpu", "cuda" */
    const pf_backend_ops *ops;
    pf_dtype compute_dtype;      /* dtype of activations and weights on this backend */
    int device;                  /* the CUDA device index; 0 for the CPU */
    int failed;                  /* sticky error flag, see tensor.h */
    char errmsg[512];
    void *impl;                  /* backend private state */
};

/* CPU backend. threads <= 0: use all cores. Never fails. */
pf_backend *pf_backend_cpu_new(int threads);

/* CUDA backend on device `device` (0-based), kernels/backend_cuda.cu: weights and
 * activations are float16 on the device (compute_dtype PF_F16), upload and
 * download convert from and to float32; matrix products run on cuBLAS with
 * float32 accumulation, normalisations, softmax and attention accumulate in
 * float32. Returns NULL and fills err when this binary was built without CUDA,
 * no driver or no such device is present, or the device cannot be set up.
 * Environment: PERFLOW_CUDA_ATTENTION=generic forces the non-tensor-core
 * attention kernel (for parity tests and debugging). */
pf_backend *pf_backend_cuda_new(int device, pf_error *err);
/* A CUDA backend whose compute dtype is PF_F32: weights and activations float32
 * on the device, every op of the table supported, products on cuBLAS in full
 * float32 (CUBLAS_COMPUTE_32F, no TF32), attention on the CUDA-core kernel.
 * For models whose activations overflow float16 (SDXL's VAE; diffusers'
 * force_upcast). Same errors as pf_backend_cuda_new. */
pf_backend *pf_backend_cuda_new_f32(int device, pf_error *err);
/* Number of CUDA devices this binary can use: 0 when built without CUDA or when
 * no driver or device is present. Never fails. */
int pf_cuda_device_count(void);

typedef struct pf_mem_stats {
    size_t in_use, peak_in_use;     /* bytes held by tensors and op scratch */
    size_t reserved, peak_reserved; /* bytes taken from the device: in use + cached for reuse */
    long device_allocs;             /* device allocations (cudaMalloc calls) so far */
} pf_mem_stats;
/* Device memory of a CUDA backend; all zero for any other backend. peak_reserved
 * is the backend's peak device memory (what the GPU had to provide). */
void pf_backend_cuda_mem_stats(const pf_backend *be, pf_mem_stats *out);
/* Restarts both peaks from the current values (no-op for other backends). */
void pf_backend_cuda_reset_peak(pf_backend *be);

/* Bytes of memory that tensors and op scratch on `be` can still take, the budget
 * model code compares its estimates against (pf_vae_tiling_needed):
 *   cpu:  MemAvailable of /proc/meminfo (the kernel's estimate of what can be
 *         allocated without swapping, page cache included); where that cannot be
 *         read, free pages times the page size (sysconf, which leaves the page
 *         cache out and so errs low), and SIZE_MAX where even that is unknown.
 *         cgroup (container) limits are not consulted.
 *   cuda: cudaMemGetInfo's free bytes plus the blocks the caching allocator holds
 *         for reuse (it gives them back to the driver when a cudaMalloc fails);
 *         0 when the device cannot be queried, with the backend's sticky error set.
 * PERFLOW_MEM_BUDGET, when set to a plain decimal byte count (digits only, no
 * sign, spaces or suffix, at most SIZE_MAX), replaces the measured value for
 * every backend: for tests, and for operators who want to cap what one process
 * plans to use. Any other value is ignored (the measured value is returned).
 * Not a reservation: other processes may take the memory a moment later. */
size_t pf_backend_mem_available(pf_backend *be);

/* A backend by name, for --device: "cpu", "cuda" (device 0) or "cuda:N"; NULL, ""
 * or "auto" take $PERFLOW_DEVICE when set, else CUDA device 0 when one is usable,
 * else the CPU. threads is the CPU backend's team size (<= 0: all cores).
 * Returns NULL and fills err for an unknown name or an unusable CUDA device
 * (asked for explicitly, or through $PERFLOW_DEVICE). */
pf_backend *pf_backend_open(const char *device, int threads, pf_error *err);
/* A backend that computes in float32 on be's device, for the modules diffusers
 * runs in float32 beside a float16 model (SDXL's VAE with force_upcast). When be
 * already computes in float32 (the CPU backend) it is be itself and *owned is 0;
 * else it is a new backend (pf_backend_cuda_new_f32) that the caller frees after
 * the tensors made on it, and *owned is 1. NULL with err set when it cannot be made. */
pf_backend *pf_backend_f32_twin(pf_backend *be, int *owned, pf_error *err);
/* Releases the backend (tensors made on it must be freed first). */
void pf_backend_free(pf_backend *be);

/* Sticky error: the first failure's message is kept; later ones are dropped. */
void pf_backend_set_error(pf_backend *be, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Returns 0 when the backend has not failed, else fills err and returns -1. */
int pf_backend_ok(pf_backend *be, pf_error *err);
void pf_synchronize(pf_backend *be);

/* y[..., N] = x[..., K] @ w[N, K]^T + b[N]   (b may be NULL) - torch.nn.Linear */
void pf_linear(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b);
/* y[N, Co, Ho, Wo] = conv2d(x[N, Ci, H, W], w[Co, Ci, kh, kw]) + b[Co], square stride and
 * zero padding on all sides; Ho = (H + 2 pad - kh) / stride + 1. b may be NULL. */
void pf_conv2d(pf_tensor *y, const pf_tensor *x, const pf_tensor *w, const pf_tensor *b,
               int stride, int pad);
/* torch.nn.GroupNorm over x[N, C, ...] with per-channel affine gamma[C], beta[C];
 * fuse_silu applies SiLU to the result. y may alias x. */
void pf_group_norm(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma,
                   const pf_tensor *beta, int groups, float eps, int fuse_silu);
/* torch.nn.LayerNorm over the last dimension C of x[..., C]; y may alias x. */
void pf_layer_norm(pf_tensor *y, const pf_tensor *x, const pf_tensor *gamma,
                   const pf_tensor *beta, float eps);
/* Softmax over the last dimension. y may alias x. */
void pf_softmax(pf_tensor *y, const pf_tensor *x);
/* Multi-head scaled dot-product attention, heads packed in the channel axis:
 * q[B, Lq, C], k[B, Lk, C], v[B, Lk, C] -> out[B, Lq, C], head h uses channels
 * [h*D, (h+1)*D), D = C / heads, scale 1/sqrt(D); causal masks key j > query i
 * (CLIP). Computed in float32 whatever the dtype (upcast_attention is implied). */
void pf_attention(pf_tensor *out, const pf_tensor *q, const pf_tensor *k, const pf_tensor *v,
                  int heads, int causal);
/* Elementwise activation; y may alias x. */
void pf_activation(pf_tensor *y, const pf_tensor *x, pf_act act);
/* diffusers GEGLU after its projection: x[..., 2N] = (h, gate) -> y[..., N] = h * gelu(gate). */
void pf_geglu(pf_tensor *y, const pf_tensor *x);
/* y = a + b and y = a * b, with b broadcast to a's shape: b has a's ndim and each of
 * its dimensions equals a's or is 1 (numpy rules after left-padding b's shape with 1s).
 * y has a's shape and may alias a. */
void pf_add(pf_tensor *y, const pf_tensor *a, const pf_tensor *b);
void pf_mul(pf_tensor *y, const pf_tensor *a, const pf_tensor *b);
/* y = alpha * x + beta; y may alias x. */
void pf_scale(pf_tensor *y, const pf_tensor *x, float alpha, float beta);
/* torch.cat([a, b], dim=axis); a and b agree on every other dimension. */
void pf_concat(pf_tensor *y, const pf_tensor *a, const pf_tensor *b, int axis);
/* y[N, C, Ho, Wo] = F.interpolate(x[N, C, H, W], size=(Ho, Wo), mode="nearest"):
 * output row i reads input row pf_nearest_index(i, H, Ho), columns alike. Any
 * sizes >= 1; 2x is diffusers' Upsample2D, other sizes its forwarded
 * upsample_size for latents that are not multiples of 2^(blocks-1). */
void pf_upsample_nearest(pf_tensor *y, const pf_tensor *x);
/* torch's nearest source index (aten/src/ATen/native/UpSample.h, nearest_idx):
 * identity when the sizes agree, i >> 1 when out = 2 in, else
 * min(floor(i * (float)in / out), in - 1) in float32, as torch computes it. */
static inline int64_t pf_nearest_index(int64_t i, int64_t in, int64_t out) {
    if (out == in) return i;
    if (out == 2 * in) return i >> 1;
    const float scale = (float)in / (float)out;
    int64_t s = (int64_t)floorf((float)i * scale);
    return s < in - 1 ? s : in - 1;
}
/* y = x.permute(perm) made contiguous; perm has x->ndim entries. */
void pf_permute(pf_tensor *y, const pf_tensor *x, const int *perm);
/* y[n, C] = table[ids[n], C] for n < count (ids are host memory, checked < V). */
void pf_embedding(pf_tensor *y, const pf_tensor *table, const int32_t *ids, int64_t count);
/* y = x (same numel). */
void pf_copy(pf_tensor *y, const pf_tensor *x);

#endif
