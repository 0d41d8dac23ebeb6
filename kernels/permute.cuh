// permute.cuh - y = x.permute(perm).contiguous(). CPU twin: cpu_permute in
// engine/backend_cpu.c.
#ifndef PF_KERNELS_PERMUTE_CUH
#define PF_KERNELS_PERMUTE_CUH

#include "common.cuh"

// x has ndim dims of x_shape; y's dim i is x's dim perm[i]. T: __half or float.
template <typename T>
cudaError_t pf_cuda_permute(T *y, const T *x, const int *perm, int ndim, const int64_t *x_shape,
                            cudaStream_t stream);

#endif
