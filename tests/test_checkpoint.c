/* test_checkpoint.c - models as users have them (engine/formats/checkpoint.c, convert.c,
 * weights.c): single-file LDM checkpoints against the tiny models diffusers'
 * from_single_file loads from them, "pruned" files with EMA copies, sharded
 * weights, the recognition of families, and every bad input of issue 14 with
 * its one-line error.
 *
 * Fixtures and goldens: tests/reference/goldens_weights.py (tests/data/models/
 * single-file/, tiny-sd2-sharded/, goldens/weights.json). The script asserts
 * that diffusers loads each single file back into exactly the tiny model's
 * weights rounded to float16, so "equal to the folder's weights rounded to
 * float16" here is "equal to diffusers". Images: the text-to-image tolerance
 * of test_pipeline.c (float PF_PIPELINE_ATOL; 8-bit <= 1 level on <= 0.1 %).
 * SDXL's single file (issue 22): tests/reference/goldens_sdxl_single.py
 * (single-file/tiny-sdxl.safetensors, goldens/sdxl-single.json), which asserts
 * the same of diffusers' StableDiffusionXLPipeline.from_single_file. */
#include "pipeline_cases.h"

#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "convert.h"
#include "image.h"
#include "lora.h"
#include "pipeline.h"

#define WEIGHTS_HINT "re-run tests/reference/goldens_weights.py"

static const char *model_path(const char *rel) { return pf_test_path(pf_pathf("tests/data/models/%s", rel)); }

static pf_checkpoint *open_ok(const pf_model_spec *spec) {
    pf_checkpoint *c;
    pf_error err;
    if (pf_checkpoint_open(&c, spec, &err)) fail_msg("%s", err.msg);
    return c;
}

/* The error pf_checkpoint_open gives for spec, which must contain want. */
static void open_fails(const pf_model_spec *spec, const char *want) {
    pf_checkpoint *c;
    pf_error err = {0};
    if (pf_checkpoint_open(&c, spec, &err) == 0) fail_msg("%s opened, expected an error with \"%s\"", spec->model, want);
    assert_null(c);
    if (!strstr(err.msg, want)) fail_msg("error \"%s\" lacks \"%s\"", err.msg, want);
    assert_null(strchr(err.msg, '\n'));
}

static float *read_all(pf_weights *w, const char *name) {
    float *buf = malloc((size_t)pf_weights_numel(w, name) * sizeof(float) + 4);
    pf_error err;
    if (pf_weights_read(w, name, buf, &err)) fail_msg("%s", err.msg);
    return buf;
}

/* a and b hold the same names with bit-identical values. */
static void same_weights(pf_weights *a, pf_weights *b) {
    assert_int_equal(pf_weights_count(a), pf_weights_count(b));
    for (int i = 0; i < pf_weights_count(b); i++) {
        const char *name = pf_weights_name(b, i);
        float *x = read_all(a, name), *y = read_all(b, name);
        assert_memory_equal(x, y, (size_t)pf_weights_numel(b, name) * sizeof(float));
        free(x);
        free(y);
    }
}

/* Every weight of the folder's component equals the single file's, rounded to float16. */
static void same_as_folder_f16(pf_weights *single, pf_weights *folder, const char *what) {
    assert_int_equal(pf_weights_count(single), pf_weights_count(folder));
    for (int i = 0; i < pf_weights_count(folder); i++) {
        const char *name = pf_weights_name(folder, i);
        int64_t sa[PF_MAX_DIMS], sb[PF_MAX_DIMS];
        int na = pf_weights_shape(single, name, sa), nb = pf_weights_shape(folder, name, sb);
        if (na != nb || memcmp(sa, sb, (size_t)nb * sizeof *sa)) fail_msg("%s: %s: shapes differ", what, name);
        int64_t n = pf_weights_numel(folder, name);
        float *a = read_all(single, name), *b = read_all(folder, name);
        uint16_t *h = malloc((size_t)n * 2 + 2);
        pf_convert_from_f32(h, PF_F16, b, (size_t)n);
        pf_convert_to_f32(b, h, PF_F16, (size_t)n);
        if (memcmp(a, b, (size_t)n * sizeof *a)) fail_msg("%s: %s differs from the folder's", what, name);
        free(a);
        free(b);
        free(h);
    }
}

