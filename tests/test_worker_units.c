/* test_worker_units.c - the worker's pure parts: job parsing and validation
 * (schemas/job.v1.json, the refine object, single-file bases, LoRAs, ControlNets
 * and SDXL's fields included), the family checks, output keys per stage,
 * RFC 3339 deadlines, re-enqueue copies, batching comparisons, the mapping of
 * the engine's refine errors to job fields (against the tiny model), status
 * events, and the settings (file, environment, kafka.*). The Kafka, Redis and
 * S3 paths are tested end to end by tests/worker/. */
#include "test_util.h"

#include <unistd.h>

#include "worker_config.h"
#include "credentials.h"
#include "job.h"
#include "pipeline.h"
#include "status.h"

#define NOOUT "{\"job_id\": \"j-1\", \"model\": {\"base\": {\"url\": \"https://hub/m\"}}, \"prompt\": \"a cat\""
#define MINIMAL NOOUT ", \"output\": {\"url\": \"s3://b/{job_id}/{index}.png\"}"
#define H64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define LORA "{\"url\": \"https://h/l.safetensors\"}"
#define CTL "{\"controlnet\": {\"url\": \"https://h/cn\"}, \"image\": {\"url\": \"https://h/i.png\"}}"

static int parse(pf_job *job, const char *json, char *field, pf_error *err) {
    return pf_job_parse(job, json, strlen(json), field, PF_JOB_FIELD_MAX, err);
}

