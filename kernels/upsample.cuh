// upsample.cuh - nearest-neighbour upsampling of x[N, C, H, W] to y[N, C, Ho, Wo]
// (F.interpolate(mode="nearest", size=(Ho, Wo))).
// CPU twin: cpu_upsample_nearest in engine/backend_cpu.c.
#ifndef PF_KERNELS_UPSAMPLE_CUH
#define PF_KERNELS_UPSAMPLE_CUH

#include "common.cuh"

// planes = N * C: y[p, i, j] = x[p, pf_nearest_index(i, h, ho), pf_nearest_index(j, w, wo)].
// vec: for exact 2x with w % 4 == 0, 8 outputs (from 4 inputs) a thread where the pointers
// allow (__half only). T: __half or float.
template <typename T>
cudaError_t pf_cuda_upsample_nearest(T *y, const T *x, int vec, int64_t planes, int64_t h, int64_t w,
                                     int64_t ho, int64_t wo, cudaStream_t stream);

#endif
