// activation.cu - elementwise activations and GEGLU, float32 math as the CPU
// reference writes it (erff for the exact GELU, tanhf for the tanh form).
#include "activation.cuh"

extern "C" {
#include "backend.h" // pf_act
}

static __device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

template <int ACT>
static __device__ __forceinline__ float act_of(float v) {
    if (ACT == PF_ACT_SILU) return v / (1.0f + __expf(-v));
    if (ACT == PF_ACT_GELU) return gelu(v);
    if (ACT == PF_ACT_GELU_TANH) return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    return v / (1.0f + __expf(-1.702f * v)); // PF_ACT_QUICK_GELU
}

template <int ACT, typename T>
static __global__ void activation_k(T *y, const T *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = pf_from_float<T>(act_of<ACT>(pf_to_float(x[i])));
}

// n8 groups of 8 values, 16-byte accesses.
template <int ACT, typename T>
static __global__ void activation8_k(T *y, const T *x, int64_t n8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        float f[8];
        pf_load8(f, x + 8 * i);
#pragma unroll
        for (int t = 0; t < 8; t++) f[t] = act_of<ACT>(f[t]);
        pf_store8(y + 8 * i, f);
    }
}

template <int ACT, typename T>
static void launch_activation(T *y, const T *x, int vec, int64_t n, cudaStream_t stream) {
    if (vec && pf_vec8(n, y, x))
        activation8_k<ACT><<<pf_grid(n / 8), PF_THREADS, 0, stream>>>(y, x, n / 8);
    else
        activation_k<ACT><<<pf_grid(n), PF_THREADS, 0, stream>>>(y, x, n);
}

template <typename T>
cudaError_t pf_cuda_activation(T *y, const T *x, int act, int vec, int64_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    switch (act) {
    case PF_ACT_SILU: launch_activation<PF_ACT_SILU>(y, x, vec, n, stream); break;
    case PF_ACT_GELU: launch_activation<PF_ACT_GELU>(y, x, vec, n, stream); break;
    case PF_ACT_GELU_TANH: launch_activation<PF_ACT_GELU_TANH>(y, x, vec, n, stream); break;
    default: launch_activation<PF_ACT_QUICK_GELU>(y, x, vec, n, stream); break;
    }
    return cudaGetLastError();
}

// grid-stride over y[rows, nh]; x row r is (h, gate) = x[r, 0:nh], x[r, nh:2nh].
template <typename T>
static __global__ void geglu_k(T *y, const T *x, int64_t rows, int64_t nh) {
    const int64_t n = rows * nh;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / nh, j = i - r * nh;
        const T *xr = x + r * 2 * nh;
        y[i] = pf_from_float<T>(pf_to_float(xr[j]) * gelu(pf_to_float(xr[nh + j])));
    }
}

// geglu_k in groups of 8 (nh a multiple of 8: a group never straddles a row).
template <typename T>
static __global__ void geglu8_k(T *y, const T *x, int64_t rows, int64_t nh) {
    const int64_t n8 = rows * nh / 8;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = 8 * i / nh, j = 8 * i - r * nh;
        const T *xr = x + r * 2 * nh;
        float hv[8], gv[8];
        pf_load8(hv, xr + j);
        pf_load8(gv, xr + nh + j);
#pragma unroll
        for (int t = 0; t < 8; t++) hv[t] *= gelu(gv[t]);
        pf_store8(y + 8 * i, hv);
    }
}

template <typename T>
cudaError_t pf_cuda_geglu(T *y, const T *x, int vec, int64_t rows, int64_t nh, cudaStream_t stream) {
    if (rows * nh == 0) return cudaSuccess;
    if (vec && pf_vec8(nh, y, x))
        geglu8_k<<<pf_grid(rows * nh / 8), PF_THREADS, 0, stream>>>(y, x, rows, nh);
    else
        geglu_k<<<pf_grid(rows * nh), PF_THREADS, 0, stream>>>(y, x, rows, nh);
    return cudaGetLastError();
}

template cudaError_t pf_cuda_activation(__half *, const __half *, int, int, int64_t, cudaStream_t);
template cudaError_t pf_cuda_activation(float *, const float *, int, int, int64_t, cudaStream_t);
template cudaError_t pf_cuda_geglu(__half *, const __half *, int, int64_t, int64_t, cudaStream_t);
template cudaError_t pf_cuda_geglu(float *, const float *, int, int64_t, int64_t, cudaStream_t);
