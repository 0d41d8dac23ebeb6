/* bench_unet.c - CPU time of the real-size SD-1.5 UNet (random weights): batch 2
 * (the classifier-free guidance pair), 4x64x64 latents (512x512 images), 77x768
 * context, t = 500. Usage: bench_unet MODEL_DIR [REPEAT] [THREADS]
 * Prints one JSON line like tests/reference/bench_reference.py. */
#include "bench_util.h"
#include "unet.h"

typedef struct unet_run {
    pf_unet *m;
    pf_tensor *x, *ctx, *out; /* (B, C, H, W), (B, L, cross_attention_dim), (B, C_out, H, W) */
} unet_run;

static int forward(void *ctx, pf_error *err) {
    unet_run *r = ctx;
    const float t[2] = {500.0f, 500.0f};
    return pf_unet_forward(r->m, r->out, r->x, t, r->ctx, NULL, NULL, err);
}

int main(int argc, char **argv) {
    pf_bench_args a;
    if (pf_bench_args_parse(&a, "unet", argc, argv)) return 2;
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(a.threads);
    unet_run r;
    if (pf_unet_load_dir(&r.m, be, a.model_dir, NULL, &err)) return pf_bench_fail("unet", &err);
    const pf_unet_config *c = pf_unet_get_config(r.m);
    const int64_t B = 2, H = 64, W = 64, L = 77;
    srand(0);
    r.x = pf_bench_noise(be, 4, (int64_t[]){B, c->in_channels, H, W});
    r.ctx = pf_bench_noise(be, 3, (int64_t[]){B, L, c->cross_attention_dim});
    r.out = pf_new4(be, B, c->out_channels, H, W);
    int rc = pf_bench_time("unet", be, a.repeat, forward, &r);
    pf_free(r.out);
    pf_free(r.ctx);
    pf_free(r.x);
    pf_unet_free(r.m);
    pf_backend_free(be);
    return rc;
}
