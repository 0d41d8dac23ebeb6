/* test_lora.c - LoRAs fused at load (engine/formats/lora.c, the key spellings of
 * engine/formats/convert.c) against diffusers' load_lora_weights + set_adapters +
 * fuse_lora (goldens: tests/data/goldens/weights.json, made by
 * tests/reference/goldens_weights.py, which also checks diffusers' fused weights
 * against W + scale * alpha / rank * up @ down computed in float64).
 *
 * SDXL's LoRAs (issue 22: PEFT written by save_lora_weights for the UNet and both
 * text encoders, kohya's original block numbering with lora_te1_/lora_te2_,
 * diffusers' spelling) have their own goldens, tests/data/goldens/sdxl-loras.json
 * from tests/reference/goldens_sdxl_loras.py, checked the same way.
 *
 * Tolerances: fused weights max abs err <= 1e-7 (measured: <= 6e-8, a float32 rounding
 * of the larger weights; issue 24); the pipeline image
 * with two LoRAs at the text-to-image tolerance of test_pipeline.c. */
#include "pipeline_cases.h"

#include "checkpoint.h"
#include "convert.h"
#include "image.h"
#include "lora.h"
#include "pipeline.h"

#define WEIGHTS_HINT "re-run tests/reference/goldens_weights.py"
#define SDXL_HINT "re-run tests/reference/goldens_sdxl_loras.py"

static const char *model_path(const char *rel) { return pf_test_path(pf_pathf("tests/data/models/%s", rel)); }

/* The spec of a weights.json case; paths live in bufs, loras in loras[4]. */
typedef struct case_spec {
    pf_model_spec spec;
    pf_lora_spec loras[4];
    pf_lora_report reports[4];
    char paths[7][4096];
} case_spec;

static void case_spec_of(case_spec *cs, json_t *c) {
    memset(cs, 0, sizeof *cs);
    snprintf(cs->paths[0], sizeof cs->paths[0], "%s", model_path(pf_case_str(c, "model")));
    cs->spec.model = cs->paths[0];
    if (pf_case_str(c, "model_config")) {
        snprintf(cs->paths[1], sizeof cs->paths[1], "%s", model_path(pf_case_str(c, "model_config")));
        cs->spec.model_config = cs->paths[1];
    }
    if (pf_case_str(c, "delta")) {
        snprintf(cs->paths[2], sizeof cs->paths[2], "%s", model_path(pf_case_str(c, "delta")));
        cs->spec.delta = cs->paths[2];
    }
    json_t *l;
    size_t i;
    json_array_foreach(json_object_get(c, "loras"), i, l) {
        snprintf(cs->paths[3 + i], sizeof cs->paths[3], "%s", model_path(json_string_value(json_array_get(l, 0))));
        cs->loras[i] = (pf_lora_spec){cs->paths[3 + i], (float)json_number_value(json_array_get(l, 1))};
    }
    cs->spec.loras = cs->loras;
    cs->spec.n_loras = (int)json_array_size(json_object_get(c, "loras"));
    cs->spec.lora_reports = cs->reports;
}

static json_t *weights_cases(void) {
    return pf_golden_json(pf_test_path("tests/data/goldens/weights.json"), "1", WEIGHTS_HINT);
}

static json_t *sdxl_cases(void) {
    return pf_golden_json(pf_test_path("tests/data/goldens/sdxl-loras.json"), "1", SDXL_HINT);
}

/* The component a golden tensor "PART/name" belongs to; *name set past the "/". */
static pf_part part_of(const char *key, const char **name) {
    const char *slash = strchr(key, '/');
    assert_non_null(slash);
    *name = slash + 1;
    for (int p = 0; p < PF_NUM_PARTS; p++)
        if ((size_t)(slash - key) == strlen(pf_part_name((pf_part)p)) &&
            !strncmp(key, pf_part_name((pf_part)p), (size_t)(slash - key)))
            return (pf_part)p;
    fail_msg("golden tensor %s names no component", key);
    return PF_PART_UNET;
}

