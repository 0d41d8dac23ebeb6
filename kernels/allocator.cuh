// allocator.cuh - the CUDA backend's caching device allocator.
//
// Every tensor and every op scratch buffer comes from here; cudaMalloc is
// called only when no cached block fits, so a denoising loop that repeats the
// same allocations step after step stops calling it after its first step.
// Single stream: a block released while kernels queued before the release
// still read it can be handed out again at once, because whoever gets it next
// enqueues its work on the same stream, after those kernels (PyTorch's caching
// allocator relies on the same ordering). Not thread-safe: a backend is used
// by one thread at a time.
#ifndef PF_KERNELS_ALLOCATOR_CUH
#define PF_KERNELS_ALLOCATOR_CUH

#include <cuda_runtime.h>
#include <stddef.h>

extern "C" {
#include "backend.h" // pf_mem_stats
}

struct pf_cuda_allocator;

// An allocator for the current device whose blocks are used on `stream`.
pf_cuda_allocator *pf_cuda_allocator_new(cudaStream_t stream);
// At least n bytes of device memory (256-byte aligned; n = 0 gives a valid
// block). Returns NULL when the device has no room even after the cache was
// emptied; *err then says why (cudaErrorMemoryAllocation or an earlier
// asynchronous error surfacing here). The CUDA error state is left clear.
void *pf_cuda_allocator_get(pf_cuda_allocator *a, size_t n, cudaError_t *err);
// Returns p (from pf_cuda_allocator_get) to the cache. NULL is a no-op.
void pf_cuda_allocator_put(pf_cuda_allocator *a, void *p);
void pf_cuda_allocator_stats(const pf_cuda_allocator *a, pf_mem_stats *out);
void pf_cuda_allocator_reset_peak(pf_cuda_allocator *a);
// Synchronizes the stream and frees every block, cached or not.
void pf_cuda_allocator_free(pf_cuda_allocator *a);

#endif