static void test_single_file_weights(void **state) {
    (void)state;
    static const char *const names[] = {"tiny-sd15", "tiny-sd2"};
    for (int m = 0; m < 2; m++) {
        pf_model_spec single = {.model = model_path(pf_pathf("single-file/%s.safetensors", names[m])),
                                .model_config = model_path(names[m])};
        pf_model_spec folder = {.model = model_path(names[m])};
        pf_checkpoint *a = open_ok(&single), *b = open_ok(&folder);
        assert_true(a->single_file);
        assert_int_equal(a->ldm.openclip, m == 1);
        assert_int_equal(a->ldm.skipped, m == 0 ? 4 : 5); /* schedule buffers, position_ids / text_projection, logit_scale */
        assert_int_equal(a->ldm.unknown, 0);
        for (int p = 0; p < PF_LDM_PARTS; p++) same_as_folder_f16(a->w[p], b->w[p], pf_part_name((pf_part)p));
        pf_checkpoint_close(a);
        pf_checkpoint_close(b);
    }
}

/* SDXL: all four components, the second text encoder's text_projection a
 * transposed view of OpenCLIP's x @ P matrix, the UNet's label_emb its add_embedding. */
static void test_single_file_sdxl_weights(void **state) {
    (void)state;
    pf_model_spec single = {.model = model_path("single-file/tiny-sdxl.safetensors"),
                            .model_config = model_path("tiny-sdxl")};
    pf_model_spec folder = {.model = model_path("tiny-sdxl")};
    pf_checkpoint *a = open_ok(&single), *b = open_ok(&folder);
    assert_true(a->single_file && a->sdxl);
    assert_int_equal(a->ldm.family, PF_LDM_SDXL);
    assert_int_equal(a->ldm.unknown, 0);
    assert_int_equal(a->ldm.skipped, 3); /* alphas_cumprod, position_ids, logit_scale */
    assert_true(pf_weights_has(a->w[PF_PART_TEXT_ENCODER_2], "text_projection.weight"));
    assert_true(pf_weights_has(a->w[PF_PART_UNET], "add_embedding.linear_2.weight"));
    for (int p = 0; p < PF_NUM_PARTS; p++) same_as_folder_f16(a->w[p], b->w[p], pf_part_name((pf_part)p));
    pf_checkpoint_close(a);
    pf_checkpoint_close(b);
}

/* Writes a copy of the single file at src to dst, tensor by tensor (float32,
 * integer tensors left out), with keep(name) deciding and extra entries added. */
typedef int (*keep_fn)(const char *name);
static void rewrite(const char *src, const char *dst, keep_fn keep, const pf_st_entry *extra, int n_extra) {
    pf_safetensors *st;
    pf_error err;
    if (pf_st_open(&st, src, &err)) fail_msg("%s", err.msg);
    pf_st_entry *e = calloc((size_t)st->count + (size_t)n_extra, sizeof *e);
    float **bufs = calloc((size_t)st->count, sizeof *bufs);
    int n = 0;
    for (int i = 0; i < st->count; i++) {
        const pf_st_tensor *t = &st->tensors[i];
        if (t->dtype > PF_ST_BF16 || (keep && !keep(t->name))) continue;
        bufs[i] = malloc((size_t)pf_st_numel(t) * sizeof(float) + 4);
        if (pf_st_read_f32(st, t, bufs[i], &err)) fail_msg("%s", err.msg);
        e[n++] = (pf_st_entry){t->name, PF_F32, t->ndim, t->shape, bufs[i]};
    }
    for (int i = 0; i < n_extra; i++) e[n++] = extra[i];
    if (pf_st_write(dst, e, n, NULL, &err)) fail_msg("%s", err.msg);
    for (int i = 0; i < st->count; i++) free(bufs[i]);
    free(bufs);
    free(e);
    pf_st_close(st);
}