/* Every fused tensor of every case of root against diffusers'; returns the cases. */
static int check_fused(json_t *root, const char *hint) {
    json_t *c;
    size_t i;
    int cases = 0;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        if (!pf_case_str(c, "fused")) continue;
        case_spec cs;
        case_spec_of(&cs, c);
        pf_checkpoint *ck;
        pf_error err;
        if (pf_checkpoint_open(&ck, &cs.spec, &err)) fail_msg("%s: %s", pf_case_str(c, "name"), err.msg);
        pf_safetensors *st =
            pf_golden_open_version(pf_pathf("tests/data/goldens/%s", pf_case_str(c, "fused")), "1", hint);
        double worst = 0;
        assert_int_equal(st->count, pf_case_int(c, "fused_tensors"));
        for (int k = 0; k < st->count; k++) {
            const char *name = st->tensors[k].name, *weight;
            pf_part part = part_of(name, &weight);
            int64_t n = pf_st_numel(&st->tensors[k]);
            assert_non_null(ck->w[part]);
            assert_int_equal(pf_weights_numel(ck->w[part], weight), n);
            float *got = malloc((size_t)n * sizeof *got), *want = pf_golden_floats(st, name, NULL);
            if (pf_weights_read(ck->w[part], weight, got, &err)) fail_msg("%s", err.msg);
            pf_assert_close(name, got, want, (size_t)n, 1e-7, 0);
            for (int64_t j = 0; j < n; j++) worst = fmax(worst, fabs((double)got[j] - want[j]));
            free(got);
            free(want);
        }
        /* as many modules matched as diffusers fused weights (one module a weight; kohya-sd15's
         * dora_scale key is dropped, not a module) */
        int modules = 0, unmatched = 0;
        char keys[1024];
        for (int l = 0; l < ck->n_loras; l++) {
            for (int p = 0; p < PF_NUM_PARTS; p++) modules += pf_lora_num_modules(ck->loras[l], (pf_part)p);
            unmatched += pf_lora_unmatched(ck->loras[l], 0, keys, sizeof keys) -
                         (strstr(keys, "(dropped)") != NULL);
        }
        if (unmatched) fail_msg("%s: %d keys not matched: %s", pf_case_str(c, "name"), unmatched, keys);
        /* and applied: the weights patched are the weights diffusers changed (lora_modules;
         * a weight two LoRAs change counts once on both sides) */
        int patched = 0;
        for (int p = 0; p < PF_NUM_PARTS; p++)
            if (ck->w[p]) patched += pf_weights_patched(ck->w[p]);
        print_message("%s: %d tensors, %d LoRA modules on %d weights, max abs err %.3g against diffusers' fuse_lora\n",
                      pf_case_str(c, "name"), st->count, modules, patched, worst);
        if (ck->n_loras == 1) assert_int_equal(modules, pf_case_int(c, "lora_modules"));
        assert_int_equal(patched, pf_case_int(c, "lora_modules"));
        pf_st_close(st);
        pf_checkpoint_close(ck);
        cases++;
    }
    return cases;
}

static void test_fused_weights(void **state) {
    (void)state;
    json_t *root = weights_cases();
    assert_true(check_fused(root, WEIGHTS_HINT) >= 6);
    json_decref(root);
}

/* SDXL: the UNet and both text encoders, every spelling, two LoRAs at once. */
static void test_fused_weights_sdxl(void **state) {
    (void)state;
    json_t *root = sdxl_cases();
    assert_int_equal(check_fused(root, SDXL_HINT), 4);
    json_decref(root);
}

/* Whole StableDiffusionXLPipeline images: the PEFT LoRA of both text encoders and
 * the UNet alone (issue 22's case), and kohya's at 0.8 with the PEFT one at -0.5. */
static void test_lora_pipeline_sdxl(void **state) {
    (void)state;
    json_t *root = sdxl_cases(), *c;
    size_t i;
    int images = 0;
    pf_backend *be = pf_backend_cpu_new(0);
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        if (!pf_case_str(c, "images")) continue;
        case_spec cs;
        case_spec_of(&cs, c);
        pf_pipeline *pipe;
        pf_error err;
        if (pf_pipeline_load_model(&pipe, be, &cs.spec, &err)) fail_msg("%s", err.msg);
        assert_int_equal(pf_pipeline_family(pipe), PF_FAMILY_SDXL);
        for (int l = 0; l < cs.spec.n_loras; l++) {
            assert_int_equal(cs.reports[l].unmatched, 0);
            assert_int_equal(cs.reports[l].matched, cs.reports[l].total);
        }
        pf_txt2img_params p;
        pf_case_params(c, &p);
        p.prompt_2 = pf_case_str(c, "prompt_2");
        size_t n = (size_t)p.num_images * p.height * p.width * 3;
        float *got = malloc(n * sizeof *got);
        if (pf_pipeline_txt2img(pipe, &p, got, &err)) fail_msg("%s", err.msg);
        pf_assert_case_images(pf_case_str(c, "name"), c, got, n, SDXL_HINT);
        free(got);
        pf_pipeline_free(pipe);
        images++;
    }
    assert_int_equal(images, 2);
    pf_backend_free(be);
    json_decref(root);
}

