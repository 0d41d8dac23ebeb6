/* bench_gpu.c - the CUDA backend on real-size SD-1.5 shapes (random weights, the
 * folder tests/device/bench_diffusers.py writes): one UNet CFG step at 64x64
 * latents (batch 2), a VAE decode to 512x512, whole 4-step 512x512 CFG
 * images at batch 1 and 8, and the refiner (MODEL_DIR/controlnet) taking 512 px
 * images to 1024 px in 4 CFG steps at batch 1 and 4. Usage: bench_gpu MODEL_DIR [REPEAT]
 * With a third argument "sdxl", MODEL_DIR is an SDXL folder (bench_diffusers_sdxl.py)
 * and the benchmark is a 4-step 1024 x 1024 SDXL image with CFG at batch 1 and 4.
 * With "profile" instead (and PERFLOW_PROFILE=1 in the environment: profile.h),
 * one warm 4-step 512 px CFG image at batch 1 and at batch 8, each with its
 * time per op kind: where a batch's time goes, not how fast it is.
 *
 * Each benchmark runs on a fresh CUDA backend (so its peak memory holds only
 * its own weights and activations, as the diffusers side measures it), warms
 * up, then times REPEAT runs with a synchronize before the clock is read; the
 * median is reported. Memory: peak_in_use (tensors and scratch, cf. torch's
 * max_memory_allocated) and peak_reserved (what the device gave the caching
 * allocator, cf. max_memory_reserved). steady_device_allocs counts cudaMalloc
 * calls during the timed runs; txt2img's alloc_after_step1 counts those in the
 * first (cold) run after its first denoising step: both should be 0.
 * Prints one JSON object on stdout; progress on stderr. */
#include "bench_util.h"

#include "pipeline.h"
#include "profile.h"
#include "unet.h"
#include "vae.h"

#define MAX_REPEAT 50

