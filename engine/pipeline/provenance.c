/* provenance.c - the PNG text of a generated image, for every caller (provenance.h). */
#include "provenance.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

/* Appends to t->parameters, cutting at its end. */
__attribute__((format(printf, 2, 3))) static void say(pf_provenance_text *t, const char *fmt, ...) {
    size_t used = strlen(t->parameters);
    if (used + 1 >= sizeof t->parameters) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->parameters + used, sizeof t->parameters - used, fmt, ap);
    va_end(ap);
}

/* ", KEY: VALUE" of A1111's settings line; a value holding ',', ':' or '"' is
 * quoted as A1111 quotes it (a JSON string), so readers split it right. */
static void setting(pf_provenance_text *t, const char *key, const char *value) {
    say(t, ", %s: ", key);
    if (!strpbrk(value, ",:\"\\\n")) {
        say(t, "%s", value);
        return;
    }
    say(t, "\"");
    for (const char *c = value; *c; c++) {
        if (*c == '\n') say(t, "\\n");
        else if (*c == '"' || *c == '\\') say(t, "\\%c", *c);
        else say(t, "%c", *c);
    }
    say(t, "\"");
}

/* The model's name as A1111 shows it: the file or folder name without its
 * .safetensors extension. */
static void model_name(char *out, size_t n, const char *model) {
    size_t len = strlen(model);
    while (len > 1 && model[len - 1] == '/') len--;
    const char *start = model;
    for (size_t i = 0; i < len; i++)
        if (model[i] == '/') start = model + i + 1;
    len -= (size_t)(start - model);
    const char *ext = ".safetensors";
    if (len > strlen(ext) && !strncmp(start + len - strlen(ext), ext, strlen(ext))) len -= strlen(ext);
    snprintf(out, n, "%.*s", (int)len, start);
}

/* The "parameters" text: the prompts, then the settings line. */
static void parameters(pf_provenance_text *t, const pf_provenance *p, int refined) {
    const pf_request *rq = p->rq;
    const pf_txt2img_params *g = &rq->gen;
    const pf_refine_params *f = &rq->ref;
    const int alone = !rq->txt2img;
    const char *prompt = alone ? (f->prompt ? f->prompt : PF_REFINE_PROMPT) : g->prompt;
    const char *negative = alone ? (f->negative_prompt ? f->negative_prompt : PF_REFINE_NEGATIVE_PROMPT)
                                 : g->negative_prompt;
    char v[64];
    t->parameters[0] = '\0';
    say(t, "%s", prompt ? prompt : "");
    if (negative && *negative) say(t, "\nNegative prompt: %s", negative);
    say(t, "\nSteps: %d", alone ? f->steps : g->steps);
    setting(t, "Sampler", "PeRFlow");
    snprintf(v, sizeof v, "%g", (double)(alone ? f->guidance : g->guidance));
    setting(t, "CFG scale", v);
    snprintf(v, sizeof v, "%llu", (unsigned long long)(alone ? f->seed : g->seed));
    setting(t, "Seed", v);
    snprintf(v, sizeof v, "%dx%d", alone ? p->out_width : g->width, alone ? p->out_height : g->height);
    setting(t, "Size", v);
    if (p->model_hash && *p->model_hash) setting(t, "Model hash", p->model_hash);
    if (p->model && *p->model) {
        char name[256];
        model_name(name, sizeof name, p->model);
        setting(t, "Model", name);
    }
    const int skip = alone ? f->clip_skip : g->clip_skip;
    if (skip) {
        snprintf(v, sizeof v, "%d", skip + 1); /* A1111 counts the last layer as 1 */
        setting(t, "Clip skip", v);
    }
    setting(t, "Prediction type", alone ? f->prediction_type : g->prediction_type);
    snprintf(v, sizeof v, "%d", alone ? f->windows : g->windows);
    setting(t, "Windows", v);
    if (alone || refined) {
        snprintf(v, sizeof v, "%g", (double)f->strength);
        setting(t, "Denoising strength", v);
    }
    if (refined) {
        snprintf(v, sizeof v, "%dx%d", p->out_width, p->out_height);
        setting(t, "Refine size", v);
        snprintf(v, sizeof v, "%d", f->steps);
        setting(t, "Refine steps", v);
        snprintf(v, sizeof v, "%g", (double)f->guidance);
        setting(t, "Refine CFG scale", v);
    }
    setting(t, "Version", "perflow");
}

