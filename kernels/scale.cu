// scale.cu - y = alpha * x + beta in float32, rounded once.
#include "scale.cuh"

template <typename T>
static __global__ void scale_k(T *y, const T *x, float alpha, float beta, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = pf_from_float<T>(alpha * pf_to_float(x[i]) + beta);
}

template <typename T>
static __global__ void scale8_k(T *y, const T *x, float alpha, float beta, int64_t n8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        float f[8];
        pf_load8(f, x + 8 * i);
#pragma unroll
        for (int t = 0; t < 8; t++) f[t] = alpha * f[t] + beta;
        pf_store8(y + 8 * i, f);
    }
}

template <typename T>
cudaError_t pf_cuda_scale(T *y, const T *x, float alpha, float beta, int vec, int64_t n,
                          cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (vec && pf_vec8(n, y, x))
        scale8_k<<<pf_grid(n / 8), PF_THREADS, 0, stream>>>(y, x, alpha, beta, n / 8);
    else
        scale_k<<<pf_grid(n), PF_THREADS, 0, stream>>>(y, x, alpha, beta, n);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_scale(__half *, const __half *, float, float, int, int64_t, cudaStream_t);
template cudaError_t pf_cuda_scale(float *, const float *, float, float, int, int64_t, cudaStream_t);