/* The whole pipeline with two LoRAs (kohya LoCon at 0.8, PEFT at -0.5) on the
 * single-file tiny-sd15 with the PeRFlow delta, and the reports. */
static void test_lora_pipeline(void **state) {
    (void)state;
    json_t *root = weights_cases(), *c;
    size_t i;
    int found = 0;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        if (strcmp(pf_case_str(c, "name"), "lora-two")) continue;
        found++;
        case_spec cs;
        case_spec_of(&cs, c);
        pf_backend *be = pf_backend_cpu_new(0);
        pf_pipeline *pipe;
        pf_error err;
        if (pf_pipeline_load_model(&pipe, be, &cs.spec, &err)) fail_msg("%s", err.msg);
        /* kohya-sd15: 15 modules x 3 tensors matched, its dora_scale key dropped */
        assert_int_equal(cs.reports[0].format, PF_LORA_KOHYA);
        assert_int_equal(cs.reports[0].total, 46);
        assert_int_equal(cs.reports[0].matched, 45);
        assert_int_equal(cs.reports[0].unmatched, 1);
        assert_non_null(strstr(cs.reports[0].unmatched_keys, "dora_scale\" (dropped)"));
        assert_int_equal(cs.reports[1].format, PF_LORA_PEFT);
        assert_int_equal(cs.reports[1].matched, cs.reports[1].total);
        assert_int_equal(cs.reports[1].unmatched, 0);
        pf_txt2img_params p;
        pf_case_params(c, &p);
        size_t n = (size_t)p.num_images * p.height * p.width * 3;
        float *got = malloc(n * sizeof *got);
        if (pf_pipeline_txt2img(pipe, &p, got, &err)) fail_msg("%s", err.msg);
        pf_assert_case_images("lora-two image", c, got, n, WEIGHTS_HINT);
        free(got);
        pf_pipeline_free(pipe);
        pf_backend_free(be);
    }
    if (found != 1) fail_msg("weights.json has %d lora-two cases, not 1 (%s)", found, WEIGHTS_HINT);
    json_decref(root);
}

/* The error loading spec gives, which must contain want. */
static void load_fails(const char *model, const char *lora, float scale, const char *want) {
    char m[4096], l[4096];
    snprintf(m, sizeof m, "%s", model_path(model));
    snprintf(l, sizeof l, "%s", lora[0] == '/' ? lora : model_path(lora));
    pf_lora_spec ls = {l, scale};
    pf_model_spec spec = {.model = m, .loras = &ls, .n_loras = 1};
    pf_checkpoint *c;
    pf_error err = {0};
    if (pf_checkpoint_open(&c, &spec, &err) == 0) fail_msg("%s with %s loaded, expected \"%s\"", model, lora, want);
    if (!strstr(err.msg, want)) fail_msg("error \"%s\" lacks \"%s\"", err.msg, want);
    assert_null(strchr(err.msg, '\n'));
}

static void test_bad_loras(void **state) {
    (void)state;
    load_fails("tiny-sd15", "loras/bad-rank.safetensors", 1, "rank mismatch: up has rank 4, down has rank 2");
    load_fails("tiny-sd15", "loras/bad-foreign.safetensors", 1, "none of its 4 tensors matches a weight");
    load_fails("tiny-sd15", "loras/kohya-sd2.safetensors", 1, "does not fit the model's");
    load_fails("tiny-sd15", "loras/nope.safetensors", 1, "cannot open");
    load_fails("tiny-sd15", "tiny-sd15/vae/diffusion_pytorch_model.safetensors", 1, "none of its");
    /* a LoRA of the other family: one line naming both */
    load_fails("tiny-sdxl", "loras/kohya-sd15.safetensors", 1, "an SD-1.x/2.x LoRA on an SDXL model: ");
    load_fails("tiny-sd15", "loras/sdxl-kohya.safetensors", 1, "an SDXL LoRA on an SD-1.x/2.x model: ");
    /* spellings this does not support are refused, not half-applied */
    char *dir = pf_temp_dir();
    static float data[64];
    int64_t s_up[2] = {32, 4}, s_down[2] = {4, 32}, s_mid[4] = {4, 4, 3, 3}, s_vec[1] = {32};
    struct {
        const char *key, *want;
        int ndim;
        const int64_t *shape;
    } bad[] = {{"lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight", "lora_mid", 4, s_mid},
               {"unet.down_blocks.0.attentions.0.proj_in.lora_magnitude_vector", "DoRA", 1, s_vec},
               {"unet.down_blocks.0.attentions.0.proj_in.lora_B.bias", "lora_bias", 1, s_vec}};
    for (int i = 0; i < 3; i++) {
        int kohya = !strncmp(bad[i].key, "lora_", 5);
        const char *up = kohya ? "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"
                               : "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight";
        const char *down = kohya ? "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"
                                 : "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight";
        pf_st_entry e[3] = {{up, PF_F32, 2, s_up, data}, {down, PF_F32, 2, s_down, data},
                            {bad[i].key, PF_F32, bad[i].ndim, bad[i].shape, data}};
        const char *path = pf_pathf("%s/bad%d.safetensors", dir, i);
        pf_error err;
        static float big[4 * 4 * 9];
        e[2].data = big;
        if (pf_st_write(path, e, 3, NULL, &err)) fail_msg("%s", err.msg);
        load_fails("tiny-sd15", path, 1, bad[i].want);
    }
    pf_temp_dir_remove(dir);
}

