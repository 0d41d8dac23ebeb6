// allocator.cu - caching allocator (see allocator.cuh).
//
// Free blocks are kept in one list ordered by size (a multimap); a request of
// n bytes takes the smallest free block of at least n bytes, if that block is
// at most 25% larger, else a new cudaMalloc of exactly n (rounded up to 512).
// Best fit with a bounded overshoot plays the role of size buckets without
// rounding every block up to a bucket size: weights, which are allocated once
// and never freed, stay exactly sized, and a request recurring each step
// finds the block of exactly its size that the previous step released.
#include <map>
#include <unordered_map>

#include "allocator.cuh"

#define ROUND 512

struct pf_cuda_allocator {
    cudaStream_t stream;
    std::multimap<size_t, void *> cached;     // size -> free block
    std::unordered_map<void *, size_t> live;  // block handed out -> its size
    pf_mem_stats st;
};

pf_cuda_allocator *pf_cuda_allocator_new(cudaStream_t stream) {
    pf_cuda_allocator *a = new pf_cuda_allocator();
    a->stream = stream;
    a->st = pf_mem_stats();
    return a;
}

static void note_in_use(pf_cuda_allocator *a, size_t n) {
    a->st.in_use += n;
    if (a->st.in_use > a->st.peak_in_use) a->st.peak_in_use = a->st.in_use;
}

// Frees every cached block; queued kernels may still read some: wait for them.
static void empty_cache(pf_cuda_allocator *a) {
    cudaStreamSynchronize(a->stream);
    for (auto &kv : a->cached) {
        cudaFree(kv.second);
        a->st.reserved -= kv.first;
    }
    a->cached.clear();
}

void *pf_cuda_allocator_get(pf_cuda_allocator *a, size_t n, cudaError_t *err) {
    n = (n + ROUND - 1) / ROUND * ROUND;
    if (n == 0) n = ROUND;
    auto it = a->cached.lower_bound(n);
    if (it != a->cached.end() && it->first <= n + n / 4) {
        void *p = it->second;
        size_t size = it->first;
        a->cached.erase(it);
        a->live[p] = size;
        note_in_use(a, size);
        return p;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n);
    if (e == cudaErrorMemoryAllocation) { // cached blocks of other sizes may make room
        cudaGetLastError();
        empty_cache(a);
        e = cudaMalloc(&p, n);
    }
    if (e != cudaSuccess) {
        cudaGetLastError(); // a failed allocation must not fail the next kernel launch check
        *err = e;
        return NULL;
    }
    a->st.device_allocs++;
    a->st.reserved += n;
    if (a->st.reserved > a->st.peak_reserved) a->st.peak_reserved = a->st.reserved;
    a->live[p] = n;
    note_in_use(a, n);
    return p;
}

void pf_cuda_allocator_put(pf_cuda_allocator *a, void *p) {
    if (!p) return;
    auto it = a->live.find(p);
    PF_CHECK(it != a->live.end()); // every pointer released here came from pf_cuda_allocator_get
    a->st.in_use -= it->second;
    a->cached.emplace(it->second, p);
    a->live.erase(it);
}

void pf_cuda_allocator_stats(const pf_cuda_allocator *a, pf_mem_stats *out) { *out = a->st; }

void pf_cuda_allocator_reset_peak(pf_cuda_allocator *a) {
    a->st.peak_in_use = a->st.in_use;
    a->st.peak_reserved = a->st.reserved;
}

void pf_cuda_allocator_free(pf_cuda_allocator *a) {
    if (!a) return;
    empty_cache(a);
    for (auto &kv : a->live) cudaFree(kv.first);
    delete a;
}
