// activation.cuh - elementwise activations (SiLU, GELU, GELU-tanh, QuickGELU)
// and diffusers' GEGLU. CPU twins: cpu_activation and cpu_geglu in
// engine/backend_cpu.c.
#ifndef PF_KERNELS_ACTIVATION_CUH
#define PF_KERNELS_ACTIVATION_CUH

#include "common.cuh"

// y[i] = act(x[i]), act a pf_act value. y may equal x. vec: 16-byte accesses
// where pf_vec8 allows (the result is the same either way). T: __half or float.
template <typename T>
cudaError_t pf_cuda_activation(T *y, const T *x, int act, int vec, int64_t n, cudaStream_t stream);
// x[rows, 2 nh] = (h, gate): y[r, j] = h[r, j] * gelu(gate[r, j]) (exact GELU).
template <typename T>
cudaError_t pf_cuda_geglu(T *y, const T *x, int vec, int64_t rows, int64_t nh, cudaStream_t stream);

#endif
