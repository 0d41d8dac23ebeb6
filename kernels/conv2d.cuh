// conv2d.cuh - the unfolding half of conv2d (im2col); backend_cuda.cu pairs it
// with a cuBLAS product per tile. CPU twin: im2col and cpu_conv2d in
// engine/backend_cpu.c.
#ifndef PF_KERNELS_CONV2D_CUH
#define PF_KERNELS_CONV2D_CUH

#include "common.cuh"

// For nimg images x[nimg, ci, h, w] (x points at the first) and output rows
// [oh0, oh0 + rows) of width wo: col[img, ci*kh*kw, rows*wo], row (c, i, j) holding
// the input pixel under kernel tap (i, j) for each output position (0 in the
// padding). vec: 8 positions a thread and one 16-byte store, where wo % 8 == 0
// and col is 16-byte aligned (the result is the same either way). T: __half or float.
template <typename T>
cudaError_t pf_cuda_im2col(T *col, const T *x, int vec, int64_t nimg, int64_t ci, int64_t h, int64_t w,
                           int kh, int kw, int stride, int pad, int64_t oh0, int64_t rows, int64_t wo,
                           cudaStream_t stream);

#endif