/* A "pruned" file: the UNet's EMA copies (model_ema.<name without dots>, other
 * values) and EMA counters beside the weights; the non-EMA weights are used. */
static void test_pruned(void **state) {
    (void)state;
    char *dir = pf_temp_dir(), src[4096];
    snprintf(src, sizeof src, "%s", model_path("single-file/tiny-sd15.safetensors"));
    pf_safetensors *st;
    pf_error err;
    if (pf_st_open(&st, src, &err)) fail_msg("%s", err.msg);
    pf_st_entry extra[2048];
    char names[2048][256];
    float *bufs[2048];
    int n = 0;
    for (int i = 0; i < st->count && n < 2040; i++) {
        const pf_st_tensor *t = &st->tensors[i];
        if (strncmp(t->name, "model.diffusion_model.", 22)) continue;
        int k = snprintf(names[n], sizeof names[n], "model_ema.");
        for (const char *p = t->name + 6; *p; p++)
            if (*p != '.') names[n][k++] = *p;
        names[n][k] = '\0';
        bufs[n] = malloc((size_t)pf_st_numel(t) * sizeof(float) + 4);
        pf_st_read_f32(st, t, bufs[n], &err);
        for (int64_t j = 0; j < pf_st_numel(t); j++) bufs[n][j] += 1.0f;
        extra[n] = (pf_st_entry){names[n], PF_F16, t->ndim, t->shape, bufs[n]};
        n++;
    }
    static const float decay = 0.9999f;
    extra[n++] = (pf_st_entry){"model_ema.decay", PF_F32, 0, NULL, &decay};
    char pruned[4096];
    snprintf(pruned, sizeof pruned, "%s/pruned.safetensors", dir);
    rewrite(src, pruned, NULL, extra, n);
    pf_model_spec a = {.model = pruned, .model_config = model_path("tiny-sd15")};
    pf_model_spec b = {.model = src, .model_config = model_path("tiny-sd15")};
    pf_checkpoint *ca = open_ok(&a), *cb = open_ok(&b);
    assert_int_equal(ca->ldm.ema, n - 1 + 1);
    for (int p = 0; p < PF_LDM_PARTS; p++) same_weights(ca->w[p], cb->w[p]);
    pf_checkpoint_close(ca);
    pf_checkpoint_close(cb);
    for (int i = 0; i < n - 1; i++) free(bufs[i]);
    pf_st_close(st);
    pf_temp_dir_remove(dir);
}

#define SDXL_SINGLE_HINT "re-run tests/reference/goldens_sdxl_single.py"

/* A case of goldens/INDEX by name (its version checked). */
static json_t *index_case(json_t **root, const char *index, const char *hint, const char *name) {
    *root = pf_golden_json(pf_test_path(pf_pathf("tests/data/goldens/%s", index)), "1", hint);
    json_t *c;
    size_t i;
    json_array_foreach(json_object_get(*root, "cases"), i, c) if (!strcmp(pf_case_str(c, "name"), name)) return c;
    fail_msg("%s has no case %s: %s", index, name, hint);
    return NULL;
}

/* Runs an image case of goldens/INDEX through pf_pipeline_load_model and
 * compares with diffusers' images. */
static void run_index_case(const char *index, const char *hint, const char *name, const char *model_override) {
    json_t *root, *c = index_case(&root, index, hint, name);
    pf_lora_spec loras[4];
    json_t *l;
    size_t i;
    int nl = 0;
    json_array_foreach(json_object_get(c, "loras"), i, l) {
        loras[nl].path = model_path(json_string_value(json_array_get(l, 0)));
        loras[nl++].scale = (float)json_number_value(json_array_get(l, 1));
    }
    pf_model_spec spec = {.model = model_override ? model_override : model_path(pf_case_str(c, "model")),
                          .model_config = pf_case_str(c, "model_config") ? model_path(pf_case_str(c, "model_config")) : NULL,
                          .delta = pf_case_str(c, "delta") ? model_path(pf_case_str(c, "delta")) : NULL,
                          .loras = loras, .n_loras = nl};
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *pipe;
    pf_error err;
    if (pf_pipeline_load_model(&pipe, be, &spec, &err)) fail_msg("%s", err.msg);
    pf_txt2img_params p;
    pf_case_params(c, &p);
    p.prompt_2 = pf_case_str(c, "prompt_2");
    size_t n = (size_t)p.num_images * p.height * p.width * 3;
    float *got = malloc(n * sizeof *got);
    if (pf_pipeline_txt2img(pipe, &p, got, &err)) fail_msg("%s: %s", name, err.msg);
    pf_assert_case_images(name, c, got, n, hint);
    free(got);
    pf_pipeline_free(pipe);
    pf_backend_free(be);
    json_decref(root);
}