static void test_example_and_defaults(void **state) {
    (void)state;
    pf_job job;
    char field[PF_JOB_FIELD_MAX];
    pf_error err;
    FILE *f = fopen(pf_test_path("schemas/examples/job.json"), "rb");
    assert_non_null(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_int_equal(pf_job_parse(&job, buf, n, field, sizeof field, &err), 0);
    assert_string_equal(job.job_id, "order-1842-a");
    assert_int_equal(job.num_images, 2);
    assert_int_equal(job.seed, 42);
    assert_true(job.fp16);
    assert_non_null(job.delta.url);
    assert_string_equal(job.prediction_type, "diff_eps");
    assert_true(job.deadline_ms == 1893456000000LL); /* 2030-01-01T00:00:00Z */
    pf_job_free(&job);

    assert_int_equal(parse(&job, MINIMAL "}", field, &err), 0);
    assert_int_equal(job.attempt, 1);
    assert_int_equal(job.width, 0); /* the family's side, once the model is loaded */
    assert_int_equal(job.height, 0);
    assert_int_equal(job.steps, 4);
    assert_true(job.guidance == 4.5f);
    assert_int_equal(job.num_images, 1);
    assert_null(job.delta.url);
    assert_null(job.prediction_type);
    assert_null(job.negative_prompt); /* none at all: SDXL's zero embeddings, not "" */
    assert_null(job.prompt_2);
    assert_null(job.negative_prompt_2);
    assert_false(job.base_file);
    assert_null(job.config.url);
    assert_int_equal(job.n_loras, 0);
    assert_int_equal(job.n_controls, 0);
    assert_true(!job.original_size[0] && !job.crop_coords[1] && !job.target_size[0]);
    assert_string_equal(job.output_format, "png");
    assert_int_equal(pf_job_supported(&job, field, sizeof field, &err), 0);
    assert_int_equal(pf_job_family_check(&job, 0, field, sizeof field, &err), 0);
    assert_int_equal(pf_job_family_check(&job, 1, field, sizeof field, &err), 0);
    pf_job_free(&job);
}

static int parse_file(pf_job *job, const char *rel, char *field, pf_error *err) {
    FILE *f = fopen(pf_test_path(rel), "rb");
    assert_non_null(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return pf_job_parse(job, buf, n, field, PF_JOB_FIELD_MAX, err);
}

/* The documented examples of the newer fields, and what they parse to. */
static void test_models_and_sdxl_examples(void **state) {
    (void)state;
    pf_job job;
    char field[PF_JOB_FIELD_MAX];
    pf_error err;
    if (parse_file(&job, "schemas/examples/job-loras-control.json", field, &err)) fail_msg("%s: %s", field, err.msg);
    assert_true(job.base_file); /* a single .safetensors checkpoint */
    assert_non_null(job.config.url);
    assert_int_equal(job.n_loras, 2);
    assert_true(job.loras[0].scale == 0.8f && job.loras[1].scale == -0.5f);
    assert_int_equal(job.n_controls, 1);
    assert_true(job.control[0].scale == 0.9f);
    assert_non_null(strstr(job.control[0].image.url, "lighthouse.png"));
    assert_int_equal(pf_job_supported(&job, field, sizeof field, &err), 0);
    assert_int_equal(pf_job_family_check(&job, 0, field, sizeof field, &err), 0);
    /* SDXL takes ControlNets too: a net or LoRA of the other family is refused when the model loads */
    assert_int_equal(pf_job_family_check(&job, 1, field, sizeof field, &err), 0);
    pf_job_free(&job);

    if (parse_file(&job, "schemas/examples/job-ip-adapter.json", field, &err)) fail_msg("%s: %s", field, err.msg);
    assert_int_equal(job.n_ip, 1);
    assert_true(job.ip[0].scale == 0.6f);
    assert_non_null(strstr(job.ip[0].adapter.url, "ip-adapter_sd15.safetensors"));
    assert_non_null(strstr(job.ip[0].image_encoder.url, "/image_encoder"));
    assert_true(pf_job_same_model(&job, &job) && pf_job_same_images(&job, &job));
    pf_job_free(&job);
    if (parse_file(&job, "schemas/examples/job-sdxl.json", field, &err)) fail_msg("%s: %s", field, err.msg);
    assert_string_equal(job.prompt_2, "dramatic light, highly detailed");
    assert_null(job.negative_prompt_2);
    assert_int_equal(job.width, 0); /* SDXL's 1024 once loaded */
    assert_int_equal(pf_job_family_check(&job, 1, field, sizeof field, &err), 0);
    assert_int_equal(pf_job_family_check(&job, 0, field, sizeof field, &err), -1);
    assert_string_equal(field, "prompt_2"); /* SD-1.x/2.x have one text encoder */
    assert_non_null(strstr(err.msg, "SDXL"));
    pf_job_free(&job);

    /* the time ids come as the CLI's W,H and X,Y and go to the engine as (h, w), (top, left) */
    assert_int_equal(parse(&job, MINIMAL ", \"original_size\": [640, 480], \"crop_coords\": [3, 7], "
                                 "\"target_size\": [1024, 768], \"negative_prompt\": \"\", "
                                 "\"negative_prompt_2\": \"dull\"}", field, &err), 0);
    assert_int_equal(job.original_size[0], 480);
    assert_int_equal(job.original_size[1], 640);
    assert_int_equal(job.crop_coords[0], 7);
    assert_int_equal(job.crop_coords[1], 3);
    assert_int_equal(job.target_size[0], 768);
    assert_int_equal(job.target_size[1], 1024);
    assert_string_equal(job.negative_prompt, ""); /* given as "": encoded, unlike an absent one */
    assert_string_equal(job.negative_prompt_2, "dull");
    assert_int_equal(pf_job_family_check(&job, 0, field, sizeof field, &err), -1);
    assert_string_equal(field, "negative_prompt_2");
    pf_job_free(&job);
    /* each SDXL-only field is named on its own, [0, 0] crops included */
    static const char *const sdxl_only[][2] = {
        {"\"original_size\": [1, 1]", "original_size"},
        {"\"crop_coords\": [0, 0]", "crop_coords"},
        {"\"target_size\": [8, 8]", "target_size"},
        {"\"prompt_2\": \"\"", "prompt_2"},
    };
    for (size_t i = 0; i < sizeof sdxl_only / sizeof *sdxl_only; i++) {
        char json[512];
        snprintf(json, sizeof json, MINIMAL ", %s}", sdxl_only[i][0]);
        assert_int_equal(parse(&job, json, field, &err), 0);
        assert_int_equal(pf_job_family_check(&job, 0, field, sizeof field, &err), -1);
        assert_string_equal(field, sdxl_only[i][1]);
        assert_int_equal(pf_job_family_check(&job, 1, field, sizeof field, &err), 0);
        pf_job_free(&job);
    }
    /* the refiner is an SD-1.5 ControlNet: not on SDXL */
    assert_int_equal(parse(&job, MINIMAL ", \"refine\": {\"controlnet\": {\"url\": \"https://hub/cn\"}}}", field,
                           &err), 0);
    assert_int_equal(pf_job_family_check(&job, 1, field, sizeof field, &err), -1);
    assert_string_equal(field, "refine");
    pf_job_free(&job);
    /* the configs a worker ships for single files without model.config */
    char p[4096];
    snprintf(p, sizeof p, "%s/sd15/model_index.json", pf_configs_dir());
    assert_int_equal(access(p, R_OK), 0);
    snprintf(p, sizeof p, "%s/sd21/unet/config.json", pf_configs_dir());
    assert_int_equal(access(p, R_OK), 0);
}

/* Each bad job is rejected naming its field; job_id survives whenever it was valid. */
static void test_invalid_fields(void **state) {
    (void)state;
    static const struct { const char *json, *field; int has_id; } cases[] = {
        {"not json", "", 0},
        {"[1, 2]", "", 0},
        {"{\"model\": {}}", "job_id", 0},
        {"{\"job_id\": \"../up\"}", "job_id", 0},
        {"{\"job_id\": \".hidden\"}", "job_id", 0},
        {"{\"job_id\": 7}", "job_id", 0},
        {MINIMAL ", \"width\": 60}", "width", 1},
        {MINIMAL ", \"height\": 4096}", "height", 1},
        {MINIMAL ", \"steps\": 0}", "steps", 1},
        {MINIMAL ", \"steps\": 4.0}", "steps", 1},
        {MINIMAL ", \"guidance\": \"high\"}", "guidance", 1},
        {MINIMAL ", \"guidance\": 31}", "guidance", 1},
        {MINIMAL ", \"seed\": -1}", "seed", 1},
        {MINIMAL ", \"num_images\": 17}", "num_images", 1},
        {MINIMAL ", \"negative_promt\": \"x\"}", "negative_promt", 1},
        {MINIMAL ", \"schema\": \"perflow.job.v2\"}", "schema", 1},
        {MINIMAL ", \"attempt\": 0}", "attempt", 1},
        {MINIMAL ", \"clip_skip\": 12}", "clip_skip", 1},
        {MINIMAL ", \"sampler\": {\"prediction_type\": \"epsilon\"}}", "sampler.prediction_type", 1},
        {MINIMAL ", \"sampler\": {\"windows\": 0}}", "sampler.windows", 1},
        {MINIMAL ", \"sampler\": {\"eta\": 0}}", "sampler.eta", 1},
        {MINIMAL ", \"deadline\": \"tomorrow\"}", "deadline", 1},
        {MINIMAL ", \"deadline\": \"2025-02-30T00:00:00Z\"}", "deadline", 1},
        {MINIMAL ", \"priority\": 10}", "priority", 1},
        {MINIMAL ", \"negative_prompt\": \"a\\u0001b\"}", "negative_prompt", 1},
        {NOOUT ", \"num_images\": 2, \"output\": {\"url\": \"s3://b/{job_id}.png\"}}", "output.url", 1},
        {NOOUT ", \"output\": {\"url\": \"s3://b/{bogus}.png\"}}", "output.url", 1},
        {NOOUT ", \"output\": {\"url\": \"s3://b/../{job_id}.png\"}}", "output.url", 1},
        {NOOUT ", \"output\": {\"url\": \"file:///out//{job_id}.png\"}}", "output.url", 1},
        {NOOUT ", \"output\": {\"url\": \"http://b/{job_id}.png\"}}", "output.url", 1},
        {NOOUT ", \"output\": {\"url\": \"s3://b/{job_id}.png\", \"format\": \"jpeg\"}}", "output.format", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"ftp://h/m\"}}, \"prompt\": \"p\"}", "model.base.url", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m.ckpt\"}}}", "model.base.url", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m.bin?x=1\"}}}", "model.base.url", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\", \"sha256\": "
         "\"" H64 "\"}}}", "model.base.sha256", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m.safetensors\", \"sha256\": "
         "\"ABC\"}}}", "model.base.sha256", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"config\": {\"url\": "
         "\"https://h/c\"}}}", "model.config", 1}, /* a diffusers base has its own configs */
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m.safetensors\"}, \"config\": "
         "{\"url\": \"https://h/c.json\"}}}", "model.config.url", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m.safetensors\"}, \"config\": "
         "{\"url\": \"https://h/c\", \"sha256\": \"" H64 "\"}}}", "model.config.sha256", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m.safetensors\"}, \"config\": "
         "\"https://h/c\"}}", "model.config", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\", \"sha256\": \"ab\"}}}", "model.base.sha256", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"delta\": {\"url\": \"https://h/d.bin\"}}}",
         "model.delta.url", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"delta\": {\"url\": "
         "\"https://h/d.safetensors\", \"sha256\": \"XYZ\"}}}", "model.delta.sha256", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": "
         "\"https://h/l.safetensors\", \"scale\": 11}]}}", "model.loras[0].scale", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"loras\": [" LORA ", {\"url\": "
         "\"https://h/l2.safetensors\", \"scale\": -10.5}]}}", "model.loras[1].scale", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": "
         "\"https://h/l.bin\"}]}}", "model.loras[0].url", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": "
         "\"https://h/loras/\"}]}}", "model.loras[0].url", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": "
         "\"https://h/l.safetensors\", \"scale\": \"0.5\"}]}}", "model.loras[0].scale", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": "
         "\"https://h/l.safetensors\", \"weight\": 1}]}}", "model.loras[0].weight", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"loras\": {}}}", "model.loras", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"loras\": [" LORA ", 7]}}",
         "model.loras[1]", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"loras\": [" LORA "," LORA ","
         LORA "," LORA "," LORA "," LORA "," LORA "," LORA "," LORA "]}}", "model.loras", 1},
        /* SDXL's fields */
        {MINIMAL ", \"original_size\": [0, 512]}", "original_size", 1},
        {MINIMAL ", \"original_size\": [512]}", "original_size", 1},
        {MINIMAL ", \"original_size\": [512, 512, 1]}", "original_size", 1},
        {MINIMAL ", \"original_size\": [512.0, 512]}", "original_size", 1},
        {MINIMAL ", \"original_size\": \"512,512\"}", "original_size", 1},
        {MINIMAL ", \"original_size\": [512, 16385]}", "original_size", 1},
        {MINIMAL ", \"target_size\": [512, -1]}", "target_size", 1},
        {MINIMAL ", \"target_size\": null}", "target_size", 1},
        {MINIMAL ", \"crop_coords\": [-1, 0]}", "crop_coords", 1},
        {MINIMAL ", \"crop_coords\": [0, 9223372036854775807]}", "crop_coords", 1},
        {MINIMAL ", \"prompt_2\": 7}", "prompt_2", 1},
        {MINIMAL ", \"negative_prompt_2\": \"a\\u0002\"}", "negative_prompt_2", 1},
        {MINIMAL ", \"negative_prompt\": null}", "negative_prompt", 1},
        /* text-to-image ControlNets */
        {MINIMAL ", \"control\": {}}", "control", 1},
        {MINIMAL ", \"control\": [7]}", "control[0]", 1},
        {MINIMAL ", \"control\": [{\"controlnet\": {\"url\": \"https://h/cn\"}}]}", "control[0].image", 1},
        {MINIMAL ", \"control\": [{\"image\": {\"url\": \"https://h/i.png\"}}]}", "control[0].controlnet", 1},
        {MINIMAL ", \"control\": [" CTL ", {\"controlnet\": {\"url\": \"https://h/cn.safetensors\"}, "
         "\"image\": {\"url\": \"https://h/i.png\"}}]}", "control[1].controlnet.url", 1},
        {MINIMAL ", \"control\": [{\"controlnet\": {\"url\": \"https://h/cn\"}, \"image\": "
         "{\"url\": \"ftp://h/i.png\"}}]}", "control[0].image.url", 1},
        {MINIMAL ", \"control\": [{\"controlnet\": {\"url\": \"https://h/cn\"}, \"image\": "
         "\"https://h/i.png\"}]}", "control[0].image", 1},
        {MINIMAL ", \"control\": [{\"controlnet\": {\"url\": \"https://h/cn\"}, \"image\": "
         "{\"url\": \"https://h/i.png\", \"sha256\": \"x\"}}]}", "control[0].image.sha256", 1},
        {MINIMAL ", \"control\": [{\"controlnet\": {\"url\": \"https://h/cn\"}, \"image\": "
         "{\"url\": \"https://h/i.png\"}, \"scale\": 10.01}]}", "control[0].scale", 1},
        {MINIMAL ", \"control\": [{\"controlnet\": {\"url\": \"https://h/cn\"}, \"image\": "
         "{\"url\": \"https://h/i.png\"}, \"mask\": {}}]}", "control[0].mask", 1},
        {MINIMAL ", \"control\": [" CTL "," CTL "," CTL "," CTL "," CTL "," CTL "," CTL "," CTL "," CTL "]}", "control",
         1},
        /* the refiner's ControlNet is one of the eight */
        {MINIMAL ", \"refine\": {\"controlnet\": {\"url\": \"https://h/t\"}}, \"control\": [" CTL "," CTL ","
         CTL "," CTL "," CTL "," CTL "," CTL "," CTL "]}", "control", 1},
        /* image prompts (IP-Adapter) */
        {MINIMAL ", \"ip_adapters\": {}}", "ip_adapters", 1},
        {MINIMAL ", \"ip_adapters\": [1]}", "ip_adapters[0]", 1},
        {MINIMAL ", \"ip_adapters\": [{\"image\": {\"url\": \"https://h/i.png\"}, \"image_encoder\": "
         "{\"url\": \"https://h/e\"}}]}", "ip_adapters[0].adapter", 1},
        {MINIMAL ", \"ip_adapters\": [{\"adapter\": {\"url\": \"https://h/a.bin\"}, \"image\": {\"url\": "
         "\"https://h/i.png\"}, \"image_encoder\": {\"url\": \"https://h/e\"}}]}", "ip_adapters[0].adapter", 1},
        {MINIMAL ", \"ip_adapters\": [{\"adapter\": {\"url\": \"https://h/a.safetensors\"}, \"image\": "
         "{\"url\": \"https://h/i.png\"}}]}", "ip_adapters[0].image_encoder", 1},
        {MINIMAL ", \"ip_adapters\": [{\"adapter\": {\"url\": \"https://h/a.safetensors\"}, \"image\": "
         "{\"url\": \"https://h/i.png\"}, \"image_encoder\": {\"url\": \"https://h/e/model.safetensors\"}}]}",
         "ip_adapters[0].image_encoder.url", 1},
        {MINIMAL ", \"ip_adapters\": [{\"adapter\": {\"url\": \"https://h/a.safetensors\"}, \"image\": "
         "{\"url\": \"https://h/i.png\"}, \"image_encoder\": {\"url\": \"https://h/e\"}, \"scale\": 11}]}",
         "ip_adapters[0].scale", 1},
        {MINIMAL ", \"ip_adapters\": [{\"adapter\": {\"url\": \"https://h/a.safetensors\"}, \"image\": "
         "{\"url\": \"https://h/i.png\"}, \"image_encoder\": {\"url\": \"https://h/e\"}, \"mask\": 1}]}",
         "ip_adapters[0].mask", 1},
        {MINIMAL ", \"ip_adapters\": [{\"adapter\": {\"url\": \"https://h/a.safetensors\"}, \"image\": "
         "{\"url\": \"https://h/i.png\"}, \"image_encoder\": {\"url\": \"https://h/e\"}}, {\"adapter\": "
         "{\"url\": \"https://h/b.safetensors\"}, \"image\": {\"url\": \"https://h/i.png\"}, "
         "\"image_encoder\": {\"url\": \"https://h/other\"}}]}", "ip_adapters[1].image_encoder", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, \"fp16\": 1}}", "model.fp16", 1},
        {"{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}}, \"prompt\": \"p\"}", "output", 1},
        {"{\"job_id\": \"j\", \"job_id\": \"k\"}", "", 0}, /* duplicate keys are ambiguous: not accepted as JSON */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pf_job job;
        char field[PF_JOB_FIELD_MAX];
        pf_error err = {0};
        int rc = parse(&job, cases[i].json, field, &err);
        if (rc != -1 || strcmp(field, cases[i].field) || (job.job_id[0] != 0) != cases[i].has_id)
            fail_msg("case %zu %s: rc %d, field '%s' (want '%s'), job_id '%s': %s", i, cases[i].json, rc, field,
                     cases[i].field, job.job_id, err.msg);
        assert_true(strlen(err.msg) > 0);
    }
}

static void test_unsupported_features(void **state) {
    (void)state;
    pf_job job;
    char field[PF_JOB_FIELD_MAX];
    pf_error err;
    /* LoRAs and single files run now */
    assert_int_equal(parse(&job, "{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m.safetensors\", "
                                 "\"sha256\": \"" H64 "\"}, \"loras\": [{\"url\": \"https://h/l.safetensors\"}, "
                                 "{\"url\": \"https://h/p.safetensors?sig=1\", \"scale\": -0.5}]}, \"prompt\": \"p\", "
                                 "\"output\": {\"url\": \"s3://b/{job_id}.png\"}}",
                           field, &err),
                     0);
    assert_int_equal(pf_job_supported(&job, field, sizeof field, &err), 0);
    assert_true(job.base_file);
    assert_string_equal(job.base.sha256, H64);
    assert_int_equal(job.n_loras, 2);
    assert_true(job.loras[0].scale == 1.0f && job.loras[1].scale == -0.5f);
    pf_job_free(&job);
    /* the first draft of text-to-image ControlNets: refused, pointing to "control" */
    assert_int_equal(parse(&job, "{\"job_id\": \"j\", \"model\": {\"base\": {\"url\": \"https://h/m\"}, "
                                 "\"controlnet\": {\"url\": \"https://h/cn\", \"scale\": 0.5, \"image_url\": "
                                 "\"https://h/i.png\"}}, \"prompt\": \"p\", \"output\": "
                                 "{\"url\": \"s3://b/{job_id}.png\"}}",
                           field, &err),
                     0);
    assert_int_equal(pf_job_supported(&job, field, sizeof field, &err), -1);
    assert_string_equal(field, "model.controlnet");
    assert_non_null(strstr(err.msg, "\"control\""));
    pf_job_free(&job);
    assert_int_equal(parse(&job, MINIMAL ", \"refiner\": {\"model\": {\"url\": \"https://h/r\"}}}", field, &err), 0);
    assert_int_equal(pf_job_supported(&job, field, sizeof field, &err), -1);
    assert_string_equal(field, "refiner");
    assert_non_null(strstr(err.msg, "\"refine\"")); /* points to what replaces it */
    pf_job_free(&job);
}

#define CN "\"controlnet\": {\"url\": \"https://hub/cn\"}"
#define REFINE(fields) MINIMAL ", \"refine\": {" CN fields "}}"

static void test_refine_defaults_and_fields(void **state) {
    (void)state;
    pf_job job;
    char field[PF_JOB_FIELD_MAX];
    pf_error err;
    /* no refine object: off, and old jobs parse as before */
    assert_int_equal(parse(&job, MINIMAL "}", field, &err), 0);
    assert_false(job.refine.on);
    assert_null(job.refine.controlnet.url);
    pf_job_free(&job);
    /* the defaults: the predictor's */
    assert_int_equal(parse(&job, REFINE(""), field, &err), 0);
    const pf_job_refine *r = &job.refine;
    assert_true(r->on);
    assert_string_equal(r->controlnet.url, "https://hub/cn");
    assert_null(r->controlnet.sha256);
    assert_int_equal(r->size, 1024);
    assert_int_equal(r->steps, 4);
    assert_true(r->strength == 1.0f && r->guidance == 7.5f && r->controlnet_scale == 1.0f);
    assert_string_equal(r->prompt, PF_REFINE_PROMPT);
    assert_string_equal(r->negative_prompt, PF_REFINE_NEGATIVE_PROMPT);
    assert_false(r->keep_base);
    assert_int_equal(pf_job_supported(&job, field, sizeof field, &err), 0);
    pf_job_free(&job);
    /* every field given */
    const char *all = NOOUT ", \"num_images\": 2, \"refine\": {\"controlnet\": {\"url\": \"https://hub/cn/\", \"sha256\": "
                      "\"" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" "\"}, \"size\": 0, "
                      "\"steps\": 100, \"strength\": 0.25, \"guidance\": 0, \"prompt\": \"sharp\", "
                      "\"negative_prompt\": \"\", \"controlnet_scale\": -10, \"keep_base\": true}, "
                      "\"output\": {\"url\": \"s3://b/{job_id}/{stage}/{index}.png\"}}";
    assert_int_equal(parse(&job, all, field, &err), 0);
    assert_string_equal(r->controlnet.sha256, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    assert_int_equal(r->size, 0);
    assert_int_equal(r->steps, 100);
    assert_true(r->strength == 0.25f && r->guidance == 0.0f && r->controlnet_scale == -10.0f);
    assert_string_equal(r->prompt, "sharp");
    assert_string_equal(r->negative_prompt, ""); /* "" is the empty prompt, not the default */
    assert_true(r->keep_base);
    /* each stage has its keys; the same job always the same ones */
    char url[2048];
    assert_int_equal(pf_job_output_url(url, sizeof url, &job, PF_STAGE_REFINED, 1, &err), 0);
    assert_string_equal(url, "s3://b/j-1/refined/1.png");
    assert_int_equal(pf_job_output_url(url, sizeof url, &job, PF_STAGE_BASE, 0, &err), 0);
    assert_string_equal(url, "s3://b/j-1/base/0.png");
    pf_job_free(&job);
    /* the documented example */
    FILE *f = fopen(pf_test_path("schemas/examples/job-refine.json"), "rb");
    assert_non_null(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_int_equal(pf_job_parse(&job, buf, n, field, sizeof field, &err), 0);
    assert_true(r->on && r->keep_base && r->size == 1024);
    assert_int_equal(pf_job_output_url(url, sizeof url, &job, PF_STAGE_BASE, 0, &err), 0);
    assert_string_equal(url, "s3://renders/order-1842-r/base-0.png");
    pf_job_free(&job);
    /* strength 1 and size 4096 are in range; {stage} is allowed without keep_base */
    assert_int_equal(parse(&job, NOOUT ", \"refine\": {" CN ", \"strength\": 1, \"size\": 4096}, \"output\": "
                                 "{\"url\": \"s3://b/{job_id}-{stage}.png\"}}", field, &err), 0);
    assert_int_equal(pf_job_output_url(url, sizeof url, &job, PF_STAGE_REFINED, 0, &err), 0);
    assert_string_equal(url, "s3://b/j-1-refined.png");
    pf_job_free(&job);
    /* a job that does not refine: {stage} is "base" */
    assert_int_equal(parse(&job, NOOUT ", \"output\": {\"url\": \"s3://b/{stage}/{job_id}.png\"}}", field, &err), 0);
    assert_int_equal(pf_job_output_url(url, sizeof url, &job, PF_STAGE_BASE, 0, &err), 0);
    assert_string_equal(url, "s3://b/base/j-1.png");
    pf_job_free(&job);
}

/* Hostile refine objects: each rejected by the parser naming its field. */
static void test_refine_invalid(void **state) {
    (void)state;
    static const struct { const char *json, *field; } cases[] = {
        {MINIMAL ", \"refine\": {}}", "refine.controlnet"},
        {MINIMAL ", \"refine\": true}", "refine"},
        {MINIMAL ", \"refine\": null}", "refine"},
        {MINIMAL ", \"refine\": {\"controlnet\": \"https://hub/cn\"}}", "refine.controlnet"},
        {MINIMAL ", \"refine\": {\"controlnet\": {}}}", "refine.controlnet.url"},
        {MINIMAL ", \"refine\": {\"controlnet\": {\"url\": \"ftp://hub/cn\"}}}", "refine.controlnet.url"},
        {MINIMAL ", \"refine\": {\"controlnet\": {\"url\": \"https://hub/cn.safetensors\"}}}", "refine.controlnet.url"},
        {MINIMAL ", \"refine\": {\"controlnet\": {\"url\": \"https://hub/cn?rev=1\"}}}", "refine.controlnet.url"},
        {MINIMAL ", \"refine\": {\"controlnet\": {\"url\": \"https://user:pw@hub/cn\"}}}", "refine.controlnet.url"},
        {MINIMAL ", \"refine\": {\"controlnet\": {\"url\": \"https://hub/cn\", \"sha256\": \"ABC\"}}}",
         "refine.controlnet.sha256"},
        {MINIMAL ", \"refine\": {\"controlnet\": {\"url\": \"https://hub/cn\", \"scale\": 1}}}", "refine.controlnet.scale"},
        {REFINE(", \"sizes\": 512"), "refine.sizes"},
        {REFINE(", \"model\": {}"), "refine.model"},
        {REFINE(", \"size\": -1"), "refine.size"},
        {REFINE(", \"size\": 5000"), "refine.size"},
        {REFINE(", \"size\": 4097"), "refine.size"},
        {REFINE(", \"size\": 99999999999999999999"), ""}, /* not JSON jansson takes (integer overflow) */
        {REFINE(", \"size\": 9223372036854775807"), "refine.size"},
        {REFINE(", \"size\": 512.0"), "refine.size"},
        {REFINE(", \"size\": \"512\""), "refine.size"},
        {REFINE(", \"steps\": 0"), "refine.steps"},
        {REFINE(", \"steps\": 101"), "refine.steps"},
        {REFINE(", \"steps\": null"), "refine.steps"},
        {REFINE(", \"strength\": 0"), "refine.strength"},
        {REFINE(", \"strength\": 0.0"), "refine.strength"},
        {REFINE(", \"strength\": -0.5"), "refine.strength"},
        {REFINE(", \"strength\": 1.5"), "refine.strength"},
        {REFINE(", \"strength\": 1.0000001"), "refine.strength"},
        {REFINE(", \"strength\": 1e-300"), "refine.strength"}, /* > 0 as a double, 0 as the engine's float */
        {REFINE(", \"strength\": \"NaN\""), "refine.strength"},
        {REFINE(", \"strength\": \"1\""), "refine.strength"},
        {REFINE(", \"strength\": 1e999"), ""}, /* not JSON jansson takes (real overflow) */
        {REFINE(", \"guidance\": -0.1"), "refine.guidance"},
        {REFINE(", \"guidance\": 30.5"), "refine.guidance"},
        {REFINE(", \"guidance\": \"Infinity\""), "refine.guidance"},
        {REFINE(", \"controlnet_scale\": 10.5"), "refine.controlnet_scale"},
        {REFINE(", \"controlnet_scale\": [1]"), "refine.controlnet_scale"},
        {REFINE(", \"prompt\": 7"), "refine.prompt"},
        {REFINE(", \"prompt\": \"a\\u0007b\""), "refine.prompt"},
        {REFINE(", \"negative_prompt\": null"), "refine.negative_prompt"},
        {REFINE(", \"negative_prompt\": \"x\\u001b[31m\""), "refine.negative_prompt"},
        {REFINE(", \"keep_base\": 1"), "refine.keep_base"},
        {REFINE(", \"keep_base\": \"true\""), "refine.keep_base"},
        /* keep_base: the two stages need {stage} to get keys of their own */
        {REFINE(", \"keep_base\": true"), "output.url"},
        {NOOUT ", \"refine\": {" CN "}, \"output\": {\"url\": \"s3://b/{job_id}/{stages}.png\"}}", "output.url"},
        {NOOUT ", \"output\": {\"url\": \"s3://b/{stage\"}}", "output.url"},
        {REFINE(", \"refine\": {}"), "refine.refine"},
        {MINIMAL ", \"refine\": {" CN "}, \"refine\": {" CN "}}", ""}, /* duplicate keys: not accepted as JSON */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pf_job job;
        char field[PF_JOB_FIELD_MAX];
        pf_error err = {0};
        int rc = parse(&job, cases[i].json, field, &err);
        if (rc != -1 || strcmp(field, cases[i].field))
            fail_msg("case %zu %s: rc %d, field '%s' (want '%s'): %s", i, cases[i].json, rc, field, cases[i].field,
                     err.msg);
        assert_true(strlen(err.msg) > 0);
        if (cases[i].field[0]) assert_string_equal(job.job_id, "j-1"); /* the rejection can be addressed */
    }
}

static void test_refine_batching(void **state) {
    (void)state;
    pf_job a, b;
    char field[PF_JOB_FIELD_MAX];
    pf_error err;
    assert_int_equal(parse(&a, REFINE(", \"size\": 128"), field, &err), 0);
    assert_int_equal(parse(&b, MINIMAL ", \"seed\": 9, \"refine\": {" CN ", \"size\": 128}}", field, &err), 0);
    assert_true(pf_job_same_model(&a, &b));   /* one batch, one ControlNet */
    assert_false(pf_job_same_images(&a, &b)); /* another seed: another item */
    pf_job_free(&b);
    assert_int_equal(parse(&b, REFINE(", \"size\": 128, \"keep_base\": false"), field, &err), 0);
    assert_true(pf_job_same_images(&a, &b)); /* keep_base changes the uploads, not the images */
    pf_job_free(&b);
    assert_int_equal(parse(&b, REFINE(", \"size\": 256"), field, &err), 0);
    assert_true(pf_job_same_model(&a, &b));   /* the same batch ... */
    assert_false(pf_job_same_images(&a, &b)); /* ... but other images (and another refine call) */
    pf_job_free(&b);
    assert_int_equal(parse(&b, REFINE(", \"size\": 128, \"prompt\": \"other\""), field, &err), 0);
    assert_false(pf_job_same_images(&a, &b));
    pf_job_free(&b);
    assert_int_equal(parse(&b, MINIMAL ", \"refine\": {\"controlnet\": {\"url\": \"https://hub/cn2\"}, \"size\": 128}}",
                           field, &err), 0);
    assert_false(pf_job_same_model(&a, &b)); /* another ControlNet: another batch */
    pf_job_free(&b);
    assert_int_equal(parse(&b, MINIMAL "}", field, &err), 0);
    assert_false(pf_job_same_model(&a, &b)); /* refine and plain jobs never share a batch */
    assert_false(pf_job_same_model(&b, &a));
    pf_job_free(&b);
    pf_job_free(&a);
}

/* pf_refine_check's refusals, from the tiny model, name the job fields they
 * are about (the worker's rejections rely on it); no ControlNet is needed to
 * check, one is needed to run. */
static void test_refine_engine_fields(void **state) {
    (void)state;
    pf_backend *be = pf_backend_cpu_new(1);
    pf_pipeline *p = NULL;
    pf_error err;
    if (pf_pipeline_load(&p, be, pf_test_path("tests/data/models/tiny-sd15"),
                         pf_test_path("tests/data/models/tiny-sd15-delta/unet"), &err))
        fail_msg("%s", err.msg);
    pf_refine_params prm;
    pf_refine_defaults(&prm);
    prm.image_width = prm.image_height = 64;
    assert_int_equal(pf_refine_check(p, &prm, NULL, &err), 0);
    uint8_t img[64 * 64 * 3] = {0};
    float out[4];
    prm.images = img;
    assert_int_equal(pf_pipeline_refine(p, &prm, out, &err), -1);
    assert_non_null(strstr(err.msg, "ControlNet"));
    static const struct { int w, h, size, steps; float strength, guidance, scale; const char *field; } cases[] = {
        {64, 64, 128, 4, 1.0f, 7.5f, 1.0f, NULL},
        {64, 64, 0, 4, 1.0f, 7.5f, 1.0f, NULL},
        {64, 64, 16, 4, 1.0f, 7.5f, 1.0f, "refine.size"},     /* rounds to 0 x 0 */
        {64, 128, 4096, 4, 1.0f, 7.5f, 1.0f, "refine.size"},  /* 4096 x 8192 */
        {64, 64, 5000, 4, 1.0f, 7.5f, 1.0f, "refine.size"},
        {64, 64, 128, 4, 0.0f, 7.5f, 1.0f, "refine.strength"},
        {64, 64, 128, 4, 1.5f, 7.5f, 1.0f, "refine.strength"},
        {64, 64, 128, 4, 0.2f, 7.5f, 1.0f, "refine.strength"}, /* int(4 * 0.2) = 0 steps left */
        {64, 64, 128, 0, 1.0f, 7.5f, 1.0f, "refine.steps"},
        {64, 64, 128, 4, 1.0f, -1.0f, 1.0f, "refine.guidance"},
        {64, 64, 128, 4, 1.0f, 7.5f, 11.0f, "refine.controlnet_scale"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        prm.image_width = cases[i].w;
        prm.image_height = cases[i].h;
        prm.size = cases[i].size;
        prm.steps = cases[i].steps;
        prm.strength = cases[i].strength;
        prm.guidance = cases[i].guidance;
        prm.controlnet_scale = cases[i].scale;
        const char *param = NULL;
        int rc = pf_refine_check(p, &prm, &param, &err);
        if (!cases[i].field ? rc != 0 : rc != -1 || strcmp(pf_job_refine_field(param), cases[i].field))
            fail_msg("case %zu: rc %d, field '%s' (want '%s'): %s", i, rc, rc ? pf_job_refine_field(param) : "",
                     cases[i].field ? cases[i].field : "(none)", rc ? err.msg : "");
    }
    pf_pipeline_free(p);
    pf_backend_free(be);
}

static void test_rfc3339(void **state) {
    (void)state;
    long long ms;
    assert_int_equal(pf_rfc3339_parse("1970-01-01T00:00:00Z", &ms), 0);
    assert_true(ms == 0);
    assert_int_equal(pf_rfc3339_parse("2025-11-26T03:04:05.123Z", &ms), 0);
    assert_true(ms == 1764126245123LL);
    assert_int_equal(pf_rfc3339_parse("2025-11-26T05:04:05.1+02:00", &ms), 0);
    assert_true(ms == 1764126245100LL);
    assert_int_equal(pf_rfc3339_parse("2025-11-26 03:04:05Z", &ms), -1);
    assert_int_equal(pf_rfc3339_parse("2025-11-26T03:04:05", &ms), -1);
    assert_int_equal(pf_rfc3339_parse("2025-11-26T03:04:05.Z", &ms), -1);
    assert_int_equal(pf_rfc3339_parse("2025-13-01T00:00:00Z", &ms), -1);
}

/* What may share a model load and a batch: the fused weights (LoRA set) and
 * the attached ControlNets decide; prompts, images and scales of controls do not. */
static void test_model_identity_and_batching(void **state) {
    (void)state;
    static const char *const same[] = {
        /* a model of its own each: another LoRA set, order, scale, digest, base digest, configs */
        "{\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": \"https://h/a.safetensors\", \"scale\": 0.5}]}",
        "{\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": \"https://h/b.safetensors\", \"scale\": 0.5}]}",
        "{\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": \"https://h/a.safetensors\", \"scale\": 0.6}]}",
        "{\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": \"https://h/a.safetensors\", \"scale\": 0.5, "
        "\"sha256\": \"" H64 "\"}]}",
        "{\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": \"https://h/a.safetensors\", \"scale\": 0.5}, "
        "{\"url\": \"https://h/b.safetensors\"}]}",
        "{\"base\": {\"url\": \"https://h/m\"}, \"loras\": [{\"url\": \"https://h/b.safetensors\"}, "
        "{\"url\": \"https://h/a.safetensors\", \"scale\": 0.5}]}",
        "{\"base\": {\"url\": \"https://h/m\"}}",
        "{\"base\": {\"url\": \"https://h/m.safetensors\"}}",
        "{\"base\": {\"url\": \"https://h/m.safetensors\", \"sha256\": \"" H64 "\"}}",
        "{\"base\": {\"url\": \"https://h/m.safetensors\"}, \"config\": {\"url\": \"https://h/c\"}}",
    };
    const int n = (int)(sizeof same / sizeof *same);
    pf_job jobs[sizeof same / sizeof *same], again;
    char field[PF_JOB_FIELD_MAX], json[1024];
    pf_error err;
    for (int i = 0; i < n; i++) {
        snprintf(json, sizeof json, "{\"job_id\": \"j-%d\", \"model\": %s, \"prompt\": \"p\", \"output\": "
                 "{\"url\": \"s3://b/{job_id}.png\"}}", i, same[i]);
        if (parse(&jobs[i], json, field, &err)) fail_msg("%s: %s: %s", json, field, err.msg);
    }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < n; k++)
            if (pf_job_same_model(&jobs[i], &jobs[k]) != (i == k)) fail_msg("same_model(%d, %d)", i, k);
    /* the same LoRA set with another prompt and seed: one model, one batch */
    snprintf(json, sizeof json, "{\"job_id\": \"k\", \"model\": %s, \"prompt\": \"q\", \"seed\": 3, \"output\": "
             "{\"url\": \"s3://b/{job_id}.png\"}}", same[4]);
    assert_int_equal(parse(&again, json, field, &err), 0);
    assert_true(pf_job_same_model(&jobs[4], &again));
    assert_false(pf_job_same_images(&jobs[4], &again));
    pf_job_free(&again);
    for (int i = 0; i < n; i++) pf_job_free(&jobs[i]);

    /* ControlNets: the nets decide the batch, images and scales only the items */
    pf_job a, b;
#define WITH_CTL(nets) MINIMAL ", \"control\": [" nets "]}"
    assert_int_equal(parse(&a, WITH_CTL(CTL), field, &err), 0);
    assert_int_equal(parse(&b, WITH_CTL(CTL), field, &err), 0);
    assert_true(pf_job_same_images(&a, &b));
    pf_job_free(&b);
    assert_int_equal(parse(&b, WITH_CTL("{\"controlnet\": {\"url\": \"https://h/cn\"}, \"image\": {\"url\": "
                                        "\"https://h/other.png\"}, \"scale\": 0.5}"), field, &err), 0);
    assert_true(pf_job_same_model(&a, &b));
    assert_false(pf_job_same_images(&a, &b));
    pf_job_free(&b);
    assert_int_equal(parse(&b, WITH_CTL("{\"controlnet\": {\"url\": \"https://h/cn2\"}, \"image\": {\"url\": "
                                        "\"https://h/i.png\"}}"), field, &err), 0);
    assert_false(pf_job_same_model(&a, &b)); /* another net attached */
    pf_job_free(&b);
    assert_int_equal(parse(&b, WITH_CTL(CTL "," CTL), field, &err), 0);
    assert_false(pf_job_same_model(&a, &b));
    pf_job_free(&b);
    assert_int_equal(parse(&b, MINIMAL "}", field, &err), 0);
    assert_false(pf_job_same_model(&a, &b));
    assert_false(pf_job_same_model(&b, &a));
    pf_job_free(&b);
#undef WITH_CTL
    /* SDXL's fields are the images' business */
    assert_int_equal(parse(&b, MINIMAL ", \"prompt_2\": \"x\"}", field, &err), 0);
    assert_true(pf_job_same_model(&a, &a) && !pf_job_same_images(&a, &b));
    pf_job_free(&b);
    pf_job_free(&a);
    assert_int_equal(parse(&a, MINIMAL "}", field, &err), 0);
    assert_int_equal(parse(&b, MINIMAL ", \"negative_prompt\": \"\"}", field, &err), 0);
    assert_true(pf_job_same_model(&a, &b));
    assert_false(pf_job_same_images(&a, &b)); /* none and "" differ for SDXL */
    pf_job_free(&b);
    assert_int_equal(parse(&b, MINIMAL ", \"crop_coords\": [0, 8]}", field, &err), 0);
    assert_false(pf_job_same_images(&a, &b));
    pf_job_free(&b);
    pf_job_free(&a);
}

static void test_requeue_and_batching(void **state) {
    (void)state;
    const char *msg = MINIMAL ", \"seed\": 5}";
    char *again = pf_job_with_attempt(msg, strlen(msg), 3);
    pf_job a, b;
    char field[PF_JOB_FIELD_MAX];
    pf_error err;
    assert_int_equal(parse(&a, msg, field, &err), 0);
    assert_int_equal(parse(&b, again, field, &err), 0);
    assert_int_equal(b.attempt, 3);
    assert_true(pf_job_same_images(&a, &b));
    pf_job_free(&b);
    free(again);
    assert_int_equal(parse(&b, MINIMAL ", \"seed\": 6}", field, &err), 0);
    assert_true(pf_job_same_model(&a, &b));
    assert_false(pf_job_same_images(&a, &b)); /* another seed: another item of the engine call */
    pf_job_free(&b);
    assert_int_equal(parse(&b, MINIMAL ", \"seed\": 5, \"width\": 256}", field, &err), 0);
    assert_false(pf_job_same_model(&a, &b)); /* another size: another batch */
    pf_job_free(&b);
    pf_job_free(&a);
}

static void test_status_events(void **state) {
    (void)state;
    json_t *st = pf_status_new(PF_ST_FAILED, "j-1", 2, "w-9");
    pf_status_set_error(st, PF_ERR_UPLOAD, "HTTP 503", 1, NULL);
    assert_false(pf_status_is_terminal(st)); /* retryable: another attempt follows */
    char *s = pf_status_dump(st);
    json_t *back = json_loads(s, 0, NULL);
    assert_non_null(back);
    assert_string_equal(json_string_value(json_object_get(back, "schema")), PF_STATUS_SCHEMA);
    assert_int_equal(json_integer_value(json_object_get(back, "attempt")), 2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(back, "error"), "code")), "upload");
    long long ms;
    assert_int_equal(pf_rfc3339_parse(json_string_value(json_object_get(back, "ts")), &ms), 0);
    json_decref(back);
    free(s);
    pf_status_set_error(st, PF_ERR_UPLOAD, "HTTP 503", 0, NULL);
    assert_true(pf_status_is_terminal(st));
    json_decref(st);
    st = pf_status_new(PF_ST_RUNNING, "j-1", 1, "w-9");
    assert_false(pf_status_is_terminal(st));
    json_decref(st);
}

static void test_settings(void **state) {
    (void)state;
    pf_worker_config c;
    pf_error err;
    pf_worker_config_defaults(&c);
    assert_string_equal(c.jobs_topics, "perflow.jobs");
    assert_int_equal(c.max_batch, 4);
    assert_true(c.model_memory == 8ull << 30);
    char path[256];
    snprintf(path, sizeof path, "/tmp/perflow-worker-units-%d.conf", (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("# worker\n\nbrokers = k1:9092,k2:9092\nmax_batch=8\nmodel_memory = 512M\n"
          "jobs_topics = \"jobs.high, jobs.low\"\nkafka.sasl.password = Hunter2Hunter2\n", f);
    fclose(f);
    assert_int_equal(pf_worker_config_load_file(&c, path, &err), 0);
    assert_string_equal(c.brokers, "k1:9092,k2:9092");
    assert_int_equal(c.max_batch, 8);
    assert_true(c.model_memory == 512ull << 20);
    char buf[1024], line[64] = "password Hunter2Hunter2 here";
    const char *topics[PF_WORKER_MAX_TOPICS];
    int n;
    assert_int_equal(pf_worker_config_topics(&c, buf, sizeof buf, topics, PF_WORKER_MAX_TOPICS, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(topics[0], "jobs.high");
    assert_string_equal(topics[1], "jobs.low");
    pf_secret_scrub(line, sizeof line); /* a kafka.*password* value is a secret */
    assert_null(strstr(line, "Hunter2"));
    setenv("PERFLOW_MAX_BATCH", "2", 1);
    setenv("PERFLOW_KAFKA_SESSION_TIMEOUT_MS", "6000", 1);
    assert_int_equal(pf_worker_config_from_env(&c, &err), 0);
    assert_int_equal(c.max_batch, 2);
    int found = 0;
    for (int i = 0; i < c.n_kafka; i++) found |= !strcmp(c.kafka_key[i], "session.timeout.ms") && !strcmp(c.kafka_val[i], "6000");
    assert_true(found);
    setenv("PERFLOW_MAX_BATCH", "0", 1);
    assert_int_equal(pf_worker_config_from_env(&c, &err), -1);
    assert_non_null(strstr(err.msg, "PERFLOW_MAX_BATCH"));
    unsetenv("PERFLOW_MAX_BATCH");
    unsetenv("PERFLOW_KAFKA_SESSION_TIMEOUT_MS");
    f = fopen(path, "w");
    fputs("max_batch = 4\nbogus = 1\n", f);
    fclose(f);
    assert_int_equal(pf_worker_config_load_file(&c, path, &err), -1);
    assert_non_null(strstr(err.msg, ":2"));
    assert_non_null(strstr(err.msg, "bogus"));
    unlink(path);
    assert_int_equal(pf_worker_config_set(&c, "jobs_topics", " , ", &err), 0);
    assert_int_equal(pf_worker_config_topics(&c, buf, sizeof buf, topics, PF_WORKER_MAX_TOPICS, &n, &err), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_and_defaults), cmocka_unit_test(test_models_and_sdxl_examples),
        cmocka_unit_test(test_model_identity_and_batching), cmocka_unit_test(test_invalid_fields),
        cmocka_unit_test(test_unsupported_features), cmocka_unit_test(test_refine_defaults_and_fields),
        cmocka_unit_test(test_refine_invalid), cmocka_unit_test(test_refine_batching),
        cmocka_unit_test(test_refine_engine_fields), cmocka_unit_test(test_rfc3339),
        cmocka_unit_test(test_requeue_and_batching), cmocka_unit_test(test_status_events),
        cmocka_unit_test(test_settings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
