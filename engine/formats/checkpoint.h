/* checkpoint.h - a Stable Diffusion model as users have it, loaded into the
 * engine's modules: a diffusers folder (any component's weights may be
 * sharded), or a single-file LDM checkpoint (.safetensors) with the configs
 * of a diffusers folder or of the architecture it is recognised as; PeRFlow
 * delta weights for the UNet; LoRAs fused at load. Every weight format meets
 * the engine's (diffusers') names in convert.h and nowhere else: model code
 * never learns a second naming.
 *
 * Single files. The architecture is recognised from tensor names and shapes
 * (convert.h, pf_ldm_probe): SD-1.x (CLIP text encoder, cross-attention width
 * 768) or SD-2.x (OpenCLIP, 1024), whose configs, tokenizer and scheduler the
 * project ships in configs/sd15 and configs/sd21 (pf_configs_dir). model_config
 * names a diffusers folder whose configs describe the file instead, as
 * diffusers' from_single_file(path, config=DIR) does; its weights, if any, are
 * not read. What no file says: the prediction type (epsilon or v) is the
 * scheduler config's, and the sampler's own --prediction-type overrides it.
 * EMA-only and pruned files load; "pruned" files with model_ema.* copies use
 * the non-EMA UNet weights, as diffusers does. .ckpt (pickle) files are refused.
 *
 * LoRAs (lora.h): each fused into the UNet's and text encoder's float32 weights
 * as they load, after the delta, in the order given. */
#ifndef PF_CHECKPOINT_H
#define PF_CHECKPOINT_H

#include "backend.h"
#include "clip.h"
#include "convert.h"
#include "perflow_sampler.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"

#define PF_MAX_LORAS 16

typedef struct pf_lora_spec {
    const char *path;  /* a LoRA .safetensors file (kohya/A1111, diffusers or PEFT keys) */
    float scale;       /* its strength (1.0) */
} pf_lora_spec;

/* What pf_model_load says about one LoRA. */
typedef struct pf_lora_report {
    pf_lora_format format;
    int total;              /* tensors in the file */
    int matched;            /* of those, fused into a weight (up, down and alpha of each module) */
    int unmatched;          /* total - matched: their keys are listed in unmatched_keys */
    char unmatched_keys[1024]; /* quoted, comma-separated, cut with "... and N more"; "" when none */
} pf_lora_report;

/* What to load. */
typedef struct pf_model_spec {
    const char *model;        /* a diffusers-layout folder, or one .safetensors checkpoint */
    const char *model_config; /* NULL, or a diffusers folder whose configs, tokenizer and scheduler
                                 describe a single-file model (diffusers' from_single_file(config=)) */
    const char *delta;        /* NULL, or PeRFlow delta weights for the UNet (file, index or unet/ folder) */
    const pf_lora_spec *loras;
    int n_loras;              /* 0..PF_MAX_LORAS */
    pf_lora_report *lora_reports; /* NULL, or n_loras reports that pf_model_load fills */
} pf_model_spec;

/* The loaded modules; pf_model_parts_free releases whatever is set. */
typedef struct pf_model_parts {
    int sdxl;                 /* StableDiffusionXLPipeline: two text encoders, a text_time UNet */
    int force_zeros;          /* SDXL's force_zeros_for_empty_prompt (model_index.json, default true) */
    pf_tokenizer *tok, *tok2; /* tok2, text_encoder2: SDXL's tokenizer_2 / text_encoder_2, else NULL */
    pf_clip_text_model *text_encoder, *text_encoder2;
    pf_unet *unet;
    pf_vae *vae;
    pf_backend *vae_be;      /* the VAE's backend when it is not the model's (an SDXL VAE with
                                force_upcast beside a float16 model runs in float32, as diffusers
                                upcasts it); owned, freed after the VAE. NULL: the model's */
    pf_perflow_config sched; /* the scheduler config's beta keys; the prediction type a PeRFlowScheduler
                                config gives, else the family's PeRFlow default (SD: diff_eps, SDXL: ddim_eps) */
} pf_model_parts;

/* Loads every module of spec onto be and checks that they fit together (text
 * width, latent channels). A LoRA that matches no weight, or whose module does
 * not fit the weight it names, is an error; keys that match nothing are listed
 * in its report (spec->lora_reports) for the caller to warn about. On error
 * returns -1 with err set (one line naming the file and the problem) and *out
 * zeroed. */
int pf_model_load(pf_model_parts *out, pf_backend *be, const pf_model_spec *spec, pf_error *err);
void pf_model_parts_free(pf_model_parts *parts);

/* ---- the steps of pf_model_load, for inspect and the tests ---- */

/* A model opened but not loaded: its configs, and each component's weight set
 * as the model code will read it (delta and LoRAs attached). */
typedef struct pf_checkpoint {
    char config_root[4096];     /* the folder configs, tokenizer and scheduler come from */
    int single_file;            /* spec->model is an LDM checkpoint */
    int sdxl, force_zeros;      /* model_index.json (folders): pf_model_parts' */
    pf_ldm_info ldm;            /* what the single file holds (single_file only) */
    pf_unet_config unet_cfg;
    pf_vae_config vae_cfg;
    pf_clip_text_config text_cfg, text2_cfg; /* text2_cfg: SDXL's text_encoder_2 */
    pf_weights *w[PF_NUM_PARTS];  /* w[PF_PART_TEXT_ENCODER_2]: SDXL folders only, else NULL */
    struct pf_lora *loras[PF_MAX_LORAS];
    int n_loras;
} pf_checkpoint;

/* Opens spec (pf_model_load's checks of files, configs, the delta and the
 * LoRAs' matching). On error -1 with err set and *out NULL. */
int pf_checkpoint_open(pf_checkpoint **out, const pf_model_spec *spec, pf_error *err);
void pf_checkpoint_close(pf_checkpoint *c);

/* Attaches LoRA l at scale to c's UNet and text encoders (lora.h,
 * pf_lora_attach; modules without a component prefix go to the first that has
 * their weight, the UNet first). A module that fits no weight of its name is
 * an error naming the LoRA's family and the model's ("an SD-1.x/2.x LoRA on
 * an SDXL model"). Returns the modules matched, or -1 with err set. The caller
 * keeps l until c is closed. */
int pf_checkpoint_attach_lora(pf_checkpoint *c, struct pf_lora *l, float scale, pf_error *err);

/* The folder of the configs the project ships (configs/: sd15, sd21):
 * $PERFLOW_CONFIGS when set, else share/perflow/configs beside an installed
 * program (BINDIR/../share/perflow/configs, where make install puts them), else
 * the source tree's configs/ this engine was built from. */
const char *pf_configs_dir(void);

#endif
