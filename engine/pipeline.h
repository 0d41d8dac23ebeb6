/* pipeline.h - PeRFlow text-to-image, step for step diffusers'
 * StableDiffusionPipeline with the PeRFlow sampler (shared/spec/pipelines.md, part 1).
 *
 * A pf_pipeline holds one loaded model (tokenizer, text encoder, UNet with the
 * delta merged, VAE, sampler configuration) on one backend and runs any number
 * of generations on it, one call at a time; one call may generate for several
 * jobs at once (pf_pipeline_txt2img_batch). */
#ifndef PF_PIPELINE_H
#define PF_PIPELINE_H

#include <stdint.h>

#include "backend.h"
#include "perflow_sampler.h"

/* Returned by pf_pipeline_txt2img(_batch) when the cancel callback asked to stop. */
#define PF_CANCELLED (-2)

typedef struct pf_txt2img_params {
    const char *prompt;          /* UTF-8 */
    const char *negative_prompt; /* NULL or "": the empty prompt, still encoded (as diffusers) */
    int width, height;           /* multiples of 8 */
    int steps;                   /* >= 1 (raised to the window count when smaller) */
    float guidance;              /* classifier-free guidance scale; <= 1 skips the unconditional pass */
    uint64_t seed;               /* torch.Generator("cpu").manual_seed(seed) */
    int num_images;              /* images per prompt, >= 1 */
    const char *prediction_type; /* NULL: the model's scheduler_config.json; else ddim_eps|diff_eps|velocity */
    int windows;                 /* 0: the model's scheduler config; else num_time_windows K */
    int clip_skip;               /* 0: last hidden state */
    /* Called after each step (may be NULL). */
    void (*progress)(void *user, int step, int total);
    /* Called before each step (may be NULL); non-zero stops the run with PF_CANCELLED. */
    int (*cancelled)(void *user);
    void *user;
} pf_txt2img_params;

/* Fills p with the documented CLI defaults (4 steps, guidance 4.5, seed 0,
 * 512 x 512, one image, prediction type and windows from the model). */
void pf_txt2img_defaults(pf_txt2img_params *p);

typedef struct pf_pipeline pf_pipeline;

/* Loads a diffusers-layout model folder onto be; delta (NULL for none) is a
 * .safetensors file or a UNet folder of PeRFlow delta weights merged as W + dW. */
int pf_pipeline_load(pf_pipeline **out, pf_backend *be, const char *model_dir, const char *delta, pf_error *err);
void pf_pipeline_free(pf_pipeline *p);

/* Checks the parameters without running anything (the worker rejects bad jobs early). */
int pf_txt2img_check(const pf_pipeline *p, const pf_txt2img_params *prm, pf_error *err);

/* Generates prm->num_images images into images: num_images * height * width * 3
 * floats in [0, 1], image-major, rows top to bottom, RGB interleaved (diffusers'
 * output_type="np"). Returns 0, -1 with err set, or PF_CANCELLED.
 * The same as pf_pipeline_txt2img_batch with one job. */
int pf_pipeline_txt2img(pf_pipeline *p, const pf_txt2img_params *prm, float *images, pf_error *err);

/* 1 when a and b can share one batch call: same width, height, steps and
 * guidance, and the same clip_skip, prediction type and window count once the
 * model's defaults fill in NULL / 0 (so NULL and the model's own type match).
 * Prompts, negative prompts, seeds and num_images may differ. Both must pass
 * pf_txt2img_check. */
int pf_txt2img_batchable(const pf_pipeline *p, const pf_txt2img_params *a, const pf_txt2img_params *b);

/* Generates the images of jobs[0..njobs) in one pass: each job's prompts and
 * latents are stacked into one UNet batch ([unconditional of every job,
 * conditional of every job]) and one VAE decode. images receives every job's
 * num_images images one after another, in job order, each laid out as
 * pf_pipeline_txt2img lays them out. Job i's images are those that
 * pf_pipeline_txt2img(jobs[i]) gives alone (its own generator seeded with its
 * own seed, its own text embeddings, the guidance combine and sampler step per
 * element), up to the backend's summation order across batch sizes: on the
 * CPU backend bit-exact, except against a solo run whose UNet batch is one row
 * (one image, guidance <= 1), where OpenBLAS sums in another order (~1e-6);
 * on a GPU, to float rounding. Every job must pass pf_txt2img_check and be
 * batchable with jobs[0] (pf_txt2img_batchable), else -1 with err naming the
 * job and nothing runs. The callbacks and user of jobs[0] serve the whole
 * batch (progress per step, cancel before each step); the other jobs' are
 * ignored. Returns 0, -1 with err set, or PF_CANCELLED. */
int pf_pipeline_txt2img_batch(pf_pipeline *p, const pf_txt2img_params *const *jobs, int njobs, float *images,
                              pf_error *err);

#endif
