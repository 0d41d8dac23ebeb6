// gemm.cuh - row-major matrix products on cuBLAS (fp16 operands with fp32
// accumulation on the tensor cores, or fp32 throughout), and the bias fill
// that precedes them.
// CPU twin: gemm() and fill_rows() in engine/backend_cpu.c.
#ifndef PF_KERNELS_GEMM_CUH
#define PF_KERNELS_GEMM_CUH

#include <cublas_v2.h>

#include "common.cuh"

// For each of `batch` problems p:
//   C_p[m, n] = alpha * op(A_p)[m, k] @ op(B_p)[k, n] + beta * C_p,
// row-major, op transposing A (stored [k, m]) when ta and B (stored [n, k]) when
// tb; X_p = X + p * stride_x (stride 0 shares an operand). Sizes and leading
// dimensions must fit in an int (the caller checks). T: __half or float; both
// accumulate in float32 (CUBLAS_COMPUTE_32F).
template <typename T>
cublasStatus_t pf_cuda_gemm(cublasHandle_t h, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                            const T *a, int64_t lda, int64_t stride_a, const T *b, int64_t ldb, int64_t stride_b,
                            float beta, T *c, int64_t ldc, int64_t stride_c, int64_t batch);

// y[i] = bias[(i / inner) % nb] for i < n: a bias per row of [.., nb, inner]
// (convolution channels: inner = H*W) or per column (linear: inner = 1).
// vec: 16-byte stores where inner % 8 == 0 (or inner == 1 and nb % 8 == 0)
// and pf_vec8 allows.
template <typename T>
cudaError_t pf_cuda_fill_bias(T *y, const T *bias, int vec, int64_t inner, int64_t nb, int64_t n,
                              cudaStream_t stream);

#endif
