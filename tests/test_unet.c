/* test_unet.c - the UNet against diffusers' UNet2DConditionModel (goldens from
 * tests/reference/make_goldens.py via goldens_unet.py), for both tiny models:
 * plain, non-square latents, ControlNet residuals, PeRFlow delta weights, and
 * the errors a bad config, checkpoint or delta must produce.
 *
 * Tolerance: max abs err 1e-4. The reference runs the same float32 weights in
 * float32; differences come from summation order in GEMMs, convolutions and
 * norms (~1e-6 relative per op) and from a 1-ulp difference between torch's and
 * libm's expf in the timestep embedding, through ~40 layers of unit-scale
 * activations: observed errors stay near 1e-6, while any real error (a wrong
 * head split, eps, skip order or residual) moves outputs by 1e-2 or more. */
#include "test_util.h"

#include "backend.h"
#include "safetensors.h"
#include "unet.h"

#define TOL 1e-4

/* Runs m on golden inputs sample<sfx>, timesteps<sfx>, encoder_hidden_states and
 * compares with golden `want` (residuals: the golden's down/mid residuals). */
static void check_forward(pf_unet *m, pf_backend *be, const pf_safetensors *st, const char *sfx, const char *want,
                          int residuals) {
    char name[64];
    snprintf(name, sizeof name, "sample%s", sfx);
    pf_tensor *x = pf_golden_tensor(be, st, name);
    snprintf(name, sizeof name, "timesteps%s", sfx);
    float *t = pf_golden_floats(st, name, NULL);
    pf_tensor *ctx = pf_golden_tensor(be, st, "encoder_hidden_states");
    const pf_unet_config *c = pf_unet_get_config(m);
    pf_tensor *out = pf_new4(be, x->shape[0], c->out_channels, x->shape[2], x->shape[3]);
    int ns = pf_unet_num_skips(m);
    pf_tensor **down = NULL, *mid = NULL;
    if (residuals) {
        down = calloc((size_t)ns, sizeof *down);
        for (int i = 0; i < ns; i++) {
            snprintf(name, sizeof name, "down_residual_%d", i);
            down[i] = pf_golden_tensor(be, st, name);
        }
        snprintf(name, sizeof name, "down_residual_%d", ns);
        if (pf_st_find(st, name)) fail_msg("golden has more skips than the model (%d)", ns);
        mid = pf_golden_tensor(be, st, "mid_residual");
    }
    pf_error err;
    if (pf_unet_forward(m, out, x, t, ctx, (const pf_tensor *const *)down, mid, &err)) fail_msg("%s", err.msg);
    pf_tensor *w = pf_golden_tensor(be, st, want);
    assert_int_equal(pf_numel(w), pf_numel(out));
    pf_assert_tensor_close(want, out, w, TOL, 0);
    for (int i = 0; down && i < ns; i++) pf_free(down[i]);
    free(down);
    pf_free(mid);
    pf_free(w);
    free(t);
    pf_free(out);
    pf_free(ctx);
    pf_free(x);
}

/* Runs model's UNet on the golden file `golden` (under its goldens folder):
 * kind 0 the plain, residual and (wide) non-square cases of unet.safetensors;
 * kind 1 the two sizes of unet_odd.safetensors, latent sides that are not
 * multiples of 2^(blocks-1) (odd sides rounded up on the way down, each
 * upsampler resized to its skip's size on the way up, as diffusers forwards
 * upsample_size). */
static void check_model(const char *model, const char *golden, int kind, int wide) {
    pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s/%s", model, golden));
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(0);
    pf_unet *m;
    if (pf_unet_load_dir(&m, be, pf_test_path(pf_pathf("tests/data/models/%s", model)), NULL, &err))
        fail_msg("%s", err.msg);
    check_forward(m, be, st, "", "out", 0);
    if (kind == 0) check_forward(m, be, st, "", "out_residuals", 1);
    if (kind == 0 && wide) check_forward(m, be, st, "_wide", "out_wide", 0);
    if (kind == 1) check_forward(m, be, st, "_b", "out_b", 0);
    pf_unet_free(m);
    pf_backend_free(be);
    pf_st_close(st);
}

static void test_unet_odd(void **state) {
    (void)state;
    check_model("tiny-sd15", "unet_odd.safetensors", 1, 0);
    check_model("tiny-sd2", "unet_odd.safetensors", 1, 0);
}

static void test_unet_sd15(void **state) { (void)state; check_model("tiny-sd15", "unet.safetensors", 0, 1); }
static void test_unet_sd2(void **state) { (void)state; check_model("tiny-sd2", "unet.safetensors", 0, 0); }