/* Every key spelling of convert.h, parsed. */
static void test_key_spellings(void **state) {
    (void)state;
    static const struct {
        const char *key;
        int part, kohya;
        pf_lora_format format;
        pf_lora_role role;
        const char *module;
    } cases[] = {
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", PF_PART_UNET, 1, PF_LORA_KOHYA, PF_LORA_DOWN,
         "down_blocks_0_attentions_0_proj_in"},
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", PF_PART_TEXT_ENCODER, 1, PF_LORA_KOHYA, PF_LORA_ALPHA,
         "text_model_encoder_layers_0_mlp_fc1"},
        {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", PF_PART_TEXT_ENCODER, 1, PF_LORA_KOHYA,
         PF_LORA_UP, "text_model_encoder_layers_0_mlp_fc1"},
        {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", PF_PART_TEXT_ENCODER_2, 1, PF_LORA_KOHYA,
         PF_LORA_UP, "text_model_encoder_layers_0_mlp_fc1"},
        {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", PF_PART_UNET, 0, PF_LORA_PEFT, PF_LORA_DOWN,
         "down_blocks.0.attentions.0.proj_in"},
        {"text_encoder.text_model.encoder.layers.1.self_attn.q_proj.lora_B.weight", PF_PART_TEXT_ENCODER, 0,
         PF_LORA_PEFT, PF_LORA_UP, "text_model.encoder.layers.1.self_attn.q_proj"},
        {"unet.mid_block.attentions.0.proj_out.lora.up.weight", PF_PART_UNET, 0, PF_LORA_DIFFUSERS, PF_LORA_UP,
         "mid_block.attentions.0.proj_out"},
        {"text_encoder.text_model.encoder.layers.1.mlp.fc2.lora_linear_layer.down.weight", PF_PART_TEXT_ENCODER, 0,
         PF_LORA_DIFFUSERS, PF_LORA_DOWN, "text_model.encoder.layers.1.mlp.fc2"},
        {"unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight", PF_PART_UNET, 0,
         PF_LORA_DIFFUSERS, PF_LORA_DOWN, "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0"},
        {"text_encoder.text_model.encoder.layers.2.self_attn.to_k_lora.up.weight", PF_PART_TEXT_ENCODER, 0,
         PF_LORA_DIFFUSERS, PF_LORA_UP, "text_model.encoder.layers.2.self_attn.k_proj"},
        {"down_blocks.0.attentions.0.proj_in.lora_A.weight", -1, 0, PF_LORA_PEFT, PF_LORA_DOWN,
         "down_blocks.0.attentions.0.proj_in"},
        {"unet.conv_in.alpha", PF_PART_UNET, 0, PF_LORA_DIFFUSERS, PF_LORA_ALPHA, "conv_in"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pf_lora_key k;
        if (pf_lora_key_parse(&k, cases[i].key)) fail_msg("%s not parsed", cases[i].key);
        assert_int_equal(k.part, cases[i].part);
        assert_int_equal(k.kohya, cases[i].kohya);
        assert_int_equal(k.format, cases[i].format);
        assert_int_equal(k.role, cases[i].role);
        assert_string_equal(k.module, cases[i].module);
    }
    static const char *const not_lora[] = {"unet.down_blocks.0.weight", "lora_unet_.lora_up.weight",
                                           "lora_unet_x.something", ".lora_A.weight", "lora_unet_x"};
    for (size_t i = 0; i < sizeof not_lora / sizeof *not_lora; i++) {
        pf_lora_key k;
        assert_int_equal(pf_lora_key_parse(&k, not_lora[i]), -1);
    }
}

