/* test_blas_core.c - the matrix products run on the kernels this processor's
 * features allow, whatever OpenBLAS's model table says (engine/core/blas_core.c).
 *
 * Fails when a fallback core (Prescott, Nehalem, ...) is in use on a processor
 * with AVX2, or a core without AVX-512 on one with AVX-512; then checks that
 * the switched kernels compute products right, and that the environment the
 * process was given is as it was. */
#include "test_util.h"

#include <cblas.h>
#include <strings.h>

#include "blas_core.h"

/* OpenBLAS 0.3.21's cores whose sgemm uses AVX2 or AVX-512 (Zen: the Haswell
 * kernels with AMD's blocking), and those of them with AVX-512. */
static const char *const avx2_cores[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"};
static const char *const avx512_cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};

static int in_list(const char *core, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcasecmp(core, list[i])) return 1;
    return 0;
}

static void test_core_fits_features(void **state) {
    (void)state;
    const char *core = pf_blas_core(), *forced = getenv("PERFLOW_BLAS_CORE");
    print_message("BLAS: %s\n", pf_blas_describe());
    if (forced && *forced) { /* a core named by hand must be the one running */
        assert_int_equal(strcasecmp(core, forced), 0);
        return;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vl");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx512 && !in_list(core, avx512_cores, sizeof avx512_cores / sizeof *avx512_cores))
        fail_msg("processor has AVX-512 but OpenBLAS runs its %s kernels", core);
    if (avx2 && !in_list(core, avx2_cores, sizeof avx2_cores / sizeof *avx2_cores))
        fail_msg("processor has AVX2 but OpenBLAS runs its %s kernels (a fallback)", core);
    if (avx2) assert_non_null(pf_blas_wanted());
#else
    skip();
#endif
}

/* c = a @ b (+ c) through cblas_sgemm on the selected kernels against a
 * double-precision loop, for shapes that leave partial register tiles and
 * for both transposes. */
static void test_products_right(void **state) {
    (void)state;
    static const int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {64, 96, 128}, {77, 768, 768}, {129, 33, 257}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
                float *a = malloc((size_t)m * k * sizeof *a), *b = malloc((size_t)k * n * sizeof *b);
                float *c = malloc((size_t)m * n * sizeof *c);
                unsigned seed = 1;
                for (int i = 0; i < m * k; i++) a[i] = (float)(rand_r(&seed) % 2001 - 1000) / 1000.0f;
                for (int i = 0; i < k * n; i++) b[i] = (float)(rand_r(&seed) % 2001 - 1000) / 1000.0f;
                for (int i = 0; i < m * n; i++) c[i] = 0.5f;
                cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k,
                            2.0f, a, ta ? m : k, b, tb ? k : n, 1.0f, c, n);
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++) {
                        double want = 0.5, mag = 0.5;
                        for (int p = 0; p < k; p++) {
                            double t = 2.0 * (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
                            want += t;
                            mag += fabs(t);
                        }
                        if (fabs(c[i * n + j] - want) > 1e-6 * mag + 1e-6)
                            fail_msg("sgemm %dx%dx%d ta=%d tb=%d: c[%d,%d] = %g, want %g (kernels %s)", m, n, k, ta,
                                     tb, i, j, c[i * n + j], want, pf_blas_core());
                    }
                free(a);
                free(b);
                free(c);
            }
}

/* The value of NAME in the environment the process started with
 * (/proc/self/environ), into buf; NULL when it was not set. */
static const char *initial_env(const char *name, char *buf, size_t cap) {
    FILE *f = fopen("/proc/self/environ", "rb");
    if (!f) return NULL;
    static char env[1 << 16];
    size_t n = fread(env, 1, sizeof env - 1, f);
    fclose(f);
    env[n] = 0;
    size_t len = strlen(name);
    for (size_t i = 0; i < n; i += strlen(env + i) + 1)
        if (!strncmp(env + i, name, len) && env[i + len] == '=') {
            snprintf(buf, cap, "%s", env + i + len + 1);
            return buf;
        }
    return NULL;
}

static void test_environment_kept(void **state) {
    (void)state;
    char buf[256];
    pf_blas_select();
    const char *was = initial_env("OPENBLAS_CORETYPE", buf, sizeof buf), *now = getenv("OPENBLAS_CORETYPE");
    if (!was) assert_null(now);
    else assert_string_equal(now, was);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_fits_features),
        cmocka_unit_test(test_products_right),
        cmocka_unit_test(test_environment_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
