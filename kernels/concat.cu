// concat.cu - concatenation as one pass over y: each element reads from a or b.
#include "concat.cuh"

template <typename T>
static __global__ void concat_k(T *y, const T *a, const T *b, int64_t outer, int64_t na, int64_t nb) {
    const int64_t row = na + nb, n = outer * row;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t o = i / row, r = i - o * row;
        y[i] = r < na ? a[o * na + r] : b[o * nb + (r - na)];
    }
}

// concat_k on uint4 (16 bytes: 8 halves or 4 floats): the caller passes na, nb
// in units of 16 bytes.
static __global__ void concat16_k(uint4 *y, const uint4 *a, const uint4 *b, int64_t outer, int64_t na, int64_t nb) {
    const int64_t row = na + nb, n = outer * row;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t o = i / row, r = i - o * row;
        y[i] = r < na ? a[o * na + r] : b[o * nb + (r - na)];
    }
}

template <typename T>
cudaError_t pf_cuda_concat(T *y, const T *a, const T *b, int vec, int64_t outer, int64_t na, int64_t nb,
                           cudaStream_t stream) {
    const int64_t n = outer * (na + nb), per = 16 / (int64_t)sizeof(T); // elements per 16 bytes
    if (n == 0) return cudaSuccess;
    if (vec && na % per == 0 && nb % per == 0 && ((uintptr_t)y | (uintptr_t)a | (uintptr_t)b) % 16 == 0)
        concat16_k<<<pf_grid(n / per), PF_THREADS, 0, stream>>>((uint4 *)y, (const uint4 *)a, (const uint4 *)b, outer,
                                                                na / per, nb / per);
    else
        concat_k<<<pf_grid(n), PF_THREADS, 0, stream>>>(y, a, b, outer, na, nb);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_concat(__half *, const __half *, const __half *, int, int64_t, int64_t, int64_t,
                                    cudaStream_t);
template cudaError_t pf_cuda_concat(float *, const float *, const float *, int, int64_t, int64_t, int64_t,
                                    cudaStream_t);
