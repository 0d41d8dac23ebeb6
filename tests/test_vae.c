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
 * outputs by far more.
 *
 * Tiled passes (vae_tiled.safetensors, diffusers with enable_tiling()) keep
 * the same 1e-4: each tile is an ordinary pass on a smaller input, and the
 * blends are convex combinations computed with torch's float32 arithmetic, so
 * they add no error of their own. */
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
    if (pf_vae_decode(m, got, latents, PF_VAE_TILING_OFF, &err)) fail_msg("%s", err.msg);
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
    if (pf_vae_encode(m, got, image, PF_VAE_TILING_OFF, &err)) fail_msg("%s", err.msg);
    pf_assert_tensor_close("encode_moments", got, want, 1e-4, 0);

    /* Input errors are reported, not fatal. */
    pf_tensor *odd = pf_new4(be, 1, 3, factor * 8 + factor / 2, factor * 8);
    assert_int_equal(pf_vae_encode(m, got, odd, PF_VAE_TILING_OFF, &err), -1);
    assert_non_null(strstr(err.msg, "not a positive multiple"));
    pf_tensor *bad = pf_new4(be, 1, 3, 8, 8);
    assert_int_equal(pf_vae_decode(m, got, bad, PF_VAE_TILING_OFF, &err), -1);
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

/* ---- tiling ---- */

/* Largest |a - b| over two host arrays of n floats. */
static double max_abs_diff(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - (double)b[i]));
    return m;
}

/* Runs `pass` under `mode` on golden input `in` and compares the result with
 * golden `want` (1e-4, see the title comment); prints the max abs error. */
static void check_pass(pf_vae *m, pf_backend *be, const pf_safetensors *st, const char *model, pf_vae_pass pass,
                       pf_vae_tiling mode, const char *in, const char *want) {
    pf_tensor *x = pf_golden_tensor(be, st, in), *w = pf_golden_tensor(be, st, want);
    pf_tensor *got = pf_new_like(w);
    pf_error err;
    int rc = pass == PF_VAE_DECODE ? pf_vae_decode(m, got, x, mode, &err) : pf_vae_encode(m, got, x, mode, &err);
    if (rc) fail_msg("%s -> %s (%s): %s", in, want, pf_vae_tiling_name(mode), err.msg);
    int64_t n = pf_numel(w);
    float *g = malloc((size_t)n * sizeof *g), *h = malloc((size_t)n * sizeof *h);
    pf_to_host(g, got);
    pf_to_host(h, w);
    print_message("  %s %s %-4s -> %-16s max abs err %.3g\n", model, pass == PF_VAE_DECODE ? "decode" : "encode",
                  pf_vae_tiling_name(mode), want, max_abs_diff(g, h, n));
    pf_assert_close(want, g, h, (size_t)n, 1e-4, 0);
    free(g);
    free(h);
    pf_free(got);
    pf_free(w);
    pf_free(x);
}

/* Tiled (ON) and untiled (OFF) decode and encode against diffusers with and
 * without enable_tiling(), at sizes of 4 x 5 tiles (and 3 x 4 for a batch of
 * 2, whose last tiles are narrower than the blend); AUTO under a tiny and a
 * huge PERFLOW_MEM_BUDGET takes each path. */
