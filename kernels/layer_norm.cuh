// layer_norm.cuh - torch.nn.LayerNorm over the last dimension of x[rows, C].
// CPU twin: cpu_layer_norm in engine/backend_cpu.c.
#ifndef PF_KERNELS_LAYER_NORM_CUH
#define PF_KERNELS_LAYER_NORM_CUH

#include "common.cuh"

// y[r, i] = (x[r, i] - mean_r) * rstd_r * gamma[i] + beta[i], float32 statistics
// (two passes, biased variance). y may equal x. T: __half or float.
template <typename T>
cudaError_t pf_cuda_layer_norm(T *y, const T *x, const T *gamma, const T *beta, float eps,
                               int64_t rows, int64_t c, cudaStream_t stream);

#endif
