// group_norm.cuh - torch.nn.GroupNorm (+ optional fused SiLU) over x[N, C, S].
// CPU twin: cpu_group_norm in engine/backend_cpu.c.
#ifndef PF_KERNELS_GROUP_NORM_CUH
#define PF_KERNELS_GROUP_NORM_CUH

#include "common.cuh"

// Bytes of device scratch pf_cuda_group_norm needs for these sizes.
size_t pf_cuda_group_norm_scratch(int64_t n, int64_t c, int64_t s, int groups);
// y[n, c, s] = (x - mean_g) * rstd_g * gamma[c] + beta[c] (then SiLU when fuse_silu),
// statistics over each group of c / groups channels, biased variance, float32.
// y may equal x. scratch: pf_cuda_group_norm_scratch(...) bytes of device memory.
// vec: 16-byte accesses where s % 8 == 0 and pf_vec8 allows (chunk bounds on
// multiples of 8, so sums may differ from the scalar path in the last bits).
// T: __half or float.
template <typename T>
cudaError_t pf_cuda_group_norm(T *y, const T *x, const T *gamma, const T *beta, float *scratch,
                               float eps, int fuse_silu, int vec, int64_t n, int64_t c, int64_t s, int groups,
                               cudaStream_t stream);

#endif
