/* bench_util.h - what the benchmarks share: the command line, random inputs,
 * and the timing loop with the JSON line that tests/bench/run_bench.sh reads
 * beside tests/reference/bench_reference.py's.
 *
 * Benchmarks are programs, not library code: these helpers print their errors
 * and return the exit status for main. */
#ifndef PF_BENCH_UTIL_H
#define PF_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "backend.h"
#include "blas_core.h"

#define PF_BENCH_MAX_REPEAT 100

/* The command line of every benchmark: MODEL_DIR [REPEAT] [THREADS]. */
typedef struct pf_bench_args {
    const char *model_dir;
    int repeat;  /* timed runs, 1..PF_BENCH_MAX_REPEAT (default 5) */
    int threads; /* CPU backend threads; 0: all cores */
} pf_bench_args;

/* Fills a from argv; a REPEAT outside 1..PF_BENCH_MAX_REPEAT becomes 5. Returns
 * 0, or prints the usage of bench_<what> and returns 2 (main's exit status)
 * when MODEL_DIR is missing. */
static inline int pf_bench_args_parse(pf_bench_args *a, const char *what, int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_%s MODEL_DIR [REPEAT] [THREADS]\n", what);
        return 2;
    }
    a->model_dir = argv[1];
    a->repeat = argc > 2 ? atoi(argv[2]) : 5;
    a->threads = argc > 3 ? atoi(argv[3]) : 0;
    if (a->repeat < 1 || a->repeat > PF_BENCH_MAX_REPEAT) a->repeat = 5;
    return 0;
}

/* Uniform noise in [-1, 1) from rand() as a new tensor on be: the timing does
 * not depend on the values. */
static inline pf_tensor *pf_bench_noise(pf_backend *be, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *h = malloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++) h[i] = 2.0f * rand() / ((float)RAND_MAX + 1) - 1.0f;
    pf_tensor *t = pf_from_host(be, ndim, shape, h);
    free(h);
    return t;
}

/* Prints "bench_<what>: <err's message>" on stderr; returns 1, main's exit
 * status for a failure. */
static inline int pf_bench_fail(const char *what, const pf_error *err) {
    fprintf(stderr, "bench_%s: %s\n", what, err->msg);
    return 1;
}

static inline double pf_bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* qsort's comparison of doubles, ascending. */
static inline int pf_bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One run of the code under test on ctx; returns 0, or -1 with err set. */
typedef int (*pf_bench_fn)(void *ctx, pf_error *err);

/* Peak resident set of this process so far, in MiB (getrusage; Linux reports KiB). */
static inline double pf_bench_peak_rss_mb(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? 0.0 : (double)ru.ru_maxrss / 1024.0;
}

/* Times fn(ctx): one warm-up run, then `repeat` (1..PF_BENCH_MAX_REPEAT) timed
 * runs, each waited for with pf_synchronize(be). Prints {"what": what, "impl": "perflow <backend>",
 * "seconds": the median, "runs": [each run], "peak_rss_mb": the process's peak
 * resident memory, weights included, "kernels": the BLAS kernels the products
 * ran on (engine/core/blas_core.c)} on one line and returns 0. When fn fails,
 * returns pf_bench_fail(what, its error). */
static inline int pf_bench_time(const char *what, pf_backend *be, int repeat, pf_bench_fn fn, void *ctx) {
    PF_CHECK(repeat >= 1 && repeat <= PF_BENCH_MAX_REPEAT);
    double runs[PF_BENCH_MAX_REPEAT], sorted[PF_BENCH_MAX_REPEAT];
    for (int r = -1; r < repeat; r++) { /* r = -1: warm-up */
        pf_error err;
        double t0 = pf_bench_now();
        if (fn(ctx, &err)) return pf_bench_fail(what, &err);
        pf_synchronize(be);
        if (r >= 0) runs[r] = pf_bench_now() - t0;
    }
    memcpy(sorted, runs, (size_t)repeat * sizeof *runs);
    qsort(sorted, (size_t)repeat, sizeof *sorted, pf_bench_cmp_double);
    printf("{\"what\": \"%s\", \"impl\": \"perflow %s\", \"seconds\": %.6f, \"runs\": [", what, be->name,
           sorted[repeat / 2]);
    for (int r = 0; r < repeat; r++) printf(r ? ", %.6f" : "%.6f", runs[r]);
    printf("], \"peak_rss_mb\": %.1f, \"kernels\": \"%s\"}\n", pf_bench_peak_rss_mb(), pf_blas_describe());
    return 0;
}

#endif
