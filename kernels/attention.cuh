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
// force_generic skips the tensor-core kernel (parity tests run both). lk == 0
// gives NaN rows, as the CPU reference. T: __half (tensor cores where shared
// memory allows) or float (always the CUDA-core kernel, float32 throughout).
template <typename T>
cudaError_t pf_cuda_attention(T *out, const T *q, const T *k, const T *v, int64_t batch,
                              int64_t lq, int64_t lk, int64_t c, int heads, int causal, int force_generic,
                              cudaStream_t stream);

#endif
