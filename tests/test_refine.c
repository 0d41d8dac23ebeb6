/* test_refine.c - the refiner against diffusers' StableDiffusionControlNetImg2ImgPipeline
 * with the PeRFlow sampler, the chained text-to-image + refine of the original
 * PeRFlow predictor, text to image at odd latent sizes, and `perflow refine` /
 * `perflow generate --refine` against diffusers' own PNGs (goldens:
 * tests/data/goldens/refine.json, made by tests/reference/make_goldens.py refine).
 *
 * Tolerances as for text to image (test_pipeline.c): float images max abs err
 * <= PF_PIPELINE_ATOL; 8-bit images equal except <= 1 level on <= 0.1 % of values. The
 * hand-over resize is Pillow's Lanczos byte for byte (test_image.c), so every
 * difference comes from float summation order. */
#include "test_util.h"

#include "image.h"
#include "pipeline.h"
#include "pipeline_cases.h"
#include "refine_cases.h"


/* Compares float images with the case's golden (and the golden can fail: it
 * is not saturated), and their 8-bit form with diffusers' PNGs. */
static void check_images(json_t *c, const float *got, size_t n) {
    const char *name = pf_case_str(c, "name");
    pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s", pf_case_str(c, "images")));
    int64_t n_want;
    float *want = pf_golden_floats(st, "images", &n_want);
    pf_st_close(st);
    assert_int_equal(n_want, (int64_t)n);
    size_t inside = 0;
    for (size_t k = 0; k < n; k++) inside += want[k] > 0.0f && want[k] < 1.0f;
    if (inside * 10 < n * 9) fail_msg("%s: golden is saturated (%zu of %zu inside)", name, inside, n);
    pf_assert_pipeline_close(name, got, want, n);
    free(want);
    const int num = pf_case_int(c, "num_images");
    uint8_t *u8 = malloc(n);
    pf_image_to_u8(u8, got, (long)n);
    for (int k = 0; k < num; k++) {
        uint8_t *png;
        int w, h;
        pf_error err;
        const char *rel = json_string_value(json_array_get(json_object_get(c, "pngs"), (size_t)k));
        if (pf_image_read(pf_test_path(pf_pathf("tests/data/goldens/%s", rel)), &png, &w, &h, &err))
            fail_msg("%s", err.msg);
        assert_int_equal((size_t)w * h * 3 * num, n);
        pf_assert_u8_close(rel, u8 + (size_t)k * w * h * 3, png, (size_t)w * h * 3);
        free(png);
    }
    free(u8);
}

/* Every case through the library: refine of an input PNG, text to image then
 * refine of its 8-bit images (the predictor's PIL hand-over), text to image alone. */
static void test_refine_goldens(void **state) {
    (void)state;
    json_t *root = pf_refine_cases(), *c;
    size_t i;
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *p = pf_refine_case_pipeline(be);
    int refined = 0;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        const size_t n = pf_refine_case_values(c);
        float *got = malloc(n * sizeof *got);
        pf_step_counter cnt = {0, 0, 0};
        refined += pf_refine_case_run(p, c, got, &cnt);
        if (strcmp(pf_case_str(c, "kind"), "generate")) { /* the refine stage reported each of its steps */
            assert_int_equal(cnt.calls, cnt.total);
            assert_true(cnt.total >= 1 && cnt.total <= pf_case_int(json_object_get(c, "refine"), "steps"));
        }
        check_images(c, got, n);
        free(got);
    }
    assert_true(refined >= 5);
    pf_pipeline_free(p);
    pf_backend_free(be);
    json_decref(root);
}

/* The predictor's size rule against Python's values (halves to even included). */
static void test_refine_size(void **state) {
    (void)state;
    json_t *root = pf_refine_cases(), *c;
    size_t i;
    json_array_foreach(json_object_get(root, "refine_sizes"), i, c) {
        pf_refine_params q;
        pf_refine_defaults(&q);
        q.image_width = pf_case_int(c, "width");
        q.image_height = pf_case_int(c, "height");
        q.size = pf_case_int(c, "size");
        int w, h;
        pf_refine_output_size(&q, &w, &h);
        if (w != pf_case_int(c, "out_width") || h != pf_case_int(c, "out_height"))
            fail_msg("%d x %d at size %d: got %d x %d, Python %d x %d", q.image_width, q.image_height, q.size, w, h,
                     pf_case_int(c, "out_width"), pf_case_int(c, "out_height"));
    }
    assert_true(i >= 10);
    json_decref(root);
}

