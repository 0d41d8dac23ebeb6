/* test_ip_adapter.c - IP-Adapter on SD-1.5 against diffusers' load_ip_adapter +
 * set_ip_adapter_scale (goldens: tests/reference/goldens_ip_adapter.py): whole
 * pipeline runs (image encoder, CLIPImageProcessor, image projection, decoupled
 * cross-attention, zero negative embeddings) within PF_PIPELINE_ATOL and the
 * 8-bit rule, the CLI's PNGs, and the misfits as one line naming both sides. */
#include "pipeline_cases.h"

#include "clip_vision.h"
#include "resize.h"

#define HINT "re-run tests/reference/goldens_ip_adapter.py"
#define ADAPTER "tests/data/models/tiny-sd15-ip-adapter/ip-adapter.safetensors"
#define ENCODER "tests/data/models/tiny-sd15/image_encoder"
#define SDXL_ADAPTER "tests/data/models/tiny-sdxl-ip-adapter/ip-adapter.safetensors"

#define PREP_IMAGES 5 /* PREP in goldens_ip_adapter.py */

/* The parts on their own: Pillow's bicubic resize byte for byte, CLIPImageProcessor's
 * pixel_values and the encoder's image_embeds, on images shrunk, enlarged, square,
 * odd and wide. */
static void test_parts(void **state) {
    (void)state;
    pf_safetensors *st = pf_golden_open_version("tests/data/goldens/tiny-sd15/ip-adapter-parts.safetensors", "1", HINT);
    pf_backend *be = pf_backend_cpu_new(0);
    pf_clip_vision *enc;
    pf_error err;
    if (pf_clip_vision_load_dir(&enc, be, pf_test_path(ENCODER), &err)) fail_msg("%s", err.msg);
    const pf_clip_image_config *pc = pf_clip_vision_image_config(enc);
    const int E = pf_clip_vision_get_config(enc)->projection_dim;
    for (int k = 0; k < PREP_IMAGES; k++) {
        int64_t n, nb, npx, ne;
        float *img = pf_golden_floats(st, pf_pathf("image_%d", k), &n);
        const pf_st_tensor *t = pf_st_find(st, pf_pathf("image_%d", k));
        const int h = (int)t->shape[0], w = (int)t->shape[1];
        uint8_t *rgb = malloc((size_t)n);
        for (int64_t i = 0; i < n; i++) rgb[i] = (uint8_t)img[i];
        float *bic = pf_golden_floats(st, pf_pathf("bicubic_%d", k), &nb);
        const pf_st_tensor *tb = pf_st_find(st, pf_pathf("bicubic_%d", k));
        const int rh = (int)tb->shape[0], rw = (int)tb->shape[1];
        uint8_t *got = malloc((size_t)nb);
        if (pf_resize_bicubic(got, rw, rh, rgb, w, h, &err)) fail_msg("%s", err.msg);
        for (int64_t i = 0; i < nb; i++)
            if (got[i] != (uint8_t)bic[i])
                fail_msg("bicubic %dx%d -> %dx%d: byte %lld is %d, Pillow's %d", w, h, rw, rh, (long long)i, got[i],
                         (int)bic[i]);
        float *px = pf_golden_floats(st, pf_pathf("pixels_%d", k), &npx);
        float *mine = malloc((size_t)npx * sizeof *mine);
        if (pf_clip_image_preprocess(mine, pc, rgb, w, h, &err)) fail_msg("%s", err.msg);
        pf_assert_close(pf_pathf("pixel_values %d", k), mine, px, (size_t)npx, 0, 0); /* the same float ops */
        float *emb = pf_golden_floats(st, pf_pathf("embeds_%d", k), &ne);
        assert_int_equal(ne, E);
        float *e = malloc((size_t)E * sizeof *e);
        if (pf_clip_vision_embed(enc, e, rgb, w, h, &err)) fail_msg("%s", err.msg);
        pf_assert_close(pf_pathf("image_embeds %d", k), e, emb, (size_t)E, 1e-5, 1e-5);
        free(img), free(rgb), free(bic), free(got), free(px), free(mine), free(emb), free(e);
    }
    pf_clip_vision_free(enc);
    pf_backend_free(be);
    pf_st_close(st);
}

/* Every case of a goldens file (all of one model) through pf_pipeline_txt2img,
 * attaching each case's adapters; returns the number of cases. */
