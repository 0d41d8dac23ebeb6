/* test_cuda_pipeline.c - the tiny models and whole PeRFlow pipelines on the
 * CUDA backend (float16) against the float32 diffusers goldens that
 * test_clip / test_unet / test_vae / test_pipeline hold the CPU to. Skipped, by
 * name, where this binary has no CUDA or the machine no GPU.
 *
 * Bounds, from running the CPU backend with every op output and every weight
 * rounded to float16 (an emulation of this backend's storage): the pipelines'
 * images stayed at PSNR 63-70 dB from the goldens, the models' outputs near
 * NMSE 1e-6. The tests ask for PSNR >= 40 dB (RMS error 1 % of the range,
 * invisible in an 8-bit image) and NMSE <= 1e-4; a wrong kernel gives
 * PSNR < 20 dB and NMSE > 1e-2. */
#include "pipeline_cases.h"
#include "refine_cases.h"

#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "clip.h"
#include "controlnet.h"
#include "image.h"
#include "unet.h"
#include "vae.h"

#define PSNR_MIN 40.0
#define NMSE_MAX 1e-4

static pf_backend *g_gpu;
static char g_why[1024];

#define NEED_GPU()                                                              \
    do {                                                                        \
        if (!g_gpu) {                                                           \
            print_message("test_cuda_pipeline: skipped (no GPU): %s\n", g_why);  \
            skip();                                                             \
        }                                                                       \
    } while (0)

static double psnr_of(const float *got, const float *want, size_t n, double *maxerr) {
    double mse = 0;
    *maxerr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        mse += d * d;
        if (!(fabs(d) <= *maxerr)) *maxerr = fabs(d); /* NaN-propagating */
    }
    mse /= (double)n;
    return mse > 0 ? 10.0 * log10(1.0 / mse) : INFINITY; /* images in [0, 1] */
}

/* PSNR of float images got against the golden images of file rel (key "images");
 * prints it with label, fails the test below PSNR_MIN. */
static void expect_psnr(const char *label, const float *got, size_t n, const char *rel) {
    pf_safetensors *st = pf_golden_open(rel);
    int64_t nw;
    float *want = pf_golden_floats(st, "images", &nw);
    assert_int_equal(nw, (int64_t)n);
    double maxerr, psnr = psnr_of(got, want, n, &maxerr);
    int pass = psnr >= PSNR_MIN; /* false for NaN */
    printf("  %-40s PSNR %5.1f dB (>= %.0f) max|err| %.4f %s\n", label, psnr, PSNR_MIN, maxerr, pass ? "ok" : "FAIL");
    fflush(stdout);
    free(want);
    pf_st_close(st);
    if (!pass) fail_msg("%s: PSNR %.1f dB below %.0f", label, psnr, PSNR_MIN);
}

/* NMSE of a GPU tensor against a golden tensor; prints it, fails above NMSE_MAX. */
static void expect_nmse(const char *what, const pf_tensor *got, const pf_safetensors *st, const char *name) {
    int64_t n;
    float *want = pf_golden_floats(st, name, &n);
    assert_int_equal(n, pf_numel(got));
    float *g = malloc((size_t)n * sizeof *g);
    pf_to_host(g, got);
    pf_error err;
    if (pf_backend_ok(got->be, &err)) fail_msg("%s: %s", what, err.msg);
    double num = 0, den = 0, maxerr = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)g[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
        if (!(fabs(d) <= maxerr)) maxerr = fabs(d);
    }
    double nmse = num / (den > 0 ? den : 1);
    int pass = nmse <= NMSE_MAX; /* false for NaN */
    printf("  %-40s nmse %.2e (<= %.0e) max|err| %.2e %s\n", what, nmse, NMSE_MAX, maxerr, pass ? "ok" : "FAIL");
    fflush(stdout);
    free(g);
    free(want);
    if (!pass) fail_msg("%s: nmse %.3g above %.0e", what, nmse, NMSE_MAX);
}

static const char *model_path(const char *model) { return pf_test_path(pf_pathf("tests/data/models/%s", model)); }

