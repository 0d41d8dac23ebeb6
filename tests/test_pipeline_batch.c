/* test_pipeline_batch.c - pf_pipeline_txt2img_batch: jobs with different
 * prompts, negative prompts, seeds and image counts stacked into one engine
 * call give each job exactly the images it gets alone.
 *
 * Exact equality is asserted where every run has a UNet batch of two rows or
 * more: every op the batch adds rows to works per sample (convolutions, norms
 * and attention per image; GEMMs sum each output over K in an order that does
 * not depend on the row count; the guidance combine and sampler step
 * elementwise), so on the CPU backend a stacked job's numbers are the same
 * floats as its solo run. A difference in the last bit there means some op
 * mixed samples or changed its summation order with the batch size. The one
 * exception, a solo run of one row, is explained at its test. The solo runs
 * themselves are held to diffusers by test_pipeline; one batched job is also
 * checked against its golden here. */
#include "pipeline_cases.h"

#include "backend.h"
#include "safetensors.h"

static void never_called(void *user, int step, int total) {
    (void)user, (void)step, (void)total;
    fail_msg("the progress callback of a job other than the first was called");
}

static pf_pipeline *load_tiny(pf_backend *be) {
    pf_pipeline *p;
    pf_error err;
    if (pf_pipeline_load(&p, be, pf_test_path("tests/data/models/tiny-sd15"),
                         pf_test_path("tests/data/models/tiny-sd15-delta/unet"), &err))
        fail_msg("%s", err.msg);
    return p;
}

static size_t image_floats(const pf_txt2img_params *p) { return (size_t)p->num_images * p->height * p->width * 3; }

/* Runs jobs[0..n) one by one (without their callbacks), then as one batch,
 * and asserts the batch gives the concatenated solo images within atol (0:
 * bit for bit); returns the batch's images. */
static float *assert_batch_equals_solo(pf_pipeline *pipe, const pf_txt2img_params *const *jobs, int n, double atol) {
    size_t total = 0;
    for (int j = 0; j < n; j++) total += image_floats(jobs[j]);
    float *solo = malloc(total * sizeof *solo), *batch = malloc(total * sizeof *batch);
    pf_error err;
    size_t at = 0;
    for (int j = 0; j < n; j++) {
        pf_txt2img_params alone = *jobs[j];
        alone.progress = NULL;
        alone.cancelled = NULL;
        if (pf_pipeline_txt2img(pipe, &alone, solo + at, &err)) fail_msg("job %d alone: %s", j, err.msg);
        at += image_floats(jobs[j]);
    }
    if (pf_pipeline_txt2img_batch(pipe, jobs, n, batch, &err)) fail_msg("batch: %s", err.msg);
    at = 0;
    for (int j = 0; j < n; j++) {
        char what[64];
        snprintf(what, sizeof what, "batch job %d (seed %llu)", j, (unsigned long long)jobs[j]->seed);
        pf_assert_close(what, batch + at, solo + at, image_floats(jobs[j]), atol, 0.0);
        at += image_floats(jobs[j]);
    }
    /* The jobs really differ: no two give the same first image. */
    const size_t one = (size_t)jobs[0]->height * jobs[0]->width * 3;
    at = 0;
    for (int j = 0; j < n; j++) {
        size_t bt = 0;
        for (int k = 0; k < j; k++) {
            if (!memcmp(batch + at, batch + bt, one * sizeof *batch)) fail_msg("jobs %d and %d gave one image", k, j);
            bt += image_floats(jobs[k]);
        }
        at += image_floats(jobs[j]);
    }
    free(solo);
    return batch;
}

/* Three jobs with guidance: the golden case "8step-cfg-2img" (two images,
 * a negative prompt) between two others with no negative prompt and "". */
