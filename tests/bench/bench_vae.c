/* bench_vae.c - CPU time of the real-size SD-1.5 VAE decoder (random weights):
 * latents [1, 4, 64, 64] -> a 512x512 image. Usage: bench_vae MODEL_DIR [REPEAT] [THREADS]
 * Prints one JSON line like tests/reference/bench_reference.py. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend.h"
#include "vae.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_vae MODEL_DIR [REPEAT] [THREADS]\n");
        return 2;
    }
    int repeat = argc > 2 ? atoi(argv[2]) : 5, threads = argc > 3 ? atoi(argv[3]) : 0;
    if (repeat < 1 || repeat > 100) repeat = 5;
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(threads);
    pf_vae *vae;
    if (pf_vae_load_dir(&vae, be, argv[1], &err)) {
        fprintf(stderr, "bench_vae: %s\n", err.msg);
        return 1;
    }
    const int B = 1, L = pf_vae_config_of(vae)->latent_channels, H = 64, W = 64, f = pf_vae_scale_factor(vae);
    float *host = malloc((size_t)B * L * H * W * sizeof(float));
    srand(0);
    for (int i = 0; i < B * L * H * W; i++) host[i] = (float)rand() / RAND_MAX * 2.0f - 1.0f;
    pf_tensor *latents = pf_from_host(be, 4, (int64_t[]){B, L, H, W}, host);
    pf_tensor *image = pf_new4(be, B, pf_vae_config_of(vae)->out_channels, H * f, W * f);
    double runs[100];
    for (int r = -1; r < repeat; r++) { /* r = -1: warm-up */
        double t = now();
        if (pf_vae_decode(vae, image, latents, &err)) {
            fprintf(stderr, "bench_vae: %s\n", err.msg);
            return 1;
        }
        pf_synchronize(be);
        if (r >= 0) runs[r] = now() - t;
    }
    double sorted[100];
    for (int r = 0; r < repeat; r++) sorted[r] = runs[r];
    qsort(sorted, (size_t)repeat, sizeof(double), cmp);
    printf("{\"what\": \"vae\", \"impl\": \"perflow %s\", \"seconds\": %.6f, \"runs\": [", be->name, sorted[repeat / 2]);
    for (int r = 0; r < repeat; r++) printf(r ? ", %.6f" : "%.6f", runs[r]);
    printf("]}\n");
    free(host);
    pf_free(image);
    pf_free(latents);
    pf_vae_free(vae);
    pf_backend_free(be);
    return 0;
}
