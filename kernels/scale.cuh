// scale.cuh - y = alpha * x + beta. CPU twin: cpu_scale in engine/backend_cpu.c.
#ifndef PF_KERNELS_SCALE_CUH
#define PF_KERNELS_SCALE_CUH

#include "common.cuh"

// y may equal x. vec: 16-byte accesses where pf_vec8 allows. T: __half or float.
template <typename T>
cudaError_t pf_cuda_scale(T *y, const T *x, float alpha, float beta, int vec, int64_t n, cudaStream_t stream);

#endif
