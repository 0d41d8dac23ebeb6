/* bench_unet.c - CPU time of the real-size SD-1.5 UNet (random weights): batch 2
 * (the classifier-free guidance pair), 4x64x64 latents (512x512 images), 77x768
 * context, t = 500. Usage: bench_unet MODEL_DIR [REPEAT] [THREADS]
 * Prints one JSON line like tests/reference/bench_reference.py. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend.h"
#include "unet.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Uniform noise in [-1, 1): the timing does not depend on the values. */
static pf_tensor *noise(pf_backend *be, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *h = malloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++) h[i] = 2.0f * rand() / ((float)RAND_MAX + 1) - 1.0f;
    pf_tensor *t = pf_from_host(be, ndim, shape, h);
    free(h);
    return t;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_unet MODEL_DIR [REPEAT] [THREADS]\n");
        return 2;
    }
    int repeat = argc > 2 ? atoi(argv[2]) : 5, threads = argc > 3 ? atoi(argv[3]) : 0;
    if (repeat < 1 || repeat > 100) repeat = 5;
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(threads);
    pf_unet *m;
    if (pf_unet_load_dir(&m, be, argv[1], NULL, &err)) {
        fprintf(stderr, "bench_unet: %s\n", err.msg);
        return 1;
    }
    const pf_unet_config *c = pf_unet_get_config(m);
    const int64_t B = 2, H = 64, W = 64, L = 77;
    srand(0);
    pf_tensor *x = noise(be, 4, (int64_t[]){B, c->in_channels, H, W});
    pf_tensor *ctx = noise(be, 3, (int64_t[]){B, L, c->cross_attention_dim});
    pf_tensor *out = pf_new4(be, B, c->out_channels, H, W);
    const float t[2] = {500.0f, 500.0f};
    double runs[100];
    for (int r = -1; r < repeat; r++) { /* r = -1: warm-up */
        double t0 = now();
        if (pf_unet_forward(m, out, x, t, ctx, NULL, NULL, &err)) {
            fprintf(stderr, "bench_unet: %s\n", err.msg);
            return 1;
        }
        pf_synchronize(be);
        if (r >= 0) runs[r] = now() - t0;
    }
    double sorted[100];
    for (int r = 0; r < repeat; r++) sorted[r] = runs[r];
    qsort(sorted, (size_t)repeat, sizeof(double), cmp);
    printf("{\"what\": \"unet\", \"impl\": \"perflow %s\", \"seconds\": %.6f, \"runs\": [", be->name, sorted[repeat / 2]);
    for (int r = 0; r < repeat; r++) printf(r ? ", %.6f" : "%.6f", runs[r]);
    printf("]}\n");
    pf_free(out);
    pf_free(ctx);
    pf_free(x);
    pf_unet_free(m);
    pf_backend_free(be);
    return 0;
}