static int run_cases(const char *rel, const char *model) {
    json_t *root = pf_golden_json(pf_test_path(rel), "1", HINT), *c;
    size_t i;
    int ran = 0;
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *p;
    pf_error err;
    if (pf_pipeline_load(&p, be, pf_test_path(model), NULL, &err)) fail_msg("%s", err.msg);
    char encoder[4096];
    snprintf(encoder, sizeof encoder, "%s", pf_test_path(ENCODER));
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        json_t *list = json_object_get(c, "ip_adapters"), *it;
        size_t k;
        char files[PF_MAX_IP_ADAPTERS][4096];
        const char *fp[PF_MAX_IP_ADAPTERS];
        pf_ip_image ip[PF_MAX_IP_ADAPTERS];
        uint8_t *rgb[PF_MAX_IP_ADAPTERS];
        json_array_foreach(list, k, it) {
            snprintf(files[k], sizeof files[k], "%s",
                     pf_test_path(pf_pathf("tests/data/models/%s", pf_case_str(it, "adapter"))));
            fp[k] = files[k];
            int w, h;
            if (pf_image_read(pf_test_path(pf_pathf("tests/data/goldens/%s", pf_case_str(it, "image"))), &rgb[k], &w,
                              &h, &err))
                fail_msg("%s", err.msg);
            ip[k] = (pf_ip_image){(int)k, rgb[k], w, h, (float)json_number_value(json_object_get(it, "scale"))};
        }
        const int nip = (int)json_array_size(list);
        if (pf_pipeline_set_ip_adapters(p, fp, nip, encoder, &err)) fail_msg("%s", err.msg);
        pf_txt2img_params q;
        pf_sdxl_case_params(c, &q); /* an SD case has no SDXL fields: pf_case_params */
        q.ip_images = ip;
        q.n_ip = nip;
        const size_t n = (size_t)q.num_images * q.height * q.width * 3;
        float *got = malloc(n * sizeof *got);
        if (pf_pipeline_txt2img(p, &q, got, &err)) fail_msg("%s: %s", pf_case_str(c, "name"), err.msg);
        pf_assert_case_images(pf_case_str(c, "name"), c, got, n, HINT);
        free(got);
        for (k = 0; k < (size_t)nip; k++) free(rgb[k]);
        ran++;
    }
    pf_pipeline_free(p);
    pf_backend_free(be);
    json_decref(root);
    return ran;
}

static void test_pipeline_cases(void **state) {
    (void)state;
    assert_int_equal(run_cases("tests/data/goldens/ip-adapter.json", "tests/data/models/tiny-sd15"), 5);
}

/* StableDiffusionXLPipeline with IP-Adapters (plain, and plain + plus): the same
 * decoupled attention in SDXL's 12 cross-attentions, beside the pooled text
 * embedding and time ids. */
static void test_sdxl_cases(void **state) {
    (void)state;
    assert_int_equal(run_cases("tests/data/goldens/ip-adapter-sdxl.json", "tests/data/models/tiny-sdxl"), 2);
}

/* perflow generate --ip-adapter FILE:SCALE --ip-image FILE --image-encoder DIR writes the golden PNGs
 * (SD-1.5 and SDXL). */
/* Every case of a goldens file through the CLI; the image encoder named on every
 * run when name_encoder, else on the first only (the model's image_encoder/ after). */
static void cli_cases(const char *rel, const char *model_rel, int name_encoder) {
    json_t *root = pf_golden_json(pf_test_path(rel), "1", HINT), *c;
    size_t i;
    char *dir = pf_temp_dir();
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        pf_case_cli a;
        pf_case_cli_of(&a, c);
        char out[4096], spec[PF_MAX_IP_ADAPTERS][4200], img[PF_MAX_IP_ADAPTERS][4200], model[4096], enc[4096],
            neg[1024], p2[1024];
        snprintf(out, sizeof out, "%s/ip-%s.png", dir, pf_case_str(c, "name"));
        snprintf(model, sizeof model, "%s", pf_test_path(model_rel));
        snprintf(p2, sizeof p2, "%s", pf_case_str(c, "prompt_2") ? pf_case_str(c, "prompt_2") : "");
        snprintf(enc, sizeof enc, "%s", pf_test_path(ENCODER));
        snprintf(neg, sizeof neg, "%s", pf_case_str(c, "negative_prompt") ? pf_case_str(c, "negative_prompt") : "");
        char *argv[64];
        int k = 0;
        const char *fixed[] = {pf_cli_path(), "generate", "--model", model, "--prompt", pf_case_str(c, "prompt"),
                               "--steps", a.steps, "--guidance", a.guidance, "--seed", a.seed, "--width", a.width,
                               "--height", a.height, "--num-images", a.num_images, "--windows", a.windows,
                               "--prediction-type", pf_case_str(c, "prediction_type"), "--out", out};
        for (size_t f = 0; f < sizeof fixed / sizeof *fixed; f++) argv[k++] = (char *)fixed[f];
        json_t *it;
        size_t j;
        json_array_foreach(json_object_get(c, "ip_adapters"), j, it) {
            snprintf(spec[j], sizeof spec[j], "%s:%.9g",
                     pf_test_path(pf_pathf("tests/data/models/%s", pf_case_str(it, "adapter"))),
                     json_number_value(json_object_get(it, "scale")));
            snprintf(img[j], sizeof img[j], "%s",
                     pf_test_path(pf_pathf("tests/data/goldens/%s", pf_case_str(it, "image"))));
            argv[k++] = "--ip-adapter";
            argv[k++] = spec[j];
            argv[k++] = "--ip-image";
            argv[k++] = img[j];
        }
        if (*neg) {
            argv[k++] = "--negative-prompt";
            argv[k++] = neg;
        }
        if (*p2) {
            argv[k++] = "--prompt-2";
            argv[k++] = p2;
        }
        if (i == 0 || name_encoder) {
            argv[k++] = "--image-encoder";
            argv[k++] = enc;
        }
        argv[k] = NULL;
        assert_int_equal(pf_run(argv, 0), 0);
        pf_assert_case_pngs(c, out);
    }
    pf_temp_dir_remove(dir);
    json_decref(root);
}

