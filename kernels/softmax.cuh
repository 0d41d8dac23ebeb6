// softmax.cuh - softmax over the last dimension of x[rows, C], in float32.
// CPU twin: cpu_softmax in engine/backend_cpu.c.
#ifndef PF_KERNELS_SOFTMAX_CUH
#define PF_KERNELS_SOFTMAX_CUH

#include "common.cuh"

// y[r, :] = exp(x[r, :] - max) / sum. y may equal x.
cudaError_t pf_cuda_softmax(__half *y, const __half *x, int64_t rows, int64_t c, cudaStream_t stream);

#endif
