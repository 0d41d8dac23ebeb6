/* convert.h - the one place where weight namings meet (shared/STYLE.md, point 8):
 * every format a user brings is presented to the model code (unet.c, vae.c,
 * clip.c) under the diffusers names it already asks for, and nowhere else does
 * a second naming appear.
 *
 *   LDM single files   the original CompVis/Stability layout: model.diffusion_model.*
 *                      (UNet), first_stage_model.* (VAE), cond_stage_model.transformer.*
 *                      (SD-1.x CLIP) or cond_stage_model.model.* (SD-2.x OpenCLIP, whose
 *                      fused in_proj is split into q/k/v); SDXL's conditioner.embedders.0.
 *                      transformer.* (CLIP, text_encoder) and conditioner.embedders.1.model.*
 *                      (OpenCLIP bigG, text_encoder_2, its text_projection transposed) and
 *                      the UNet's label_emb (add_embedding). The renaming is diffusers'
 *                      convert_ldm_{unet,vae}_checkpoint / convert_ldm_clip_checkpoint /
 *                      convert_open_clip_checkpoint (loaders/single_file_utils.py), made
 *                      lazily: each diffusers name becomes a view of the file's tensor
 *                      (weights.h), nothing is copied. Keys skipped on purpose are
 *                      listed once, in convert.c (ldm_skipped).
 *   LoRA keys          kohya/A1111 (lora_unet_*, lora_te_*, SDXL's lora_te1_* and lora_te2_*:
 *                      .lora_down/.lora_up/.alpha; SDXL UNets also in the original block
 *                      numbering, lora_unet_input_blocks_4_1_*, renamed as single files are),
 *                      diffusers (*.lora.down/up, *_lora.down/up, *.lora_linear_layer.down/up,
 *                      under unet./text_encoder.) and PEFT (lora_A/lora_B): each key becomes
 *                      its component, the module it changes and its role. kohya's
 *                      underscored module names are resolved against the model's real
 *                      weight names, not guessed back into dots.
 *   diffusers folders  already the engine's names; a text encoder saved without the
 *                      "text_model." prefix (transformers 5) is read as it is. */
#ifndef PF_CONVERT_H
#define PF_CONVERT_H

#include "safetensors.h"
#include "weights.h"

/* The components a checkpoint holds, in diffusers' folder names (the second
 * text encoder: SDXL only). */
typedef enum pf_part { PF_PART_UNET, PF_PART_VAE, PF_PART_TEXT_ENCODER, PF_PART_TEXT_ENCODER_2, PF_NUM_PARTS } pf_part;
#define PF_LDM_PARTS 3 /* the parts of an SD-1.x/2.x LDM file: UNet, VAE, text encoder (SDXL: all four) */
/* "unet", "vae", "text_encoder", "text_encoder_2". */
const char *pf_part_name(pf_part p);

/* ---- LDM single-file checkpoints ---- */

typedef enum pf_ldm_family { PF_LDM_UNKNOWN, PF_LDM_SD1, PF_LDM_SD2, PF_LDM_SDXL } pf_ldm_family;

/* What an LDM checkpoint holds, from its tensor names and shapes alone. */
typedef struct pf_ldm_info {
    int count[PF_NUM_PARTS]; /* tensors of each component (EMA copies not counted) */
    int ema;                 /* model_ema.* tensors (skipped: the UNet's own weights are used, as diffusers does) */
    int skipped;             /* other keys skipped on purpose (schedule buffers, VAE loss, position ids, ...) */
    int unknown;             /* keys of no known layout */
    char first_unknown[160]; /* the first of them (quoted), "" when none */
    int openclip;            /* the text encoder is OpenCLIP's layout (cond_stage_model.model.*) */
    int context_dim;         /* the UNet's cross-attention width (attn2.to_k input), 0 when not found */
    int in_channels;         /* the UNet's input channels, 0 when not found */
    int text_width;          /* the text encoder's token-embedding width, 0 when not found */
    int text2_width;         /* SDXL's second (OpenCLIP) text encoder's, 0 when not found */
    pf_ldm_family family;        /* SD-1.x: context 768, CLIP 768; SD-2.x: 1024, OpenCLIP 1024; 4 input channels */
} pf_ldm_info;

