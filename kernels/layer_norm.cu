// layer_norm.cu - LayerNorm, one warp per row. Rows are short (320..1280 in SD,
// 768 in CLIP), so a warp reads its row three times (sum, squared deviations,
// output) and the second and third reads come from L1/L2.
#include "layer_norm.cuh"

#define WARPS 8

template <typename T>
static __global__ void layer_norm_rows(T *y, const T *x, const T *gamma, const T *beta, float eps,
                                       int64_t rows, int64_t c) {
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (r >= rows) return; // whole warps leave together: no barrier below
    const T *xr = x + r * c;
    T *yr = y + r * c;
    float sum = 0.0f;
    for (int64_t i = lane; i < c; i += 32) sum += pf_to_float(xr[i]);
    const float mean = pf_warp_sum(sum) / (float)c;
    float sq = 0.0f;
    for (int64_t i = lane; i < c; i += 32) {
        float d = pf_to_float(xr[i]) - mean;
        sq += d * d;
    }
    const float rstd = rsqrtf(pf_warp_sum(sq) / (float)c + eps);
    for (int64_t i = lane; i < c; i += 32)
        yr[i] = pf_from_float<T>((pf_to_float(xr[i]) - mean) * rstd * pf_to_float(gamma[i]) + pf_to_float(beta[i]));
}

template <typename T>
cudaError_t pf_cuda_layer_norm(T *y, const T *x, const T *gamma, const T *beta, float eps,
                               int64_t rows, int64_t c, cudaStream_t stream) {
    if (rows == 0 || c == 0) return cudaSuccess;
    const int64_t blocks = (rows + WARPS - 1) / WARPS;
    layer_norm_rows<<<(unsigned)blocks, WARPS * 32, 0, stream>>>(y, x, gamma, beta, eps, rows, c);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_layer_norm(__half *, const __half *, const __half *, const __half *, float, int64_t,
                                        int64_t, cudaStream_t);
template cudaError_t pf_cuda_layer_norm(float *, const float *, const float *, const float *, float, int64_t,
                                        int64_t, cudaStream_t);
