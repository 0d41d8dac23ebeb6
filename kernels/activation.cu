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

template <int ACT>
static __global__ void activation_k(__half *y, const __half *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(act_of<ACT>(__half2float(x[i])));
}

cudaError_t pf_cuda_activation(__half *y, const __half *x, int act, int64_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    const unsigned g = pf_grid(n);
    switch (act) {
    case PF_ACT_SILU: activation_k<PF_ACT_SILU><<<g, PF_THREADS, 0, stream>>>(y, x, n); break;
    case PF_ACT_GELU: activation_k<PF_ACT_GELU><<<g, PF_THREADS, 0, stream>>>(y, x, n); break;
    case PF_ACT_GELU_TANH: activation_k<PF_ACT_GELU_TANH><<<g, PF_THREADS, 0, stream>>>(y, x, n); break;
    default: activation_k<PF_ACT_QUICK_GELU><<<g, PF_THREADS, 0, stream>>>(y, x, n); break;
    }
    return cudaGetLastError();
}

// grid-stride over y[rows, nh]; x row r is (h, gate) = x[r, 0:nh], x[r, nh:2nh].
static __global__ void geglu_k(__half *y, const __half *x, int64_t rows, int64_t nh) {
    const int64_t n = rows * nh;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / nh, j = i - r * nh;
        const __half *xr = x + r * 2 * nh;
        y[i] = __float2half_rn(__half2float(xr[j]) * gelu(__half2float(xr[nh + j])));
    }
}

cudaError_t pf_cuda_geglu(__half *y, const __half *x, int64_t rows, int64_t nh, cudaStream_t stream) {
    if (rows * nh == 0) return cudaSuccess;
    geglu_k<<<pf_grid(rows * nh), PF_THREADS, 0, stream>>>(y, x, rows, nh);
    return cudaGetLastError();
}
