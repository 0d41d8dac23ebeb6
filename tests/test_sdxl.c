/* test_sdxl.c - the SDXL family against diffusers and transformers (goldens from
 * tests/reference/goldens_sdxl.py via make_goldens.py sdxl): both text encoders
 * (the penultimate hidden states SDXL takes, and the second encoder's projected
 * pooled output), the UNet with its text_time embedding (also at an odd latent
 * size), and whole StableDiffusionXLPipeline runs with the PeRFlow sampler.
 *
 * Tolerances as for SD-1.5: models max abs err 1e-4, pipelines PF_PIPELINE_ATOL (float) and
 * the 8-bit rule of test_pipeline. */
#include "pipeline_cases.h"

#include "clip.h"
#include "image.h"
#include "pipeline.h"
#include "unet.h"

#define TOL 1e-4
#define MODEL "tests/data/models/tiny-sdxl"

static void test_text_encoders(void **state) {
    (void)state;
    pf_safetensors *st = pf_golden_open("tests/data/goldens/tiny-sdxl/text_encoders.safetensors");
    pf_backend *be = pf_backend_cpu_new(0);
    pf_error err;
    for (int e = 0; e < 2; e++) {
        pf_clip_text_model *m;
        if (pf_clip_text_model_load_component(&m, be, pf_test_path(MODEL), e ? "text_encoder_2" : "text_encoder",
                                              &err))
            fail_msg("%s", err.msg);
        assert_int_equal(pf_clip_text_model_has_projection(m), e);
        const pf_clip_text_config *c = pf_clip_text_model_config(m);
        int64_t n;
        float *idf = pf_golden_floats(st, e ? "input_ids_2" : "input_ids", &n);
        const int L = 77, B = (int)(n / L);
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)idf[i];
        pf_tensor *hidden = pf_new3(be, B, L, c->hidden_size);
        pf_tensor *pooled = e ? pf_new2(be, B, c->projection_dim) : NULL;
        /* hidden_states[-2]: every layer but the last, no final layer norm */
        if (pf_clip_text_model_encode(m, ids, B, L, c->num_hidden_layers - 1, 0, hidden, pooled, &err))
            fail_msg("%s", err.msg);
        pf_tensor *want = pf_golden_tensor(be, st, e ? "hidden_2" : "hidden_1");
        pf_assert_tensor_close(e ? "hidden_2" : "hidden_1", hidden, want, TOL, 0);
        pf_free(want);
        if (e) {
            want = pf_golden_tensor(be, st, "text_embeds_2");
            pf_assert_tensor_close("text_embeds_2", pooled, want, TOL, 0);
            pf_free(want);
            /* the last hidden state through the final norm, as before */
            pf_tensor *last = pf_new3(be, B, L, c->hidden_size);
            if (pf_clip_text_model_forward(m, last, ids, B, L, 0, &err)) fail_msg("%s", err.msg);
            want = pf_golden_tensor(be, st, "last_hidden_state_2");
            pf_assert_tensor_close("last_hidden_state_2", last, want, TOL, 0);
            pf_free(want);
            pf_free(last);
        } else { /* no projection: a pooled embedding is an error */
            pf_tensor *p = pf_new2(be, B, c->projection_dim);
            assert_int_equal(pf_clip_text_model_encode(m, ids, B, L, 1, 0, NULL, p, &err), -1);
            assert_non_null(strstr(err.msg, "text_projection"));
            pf_free(p);
        }
        pf_free(hidden);
        pf_free(pooled);
        free(ids);
        free(idf);
        pf_clip_text_model_free(m);
    }
    pf_backend_free(be);
    pf_st_close(st);
}

