/* test_clip.c - the CLIP text encoder against transformers' CLIPTextModel
 * (goldens from tests/reference/make_goldens.py), for both tiny models.
 *
 * Tolerance: max abs err 1e-4. The reference runs the same float32 weights in
 * float32; differences come only from summation order in GEMMs and norms
 * (~1e-6 relative per op) through a few layers of unit-scale activations, so
 * 1e-4 leaves two orders of margin while catching any real error (a wrong mask,
 * activation or eps moves outputs by 1e-2 or more). */
#include <sys/stat.h>

#include "test_util.h"

#include "backend.h"
#include "clip.h"
#include "safetensors.h"
#include "tokenizer.h"

/* Runs the text encoder of the model folder `dir` on golden `model`'s inputs. */
static void check_model_dir(const char *model, const char *dir) {
    pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s/text_encoder.safetensors", model));
    int64_t n_ids;
    float *ids_f = pf_golden_floats(st, "input_ids", &n_ids);
    const int L = 77, B = (int)(n_ids / L);
    int32_t *ids = malloc((size_t)n_ids * sizeof *ids);
    for (int64_t i = 0; i < n_ids; i++) ids[i] = (int32_t)ids_f[i];

    pf_error err;
    pf_backend *be = pf_backend_cpu_new(0);
    pf_tensor *want = pf_golden_tensor(be, st, "last_hidden_state");
    pf_tensor *want_skip = pf_golden_tensor(be, st, "clip_skip_1");
    pf_clip_text_model *te;
    if (pf_clip_text_model_load_dir(&te, be, dir, &err))
        fail_msg("%s", err.msg);
    const int D = pf_clip_text_model_config(te)->hidden_size;
    assert_int_equal((int64_t)B * L * D, pf_numel(want));

    pf_tensor *out = pf_new3(be, B, L, D);
    if (pf_clip_text_model_forward(te, out, ids, B, L, 0, &err)) fail_msg("%s", err.msg);
    pf_assert_tensor_close("last_hidden_state", out, want, 1e-4, 0);
    if (pf_clip_text_model_forward(te, out, ids, B, L, 1, &err)) fail_msg("%s", err.msg);
    pf_assert_tensor_close("clip_skip_1", out, want_skip, 1e-4, 0);

    /* Out-of-range input is an error, not a crash. */
    int32_t bad[77];
    memcpy(bad, ids, sizeof bad);
    bad[3] = pf_clip_text_model_config(te)->vocab_size;
    pf_tensor *one = pf_new3(be, 1, L, D);
    assert_int_equal(pf_clip_text_model_forward(te, one, bad, 1, L, 0, &err), -1);
    assert_non_null(strstr(err.msg, "outside the vocabulary"));
    assert_int_equal(pf_clip_text_model_forward(te, one, ids, 1, L, 99, &err), -1);

    pf_free(one);
    pf_free(out);
    pf_free(want);
    pf_free(want_skip);
    pf_clip_text_model_free(te);
    pf_backend_free(be);
    free(ids);
    free(ids_f);
    pf_st_close(st);
}

static void check_model(const char *model) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", pf_test_path(pf_pathf("tests/data/models/%s", model)));
    check_model_dir(model, dir);
}

/* transformers 5.x saves CLIPTextModel without the "text_model." key prefix:
 * the same weights under those names give the same outputs. */
static void test_text_encoder_unprefixed(void **state) {
    (void)state;
    char *dir = pf_temp_dir();
    const char *src = pf_test_path("tests/data/models/tiny-sd2");
    size_t n;
    char *text = pf_read_file(pf_pathf("%s/model_index.json", src), &n);
    pf_temp_write(dir, "model_index.json", text, n);
    free(text);
    assert_int_equal(mkdir(pf_pathf("%s/text_encoder", dir), 0700), 0);
    text = pf_read_file(pf_pathf("%s/text_encoder/config.json", src), &n);
    pf_temp_write(dir, "text_encoder/config.json", text, n);
    free(text);
    pf_safetensors *st;
    pf_error err;
    if (pf_st_open(&st, pf_pathf("%s/text_encoder/model.safetensors", src), &err)) fail_msg("%s", err.msg);
    pf_st_entry *e = calloc((size_t)st->count, sizeof *e);
    float **data = calloc((size_t)st->count, sizeof *data);
    for (int i = 0; i < st->count; i++) {
        const pf_st_tensor *t = &st->tensors[i];
        assert_int_equal(strncmp(t->name, "text_model.", 11), 0);
        data[i] = malloc((size_t)pf_st_numel(t) * sizeof(float) + 1);
        if (pf_st_read_f32(st, t, data[i], &err)) fail_msg("%s", err.msg);
        e[i] = (pf_st_entry){t->name + 11, PF_F32, t->ndim, t->shape, data[i]};
    }
    if (pf_st_write(pf_pathf("%s/text_encoder/model.safetensors", dir), e, st->count, NULL, &err))
        fail_msg("%s", err.msg);
    for (int i = 0; i < st->count; i++) free(data[i]);
    free(data);
    free(e);
    pf_st_close(st);
    check_model_dir("tiny-sd2", dir);
    pf_temp_dir_remove(dir);
}

