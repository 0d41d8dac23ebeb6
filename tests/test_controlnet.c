/* test_controlnet.c - ControlNetModel against diffusers (goldens from
 * tests/reference/goldens_controlnet.py via make_goldens.py): the residuals at
 * two conditioning scales and with the "bgr" channel order, at an odd latent
 * size together with the UNet that consumes them, and the errors a bad config,
 * checkpoint or UNet pairing must produce.
 *
 * Tolerance: max abs err 1e-4 as for the UNet (same float32 math, summation
 * order only); the residuals are of order 1, and a wrong zero conv, scale or
 * channel order moves them by 1e-2 or more (the goldens assert that the
 * condition image and the channel order change them). */
#include "test_util.h"

#include "controlnet.h"
#include "pipeline.h"
#include "unet.h"

#define TOL 1e-4
#define CN_DIR "tests/data/models/tiny-sd15-controlnet"

/* Loads the ControlNet folder at path dir; fails the test on error. */
static pf_controlnet *load_cn(pf_backend *be, const char *dir) {
    pf_controlnet *m;
    pf_error err;
    if (pf_controlnet_load_dir(&m, be, dir, &err)) fail_msg("%s", err.msg);
    return m;
}

/* Runs m on the golden's sample<sfx>, timesteps<sfx>, cond<sfx> (context: the
 * first B rows of encoder_hidden_states) and compares with <prefix>_<i> and
 * mid<prefix minus "down">. Returns the residuals when keep (caller frees). */
static pf_tensor **check_residuals(pf_controlnet *m, pf_backend *be, const pf_safetensors *st, const char *sfx,
                                   const char *prefix, float scale, pf_tensor **mid_keep) {
    char name[64];
    snprintf(name, sizeof name, "sample%s", sfx);
    pf_tensor *x = pf_golden_tensor(be, st, name);
    snprintf(name, sizeof name, "timesteps%s", sfx);
    float *t = pf_golden_floats(st, name, NULL);
    snprintf(name, sizeof name, "cond%s", sfx);
    pf_tensor *cond = pf_golden_tensor(be, st, name);
    pf_tensor *ctx_all = pf_golden_tensor(be, st, "encoder_hidden_states");
    pf_tensor *ctx = pf_slice0(ctx_all, 0, x->shape[0]);
    const int n = pf_controlnet_num_residuals(m);
    pf_tensor **down = calloc((size_t)n, sizeof *down), *mid;
    pf_error err;
    if (pf_controlnet_forward(m, down, &mid, x, t, ctx, NULL, cond, scale, &err)) fail_msg("%s", err.msg);
    for (int i = 0; i <= n; i++) {
        if (i == n) {
            snprintf(name, sizeof name, "%s_%d", prefix, n);
            if (pf_st_find(st, name)) fail_msg("golden has more residuals than the model (%d)", n);
            snprintf(name, sizeof name, "mid%s", prefix + strlen("down"));
        } else {
            snprintf(name, sizeof name, "%s_%d", prefix, i);
        }
        pf_tensor *want = pf_golden_tensor(be, st, name);
        pf_assert_tensor_close(name, i == n ? mid : down[i], want, TOL, 0);
        pf_free(want);
    }
    pf_free(ctx);
    pf_free(ctx_all);
    pf_free(cond);
    pf_free(x);
    free(t);
    if (mid_keep) {
        *mid_keep = mid;
        return down;
    }
    for (int i = 0; i < n; i++) pf_free(down[i]);
    free(down);
    pf_free(mid);
    return NULL;
}

static void test_residuals(void **state) {
    (void)state;
    pf_safetensors *st = pf_golden_open("tests/data/goldens/tiny-sd15/controlnet.safetensors");
    pf_backend *be = pf_backend_cpu_new(0);
    pf_controlnet *m = load_cn(be, pf_test_path(CN_DIR));
    assert_int_equal(pf_controlnet_num_residuals(m), 4); /* conv_in, 1 resnet + downsampler, 1 resnet */
    assert_int_equal(pf_controlnet_cond_scale(m), 8);
    check_residuals(m, be, st, "", "down", 0.7f, NULL);
    check_residuals(m, be, st, "", "down_s1", 1.0f, NULL);

    /* an odd latent size, then the UNet on it with these residuals */
    pf_tensor *mid, **down = check_residuals(m, be, st, "_odd", "down_odd", 0.7f, &mid);
    pf_unet *u;
    pf_error err;
    if (pf_unet_load_dir(&u, be, pf_test_path("tests/data/models/tiny-sd15"), NULL, &err)) fail_msg("%s", err.msg);
    if (pf_controlnet_check_unet(m, u, 8, &err)) fail_msg("%s", err.msg);
    pf_tensor *x = pf_golden_tensor(be, st, "sample_odd"), *ctx_all = pf_golden_tensor(be, st, "encoder_hidden_states");
    pf_tensor *ctx = pf_slice0(ctx_all, 0, 1), *out = pf_new_like(x), *want = pf_golden_tensor(be, st, "unet_out_odd");
    float *t = pf_golden_floats(st, "timesteps_odd", NULL);
    if (pf_unet_forward(u, out, x, t, ctx, (const pf_tensor *const *)down, mid, &err)) fail_msg("%s", err.msg);
    pf_assert_tensor_close("unet_out_odd", out, want, TOL, 0);
    for (int i = 0; i < pf_controlnet_num_residuals(m); i++) pf_free(down[i]);
    free(down);
    free(t);
    pf_tensor *dead[] = {mid, x, ctx, ctx_all, out, want};
    for (size_t i = 0; i < sizeof dead / sizeof *dead; i++) pf_free(dead[i]);
    pf_unet_free(u);
    pf_controlnet_free(m);
    pf_backend_free(be);
    pf_st_close(st);
}