static void test_unet(void **state) {
    (void)state;
    pf_safetensors *st = pf_golden_open("tests/data/goldens/tiny-sdxl/unet.safetensors");
    pf_backend *be = pf_backend_cpu_new(0);
    pf_error err;
    pf_unet *m;
    if (pf_unet_load_dir(&m, be, pf_test_path(MODEL), NULL, &err)) fail_msg("%s", err.msg); /* the fp16 variant */
    const pf_unet_config *c = pf_unet_get_config(m);
    assert_true(c->text_time);
    assert_int_equal(c->transformer_layers[1], 2);
    pf_tensor *ctx = pf_golden_tensor(be, st, "encoder_hidden_states"), *emb = pf_golden_tensor(be, st, "text_embeds");
    float *t = pf_golden_floats(st, "timesteps", NULL), *ids = pf_golden_floats(st, "time_ids", NULL);
    for (int odd = 0; odd < 2; odd++) {
        pf_tensor *x = pf_golden_tensor(be, st, odd ? "sample_odd" : "sample");
        const int64_t B = x->shape[0];
        pf_tensor *cb = pf_slice0(ctx, 0, B), *eb = pf_slice0(emb, 0, B), *out = pf_new_like(x);
        pf_unet_added added = {eb, ids, NULL, 0};
        if (pf_unet_forward_added(m, out, x, t, cb, &added, NULL, NULL, &err)) fail_msg("%s", err.msg);
        pf_tensor *want = pf_golden_tensor(be, st, odd ? "out_odd" : "out");
        pf_assert_tensor_close(odd ? "out_odd" : "out", out, want, TOL, 0);
        /* without its added conditions the UNet refuses to run */
        assert_int_equal(pf_unet_forward(m, out, x, t, cb, NULL, NULL, &err), -1);
        assert_non_null(strstr(err.msg, "text_embeds and time_ids"));
        pf_tensor *dead[] = {x, cb, eb, out, want};
        for (size_t i = 0; i < sizeof dead / sizeof *dead; i++) pf_free(dead[i]);
    }
    free(t);
    free(ids);
    pf_free(ctx);
    pf_free(emb);
    pf_unet_free(m);
    pf_backend_free(be);
    pf_st_close(st);
}

/* Whole StableDiffusionXLPipeline runs (sdxl.json): no negative prompt (the
 * zeros of force_zeros_for_empty_prompt), an empty one, a real one, prompt_2
 * and negative_prompt_2 with two images, a non-square size with explicit time ids. */
