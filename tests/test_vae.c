/* test_vae.c - the AutoencoderKL decoder and encoder against diffusers
 * (goldens from tests/reference/make_goldens.py, goldens_vae.py) for both tiny
 * models, the latent sampling helper, and config and weight errors.
 *
 * Tolerance: max abs err 1e-4. The reference runs the same float32 weights in
 * float32; differences come only from summation order in convolutions, GEMMs
 * and group norms (~1e-6 relative per op) through ~20 layers of activations of
 * magnitude ~1-3: measured max 5.7e-6 (decode) and 1.2e-6 (encode). 1e-4
 * leaves over an order of magnitude of margin while still catching structural
 * errors (padding side, shortcut, scaling, attention layout), which move
 * outputs by far more. */
#include "test_util.h"

#include "backend.h"
#include "safetensors.h"
#include "vae.h"

/* The golden file of model's VAE. */
static pf_safetensors *open_golden(const char *model) {
    return pf_golden_open(pf_pathf("tests/data/goldens/%s/vae.safetensors", model));
}

/* vae.decode(latents / scaling_factor).sample for the golden latents `lat`. */
static void check_decode(pf_vae *m, pf_backend *be, const pf_safetensors *st, const char *lat, const char *img) {
    pf_tensor *latents = pf_golden_tensor(be, st, lat), *want = pf_golden_tensor(be, st, img);
    pf_tensor *got = pf_new_like(want);
    pf_error err;
    assert_int_equal(want->shape[2], latents->shape[2] * pf_vae_scale_factor(m));
    if (pf_vae_decode(m, got, latents, &err)) fail_msg("%s", err.msg);
    pf_assert_tensor_close(img, got, want, 1e-4, 0);
    pf_free(got);
    pf_free(want);
    pf_free(latents);
}

static void check_model(const char *model, int factor) {
    pf_backend *be = pf_backend_cpu_new(0);
    pf_vae *m;
    pf_error err;
    if (pf_vae_load_dir(&m, be, pf_test_path(pf_pathf("tests/data/models/%s", model)), &err)) fail_msg("%s", err.msg);
    assert_int_equal(pf_vae_scale_factor(m), factor);
    pf_safetensors *st = open_golden(model);
    check_decode(m, be, st, "decode_latents", "decode_image");
    check_decode(m, be, st, "decode_latents_ns", "decode_image_ns");

    pf_tensor *image = pf_golden_tensor(be, st, "encode_image"), *want = pf_golden_tensor(be, st, "encode_moments");
    pf_tensor *got = pf_new_like(want);
    if (pf_vae_encode(m, got, image, &err)) fail_msg("%s", err.msg);
    pf_assert_tensor_close("encode_moments", got, want, 1e-4, 0);

    /* Input errors are reported, not fatal. */
    pf_tensor *odd = pf_new4(be, 1, 3, factor * 8 + factor / 2, factor * 8);
    assert_int_equal(pf_vae_encode(m, got, odd, &err), -1);
    assert_non_null(strstr(err.msg, "not a positive multiple"));
    pf_tensor *bad = pf_new4(be, 1, 3, 8, 8);
    assert_int_equal(pf_vae_decode(m, got, bad, &err), -1);
    assert_non_null(strstr(err.msg, "latents (1, 3, 8, 8)"));

    pf_free(bad);
    pf_free(odd);
    pf_free(got);
    pf_free(want);
    pf_free(image);
    pf_st_close(st);
    pf_vae_free(m);
    pf_backend_free(be);
}

static void test_vae_sd15(void **state) { (void)state; check_model("tiny-sd15", 8); }
static void test_vae_sd2(void **state) { (void)state; check_model("tiny-sd2", 2); }

