// embedding.cuh - y[n, :] = table[ids[n], :]. CPU twin: cpu_embedding in
// engine/backend_cpu.c.
#ifndef PF_KERNELS_EMBEDDING_CUH
#define PF_KERNELS_EMBEDDING_CUH

#include "common.cuh"

// ids: count device int32 values, each already checked < the table's rows.
// T: __half or float.
template <typename T>
cudaError_t pf_cuda_embedding(T *y, const T *table, const int32_t *ids, int64_t count, int64_t c,
                              cudaStream_t stream);

#endif
