/* rng.h - PyTorch's CPU random generator and torch.randn, reproduced bit for bit.
 *
 * diffusers draws its initial latents (and the refiner's VAE sample and noise)
 * from `torch.Generator("cpu").manual_seed(seed)`. A pf_rng seeded with the same
 * seed and asked for the same sequence of randn draws gives the same float32
 * bits, so "same seed, same image as diffusers" holds. The generator is a plain
 * value (no allocation): one per job, on the stack or inside a job struct.
 *
 * Successive draws continue one stream exactly as successive torch.randn calls
 * on one generator do, including torch's cached second Box-Muller value used
 * by draws of fewer than 16 elements (see rng.c).
 *
 * Not thread-safe: a generator belongs to one thread at a time. */
#ifndef PF_RNG_H
#define PF_RNG_H

#include <stddef.h>
#include <stdint.h>

#define PF_RNG_MT_N 624

/* Which of torch's normal_ kernels to imitate for draws of 16 or more elements.
 * torch picks one by the CPU it runs on and they differ in the last bits of
 * about a third of the values:
 *   PF_RNG_TORCH_X86:     the AVX2 kernel (Cephes polynomials from avx_mathfun.h,
 *                         with the FMAs GCC put in), which torch runs on every x86
 *                         CPU with AVX2, AVX-512 ones included. The default: it is
 *                         what diffusers users on x86 get.
 *   PF_RNG_TORCH_GENERIC: the generic kernel (libm logf and sincosf), which torch
 *                         runs without AVX2 (ATEN_CPU_CAPABILITY=default). */
typedef enum pf_rng_kernel { PF_RNG_TORCH_X86 = 0, PF_RNG_TORCH_GENERIC = 1 } pf_rng_kernel;

typedef struct pf_rng {
    uint32_t state[PF_RNG_MT_N]; /* mt19937 state, as at::mt19937_data_pod */
    int left;                    /* draws left before the next twist (torch's left_) */
    int next;                    /* index of the next state word (torch's next_) */
    uint64_t seed;               /* the seed given to pf_rng_seed, all 64 bits */
    int has_cached_normal;       /* torch's next_double_normal_sample_ is set */
    double cached_normal;        /* its value */
    pf_rng_kernel kernel;        /* which normal_ kernel randn imitates */
} pf_rng;

/* Seeds g like `torch.Generator("cpu").manual_seed(seed)`: only the low 32 bits
 * reach the Mersenne Twister (so seeds s and s + 2^32 give the same stream), the
 * cached normal is cleared, and kernel becomes PF_RNG_TORCH_X86. Cannot fail. */
void pf_rng_seed(pf_rng *g, uint64_t seed);

/* Chooses the torch kernel randn imitates from now on (see pf_rng_kernel). */
void pf_rng_set_kernel(pf_rng *g, pf_rng_kernel kernel);

/* Next 32 bits of the stream (torch's CPUGeneratorImpl::random). */
uint32_t pf_rng_random(pf_rng *g);

/* Next 64 bits: two 32-bit draws, the first one in the high half
 * (torch's CPUGeneratorImpl::random64). */
uint64_t pf_rng_random64(pf_rng *g);

/* Fills out[0..n) like `torch.randn(shape, generator=g, dtype=torch.float32)`
 * for any shape with n elements (only the element count matters, the tensor
 * being contiguous). n == 0 draws nothing. Cannot fail. */
void pf_rng_randn(pf_rng *g, float *out, size_t n);

#endif
