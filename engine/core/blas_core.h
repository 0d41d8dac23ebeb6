/* blas_core.h - which OpenBLAS kernels the engine's matrix products run on:
 * chosen from the processor's CPUID features, not from OpenBLAS's table of
 * processor models (see blas_core.c). */
#ifndef PF_BLAS_CORE_H
#define PF_BLAS_CORE_H

/* Makes OpenBLAS run the kernels chosen from this processor's features (or
 * from $PERFLOW_BLAS_CORE) before the first product. Idempotent and
 * thread-safe; it also runs by itself before main in every program that
 * links this module. Never fails: where OpenBLAS cannot be switched (a build
 * without DYNAMIC_ARCH, a processor that is not x86-64), its own choice stays,
 * and pf_blas_describe says so. */
void pf_blas_select(void);

/* The name OpenBLAS gives the kernels in use now ("SkylakeX", "Haswell",
 * "Prescott", ...), after pf_blas_select. A static string. */
const char *pf_blas_core(void);

/* The core perflow asked for from the features ("SkylakeX", "Haswell",
 * "SandyBridge"), or from $PERFLOW_BLAS_CORE; NULL when it asked for none (a
 * processor without AVX, or not x86-64). */
const char *pf_blas_wanted(void);

/* One line for logs and benchmarks, e.g. "OpenBLAS 0.3.21, SkylakeX kernels
 * (chosen from CPUID: AVX-512)"; a static string. */
const char *pf_blas_describe(void);

#endif