/* Copies the tiny ControlNet into dir with the first `from` in its config replaced by `to`. */
static void write_variant(const char *dir, const char *from, const char *to) {
    size_t n;
    char *cfg = pf_read_file(pf_test_path(CN_DIR "/config.json"), NULL);
    char *at = strstr(cfg, from);
    if (!at) fail_msg("config lacks %s", from);
    char *edited = malloc(strlen(cfg) + strlen(to) + 1);
    sprintf(edited, "%.*s%s%s", (int)(at - cfg), cfg, to, at + strlen(from));
    pf_temp_write(dir, "config.json", edited, strlen(edited));
    char *w = pf_read_file(pf_test_path(CN_DIR "/diffusion_pytorch_model.safetensors"), &n);
    pf_temp_write(dir, "diffusion_pytorch_model.safetensors", w, n);
    free(w);
    free(edited);
    free(cfg);
}

static void test_bgr(void **state) {
    (void)state;
    char *dir = pf_temp_dir();
    write_variant(dir, "\"rgb\"", "\"bgr\"");
    pf_safetensors *st = pf_golden_open("tests/data/goldens/tiny-sd15/controlnet.safetensors");
    pf_backend *be = pf_backend_cpu_new(0);
    pf_controlnet *m = load_cn(be, dir);
    check_residuals(m, be, st, "", "down_bgr", 0.7f, NULL);
    pf_controlnet_free(m);
    pf_backend_free(be);
    pf_st_close(st);
    pf_temp_dir_remove(dir);
}

/* Configs and pairings that must be refused, each with a message naming the cause. */
static void test_errors(void **state) {
    (void)state;
    static const struct { const char *from, *to, *needle; } cases[] = {
        {"\"global_pool_conditions\": false", "\"global_pool_conditions\": true", "global_pool_conditions"},
        {"\"rgb\"", "\"rbg\"", "controlnet_conditioning_channel_order"},
        /* an SDXL (text_time) config over SD-1.5 weights: its add_embedding is missing */
        {"\"addition_embed_type\": null", "\"addition_embed_type\": \"text_time\"", "add_embedding.linear_1.weight"},
        {"\"DownBlock2D\"", "\"AttnDownBlock2D\"", "down_block_types"},
        /* weights of another shape than the config says */
        {"\"conditioning_embedding_out_channels\": [\n    8,", "\"conditioning_embedding_out_channels\": [\n    12,",
         "controlnet_cond_embedding.conv_in.weight"},
        {"\"block_out_channels\": [\n    32,", "\"block_out_channels\": [\n    40,", "conv_in.weight"},
    };
    pf_backend *be = pf_backend_cpu_new(1);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *dir = pf_temp_dir();
        write_variant(dir, cases[i].from, cases[i].to);
        pf_controlnet *m = NULL;
        pf_error err = {0};
        assert_int_equal(pf_controlnet_load_dir(&m, be, dir, &err), -1);
        assert_null(m);
        if (!strstr(err.msg, cases[i].needle)) fail_msg("case %zu: error \"%s\" lacks %s", i, err.msg, cases[i].needle);
        pf_temp_dir_remove(dir);
    }

    /* a ControlNet for another UNet: tiny-sd15's on tiny-sd2 */
    pf_pipeline *p;
    pf_error err;
    if (pf_pipeline_load(&p, be, pf_test_path("tests/data/models/tiny-sd2"), NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(pf_pipeline_set_controlnet(p, pf_test_path(CN_DIR), &err), -1);
    assert_non_null(strstr(err.msg, "does not fit the model"));
    assert_false(pf_pipeline_has_controlnet(p));
    /* not a folder with a ControlNet */
    assert_int_equal(pf_pipeline_set_controlnet(p, pf_test_path("tests/data/models/tiny-sd2/unet"), &err), -1);
    assert_non_null(strstr(err.msg, "loading controlnet"));
    assert_int_equal(pf_pipeline_set_controlnet(p, "/nonexistent/controlnet", &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/controlnet"));
    pf_pipeline_free(p);

    /* shapes a forward refuses */
    pf_controlnet *m = load_cn(be, pf_test_path(CN_DIR));
    const int n = pf_controlnet_num_residuals(m);
    pf_tensor **down = calloc((size_t)n, sizeof *down), *mid;
    pf_tensor *x = pf_new4(be, 1, 4, 8, 8), *ctx = pf_new3(be, 1, 77, 32), *cond = pf_new4(be, 1, 3, 60, 64);
    float t = 500;
    assert_int_equal(pf_controlnet_forward(m, down, &mid, x, &t, ctx, NULL, cond, 1.0f, &err), -1);
    assert_non_null(strstr(err.msg, "condition image has shape (1, 3, 60, 64), expected (1, 3, 64, 64)"));
    for (int i = 0; i < n; i++) assert_null(down[i]);
    assert_null(mid);
    free(down);
    pf_free(x), pf_free(ctx), pf_free(cond);
    pf_controlnet_free(m);
    pf_backend_free(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_residuals),
        cmocka_unit_test(test_bgr),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
