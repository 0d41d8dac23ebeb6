// softmax.cu - row softmax, one warp per row, three passes (max, sum of
// exponentials, output). Model code does not call it in SD (attention is
// fused); it serves the op table and any row softmax a model adds.
#include "softmax.cuh"

#define WARPS 8

template <typename T>
static __global__ void softmax_rows(T *y, const T *x, int64_t rows, int64_t c) {
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    const T *xr = x + r * c;
    T *yr = y + r * c;
    float mx = -INFINITY;
    for (int64_t i = lane; i < c; i += 32) mx = fmaxf(mx, pf_to_float(xr[i]));
    mx = pf_warp_max(mx);
    float sum = 0.0f;
    for (int64_t i = lane; i < c; i += 32) sum += __expf(pf_to_float(xr[i]) - mx);
    const float inv = 1.0f / pf_warp_sum(sum);
    for (int64_t i = lane; i < c; i += 32) yr[i] = pf_from_float<T>(__expf(pf_to_float(xr[i]) - mx) * inv);
}

template <typename T>
cudaError_t pf_cuda_softmax(T *y, const T *x, int64_t rows, int64_t c, cudaStream_t stream) {
    if (rows == 0 || c == 0) return cudaSuccess;
    softmax_rows<<<(unsigned)((rows + WARPS - 1) / WARPS), WARPS * 32, 0, stream>>>(y, x, rows, c);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_softmax(__half *, const __half *, int64_t, int64_t, cudaStream_t);
template cudaError_t pf_cuda_softmax(float *, const float *, int64_t, int64_t, cudaStream_t);