/* PeRFlow delta weights, given as the delta's unet/ folder and as the file itself. */
static void test_unet_delta(void **state) {
    (void)state;
    pf_safetensors *st = pf_golden_open("tests/data/goldens/tiny-sd15/unet_delta.safetensors");
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(0);
    const char *deltas[] = {"tests/data/models/tiny-sd15-delta/unet",
                            "tests/data/models/tiny-sd15-delta/unet/diffusion_pytorch_model.safetensors"};
    for (int i = 0; i < 2; i++) {
        pf_unet *m;
        if (pf_unet_load_dir(&m, be, pf_test_path("tests/data/models/tiny-sd15"), pf_test_path(deltas[i]), &err))
            fail_msg("%s", err.msg);
        check_forward(m, be, st, "", "out", 0);
        pf_unet_free(m);
    }
    pf_backend_free(be);
    pf_st_close(st);
}

/* Writes dir/config.json: the tiny-sd15 config with the first occurrence of
 * `from` replaced by `to`; returns its path. */
static const char *write_edited_config(const char *dir, const char *from, const char *to) {
    char *base = pf_read_file(pf_test_path("tests/data/models/tiny-sd15/unet/config.json"), NULL);
    char *at = strstr(base, from);
    if (!at) fail_msg("config lacks %s", from);
    char edited[1 << 16];
    snprintf(edited, sizeof edited, "%.*s%s%s", (int)(at - base), base, to, at + strlen(from));
    free(base);
    return pf_temp_write(dir, "config.json", edited, strlen(edited));
}

/* Unsupported config values are refused by key; the legacy head naming is read
 * as diffusers does. */
