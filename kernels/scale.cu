// scale.cu - y = alpha * x + beta in float32, rounded once.
#include "scale.cuh"

static __global__ void scale_k(__half *y, const __half *x, float alpha, float beta, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(alpha * __half2float(x[i]) + beta);
}

static __global__ void scale8_k(__half *y, const __half *x, float alpha, float beta, int64_t n8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        float f[8];
        pf_load8(f, x + 8 * i);
#pragma unroll
        for (int t = 0; t < 8; t++) f[t] = alpha * f[t] + beta;
        pf_store8(y + 8 * i, f);
    }
}

cudaError_t pf_cuda_scale(__half *y, const __half *x, float alpha, float beta, int vec, int64_t n,
                          cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (vec && pf_vec8(n, y, x))
        scale8_k<<<pf_grid(n / 8), PF_THREADS, 0, stream>>>(y, x, alpha, beta, n / 8);
    else
        scale_k<<<pf_grid(n), PF_THREADS, 0, stream>>>(y, x, alpha, beta, n);
    return cudaGetLastError();
}
