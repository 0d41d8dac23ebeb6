// common.cuh - what every CUDA op shares: float <-> storage conversion of one
// element, warp reductions, and the launch grid of an elementwise loop.
//
// Conventions of kernels/: one op per .cu/.cuh pair. Each .cuh declares the
// op's launcher, which takes raw device pointers, sizes last, and the stream;
// it returns the launch status (cudaGetLastError) and never synchronizes.
// backend_cuda.cu turns tensors into launcher arguments and a failed status
// into the backend's sticky error. Activations are __half; every op computes
// in float and rounds once when it stores.
#ifndef PF_KERNELS_COMMON_CUH
#define PF_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "tensor.h"  // pf_dtype
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

// The vectorised kernels (enabled unless PERFLOW_CUDA_VECTOR=0) move 8 halves,
// 16 bytes, per access: true when every pointer given is 16-byte aligned and
// n is a multiple of 8. Views made by pf_slice0 can start anywhere, so every
// launcher asks before it takes a vector path; the scalar kernels serve the rest.
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
