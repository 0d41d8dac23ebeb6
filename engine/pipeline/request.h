/* request.h - one generation request: text-to-image, optionally followed by the
 * refine stage (the original PeRFlow predictor's chain), or the refine stage
 * alone (`perflow refine`), with ControlNets and SDXL conditioning in the
 * stages' parameters (pipeline.h) and LoRAs in the model (checkpoint.h).
 *
 * Every caller (the CLI's flags, `perflow submit`'s job, the worker's job
 * parser) fills one pf_request, setting only what its user set, and every
 * default is decided here, in one place:
 *
 *   pf_request_init: what does not depend on the model: 4 steps, guidance 4.5,
 *     seed 0, one image, clip_skip 0, VAE tiling auto; the refine stage's
 *     1024 px short side, 4 steps, guidance 7.5, strength 1, ControlNet scale 1
 *     and the predictor's prompts (pf_refine_defaults). What depends on the
 *     model is left unset: sizes 0, prediction type NULL, windows 0.
 *   pf_request_resolve, once the model is loaded:
 *     - width and height 0: the family's side, 512 (SD-1.x/2.x) or 1024 (SDXL);
 *     - prediction type NULL and windows 0: the model's scheduler config when
 *       it is a PeRFlowScheduler's, else the family's PeRFlow setting (the
 *       released models): diff_eps for SD-1.x/2.x, ddim_eps for SDXL, 4 windows.
 *       A base model's own scheduler config (PNDMScheduler, "epsilon", ...)
 *       gives only the noise schedule (checkpoint.c);
 *     - with both stages, the refine stage takes the first stage's image size,
 *       image count, seed, prediction type, windows, clip_skip and tiling, so
 *       that `generate --refine` is `refine` of generate's PNGs.
 * After pf_request_resolve every field holds the value the run uses, so what a
 * caller records in its PNGs is what ran, whoever filled the request. */
#ifndef PF_REQUEST_H
#define PF_REQUEST_H

#include "pipeline.h"

typedef struct pf_request {
    int txt2img;          /* 1: the text-to-image stage runs (gen); 0: refine of given images */
    pf_txt2img_params gen;
    int refine;           /* 1: the refine stage runs (ref) */
    pf_refine_params ref; /* with txt2img, its images and the fields named above come from gen */
} pf_request;

/* Fills r with the model-independent defaults above: text-to-image only, no
 * refine stage, prompt NULL (the caller's to set), the rest unset. */
void pf_request_init(pf_request *r);

/* Resolves every unset field of r from the model p (see above). Idempotent;
 * checks nothing (pf_request_check does). */
void pf_request_resolve(const pf_pipeline *p, pf_request *r);

/* pf_txt2img_check and pf_refine_check of the stages r runs, after
 * pf_request_resolve; the refine stage's images may still be NULL. On error
 * -1 with err set and, unless param is NULL, *param as pf_refine_check names
 * it (NULL for a text-to-image parameter). */
int pf_request_check(const pf_pipeline *p, const pf_request *r, const char **param, pf_error *err);

#endif
