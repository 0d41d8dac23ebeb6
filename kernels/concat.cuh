// concat.cuh - torch.cat([a, b], dim). CPU twin: cpu_concat in engine/backend_cpu.c.
#ifndef PF_KERNELS_CONCAT_CUH
#define PF_KERNELS_CONCAT_CUH

#include "common.cuh"

// With outer = product of the dimensions before the axis, na / nb = numel of a / b
// from the axis on: y[o] = (a[o, 0:na], b[o, 0:nb]) for o < outer.
cudaError_t pf_cuda_concat(__half *y, const __half *a, const __half *b, int64_t outer, int64_t na, int64_t nb,
                           cudaStream_t stream);

#endif
