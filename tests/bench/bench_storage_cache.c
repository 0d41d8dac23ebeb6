/* bench_storage_cache.c - cache-hit open times of the model cache: how long a
 * worker waits for a model that is already on the host (pin every blob, read
 * the manifest, check the model folder, touch the Redis LRU).
 *
 *   bench_storage_cache CACHE_DIR REDIS_ADDR MODEL_URL FILE_URL REPEAT
 * prints {"cache_open_ms": ..., "model_hit_ms": median, "file_hit_ms": median}.
 * Both URLs must be cached already (run_bench.sh fetches them first). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cache.h"

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double median_open(pf_cache *c, const pf_model_source *src, int repeat) {
    double *t = malloc(sizeof *t * (size_t)repeat);
    for (int i = 0; i < repeat; i++) {
        pf_cache_lease *l;
        pf_error err = {0};
        double t0 = now_ms();
        if (pf_cache_acquire(&l, c, src, &err)) {
            fprintf(stderr, "bench_storage_cache: %s\n", err.msg);
            exit(1);
        }
        pf_cache_release(l);
        t[i] = now_ms() - t0;
    }
    qsort(t, (size_t)repeat, sizeof *t, cmp);
    double m = t[repeat / 2];
    free(t);
    return m;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: bench_storage_cache CACHE_DIR REDIS_ADDR MODEL_URL FILE_URL REPEAT\n");
        return 2;
    }
    pf_cache_config cfg;
    pf_cache_config_default(&cfg);
    cfg.root = argv[1];
    cfg.redis_addr = argv[2];
    cfg.fetch.policy.allow_http = cfg.fetch.policy.allow_private = 1;
    int repeat = atoi(argv[5]);
    if (repeat < 1) repeat = 1;
    pf_error err = {0};
    pf_cache *c;
    double t0 = now_ms();
    if (pf_cache_open(&c, &cfg, &err)) {
        fprintf(stderr, "bench_storage_cache: %s\n", err.msg);
        return 1;
    }
    double open_ms = now_ms() - t0;
    char status[512];
    if (!pf_cache_status(c, status, sizeof status)) fprintf(stderr, "bench_storage_cache: %s\n", status);
    pf_model_source model, file;
    if (pf_model_source_init(&model, PF_SOURCE_DIFFUSERS, argv[3], NULL, 0, &err) ||
        pf_model_source_init(&file, PF_SOURCE_FILE, argv[4], NULL, 0, &err)) {
        fprintf(stderr, "bench_storage_cache: %s\n", err.msg);
        return 1;
    }
    double model_ms = median_open(c, &model, repeat), file_ms = median_open(c, &file, repeat);
    printf("{\"cache_open_ms\": %.3f, \"model_hit_ms\": %.3f, \"file_hit_ms\": %.3f}\n", open_ms, model_ms, file_ms);
    pf_cache_close(c);
    return 0;
}
