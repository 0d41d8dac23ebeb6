// common.cuh - what every CUDA op shares: float <-> storage conversion of one
// element, warp reductions, and the launch grid of an elementwise loop.
//
// Conventions of kernels/: one op per .cu/.cuh pair. Each .cuh declares the
// op's launcher, which takes raw device pointers, sizes last, and the stream;
// it returns the launch status (cudaGetLastError) and never synchronizes.
// backend_cuda.cu turns tensors into launcher arguments and a failed status
// into the backend's sticky error. Every op computes in float and rounds once
// when it stores.
//
// Two element types, one per backend (backend.h): __half (PF_F16, the default
// backend) and float (PF_F32, pf_backend_cuda_new_f32, for models that
// overflow fp16, such as SDXL's VAE). Launchers are templates on T,
// instantiated in their .cu for both; kernels read with pf_to_float and write
// with pf_from_float<T>, so the float instantiation converts nothing.
#ifndef PF_KERNELS_COMMON_CUH
#define PF_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

extern "C" {
#include "tensor.h"  // pf_dtype
}

// The pf_dtype of element type T (__half or float).
template <typename T>
static inline pf_dtype pf_dtype_of() {
    return std::is_same<T, float>::value ? PF_F32 : PF_F16;
}

// One element to float (exact) and back (round to nearest even for __half).
static __device__ __forceinline__ float pf_to_float(__half v) { return __half2float(v); }
static __device__ __forceinline__ float pf_to_float(float v) { return v; }
template <typename T>
static __device__ __forceinline__ T pf_from_float(float v) {
    if constexpr (std::is_same<T, float>::value)
        return v;
    else
        return __float2half_rn(v);
}

// Threads per block of the elementwise kernels.
#define PF_THREADS 256

// Blocks for a grid-stride loop over n elements: enough to fill any current
// GPU several times over, never more than n needs. Capped so that the index
// arithmetic of the loop (int64) and the grid limit (2^31 - 1) are both safe.
static inline unsigned pf_grid(int64_t n, int threads = PF_THREADS) {
    int64_t blocks = (n + threads - 1) / threads;
    if (blocks < 1) blocks = 1;
    if (blocks > 65536) blocks = 65536;
    return (unsigned)blocks;
}

// The vectorised kernels (enabled unless PERFLOW_CUDA_VECTOR=0) move 8
// elements a thread, 8 halves in one 16-byte access or 8 floats in two: true
// when every pointer given is 16-byte aligned and n is a multiple of 8. Views
// made by pf_slice0 can start anywhere, so every launcher asks before it takes
// a vector path; the scalar kernels serve the rest.
static inline bool pf_vec8(int64_t n, const void *a, const void *b = nullptr, const void *c = nullptr) {
    return n % 8 == 0 && ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) % 16 == 0;
}

// 8 halves at p (16-byte aligned) to float, exactly.
static __device__ __forceinline__ void pf_load8(float *f, const __half *p) {
    const uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __half2 *h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 v = __half22float2(h[i]);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

// 8 floats rounded to nearest (as __float2half_rn) into p (16-byte aligned), one store.
static __device__ __forceinline__ void pf_store8(__half *p, const float *f) {
    uint4 u;
    __half2 *h = reinterpret_cast<__half2 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}

// 8 floats at p (16-byte aligned), two 16-byte loads.
static __device__ __forceinline__ void pf_load8(float *f, const float *p) {
    const float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
    f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

// 8 floats into p (16-byte aligned), two 16-byte stores.
static __device__ __forceinline__ void pf_store8(float *p, const float *f) {
    reinterpret_cast<float4 *>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4 *>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}

// 8 elements from src to dst, both 16-byte aligned, in 16-byte moves (one for
// __half, two for float): the stores of kernels that stage 8 outputs locally.
template <typename T>
static __device__ __forceinline__ void pf_copy8(T *dst, const T *src) {
#pragma unroll
    for (int i = 0; i < (int)(8 * sizeof(T) / 16); i++)
        reinterpret_cast<uint4 *>(dst)[i] = reinterpret_cast<const uint4 *>(src)[i];
}

static __device__ __forceinline__ float pf_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float pf_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024);
// every thread gets the total. `scratch` holds 32 floats of shared memory and
// may be reused right after the call returns (the trailing barrier sees to it).
static __device__ __forceinline__ float pf_block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = pf_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : 0.0f;
    t = pf_warp_sum(t);
    __syncthreads();
    return t;
}

#endif
