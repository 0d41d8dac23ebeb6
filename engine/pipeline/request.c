/* request.c - the defaults of a generation request, decided once (request.h). */
#include "request.h"

#include <string.h>

void pf_request_init(pf_request *r) {
    memset(r, 0, sizeof *r);
    r->txt2img = 1;
    pf_txt2img_defaults(&r->gen);
    r->gen.prompt = NULL;
    r->gen.width = r->gen.height = 0; /* the family's side (pf_request_resolve) */
    pf_refine_defaults(&r->ref);
}

void pf_request_resolve(const pf_pipeline *p, pf_request *r) {
    const char *prediction;
    int windows, side;
    pf_pipeline_defaults(p, &prediction, &windows, &side);
    pf_txt2img_params *g = &r->gen;
    pf_refine_params *f = &r->ref;
    if (r->txt2img) {
        if (!g->width) g->width = side;
        if (!g->height) g->height = side;
        if (!g->prediction_type) g->prediction_type = prediction;
        if (!g->windows) g->windows = windows;
    }
    if (!r->refine) return;
    if (r->txt2img) {
        /* the chain of the original predictor: the second stage continues the first */
        f->image_width = g->width;
        f->image_height = g->height;
        f->num_images = g->num_images;
        f->seed = g->seed;
        f->prediction_type = g->prediction_type;
        f->windows = g->windows;
        f->clip_skip = g->clip_skip;
        f->vae_tiling = g->vae_tiling;
    }
    if (!f->prediction_type) f->prediction_type = prediction;
    if (!f->windows) f->windows = windows;
}

int pf_request_check(const pf_pipeline *p, const pf_request *r, const char **param, pf_error *err) {
    if (param) *param = NULL;
    if (r->txt2img && pf_txt2img_check(p, &r->gen, err)) return -1;
    return r->refine ? pf_refine_check(p, &r->ref, param, err) : 0;
}