static void check_tiled_model(const char *model) {
    pf_backend *be = pf_backend_cpu_new(0);
    pf_vae *m;
    pf_error err;
    if (pf_vae_load_dir(&m, be, pf_test_path(pf_pathf("tests/data/models/%s", model)), &err)) fail_msg("%s", err.msg);
    pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s/vae_tiled.safetensors", model));

    /* The goldens must differ, or nothing here could tell tiled from untiled:
     * measured 0.65 to 1.6 (decode), 0.68 to 0.70 (moments), 10^4 times the
     * tolerance. */
    static const char *const pairs[][2] = {{"tiled_decode", "untiled_decode"}, {"tiled_moments", "untiled_moments"}};
    for (int i = 0; i < 2; i++) {
        int64_t n, n2;
        float *a = pf_golden_floats(st, pairs[i][0], &n), *b = pf_golden_floats(st, pairs[i][1], &n2);
        assert_int_equal(n, n2);
        double d = max_abs_diff(a, b, n);
        print_message("  %s: %s vs %s differ by up to %.3g\n", model, pairs[i][0], pairs[i][1], d);
        assert_true(d > 0.1);
        free(a);
        free(b);
    }

    check_pass(m, be, st, model, PF_VAE_DECODE, PF_VAE_TILING_ON, "tiled_latents", "tiled_decode");
    check_pass(m, be, st, model, PF_VAE_DECODE, PF_VAE_TILING_OFF, "tiled_latents", "untiled_decode");
    check_pass(m, be, st, model, PF_VAE_DECODE, PF_VAE_TILING_ON, "tiled_latents_b2", "tiled_decode_b2");
    check_pass(m, be, st, model, PF_VAE_ENCODE, PF_VAE_TILING_ON, "tiled_image", "tiled_moments");
    check_pass(m, be, st, model, PF_VAE_ENCODE, PF_VAE_TILING_ON, "tiled_image_b2", "tiled_moments_b2");
    check_pass(m, be, st, model, PF_VAE_ENCODE, PF_VAE_TILING_OFF, "tiled_image", "untiled_moments");

    /* AUTO: a 1-byte budget fits nothing, so it tiles; 1 PB fits anything. */
    setenv("PERFLOW_MEM_BUDGET", "1", 1);
    check_pass(m, be, st, model, PF_VAE_DECODE, PF_VAE_TILING_AUTO, "tiled_latents", "tiled_decode");
    check_pass(m, be, st, model, PF_VAE_ENCODE, PF_VAE_TILING_AUTO, "tiled_image", "tiled_moments");
    /* ... but not below one tile, where diffusers never tiles (8 x 8 latents) */
    pf_safetensors *plain = open_golden(model);
    check_pass(m, be, plain, model, PF_VAE_DECODE, PF_VAE_TILING_AUTO, "decode_latents", "decode_image");
    check_pass(m, be, plain, model, PF_VAE_DECODE, PF_VAE_TILING_ON, "decode_latents", "decode_image");
    pf_st_close(plain);
    setenv("PERFLOW_MEM_BUDGET", "1000000000000000", 1);
    check_pass(m, be, st, model, PF_VAE_DECODE, PF_VAE_TILING_AUTO, "tiled_latents", "untiled_decode");
    check_pass(m, be, st, model, PF_VAE_ENCODE, PF_VAE_TILING_AUTO, "tiled_image", "untiled_moments");
    unsetenv("PERFLOW_MEM_BUDGET");

    pf_st_close(st);
    pf_vae_free(m);
    pf_backend_free(be);
}

static void test_tiled_sd15(void **state) { (void)state; check_tiled_model("tiny-sd15"); }
static void test_tiled_sd2(void **state) { (void)state; check_tiled_model("tiny-sd2"); }

/* A sample_size whose tiles do not cover the output (not a multiple of 4f)
 * fails a tiled pass with an error, as diffusers would return another size;
 * AUTO then stays untiled rather than fail. */
static void test_tiling_geometry_errors(void **state) {
    (void)state;
    pf_error err;
    pf_vae_config cfg;
    if (pf_vae_config_read(&cfg, pf_test_path("tests/data/models/tiny-sd2/vae/config.json"), &err))
        fail_msg("%s", err.msg);
    pf_weights *w;
    if (pf_weights_open(&w, pf_test_path("tests/data/models/tiny-sd2/vae/diffusion_pytorch_model.safetensors"), &err))
        fail_msg("%s", err.msg);
    pf_backend *be = pf_backend_cpu_new(0);
    pf_safetensors *st = pf_golden_open("tests/data/goldens/tiny-sd2/vae_tiled.safetensors");
    pf_tensor *lat = pf_golden_tensor(be, st, "tiled_latents"), *img = pf_golden_tensor(be, st, "tiled_image");
    pf_tensor *out = pf_new4(be, 1, 3, 40, 56), *mom = pf_new4(be, 1, 8, 20, 28);
    static const struct {
        int sample_size;
        const char *msg;
    } cases[] = {
        {18, "vae decode: tiling: sample_size 18 is not a multiple of 8: the tiles of a side of 20 latents would "
             "make 46 pixels instead of 40"},
        {3, "vae decode: tiling: sample_size 3 makes latent tiles of side 1, too small to overlap"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cfg.sample_size = cases[i].sample_size;
        pf_vae *m;
        if (pf_vae_load(&m, be, &cfg, w, "", &err)) fail_msg("%s", err.msg);
        assert_int_equal(pf_vae_decode(m, out, lat, PF_VAE_TILING_ON, &err), -1);
        if (strcmp(err.msg, cases[i].msg)) fail_msg("got \"%s\", expected \"%s\"", err.msg, cases[i].msg);
        assert_int_equal(pf_vae_encode(m, mom, img, PF_VAE_TILING_ON, &err), -1);
        assert_non_null(strstr(err.msg, "vae encode: tiling: sample_size"));
        setenv("PERFLOW_MEM_BUDGET", "1", 1);
        assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_AUTO, PF_VAE_DECODE, 1, 20, 28), 0);
        check_pass(m, be, st, "tiny-sd2", PF_VAE_DECODE, PF_VAE_TILING_AUTO, "tiled_latents", "untiled_decode");
        unsetenv("PERFLOW_MEM_BUDGET");
        pf_vae_free(m);
    }
    pf_free(mom);
    pf_free(out);
    pf_free(img);
    pf_free(lat);
    pf_st_close(st);
    pf_weights_close(w);
    pf_backend_free(be);
}

