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
#include "checkpoint.h"
#include "perflow_sampler.h"
#include "vae.h"

/* Returned by pf_pipeline_txt2img(_batch) when the cancel callback asked to stop. */
#define PF_CANCELLED (-2)

/* One ControlNet's part in a run (diffusers' MultiControlNetModel when there are
 * several: their residuals are summed). net indexes the pipeline's attached
 * ControlNets (pf_pipeline_set_controlnets). The condition image is 8-bit RGB,
 * resized to the run's size with Pillow's Lanczos as diffusers' control image
 * processor does; in a refine run image NULL means the refined image itself
 * (the ControlNet-Tile hand-over). */
typedef struct pf_control {
    int net;
    const uint8_t *image;        /* image_width x image_height x 3, or NULL (refine only) */
    int image_width, image_height;
    float scale;                 /* controlnet_conditioning_scale of this net */
} pf_control;

#define PF_MAX_CONTROLS 8

/* One image prompt (IP-Adapter): adapter indexes the attached adapters
 * (pf_pipeline_set_ip_adapters); the image is 8-bit RGB of any size, prepared
 * by the image encoder's CLIPImageProcessor. */
typedef struct pf_ip_image {
    int adapter;
    const uint8_t *image;        /* image_width x image_height x 3 */
    int image_width, image_height;
    float scale;                 /* set_ip_adapter_scale of this adapter */
} pf_ip_image;

#define PF_MAX_IP_ADAPTERS 4

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
    /* SDXL (StableDiffusionXLPipeline). There a NULL negative_prompt means none
     * at all: with the model's force_zeros_for_empty_prompt the unconditional
     * embeddings are zeros, while "" is encoded like any prompt (SD-1.x/2.x
     * encode "" for NULL). NULL or "" prompt_2 / negative_prompt_2 take the
     * prompt / negative prompt (diffusers' `prompt_2 or prompt`). */
    const char *prompt_2, *negative_prompt_2;
    int original_size[2];        /* time ids (height, width); 0, 0: (height, width) of the run */
    int crop_coords[2];          /* (top, left), default 0, 0 */
    int target_size[2];          /* (height, width); 0, 0: (height, width) of the run */
    pf_vae_tiling vae_tiling;    /* decode tiling (default AUTO: untiled unless it would not fit) */
    /* diffusers' StableDiffusionControlNetPipeline when n_controls > 0 (guess mode off):
     * every image of the run takes the same condition images. */
    const pf_control *controls;
    int n_controls;              /* 0..PF_MAX_CONTROLS */
    /* diffusers' load_ip_adapter + set_ip_adapter_scale when n_ip > 0: one image
     * per attached adapter, in adapter order. */
    const pf_ip_image *ip_images;
    int n_ip;                    /* 0, or pf_pipeline_num_ip_adapters */
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

/* Loads the model spec names (checkpoint.h: a diffusers folder or a single
 * file, delta weights, LoRAs) onto be. On error returns -1 with err set. */
int pf_pipeline_load_model(pf_pipeline **out, pf_backend *be, const pf_model_spec *spec, pf_error *err);
/* pf_pipeline_load_model of a diffusers-layout folder; delta (NULL for none) is
 * a .safetensors file or a UNet folder of PeRFlow delta weights merged as W + dW. */
int pf_pipeline_load(pf_pipeline **out, pf_backend *be, const char *model_dir, const char *delta, pf_error *err);
void pf_pipeline_free(pf_pipeline *p);

/* Checks the parameters without running anything (the worker rejects bad jobs early). */
int pf_txt2img_check(const pf_pipeline *p, const pf_txt2img_params *prm, pf_error *err);

typedef enum pf_family { PF_FAMILY_SD = 0, PF_FAMILY_SDXL = 1 } pf_family;
/* The model family: SD-1.x/2.x (one text encoder) or SDXL (two, text_time UNet). */
pf_family pf_pipeline_family(const pf_pipeline *p);
/* The pipeline's VAE (its backend may differ from the model's: pf_model_parts.vae_be). */
const pf_vae *pf_pipeline_vae(const pf_pipeline *p);
/* The sampler settings a run takes when its prediction_type is NULL and its
 * windows 0 (the model's scheduler config, else the family's PeRFlow default),
 * and the family's default image side (512, SDXL 1024). */
void pf_pipeline_defaults(const pf_pipeline *p, const char **prediction_type, int *windows, int *side);
const char *pf_family_name(pf_family f);

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

/* ---- the refiner: diffusers' StableDiffusionControlNetImg2ImgPipeline ----
 * (shared/spec/pipelines.md, part 2). The input images are scaled so their
 * short side is `size` (each side rounded to a multiple of 64 as the original
 * PeRFlow predictor does, pf_refine_size) with Pillow's Lanczos; the scaled
 * image is both the img2img input and the ControlNet condition. */

/* The original predictor's defaults (app/replicate_api/predict.py). */
#define PF_REFINE_PROMPT "best quality"
#define PF_REFINE_NEGATIVE_PROMPT "blur, lowres, bad anatomy, bad hands, cropped, worst quality"
#define PF_REFINE_MAX_SIZE 4096 /* pixels a side of the refined image */

