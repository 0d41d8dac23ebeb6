/* bench_refine.c - CPU time of one refiner denoising step at 1024 x 1024: the real-size
 * SD-1.5 ControlNet and UNet (random weights) on the classifier-free guidance batch
 * (B = 2, latents 4 x 128 x 128, 77 x 768 context, a 3 x 1024 x 1024 condition image),
 * the ControlNet's residuals fed to the UNet, t = 999. Usage:
 * bench_refine MODEL_DIR [REPEAT] [THREADS], MODEL_DIR holding unet/ and controlnet/.
 * Prints one JSON line like tests/reference/bench_reference.py (with peak RSS). */
#include "bench_util.h"
#include "controlnet.h"
#include "unet.h"

typedef struct refine_run {
    pf_unet *unet;
    pf_controlnet *cn;
    pf_tensor *x, *ctx, *cond, *out; /* (B, 4, h, w), (B, 77, 768), (B, 3, 8h, 8w), (B, 4, h, w) */
} refine_run;

static int step(void *ctx, pf_error *err) {
    refine_run *r = ctx;
    const float t[2] = {999.0f, 999.0f};
    const int n = pf_controlnet_num_residuals(r->cn);
    pf_tensor *down[64], *mid;
    if (pf_controlnet_forward(r->cn, down, &mid, r->x, t, r->ctx, NULL, r->cond, 1.0f, err)) return -1;
    int rc = pf_unet_forward(r->unet, r->out, r->x, t, r->ctx, (const pf_tensor *const *)down, mid, err);
    for (int i = 0; i < n; i++) pf_free(down[i]);
    pf_free(mid);
    return rc;
}

int main(int argc, char **argv) {
    pf_bench_args a;
    if (pf_bench_args_parse(&a, "refine", argc, argv)) return 2;
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(a.threads);
    refine_run r;
    char cn_dir[4096];
    snprintf(cn_dir, sizeof cn_dir, "%s/controlnet", a.model_dir);
    if (pf_unet_load_dir(&r.unet, be, a.model_dir, NULL, &err) || pf_controlnet_load_dir(&r.cn, be, cn_dir, &err))
        return pf_bench_fail("refine", &err);
    PF_CHECK(pf_controlnet_num_residuals(r.cn) <= 64);
    const pf_unet_config *c = pf_unet_get_config(r.unet);
    const int64_t B = 2, h = 128, w = 128, L = 77, f = pf_controlnet_cond_scale(r.cn);
    srand(0);
    r.x = pf_bench_noise(be, 4, (int64_t[]){B, c->in_channels, h, w});
    r.ctx = pf_bench_noise(be, 3, (int64_t[]){B, L, c->cross_attention_dim});
    r.cond = pf_bench_noise(be, 4, (int64_t[]){B, 3, h * f, w * f});
    r.out = pf_new4(be, B, c->out_channels, h, w);
    int rc = pf_bench_time("refine", be, a.repeat, step, &r);
    pf_tensor *dead[] = {r.out, r.cond, r.ctx, r.x};
    for (size_t i = 0; i < sizeof dead / sizeof *dead; i++) pf_free(dead[i]);
    pf_unet_free(r.unet);
    pf_controlnet_free(r.cn);
    pf_backend_free(be);
    return rc;
}
