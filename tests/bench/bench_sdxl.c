/* bench_sdxl.c - CPU time of the real-size SDXL UNet (random weights): batch 2 (the
 * classifier-free guidance pair), 4x64x64 latents, 77x2048 context, pooled text
 * embeddings (2, 1280) and time ids, t = 500.
 * Usage: bench_sdxl MODEL_DIR [REPEAT] [THREADS]
 * Prints one JSON line like tests/reference/bench_reference.py. */
#include "bench_util.h"
#include "unet.h"

typedef struct sdxl_run {
    pf_unet *m;
    pf_tensor *x, *ctx, *pooled, *out; /* (B, C, H, W), (B, L, X), (B, P), (B, C_out, H, W) */
    float time_ids[2 * 6];
} sdxl_run;

static int forward(void *ctx, pf_error *err) {
    sdxl_run *r = ctx;
    const float t[2] = {500.0f, 500.0f};
    pf_unet_added added = {r->pooled, r->time_ids, NULL, 0};
    return pf_unet_forward_added(r->m, r->out, r->x, t, r->ctx, &added, NULL, NULL, err);
}

int main(int argc, char **argv) {
    pf_bench_args a;
    if (pf_bench_args_parse(&a, "sdxl", argc, argv)) return 2;
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(a.threads);
    sdxl_run r;
    if (pf_unet_load_dir(&r.m, be, a.model_dir, NULL, &err)) return pf_bench_fail("sdxl", &err);
    const pf_unet_config *c = pf_unet_get_config(r.m);
    if (!c->text_time) {
        fprintf(stderr, "bench_sdxl: %s is not an SDXL UNet (no text_time embedding)\n", a.model_dir);
        return 1;
    }
    const int64_t B = 2, H = 64, W = 64, L = 77, P = c->add_embed_in - 6 * c->addition_time_embed_dim;
    srand(0);
    r.x = pf_bench_noise(be, 4, (int64_t[]){B, c->in_channels, H, W});
    r.ctx = pf_bench_noise(be, 3, (int64_t[]){B, L, c->cross_attention_dim});
    r.pooled = pf_bench_noise(be, 2, (int64_t[]){B, P});
    for (int b = 0; b < 2; b++) {
        const float ids[6] = {512, 512, 0, 0, 512, 512};
        memcpy(r.time_ids + 6 * b, ids, sizeof ids);
    }
    r.out = pf_new4(be, B, c->out_channels, H, W);
    int rc = pf_bench_time("sdxl", be, a.repeat, forward, &r);
    pf_tensor *dead[] = {r.out, r.pooled, r.ctx, r.x};
    for (size_t i = 0; i < sizeof dead / sizeof *dead; i++) pf_free(dead[i]);
    pf_unet_free(r.m);
    pf_backend_free(be);
    return rc;
}
