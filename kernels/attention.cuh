// attention.cuh - fused multi-head scaled dot-product attention,
// softmax(q k^T / sqrt(D)) v, never materialising the score matrix.
// CPU twin: cpu_attention in engine/backend_cpu.c.
#ifndef PF_KERNELS_ATTENTION_CUH
#define PF_KERNELS_ATTENTION_CUH

#include "common.cuh"

// Largest head dimension D = c / heads the kernels support.
#define PF_ATTN_MAX_HEAD_DIM 512

// q[batch, lq, c], k and v [batch, lk, c], heads packed in c (head h: channels
// [h D, (h+1) D)) -> out[batch, lq, c]. causal masks key j > query i. Scores,
// softmax and the output accumulate in float32. Requires D <= PF_ATTN_MAX_HEAD_DIM
// (SD's VAE attends with one head of 512) and batch * heads <= 65535.
// kernel: one of the PF_ATTN_* below (parity tests run each). lk == 0
// gives NaN rows, as the CPU reference. T: __half (tensor cores where shared
// memory allows) or float (always the CUDA-core kernel, float32 throughout).
// The kernel pf_cuda_attention takes, for the parity tests and as a way around
// a kernel failing on some GPU (PERFLOW_CUDA_ATTENTION, kernels/backend_cuda.cu).
enum {
    PF_ATTN_DEFAULT = 0, // attention_mma.cu where it applies, else attn_wmma, else attn_generic
    PF_ATTN_GENERIC = 1, // attn_generic (CUDA cores) only
    PF_ATTN_WMMA = 2,    // attn_wmma where shared memory allows, else attn_generic (the earlier default)
};
template <typename T>
cudaError_t pf_cuda_attention(T *out, const T *q, const T *k, const T *v, int64_t batch,
                              int64_t lq, int64_t lk, int64_t c, int heads, int causal, int kernel,
                              cudaStream_t stream);

#endif
