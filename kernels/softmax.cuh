// softmax.cuh - softmax over the last dimension of x[rows, C], in float32.
// CPU twin: cpu_softmax in engine/backend_cpu.c.
#ifndef PF_KERNELS_SOFTMAX_CUH
#define PF_KERNELS_SOFTMAX_CUH

#include "common.cuh"

// y[r, :] = exp(x[r, :] - max) / sum. y may equal x. T: __half or float.
template <typename T>
cudaError_t pf_cuda_softmax(T *y, const T *x, int64_t rows, int64_t c, cudaStream_t stream);

#endif
