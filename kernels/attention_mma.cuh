// attention_mma.cuh - fp16 attention on mma.sync with scores, probabilities and
// output in registers (FlashAttention-2's forward): the default kernel of
// pf_cuda_attention (attention.cuh) where it applies. CPU twin: cpu_attention in
// engine/backend_cpu.c.
#ifndef PF_KERNELS_ATTENTION_MMA_CUH
#define PF_KERNELS_ATTENTION_MMA_CUH

#include "common.cuh"

// Largest head dimension of this kernel (SD-1.5's deepest level: 160).
#define PF_ATTN_MMA_MAX_HEAD_DIM 160

// Whether pf_cuda_attention_mma computes this attention: not causal, head dim
// 1..PF_ATTN_MMA_MAX_HEAD_DIM.
bool pf_cuda_attention_mma_fits(int d, int causal);

// out[b, lq, c] = softmax(q k^T * scale) v per head, heads packed in c (head h:
// channels [h d, (h+1) d)), bh = batch * heads <= 65535, lk >= 1. Scores and
// sums in float32, probabilities rounded to fp16 for the P V product.
cudaError_t pf_cuda_attention_mma(__half *out, const __half *q, const __half *k, const __half *v, int64_t bh,
                                  int64_t lq, int64_t lk, int64_t c, int heads, int d, float scale,
                                  cudaStream_t stream);

#endif