/* Keep in step with PROMPTS in tests/reference/make_goldens.py; the last is
 * the long prompt, its phrase 12 times. */
static const char *const prompts[] = {
    "a photo of a cat",
    "",
    "A majestic lion, jumping from a big stone at night!! (8k, ultra-detailed)",
    "Ünïcödé façade, 東京 at dusk 🌆, it's ISO-800",
    "a very long prompt about mountains rivers and forests",
};
enum { PROMPTS = sizeof prompts / sizeof *prompts };

/* The golden prompts' ids (transformers' CLIPTokenizer) equal our tokenizer's. */
static void check_tokens(const char *model) {
    pf_safetensors *st = pf_golden_open(pf_pathf("tests/data/goldens/%s/text_encoder.safetensors", model));
    int64_t n;
    float *want = pf_golden_floats(st, "input_ids", &n);
    assert_int_equal(n, (int64_t)PROMPTS * 77);
    pf_tokenizer *tok;
    pf_error err;
    if (pf_tokenizer_load(&tok, pf_test_path(pf_pathf("tests/data/models/%s/tokenizer", model)), &err))
        fail_msg("%s", err.msg);
    for (int p = 0; p < PROMPTS; p++) {
        char text[1024] = "";
        for (int k = 0; k < (p == PROMPTS - 1 ? 12 : 1); k++)
            snprintf(text + strlen(text), sizeof text - strlen(text), "%s%s", k ? " " : "", prompts[p]);
        int32_t ids[77];
        if (pf_tokenizer_encode(tok, text, ids, 77, &err)) fail_msg("%s", err.msg);
        for (int i = 0; i < 77; i++)
            if (ids[i] != (int32_t)want[p * 77 + i])
                fail_msg("%s prompt %d token %d: got %d want %d", model, p, i, ids[i], (int)want[p * 77 + i]);
    }
    pf_tokenizer_free(tok);
    free(want);
    pf_st_close(st);
}

static void test_text_encoder_sd15(void **state) { (void)state; check_model("tiny-sd15"); }
static void test_text_encoder_sd2(void **state) { (void)state; check_model("tiny-sd2"); }
static void test_tokens_sd15(void **state) { (void)state; check_tokens("tiny-sd15"); }
static void test_tokens_sd2(void **state) { (void)state; check_tokens("tiny-sd2"); }

/* A config that disagrees with the weights names the tensor and both shapes. */
static void test_shape_mismatch(void **state) {
    (void)state;
    pf_clip_text_config cfg;
    pf_error err;
    if (pf_clip_text_config_read(&cfg, pf_test_path("tests/data/models/tiny-sd15/text_encoder/config.json"), &err))
        fail_msg("%s", err.msg);
    cfg.intermediate_size += 1;
    pf_weights *w;
    if (pf_weights_open(&w, pf_test_path("tests/data/models/tiny-sd15/text_encoder/model.fp16.safetensors"), &err))
        fail_msg("%s", err.msg);
    pf_backend *be = pf_backend_cpu_new(1);
    pf_clip_text_model *m;
    assert_int_equal(pf_clip_text_model_load(&m, be, &cfg, w, "text_model.", &err), -1);
    assert_null(m);
    assert_non_null(strstr(err.msg, "text_model.encoder.layers.0.mlp.fc1.weight"));
    assert_non_null(strstr(err.msg, "(37, 32)"));
    assert_non_null(strstr(err.msg, "(38, 32)"));
    pf_weights_close(w);
    pf_backend_free(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_encoder_sd15), cmocka_unit_test(test_text_encoder_sd2),
        cmocka_unit_test(test_tokens_sd15),       cmocka_unit_test(test_tokens_sd2),
        cmocka_unit_test(test_shape_mismatch),    cmocka_unit_test(test_text_encoder_unprefixed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
