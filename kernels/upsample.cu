// upsample.cu - one pass over y. For exact 2x, output row R of the flattened
// [N*C*2H, 2W] comes from input row R / 2 of [N*C*H, W]: rows of consecutive
// planes follow each other, so no plane index is needed. Other sizes (diffusers'
// forwarded upsample_size) take torch's float32 index rule per row and column.
#include "upsample.cuh"

// torch's nearest_idx (aten/src/ATen/native/UpSample.h), as pf_nearest_index in
// engine/core/backend.h: the product is rounded to float32 before the floor.
static __device__ __forceinline__ int64_t nearest_idx(int64_t i, int64_t in, int64_t out) {
    if (out == in) return i;
    if (out == 2 * in) return i >> 1;
    const float scale = __fdiv_rn((float)in, (float)out);
    const int64_t s = (int64_t)floorf(__fmul_rn((float)i, scale));
    return s < in - 1 ? s : in - 1;
}

template <typename T>
static __global__ void upsample_any_k(T *y, const T *x, int64_t planes, int64_t h, int64_t w, int64_t ho,
                                      int64_t wo) {
    const int64_t n = planes * ho * wo;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / wo, c = i - r * wo, p = r / ho, row = r - p * ho;
        y[i] = x[(p * h + nearest_idx(row, h, ho)) * w + nearest_idx(c, w, wo)];
    }
}

template <typename T>
static __global__ void upsample_k(T *y, const T *x, int64_t rows, int64_t w) {
    const int64_t w2 = 2 * w, n = rows * 2 * w2;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / w2, c = i - r * w2;
        y[i] = x[(r >> 1) * w + (c >> 1)];
    }
}

// upsample_k in groups of 8 outputs: w % 4 == 0, so a group lies in one output
// row and copies 4 consecutive inputs (one 8-byte load), each twice. float
// tensors take upsample_k.
static __global__ void upsample8_k(__half *y, const __half *x, int64_t rows, int64_t w) {
    const int64_t w2 = 2 * w, n8 = rows * 2 * w2 / 8;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = 8 * i / w2, c = 8 * i - r * w2;
        const uint2 in = *reinterpret_cast<const uint2 *>(x + (r >> 1) * w + (c >> 1));
        const __half *hi = reinterpret_cast<const __half *>(&in);
        __align__(16) __half o[8];
#pragma unroll
        for (int t = 0; t < 8; t++) o[t] = hi[t >> 1];
        *reinterpret_cast<uint4 *>(y + 8 * i) = *reinterpret_cast<const uint4 *>(o);
    }
}

template <typename T>
cudaError_t pf_cuda_upsample_nearest(T *y, const T *x, int vec, int64_t planes, int64_t h, int64_t w,
                                     int64_t ho, int64_t wo, cudaStream_t stream) {
    if (planes * ho * wo == 0) return cudaSuccess;
    const int64_t rows = planes * h;
    if (ho != 2 * h || wo != 2 * w)
        upsample_any_k<<<pf_grid(planes * ho * wo), PF_THREADS, 0, stream>>>(y, x, planes, h, w, ho, wo);
    else if (std::is_same<T, __half>::value && vec && w % 4 == 0 && pf_vec8(0, y) && (uintptr_t)x % 8 == 0)
        upsample8_k<<<pf_grid(rows * w / 2), PF_THREADS, 0, stream>>>((__half *)y, (const __half *)x, rows, w);
    else
        upsample_k<<<pf_grid(rows * 4 * w), PF_THREADS, 0, stream>>>(y, x, rows, w);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_upsample_nearest(__half *, const __half *, int, int64_t, int64_t, int64_t, int64_t,
                                              int64_t, cudaStream_t);
template cudaError_t pf_cuda_upsample_nearest(float *, const float *, int, int64_t, int64_t, int64_t, int64_t,
                                              int64_t, cudaStream_t);
