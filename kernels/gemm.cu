// gemm.cu - cuBLAS is column-major; a row-major C[m, n] is the column-major
// C^T[n, m], and C^T = op(B)^T op(A)^T, so every product calls cuBLAS with
// the operands swapped and m, n exchanged. CUBLAS_COMPUTE_32F on fp16 data
// takes the tensor cores with float accumulation (torch's default for half
// matmuls, which also keeps fp16 reduced-precision reductions off).
#include "gemm.cuh"

cublasStatus_t pf_cuda_gemm(cublasHandle_t h, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                            const __half *a, int64_t lda, int64_t stride_a, const __half *b, int64_t ldb,
                            int64_t stride_b, float beta, __half *c, int64_t ldc, int64_t stride_c, int64_t batch) {
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    const cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        return cublasGemmEx(h, opb, opa, (int)n, (int)m, (int)k, &alpha, b, CUDA_R_16F, (int)ldb, a, CUDA_R_16F,
                            (int)lda, &beta, c, CUDA_R_16F, (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return cublasGemmStridedBatchedEx(h, opb, opa, (int)n, (int)m, (int)k, &alpha, b, CUDA_R_16F, (int)ldb,
                                      (long long)stride_b, a, CUDA_R_16F, (int)lda, (long long)stride_a, &beta, c,
                                      CUDA_R_16F, (int)ldc, (long long)stride_c, (int)batch, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT);
}

static __global__ void fill_bias_k(__half *y, const __half *bias, int64_t inner, int64_t nb, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = bias[(i / inner) % nb];
}

// fill_bias_k in groups of 8: with inner % 8 == 0 a group shares one bias;
// with inner == 1 (and nb % 8 == 0) it takes 8 consecutive ones.
static __global__ void fill_bias8_k(__half *y, const __half *bias, int64_t inner, int64_t nb, int64_t n8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        __align__(16) __half o[8];
        if (inner == 1) {
            const int64_t j = 8 * i % nb;
#pragma unroll
            for (int t = 0; t < 8; t++) o[t] = bias[j + t];
        } else {
            const __half v = bias[8 * i / inner % nb];
#pragma unroll
            for (int t = 0; t < 8; t++) o[t] = v;
        }
        *reinterpret_cast<uint4 *>(y + 8 * i) = *reinterpret_cast<const uint4 *>(o);
    }
}

cudaError_t pf_cuda_fill_bias(__half *y, const __half *bias, int vec, int64_t inner, int64_t nb, int64_t n,
                              cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (vec && (inner % 8 == 0 || (inner == 1 && nb % 8 == 0)) && pf_vec8(n, y))
        fill_bias8_k<<<pf_grid(n / 8), PF_THREADS, 0, stream>>>(y, bias, inner, nb, n / 8);
    else
        fill_bias_k<<<pf_grid(n), PF_THREADS, 0, stream>>>(y, bias, inner, nb, n);
    return cudaGetLastError();
}