static void check_models(const char *model) {
    pf_error err;
    char what[96];
    /* CLIP text encoder */
    pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s/text_encoder.safetensors", model));
    int64_t n_ids;
    float *ids_f = pf_golden_floats(st, "input_ids", &n_ids);
    int32_t *ids = malloc((size_t)n_ids * sizeof *ids);
    for (int64_t i = 0; i < n_ids; i++) ids[i] = (int32_t)ids_f[i];
    pf_clip_text_model *te;
    if (pf_clip_text_model_load_dir(&te, g_gpu, model_path(model), &err)) fail_msg("%s", err.msg);
    const int L = 77, B = (int)(n_ids / L), D = pf_clip_text_model_config(te)->hidden_size;
    pf_tensor *emb = pf_new3(g_gpu, B, L, D);
    if (pf_clip_text_model_forward(te, emb, ids, B, L, 0, &err)) fail_msg("%s", err.msg);
    snprintf(what, sizeof what, "%s text_encoder", model);
    expect_nmse(what, emb, st, "last_hidden_state");
    pf_free(emb);
    pf_clip_text_model_free(te);
    free(ids);
    free(ids_f);
    pf_st_close(st);

    /* UNet */
    st = pf_golden_open(pf_pathf("tests/data/goldens/%s/unet.safetensors", model));
    pf_unet *u;
    if (pf_unet_load_dir(&u, g_gpu, model_path(model), NULL, &err)) fail_msg("%s", err.msg);
    pf_tensor *x = pf_golden_tensor(g_gpu, st, "sample"), *ctx = pf_golden_tensor(g_gpu, st, "encoder_hidden_states");
    float *t = pf_golden_floats(st, "timesteps", NULL);
    const pf_unet_config *uc = pf_unet_get_config(u);
    pf_tensor *out = pf_new4(g_gpu, x->shape[0], uc->out_channels, x->shape[2], x->shape[3]);
    if (pf_unet_forward(u, out, x, t, ctx, NULL, NULL, &err)) fail_msg("%s", err.msg);
    snprintf(what, sizeof what, "%s unet", model);
    expect_nmse(what, out, st, "out");
    pf_free(out), pf_free(x), pf_free(ctx);
    free(t);
    pf_unet_free(u);
    pf_st_close(st);

    /* VAE decode and encode */
    st = pf_golden_open(pf_pathf("tests/data/goldens/%s/vae.safetensors", model));
    pf_vae *v;
    if (pf_vae_load_dir(&v, g_gpu, model_path(model), &err)) fail_msg("%s", err.msg);
    pf_tensor *lat = pf_golden_tensor(g_gpu, st, "decode_latents");
    const int f = pf_vae_scale_factor(v);
    pf_tensor *img = pf_new4(g_gpu, lat->shape[0], 3, lat->shape[2] * f, lat->shape[3] * f);
    if (pf_vae_decode(v, img, lat, PF_VAE_TILING_OFF, &err)) fail_msg("%s", err.msg);
    snprintf(what, sizeof what, "%s vae decode", model);
    expect_nmse(what, img, st, "decode_image");
    pf_tensor *image = pf_golden_tensor(g_gpu, st, "encode_image");
    pf_tensor *mom = pf_new4(g_gpu, image->shape[0], 2 * pf_vae_config_of(v)->latent_channels, image->shape[2] / f,
                             image->shape[3] / f);
    if (pf_vae_encode(v, mom, image, PF_VAE_TILING_OFF, &err)) fail_msg("%s", err.msg);
    snprintf(what, sizeof what, "%s vae encode", model);
    expect_nmse(what, mom, st, "encode_moments");
    pf_free(mom), pf_free(image), pf_free(img), pf_free(lat);
    pf_st_close(st);

    /* tiled VAE (diffusers' enable_tiling), decode and encode */
    st = pf_golden_open(pf_pathf("tests/data/goldens/%s/vae_tiled.safetensors", model));
    lat = pf_golden_tensor(g_gpu, st, "tiled_latents");
    img = pf_new4(g_gpu, lat->shape[0], 3, lat->shape[2] * f, lat->shape[3] * f);
    if (pf_vae_decode(v, img, lat, PF_VAE_TILING_ON, &err)) fail_msg("%s", err.msg);
    snprintf(what, sizeof what, "%s vae decode tiled", model);
    expect_nmse(what, img, st, "tiled_decode");
    image = pf_golden_tensor(g_gpu, st, "tiled_image");
    mom = pf_new4(g_gpu, image->shape[0], 2 * pf_vae_config_of(v)->latent_channels, image->shape[2] / f,
                  image->shape[3] / f);
    if (pf_vae_encode(v, mom, image, PF_VAE_TILING_ON, &err)) fail_msg("%s", err.msg);
    snprintf(what, sizeof what, "%s vae encode tiled", model);
    expect_nmse(what, mom, st, "tiled_moments");
    pf_free(mom), pf_free(image), pf_free(img), pf_free(lat);
    pf_vae_free(v);
    pf_st_close(st);

    /* UNet at latent sizes that are not multiples of 2^(blocks-1) */
    st = pf_golden_open(pf_pathf("tests/data/goldens/%s/unet_odd.safetensors", model));
    if (pf_unet_load_dir(&u, g_gpu, model_path(model), NULL, &err)) fail_msg("%s", err.msg);
    ctx = pf_golden_tensor(g_gpu, st, "encoder_hidden_states");
    for (int k = 0; k < 2; k++) {
        x = pf_golden_tensor(g_gpu, st, k ? "sample_b" : "sample");
        t = pf_golden_floats(st, k ? "timesteps_b" : "timesteps", NULL);
        out = pf_new_like(x);
        if (pf_unet_forward(u, out, x, t, ctx, NULL, NULL, &err)) fail_msg("%s", err.msg);
        char s1[48];
        snprintf(what, sizeof what, "%s unet %s", model, pf_shape_str(x, s1, sizeof s1));
        expect_nmse(what, out, st, k ? "out_b" : "out");
        pf_free(out), pf_free(x);
        free(t);
    }
    pf_free(ctx);
    pf_unet_free(u);
    pf_st_close(st);
}

