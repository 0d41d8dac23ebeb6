/* blas_core.c - which OpenBLAS kernels run, chosen from CPUID features.
 *
 * Debian's OpenBLAS is built with DYNAMIC_ARCH: it holds kernels for many x86
 * cores and picks one when it loads, by looking the processor's family and
 * model up in a table. A processor newer than the library (0.3.21 on an Intel
 * family 6 model 207, AVX-512) is not in the table, and OpenBLAS falls back to
 * its Prescott (SSE3) kernels: half the speed of the AVX-512 ones on the CLIP
 * encoder. Whether a kernel runs depends only on the instruction sets it
 * uses, so this module asks the processor for those (and the OS for their
 * register state, which __builtin_cpu_supports checks) and tells OpenBLAS:
 *
 *   AVX-512 F, CD, BW, DQ and VL  ->  SkylakeX (its sgemm is also Cooperlake's
 *                                     and Sapphire Rapids' in 0.3.21)
 *   AVX2 and FMA                  ->  Haswell
 *   AVX                           ->  SandyBridge
 *   otherwise                     ->  OpenBLAS's own choice
 *
 * $PERFLOW_BLAS_CORE names a core instead (any OpenBLAS core name; for
 * measurements and for a processor where a kernel misbehaves).
 *
 * How it is told: OpenBLAS reads $OPENBLAS_CORETYPE only in its library
 * constructor, which runs before any constructor of the program (a library
 * is initialised before the objects that need it, and an environment set in
 * .preinit_array is replaced when libc initialises). So the constructor below
 * sets $OPENBLAS_CORETYPE for a moment and has OpenBLAS choose again with
 * gotoblas_dynamic_quit and gotoblas_dynamic_init, the pair its DYNAMIC_ARCH
 * build exports for this: the first forgets the core table, the second reads
 * the variable, installs the table and sets its blocking sizes. This happens
 * before main, while the process has one thread and no product is running,
 * so it works the same for bin/perflow, bin/perflow-worker, the tests and the
 * benchmarks, with nothing for a user to remember. The variable is then put
 * back as it was, so child processes see the environment they were given.
 * The pair is looked up with dlsym: a build without DYNAMIC_ARCH lacks it and
 * keeps the kernels it was built for.
 *
 * Why OpenBLAS and not another library or our own kernels (measured on a
 * 2-core AMD EPYC, family 26, AVX-512, one thread, best of 7, sgemm GFLOP/s
 * for 154x768x768 and 128x512x1152, two shapes of CLIP and the VAE): OpenBLAS's
 * SkylakeX kernels 214 and 205, its Haswell kernels 119 and 124; Debian 12's
 * BLIS 0.9 does not know that family either and runs its generic kernels (10
 * and 14), and with BLIS_ARCH_TYPE=skx by hand it is no faster than OpenBLAS
 * (192 and 206). The convolutions of a UNet step reach 190-225 GFLOP/s a core
 * through OpenBLAS, near the processor's peak, which own GEMM kernels could
 * not beat by much. */
#include "blas_core.h"

#include <cblas.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char wanted_name[32]; /* core asked for */
static const char *wanted;   /* wanted_name, or NULL when none was asked for */
static const char *reason;   /* why that core, for pf_blas_describe */
static char describe[160];

/* The OpenBLAS core whose kernels use only instructions this processor and
 * its OS support, the widest first; NULL where none is known to be better
 * than OpenBLAS's own pick. Sets *why to the feature that decided. */
static const char *core_from_features(const char **why) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl")) {
        *why = "chosen from CPUID: AVX-512";
        return "SkylakeX";
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *why = "chosen from CPUID: AVX2+FMA";
        return "Haswell";
    }
    if (__builtin_cpu_supports("avx")) {
        *why = "chosen from CPUID: AVX";
        return "SandyBridge";
    }
#endif
    *why = "OpenBLAS's own choice: no AVX";
    return NULL;
}

static void select_once(void) {
    const char *env = getenv("PERFLOW_BLAS_CORE");
    const char *core = env && *env ? env : core_from_features(&reason);
    if (env && *env) reason = "from PERFLOW_BLAS_CORE";
    if (core) {
        snprintf(wanted_name, sizeof wanted_name, "%s", core);
        wanted = wanted_name;
    }
    if (wanted && strcasecmp(openblas_get_corename(), wanted) != 0) {
        void (*quit)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit");
        void (*init)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init");
        if (quit && init) {
            const char *was = getenv("OPENBLAS_CORETYPE");
            char *saved = was ? strdup(was) : NULL;
            setenv("OPENBLAS_CORETYPE", wanted, 1);
            quit();
            init();
            if (saved) setenv("OPENBLAS_CORETYPE", saved, 1);
            else unsetenv("OPENBLAS_CORETYPE");
            free(saved);
        } else {
            reason = "OpenBLAS built for one core: not switchable";
        }
    }
    /* "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..." -> "OpenBLAS 0.3.21" */
    const char *cfg = openblas_get_config();
    int name_len = 0, spaces = 0;
    while (cfg[name_len] && !(cfg[name_len] == ' ' && ++spaces == 2)) name_len++;
    snprintf(describe, sizeof describe, "%.*s, %s kernels (%s)", name_len, cfg, openblas_get_corename(), reason);
}

void pf_blas_select(void) { pthread_once(&once, select_once); }

/* Before main: see the title comment. */
__attribute__((constructor)) static void select_at_start(void) { pf_blas_select(); }

const char *pf_blas_core(void) {
    pf_blas_select();
    return openblas_get_corename();
}

const char *pf_blas_wanted(void) {
    pf_blas_select();
    return wanted;
}

const char *pf_blas_describe(void) {
    pf_blas_select();
    return describe;
}
