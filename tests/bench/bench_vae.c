/* bench_vae.c - CPU time of the real-size SD-1.5 VAE decoder (random weights):
 * latents [1, 4, 64, 64] -> a 512x512 image. Usage: bench_vae MODEL_DIR [REPEAT] [THREADS]
 * Prints one JSON line like tests/reference/bench_reference.py. */
#include "bench_util.h"
#include "vae.h"

typedef struct vae_run {
    pf_vae *vae;
    pf_tensor *latents, *image; /* (B, L, H, W), (B, C_out, H f, W f) */
} vae_run;

static int forward(void *ctx, pf_error *err) {
    vae_run *r = ctx;
    return pf_vae_decode(r->vae, r->image, r->latents, PF_VAE_TILING_OFF, err);
}

int main(int argc, char **argv) {
    pf_bench_args a;
    if (pf_bench_args_parse(&a, "vae", argc, argv)) return 2;
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(a.threads);
    vae_run r;
    if (pf_vae_load_dir(&r.vae, be, a.model_dir, &err)) return pf_bench_fail("vae", &err);
    const pf_vae_config *c = pf_vae_config_of(r.vae);
    const int64_t B = 1, H = 64, W = 64, f = pf_vae_scale_factor(r.vae);
    srand(0);
    r.latents = pf_bench_noise(be, 4, (int64_t[]){B, c->latent_channels, H, W});
    r.image = pf_new4(be, B, c->out_channels, H * f, W * f);
    int rc = pf_bench_time("vae", be, a.repeat, forward, &r);
    pf_free(r.image);
    pf_free(r.latents);
    pf_vae_free(r.vae);
    pf_backend_free(be);
    return rc;
}
