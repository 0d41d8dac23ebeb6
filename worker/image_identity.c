/* image_identity.c - the result store's identity of an image (image_identity.h). */
#include "image_identity.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"

const char *pf_image_numerics(const char *backend_name) {
    return backend_name && !strcmp(backend_name, "cuda") ? "cuda-fp16" : "cpu-fp32";
}

/* A float as text: JSON reals would print 0.1 as 0.10000000000000001 in one
 * jansson and otherwise in another; %.9g round-trips every float exactly. */
static json_t *num(double v) {
    char s[40];
    snprintf(s, sizeof s, "%.9g", v);
    return json_string(s);
}

static json_t *digest(const pf_cache_lease *l) {
    if (!l) return json_null();
    char hex[PF_SHA256_HEX];
    pf_cache_lease_digest(hex, l);
    return json_string(hex);
}

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static json_t *pair(const int v[2]) { return json_pack("[i, i]", v[0], v[1]); }

json_t *pf_image_identity_doc(const pf_txt2img_params *g, const pf_job *job, const pf_model *model,
                              const char *numerics, int index) {
    json_t *loras = json_array();
    for (int i = 0; i < job->n_loras; i++)
        json_array_append_new(loras, json_pack("[o, o]", digest(model->loras[i]), num(job->loras[i].scale)));
    json_t *controls = json_array();
    for (int i = 0; i < g->n_controls; i++) {
        const pf_control *c = &g->controls[i];
        char img[PF_SHA256_HEX] = "";
        if (c->image) {
            pf_sha256 *h = pf_sha256_new();
            char dims[48];
            snprintf(dims, sizeof dims, "%dx%d\n", c->image_width, c->image_height);
            pf_sha256_update(h, dims, strlen(dims));
            pf_sha256_update(h, c->image, (size_t)c->image_width * c->image_height * 3);
            pf_sha256_final_hex(h, img);
            pf_sha256_free(h);
        }
        json_array_append_new(controls, json_pack("[o, s, o]",
                                                  c->net >= 0 && c->net < model->n_nets ? digest(model->nets[c->net])
                                                                                       : json_null(),
                                                  img, num(c->scale)));
    }
    json_t *doc = json_pack("{s:i, s:s, s:o, s:o, s:o, s:o, s:o, s:b}", "v", PF_IMAGE_IDENTITY_VERSION, "numerics",
                            numerics, "base", digest(model->base), "config", digest(model->config), "delta",
                            digest(model->delta), "loras", loras, "controls", controls, "fp16", job->fp16);
    json_object_set_new(doc, "settings",
                        json_pack("{s:i, s:i, s:i, s:o, s:i, s:o, s:i, s:i, s:o, s:o, s:o}", "width", g->width,
                                  "height", g->height, "steps", g->steps, "guidance", num(g->guidance), "clip_skip",
                                  g->clip_skip, "prediction_type", str_or_null(g->prediction_type), "windows",
                                  g->windows, "vae_tiling", (int)g->vae_tiling, "original_size",
                                  pair(g->original_size), "crop_coords", pair(g->crop_coords), "target_size",
                                  pair(g->target_size)));
    json_object_set_new(doc, "prompt", json_string(g->prompt ? g->prompt : ""));
    json_object_set_new(doc, "negative_prompt", str_or_null(g->negative_prompt));
    json_object_set_new(doc, "prompt_2", str_or_null(g->prompt_2));
    json_object_set_new(doc, "negative_prompt_2", str_or_null(g->negative_prompt_2));
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)g->seed); /* all 64 bits, past JSON's 2^53 */
    json_object_set_new(doc, "seed", json_string(seed));
    json_object_set_new(doc, "index", json_integer(index));
    return doc;
}

void pf_image_identity(char hex[PF_SHA256_HEX], const json_t *doc) {
    char *s = json_dumps(doc, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENSURE_ASCII);
    PF_CHECK(s != NULL);
    pf_sha256_hex(hex, s, strlen(s));
    free(s);
}
