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