static void run_image_case(const char *name, const char *model_override) {
    run_index_case("weights.json", WEIGHTS_HINT, name, model_override);
}

static void test_single_file_pipelines(void **state) {
    (void)state;
    run_image_case("single-sd15", NULL);
    run_image_case("single-sd2", NULL);
    /* StableDiffusionXLPipeline.from_single_file(path, config=tiny-sdxl) */
    run_index_case("sdxl-single.json", SDXL_SINGLE_HINT, "plain", NULL);
    run_index_case("sdxl-single.json", SDXL_SINGLE_HINT, "prompt2", NULL);
}

/* The shipped configs are found and read (the real SD-1.5 and SD-2.1 shapes). */
static void test_shipped_configs(void **state) {
    (void)state;
    pf_model_spec spec = {.model = pf_pathf("%s/sd15", pf_configs_dir())};
    open_fails(&spec, "no weights"); /* a folder of configs alone is not a model */
    pf_unet_config u;
    pf_clip_text_config t;
    pf_error err;
    if (pf_unet_config_read(&u, pf_pathf("%s/sd21/unet/config.json", pf_configs_dir()), &err) ||
        pf_clip_text_config_read(&t, pf_pathf("%s/sd21/text_encoder/config.json", pf_configs_dir()), &err))
        fail_msg("%s", err.msg);
    assert_int_equal(u.cross_attention_dim, 1024);
    assert_int_equal(t.hidden_size, 1024);
    assert_int_equal(t.num_hidden_layers, 23);
    pf_tokenizer *tok;
    if (pf_tokenizer_load(&tok, pf_pathf("%s/sd21/tokenizer", pf_configs_dir()), &err)) fail_msg("%s", err.msg);
    assert_int_equal(pf_tokenizer_get_info(tok)->pad_id, 0); /* OpenCLIP pads with "!" */
    pf_tokenizer_free(tok);
    if (pf_tokenizer_load(&tok, pf_pathf("%s/sd15/tokenizer", pf_configs_dir()), &err)) fail_msg("%s", err.msg);
    assert_int_equal(pf_tokenizer_get_info(tok)->pad_id, 49407);
    pf_tokenizer_free(tok);
    /* SDXL base: CLIP ViT-L and OpenCLIP bigG (projection 1280), a text_time UNet of width 2048 whose
     * add_embedding takes 1280 + 6 * 256 features, the two tokenizers' pads */
    pf_clip_text_config t2;
    if (pf_unet_config_read(&u, pf_pathf("%s/sdxl/unet/config.json", pf_configs_dir()), &err) ||
        pf_clip_text_config_read(&t, pf_pathf("%s/sdxl/text_encoder/config.json", pf_configs_dir()), &err) ||
        pf_clip_text_config_read(&t2, pf_pathf("%s/sdxl/text_encoder_2/config.json", pf_configs_dir()), &err))
        fail_msg("%s", err.msg);
    assert_int_equal(u.cross_attention_dim, t.hidden_size + t2.hidden_size);
    assert_int_equal(u.cross_attention_dim, 2048);
    assert_true(u.text_time);
    assert_int_equal(u.add_embed_in, t2.projection_dim + 6 * u.addition_time_embed_dim);
    assert_int_equal(t2.num_hidden_layers, 32);
    if (pf_tokenizer_load(&tok, pf_pathf("%s/sdxl/tokenizer_2", pf_configs_dir()), &err)) fail_msg("%s", err.msg);
    assert_int_equal(pf_tokenizer_get_info(tok)->pad_id, 0);
    pf_tokenizer_free(tok);
    if (pf_tokenizer_load(&tok, pf_pathf("%s/sdxl/tokenizer", pf_configs_dir()), &err)) fail_msg("%s", err.msg);
    assert_int_equal(pf_tokenizer_get_info(tok)->pad_id, 49407);
    pf_tokenizer_free(tok);
    /* an SDXL file without --model-config takes the shipped SDXL configs (the tiny one then does not fit
     * their shapes, which pf_model_load tells tensor by tensor) */
    pf_model_spec xl = {.model = model_path("single-file/tiny-sdxl.safetensors")};
    pf_checkpoint *c = open_ok(&xl);
    assert_true(c->sdxl);
    assert_string_equal(c->config_root, pf_pathf("%s/sdxl", pf_configs_dir()));
    pf_checkpoint_close(c);
}