/* Classifies st's keys. Returns 1 when st is an LDM checkpoint (a key under an
 * LDM component prefix, or SDXL's conditioner.*), else 0 (info still filled). */
int pf_ldm_probe(pf_ldm_info *info, const pf_safetensors *st);
/* "SD-1.x", "SD-2.x", "SDXL", "unknown". */
const char *pf_ldm_family_name(pf_ldm_family f);
/* One line saying what was found ("UNet: cross-attention width 32, 4 input
 * channels; text encoder: CLIP, width 32; VAE: 250 tensors"), for messages. */
void pf_ldm_describe(char *buf, size_t n, const pf_ldm_info *info);

/* Opens component `part` of the LDM checkpoint at path as a weight set under
 * diffusers names. The UNet's block numbering needs layers_per_block and the
 * VAE's up blocks its block count (both from the component's config, as
 * diffusers' conversion takes them). A checkpoint without that component is an
 * error naming it and the key prefix looked for. On error -1, *out NULL. */
int pf_ldm_open(pf_weights **out, const char *path, pf_part part, int layers_per_block, int vae_blocks,
                pf_error *err);

/* The prefix under which a text encoder's weights sit: "text_model."
 * (transformers 4, LDM conversions) or "" (transformers 5). */
const char *pf_text_encoder_prefix(const pf_weights *w);

/* ---- LoRA keys ---- */

typedef enum pf_lora_role {
    PF_LORA_DOWN,  /* lora_down / lora_A / .down: (rank, in[, kh, kw]) */
    PF_LORA_UP,    /* lora_up / lora_B / .up: (out, rank[, 1, 1]) */
    PF_LORA_ALPHA, /* alpha: a scalar */
    PF_LORA_MID,   /* LoCon's CP-decomposed lora_mid (not supported) */
    PF_LORA_DORA,  /* dora_scale / lora_magnitude_vector (DoRA) */
    PF_LORA_BIAS,  /* lora_B.bias (PEFT's lora_bias, not supported) */
} pf_lora_role;

typedef enum pf_lora_format { PF_LORA_KOHYA, PF_LORA_DIFFUSERS, PF_LORA_PEFT } pf_lora_format;

typedef struct pf_lora_key {
    int part;               /* a pf_part; -1: no component prefix (the UNet or a text encoder may hold it) */
    pf_lora_format format;
    pf_lora_role role;
    int kohya;              /* module is kohya's underscored name */
    char module[512];       /* the module changed: a diffusers name ("down_blocks.0.attentions.0.proj_in"),
                               or kohya's underscored one without lora_unet_ / lora_te_ */
} pf_lora_key;

/* Parses one key of a LoRA file. Returns 0, or -1 when key is no LoRA key
 * spelling this knows (out is then unspecified). */
int pf_lora_key_parse(pf_lora_key *out, const char *key);
/* "kohya", "diffusers", "PEFT". */
const char *pf_lora_format_name(pf_lora_format f);

/* kohya's SDXL UNet modules in the original (SGM/LDM) block numbering, which
 * sd-scripts writes for SDXL ("input_blocks_4_1_transformer_blocks_0_attn1_to_q",
 * "input_blocks_1_0_in_layers_2", "middle_block_2_emb_layers_1",
 * "output_blocks_2_2_conv"): out (n bytes) gets the diffusers module in kohya's
 * underscored form ("down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q")
 * for a UNet of layers_per_block layers per block. Returns 0, or -1 when module
 * is not in that numbering (or layers_per_block < 1); out is then unspecified. */
int pf_lora_kohya_sgm(char *out, size_t n, const char *module, int layers_per_block);

/* The weight of w (a component `part`'s set) that module k changes, written to
 * out (n bytes) as its name: a dotted module matches MODULE.weight exactly; a
 * kohya module the one weight whose name, with "." read as "_", is
 * MODULE_weight. kohya's SDXL UNet modules in the original block numbering
 * (input_blocks_I_J_*, middle_block_I_*, output_blocks_I_J_*, resnets by their
 * LDM names) are renumbered first, which needs the UNet's layers_per_block
 * (unused for other parts). Returns 0, or -1 when none matches. */
int pf_lora_resolve(char *out, size_t n, const pf_weights *w, pf_part part, const pf_lora_key *k,
                    int layers_per_block);

#endif