/* Parameters the refiner refuses, each with a message naming the parameter. */
static void test_refine_errors(void **state) {
    (void)state;
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *p = pf_refine_case_pipeline(be);
    uint8_t img[64 * 48 * 3] = {0};
    static const struct { int field; double value; const char *needle, *param; } cases[] = {
        {0, 0.0, "strength must be in (0, 1]", "strength"},
        {0, 1.5, "strength must be in (0, 1]", "strength"},
        {0, -0.2, "strength must be in (0, 1]", "strength"},
        {0, 0.1, "leaves no step", "strength"},                   /* int(4 * 0.1) = 0 */
        {1, 16, "rounds the 64 x 48 image to", "size"},           /* 16 / 48 * 64 / 64 = 0.33 -> 0 */
        {1, 5000, "size must be in [0, 4096]", "size"},
        {1, 3500, "more than 4096 a side", "size"},               /* 64 px -> 4672 */
        {2, 0, "steps must be in [1, 1000]", "steps"},
        {3, 12, "controlnet scale", "controlnet_scale"},
        {4, 44, "multiple of 8", "size"},                         /* size 0 with a 44 px wide input */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pf_refine_params q;
        pf_refine_defaults(&q);
        q.images = img;
        q.image_width = 64;
        q.image_height = 48;
        q.size = 96;
        switch (cases[i].field) {
        case 0: q.strength = (float)cases[i].value; break;
        case 1: q.size = (int)cases[i].value; break;
        case 2: q.steps = (int)cases[i].value; break;
        case 3: q.controlnet_scale = (float)cases[i].value; break;
        case 4: q.size = 0, q.image_width = (int)cases[i].value; break;
        }
        pf_error err = {0};
        const char *param = NULL;
        if (pf_refine_check(p, &q, &param, &err) != -1) fail_msg("case %zu (%s) passed the check", i, cases[i].needle);
        assert_string_equal(param, cases[i].param);
        if (!strstr(err.msg, cases[i].needle)) fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.msg, cases[i].needle);
        float out[4];
        assert_int_equal(pf_pipeline_refine(p, &q, out, &err), -1);
    }
    /* no ControlNet attached: the settings check out, the run is refused */
    pf_pipeline_set_controlnet(p, NULL, NULL);
    pf_refine_params q;
    pf_refine_defaults(&q);
    q.images = img, q.image_width = 64, q.image_height = 48, q.size = 96;
    pf_error err;
    assert_int_equal(pf_refine_check(p, &q, NULL, &err), 0);
    float out[4];
    assert_int_equal(pf_pipeline_refine(p, &q, out, &err), -1);
    assert_non_null(strstr(err.msg, "ControlNet"));
    pf_pipeline_free(p);
    pf_backend_free(be);
}

/* Batching: two jobs of different seeds and prompts in one call give each
 * job's solo images; a job with other settings is refused. */