static void test_batch_with_guidance(void **state) {
    (void)state;
    json_t *root = pf_pipeline_cases();
    json_t *c = json_array_get(json_object_get(root, "cases"), 1);
    assert_string_equal(pf_case_str(c, "name"), "8step-cfg-2img");
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *pipe = load_tiny(be);
    pf_txt2img_params a, b, d;
    pf_case_params(c, &b);
    a = b;
    a.prompt = "a photo of a cat";
    a.negative_prompt = NULL;
    a.seed = 0;
    a.num_images = 1;
    a.prediction_type = NULL; /* the model's own type, which the case names */
    d = b;
    d.prompt = "a red car";
    d.negative_prompt = "";
    d.seed = 7;
    d.num_images = 1;
    assert_true(pf_txt2img_batchable(pipe, &a, &b));
    pf_step_counter cnt = {0, 0, 0};
    a.progress = pf_count_step;
    a.user = &cnt;
    b.progress = d.progress = never_called; /* the first job's callbacks serve the batch */
    const pf_txt2img_params *jobs[] = {&a, &b, &d};
    float *batch = assert_batch_equals_solo(pipe, jobs, 3, 0.0);
    assert_int_equal(cnt.calls, cnt.total); /* every step once, not once per job */
    assert_int_equal(cnt.last, cnt.total);
    assert_int_equal(cnt.total, pf_case_int(c, "steps"));

    /* The batch's middle job is the golden case: diffusers' images. */
    pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s", pf_case_str(c, "images")));
    int64_t n_want;
    float *want = pf_golden_floats(st, "images", &n_want);
    pf_st_close(st);
    assert_int_equal(n_want, (int64_t)image_floats(&b));
    pf_assert_pipeline_close("batch job 1 against diffusers", batch + image_floats(&a), want, image_floats(&b));
    free(want);
    free(batch);
    pf_pipeline_free(pipe);
    pf_backend_free(be);
    json_decref(root);
}

/* Without guidance (no unconditional rows), with ddim_eps. The solo run of
 * the one-image job is the only UNet batch of one row in these tests, and a
 * matrix product of one row takes another path in OpenBLAS (0.3.21 here) than
 * the same row inside a larger product, summing in another order: the images
 * then differ by up to ~1e-6 (7.5e-7 measured), so 1e-5 here. Giving that job
 * two images makes the comparison exact, as in the test above. */
static void test_batch_without_guidance(void **state) {
    (void)state;
    json_t *root = pf_pipeline_cases();
    json_t *c = json_array_get(json_object_get(root, "cases"), 2);
    assert_string_equal(pf_case_str(c, "name"), "nocfg-ddim");
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *pipe = load_tiny(be);
    pf_txt2img_params a, b;
    pf_case_params(c, &a);
    b = a;
    b.prompt = "a bowl of fruit";
    b.seed = 123;
    b.num_images = 2;
    const pf_txt2img_params *jobs[] = {&a, &b};
    free(assert_batch_equals_solo(pipe, jobs, 2, 1e-5));
    pf_pipeline_free(pipe);
    pf_backend_free(be);
    json_decref(root);
}

/* Jobs that cannot share a call, a bad job, and a cancelled batch. */
static void test_batch_refusals_and_cancel(void **state) {
    (void)state;
    json_t *root = pf_pipeline_cases();
    json_t *c = json_array_get(json_object_get(root, "cases"), 0);
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *pipe = load_tiny(be);
    pf_txt2img_params a, b;
    pf_case_params(c, &a);
    float *img = malloc(2 * image_floats(&a) * sizeof *img);
    const pf_txt2img_params *jobs[] = {&a, &b};
    pf_error err;
    b = a;
    b.steps = a.steps + 1;
    assert_false(pf_txt2img_batchable(pipe, &a, &b));
    assert_int_equal(pf_pipeline_txt2img_batch(pipe, jobs, 2, img, &err), -1);
    assert_non_null(strstr(err.msg, "batch job 1 differs"));
    b = a;
    b.guidance = a.guidance + 1.0f;
    assert_int_equal(pf_pipeline_txt2img_batch(pipe, jobs, 2, img, &err), -1);
    b = a;
    b.height = a.height + 8;
    assert_int_equal(pf_pipeline_txt2img_batch(pipe, jobs, 2, img, &err), -1);
    b = a;
    b.prediction_type = "velocity";
    assert_int_equal(pf_pipeline_txt2img_batch(pipe, jobs, 2, img, &err), -1);
    b = a;
    b.windows = 2;
    assert_int_equal(pf_pipeline_txt2img_batch(pipe, jobs, 2, img, &err), -1);
    b = a;
    b.clip_skip = 1;
    assert_int_equal(pf_pipeline_txt2img_batch(pipe, jobs, 2, img, &err), -1);
    b = a;
    b.width = 60;
    assert_int_equal(pf_pipeline_txt2img_batch(pipe, jobs, 2, img, &err), -1);
    assert_non_null(strstr(err.msg, "batch job 1: width and height must be"));

    b = a;
    b.seed = 9;
    int calls = 0;
    a.cancelled = pf_cancel_at_two;
    a.user = &calls;
    assert_int_equal(pf_pipeline_txt2img_batch(pipe, jobs, 2, img, &err), PF_CANCELLED);
    assert_non_null(strstr(err.msg, "cancelled before step 3"));
    free(img);
    pf_pipeline_free(pipe);
    pf_backend_free(be);
    json_decref(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_with_guidance),
        cmocka_unit_test(test_batch_without_guidance),
        cmocka_unit_test(test_batch_refusals_and_cancel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
