// upsample.cuh - nearest-neighbour 2x upsampling of x[N, C, H, W].
// CPU twin: cpu_upsample_nearest2x in engine/backend_cpu.c.
#ifndef PF_KERNELS_UPSAMPLE_CUH
#define PF_KERNELS_UPSAMPLE_CUH

#include "common.cuh"

// rows = N * C * H input rows of w values: y[N, C, 2H, 2W], y[.., 2h + i, 2x + j] = x[.., h, x].
// vec: 8 outputs (from 4 inputs) a thread where w % 4 == 0 and the pointers allow.
cudaError_t pf_cuda_upsample_nearest2x(__half *y, const __half *x, int vec, int64_t rows, int64_t w,
                                       cudaStream_t stream);

#endif
