// softmax.cu - row softmax, one warp per row, three passes (max, sum of
// exponentials, output). Model code does not call it in SD (attention is
// fused); it serves the op table and any row softmax a model adds.
#include "softmax.cuh"

#define WARPS 8

static __global__ void softmax_rows(__half *y, const __half *x, int64_t rows, int64_t c) {
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    const __half *xr = x + r * c;
    __half *yr = y + r * c;
    float mx = -INFINITY;
    for (int64_t i = lane; i < c; i += 32) mx = fmaxf(mx, __half2float(xr[i]));
    mx = pf_warp_max(mx);
    float sum = 0.0f;
    for (int64_t i = lane; i < c; i += 32) sum += __expf(__half2float(xr[i]) - mx);
    const float inv = 1.0f / pf_warp_sum(sum);
    for (int64_t i = lane; i < c; i += 32) yr[i] = __float2half_rn(__expf(__half2float(xr[i]) - mx) * inv);
}

cudaError_t pf_cuda_softmax(__half *y, const __half *x, int64_t rows, int64_t c, cudaStream_t stream) {
    if (rows == 0 || c == 0) return cudaSuccess;
    softmax_rows<<<(unsigned)((rows + WARPS - 1) / WARPS), WARPS * 32, 0, stream>>>(y, x, rows, c);
    return cudaGetLastError();
}
