// concat.cuh - torch.cat([a, b], dim). CPU twin: cpu_concat in engine/backend_cpu.c.
#ifndef PF_KERNELS_CONCAT_CUH
#define PF_KERNELS_CONCAT_CUH

#include "common.cuh"

// With outer = product of the dimensions before the axis, na / nb = numel of a / b
// from the axis on: y[o] = (a[o, 0:na], b[o, 0:nb]) for o < outer.
// vec: 16-byte copies where na and nb are whole 16 bytes (8 halves, 4 floats) and
// the pointers are 16-byte aligned. T: __half or float.
template <typename T>
cudaError_t pf_cuda_concat(T *y, const T *a, const T *b, int vec, int64_t outer, int64_t na, int64_t nb,
                           cudaStream_t stream);

#endif
