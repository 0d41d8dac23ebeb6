/* refine_cases.h - the cases of tests/data/goldens/refine.json (made by
 * tests/reference/make_goldens.py refine, goldens_refine.py), which test_refine
 * holds the CPU backend to and test_cuda_pipeline the CUDA backend: the file,
 * the pipeline the cases run on, and one case run through the library.
 *
 * A case has a kind: "refine" (an input PNG refined), "generate+refine" (text to
 * image, its 8-bit images refined, as the original predictor chains them) or
 * "generate" (text to image alone); its "generate" and "refine" objects hold the
 * settings, "images" the float golden, "pngs" diffusers' 8-bit images. */
#ifndef PF_REFINE_CASES_H
#define PF_REFINE_CASES_H

#include "pipeline_cases.h"

#include "image.h"

#define PF_REFINE_MODEL "tests/data/models/tiny-sd15"
#define PF_REFINE_DELTA "tests/data/models/tiny-sd15-delta/unet"
#define PF_REFINE_CONTROLNET "tests/data/models/tiny-sd15-controlnet"

/* refine.json (json_decref it); fails the test when missing or of another version. */
static inline json_t *pf_refine_cases(void) {
    return pf_golden_json(pf_test_path("tests/data/goldens/refine.json"), PF_GOLDEN_VERSION,
                          "re-run tests/reference/make_goldens.py refine");
}

/* The cases' pipeline on be: tiny-sd15 with its delta and the tiny ControlNet. */
static inline pf_pipeline *pf_refine_case_pipeline(pf_backend *be) {
    pf_pipeline *p;
    pf_error err;
    if (pf_pipeline_load(&p, be, pf_test_path(PF_REFINE_MODEL), pf_test_path(PF_REFINE_DELTA), &err))
        fail_msg("%s", err.msg);
    if (pf_pipeline_set_controlnet(p, pf_test_path(PF_REFINE_CONTROLNET), &err)) fail_msg("%s", err.msg);
    return p;
}

/* The refine settings of a case's "refine" object (strings point into it). */
static inline void pf_refine_case_params(json_t *r, pf_refine_params *q) {
    pf_refine_defaults(q);
    q->prompt = pf_case_str(r, "prompt");
    q->negative_prompt = pf_case_str(r, "negative_prompt");
    q->size = pf_case_int(r, "size");
    q->steps = pf_case_int(r, "steps");
    q->guidance = (float)json_number_value(json_object_get(r, "guidance"));
    q->strength = (float)json_number_value(json_object_get(r, "strength"));
    q->controlnet_scale = (float)json_number_value(json_object_get(r, "controlnet_scale"));
    q->seed = (uint64_t)json_integer_value(json_object_get(r, "seed"));
    q->prediction_type = pf_case_str(r, "prediction_type");
    q->windows = pf_case_int(r, "windows");
    pf_error err;
    if (pf_vae_tiling_parse(&q->vae_tiling, pf_case_str(r, "vae_tiling"), &err)) fail_msg("%s", err.msg);
}

/* A case's ControlNets ("controls": [{controlnet, image or null, scale}]): attaches
 * them to p in order (replacing what was attached) and fills ctl[] with their
 * condition images read from the goldens (image NULL for null: the refined
 * image). Returns the count (0 when the case has none: p is left alone). The
 * images are freed with pf_refine_case_controls_free. */
static inline int pf_refine_case_controls(pf_pipeline *p, json_t *c, pf_control *ctl) {
    json_t *list = json_object_get(c, "controls"), *it;
    size_t i;
    if (!json_is_array(list) || !json_array_size(list)) return 0;
    const char *dirs[PF_MAX_CONTROLS];
    char paths[PF_MAX_CONTROLS][4096];
    pf_error err;
    assert_true(json_array_size(list) <= PF_MAX_CONTROLS);
    json_array_foreach(list, i, it) {
        snprintf(paths[i], sizeof paths[i], "%s",
                 pf_test_path(pf_pathf("tests/data/models/%s", pf_case_str(it, "controlnet"))));
        dirs[i] = paths[i];
        uint8_t *img = NULL;
        ctl[i] = (pf_control){(int)i, NULL, 0, 0, (float)json_number_value(json_object_get(it, "scale"))};
        const char *rel = pf_case_str(it, "image");
        if (rel && pf_image_read(pf_test_path(pf_pathf("tests/data/goldens/%s", rel)), &img, &ctl[i].image_width,
                                 &ctl[i].image_height, &err))
            fail_msg("%s", err.msg);
        ctl[i].image = img;
    }
    if (pf_pipeline_set_controlnets(p, dirs, (int)i, &err)) fail_msg("%s", err.msg);
    return (int)i;
}

