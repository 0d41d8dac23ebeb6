/* provenance.h - what a generated image's PNG says about how it was made, written
 * by one function for every caller (perflow generate, perflow refine, the
 * worker): the tEXt pairs pf_png_write takes, from the resolved request
 * (request.h), so the same settings are recorded the same way on every path;
 * and the "parameters" pair in the form AUTOMATIC1111's web UI writes it, which
 * A1111, ComfyUI and Civitai read back:
 *
 *   PROMPT
 *   Negative prompt: NEGATIVE
 *   Steps: 4, Sampler: PeRFlow, CFG scale: 4.5, Seed: 7, Size: 512x512, Model hash: 0123456789, ...
 *
 * Pairs (only those that apply): Software, job_id, prompt, negative_prompt,
 * seed, steps, guidance, size, prediction_type, windows, clip_skip, model,
 * model_config, delta, loras, controlnets, ip_adapters, image_encoder; SDXL: family, prompt_2,
 * negative_prompt_2, original_size, crop_coords, target_size (as the CLI's
 * flags write them: WxH, X,Y); with a refine stage: stage (when the caller
 * says which stage's images these are), and for the refined images
 * refine_controlnet, refine_size, refine_steps, refine_prompt,
 * refine_negative_prompt, refine_guidance, refine_strength,
 * controlnet_scale; the refine stage alone: strength, controlnet_scale,
 * controlnet, input; then parameters and index. */
#ifndef PF_PROVENANCE_H
#define PF_PROVENANCE_H

#include "request.h"

/* Where the request's model and images came from, as the caller names them. */
typedef struct pf_provenance {
    const pf_request *rq;          /* resolved (pf_request_resolve) */
    int sdxl;                      /* the model is SDXL (pf_pipeline_family) */
    const char *job_id;            /* the worker's job, or NULL */
    const char *model;             /* path or URL; NULL or "": not said */
    const char *model_config, *delta;
    const char *model_hash;        /* A1111's "Model hash" (the first 10 hex digits of the checkpoint's
                                      sha256), or NULL when not known */
    const char *loras;             /* "PATH:SCALE, ..." or NULL */
    const char *controlnets;       /* the text-to-image ControlNets, "DIR:SCALE=IMAGE, ...", or NULL */
    const char *ip_adapters;       /* the image prompts, "FILE:SCALE=IMAGE, ...", or NULL */
    const char *image_encoder;     /* their image encoder, or NULL */
    const char *refine_controlnet; /* the refine stage's tile ControlNet, or NULL */
    const char *input;             /* the refine stage alone: the input image */
    const char *stage;             /* with a refine stage: "base" or "refined", the images these are; NULL:
                                      the refined images, stage not said */
    int out_width, out_height;     /* the images' size */
} pf_provenance;

#define PF_PROVENANCE_PAIRS 52

/* The text of one image: kv is the NULL-terminated key, value list for
 * pf_png_write; the other fields are its storage. */
typedef struct pf_provenance_text {
    char seed[32], steps[16], guidance[32], size[32], windows[16], clip_skip[16], index[16];
    char rsize[32], rsteps[16], rguidance[32], rstrength[32], cnscale[32], sizes[3][40];
    char parameters[20480];
    const char *kv[2 * PF_PROVENANCE_PAIRS + 1];
} pf_provenance_text;

/* Fills t with p's pairs for the image called index ("0", "1", ..., or "grid").
 * t points into p's strings: keep them alive while t is used. */
void pf_provenance_fill(pf_provenance_text *t, const pf_provenance *p, const char *index);

#endif
