// binary.cu - broadcasting add and multiply. The plan merges dimensions on the
// host exactly as the CPU reference does, so the common cases need no index
// arithmetic: same shape is one run (b[i]); the rest decompose i over at most
// PF_MAX_DIMS merged sizes.
#include "binary.cuh"

pf_bcast pf_cuda_bcast_plan(int ndim, const int64_t *a_shape, const int64_t *b_shape) {
    pf_bcast p;
    int bcast[PF_MAX_DIMS];
    p.m = 0;
    for (int i = 0; i < ndim; i++) {
        if (a_shape[i] == 1) continue;
        int bc = b_shape[i] == 1;
        if (p.m > 0 && bcast[p.m - 1] == bc) {
            p.size[p.m - 1] *= a_shape[i];
        } else {
            p.size[p.m] = a_shape[i];
            bcast[p.m++] = bc;
        }
    }
    if (p.m == 0) { // a single element
        p.size[0] = 1;
        bcast[0] = 0;
        p.m = 1;
    }
    int64_t run = 1;
    for (int i = p.m - 1; i >= 0; i--) {
        p.bstride[i] = bcast[i] ? 0 : run;
        if (!bcast[i]) run *= p.size[i];
    }
    return p;
}

template <int MUL, typename T>
static __device__ __forceinline__ T op(T a, T b) {
    const float x = pf_to_float(a), y = pf_to_float(b);
    return pf_from_float<T>(MUL ? x * y : x + y);
}

template <int MUL, typename T>
static __global__ void binary_same(T *y, const T *a, const T *b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = op<MUL, T>(a[i], b[i]);
}

template <int MUL, typename T>
static __global__ void binary_bcast(T *y, const T *a, const T *b, pf_bcast p, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t rem = i, off = 0;
#pragma unroll
        for (int d = PF_MAX_DIMS - 1; d >= 0; d--) { // unrolled: p stays in registers, not a stack copy
            if (d >= p.m) continue;
            const int64_t q = rem / p.size[d];
            off += (rem - q * p.size[d]) * p.bstride[d];
            rem = q;
        }
        y[i] = op<MUL, T>(a[i], b[off]);
    }
}

template <int MUL, typename T>
static __global__ void binary_same8(T *y, const T *a, const T *b, int64_t n8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        float x[8], z[8];
        pf_load8(x, a + 8 * i);
        pf_load8(z, b + 8 * i);
#pragma unroll
        for (int t = 0; t < 8; t++) x[t] = MUL ? x[t] * z[t] : x[t] + z[t];
        pf_store8(y + 8 * i, x);
    }
}

// binary_bcast in groups of 8 elements of a: size[m - 1] % 8 == 0, so a group
// lies in one innermost run and its b offsets are off + t * inner (bstride[m - 1])
// (b is read per element: it need not be aligned, and it mostly hits the cache).
template <int MUL, typename T>
static __global__ void binary_bcast8(T *y, const T *a, const T *b, pf_bcast p, int64_t inner,
                              int64_t n8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t rem = 8 * i, off = 0;
#pragma unroll
        for (int d = PF_MAX_DIMS - 1; d >= 0; d--) {
            if (d >= p.m) continue;
            const int64_t q = rem / p.size[d];
            off += (rem - q * p.size[d]) * p.bstride[d];
            rem = q;
        }
        float x[8];
        pf_load8(x, a + 8 * i);
#pragma unroll
        for (int t = 0; t < 8; t++) {
            const float z = pf_to_float(b[off + t * inner]);
            x[t] = MUL ? x[t] * z : x[t] + z;
        }
        pf_store8(y + 8 * i, x);
    }
}

template <typename T>
cudaError_t pf_cuda_binary(T *y, const T *a, const T *b, const pf_bcast *plan, int is_mul, int vec, int64_t n,
                           cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    const unsigned g = pf_grid(n);
    const int same = plan->m == 1 && plan->bstride[0] == 1;
    if (vec && same && pf_vec8(n, y, a, b)) {
        if (is_mul) binary_same8<1><<<pf_grid(n / 8), PF_THREADS, 0, stream>>>(y, a, b, n / 8);
        else binary_same8<0><<<pf_grid(n / 8), PF_THREADS, 0, stream>>>(y, a, b, n / 8);
        return cudaGetLastError();
    }
    if (vec && !same && pf_vec8(plan->size[plan->m - 1], y, a)) {
        const int64_t inner = plan->bstride[plan->m - 1]; // b's step along the innermost run
        if (is_mul) binary_bcast8<1><<<pf_grid(n / 8), PF_THREADS, 0, stream>>>(y, a, b, *plan, inner, n / 8);
        else binary_bcast8<0><<<pf_grid(n / 8), PF_THREADS, 0, stream>>>(y, a, b, *plan, inner, n / 8);
        return cudaGetLastError();
    }
    if (same && is_mul) binary_same<1><<<g, PF_THREADS, 0, stream>>>(y, a, b, n);
    else if (same) binary_same<0><<<g, PF_THREADS, 0, stream>>>(y, a, b, n);
    else if (is_mul) binary_bcast<1><<<g, PF_THREADS, 0, stream>>>(y, a, b, *plan, n);
    else binary_bcast<0><<<g, PF_THREADS, 0, stream>>>(y, a, b, *plan, n);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_binary(__half *, const __half *, const __half *, const pf_bcast *, int, int, int64_t,
                                    cudaStream_t);
template cudaError_t pf_cuda_binary(float *, const float *, const float *, const pf_bcast *, int, int, int64_t,
                                    cudaStream_t);