/* kohya's SDXL UNet names in the original block numbering resolve to tiny-sdxl's
 * weights (layers_per_block 2), and names of no block resolve to nothing. */
static void test_kohya_sdxl_blocks(void **state) {
    (void)state;
    static const char *const cases[][2] = {
        {"input_blocks_4_1_transformer_blocks_0_attn1_to_q", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"},
        {"input_blocks_5_1_proj_in", "down_blocks.1.attentions.1.proj_in.weight"},
        {"input_blocks_1_0_in_layers_2", "down_blocks.0.resnets.0.conv1.weight"},
        {"input_blocks_2_0_emb_layers_1", "down_blocks.0.resnets.1.time_emb_proj.weight"},
        {"input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv.weight"},
        {"middle_block_1_transformer_blocks_1_ff_net_0_proj", "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj.weight"},
        {"middle_block_2_out_layers_3", "mid_block.resnets.1.conv2.weight"},
        {"output_blocks_2_2_conv", "up_blocks.0.upsamplers.0.conv.weight"},
        {"output_blocks_3_0_skip_connection", "up_blocks.1.resnets.0.conv_shortcut.weight"},
        {"output_blocks_0_1_norm", "up_blocks.0.attentions.0.norm.weight"},
        {"down_blocks_1_attentions_0_proj_out", "down_blocks.1.attentions.0.proj_out.weight"}, /* diffusers' own */
    };
    static const char *const none[] = {"input_blocks_9_1_proj_in", "input_blocks_4_1", "input_blocks_x_1_proj_in",
                                       "middle_block_5_out_layers_3", "output_blocks_3_0_in_layers_7",
                                       "input_blocks_-1_0_op", "input_blocks_4_1_proj_in_extra",
                                       "input_blocks_0_0_in_layers_2"};
    char m[4096], out[600];
    snprintf(m, sizeof m, "%s", model_path("tiny-sdxl"));
    pf_model_spec spec = {.model = m};
    pf_checkpoint *c;
    pf_error err;
    if (pf_checkpoint_open(&c, &spec, &err)) fail_msg("%s", err.msg);
    pf_lora_key k = {.part = PF_PART_UNET, .kohya = 1};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(k.module, sizeof k.module, "%s", cases[i][0]);
        if (pf_lora_resolve(out, sizeof out, c->w[PF_PART_UNET], PF_PART_UNET, &k, 2)) fail_msg("%s not resolved", k.module);
        assert_string_equal(out, cases[i][1]);
    }
    for (size_t i = 0; i < sizeof none / sizeof *none; i++) {
        snprintf(k.module, sizeof k.module, "%s", none[i]);
        if (!pf_lora_resolve(out, sizeof out, c->w[PF_PART_UNET], PF_PART_UNET, &k, 2))
            fail_msg("%s resolved to %s", k.module, out);
    }
    pf_checkpoint_close(c);
}

/* A scale of 0 leaves the weights as they were; matching against a text encoder
 * saved without "text_model." (transformers 5) still finds its weights. */
static void test_scale_zero(void **state) {
    (void)state;
    pf_lora_spec ls = {NULL, 0.0f};
    char lora[4096], m[4096];
    snprintf(lora, sizeof lora, "%s", model_path("loras/peft.safetensors"));
    snprintf(m, sizeof m, "%s", model_path("tiny-sd15"));
    ls.path = lora;
    pf_model_spec with = {.model = m, .loras = &ls, .n_loras = 1}, without = {.model = m};
    pf_checkpoint *a, *b;
    pf_error err;
    if (pf_checkpoint_open(&a, &with, &err) || pf_checkpoint_open(&b, &without, &err)) fail_msg("%s", err.msg);
    const char *name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
    int64_t n = pf_weights_numel(a->w[PF_PART_UNET], name);
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    pf_weights_read(a->w[PF_PART_UNET], name, x, &err);
    pf_weights_read(b->w[PF_PART_UNET], name, y, &err);
    assert_memory_equal(x, y, (size_t)n * 4);
    assert_int_equal(pf_lora_matched(a->loras[0], 1), 2); /* only to_q was read: its up and down (PEFT has no alpha keys) */
    free(x);
    free(y);
    pf_checkpoint_close(a);
    pf_checkpoint_close(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fused_weights), cmocka_unit_test(test_lora_pipeline),
        cmocka_unit_test(test_bad_loras),     cmocka_unit_test(test_key_spellings),
        cmocka_unit_test(test_scale_zero),    cmocka_unit_test(test_fused_weights_sdxl),
        cmocka_unit_test(test_lora_pipeline_sdxl), cmocka_unit_test(test_kohya_sdxl_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
