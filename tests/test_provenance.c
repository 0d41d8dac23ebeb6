/* test_provenance.c - the PNG text every caller writes (engine/pipeline/provenance.h):
 * the pairs that apply to each kind of run (text-to-image, with a refine
 * stage and its base or refined images, the refine stage alone, SDXL), and
 * A1111's "parameters" text with values quoted where A1111 quotes them. No
 * model is loaded: the requests are filled as pf_request_resolve leaves them. */
#include "test_util.h"

#include "provenance.h"

/* The value of key in t, or NULL. */
static const char *get(const pf_provenance_text *t, const char *key) {
    for (int i = 0; t->kv[i]; i += 2)
        if (!strcmp(t->kv[i], key)) return t->kv[i + 1];
    return NULL;
}

/* A resolved SD request: 64 x 64, seed 7, diff_eps, 4 windows. */
static void sd_request(pf_request *rq) {
    pf_request_init(rq);
    rq->gen.prompt = "a cat";
    rq->gen.negative_prompt = "blurry, dark";
    rq->gen.width = rq->gen.height = 64;
    rq->gen.seed = 7;
    rq->gen.prediction_type = "diff_eps";
    rq->gen.windows = 4;
}

static void test_text_to_image(void **state) {
    (void)state;
    pf_request rq;
    sd_request(&rq);
    pf_provenance p = {.rq = &rq, .model = "/models/dream-v1.safetensors", .model_hash = "0123456789",
                       .loras = "", .out_width = 64, .out_height = 64};
    pf_provenance_text t;
    pf_provenance_fill(&t, &p, "3");
    assert_string_equal(get(&t, "Software"), "perflow");
    assert_string_equal(get(&t, "prompt"), "a cat");
    assert_string_equal(get(&t, "size"), "64x64");
    assert_string_equal(get(&t, "prediction_type"), "diff_eps");
    assert_string_equal(get(&t, "windows"), "4");
    assert_string_equal(get(&t, "index"), "3");
    assert_null(get(&t, "loras"));        /* empty: not written */
    assert_null(get(&t, "job_id"));
    assert_null(get(&t, "refine_size"));
    assert_null(get(&t, "family"));
    assert_string_equal(get(&t, "parameters"),
                        "a cat\nNegative prompt: blurry, dark\nSteps: 4, Sampler: PeRFlow, CFG scale: 4.5, Seed: 7, "
                        "Size: 64x64, Model hash: 0123456789, Model: dream-v1, Prediction type: diff_eps, "
                        "Windows: 4, Version: perflow");
}

static void test_refine_stages(void **state) {
    (void)state;
    pf_request rq;
    sd_request(&rq);
    rq.refine = 1;
    rq.ref.steps = 3;
    pf_provenance p = {.rq = &rq, .job_id = "j1", .refine_controlnet = "https://h/cn", .stage = "base",
                       .out_width = 64, .out_height = 64};
    pf_provenance_text t;
    pf_provenance_fill(&t, &p, "0");
    assert_string_equal(get(&t, "stage"), "base");
    assert_null(get(&t, "refine_size"));
    p.stage = "refined";
    p.out_width = p.out_height = 128;
    pf_provenance_fill(&t, &p, "0");
    assert_string_equal(get(&t, "stage"), "refined");
    assert_string_equal(get(&t, "size"), "64x64"); /* the first stage's */
    assert_string_equal(get(&t, "refine_size"), "128x128");
    assert_string_equal(get(&t, "refine_steps"), "3");
    assert_string_equal(get(&t, "refine_controlnet"), "https://h/cn");
    assert_string_equal(get(&t, "refine_prompt"), PF_REFINE_PROMPT);
    assert_non_null(strstr(get(&t, "parameters"), ", Denoising strength: 1, Refine size: 128x128, Refine steps: 3,"));
    /* the refine stage alone: its own prompts and settings */
    pf_request alone;
    pf_request_init(&alone);
    alone.txt2img = 0;
    alone.refine = 1;
    alone.ref.seed = 5;
    alone.ref.prediction_type = "diff_eps";
    alone.ref.windows = 4;
    pf_provenance q = {.rq = &alone, .refine_controlnet = "/cn", .input = "in.png", .out_width = 1024,
                       .out_height = 1024};
    pf_provenance_fill(&t, &q, "0");
    assert_string_equal(get(&t, "prompt"), PF_REFINE_PROMPT);
    assert_string_equal(get(&t, "guidance"), "7.5");
    assert_string_equal(get(&t, "size"), "1024x1024");
    assert_string_equal(get(&t, "controlnet"), "/cn");
    assert_string_equal(get(&t, "input"), "in.png");
    assert_null(get(&t, "stage"));
    assert_true(!strncmp(get(&t, "parameters"), PF_REFINE_PROMPT "\nNegative prompt: " PF_REFINE_NEGATIVE_PROMPT
                                                                   "\nSteps: 4, Sampler: PeRFlow, CFG scale: 7.5, Seed: 5",
                         strlen(PF_REFINE_PROMPT) + 100));
}

static void test_sdxl_and_quoting(void **state) {
    (void)state;
    pf_request rq;
    sd_request(&rq);
    rq.gen.negative_prompt = NULL;
    rq.gen.prompt_2 = "at night";
    rq.gen.original_size[0] = 80, rq.gen.original_size[1] = 96;
    rq.gen.clip_skip = 1;
    pf_provenance p = {.rq = &rq, .sdxl = 1, .model = "/m/odd, name: \"x\"/", .out_width = 64, .out_height = 64};
    pf_provenance_text t;
    pf_provenance_fill(&t, &p, "grid");
    assert_string_equal(get(&t, "family"), "sdxl");
    assert_string_equal(get(&t, "prompt_2"), "at night");
    assert_string_equal(get(&t, "original_size"), "96x80");
    assert_string_equal(get(&t, "crop_coords"), "0,0");
    assert_string_equal(get(&t, "target_size"), "64x64");
    assert_null(get(&t, "negative_prompt_2"));
    const char *a = get(&t, "parameters");
    assert_null(strstr(a, "Negative prompt:")); /* none given */
    assert_non_null(strstr(a, ", Model: \"odd, name: \\\"x\\\"\", Clip skip: 2,"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_to_image),
        cmocka_unit_test(test_refine_stages),
        cmocka_unit_test(test_sdxl_and_quoting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