static void test_refine_batch(void **state) {
    (void)state;
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *p = pf_refine_case_pipeline(be);
    pf_error err;
    uint8_t *a, *b;
    int w, h, w2, h2;
    if (pf_image_read(pf_test_path("tests/data/goldens/tiny-sd15/refine-input-4step.png"), &a, &w, &h, &err) ||
        pf_image_read(pf_test_path("tests/data/goldens/tiny-sd15/refine-input-tiled.png"), &b, &w2, &h2, &err))
        fail_msg("%s", err.msg);
    pf_refine_params q1, q2;
    pf_refine_defaults(&q1);
    q1.images = a, q1.image_width = w, q1.image_height = h, q1.size = 128, q1.seed = 5;
    q2 = q1;
    q2.images = b, q2.seed = 6, q2.prompt = "another prompt";
    const size_t n = (size_t)128 * 128 * 3;
    float *solo1 = malloc(n * sizeof(float)), *solo2 = malloc(n * sizeof(float)), *both = malloc(2 * n * sizeof(float));
    const pf_refine_params *jobs[] = {&q1, &q2};
    if (pf_pipeline_refine(p, &q1, solo1, &err) || pf_pipeline_refine(p, &q2, solo2, &err) ||
        pf_pipeline_refine_batch(p, jobs, 2, both, &err))
        fail_msg("%s", err.msg);
    pf_assert_close("batch job 0", both, solo1, n, 1e-5, 0);
    pf_assert_close("batch job 1", both + n, solo2, n, 1e-5, 0);
    double diff = 0;
    for (size_t k = 0; k < n; k++) diff += fabs((double)solo1[k] - solo2[k]);
    assert_true(diff / n > 0.02);
    q2.strength = 0.5f;
    assert_false(pf_refine_batchable(p, &q1, &q2));
    assert_int_equal(pf_pipeline_refine_batch(p, jobs, 2, both, &err), -1);
    assert_non_null(strstr(err.msg, "batch job 1"));
    free(solo1), free(solo2), free(both);

    /* text to image with a ControlNet: two jobs with other condition images batch
     * into one call and each gets its solo images; other scales do not batch */
    pf_control c1 = {0, a, w, h, 0.8f}, c2 = {0, b, w2, h2, 0.8f};
    pf_txt2img_params t1, t2;
    pf_txt2img_defaults(&t1);
    t1.prompt = "a house", t1.width = t1.height = 64, t1.seed = 3, t1.controls = &c1, t1.n_controls = 1;
    t2 = t1;
    t2.prompt = "a boat", t2.seed = 4, t2.controls = &c2;
    const size_t m = (size_t)64 * 64 * 3;
    solo1 = malloc(m * sizeof(float)), solo2 = malloc(m * sizeof(float)), both = malloc(2 * m * sizeof(float));
    const pf_txt2img_params *tj[] = {&t1, &t2};
    if (pf_pipeline_txt2img(p, &t1, solo1, &err) || pf_pipeline_txt2img(p, &t2, solo2, &err) ||
        pf_pipeline_txt2img_batch(p, tj, 2, both, &err))
        fail_msg("%s", err.msg);
    pf_assert_close("control batch job 0", both, solo1, m, 1e-5, 0);
    pf_assert_close("control batch job 1", both + m, solo2, m, 1e-5, 0);
    c2.scale = 0.5f;
    assert_false(pf_txt2img_batchable(p, &t1, &t2));
    c2.scale = 0.8f, c2.net = 3; /* not attached */
    assert_int_equal(pf_txt2img_check(p, &t2, &err), -1);
    assert_non_null(strstr(err.msg, "names ControlNet 3"));
    free(solo1), free(solo2), free(both), free(a), free(b);
    pf_pipeline_free(p);
    pf_backend_free(be);
}

/* `perflow refine` of each refine case's input, and `perflow generate --refine`
 * of each chained one, against diffusers' PNGs. */
static void test_cli(void **state) {
    (void)state;
    const char *cli = pf_cli_path();
    json_t *root = pf_refine_cases(), *c;
    size_t i;
    char *dir = pf_temp_dir();
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        const char *kind = pf_case_str(c, "kind");
        /* text to image alone is test_pipeline's; cases with several ControlNets: test_cli_controls */
        if (!strcmp(kind, "generate") || json_array_size(json_object_get(c, "controls"))) continue;
        json_t *r = json_object_get(c, "refine");
        char out[4096], size[16], steps[16], guidance[32], strength[32], scale[32], seed[32], windows[16];
        snprintf(out, sizeof out, "%s/%s.png", dir, pf_case_str(c, "name"));
        snprintf(size, sizeof size, "%d", pf_case_int(r, "size"));
        snprintf(steps, sizeof steps, "%d", pf_case_int(r, "steps"));
        snprintf(guidance, sizeof guidance, "%.17g", json_number_value(json_object_get(r, "guidance")));
        snprintf(strength, sizeof strength, "%.17g", json_number_value(json_object_get(r, "strength")));
        snprintf(scale, sizeof scale, "%.17g", json_number_value(json_object_get(r, "controlnet_scale")));
        snprintf(seed, sizeof seed, "%d", pf_case_int(r, "seed"));
        snprintf(windows, sizeof windows, "%d", pf_case_int(r, "windows"));
        char model[4096], delta[4096], cn[4096], input[4096];
        snprintf(model, sizeof model, "%s", pf_test_path(PF_REFINE_MODEL));
        snprintf(delta, sizeof delta, "%s", pf_test_path(PF_REFINE_DELTA));
        snprintf(cn, sizeof cn, "%s", pf_test_path(PF_REFINE_CONTROLNET));
        if (!strcmp(kind, "refine")) {
            snprintf(input, sizeof input, "%s", pf_test_path(pf_pathf("tests/data/goldens/%s", pf_case_str(c, "input"))));
            char *argv[] = {(char *)cli, "refine", "--model", model, "--delta", delta, "--controlnet", cn,
                            "--image", input, "--out", out, "--prompt", (char *)pf_case_str(r, "prompt"),
                            "--negative-prompt", (char *)pf_case_str(r, "negative_prompt"), "--size", size,
                            "--steps", steps, "--guidance", guidance, "--strength", strength, "--controlnet-scale",
                            scale, "--seed", seed, "--prediction-type", (char *)pf_case_str(r, "prediction_type"),
                            "--windows", windows, "--vae-tiling", (char *)pf_case_str(r, "vae_tiling"),
                            "--device", "cpu", NULL};
            assert_int_equal(pf_run(argv, 1), 0);
            pf_assert_case_pngs(c, out);
        } else {
            json_t *g = json_object_get(c, "generate");
            pf_case_cli a;
            pf_case_cli_of(&a, g);
            const char *neg = pf_case_str(g, "negative_prompt");
            char *argv[64] = {(char *)cli, "generate", "--model", model, "--delta", delta, "--controlnet", cn,
                              "--refine", "--out", out, "--prompt", (char *)pf_case_str(g, "prompt"),
                              "--steps", a.steps, "--guidance", a.guidance, "--seed", a.seed, "--width", a.width,
                              "--height", a.height, "--num-images", a.num_images,
                              "--prediction-type", (char *)pf_case_str(g, "prediction_type"), "--windows", a.windows,
                              "--refine-size", size, "--refine-steps", steps, "--refine-prompt",
                              (char *)pf_case_str(r, "prompt"), "--refine-negative-prompt",
                              (char *)pf_case_str(r, "negative_prompt"), "--refine-guidance", guidance,
                              "--refine-strength", strength, "--controlnet-scale", scale, "--device", "cpu", NULL};
            if (neg) { /* --negative-prompt before the NULL */
                int k = 0;
                while (argv[k]) k++;
                argv[k++] = "--negative-prompt";
                argv[k++] = (char *)neg;
                argv[k] = NULL;
            }
            assert_int_equal(pf_run(argv, 1), 0);
            pf_assert_case_pngs(c, out);
        }
    }
    pf_temp_dir_remove(dir);
    json_decref(root);
}

