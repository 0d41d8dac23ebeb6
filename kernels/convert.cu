// convert.cu - float32 <-> F16 / BF16 conversion kernels (see convert.cuh).
// The CPU twins are pf_convert_from_f32 / pf_convert_to_f32 in engine/tensor.c.
#include "convert.cuh"

static __global__ void from_f32_f16(__half *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2half_rn(src[i]);
}

static __global__ void from_f32_bf16(__nv_bfloat16 *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

static __global__ void to_f32_f16(float *dst, const __half *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __half2float(src[i]);
}

static __global__ void to_f32_bf16(float *dst, const __nv_bfloat16 *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

cudaError_t pf_cuda_from_f32(void *dst, pf_dtype dst_dt, const float *src, int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    switch (dst_dt) {
    case PF_F32: return cudaMemcpyAsync(dst, src, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, stream);
    case PF_F16: from_f32_f16<<<pf_grid(n), PF_THREADS, 0, stream>>>((__half *)dst, src, n); break;
    case PF_BF16: from_f32_bf16<<<pf_grid(n), PF_THREADS, 0, stream>>>((__nv_bfloat16 *)dst, src, n); break;
    }
    return cudaGetLastError();
}

cudaError_t pf_cuda_to_f32(float *dst, const void *src, pf_dtype src_dt, int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    switch (src_dt) {
    case PF_F32: return cudaMemcpyAsync(dst, src, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, stream);
    case PF_F16: to_f32_f16<<<pf_grid(n), PF_THREADS, 0, stream>>>(dst, (const __half *)src, n); break;
    case PF_BF16: to_f32_bf16<<<pf_grid(n), PF_THREADS, 0, stream>>>(dst, (const __nv_bfloat16 *)src, n); break;
    }
    return cudaGetLastError();
}
