// scale.cu - y = alpha * x + beta in float32, rounded once.
#include "scale.cuh"

static __global__ void scale_k(__half *y, const __half *x, float alpha, float beta, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(alpha * __half2float(x[i]) + beta);
}

cudaError_t pf_cuda_scale(__half *y, const __half *x, float alpha, float beta, int64_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    scale_k<<<pf_grid(n), PF_THREADS, 0, stream>>>(y, x, alpha, beta, n);
    return cudaGetLastError();
}
