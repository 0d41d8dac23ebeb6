// layer_norm.cu - LayerNorm, one warp per row. Rows are short (320..1280 in SD,
// 768 in CLIP), so a warp reads its row three times (sum, squared deviations,
// output) and the second and third reads come from L1/L2.
#include "layer_norm.cuh"

#define WARPS 8

static __global__ void layer_norm_rows(__half *y, const __half *x, const __half *gamma, const __half *beta, float eps,
                                       int64_t rows, int64_t c) {
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows) return; // whole warps leave together: no barrier below
    const __half *xr = x + r * c;
    __half *yr = y + r * c;
    float sum = 0.0f;
    for (int64_t i = lane; i < c; i += 32) sum += __half2float(xr[i]);
    const float mean = pf_warp_sum(sum) / (float)c;
    float sq = 0.0f;
    for (int64_t i = lane; i < c; i += 32) {
        float d = __half2float(xr[i]) - mean;
        sq += d * d;
    }
    const float rstd = rsqrtf(pf_warp_sum(sq) / (float)c + eps);
    for (int64_t i = lane; i < c; i += 32)
        yr[i] = __float2half_rn((__half2float(xr[i]) - mean) * rstd * __half2float(gamma[i]) + __half2float(beta[i]));
}

cudaError_t pf_cuda_layer_norm(__half *y, const __half *x, const __half *gamma, const __half *beta, float eps,
                               int64_t rows, int64_t c, cudaStream_t stream) {
    if (rows == 0 || c == 0) return cudaSuccess;
    const int64_t blocks = (rows + WARPS - 1) / WARPS;
    layer_norm_rows<<<(unsigned)blocks, WARPS * 32, 0, stream>>>(y, x, gamma, beta, eps, rows, c);
    return cudaGetLastError();
}
