// embedding.cu - a row gather.
#include "embedding.cuh"

template <typename T>
static __global__ void embedding_k(T *y, const T *table, const int32_t *ids, int64_t count, int64_t c) {
    const int64_t n = count * c;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / c, j = i - r * c;
        y[i] = table[(int64_t)ids[r] * c + j];
    }
}

template <typename T>
cudaError_t pf_cuda_embedding(T *y, const T *table, const int32_t *ids, int64_t count, int64_t c,
                              cudaStream_t stream) {
    if (count * c == 0) return cudaSuccess;
    embedding_k<<<pf_grid(count * c), PF_THREADS, 0, stream>>>(y, table, ids, count, c);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_embedding(__half *, const __half *, const int32_t *, int64_t, int64_t, cudaStream_t);
template cudaError_t pf_cuda_embedding(float *, const float *, const int32_t *, int64_t, int64_t, cudaStream_t);