static void test_pipelines(void **state) {
    (void)state;
    json_t *root = pf_golden_json(pf_test_path("tests/data/goldens/sdxl.json"), PF_GOLDEN_VERSION,
                                  "re-run tests/reference/make_goldens.py sdxl"), *c;
    size_t i;
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *p;
    pf_error err;
    if (pf_pipeline_load(&p, be, pf_test_path(MODEL), NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(pf_pipeline_family(p), PF_FAMILY_SDXL);
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        pf_txt2img_params q;
        pf_sdxl_case_params(c, &q);
        const char *name = pf_case_str(c, "name");
        const size_t n = (size_t)q.num_images * q.height * q.width * 3;
        float *got = malloc(n * sizeof *got);
        if (pf_pipeline_txt2img(p, &q, got, &err)) fail_msg("%s: %s", name, err.msg);
        pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s", pf_case_str(c, "images")));
        int64_t nw;
        float *want = pf_golden_floats(st, "images", &nw);
        pf_st_close(st);
        assert_int_equal(nw, (int64_t)n);
        pf_assert_pipeline_close(name, got, want, n);
        uint8_t *u8 = malloc(n);
        pf_image_to_u8(u8, got, (long)n);
        const size_t per = n / q.num_images;
        for (int k = 0; k < q.num_images; k++) {
            uint8_t *png;
            int w, h;
            const char *rel = json_string_value(json_array_get(json_object_get(c, "pngs"), (size_t)k));
            if (pf_image_read(pf_test_path(pf_pathf("tests/data/goldens/%s", rel)), &png, &w, &h, &err))
                fail_msg("%s", err.msg);
            pf_assert_u8_close(rel, u8 + per * k, png, per);
            free(png);
        }
        free(u8), free(want), free(got);
    }
    /* what SDXL refuses: the refiner (an SD-1.5 stage), bad time ids */
    pf_refine_params r;
    pf_refine_defaults(&r);
    r.image_width = r.image_height = 64;
    assert_int_equal(pf_refine_check(p, &r, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "SD-1.x/2.x"));
    pf_txt2img_params q;
    pf_txt2img_defaults(&q);
    q.prompt = "x", q.width = q.height = 64, q.original_size[0] = -5;
    assert_int_equal(pf_txt2img_check(p, &q, &err), -1);
    assert_non_null(strstr(err.msg, "original size"));
    pf_pipeline_free(p);

    /* SD-1.x models refuse SDXL's settings */
    if (pf_pipeline_load(&p, be, pf_test_path("tests/data/models/tiny-sd15"), NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(pf_pipeline_family(p), PF_FAMILY_SD);
    pf_txt2img_defaults(&q);
    q.prompt = "x", q.width = q.height = 64, q.prompt_2 = "y";
    assert_int_equal(pf_txt2img_check(p, &q, &err), -1);
    assert_non_null(strstr(err.msg, "SDXL models only"));
    pf_pipeline_free(p);
    pf_backend_free(be);
    json_decref(root);
}

/* Copies the tiny SDXL model into dir (a shallow copy of its files). */
static void copy_model(const char *dir) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cp -r '%s/.' '%s'", pf_test_path(MODEL), dir);
    assert_int_equal(system(cmd), 0);
}

/* StableDiffusionXLControlNetPipeline (goldens: tests/reference/goldens_sdxl_controlnet.py):
 * one text_time ControlNet, and two summed (MultiControlNetModel) with condition images of
 * other sizes; a ControlNet of the other family is one line naming both. */
static void test_controlnets(void **state) {
    (void)state;
    const char *hint = "re-run tests/reference/goldens_sdxl_controlnet.py";
    json_t *root = pf_golden_json(pf_test_path("tests/data/goldens/sdxl-controlnet.json"), "1", hint), *c;
    size_t i;
    int ran = 0;
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *p;
    pf_error err;
    if (pf_pipeline_load(&p, be, pf_test_path(MODEL), NULL, &err)) fail_msg("%s", err.msg);
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        json_t *list = json_object_get(c, "controls"), *it;
        size_t k;
        char dirs[PF_MAX_CONTROLS][4096];
        const char *dp[PF_MAX_CONTROLS];
        pf_control ctl[PF_MAX_CONTROLS];
        uint8_t *rgb[PF_MAX_CONTROLS];
        json_array_foreach(list, k, it) {
            snprintf(dirs[k], sizeof dirs[k], "%s",
                     pf_test_path(pf_pathf("tests/data/models/%s", pf_case_str(it, "controlnet"))));
            dp[k] = dirs[k];
            int w, h;
            if (pf_image_read(pf_test_path(pf_pathf("tests/data/goldens/%s", pf_case_str(it, "image"))), &rgb[k], &w,
                              &h, &err))
                fail_msg("%s", err.msg);
            ctl[k] = (pf_control){(int)k, rgb[k], w, h, (float)json_number_value(json_object_get(it, "scale"))};
        }
        if (pf_pipeline_set_controlnets(p, dp, (int)json_array_size(list), &err)) fail_msg("%s", err.msg);
        pf_txt2img_params q;
        pf_case_params(c, &q);
        q.prompt_2 = pf_case_str(c, "prompt_2");
        q.controls = ctl;
        q.n_controls = (int)json_array_size(list);
        const size_t n = (size_t)q.num_images * q.height * q.width * 3;
        float *got = malloc(n * sizeof *got);
        if (pf_pipeline_txt2img(p, &q, got, &err)) fail_msg("%s: %s", pf_case_str(c, "name"), err.msg);
        pf_assert_case_images(pf_case_str(c, "name"), c, got, n, hint);
        free(got);
        for (k = 0; k < json_array_size(list); k++) free(rgb[k]);
        ran++;
    }
    assert_int_equal(ran, 2);
    const char *sd15_net = pf_test_path("tests/data/models/tiny-sd15-controlnet");
    assert_int_equal(pf_pipeline_set_controlnets(p, &sd15_net, 1, &err), -1);
    assert_non_null(strstr(err.msg, "an SD-1.x/2.x ControlNet on an SDXL UNet"));
    assert_null(strchr(err.msg, '\n'));
    pf_pipeline_free(p);
    pf_backend_free(be);
    json_decref(root);
}

static void test_bad_models(void **state) {
    (void)state;
    pf_backend *be = pf_backend_cpu_new(1);
    pf_pipeline *p = NULL;
    pf_error err;
    static const struct { const char *remove, *needle; } cases[] = {
        {"text_encoder_2", "without text_encoder_2"},
        {"tokenizer_2", "without tokenizer_2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *dir = pf_temp_dir(), cmd[8192];
        copy_model(dir);
        snprintf(cmd, sizeof cmd, "rm -r '%s/%s'", dir, cases[i].remove);
        assert_int_equal(system(cmd), 0);
        assert_int_equal(pf_pipeline_load(&p, be, dir, NULL, &err), -1);
        if (!strstr(err.msg, cases[i].needle)) fail_msg("\"%s\" lacks \"%s\"", err.msg, cases[i].needle);
        pf_temp_dir_remove(dir);
    }
    /* an SD-1.5 delta on the SDXL UNet: the error names a tensor */
    assert_int_equal(pf_pipeline_load(&p, be, pf_test_path(MODEL),
                                      pf_test_path("tests/data/models/tiny-sd15-delta/unet"), &err), -1);
    assert_non_null(strstr(err.msg, "delta"));
    pf_backend_free(be);
}

/* `perflow generate` with the SDXL flags gives diffusers' PNGs (the 8-bit rule). */
static void test_cli(void **state) {
    (void)state;
    char cli[4096]; /* pf_cli_path is a rotating pf_pathf buffer: the cases below reuse them */
    snprintf(cli, sizeof cli, "%s", pf_cli_path());
    json_t *root = pf_golden_json(pf_test_path("tests/data/goldens/sdxl.json"), PF_GOLDEN_VERSION,
                                  "re-run tests/reference/make_goldens.py sdxl"), *c;
    size_t i;
    char *dir = pf_temp_dir(), model[4096];
    snprintf(model, sizeof model, "%s", pf_test_path(MODEL));
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        pf_case_cli a;
        pf_case_cli_of(&a, c);
        char out[4096], pairs[3][64];
        snprintf(out, sizeof out, "%s/%s.png", dir, pf_case_str(c, "name"));
        char *argv[48] = {(char *)cli, "generate", "--model", model, "--prompt", (char *)pf_case_str(c, "prompt"),
                          "--steps", a.steps, "--guidance", a.guidance, "--seed", a.seed, "--width", a.width,
                          "--height", a.height, "--num-images", a.num_images, "--device", "cpu", "--out", out, NULL};
        int k = 0;
        while (argv[k]) k++;
        static const char *const str_flags[][2] = {{"negative_prompt", "--negative-prompt"},
                                                   {"prompt_2", "--prompt-2"},
                                                   {"negative_prompt_2", "--negative-prompt-2"}};
        for (size_t f = 0; f < 3; f++)
            if (pf_case_str(c, str_flags[f][0])) {
                argv[k++] = (char *)str_flags[f][1];
                argv[k++] = (char *)pf_case_str(c, str_flags[f][0]);
            }
        static const char *const pair_flags[][2] = {{"original_size", "--original-size"},
                                                    {"crop_coords", "--crop-coords"},
                                                    {"target_size", "--target-size"}};
        for (size_t f = 0; f < 3; f++) {
            int v[2] = {0, 0};
            if (!json_is_array(json_object_get(c, pair_flags[f][0]))) continue;
            pf_case_pair(c, pair_flags[f][0], v); /* diffusers' (h, w) / (top, left): the CLI takes W,H / X,Y */
            snprintf(pairs[f], sizeof pairs[f], "%d,%d", v[1], v[0]);
            argv[k++] = (char *)pair_flags[f][1];
            argv[k++] = pairs[f];
        }
        argv[k] = NULL;
        assert_int_equal(pf_run(argv, 1), 0);
        pf_assert_case_pngs(c, out);
    }
    pf_temp_dir_remove(dir);
    json_decref(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_encoders),
        cmocka_unit_test(test_unet),
        cmocka_unit_test(test_pipelines),
        cmocka_unit_test(test_bad_models),
        cmocka_unit_test(test_controlnets),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
