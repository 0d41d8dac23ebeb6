// convert.cuh - float32 <-> storage dtype (F32, F16, BF16) on the device, the
// second half of every upload and the first half of every download.
#ifndef PF_KERNELS_CONVERT_CUH
#define PF_KERNELS_CONVERT_CUH

#include "common.cuh"

// dst[i] = src[i] rounded to dst_dt (round to nearest even, as pf_f32_to_f16 and
// pf_f32_to_bf16 do on the host), i < n.
cudaError_t pf_cuda_from_f32(void *dst, pf_dtype dst_dt, const float *src, int64_t n, cudaStream_t stream);
// dst[i] = src[i] as float, exactly, i < n.
cudaError_t pf_cuda_to_f32(float *dst, const void *src, pf_dtype src_dt, int64_t n, cudaStream_t stream);

#endif
