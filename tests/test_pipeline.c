/* test_pipeline.c - whole PeRFlow text-to-image runs against diffusers'
 * StableDiffusionPipeline with the PeRFlow sampler (goldens: tests/data/goldens/
 * pipelines.json, made by tests/reference/make_goldens.py), and bin/perflow generate
 * against diffusers' own PNGs.
 *
 * Tolerances: float images max abs err <= PF_PIPELINE_ATOL (pipeline_cases.h); 8-bit images equal
 * except <= 1 level on <= 0.1 % of values. The reference runs the same float32 math;
 * differences start at ~1e-6 (summation order) and grow through the steps and the
 * VAE, staying orders of magnitude below what a wrong step, seed or guidance gives
 * (> 0.1 mean difference: asserted below by running the next seed). */
#include "pipeline_cases.h"

#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "image.h"
#include "safetensors.h"

static void test_pipelines(void **state) {
    (void)state;
    json_t *root = pf_pipeline_cases();
    json_t *c;
    size_t i;
    pf_backend *be = pf_backend_cpu_new(0);
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        pf_txt2img_params p;
        pf_case_params(c, &p);
        const char *name = pf_case_str(c, "name");
        pf_pipeline *pipe = pf_case_load(be, c);
        const size_t n = (size_t)p.num_images * p.height * p.width * 3;
        float *got = malloc(n * sizeof *got), *other = malloc(n * sizeof *other);
        pf_step_counter cnt = {0, 0, 0};
        p.progress = pf_count_step;
        p.user = &cnt;
        pf_error err;
        if (pf_pipeline_txt2img(pipe, &p, got, &err)) fail_msg("%s: %s", name, err.msg);
        assert_int_equal(cnt.calls, cnt.total);
        assert_int_equal(cnt.last, cnt.total);

        pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s", pf_case_str(c, "images")));
        int64_t n_want;
        float *want = pf_golden_floats(st, "images", &n_want);
        assert_int_equal(n_want, (int64_t)n);
        pf_st_close(st);

        /* The golden can fail: most values strictly inside (0, 1) ... */
        size_t inside = 0;
        for (size_t k = 0; k < n; k++) inside += want[k] > 0.0f && want[k] < 1.0f;
        if (inside * 10 < n * 9) fail_msg("%s: golden is saturated (%zu of %zu inside)", name, inside, n);
        pf_assert_pipeline_close(name, got, want, n);

        /* ... and the seed matters: the next seed gives a clearly different image. */
        p.seed += 1;
        if (pf_pipeline_txt2img(pipe, &p, other, &err)) fail_msg("%s", err.msg);
        double diff = 0;
        for (size_t k = 0; k < n; k++) diff += fabs((double)other[k] - got[k]);
        if (diff / n < 0.02) fail_msg("%s: seed %llu and the next give nearly the same image (%.4f)",
                                      name, (unsigned long long)p.seed - 1, diff / n);

        /* 8-bit pixels against diffusers' PNGs */
        uint8_t *u8 = malloc(n);
        pf_image_to_u8(u8, got, (long)n);
        const size_t per = n / p.num_images;
        for (int k = 0; k < p.num_images; k++) {
            uint8_t *png;
            int w, h;
            const char *png_rel = json_string_value(json_array_get(json_object_get(c, "pngs"), (size_t)k));
            if (pf_png_read(pf_test_path(pf_pathf("tests/data/goldens/%s", png_rel)), &png, &w, &h, &err))
                fail_msg("%s", err.msg);
            assert_int_equal(w, p.width);
            assert_int_equal(h, p.height);
            pf_assert_u8_close(png_rel, u8 + per * k, png, per);
            free(png);
        }
        free(u8);
        free(got);
        free(want);
        free(other);
        pf_pipeline_free(pipe);
    }
    pf_backend_free(be);
    json_decref(root);
}

static void test_cancel_and_bad_params(void **state) {
    (void)state;
    json_t *root = pf_pipeline_cases();
    json_t *c = json_array_get(json_object_get(root, "cases"), 0);
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *pipe = pf_case_load(be, c);
    pf_txt2img_params p;
    pf_case_params(c, &p);
    float *img = malloc((size_t)p.height * p.width * 3 * sizeof *img);
    pf_error err;
    int calls = 0;
    p.cancelled = pf_cancel_at_two;
    p.user = &calls;
    assert_int_equal(pf_pipeline_txt2img(pipe, &p, img, &err), PF_CANCELLED);
    assert_non_null(strstr(err.msg, "cancelled before step 3"));

    pf_case_params(c, &p);
    p.width = 60;
    assert_int_equal(pf_pipeline_txt2img(pipe, &p, img, &err), -1);
    assert_non_null(strstr(err.msg, "multiples of 8"));
    pf_case_params(c, &p);
    p.steps = 0;
    assert_int_equal(pf_pipeline_txt2img(pipe, &p, img, &err), -1);
    assert_non_null(strstr(err.msg, "steps"));
    pf_case_params(c, &p);
    p.prediction_type = "sample";
    assert_int_equal(pf_pipeline_txt2img(pipe, &p, img, &err), -1);
    assert_non_null(strstr(err.msg, "sample"));
    free(img);
    pf_pipeline_free(pipe);
    pf_backend_free(be);
    json_decref(root);
}

/* bin/perflow generate writes the same PNG pixels as diffusers for the same seed. */
static void test_cli_png(void **state) {
    (void)state;
    const char *perflow = pf_cli_path();
    json_t *root = pf_pipeline_cases();
    json_t *c = json_array_get(json_object_get(root, "cases"), 1); /* 2 images, negative prompt */
    char *dir = pf_temp_dir();
    char out[512], model[1024], delta[1024];
    snprintf(out, sizeof out, "%s/img.png", dir);
    snprintf(model, sizeof model, "%s", pf_test_path("tests/data/models/tiny-sd15"));
    snprintf(delta, sizeof delta, "%s", pf_test_path("tests/data/models/tiny-sd15-delta/unet"));
    pf_case_cli a;
    pf_case_cli_of(&a, c);
    char *argv[] = {(char *)perflow, "generate", "--model", model, "--delta", delta, "--prompt",
                    (char *)pf_case_str(c, "prompt"), "--negative-prompt", (char *)pf_case_str(c, "negative_prompt"),
                    "--steps", a.steps, "--guidance", a.guidance, "--seed", a.seed, "--width", a.width, "--height",
                    a.height, "--num-images", a.num_images, "--windows", a.windows, "--prediction-type",
                    (char *)pf_case_str(c, "prediction_type"), "--out", out, NULL};
    assert_int_equal(pf_run(argv, 0), 0);
    pf_assert_case_pngs(c, out);
    pf_temp_dir_remove(dir);
    json_decref(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipelines),
        cmocka_unit_test(test_cancel_and_bad_params),
        cmocka_unit_test(test_cli_png),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