/* mean + exp(0.5 clamp(logvar, -30, 20)) noise, times the scaling factor, worked by hand. */
static void test_sample_latents(void **state) {
    (void)state;
    /* B = 2, C = 1, H = 1, W = 2: moments [2, 2, 1, 2] = (mean, logvar) per image */
    const float moments[] = {1.0f, -2.0f, 0.0f, 2.0f * logf(3.0f), /* image 0 */
                             0.5f, 0.0f,  -40.0f, 30.0f};           /* image 1: both clamped */
    const float noise[] = {0.5f, 2.0f, -1.0f, 1e-4f};
    float got[4];
    pf_vae_sample_latents(got, moments, noise, 2, 1, 1, 2, 0.5f);
    const float want[] = {
        0.5f * (1.0f + 1.0f * 0.5f),                        /* std exp(0) = 1 */
        0.5f * (-2.0f + 3.0f * 2.0f),                       /* std exp(log 3) = 3 */
        0.5f * (0.5f + expf(-15.0f) * -1.0f),               /* logvar -40 -> -30 */
        0.5f * (0.0f + expf(10.0f) * 1e-4f),                /* logvar 30 -> 20 */
    };
    pf_assert_close("sample", got, want, 4, 0, 1e-6);
}

/* tiny-sd2's vae/config.json, as key and JSON value pairs. */
static const char *const base_config[][2] = {
    {"_class_name", "\"AutoencoderKL\""},
    {"act_fn", "\"silu\""},
    {"block_out_channels", "[16, 32]"},
    {"down_block_types", "[\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"]"},
    {"up_block_types", "[\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]"},
    {"in_channels", "3"},
    {"out_channels", "3"},
    {"latent_channels", "4"},
    {"layers_per_block", "2"},
    {"norm_num_groups", "8"},
    {"sample_size", "16"},
    {"scaling_factor", "0.18215"},
    {"shift_factor", "null"},
    {"use_quant_conv", "true"},
    {"use_post_quant_conv", "true"},
    {"mid_block_add_attention", "true"},
};

/* Writes dir/config.json: base_config with `key` set to `value` (key NULL:
 * unchanged); returns its path. */
static const char *config_with(const char *dir, const char *key, const char *value) {
    char json[4096];
    size_t n = (size_t)snprintf(json, sizeof json, "{");
    for (size_t i = 0; i < sizeof base_config / sizeof base_config[0]; i++) {
        const char *v = key && !strcmp(key, base_config[i][0]) ? value : base_config[i][1];
        n += (size_t)snprintf(json + n, sizeof json - n, "%s\"%s\": %s", i ? ", " : "", base_config[i][0], v);
    }
    snprintf(json + n, sizeof json - n, "}");
    return pf_temp_write(dir, "config.json", json, strlen(json));
}