static void test_cli(void **state) {
    (void)state;
    cli_cases("tests/data/goldens/ip-adapter.json", "tests/data/models/tiny-sd15", 0);
    cli_cases("tests/data/goldens/ip-adapter-sdxl.json", "tests/data/models/tiny-sdxl", 1);
}

/* Misfits: another family's adapter (both ways between SD-1.5 and SDXL), an
 * image encoder of another width; each one line naming both sides. */
static void test_errors(void **state) {
    (void)state;
    pf_backend *be = pf_backend_cpu_new(0);
    pf_pipeline *p;
    pf_error err;
    if (pf_pipeline_load(&p, be, pf_test_path("tests/data/models/tiny-sd15"), NULL, &err)) fail_msg("%s", err.msg);
    char enc[4096], f[4096];
    snprintf(enc, sizeof enc, "%s", pf_test_path(ENCODER));
    const char *fp[] = {f};
    snprintf(f, sizeof f, "%s", pf_test_path("tests/data/models/tiny-sd15-ip-adapter/ip-adapter-x64.safetensors"));
    assert_int_equal(pf_pipeline_set_ip_adapters(p, fp, 1, enc, &err), -1);
    print_message("%s\n", err.msg);
    assert_non_null(strstr(err.msg, "ip-adapter-x64.safetensors does not fit the model"));
    assert_non_null(strstr(err.msg, "64-wide"));
    assert_non_null(strstr(err.msg, "over 32"));
    assert_null(strchr(err.msg, '\n'));
    snprintf(f, sizeof f, "%s", pf_test_path("tests/data/models/tiny-sd15-ip-adapter/ip-adapter-e16.safetensors"));
    assert_int_equal(pf_pipeline_set_ip_adapters(p, fp, 1, enc, &err), -1);
    print_message("%s\n", err.msg);
    assert_non_null(strstr(err.msg, "takes 16-wide image embeddings but image encoder"));
    assert_non_null(strstr(err.msg, "gives 24"));
    assert_int_equal(pf_pipeline_num_ip_adapters(p), 0);
    /* an image prompt without an adapter attached */
    uint8_t px[3 * 4] = {0};
    pf_ip_image ip = {0, px, 2, 2, 1.0f};
    pf_txt2img_params q;
    pf_txt2img_defaults(&q);
    q.width = q.height = 64;
    q.ip_images = &ip;
    q.n_ip = 1;
    assert_int_equal(pf_txt2img_check(p, &q, &err), -1);
    assert_non_null(strstr(err.msg, "1 image prompts for 0 attached IP-Adapters"));
    pf_pipeline_free(p);
    /* an SD-1.5 adapter on SDXL and an SDXL adapter on SD-1.5: one line naming both sides */
    if (pf_pipeline_load(&p, be, pf_test_path("tests/data/models/tiny-sdxl"), NULL, &err)) fail_msg("%s", err.msg);
    snprintf(f, sizeof f, "%s", pf_test_path(ADAPTER));
    assert_int_equal(pf_pipeline_set_ip_adapters(p, fp, 1, enc, &err), -1);
    print_message("%s\n", err.msg);
    assert_non_null(strstr(err.msg, "ip-adapter.safetensors does not fit the model: it has 4 cross-attentions over "
                                    "32-wide image tokens"));
    assert_non_null(strstr(err.msg, "the model's UNet has 12 over 72"));
    pf_pipeline_free(p);
    if (pf_pipeline_load(&p, be, pf_test_path("tests/data/models/tiny-sd15"), NULL, &err)) fail_msg("%s", err.msg);
    snprintf(f, sizeof f, "%s", pf_test_path(SDXL_ADAPTER));
    assert_int_equal(pf_pipeline_set_ip_adapters(p, fp, 1, enc, &err), -1);
    assert_non_null(strstr(err.msg, "it has 12 cross-attentions over 72-wide image tokens"));
    assert_non_null(strstr(err.msg, "the model's UNet has 4 over 32"));
    pf_pipeline_free(p);
    pf_backend_free(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parts),
        cmocka_unit_test(test_pipeline_cases),
        cmocka_unit_test(test_sdxl_cases),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
