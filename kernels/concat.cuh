// concat.cuh - torch.cat([a, b], dim). CPU twin: cpu_concat in engine/backend_cpu.c.
#ifndef PF_KERNELS_CONCAT_CUH
#define PF_KERNELS_CONCAT_CUH

#include "common.cuh"

// With outer = product of the dimensions before the axis, na / nb = numel of a / b
// from the axis on: y[o] = (a[o, 0:na], b[o, 0:nb]) for o < outer.
// vec: 16-byte copies where na and nb are multiples of 8 and the pointers allow.
cudaError_t pf_cuda_concat(__half *y, const __half *a, const __half *b, int vec, int64_t outer, int64_t na,
                           int64_t nb, cudaStream_t stream);

#endif
