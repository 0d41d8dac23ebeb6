/* test_request.c - the defaults of a generation request (engine/pipeline/request.h),
 * decided once from the model: a folder whose scheduler config is a
 * PeRFlowScheduler's gives its prediction type and windows; a base model's
 * own scheduler config (PNDMScheduler without a prediction type, as SD-1.5
 * folders come, "epsilon", "v_prediction") gives only the noise schedule and
 * the family's PeRFlow setting applies (SD-1.x/2.x diff_eps, SDXL ddim_eps,
 * 4 windows); sizes are the family's side; a refine stage continues the first.
 * The base-config folders are copies of the tiny models made here (links to
 * their components, a scheduler config of another class). */
#include <unistd.h>

#include "test_util.h"

#include "pipeline.h"
#include "request.h"

/* A PNDMScheduler config as diffusers writes it for SD-1.5: no prediction_type. */
static const char pndm[] =
    "{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": \"0.6.0\", \"beta_end\": 0.012,"
    " \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"num_train_timesteps\": 1000,"
    " \"set_alpha_to_one\": false, \"skip_prk_steps\": true, \"steps_offset\": 1, \"trained_betas\": null,"
    " \"clip_sample\": false}";

/* A copy of tests/data/models/NAME in a new folder whose scheduler config is
 * config (links to the other components). Free with pf_temp_dir_remove. */
static char *model_copy(const char *name, const char *config) {
    char *dir = pf_temp_dir();
    static const char *const parts[] = {"model_index.json", "text_encoder", "text_encoder_2", "tokenizer",
                                        "tokenizer_2", "unet", "vae"};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        const char *src = pf_test_path(pf_pathf("tests/data/models/%s/%s", name, parts[i]));
        char abs[4096];
        if (!realpath(src, abs)) continue; /* SD-1.x has no second text encoder */
        assert_int_equal(symlink(abs, pf_pathf("%s/%s", dir, parts[i])), 0);
    }
    assert_int_equal(mkdir(pf_pathf("%s/scheduler", dir), 0700), 0);
    pf_temp_write(dir, "scheduler/scheduler_config.json", config, strlen(config));
    return dir;
}

/* Loads model and resolves a request (refine stage when refine). */
static void resolved(const char *model, int refine, pf_request *rq) {
    pf_error err;
    pf_backend *be = pf_backend_open("cpu", 1, &err);
    assert_non_null(be);
    pf_pipeline *p;
    if (pf_pipeline_load(&p, be, model, NULL, &err)) fail_msg("%s: %s", model, err.msg);
    pf_request_init(rq);
    rq->gen.prompt = "a cat";
    rq->refine = refine;
    pf_request_resolve(p, rq);
    pf_request r2 = *rq;
    pf_request_resolve(p, &r2); /* idempotent */
    assert_memory_equal(&r2, rq, sizeof r2);
    pf_pipeline_free(p);
    pf_backend_free(be);
}

static void expect(const pf_request *rq, const char *prediction, int windows, int side) {
    assert_string_equal(rq->gen.prediction_type, prediction);
    assert_int_equal(rq->gen.windows, windows);
    assert_int_equal(rq->gen.width, side);
    assert_int_equal(rq->gen.height, side);
}

static void test_init_leaves_the_model_its_part(void **state) {
    (void)state;
    pf_request rq;
    pf_request_init(&rq);
    assert_int_equal(rq.txt2img, 1);
    assert_int_equal(rq.refine, 0);
    assert_null(rq.gen.prompt);
    assert_null(rq.gen.prediction_type);
    assert_int_equal(rq.gen.windows, 0);
    assert_int_equal(rq.gen.width, 0);
    assert_int_equal(rq.gen.steps, 4);
    assert_true(rq.gen.guidance == 4.5f);
    assert_int_equal(rq.gen.num_images, 1);
    assert_int_equal(rq.ref.size, 1024);
    assert_int_equal(rq.ref.steps, 4);
    assert_true(rq.ref.guidance == 7.5f);
    assert_null(rq.ref.prediction_type);
}