/* The tiny ControlNet's residuals, every one of them, at conditioning scale 0.7. */
static void check_controlnet(void) {
    pf_error err;
    pf_safetensors *st = pf_golden_open("tests/data/goldens/tiny-sd15/controlnet.safetensors");
    pf_controlnet *m;
    if (pf_controlnet_load_dir(&m, g_gpu, model_path("tiny-sd15-controlnet"), &err)) fail_msg("%s", err.msg);
    pf_tensor *x = pf_golden_tensor(g_gpu, st, "sample"), *ctx = pf_golden_tensor(g_gpu, st, "encoder_hidden_states");
    pf_tensor *cond = pf_golden_tensor(g_gpu, st, "cond");
    float *t = pf_golden_floats(st, "timesteps", NULL);
    const int n = pf_controlnet_num_residuals(m);
    pf_tensor **down = calloc((size_t)n, sizeof *down), *mid;
    if (pf_controlnet_forward(m, down, &mid, x, t, ctx, NULL, cond, 0.7f, &err)) fail_msg("%s", err.msg);
    char what[64], name[32];
    for (int i = 0; i < n; i++) {
        snprintf(what, sizeof what, "tiny-sd15 controlnet down %d", i);
        snprintf(name, sizeof name, "down_%d", i);
        expect_nmse(what, down[i], st, name);
        pf_free(down[i]);
    }
    expect_nmse("tiny-sd15 controlnet mid", mid, st, "mid");
    pf_free(mid), pf_free(x), pf_free(ctx), pf_free(cond);
    free(down);
    free(t);
    pf_controlnet_free(m);
    pf_st_close(st);
}

static void test_models(void **state) {
    (void)state;
    NEED_GPU();
    check_models("tiny-sd15");
    check_models("tiny-sd2");
    check_controlnet();
}

/* ---- pipelines ---- */

static void test_pipelines(void **state) {
    (void)state;
    NEED_GPU();
    json_t *root = pf_pipeline_cases(), *c;
    size_t i;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        pf_txt2img_params p;
        pf_case_params(c, &p);
        const char *model = pf_case_str(c, "model"), *delta = pf_case_str(c, "delta");
        const char *name = pf_case_str(c, "name") ? pf_case_str(c, "name") : "?";
        pf_pipeline *pipe;
        pf_error err;
        if (pf_pipeline_load(&pipe, g_gpu, model_path(model), delta ? model_path(delta) : NULL, &err))
            fail_msg("%s", err.msg);
        const size_t n = (size_t)p.num_images * p.height * p.width * 3;
        float *got = malloc(n * sizeof *got);
        if (pf_pipeline_txt2img(pipe, &p, got, &err)) fail_msg("%s: %s", name, err.msg);
        char label[96];
        snprintf(label, sizeof label, "pipeline %s", name);
        expect_psnr(label, got, n, pf_pathf("tests/data/goldens/%s", pf_case_str(c, "images")));
        free(got);
        pf_pipeline_free(pipe);
    }
    json_decref(root);
}