typedef struct pf_refine_params {
    const uint8_t *images;       /* num_images 8-bit RGB images, image_width x image_height each, rows top to bottom */
    int image_width, image_height;
    int num_images;              /* >= 1: one generator serves them all, as one diffusers call with a batch of images */
    const char *prompt;          /* UTF-8; NULL: PF_REFINE_PROMPT */
    const char *negative_prompt; /* NULL: PF_REFINE_NEGATIVE_PROMPT; "" is the empty prompt, still encoded */
    int size;                    /* short side of the refined image (1024); 0: the images' own size (multiples of 8) */
    int steps;                   /* requested inference steps (4) */
    float guidance;              /* 7.5 */
    float strength;              /* (0, 1] (1.0): img2img keeps the last min(int(steps * strength), steps) timesteps */
    float controlnet_scale;      /* controlnet_conditioning_scale (1.0) */
    uint64_t seed;               /* a fresh torch.manual_seed(seed) generator for this stage */
    const char *prediction_type; /* NULL: the model's */
    int windows;                 /* 0: the model's */
    int clip_skip;
    pf_vae_tiling vae_tiling;    /* encode and decode (AUTO) */
    /* The ControlNets of the run; n_controls 0 means one: net 0 on the refined
     * image at controlnet_scale (the PeRFlow refiner). */
    const pf_control *controls;
    int n_controls;              /* 0..PF_MAX_CONTROLS */
    void (*progress)(void *user, int step, int total);
    int (*cancelled)(void *user);
    void *user;
} pf_refine_params;

/* Fills p with the predictor's defaults (prompts NULL = the defaults above,
 * size 1024, 4 steps, guidance 7.5, strength 1, controlnet scale 1, seed 0). */
void pf_refine_defaults(pf_refine_params *p);

/* Loads ControlNetModel folders onto the pipeline's backend and attaches them
 * as nets 0..n-1, replacing any earlier ones; checks each fits the UNet
 * (channels, block layout, condition scale). n 0 detaches all. On error the
 * pipeline keeps what it had and err names the folder. */
int pf_pipeline_set_controlnets(pf_pipeline *p, const char *const *dirs, int n, pf_error *err);
/* pf_pipeline_set_controlnets with one folder (NULL: none). */
int pf_pipeline_set_controlnet(pf_pipeline *p, const char *controlnet_dir, pf_error *err);
/* Number of attached ControlNets; pf_pipeline_has_controlnet: it is not 0. */
int pf_pipeline_num_controlnets(const pf_pipeline *p);
int pf_pipeline_has_controlnet(const pf_pipeline *p);

/* Loads IP-Adapter files (pf_ip_adapter_load) and the image encoder folder
 * (a CLIPVisionModelWithProjection with its preprocessor_config.json) and
 * attaches them as adapters 0..n-1, replacing any earlier ones; each adapter
 * must fit the UNet and take the encoder's image_embeds width (else a one-line
 * error naming both). n 0 detaches all. On error the pipeline keeps what it had. */
int pf_pipeline_set_ip_adapters(pf_pipeline *p, const char *const *files, int n, const char *image_encoder_dir,
                                pf_error *err);
int pf_pipeline_num_ip_adapters(const pf_pipeline *p);

/* The refined image's size for a w x h input: pf_refine_size(w, h, size) when
 * size > 0, else w x h. */
void pf_refine_output_size(const pf_refine_params *prm, int *out_w, int *out_h);

/* Checks the parameters (the sizes the input and size give, strength, steps,
 * that a step is left after strength, the sampler settings) without running
 * anything; images may still be NULL and no ControlNet need be attached, so a
 * caller can refuse a job before fetching anything. On error returns -1 with
 * err's message naming the parameter ("strength must be in (0, 1] ...") and,
 * unless param is NULL, *param the pf_refine_params field at fault ("size",
 * "strength", "steps", "guidance", "controlnet_scale", "windows",
 * "prediction_type", "clip_skip", "num_images", "images"). */
int pf_refine_check(const pf_pipeline *p, const pf_refine_params *prm, const char **param, pf_error *err);

/* Refines prm->num_images images into images_out: num_images * H * W * 3 floats
 * in [0, 1] (the layout of pf_pipeline_txt2img), W x H = pf_refine_output_size.
 * Returns 0, -1 with err set (a parameter pf_refine_check refuses, no
 * ControlNet attached, memory), or PF_CANCELLED. The same as
 * pf_pipeline_refine_batch with one job. */
int pf_pipeline_refine(pf_pipeline *p, const pf_refine_params *prm, float *images_out, pf_error *err);

/* 1 when a and b can share one refine call: same output size, steps, guidance,
 * strength, controlnet scale, clip skip, tiling and sampler settings. */
int pf_refine_batchable(const pf_pipeline *p, const pf_refine_params *a, const pf_refine_params *b);

/* Refines the images of jobs[0..njobs) in one pass (each job's own generator,
 * prompts and images; one UNet + ControlNet batch per step); images_out gets
 * every job's images in job order. Each job's images are those it would get
 * alone, as pf_pipeline_txt2img_batch promises. Callbacks: those of jobs[0]. */
int pf_pipeline_refine_batch(pf_pipeline *p, const pf_refine_params *const *jobs, int njobs, float *images_out,
                             pf_error *err);

#endif