static double median(const double *v, int n) {
    double s[MAX_REPEAT];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, pf_bench_cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

static pf_backend *fresh_backend(void) {
    pf_error err;
    pf_backend *be = pf_backend_cuda_new(0, &err);
    if (!be) {
        fprintf(stderr, "bench_gpu: %s\n", err.msg);
        exit(1);
    }
    return be;
}

static void die(const char *what, const pf_error *err) {
    fprintf(stderr, "bench_gpu: %s: %s\n", what, err->msg);
    exit(1);
}

/* Prints `"name": {"seconds": .., "runs": [..], memory}` (with a leading comma unless first). */
static void report(const char *name, int first, const double *runs, int n, double load_s, const pf_mem_stats *m,
                   long steady_allocs, const char *extra) {
    printf("%s\n  \"%s\": {\"seconds\": %.6f, \"runs\": [", first ? "" : ",", name, median(runs, n));
    for (int i = 0; i < n; i++) printf(i ? ", %.6f" : "%.6f", runs[i]);
    printf("], \"load_seconds\": %.3f, \"peak_in_use_bytes\": %zu, \"peak_reserved_bytes\": %zu, "
           "\"steady_device_allocs\": %ld%s}",
           load_s, m->peak_in_use, m->peak_reserved, steady_allocs, extra ? extra : "");
    fflush(stdout);
    fprintf(stderr, "bench_gpu: %-28s %8.2f ms  peak %7.0f MiB\n", name, 1e3 * median(runs, n),
            m->peak_reserved / 1048576.0);
}

static void bench_unet(const char *dir, int repeat, int first) {
    pf_backend *be = fresh_backend();
    pf_error err;
    pf_unet *m;
    double t0 = pf_bench_now();
    if (pf_unet_load_dir(&m, be, dir, NULL, &err)) die("loading the unet", &err);
    double load_s = pf_bench_now() - t0;
    const pf_unet_config *c = pf_unet_get_config(m);
    const int64_t B = 2, H = 64, W = 64, L = 77;
    pf_tensor *x = pf_bench_noise(be, 4, (int64_t[]){B, c->in_channels, H, W});
    pf_tensor *ctx = pf_bench_noise(be, 3, (int64_t[]){B, L, c->cross_attention_dim});
    pf_tensor *out = pf_new4(be, B, c->out_channels, H, W);
    const float t[2] = {500.0f, 500.0f};
    double runs[MAX_REPEAT];
    pf_mem_stats before, after;
    for (int r = -3; r < repeat; r++) { /* r < 0: warm-up */
        if (r == 0) pf_backend_cuda_mem_stats(be, &before);
        double s = pf_bench_now();
        if (pf_unet_forward(m, out, x, t, ctx, NULL, NULL, &err)) die("unet", &err);
        pf_synchronize(be);
        if (pf_backend_ok(be, &err)) die("unet", &err);
        if (r >= 0) runs[r] = pf_bench_now() - s;
    }
    pf_backend_cuda_mem_stats(be, &after);
    report("unet_cfg_step_64x64_b2", first, runs, repeat, load_s, &after, after.device_allocs - before.device_allocs,
           NULL);
    pf_free(out), pf_free(ctx), pf_free(x);
    pf_unet_free(m);
    pf_backend_free(be);
}

static void bench_vae(const char *dir, int repeat, int first) {
    pf_backend *be = fresh_backend();
    pf_error err;
    pf_vae *m;
    double t0 = pf_bench_now();
    if (pf_vae_load_dir(&m, be, dir, &err)) die("loading the vae", &err);
    double load_s = pf_bench_now() - t0;
    pf_tensor *lat = pf_bench_noise(be, 4, (int64_t[]){1, 4, 64, 64});
    pf_tensor *img = pf_new4(be, 1, 3, 512, 512);
    double runs[MAX_REPEAT];
    pf_mem_stats before, after;
    for (int r = -2; r < repeat; r++) {
        if (r == 0) pf_backend_cuda_mem_stats(be, &before);
        double s = pf_bench_now();
        if (pf_vae_decode(m, img, lat, PF_VAE_TILING_OFF, &err)) die("vae decode", &err);
        pf_synchronize(be);
        if (pf_backend_ok(be, &err)) die("vae decode", &err);
        if (r >= 0) runs[r] = pf_bench_now() - s;
    }
    pf_backend_cuda_mem_stats(be, &after);
    report("vae_decode_512_b1", first, runs, repeat, load_s, &after, after.device_allocs - before.device_allocs, NULL);
    pf_free(img), pf_free(lat);
    pf_vae_free(m);
    pf_backend_free(be);
}

typedef struct step_probe {
    pf_backend *be;
    long allocs_at_step1, allocs_at_end;
} step_probe;

static void on_step(void *user, int step, int total) {
    step_probe *p = user;
    pf_mem_stats m;
    pf_backend_cuda_mem_stats(p->be, &m);
    if (step == 1) p->allocs_at_step1 = m.device_allocs;
    if (step == total) p->allocs_at_end = m.device_allocs;
}

/* size: the image side; sdxl: SDXL's settings (guidance 4.5, an empty negative prompt). */
static void bench_txt2img_at(const char *dir, int batch, int repeat, int first, int size, const char *what) {
    pf_backend *be = fresh_backend();
    pf_error err;
    pf_pipeline *p;
    double t0 = pf_bench_now();
    if (pf_pipeline_load(&p, be, dir, NULL, &err)) die("loading the pipeline", &err);
    double load_s = pf_bench_now() - t0;
    pf_txt2img_params prm;
    pf_txt2img_defaults(&prm); /* 4 steps, guidance 4.5 (CFG on) */
    prm.prompt = "a photo of an astronaut riding a horse on mars";
    prm.negative_prompt = ""; /* encoded, as the diffusers side asks */
    prm.width = prm.height = size;
    prm.num_images = batch;
    step_probe probe = {be, 0, 0};
    prm.progress = on_step;
    prm.user = &probe;
    float *images = malloc((size_t)batch * size * size * 3 * sizeof *images);
    double runs[MAX_REPEAT];
    pf_mem_stats before, after;
    long cold_after_step1 = -1;
    for (int r = -1; r < repeat; r++) {
        if (r == 0) pf_backend_cuda_mem_stats(be, &before);
        double s = pf_bench_now();
        if (pf_pipeline_txt2img(p, &prm, images, &err)) die("txt2img", &err);
        if (r >= 0) runs[r] = pf_bench_now() - s;
        if (r == -1) cold_after_step1 = probe.allocs_at_end - probe.allocs_at_step1;
    }
    pf_backend_cuda_mem_stats(be, &after);
    char name[64], extra[128];
    snprintf(name, sizeof name, "%s_%d_4step_cfg_b%d", what, size, batch);
    snprintf(extra, sizeof extra, ", \"alloc_after_step1\": %ld, \"batch\": %d", cold_after_step1, batch);
    report(name, first, runs, repeat, load_s, &after, after.device_allocs - before.device_allocs, extra);
    free(images);
    pf_pipeline_free(p);
    pf_backend_free(be);
}

static void bench_txt2img(const char *dir, int batch, int repeat, int first) {
    bench_txt2img_at(dir, batch, repeat, first, 512, "txt2img");
}

/* The refiner as the predictor runs it: batch random 512 px images (one job)
 * handed over to 1024 px (Lanczos), 4 steps, guidance 7.5, strength 1. */
static void bench_refine(const char *dir, int batch, int repeat, int first) {
    pf_backend *be = fresh_backend();
    pf_error err;
    pf_pipeline *p;
    char cn_dir[4096];
    snprintf(cn_dir, sizeof cn_dir, "%s/controlnet", dir);
    double t0 = pf_bench_now();
    if (pf_pipeline_load(&p, be, dir, NULL, &err) || pf_pipeline_set_controlnet(p, cn_dir, &err))
        die("loading the refiner", &err);
    double load_s = pf_bench_now() - t0;
    uint8_t *input = malloc((size_t)batch * 512 * 512 * 3);
    for (size_t i = 0; i < (size_t)batch * 512 * 512 * 3; i++) input[i] = (uint8_t)(rand() & 255);
    pf_refine_params prm;
    pf_refine_defaults(&prm); /* 1024 px, 4 steps, guidance 7.5, strength 1 */
    prm.images = input;
    prm.image_width = prm.image_height = 512;
    prm.num_images = batch;
    step_probe probe = {be, 0, 0};
    prm.progress = on_step;
    prm.user = &probe;
    float *images = malloc((size_t)batch * 1024 * 1024 * 3 * sizeof *images);
    double runs[MAX_REPEAT];
    pf_mem_stats before, after;
    for (int r = -1; r < repeat; r++) {
        if (r == 0) pf_backend_cuda_mem_stats(be, &before);
        double s = pf_bench_now();
        if (pf_pipeline_refine(p, &prm, images, &err)) die("refine", &err);
        if (r >= 0) runs[r] = pf_bench_now() - s;
    }
    pf_backend_cuda_mem_stats(be, &after);
    char name[64], extra[64];
    snprintf(name, sizeof name, "refine_1024_4step_cfg_b%d", batch);
    snprintf(extra, sizeof extra, ", \"batch\": %d", batch);
    report(name, first, runs, repeat, load_s, &after, after.device_allocs - before.device_allocs, extra);
    free(images);
    free(input);
    pf_pipeline_free(p);
    pf_backend_free(be);
}

/* One warm txt2img run at batch `batch`, its per-op times as "profile_b<batch>". */
static void profile_txt2img(const char *dir, int batch, int first) {
    pf_backend *be = fresh_backend();
    pf_error err;
    pf_pipeline *p;
    if (pf_pipeline_load(&p, be, dir, NULL, &err)) die("loading the model", &err);
    pf_txt2img_params prm;
    pf_txt2img_defaults(&prm);
    prm.prompt = "a photo of an astronaut riding a horse on mars";
    prm.guidance = 7.5f;
    prm.num_images = batch;
    float *images = malloc((size_t)batch * 512 * 512 * 3 * sizeof *images);
    if (pf_pipeline_txt2img(p, &prm, images, &err)) die("txt2img", &err); /* warm-up */
    pf_profile_reset();
    double s = pf_bench_now();
    if (pf_pipeline_txt2img(p, &prm, images, &err)) die("txt2img", &err);
    printf("%s\n  \"profile_b%d\": {\"seconds\": %.6f, \"ops\": ", first ? "" : ",", batch, pf_bench_now() - s);
    pf_profile_json(stdout);
    printf("}");
    free(images);
    pf_pipeline_free(p);
    pf_backend_free(be);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_gpu MODEL_DIR [REPEAT]\n");
        return 2;
    }
    int repeat = argc > 2 ? atoi(argv[2]) : 10;
    if (repeat < 1 || repeat > MAX_REPEAT) repeat = 10;
    srand(0);
    printf("{\"impl\": \"perflow cuda\", \"repeat\": %d,", repeat);
    if (argc > 3 && !strcmp(argv[3], "profile")) {
        if (!pf_profile_enabled()) {
            fprintf(stderr, "bench_gpu: profile needs PERFLOW_PROFILE=1 in the environment\n");
            return 2;
        }
        profile_txt2img(argv[1], 1, 1);
        profile_txt2img(argv[1], 8, 0);
        printf("\n}\n");
        return 0;
    }
    if (argc > 3 && !strcmp(argv[3], "sdxl")) {
        bench_txt2img_at(argv[1], 1, repeat > 3 ? 3 : repeat, 1, 1024, "sdxl");
        bench_txt2img_at(argv[1], 4, repeat > 2 ? 2 : repeat, 0, 1024, "sdxl");
        printf("\n}\n");
        return 0;
    }
    bench_unet(argv[1], repeat, 1);
    bench_vae(argv[1], repeat, 0);
    bench_txt2img(argv[1], 1, repeat > 3 ? 3 : repeat, 0);
    bench_txt2img(argv[1], 8, repeat > 2 ? 2 : repeat, 0);
    bench_refine(argv[1], 1, repeat > 3 ? 3 : repeat, 0);
    bench_refine(argv[1], 4, repeat > 2 ? 2 : repeat, 0);
    printf("\n}\n");
    return 0;
}
