// conv2d.cu - im2col. A block row (blockIdx.x) is one row (img, c, i, j) of the
// column matrix, so its channel and tap are decoded once per block; threads
// walk the row's output positions, writing consecutive addresses and reading
// input pixels `stride` apart.
#include "conv2d.cuh"

// Positions within a row and pixel coordinates use int: a row holds at most
// the tile's columns (< 2^31, checked by the launcher), images fewer pixels.
template <typename T>
static __global__ void im2col_k(T *col, const T *x, int64_t ci, int h, int w, int kh, int kw, int stride,
                                int pad, int oh0, int cols, int wo) {
    const int64_t kk = ci * kh * kw, row = blockIdx.x; // img * kk + (c, i, j)
    const int64_t img = row / kk, rc = row - img * kk;
    const int c = (int)(rc / (kh * kw)), ki = (int)(rc / kw) % kh, kj = (int)(rc % kw);
    const T *xc = x + (img * ci + c) * (int64_t)h * w;
    T *dst = col + row * cols;
    for (int p = blockIdx.y * blockDim.x + threadIdx.x; p < cols; p += gridDim.y * blockDim.x) {
        const int oh = p / wo, ow = p - oh * wo;
        const int ih = (oh0 + oh) * stride - pad + ki, iw = ow * stride - pad + kj;
        dst[p] = ih >= 0 && ih < h && iw >= 0 && iw < w ? xc[ih * w + iw] : pf_from_float<T>(0.0f);
    }
}

// im2col_k with 8 consecutive positions a thread: wo % 8 == 0, so the 8 share
// an output row (one division, one row test) and fill one 16-byte store (two
// for float); the
// scalar loads hit L1/L2, which hold the few input rows a block's row reads.
template <typename T>
static __global__ void im2col8_k(T *col, const T *x, int64_t ci, int h, int w, int kh, int kw, int stride,
                                 int pad, int oh0, int cols, int wo) {
    const int64_t kk = ci * kh * kw, row = blockIdx.x;
    const int64_t img = row / kk, rc = row - img * kk;
    const int c = (int)(rc / (kh * kw)), ki = (int)(rc / kw) % kh, kj = (int)(rc % kw);
    const T *xc = x + (img * ci + c) * (int64_t)h * w;
    T *dst = col + row * cols;
    const int n8 = cols >> 3;
    for (int q = blockIdx.y * blockDim.x + threadIdx.x; q < n8; q += gridDim.y * blockDim.x) {
        const int p = q << 3, oh = p / wo, ow = p - oh * wo;
        const int ih = (oh0 + oh) * stride - pad + ki, iw0 = ow * stride - pad + kj;
        __align__(16) T o[8];
        if (ih >= 0 && ih < h) {
            const T *xr = xc + (int64_t)ih * w;
#pragma unroll
            for (int t = 0; t < 8; t++) {
                const int iw = iw0 + t * stride;
                o[t] = iw >= 0 && iw < w ? xr[iw] : pf_from_float<T>(0.0f);
            }
        } else {
#pragma unroll
            for (int t = 0; t < 8; t++) o[t] = pf_from_float<T>(0.0f);
        }
        pf_copy8(dst + p, o);
    }
}

template <typename T>
cudaError_t pf_cuda_im2col(T *col, const T *x, int vec, int64_t nimg, int64_t ci, int64_t h, int64_t w,
                           int kh, int kw, int stride, int pad, int64_t oh0, int64_t rows, int64_t wo,
                           cudaStream_t stream) {
    const int64_t nrows = nimg * ci * kh * kw, cols = rows * wo;
    if (nrows == 0 || cols == 0) return cudaSuccess;
    if (vec && pf_vec8(wo, col)) { // rows of col are cols = rows * wo apart: all 16-byte aligned
        if (nrows > 0x7fffffff || cols > 0x7fffffff || h * w > 0x7fffffff || oh0 + rows > 0x7fffffff)
            return cudaErrorInvalidValue;
        const int64_t n8 = cols / 8;
        const int threads = n8 >= PF_THREADS ? PF_THREADS : (int)((n8 + 31) / 32 * 32);
        int64_t gy = (n8 + threads - 1) / threads;
        if (gy > 65535) gy = 65535;
        im2col8_k<<<dim3((unsigned)nrows, (unsigned)gy), threads, 0, stream>>>(
            col, x, ci, (int)h, (int)w, kh, kw, stride, pad, (int)oh0, (int)cols, (int)wo);
        return cudaGetLastError();
    }
    // Deep UNet levels have rows of 64 positions: a block no wider than a row
    // (in whole warps) keeps most threads busy there.
    const int threads = cols >= PF_THREADS ? PF_THREADS : (int)((cols + 31) / 32 * 32);
    int64_t gy = (cols + threads - 1) / threads;
    if (gy > 65535) gy = 65535;
    if (nrows > 0x7fffffff || cols > 0x7fffffff || h * w > 0x7fffffff || oh0 + rows > 0x7fffffff)
        return cudaErrorInvalidValue;
    im2col_k<<<dim3((unsigned)nrows, (unsigned)gy), threads, 0, stream>>>(
        col, x, ci, (int)h, (int)w, kh, kw, stride, pad, (int)oh0, (int)cols, (int)wo);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_im2col(__half *, const __half *, int, int64_t, int64_t, int64_t, int64_t, int, int, int,
                                    int, int64_t, int64_t, int64_t, cudaStream_t);
template cudaError_t pf_cuda_im2col(float *, const float *, int, int64_t, int64_t, int64_t, int64_t, int, int, int,
                                    int, int64_t, int64_t, int64_t, cudaStream_t);