/* A 16:9 render at 640 x 360 (latents 80 x 45, an odd side) through the CLI
 * against diffusers' PNG of the "wide-16x9" golden (test_refine_goldens runs
 * the same case through the library against its float images). */
static void test_cli_16x9(void **state) {
    (void)state;
    const char *cli = pf_cli_path();
    json_t *root = pf_refine_cases(), *c, *found = NULL;
    size_t i;
    json_array_foreach(json_object_get(root, "cases"), i, c) if (!strcmp(pf_case_str(c, "name"), "wide-16x9")) found = c;
    if (!found) fail_msg("refine.json has no wide-16x9 case (re-run tests/reference/make_goldens.py refine)");
    json_t *g = json_object_get(found, "generate");
    assert_int_equal(pf_case_int(g, "width"), 640);
    assert_int_equal(pf_case_int(g, "height"), 360);
    assert_null(pf_case_str(g, "negative_prompt")); /* no --negative-prompt below */
    char *dir = pf_temp_dir(), out[4096], model[4096], delta[4096];
    snprintf(out, sizeof out, "%s/wide.png", dir);
    snprintf(model, sizeof model, "%s", pf_test_path(PF_REFINE_MODEL));
    snprintf(delta, sizeof delta, "%s", pf_test_path(PF_REFINE_DELTA));
    pf_case_cli a;
    pf_case_cli_of(&a, g);
    char *argv[] = {(char *)cli, "generate", "--model", model, "--delta", delta, "--prompt",
                    (char *)pf_case_str(g, "prompt"), "--steps", a.steps, "--guidance", a.guidance, "--seed", a.seed,
                    "--width", a.width, "--height", a.height, "--num-images", a.num_images, "--prediction-type",
                    (char *)pf_case_str(g, "prediction_type"), "--windows", a.windows, "--device", "cpu", "--out", out,
                    NULL};
    assert_int_equal(pf_run(argv, 1), 0);
    pf_assert_case_pngs(found, out);
    pf_temp_dir_remove(dir);
    json_decref(root);
}

/* The cases with their own ControlNets through the CLI's --controlnet DIR:SCALE
 * --control-image FILE pairs: text to image with one and two nets, and a refine
 * with the tile (no image: the refined image) and a second net. */
