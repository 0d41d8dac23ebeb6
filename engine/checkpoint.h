/* checkpoint.h - a Stable Diffusion model as users have it, loaded into the
 * engine's modules: a diffusers folder, or (issue 14) a single-file LDM
 * checkpoint with the configs of a diffusers folder or of the architecture it
 * is recognised as, sharded files, PeRFlow delta weights for the UNet and LoRAs
 * fused at load. Every weight format meets the engine's (diffusers') names here
 * and nowhere else: model code never learns a second naming. */
#ifndef PF_CHECKPOINT_H
#define PF_CHECKPOINT_H

#include "backend.h"
#include "clip.h"
#include "perflow_sampler.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"

#define PF_MAX_LORAS 16

typedef struct pf_lora_spec {
    const char *path;  /* a LoRA .safetensors file (kohya/A1111, diffusers or PEFT keys) */
    float scale;       /* its strength (1.0) */
} pf_lora_spec;

/* What to load. */
typedef struct pf_model_spec {
    const char *model;        /* a diffusers-layout folder, or one .safetensors checkpoint */
    const char *model_config; /* NULL, or a diffusers folder whose configs, tokenizer and scheduler
                                 describe a single-file model (diffusers' from_single_file(config=)) */
    const char *delta;        /* NULL, or PeRFlow delta weights for the UNet (file or unet/ folder) */
    const pf_lora_spec *loras;
    int n_loras;              /* 0..PF_MAX_LORAS */
} pf_model_spec;

/* The loaded modules; pf_model_parts_free releases whatever is set. */
typedef struct pf_model_parts {
    int sdxl;                 /* StableDiffusionXLPipeline: two text encoders, a text_time UNet */
    int force_zeros;          /* SDXL's force_zeros_for_empty_prompt (model_index.json, default true) */
    pf_tokenizer *tok, *tok2; /* tok2, text_encoder2: SDXL's tokenizer_2 / text_encoder_2, else NULL */
    pf_clip_text_model *text_encoder, *text_encoder2;
    pf_unet *unet;
    pf_vae *vae;
    pf_perflow_config sched; /* the scheduler config's beta keys; the prediction type a PeRFlowScheduler
                                config gives, else the family's PeRFlow default (SD: diff_eps, SDXL: ddim_eps) */
} pf_model_parts;

/* Loads every module of spec onto be and checks that they fit together (text
 * width, latent channels). On error returns -1 with err set and *out zeroed. */
int pf_model_load(pf_model_parts *out, pf_backend *be, const pf_model_spec *spec, pf_error *err);
void pf_model_parts_free(pf_model_parts *parts);

#endif