/* Family recognition from names and shapes, on small synthetic files. */
static void test_probe(void **state) {
    (void)state;
    char *dir = pf_temp_dir();
    static float zeros[4 * 1024 * 4];
    struct {
        int ctx, te_open, width, in;
        pf_ldm_family want;
    } cases[] = {{768, 0, 768, 4, PF_LDM_SD1}, {1024, 1, 1024, 4, PF_LDM_SD2}, {1024, 0, 768, 4, PF_LDM_UNKNOWN},
                 {768, 0, 768, 9, PF_LDM_UNKNOWN}, {32, 0, 32, 4, PF_LDM_UNKNOWN}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t s_attn[2] = {4, cases[i].ctx}, s_in[4] = {4, cases[i].in, 1, 1}, s_tok[2] = {4, cases[i].width};
        pf_st_entry e[3] = {
            {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", PF_F16, 2, s_attn, zeros},
            {"model.diffusion_model.input_blocks.0.0.weight", PF_F16, 4, s_in, zeros},
            {cases[i].te_open ? "cond_stage_model.model.token_embedding.weight"
                              : "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
             PF_F16, 2, s_tok, zeros}};
        const char *path = pf_pathf("%s/probe%zu.safetensors", dir, i);
        pf_error err;
        if (pf_st_write(path, e, 3, NULL, &err)) fail_msg("%s", err.msg);
        pf_safetensors *st;
        if (pf_st_open(&st, path, &err)) fail_msg("%s", err.msg);
        pf_ldm_info info;
        assert_int_equal(pf_ldm_probe(&info, st), 1);
        assert_int_equal(info.family, cases[i].want);
        pf_st_close(st);
    }
    pf_temp_dir_remove(dir);
}

/* Copies the single file without the keys under prefix. */
static const char *drop_prefix;
static int not_dropped(const char *name) { return strncmp(name, drop_prefix, strlen(drop_prefix)) != 0; }

/* SDXL files: configs of the other family, a missing second text encoder. */
static void test_bad_sdxl_checkpoints(void **state) {
    (void)state;
    char *dir = pf_temp_dir(), xl[4096];
    snprintf(xl, sizeof xl, "%s", model_path("single-file/tiny-sdxl.safetensors"));
    pf_model_spec spec = {.model = xl, .model_config = model_path("tiny-sd15")};
    open_fails(&spec, "an SDXL checkpoint, but the configs of ");
    spec = (pf_model_spec){.model = model_path("single-file/tiny-sd15.safetensors"), .model_config = model_path("tiny-sdxl")};
    open_fails(&spec, "are for an SDXL pipeline");
    drop_prefix = "conditioner.embedders.1.";
    const char *cut = pf_pathf("%s/no-te2.safetensors", dir);
    rewrite(xl, cut, not_dropped, NULL, 0);
    spec = (pf_model_spec){.model = cut, .model_config = model_path("tiny-sdxl")};
    open_fails(&spec, "no second text encoder (conditioner.embedders.1.model.*)");
    pf_temp_dir_remove(dir);
}

static void test_bad_checkpoints(void **state) {
    (void)state;
    char *dir = pf_temp_dir(), sd15[4096], cfg[4096];
    snprintf(sd15, sizeof sd15, "%s", model_path("single-file/tiny-sd15.safetensors"));
    snprintf(cfg, sizeof cfg, "%s", model_path("tiny-sd15"));
    pf_model_spec spec = {.model = sd15};
    open_fails(&spec, "unknown architecture (UNet: cross-attention width 32, 4 input channels; text encoder: CLIP, "
                      "width 32; VAE: 180 tensors)");
    spec.model_config = pf_pathf("%s/nope", dir);
    open_fails(&spec, "--model-config");
    static const struct {
        const char *prefix, *want;
    } drops[] = {{"first_stage_model.", "has no VAE (first_stage_model.*)"},
                 {"cond_stage_model.", "has no text encoder (cond_stage_model.*)"},
                 {"model.diffusion_model.", "has no UNet (model.diffusion_model.*)"}};
    for (int i = 0; i < 3; i++) {
        drop_prefix = drops[i].prefix;
        const char *path = pf_pathf("%s/drop%d.safetensors", dir, i);
        rewrite(sd15, path, not_dropped, NULL, 0);
        pf_model_spec s = {.model = path, .model_config = cfg};
        open_fails(&s, drops[i].want);
    }
    /* a pickle, by name and by content */
    const char *ckpt = pf_temp_write(dir, "model.ckpt", "PK\x03\x04rest", 8);
    pf_model_spec s = {.model = ckpt};
    open_fails(&s, "perflow reads safetensors only");
    s.model = pf_temp_write(dir, "model.safetensors", "\x80\x02}q\x00(X", 8);
    open_fails(&s, "pickle");
    s.model = model_path("loras/peft.safetensors");
    open_fails(&s, "not a single-file checkpoint");
    s.model = pf_pathf("%s/nothing.safetensors", dir);
    open_fails(&s, "no such directory or file");
    s.model = model_path("tiny-sd15");
    s.model_config = model_path("tiny-sd15");
    open_fails(&s, "a model folder has its own configs");
    /* SDXL keys */
    static float zero[4];
    int64_t one[1] = {1};
    pf_st_entry e[2] = {{"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", PF_F32, 1, one, zero},
                        {"model.diffusion_model.out.0.weight", PF_F32, 1, one, zero}};
    pf_error err;
    const char *xl = pf_pathf("%s/xl.safetensors", dir);
    if (pf_st_write(xl, e, 2, NULL, &err)) fail_msg("%s", err.msg);
    pf_model_spec x = {.model = xl};
    open_fails(&x, "the checkpoint has no VAE (first_stage_model.*) and no second text encoder "
                   "(conditioner.embedders.1.model.*)");
    /* a delta that does not fit the single file's UNet */
    pf_model_spec d = {.model = sd15, .model_config = cfg, .delta = model_path("tiny-sd2/unet")};
    open_fails(&d, "do not match the base");
    pf_temp_dir_remove(dir);
}

/* ------------------------------------------------------------------ sharded */

/* Copies file src to dst. */
static void copy_file(const char *src, const char *dst) {
    size_t n;
    char *buf = pf_read_file(src, &n);
    FILE *f = fopen(dst, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    fclose(f);
    free(buf);
}

/* A model folder at dir: tiny-sd2-sharded's VAE and text encoder (sharded by
 * diffusers and transformers) and tiny-sd2's UNet split here into 3 shards the
 * way diffusers names them. */
static void make_sharded(const char *dir) {
    char src[4096], sh[4096]; /* pf_pathf's buffers are reused below */
    snprintf(src, sizeof src, "%s", model_path("tiny-sd2"));
    snprintf(sh, sizeof sh, "%s", model_path("tiny-sd2-sharded"));
    static const char *const links[][2] = {{"tokenizer", "tiny-sd2"}, {"scheduler", "tiny-sd2"},
                                           {"vae", "tiny-sd2-sharded"}, {"text_encoder", "tiny-sd2-sharded"}};
    for (int i = 0; i < 4; i++)
        if (symlink(model_path(pf_pathf("%s/%s", links[i][1], links[i][0])), pf_pathf("%s/%s", dir, links[i][0])))
            fail_msg("symlink: %s", strerror(errno));
    copy_file(pf_pathf("%s/model_index.json", sh), pf_pathf("%s/model_index.json", dir));
    mkdir(pf_pathf("%s/unet", dir), 0755);
    copy_file(pf_pathf("%s/unet/config.json", src), pf_pathf("%s/unet/config.json", dir));
    pf_safetensors *st;
    pf_error err;
    if (pf_st_open(&st, pf_pathf("%s/unet/diffusion_pytorch_model.safetensors", src), &err)) fail_msg("%s", err.msg);
    json_t *map = json_object();
    for (int s = 0; s < 3; s++) {
        pf_st_entry *e = calloc((size_t)st->count, sizeof *e);
        int n = 0;
        for (int i = s; i < st->count; i += 3) {
            const pf_st_tensor *t = &st->tensors[i];
            float *buf = malloc((size_t)pf_st_numel(t) * sizeof(float) + 4);
            pf_st_read_f32(st, t, buf, &err);
            e[n++] = (pf_st_entry){t->name, PF_F32, t->ndim, t->shape, buf};
            json_object_set_new(map, t->name, json_string(pf_pathf("diffusion_pytorch_model-%05d-of-00003.safetensors", s + 1)));
        }
        if (pf_st_write(pf_pathf("%s/unet/diffusion_pytorch_model-%05d-of-00003.safetensors", dir, s + 1), e, n, NULL,
                        &err))
            fail_msg("%s", err.msg);
        for (int i = 0; i < n; i++) free((void *)e[i].data);
        free(e);
    }
    json_t *index = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", map);
    assert_int_equal(json_dump_file(index, pf_pathf("%s/unet/diffusion_pytorch_model.safetensors.index.json", dir), 0),
                     0);
    json_decref(index);
    pf_st_close(st);
}

static void test_sharded(void **state) {
    (void)state;
    char *dir = pf_temp_dir();
    make_sharded(dir);
    pf_model_spec a = {.model = dir}, b = {.model = model_path("tiny-sd2")};
    pf_checkpoint *ca = open_ok(&a), *cb = open_ok(&b);
    for (int p = 0; p < PF_LDM_PARTS; p++) {
        assert_string_not_equal(pf_weights_label(ca->w[p]), pf_weights_label(cb->w[p]));
        same_weights(ca->w[p], cb->w[p]);
    }
    pf_checkpoint_close(ca);
    pf_checkpoint_close(cb);
    /* and the whole pipeline, against diffusers' unsharded golden */
    json_t *root = pf_pipeline_cases(), *c;
    size_t i;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        if (strcmp(pf_case_str(c, "model"), "tiny-sd2")) continue;
        pf_txt2img_params p;
        pf_case_params(c, &p);
        pf_backend *be = pf_backend_cpu_new(0);
        pf_pipeline *pipe;
        pf_error err;
        if (pf_pipeline_load(&pipe, be, dir, NULL, &err)) fail_msg("%s", err.msg);
        size_t n = (size_t)p.num_images * p.height * p.width * 3;
        float *got = malloc(n * sizeof *got);
        if (pf_pipeline_txt2img(pipe, &p, got, &err)) fail_msg("%s", err.msg);
        pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s", pf_case_str(c, "images")));
        float *want = pf_golden_floats(st, "images", NULL);
        pf_assert_pipeline_close("sharded tiny-sd2", got, want, n);
        free(got);
        free(want);
        pf_st_close(st);
        pf_pipeline_free(pipe);
        pf_backend_free(be);
    }
    json_decref(root);
    pf_temp_dir_remove(dir);
}

static void test_bad_shards(void **state) {
    (void)state;
    char *dir = pf_temp_dir();
    make_sharded(dir);
    char unet[4096], shard[4096], index[4096];
    snprintf(unet, sizeof unet, "%s/unet", dir);
    snprintf(shard, sizeof shard, "%s/diffusion_pytorch_model-00002-of-00003.safetensors", unet);
    snprintf(index, sizeof index, "%s/diffusion_pytorch_model.safetensors.index.json", unet);
    pf_model_spec spec = {.model = dir};
    /* truncated: the error names the shard */
    size_t n;
    char *bytes = pf_read_file(shard, &n);
    pf_temp_write(unet, "diffusion_pytorch_model-00002-of-00003.safetensors", bytes, n / 2);
    open_fails(&spec, "diffusion_pytorch_model-00002-of-00003.safetensors");
    /* missing */
    unlink(shard);
    open_fails(&spec, "diffusion_pytorch_model-00002-of-00003.safetensors: cannot open");
    pf_temp_write(unet, "diffusion_pytorch_model-00002-of-00003.safetensors", bytes, n);
    free(bytes);
    /* an index whose shard lacks a tensor, one that leaves the folder, one that is not JSON */
    char *text = pf_read_file(index, &n);
    json_error_t je;
    json_t *root = json_loadb(text, n, 0, &je);
    json_t *map = json_object_get(root, "weight_map");
    json_object_set_new(map, "conv_in.weight", json_string("diffusion_pytorch_model-00003-of-00003.safetensors"));
    json_dump_file(root, index, 0);
    open_fails(&spec, "which does not hold it");
    json_object_set_new(map, "conv_in.weight", json_string("../../etc/passwd"));
    json_dump_file(root, index, 0);
    open_fails(&spec, "not a file beside the index");
    json_decref(root);
    pf_temp_write(unet, "diffusion_pytorch_model.safetensors.index.json", "{\"weight_map\": ", 15);
    open_fails(&spec, "not valid JSON");
    free(text);
    pf_temp_dir_remove(dir);
}

static void test_shard_index_parse(void **state) {
    (void)state;
    static const struct {
        const char *json, *want; /* want NULL: parses */
    } cases[] = {
        {"{\"metadata\": {}, \"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}", NULL},
        {"[]", "no \"weight_map\" object"},
        {"{\"weight_map\": []}", "no \"weight_map\" object"},
        {"{\"weight_map\": {}}", "is empty"},
        {"{\"weight_map\": {\"a\": 3}}", "is not a file name"},
        {"{\"weight_map\": {\"a\": \"x/y\"}}", "not a file beside the index"},
        {"{\"weight_map\": {\"a\": \"..\"}}", "not a file beside the index"},
        {"{\"weight_map\": {\"a\": \"\"}}", "not a file beside the index"},
        {"{\"weight_map\": {\"a\": \"s\", \"a\": \"t\"}}", "not valid JSON"},
        {"{\"weight_map\": {\"a\\n\": \"s\"}, \"x\": 1", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pf_shard_index idx;
        pf_error err = {0};
        int rc = pf_shard_index_parse(&idx, cases[i].json, strlen(cases[i].json), "index.json", &err);
        if (!cases[i].want) {
            assert_int_equal(rc, 0);
            assert_int_equal(idx.count, 2);
            assert_string_equal(idx.shards[1], "s2.safetensors");
        } else {
            assert_int_equal(rc, -1);
            assert_int_equal(idx.count, 0);
            if (!strstr(err.msg, cases[i].want)) fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.msg, cases[i].want);
        }
        pf_shard_index_free(&idx);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_file_weights), cmocka_unit_test(test_pruned),
        cmocka_unit_test(test_single_file_pipelines), cmocka_unit_test(test_shipped_configs),
        cmocka_unit_test(test_probe),          cmocka_unit_test(test_bad_checkpoints),
        cmocka_unit_test(test_sharded),        cmocka_unit_test(test_bad_shards),
        cmocka_unit_test(test_shard_index_parse), cmocka_unit_test(test_single_file_sdxl_weights),
        cmocka_unit_test(test_bad_sdxl_checkpoints),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