/* The refiner and the chained text to image + refine (refine.json), float16 on
 * the GPU against the float32 diffusers goldens. */
static void test_refine(void **state) {
    (void)state;
    NEED_GPU();
    json_t *root = pf_refine_cases(), *c;
    size_t i;
    pf_pipeline *p = pf_refine_case_pipeline(g_gpu);
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        const char *name = pf_case_str(c, "name"), *kind = pf_case_str(c, "kind");
        const size_t n = pf_refine_case_values(c);
        float *got = malloc(n * sizeof *got);
        pf_refine_case_run(p, c, got, NULL);
        char label[96];
        snprintf(label, sizeof label, "%s %s", kind ? kind : "?", name ? name : "?");
        expect_psnr(label, got, n, pf_pathf("tests/data/goldens/%s", pf_case_str(c, "images")));
        free(got);
    }
    pf_pipeline_free(p);
    json_decref(root);
}

/* StableDiffusionXLPipeline (sdxl.json) on the GPU: text encoders and UNet in
 * float16, the VAE (force_upcast) on a float32 twin backend as diffusers upcasts
 * it, against the float32 diffusers goldens. */
static void test_sdxl(void **state) {
    (void)state;
    NEED_GPU();
    json_t *root = pf_golden_json(pf_test_path("tests/data/goldens/sdxl.json"), PF_GOLDEN_VERSION,
                                  "re-run tests/reference/make_goldens.py sdxl"), *c;
    size_t i;
    pf_pipeline *p;
    pf_error err;
    if (pf_pipeline_load(&p, g_gpu, pf_test_path("tests/data/models/tiny-sdxl"), NULL, &err)) fail_msg("%s", err.msg);
    const pf_backend *vbe = pf_vae_backend(pf_pipeline_vae(p));
    printf("  %-40s %s %s\n", "sdxl VAE backend (force_upcast)", vbe->name,
           vbe->compute_dtype == PF_F32 ? "float32 ok" : "not float32 FAIL");
    assert_true(vbe->compute_dtype == PF_F32 && vbe != g_gpu);
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        pf_txt2img_params q;
        pf_sdxl_case_params(c, &q);
        const size_t n = (size_t)q.num_images * q.height * q.width * 3;
        float *got = malloc(n * sizeof *got);
        if (pf_pipeline_txt2img(p, &q, got, &err)) fail_msg("%s: %s", pf_case_str(c, "name"), err.msg);
        char label[96];
        snprintf(label, sizeof label, "sdxl %s", pf_case_str(c, "name"));
        expect_psnr(label, got, n, pf_pathf("tests/data/goldens/%s", pf_case_str(c, "images")));
        free(got);
    }
    pf_pipeline_free(p);
    json_decref(root);
}

/* ---- the CLI's --device ---- */