static void test_config_errors(void **state) {
    (void)state;
    char *dir = pf_temp_dir();
    pf_vae_config cfg;
    pf_error err;
    if (pf_vae_config_read(&cfg, config_with(dir, NULL, NULL), &err)) fail_msg("%s", err.msg);
    assert_int_equal(cfg.num_blocks, 2);
    assert_int_equal(cfg.block_out_channels[1], 32);
    assert_int_equal(cfg.layers_per_block, 2);
    assert_float_equal(cfg.scaling_factor, 0.18215f, 1e-9);

    static const struct {
        const char *key, *value, *msg;
    } cases[] = {
        {"down_block_types", "[\"DownEncoderBlock2D\", \"AttnDownEncoderBlock2D\"]",
         "\"down_block_types\"[1] is \"AttnDownEncoderBlock2D\", only DownEncoderBlock2D"},
        {"up_block_types", "[\"UpDecoderBlock2D\", \"AttnUpDecoderBlock2D\"]",
         "\"up_block_types\"[1] is \"AttnUpDecoderBlock2D\", only UpDecoderBlock2D"},
        {"up_block_types", "[\"UpDecoderBlock2D\"]", "\"up_block_types\" has 1 entries"},
        {"act_fn", "\"gelu\"", "\"act_fn\" is \"gelu\""},
        {"shift_factor", "0.1159", "\"shift_factor\" is 0.1159"},
        {"use_quant_conv", "false", "\"use_quant_conv\" is false"},
        {"use_post_quant_conv", "false", "\"use_post_quant_conv\" is false"},
        {"mid_block_add_attention", "false", "\"mid_block_add_attention\" is false"},
        {"norm_num_groups", "7", "not a multiple of \"norm_num_groups\""},
        {"scaling_factor", "0", "\"scaling_factor\" is 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = pf_vae_config_read(&cfg, config_with(dir, cases[i].key, cases[i].value), &err);
        if (rc != -1 || !strstr(err.msg, cases[i].msg))
            fail_msg("%s = %s: rc %d, message \"%s\", expected \"%s\"", cases[i].key, cases[i].value, rc,
                     rc ? err.msg : "", cases[i].msg);
    }
    pf_temp_dir_remove(dir);
}

/* A config that disagrees with the weights names the tensor and both shapes. */
static void test_shape_mismatch(void **state) {
    (void)state;
    pf_vae_config cfg;
    pf_error err;
    if (pf_vae_config_read(&cfg, pf_test_path("tests/data/models/tiny-sd15/vae/config.json"), &err))
        fail_msg("%s", err.msg);
    cfg.block_out_channels[0] += 8;
    pf_weights *w;
    if (pf_weights_open(&w, pf_test_path("tests/data/models/tiny-sd15/vae/diffusion_pytorch_model.safetensors"),
                        &err))
        fail_msg("%s", err.msg);
    pf_backend *be = pf_backend_cpu_new(1);
    pf_vae *m;
    assert_int_equal(pf_vae_load(&m, be, &cfg, w, "", &err), -1);
    assert_null(m);
    assert_non_null(strstr(err.msg, "encoder.conv_in.weight"));
    assert_non_null(strstr(err.msg, "(16, 3, 3, 3)"));
    assert_non_null(strstr(err.msg, "(24, 3, 3, 3)"));
    pf_weights_close(w);
    pf_backend_free(be);
}

/* Checkpoints from before diffusers 0.14 name the attention projections
 * query/key/value/proj_attn: a copy of tiny-sd2's VAE renamed that way decodes
 * exactly like the original. */
static void test_deprecated_attention_names(void **state) {
    (void)state;
    pf_error err;
    pf_safetensors *st;
    if (pf_st_open(&st, pf_test_path("tests/data/models/tiny-sd2/vae/diffusion_pytorch_model.safetensors"), &err))
        fail_msg("%s", err.msg);
    static const char *const from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *const to[] = {".query.", ".key.", ".value.", ".proj_attn."};
    pf_st_entry *e = calloc((size_t)st->count, sizeof *e);
    char (*names)[256] = calloc((size_t)st->count, 256);
    int renamed = 0;
    for (int i = 0; i < st->count; i++) {
        const pf_st_tensor *t = &st->tensors[i];
        snprintf(names[i], 256, "%s", t->name);
        for (int k = 0; k < 4; k++) {
            char *at = strstr(names[i], from[k]);
            if (!at) continue;
            char tail[256];
            snprintf(tail, sizeof tail, "%s", at + strlen(from[k]));
            snprintf(at, 256 - (size_t)(at - names[i]), "%s%s", to[k], tail);
            renamed++;
        }
        float *data = malloc((size_t)pf_st_numel(t) * sizeof(float) + 4);
        if (pf_st_read_f32(st, t, data, &err)) fail_msg("%s", err.msg);
        e[i] = (pf_st_entry){names[i], PF_F32, t->ndim, t->shape, data};
    }
    assert_int_equal(renamed, 16); /* 4 projections x (weight, bias) x (encoder, decoder) */
    char *dir = pf_temp_dir();
    const char *path = pf_pathf("%s/old_names.safetensors", dir);
    if (pf_st_write(path, e, st->count, NULL, &err)) fail_msg("%s", err.msg);

    pf_vae_config cfg;
    if (pf_vae_config_read(&cfg, pf_test_path("tests/data/models/tiny-sd2/vae/config.json"), &err))
        fail_msg("%s", err.msg);
    pf_weights *w;
    if (pf_weights_open(&w, path, &err)) fail_msg("%s", err.msg);
    pf_backend *be = pf_backend_cpu_new(1);
    pf_vae *m;
    if (pf_vae_load(&m, be, &cfg, w, "", &err)) fail_msg("%s", err.msg);
    pf_weights_close(w);
    pf_safetensors *g = open_golden("tiny-sd2");
    check_decode(m, be, g, "decode_latents", "decode_image");
    pf_st_close(g);
    pf_vae_free(m);
    pf_backend_free(be);
    pf_temp_dir_remove(dir);
    for (int i = 0; i < st->count; i++) free((void *)e[i].data);
    free(e);
    free(names);
    pf_st_close(st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vae_sd15),      cmocka_unit_test(test_vae_sd2),
        cmocka_unit_test(test_sample_latents), cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_shape_mismatch), cmocka_unit_test(test_deprecated_attention_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
