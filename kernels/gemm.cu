// gemm.cu - cuBLAS is column-major; a row-major C[m, n] is the column-major
// C^T[n, m], and C^T = op(B)^T op(A)^T, so every product calls cuBLAS with
// the operands swapped and m, n exchanged. CUBLAS_COMPUTE_32F on fp16 data
// takes the tensor cores with float accumulation (torch's default for half
// matmuls, which also keeps fp16 reduced-precision reductions off). On float
// data the same compute type is full float32 on the CUDA cores: TF32 would
// take CUBLAS_COMPUTE_32F_FAST_TF32 or the TF32 math mode, neither of which
// the backend sets (the fp32 backend exists for accuracy, torch's fp32 default).
#include "gemm.cuh"

template <typename T>
cublasStatus_t pf_cuda_gemm(cublasHandle_t h, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                            const T *a, int64_t lda, int64_t stride_a, const T *b, int64_t ldb, int64_t stride_b,
                            float beta, T *c, int64_t ldc, int64_t stride_c, int64_t batch) {
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    const cudaDataType_t dt = std::is_same<T, float>::value ? CUDA_R_32F : CUDA_R_16F;
    const cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        return cublasGemmEx(h, opb, opa, (int)n, (int)m, (int)k, &alpha, b, dt, (int)ldb, a, dt, (int)lda, &beta, c,
                            dt, (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return cublasGemmStridedBatchedEx(h, opb, opa, (int)n, (int)m, (int)k, &alpha, b, dt, (int)ldb,
                                      (long long)stride_b, a, dt, (int)lda, (long long)stride_a, &beta, c, dt,
                                      (int)ldc, (long long)stride_c, (int)batch, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT);
}

template <typename T>
static __global__ void fill_bias_k(T *y, const T *bias, int64_t inner, int64_t nb, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = bias[(i / inner) % nb];
}

// fill_bias_k in groups of 8: with inner % 8 == 0 a group shares one bias;
// with inner == 1 (and nb % 8 == 0) it takes 8 consecutive ones.
template <typename T>
static __global__ void fill_bias8_k(T *y, const T *bias, int64_t inner, int64_t nb, int64_t n8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        __align__(16) T o[8];
        if (inner == 1) {
            const int64_t j = 8 * i % nb;
#pragma unroll
            for (int t = 0; t < 8; t++) o[t] = bias[j + t];
        } else {
            const T v = bias[8 * i / inner % nb];
#pragma unroll
            for (int t = 0; t < 8; t++) o[t] = v;
        }
        pf_copy8(y + 8 * i, o);
    }
}

template <typename T>
cudaError_t pf_cuda_fill_bias(T *y, const T *bias, int vec, int64_t inner, int64_t nb, int64_t n,
                              cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (vec && (inner % 8 == 0 || (inner == 1 && nb % 8 == 0)) && pf_vec8(n, y))
        fill_bias8_k<<<pf_grid(n / 8), PF_THREADS, 0, stream>>>(y, bias, inner, nb, n / 8);
    else
        fill_bias_k<<<pf_grid(n), PF_THREADS, 0, stream>>>(y, bias, inner, nb, n);
    return cudaGetLastError();
}

template cublasStatus_t pf_cuda_gemm(cublasHandle_t, int, int, int64_t, int64_t, int64_t, float, const __half *,
                                     int64_t, int64_t, const __half *, int64_t, int64_t, float, __half *, int64_t,
                                     int64_t, int64_t);
template cublasStatus_t pf_cuda_gemm(cublasHandle_t, int, int, int64_t, int64_t, int64_t, float, const float *,
                                     int64_t, int64_t, const float *, int64_t, int64_t, float, float *, int64_t,
                                     int64_t, int64_t);
template cudaError_t pf_cuda_fill_bias(__half *, const __half *, int, int64_t, int64_t, int64_t, cudaStream_t);
template cudaError_t pf_cuda_fill_bias(float *, const float *, int, int64_t, int64_t, int64_t, cudaStream_t);
