// concat.cu - concatenation as one pass over y: each element reads from a or b.
#include "concat.cuh"

static __global__ void concat_k(__half *y, const __half *a, const __half *b, int64_t outer, int64_t na, int64_t nb) {
    const int64_t row = na + nb, n = outer * row;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t o = i / row, r = i - o * row;
        y[i] = r < na ? a[o * na + r] : b[o * nb + (r - na)];
    }
}

// concat_k on uint4 (8 halves): the caller passes na, nb in units of 8.
static __global__ void concat16_k(uint4 *y, const uint4 *a, const uint4 *b, int64_t outer, int64_t na, int64_t nb) {
    const int64_t row = na + nb, n = outer * row;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t o = i / row, r = i - o * row;
        y[i] = r < na ? a[o * na + r] : b[o * nb + (r - na)];
    }
}

cudaError_t pf_cuda_concat(__half *y, const __half *a, const __half *b, int vec, int64_t outer, int64_t na,
                           int64_t nb, cudaStream_t stream) {
    const int64_t n = outer * (na + nb);
    if (n == 0) return cudaSuccess;
    if (vec && na % 8 == 0 && pf_vec8(nb, y, a, b))
        concat16_k<<<pf_grid(n / 8), PF_THREADS, 0, stream>>>((uint4 *)y, (const uint4 *)a, (const uint4 *)b, outer,
                                                              na / 8, nb / 8);
    else
        concat_k<<<pf_grid(n), PF_THREADS, 0, stream>>>(y, a, b, outer, na, nb);
    return cudaGetLastError();
}
