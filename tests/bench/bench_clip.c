/* bench_clip.c - CPU time of the real-size CLIP ViT-L/14 text encoder (random
 * weights, batch 2, 77 tokens). Usage: bench_clip MODEL_DIR [REPEAT] [THREADS]
 * Prints one JSON line like tests/reference/bench_reference.py. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend.h"
#include "clip.h"

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
        fprintf(stderr, "usage: bench_clip MODEL_DIR [REPEAT] [THREADS]\n");
        return 2;
    }
    int repeat = argc > 2 ? atoi(argv[2]) : 5, threads = argc > 3 ? atoi(argv[3]) : 0;
    if (repeat < 1 || repeat > 100) repeat = 5;
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(threads);
    pf_clip_text_model *te;
    if (pf_clip_text_model_load_dir(&te, be, argv[1], &err)) {
        fprintf(stderr, "bench_clip: %s\n", err.msg);
        return 1;
    }
    const int B = 2, L = 77, D = pf_clip_text_model_config(te)->hidden_size;
    int32_t ids[2 * 77];
    srand(0);
    for (int i = 0; i < B * L; i++) ids[i] = rand() % pf_clip_text_model_config(te)->vocab_size;
    pf_tensor *out = pf_new3(be, B, L, D);
    double runs[100];
    for (int r = -1; r < repeat; r++) { /* r = -1: warm-up */
        double t = now();
        if (pf_clip_text_model_forward(te, out, ids, B, L, 0, &err)) {
            fprintf(stderr, "bench_clip: %s\n", err.msg);
            return 1;
        }
        pf_synchronize(be);
        if (r >= 0) runs[r] = now() - t;
    }
    double sorted[100];
    for (int r = 0; r < repeat; r++) sorted[r] = runs[r];
    qsort(sorted, (size_t)repeat, sizeof(double), cmp);
    printf("{\"what\": \"clip\", \"impl\": \"perflow %s\", \"seconds\": %.6f, \"runs\": [", be->name, sorted[repeat / 2]);
    for (int r = 0; r < repeat; r++) printf(r ? ", %.6f" : "%.6f", runs[r]);
    printf("]}\n");
    pf_free(out);
    pf_clip_text_model_free(te);
    pf_backend_free(be);
    return 0;
}