static void test_config_errors(void **state) {
    (void)state;
    char *dir = pf_temp_dir();
    pf_unet_config cfg;
    pf_error err;
    if (pf_unet_config_read(&cfg, pf_test_path("tests/data/models/tiny-sd2/unet/config.json"), &err))
        fail_msg("%s", err.msg);
    assert_int_equal(cfg.num_blocks, 3);
    assert_int_equal(cfg.num_heads[0], 2); /* "attention_head_dim": [2, 4, 4] are head counts */
    assert_int_equal(cfg.num_heads[2], 4);
    assert_int_equal(cfg.up_cross_attn[0], 0);
    assert_int_equal(cfg.use_linear_projection, 1);
    assert_int_equal(cfg.time_embed_dim, 64);

    static const struct { const char *from, *to, *needle; } cases[] = {
        {"\"DownBlock2D\"", "\"SimpleCrossAttnDownBlock2D\"", "\"down_block_types\"[1] \"SimpleCrossAttnDownBlock2D\""},
        {"\"UpBlock2D\"", "\"AttnUpBlock2D\"", "\"up_block_types\"[0]"},
        {"\"UNetMidBlock2DCrossAttn\"", "\"UNetMidBlock2DSimpleCrossAttn\"", "\"mid_block_type\""},
        {"\"num_attention_heads\": null", "\"num_attention_heads\": 8", "\"num_attention_heads\""},
        {"\"class_embed_type\": null", "\"class_embed_type\": \"timestep\"", "\"class_embed_type\""},
        {"\"addition_embed_type\": null", "\"addition_embed_type\": \"text\"", "\"addition_embed_type\""},
        {"\"time_cond_proj_dim\": null", "\"time_cond_proj_dim\": 256", "\"time_cond_proj_dim\""},
        {"\"only_cross_attention\": false", "\"only_cross_attention\": true", "\"only_cross_attention\""},
        {"\"dual_cross_attention\": false", "\"dual_cross_attention\": true", "\"dual_cross_attention\""},
        {"\"resnet_time_scale_shift\": \"default\"", "\"resnet_time_scale_shift\": \"scale_shift\"",
         "\"resnet_time_scale_shift\""},
        {"\"time_embedding_type\": \"positional\"", "\"time_embedding_type\": \"fourier\"", "\"time_embedding_type\""},
        {"\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\"", "\"act_fn\""},
        {"\"conv_in_kernel\": 3", "\"conv_in_kernel\": 5", "\"conv_in_kernel\""},
        {"\"conv_out_kernel\": 3", "\"conv_out_kernel\": 1", "\"conv_out_kernel\""},
        {"\"attention_head_dim\": 4", "\"attention_head_dim\": 5", "not a multiple of its 5 attention heads"},
        {"\"layers_per_block\": 1", "\"layers_per_block\": [1, 2, 3]", "\"layers_per_block\" has 3 entries"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *path = write_edited_config(dir, cases[i].from, cases[i].to);
        err.msg[0] = 0;
        assert_int_equal(pf_unet_config_read(&cfg, path, &err), -1);
        if (!strstr(err.msg, cases[i].needle)) fail_msg("case %zu: error \"%s\" lacks %s", i, err.msg, cases[i].needle);
    }
    pf_temp_dir_remove(dir);
}

/* A config that disagrees with the weights names the tensor and both shapes;
 * latent sizes the up path cannot restore are refused. */
static void test_shape_errors(void **state) {
    (void)state;
    pf_unet_config cfg;
    pf_error err;
    if (pf_unet_config_read(&cfg, pf_test_path("tests/data/models/tiny-sd15/unet/config.json"), &err))
        fail_msg("%s", err.msg);
    cfg.cross_attention_dim = 40;
    pf_weights *w;
    if (pf_weights_open(&w, pf_test_path("tests/data/models/tiny-sd15/unet/diffusion_pytorch_model.safetensors"),
                        &err))
        fail_msg("%s", err.msg);
    pf_backend *be = pf_backend_cpu_new(1);
    pf_unet *m;
    assert_int_equal(pf_unet_load(&m, be, &cfg, w, "", &err), -1);
    assert_null(m);
    assert_non_null(strstr(err.msg, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"));
    assert_non_null(strstr(err.msg, "(32, 32)"));
    assert_non_null(strstr(err.msg, "(32, 40)"));

    cfg.cross_attention_dim = 32;
    cfg.norm_num_groups = 5;
    assert_int_equal(pf_unet_load(&m, be, &cfg, w, "", &err), -1);
    assert_non_null(strstr(err.msg, "norm_num_groups 5"));

    cfg.norm_num_groups = 8;
    if (pf_unet_load(&m, be, &cfg, w, "", &err)) fail_msg("%s", err.msg);
    pf_tensor *x = pf_new4(be, 1, 4, 6, 8), *out = pf_new4(be, 1, 4, 6, 8), *ctx = pf_new3(be, 1, 77, 32);
    float t = 1000;
    /* an odd side runs (its numbers: the odd-size goldens in test_unet_goldens), but
     * residuals must then have the rounded-up skip shapes */
    pf_tensor *x5 = pf_new4(be, 1, 4, 5, 8), *out5 = pf_new4(be, 1, 4, 5, 8);
    pf_tensor *mid5 = pf_new4(be, 1, 64, 2, 4); /* mid output is (1, 64, 3, 4) */
    assert_int_equal(pf_unet_forward(m, out5, x5, &t, ctx, NULL, mid5, &err), -1);
    assert_non_null(strstr(err.msg, "mid residual 0 has shape (1, 64, 2, 4), expected (1, 64, 3, 4)"));
    pf_free(mid5);
    pf_tensor *bad_ctx = pf_new3(be, 1, 77, 24);
    assert_int_equal(pf_unet_forward(m, out, x, &t, bad_ctx, NULL, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "context has shape (1, 77, 24)"));
    pf_tensor *bad_mid = pf_new4(be, 1, 64, 4, 4); /* mid output is (1, 64, 3, 4) */
    assert_int_equal(pf_unet_forward(m, out, x, &t, ctx, NULL, bad_mid, &err), -1);
    assert_non_null(strstr(err.msg, "mid residual 0 has shape (1, 64, 4, 4), expected (1, 64, 3, 4)"));
    pf_tensor *dead[] = {x, out, ctx, x5, out5, bad_ctx, bad_mid};
    for (size_t i = 0; i < sizeof dead / sizeof *dead; i++) pf_free(dead[i]);
    pf_unet_free(m);
    pf_weights_close(w);
    pf_backend_free(be);
}

/* A delta whose key set differs from the base's is refused with both sides named. */
static void test_bad_delta(void **state) {
    (void)state;
    char *dir = pf_temp_dir();
    const char *path = pf_pathf("%s/delta.safetensors", dir);
    const float zero[4] = {0};
    const int64_t shape[] = {4};
    pf_st_entry e = {"conv_out.bias", PF_F32, 1, shape, zero};
    pf_error err;
    if (pf_st_write(path, &e, 1, NULL, &err)) fail_msg("%s", err.msg);
    pf_backend *be = pf_backend_cpu_new(1);
    pf_unet *m;
    assert_int_equal(pf_unet_load_dir(&m, be, pf_test_path("tests/data/models/tiny-sd15"), path, &err), -1);
    assert_null(m);
    assert_non_null(strstr(err.msg, "do not match the base"));
    assert_non_null(strstr(err.msg, "missing in the delta: \"conv_in.bias\""));
    /* a folder without weights */
    assert_int_equal(pf_unet_load_dir(&m, be, pf_test_path("tests/data/models/tiny-sd15"), dir, &err), -1);
    assert_non_null(strstr(err.msg, "no weights"));
    pf_backend_free(be);
    pf_temp_dir_remove(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unet_sd15),     cmocka_unit_test(test_unet_sd2),     cmocka_unit_test(test_unet_delta),
        cmocka_unit_test(test_unet_odd), cmocka_unit_test(test_config_errors), cmocka_unit_test(test_shape_errors), cmocka_unit_test(test_bad_delta),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