static void test_perflow_scheduler_config(void **state) {
    (void)state;
    pf_request rq;
    resolved(pf_test_path("tests/data/models/tiny-sd15"), 0, &rq);
    expect(&rq, "diff_eps", 4, 512);
    char *dir = model_copy("tiny-sd15", "{\"_class_name\": \"PeRFlowScheduler\", \"prediction_type\": \"velocity\","
                                        " \"num_time_windows\": 2}");
    resolved(dir, 0, &rq);
    expect(&rq, "velocity", 2, 512);
    pf_temp_dir_remove(dir);
}

/* The bug of issue 18: a base SD-1.5 folder sampled with ddim_eps. */
static void test_base_scheduler_config_sd(void **state) {
    (void)state;
    const char *configs[] = {
        pndm,
        "{\"_class_name\": \"DDIMScheduler\", \"prediction_type\": \"epsilon\", \"beta_schedule\": \"scaled_linear\"}",
        "{\"_class_name\": \"DDIMScheduler\", \"prediction_type\": \"v_prediction\", \"num_train_timesteps\": 1000}",
    };
    for (size_t i = 0; i < sizeof configs / sizeof *configs; i++) {
        char *dir = model_copy("tiny-sd15", configs[i]);
        pf_request rq;
        resolved(dir, 0, &rq);
        expect(&rq, "diff_eps", 4, 512);
        pf_temp_dir_remove(dir);
    }
    /* the noise schedule is still the base config's */
    char *dir = model_copy("tiny-sd15", "{\"_class_name\": \"PNDMScheduler\", \"beta_schedule\": \"bogus\"}");
    pf_error err;
    pf_backend *be = pf_backend_open("cpu", 1, &err);
    pf_pipeline *p;
    assert_int_equal(pf_pipeline_load(&p, be, dir, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "bogus"));
    pf_backend_free(be);
    pf_temp_dir_remove(dir);
}

static void test_base_scheduler_config_sdxl(void **state) {
    (void)state;
    pf_request rq;
    resolved(pf_test_path("tests/data/models/tiny-sdxl"), 0, &rq);
    expect(&rq, "ddim_eps", 4, 1024);
    char *dir = model_copy("tiny-sdxl", "{\"_class_name\": \"EulerDiscreteScheduler\", \"prediction_type\": "
                                        "\"epsilon\", \"beta_schedule\": \"scaled_linear\"}");
    resolved(dir, 0, &rq);
    expect(&rq, "ddim_eps", 4, 1024);
    pf_temp_dir_remove(dir);
}

/* The refine stage continues the first: its sizes, seed, sampler settings. */
static void test_refine_stage_continues_the_first(void **state) {
    (void)state;
    char *dir = model_copy("tiny-sd15", pndm);
    pf_error err;
    pf_backend *be = pf_backend_open("cpu", 1, &err);
    pf_pipeline *p;
    if (pf_pipeline_load(&p, be, dir, NULL, &err)) fail_msg("%s", err.msg);
    pf_request rq;
    pf_request_init(&rq);
    rq.gen.prompt = "a cat";
    rq.gen.width = 64;
    rq.gen.num_images = 2;
    rq.gen.seed = 9;
    rq.gen.clip_skip = 1;
    rq.refine = 1;
    pf_request_resolve(p, &rq);
    assert_int_equal(rq.gen.height, 512);
    assert_int_equal(rq.ref.image_width, 64);
    assert_int_equal(rq.ref.image_height, 512);
    assert_int_equal(rq.ref.num_images, 2);
    assert_int_equal(rq.ref.seed, 9);
    assert_int_equal(rq.ref.clip_skip, 1);
    assert_string_equal(rq.ref.prediction_type, "diff_eps");
    assert_int_equal(rq.ref.windows, 4);
    /* the refine stage alone (perflow refine) resolves the same way */
    pf_request alone;
    pf_request_init(&alone);
    alone.txt2img = 0;
    alone.refine = 1;
    pf_request_resolve(p, &alone);
    assert_null(alone.gen.prediction_type);
    assert_string_equal(alone.ref.prediction_type, "diff_eps");
    assert_int_equal(alone.ref.windows, 4);
    pf_pipeline_free(p);
    pf_backend_free(be);
    pf_temp_dir_remove(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_leaves_the_model_its_part),
        cmocka_unit_test(test_perflow_scheduler_config),
        cmocka_unit_test(test_base_scheduler_config_sd),
        cmocka_unit_test(test_base_scheduler_config_sdxl),
        cmocka_unit_test(test_refine_stage_continues_the_first),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