/* pf_vae_tiling_needed: diffusers' one-tile condition per pass, AUTO against the budget. */
static void test_tiling_needed(void **state) {
    (void)state;
    pf_backend *be = pf_backend_cpu_new(1);
    pf_vae *m;
    pf_error err;
    if (pf_vae_load_dir(&m, be, pf_test_path("tests/data/models/tiny-sd15"), &err)) fail_msg("%s", err.msg);
    /* tiny-sd15: sample_size 64, f 8: tiles of 8 latents / 64 pixels */
    assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_ON, PF_VAE_DECODE, 1, 8, 8), 0);
    assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_ON, PF_VAE_DECODE, 1, 8, 9), 1);
    assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_ON, PF_VAE_DECODE, 1, 9, 8), 1);
    assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_OFF, PF_VAE_DECODE, 1, 90, 90), 0);
    assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_ON, PF_VAE_ENCODE, 1, 64, 64), 0);
    assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_ON, PF_VAE_ENCODE, 1, 64, 72), 1);
    const size_t need = pf_vae_decode_peak_bytes(m, 1, 20, 28);
    char v[32];
    snprintf(v, sizeof v, "%zu", need);
    setenv("PERFLOW_MEM_BUDGET", v, 1); /* exactly enough: untiled */
    assert_int_equal(pf_backend_mem_available(be), need);
    assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_AUTO, PF_VAE_DECODE, 1, 20, 28), 0);
    snprintf(v, sizeof v, "%zu", need - 1);
    setenv("PERFLOW_MEM_BUDGET", v, 1); /* one byte short: tiled */
    assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_AUTO, PF_VAE_DECODE, 1, 20, 28), 1);
    assert_int_equal(pf_vae_tiling_needed(m, PF_VAE_TILING_AUTO, PF_VAE_DECODE, 1, 8, 8), 0); /* one tile */
    unsetenv("PERFLOW_MEM_BUDGET");
    pf_vae_free(m);
    pf_backend_free(be);
}

/* PERFLOW_MEM_BUDGET is a plain decimal byte count or ignored; without it the
 * CPU backend reports MemAvailable, which on any machine running this test is
 * more than 16 MiB and less than 2^50 bytes. */
static void test_mem_budget(void **state) {
    (void)state;
    pf_backend *be = pf_backend_cpu_new(1);
    unsetenv("PERFLOW_MEM_BUDGET");
    const size_t real = pf_backend_mem_available(be);
    assert_true(real > ((size_t)16 << 20) && real < ((size_t)1 << 50));
    setenv("PERFLOW_MEM_BUDGET", "0", 1);
    assert_int_equal(pf_backend_mem_available(be), 0);
    setenv("PERFLOW_MEM_BUDGET", "18446744073709551615", 1); /* SIZE_MAX on 64 bits */
    assert_true(pf_backend_mem_available(be) == SIZE_MAX);
    /* Each would be read as a small number, or as SIZE_MAX, by a lax parse. */
    static const char *const bad[] = {"", "12a", "-1", "+5", " 5", "5 ", "1e9", "0x10", "4G",
                                      "18446744073709551616", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("PERFLOW_MEM_BUDGET", bad[i], 1);
        size_t got = pf_backend_mem_available(be);
        if (got < ((size_t)16 << 20) || got == SIZE_MAX) fail_msg("PERFLOW_MEM_BUDGET=\"%s\" gave %zu", bad[i], got);
    }
    unsetenv("PERFLOW_MEM_BUDGET");
    pf_backend_free(be);
}

/* The SD-1.5 VAE (diffusers' AutoencoderKL config of runwayml/stable-diffusion-v1-5). */
static pf_vae_config sd15_config(void) {
    pf_vae_config c = {.in_channels = 3, .out_channels = 3, .latent_channels = 4, .num_blocks = 4,
                       .block_out_channels = {128, 256, 512, 512}, .layers_per_block = 2, .norm_num_groups = 32,
                       .scaling_factor = 0.18215f, .sample_size = 512};
    return c;
}

/* The peak model, checked against a count by hand and for monotonicity.
 *
 * SD-1.5 decode at 512 px (64 x 64 latents), float32, CPU: the largest live
 * set is in the first resnet of the last up block at 512 x 512: its input (256
 * channels), norm1's copy (256) and conv1's output (128) = 640 x 512^2 x 4 B =
 * 640 MiB, plus conv1's im2col tile (16 MiB), times 9/8 = 738 MiB. Nothing
 * else comes close (the mid-block attention at 64 x 64 holds 6 x 8 MiB plus
 * score blocks of at most 4 MiB a thread). So [640 MiB, 800 MiB]. It is not
 * "a few GB" because the forward frees each activation once consumed (PyTorch
 * under no_grad frees alike, plus its allocator's caching).
 * float16 on CUDA halves the activations and adds the backend's persistent
 * im2col buffer, counted at its 256 MiB cap: (320 + 256) x 9/8 = 648 MiB, so
 * [500, 700] MiB.
 * At 1024 px every full-resolution tensor is 4 times larger: between 3.5 and
 * 4.5 times the 512 px peak. */