void pf_provenance_fill(pf_provenance_text *t, const pf_provenance *p, const char *index) {
    const pf_request *rq = p->rq;
    const pf_txt2img_params *g = &rq->gen;
    const pf_refine_params *f = &rq->ref;
    const int alone = !rq->txt2img;
    const int refined = rq->txt2img && rq->refine && (!p->stage || !strcmp(p->stage, "refined"));
    int n = 0;
#define PAIR(k, v) (t->kv[n++] = (k), t->kv[n++] = (v))
#define PAIR_IF(k, v) ((v) && *(v) ? (void)PAIR(k, v) : (void)0)
    PAIR("Software", "perflow");
    PAIR_IF("job_id", p->job_id);
    if (alone) {
        PAIR("prompt", f->prompt ? f->prompt : PF_REFINE_PROMPT);
        PAIR("negative_prompt", f->negative_prompt ? f->negative_prompt : PF_REFINE_NEGATIVE_PROMPT);
    } else {
        PAIR("prompt", g->prompt);
        PAIR("negative_prompt", g->negative_prompt ? g->negative_prompt : "");
    }
    snprintf(t->seed, sizeof t->seed, "%llu", (unsigned long long)(alone ? f->seed : g->seed));
    snprintf(t->steps, sizeof t->steps, "%d", alone ? f->steps : g->steps);
    snprintf(t->guidance, sizeof t->guidance, "%g", (double)(alone ? f->guidance : g->guidance));
    snprintf(t->size, sizeof t->size, "%dx%d", alone ? p->out_width : g->width, alone ? p->out_height : g->height);
    snprintf(t->windows, sizeof t->windows, "%d", alone ? f->windows : g->windows);
    snprintf(t->clip_skip, sizeof t->clip_skip, "%d", alone ? f->clip_skip : g->clip_skip);
    snprintf(t->rstrength, sizeof t->rstrength, "%g", (double)f->strength);
    snprintf(t->cnscale, sizeof t->cnscale, "%g", (double)f->controlnet_scale);
    PAIR("seed", t->seed);
    PAIR("steps", t->steps);
    PAIR("guidance", t->guidance);
    if (alone) {
        PAIR("strength", t->rstrength);
        PAIR("controlnet_scale", t->cnscale);
    }
    PAIR("size", t->size);
    PAIR("prediction_type", alone ? f->prediction_type : g->prediction_type);
    PAIR("windows", t->windows);
    PAIR("clip_skip", t->clip_skip);
    PAIR_IF("model", p->model);
    PAIR_IF("model_config", p->model_config);
    PAIR_IF("delta", p->delta);
    PAIR_IF("loras", p->loras);
    PAIR_IF("controlnets", p->controlnets);
    PAIR_IF("ip_adapters", p->ip_adapters);
    PAIR_IF("image_encoder", p->image_encoder);
    if (p->sdxl && !alone) {
        /* as the CLI's flags write them: W x H and X,Y; the engine's are (h, w) and (top, left) */
        snprintf(t->sizes[0], sizeof t->sizes[0], "%dx%d", g->original_size[1] ? g->original_size[1] : g->width,
                 g->original_size[0] ? g->original_size[0] : g->height);
        snprintf(t->sizes[1], sizeof t->sizes[1], "%d,%d", g->crop_coords[1], g->crop_coords[0]);
        snprintf(t->sizes[2], sizeof t->sizes[2], "%dx%d", g->target_size[1] ? g->target_size[1] : g->width,
                 g->target_size[0] ? g->target_size[0] : g->height);
        PAIR("family", "sdxl");
        PAIR_IF("prompt_2", g->prompt_2);
        PAIR_IF("negative_prompt_2", g->negative_prompt_2);
        PAIR("original_size", t->sizes[0]);
        PAIR("crop_coords", t->sizes[1]);
        PAIR("target_size", t->sizes[2]);
    }
    if (rq->txt2img && rq->refine) PAIR_IF("stage", p->stage);
    if (refined) {
        snprintf(t->rsize, sizeof t->rsize, "%dx%d", p->out_width, p->out_height);
        snprintf(t->rsteps, sizeof t->rsteps, "%d", f->steps);
        snprintf(t->rguidance, sizeof t->rguidance, "%g", (double)f->guidance);
        PAIR_IF("refine_controlnet", p->refine_controlnet);
        PAIR("refine_size", t->rsize);
        PAIR("refine_steps", t->rsteps);
        PAIR("refine_prompt", f->prompt ? f->prompt : PF_REFINE_PROMPT);
        PAIR("refine_negative_prompt", f->negative_prompt ? f->negative_prompt : PF_REFINE_NEGATIVE_PROMPT);
        PAIR("refine_guidance", t->rguidance);
        PAIR("refine_strength", t->rstrength);
        PAIR("controlnet_scale", t->cnscale);
    }
    if (alone) {
        PAIR_IF("controlnet", p->refine_controlnet);
        PAIR_IF("input", p->input);
    }
    parameters(t, p, refined);
    PAIR("parameters", t->parameters);
    snprintf(t->index, sizeof t->index, "%s", index);
    PAIR("index", t->index);
    t->kv[n] = NULL;
    PF_CHECK(n < 2 * PF_PROVENANCE_PAIRS);
#undef PAIR
#undef PAIR_IF
}
