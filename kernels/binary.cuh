// binary.cuh - y = a + b and y = a * b with b broadcast to a's shape (the
// semantics of pf_add / pf_mul). CPU twin: cpu_binary in engine/backend_cpu.c.
#ifndef PF_KERNELS_BINARY_CUH
#define PF_KERNELS_BINARY_CUH

#include "common.cuh"

// a's shape after merging adjacent dimensions that b matches or broadcasts
// alike (see pf_cuda_bcast_plan): element i of a reads b at
// sum_d idx_d(i) * bstride[d], idx_d the i's coordinate in dims size[0..m).
struct pf_bcast {
    int m;                        // 1..PF_MAX_DIMS merged dimensions
    int64_t size[PF_MAX_DIMS];    // merged sizes, outermost first
    int64_t bstride[PF_MAX_DIMS]; // b's stride per merged dimension (0: broadcast)
};

// Plans the broadcast of b (b_shape, already of a's ndim) onto a_shape.
pf_bcast pf_cuda_bcast_plan(int ndim, const int64_t *a_shape, const int64_t *b_shape);
// y[i] = a[i] (+ or *) b[offset(i)], i < n = numel(a). y may equal a. vec:
// 8 elements a thread where the innermost merged size is a multiple of 8 and
// pf_vec8 allows (the result is the same either way). T: __half or float.
template <typename T>
cudaError_t pf_cuda_binary(T *y, const T *a, const T *b, const pf_bcast *plan, int is_mul, int vec, int64_t n,
                           cudaStream_t stream);

#endif