static inline void pf_refine_case_controls_free(pf_control *ctl, int n) {
    for (int i = 0; i < n; i++) free((void *)ctl[i].image);
}

/* Float values of a case's result: num_images * height * width * 3. */
static inline size_t pf_refine_case_values(json_t *c) {
    return (size_t)pf_case_int(c, "num_images") * pf_case_int(c, "height") * pf_case_int(c, "width") * 3;
}

/* Runs case c on p into got (pf_refine_case_values floats, the layout of
 * pf_pipeline_txt2img); the refine stage reports its steps to cnt (may be NULL).
 * Returns 1 when the case has a refine stage, 0 for text to image alone.
 * Fails the test on any error or size mismatch. */
static inline int pf_refine_case_run(pf_pipeline *p, json_t *c, float *got, pf_step_counter *cnt) {
    const char *kind = pf_case_str(c, "kind"), *name = pf_case_str(c, "name");
    const size_t n = pf_refine_case_values(c);
    pf_error err;
    pf_refine_params q;
    pf_control ctl[PF_MAX_CONTROLS];
    const int nctl = pf_refine_case_controls(p, c, ctl);
    uint8_t *input = NULL;
    if (!strcmp(kind, "refine")) {
        pf_refine_case_params(json_object_get(c, "refine"), &q);
        if (pf_image_read(pf_test_path(pf_pathf("tests/data/goldens/%s", pf_case_str(c, "input"))), &input,
                          &q.image_width, &q.image_height, &err))
            fail_msg("%s", err.msg);
        q.num_images = 1;
    } else {
        pf_txt2img_params t;
        pf_case_params(json_object_get(c, "generate"), &t);
        const size_t n1 = (size_t)t.num_images * t.width * t.height * 3;
        float *first = malloc(n1 * sizeof *first);
        if (!strcmp(kind, "generate")) { /* text to image alone, with the case's ControlNets if any */
            t.controls = ctl;
            t.n_controls = nctl;
        }
        if (pf_pipeline_txt2img(p, &t, first, &err)) fail_msg("%s: %s", name, err.msg);
        if (!strcmp(kind, "generate")) {
            assert_int_equal(n1, n);
            memcpy(got, first, n1 * sizeof *got);
            free(first);
            pf_refine_case_controls_free(ctl, nctl);
            if (nctl && pf_pipeline_set_controlnet(p, pf_test_path(PF_REFINE_CONTROLNET), &err))
                fail_msg("%s", err.msg);
            return 0;
        }
        input = malloc(n1);
        pf_image_to_u8(input, first, (long)n1); /* the PIL hand-over quantises */
        free(first);
        pf_refine_case_params(json_object_get(c, "refine"), &q);
        q.image_width = t.width;
        q.image_height = t.height;
        q.num_images = t.num_images;
    }
    q.images = input;
    q.controls = ctl;
    q.n_controls = nctl;
    if (cnt) {
        q.progress = pf_count_step;
        q.user = cnt;
    }
    int w, h;
    pf_refine_output_size(&q, &w, &h);
    assert_int_equal(w, pf_case_int(c, "width"));
    assert_int_equal(h, pf_case_int(c, "height"));
    assert_int_equal(q.num_images, pf_case_int(c, "num_images"));
    if (pf_pipeline_refine(p, &q, got, &err)) fail_msg("%s: %s", name, err.msg);
    free(input);
    pf_refine_case_controls_free(ctl, nctl);
    /* back to the refiner's one ControlNet for the next case */
    if (nctl && pf_pipeline_set_controlnet(p, pf_test_path(PF_REFINE_CONTROLNET), &err)) fail_msg("%s", err.msg);
    return 1;
}

#endif