static void test_peak_estimate(void **state) {
    (void)state;
    const pf_vae_config c = sd15_config();
    const double MiB = 1 << 20;
    const double d512 = (double)pf_vae_peak_bytes(&c, PF_VAE_DECODE, "cpu", 1, 64, 64);
    const double d1024 = (double)pf_vae_peak_bytes(&c, PF_VAE_DECODE, "cpu", 1, 128, 128);
    const double h512 = (double)pf_vae_peak_bytes(&c, PF_VAE_DECODE, "cuda", 1, 64, 64);
    const double h1024 = (double)pf_vae_peak_bytes(&c, PF_VAE_DECODE, "cuda", 1, 128, 128);
    const double e512 = (double)pf_vae_peak_bytes(&c, PF_VAE_ENCODE, "cpu", 1, 512, 512);
    print_message("  SD-1.5 decode peak: 512 px %.0f MiB (f32) %.0f MiB (f16); 1024 px %.0f MiB (f32) %.0f MiB "
                  "(f16); encode 512 px %.0f MiB (f32)\n", d512 / MiB, h512 / MiB, d1024 / MiB, h1024 / MiB,
                  e512 / MiB);
    assert_true(d512 >= 640 * MiB && d512 <= 800 * MiB);
    assert_true(h512 >= 500 * MiB && h512 <= 700 * MiB);
    assert_true(d1024 >= 3.5 * d512 && d1024 <= 4.5 * d512);
    /* The encoder's largest set is at full resolution too: conv_in's 128
     * channels and the resnets' (128 + 128 + 128) x 512^2 x 4 B = 384 MiB. */
    assert_true(e512 >= 384 * MiB && e512 <= 500 * MiB);
    /* Monotone in each size and in the batch. */
    size_t last = 0;
    for (int64_t s = 1; s <= 160; s++) {
        size_t p = pf_vae_peak_bytes(&c, PF_VAE_DECODE, "cpu", 1, s, 64);
        assert_true(p >= last);
        last = p;
    }
    last = 0;
    for (int64_t s = 8; s <= 1280; s += 8) {
        size_t p = pf_vae_peak_bytes(&c, PF_VAE_ENCODE, "cuda", 1, 512, s);
        assert_true(p >= last);
        last = p;
    }
    assert_true(pf_vae_peak_bytes(&c, PF_VAE_DECODE, "cpu", 2, 64, 64) > (size_t)(1.9 * d512));
}

static void test_tiling_parse(void **state) {
    (void)state;
    static const struct {
        const char *s;
        pf_vae_tiling t;
    } good[] = {{"auto", PF_VAE_TILING_AUTO}, {"on", PF_VAE_TILING_ON}, {"off", PF_VAE_TILING_OFF}};
    pf_error err;
    for (size_t i = 0; i < 3; i++) {
        pf_vae_tiling t = (pf_vae_tiling)-1;
        assert_int_equal(pf_vae_tiling_parse(&t, good[i].s, &err), 0);
        assert_int_equal(t, good[i].t);
        assert_string_equal(pf_vae_tiling_name(t), good[i].s);
    }
    static const char *const bad[] = {"AUTO", "On", "", " on", "off ", "true", "1", "tiled", NULL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pf_vae_tiling t = PF_VAE_TILING_ON;
        assert_int_equal(pf_vae_tiling_parse(&t, bad[i], &err), -1);
        assert_int_equal(t, PF_VAE_TILING_ON);
        assert_non_null(strstr(err.msg, "must be auto, on or off"));
    }
}

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
    assert_int_equal(cfg.sample_size, 16);
    if (pf_vae_config_read(&cfg, config_with(dir, "sample_size", "[24, 32]"), &err)) fail_msg("%s", err.msg);
    assert_int_equal(cfg.sample_size, 24); /* the first entry, as diffusers' tile_latent_min_size */
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
        {"sample_size", "\"512\"", "\"sample_size\""},
        {"sample_size", "0", "\"sample_size\""},
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
        cmocka_unit_test(test_tiled_sd15),     cmocka_unit_test(test_tiled_sd2),
        cmocka_unit_test(test_tiling_geometry_errors), cmocka_unit_test(test_tiling_needed),
        cmocka_unit_test(test_mem_budget),     cmocka_unit_test(test_peak_estimate),
        cmocka_unit_test(test_tiling_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