static void test_cli_controls(void **state) {
    (void)state;
    const char *cli = pf_cli_path();
    json_t *root = pf_refine_cases(), *c;
    size_t i;
    char *dir = pf_temp_dir();
    int ran = 0;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        json_t *list = json_object_get(c, "controls"), *it;
        size_t k;
        if (!json_array_size(list)) continue;
        const char *kind = pf_case_str(c, "kind");
        char out[4096], model[4096], delta[4096], input[4096];
        char nets[PF_MAX_CONTROLS][4200], imgs[PF_MAX_CONTROLS][4096];
        snprintf(out, sizeof out, "%s/%s.png", dir, pf_case_str(c, "name"));
        snprintf(model, sizeof model, "%s", pf_test_path(PF_REFINE_MODEL));
        snprintf(delta, sizeof delta, "%s", pf_test_path(PF_REFINE_DELTA));
        char *argv[80] = {(char *)cli, "--model", model, "--delta", delta, "--out", out, "--device", "cpu", NULL};
        int n = 0;
        while (argv[n]) n++;
        json_array_foreach(list, k, it) {
            snprintf(nets[k], sizeof nets[k], "%s:%.17g",
                     pf_test_path(pf_pathf("tests/data/models/%s", pf_case_str(it, "controlnet"))),
                     json_number_value(json_object_get(it, "scale")));
            argv[n++] = "--controlnet";
            argv[n++] = nets[k];
            if (pf_case_str(it, "image")) {
                snprintf(imgs[k], sizeof imgs[k], "%s",
                         pf_test_path(pf_pathf("tests/data/goldens/%s", pf_case_str(it, "image"))));
                argv[n++] = "--control-image";
                argv[n++] = imgs[k];
            }
        }
        pf_case_cli a;
        char size[16], rsteps[16], rguid[32], rstrength[32], rseed[32], rwin[16];
        if (!strcmp(kind, "refine")) {
            json_t *r = json_object_get(c, "refine");
            snprintf(input, sizeof input, "%s", pf_test_path(pf_pathf("tests/data/goldens/%s", pf_case_str(c, "input"))));
            snprintf(size, sizeof size, "%d", pf_case_int(r, "size"));
            snprintf(rsteps, sizeof rsteps, "%d", pf_case_int(r, "steps"));
            snprintf(rguid, sizeof rguid, "%.17g", json_number_value(json_object_get(r, "guidance")));
            snprintf(rstrength, sizeof rstrength, "%.17g", json_number_value(json_object_get(r, "strength")));
            snprintf(rseed, sizeof rseed, "%d", pf_case_int(r, "seed"));
            snprintf(rwin, sizeof rwin, "%d", pf_case_int(r, "windows"));
            char *more[] = {"--image", input, "--size", size, "--steps", rsteps, "--guidance", rguid, "--strength",
                            rstrength, "--seed", rseed, "--windows", rwin, "--prediction-type",
                            (char *)pf_case_str(r, "prediction_type"), "--prompt", (char *)pf_case_str(r, "prompt"),
                            "--negative-prompt", (char *)pf_case_str(r, "negative_prompt"), NULL};
            for (int m = 0; more[m]; m++) argv[n++] = more[m];
        } else {
            json_t *g = json_object_get(c, "generate");
            pf_case_cli_of(&a, g);
            char *more[] = {"--prompt", (char *)pf_case_str(g, "prompt"), "--steps", a.steps, "--guidance", a.guidance,
                            "--seed", a.seed, "--width", a.width, "--height", a.height, "--num-images", a.num_images,
                            "--windows", a.windows, "--prediction-type", (char *)pf_case_str(g, "prediction_type"),
                            NULL};
            for (int m = 0; more[m]; m++) argv[n++] = more[m];
            if (pf_case_str(g, "negative_prompt")) {
                argv[n++] = "--negative-prompt";
                argv[n++] = (char *)pf_case_str(g, "negative_prompt");
            }
        }
        argv[n] = NULL;
        /* the subcommand goes first: shift the options right by one */
        memmove(argv + 2, argv + 1, (size_t)n * sizeof *argv);
        argv[1] = !strcmp(kind, "refine") ? "refine" : "generate";
        assert_int_equal(pf_run(argv, 1), 0);
        pf_assert_case_pngs(c, out);
        ran++;
    }
    assert_true(ran >= 3);
    pf_temp_dir_remove(dir);
    json_decref(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refine_size),   cmocka_unit_test(test_refine_goldens),
        cmocka_unit_test(test_refine_errors), cmocka_unit_test(test_refine_batch),
        cmocka_unit_test(test_cli),           cmocka_unit_test(test_cli_16x9),
        cmocka_unit_test(test_cli_controls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
