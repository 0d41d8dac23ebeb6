// permute.cu - general permutation, plus the case SD uses on every transformer
// and VAE attention: swapping the last two dimensions ([B, C, HW] <-> [B, HW, C]).
// The general kernel writes y in order and gathers x with a stride, which for
// a transpose reads one value per 32-byte sector; the transpose kernel stages
// 32x32 tiles in shared memory so both the reads and the writes are coalesced.
#include "permute.cuh"

struct perm_plan {
    int nd;
    int64_t yshape[PF_MAX_DIMS];
    int64_t step[PF_MAX_DIMS]; // x's stride along y's dim i
};

template <typename T>
static __global__ void permute_general(T *y, const T *x, perm_plan p, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t rem = i, off = 0;
#pragma unroll
        for (int d = PF_MAX_DIMS - 1; d >= 0; d--) { // unrolled: p stays in registers, not a stack copy
            if (d >= p.nd) continue;
            const int64_t q = rem / p.yshape[d];
            off += (rem - q * p.yshape[d]) * p.step[d];
            rem = q;
        }
        y[i] = x[off];
    }
}

#define TILE 32
#define ROWS 8 // block (TILE, ROWS); each thread moves TILE / ROWS values

// x[batch, r, c] -> y[batch, c, r]; grid (ceil(c / TILE), ceil(r / TILE), batch).
template <typename T>
static __global__ void transpose_k(T *y, const T *x, int64_t r, int64_t c) {
    __shared__ float tile[TILE][TILE + 1]; // +1: column reads hit 32 different banks
    const int64_t b = blockIdx.z, r0 = (int64_t)blockIdx.y * TILE, c0 = (int64_t)blockIdx.x * TILE;
    const T *xb = x + b * r * c;
    T *yb = y + b * r * c;
    for (int k = threadIdx.y; k < TILE; k += ROWS) {
        const int64_t rr = r0 + k, cc = c0 + threadIdx.x;
        if (rr < r && cc < c) tile[k][threadIdx.x] = pf_to_float(xb[rr * c + cc]);
    }
    __syncthreads();
    for (int k = threadIdx.y; k < TILE; k += ROWS) {
        const int64_t cc = c0 + k, rr = r0 + threadIdx.x; // y row cc, column rr
        if (rr < r && cc < c) yb[cc * r + rr] = pf_from_float<T>(tile[threadIdx.x][k]);
    }
}

template <typename T>
cudaError_t pf_cuda_permute(T *y, const T *x, const int *perm, int ndim, const int64_t *x_shape,
                            cudaStream_t stream) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= x_shape[i];
    if (n == 0) return cudaSuccess;
    int swap_last = ndim >= 2 && perm[ndim - 2] == ndim - 1 && perm[ndim - 1] == ndim - 2;
    for (int i = 0; i < ndim - 2; i++) swap_last = swap_last && perm[i] == i;
    if (swap_last) {
        const int64_t r = x_shape[ndim - 2], c = x_shape[ndim - 1], batch = n / (r * c);
        const int64_t gx = (c + TILE - 1) / TILE, gy = (r + TILE - 1) / TILE;
        if (batch <= 65535 && gy <= 65535 && gx <= 0x7fffffff) {
            transpose_k<<<dim3((unsigned)gx, (unsigned)gy, (unsigned)batch), dim3(TILE, ROWS), 0, stream>>>(y, x, r,
                                                                                                           c);
            return cudaGetLastError();
        }
    }
    perm_plan p;
    int64_t xstride[PF_MAX_DIMS], s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        xstride[i] = s;
        s *= x_shape[i];
    }
    p.nd = ndim;
    for (int i = 0; i < ndim; i++) {
        p.yshape[i] = x_shape[perm[i]];
        p.step[i] = xstride[perm[i]];
    }
    permute_general<<<pf_grid(n), PF_THREADS, 0, stream>>>(y, x, p, n);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_permute(__half *, const __half *, const int *, int, const int64_t *, cudaStream_t);
template cudaError_t pf_cuda_permute(float *, const float *, const int *, int, const int64_t *, cudaStream_t);