static void test_cli(void **state) {
    (void)state;
    NEED_GPU();
    const char *env = getenv("PERFLOW");
    char perflow[4096];
    snprintf(perflow, sizeof perflow, "%s", env ? env : pf_test_path("bin/perflow"));
    if (access(perflow, X_OK) != 0) { /* the CLI also needs the storage libraries, which a GPU box may lack */
        print_message("test_cuda_pipeline: test_cli skipped: no CLI at %s\n", perflow);
        skip();
    }
    json_t *root = pf_pipeline_cases();
    json_t *c = json_array_get(json_object_get(root, "cases"), 0);
    char *dir = pf_temp_dir();
    char out[4096], model[4096], delta[4096];
    snprintf(out, sizeof out, "%s/img.png", dir);
    snprintf(model, sizeof model, "%s", model_path(pf_case_str(c, "model")));
    snprintf(delta, sizeof delta, "%s", model_path(pf_case_str(c, "delta")));
    pf_case_cli a;
    pf_case_cli_of(&a, c);
    char *gen[] = {perflow, "generate", "--device", "cuda", "--model", model, "--delta", delta,
                   "--prompt", (char *)pf_case_str(c, "prompt"), "--steps", a.steps, "--guidance", a.guidance,
                   "--seed", a.seed, "--width", a.width, "--height", a.height, "--windows", a.windows,
                   "--prediction-type", (char *)pf_case_str(c, "prediction_type"), "--out", out, NULL};
    assert_int_equal(pf_run(gen, 0), 0);
    uint8_t *got, *want;
    int gw, gh, ww, wh;
    pf_error err;
    const char *png_rel = json_string_value(json_array_get(json_object_get(c, "pngs"), 0));
    if (pf_png_read(out, &got, &gw, &gh, &err) ||
        pf_png_read(pf_test_path(pf_pathf("tests/data/goldens/%s", png_rel)), &want, &ww, &wh, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(gw, ww);
    assert_int_equal(gh, wh);
    size_t n = (size_t)gw * gh * 3;
    float *gf = malloc(n * sizeof *gf), *wf = malloc(n * sizeof *wf);
    for (size_t i = 0; i < n; i++) {
        gf[i] = got[i] / 255.0f;
        wf[i] = want[i] / 255.0f;
    }
    double maxerr, psnr = psnr_of(gf, wf, n, &maxerr);
    printf("  %-40s PSNR %5.1f dB (>= %.0f) %s\n", "perflow generate --device cuda (PNG)", psnr, PSNR_MIN,
           psnr >= PSNR_MIN ? "ok" : "FAIL");
    assert_true(psnr >= PSNR_MIN);
    free(gf), free(wf), free(got), free(want);

    /* encode on the GPU and on the CPU agree */
    char e_gpu[4096], e_cpu[4096];
    snprintf(e_gpu, sizeof e_gpu, "%s/gpu.safetensors", dir);
    snprintf(e_cpu, sizeof e_cpu, "%s/cpu.safetensors", dir);
    char *enc_gpu[] = {perflow, "encode", "--device", "cuda:0", "--model", model, "--prompt", "a photo of a cat",
                       "--out", e_gpu, NULL};
    char *enc_cpu[] = {perflow, "encode", "--device", "cpu", "--model", model, "--prompt", "a photo of a cat",
                       "--out", e_cpu, NULL};
    assert_int_equal(pf_run(enc_gpu, 0), 0);
    assert_int_equal(pf_run(enc_cpu, 0), 0);
    pf_safetensors *sc;
    if (pf_st_open(&sc, e_cpu, &err)) fail_msg("%s", err.msg);
    int64_t ne;
    float *ref = pf_golden_floats(sc, "prompt_embeds", &ne);
    pf_safetensors *sg;
    if (pf_st_open(&sg, e_gpu, &err)) fail_msg("%s", err.msg);
    float *gpu = pf_golden_floats(sg, "prompt_embeds", NULL);
    double num_ = 0, den = 0;
    for (int64_t i = 0; i < ne; i++) {
        num_ += ((double)gpu[i] - ref[i]) * ((double)gpu[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    printf("  %-40s nmse %.2e (<= %.0e) %s\n", "perflow encode --device cuda:0 vs cpu", num_ / den, NMSE_MAX,
           num_ / den <= NMSE_MAX ? "ok" : "FAIL");
    assert_true(num_ / den <= NMSE_MAX);
    free(ref), free(gpu);
    pf_st_close(sc), pf_st_close(sg);

    /* a device that does not exist is an error with a message, exit status 1 */
    char *bad[] = {perflow, "encode", "--device", "cuda:77", "--model", model, "--prompt", "x", "--out", e_gpu, NULL};
    assert_int_equal(pf_run(bad, 0), 1);
    printf("  %-40s ok\n", "perflow encode --device cuda:77 fails");
    pf_temp_dir_remove(dir);
    json_decref(root);
}

int main(void) {
    pf_error err = {0};
    g_gpu = pf_backend_cuda_new(0, &err);
    if (!g_gpu) snprintf(g_why, sizeof g_why, "%s", err.msg);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_models),
        cmocka_unit_test(test_pipelines),
        cmocka_unit_test(test_refine),
        cmocka_unit_test(test_sdxl),
        cmocka_unit_test(test_cli),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    pf_backend_free(g_gpu);
    return rc;
}
