/* unet.h - the denoising UNet of Stable Diffusion 1.x/2.x, mirroring diffusers'
 * UNet2DConditionModel (diffusers/models/unets/unet_2d_condition.py) with the
 * block types of that family. Weights keep diffusers' key names. */
#ifndef PF_UNET_H
#define PF_UNET_H

#include "backend.h"
#include "config.h"
#include "weights.h"

/* More blocks than any SD-family UNet has (SD-1.x/2.x use 4). */
#define PF_UNET_MAX_BLOCKS 8

/* The subset of diffusers' UNet2DConditionModel config that this family uses.
 * Arrays are indexed by down block i (0 = highest resolution); the up path uses
 * them reversed, as diffusers does. */
typedef struct pf_unet_config {
    int in_channels;                            /* Cin */
    int out_channels;                           /* Cout */
    int num_blocks;                             /* len(block_out_channels) */
    int block_out_channels[PF_UNET_MAX_BLOCKS]; /* C[i] */
    int layers_per_block[PF_UNET_MAX_BLOCKS];   /* resnets per down block (up blocks: one more) */
    int down_cross_attn[PF_UNET_MAX_BLOCKS];    /* 1: CrossAttnDownBlock2D, 0: DownBlock2D */
    int up_cross_attn[PF_UNET_MAX_BLOCKS];      /* up block j: 1 CrossAttnUpBlock2D, 0 UpBlock2D */
    /* Attention heads of down block i's transformers. diffusers' legacy naming:
     * with num_attention_heads null, config "attention_head_dim" is the head COUNT. */
    int num_heads[PF_UNET_MAX_BLOCKS];
    int transformer_layers[PF_UNET_MAX_BLOCKS]; /* BasicTransformerBlocks per Transformer2DModel */
    int cross_attention_dim;                    /* X, last dim of the context */
    int use_linear_projection;                  /* proj_in/proj_out: Linear (1) or 1x1 Conv2d (0) */
    int norm_num_groups;                        /* G */
    float norm_eps;
    int flip_sin_to_cos;
    float freq_shift;
    int time_embed_dim;                         /* T, 4 C[0] unless time_embedding_dim says */
    /* SDXL: addition_embed_type "text_time", the pooled text embedding and the
     * time ids (sinusoids of addition_time_embed_dim each) through add_embedding */
    int text_time;
    int addition_time_embed_dim;                /* A */
    int add_embed_in;                           /* projection_class_embeddings_input_dim = P + 6 A */
} pf_unet_config;

/* One IP-Adapter's image prompt in a UNet call (diffusers' IPAdapterAttnProcessor2_0
 * of every cross-attention): its projected image tokens and its weights. */
typedef struct pf_unet_ip {
    const pf_tensor *tokens;                    /* (B, N, X): encoder_hid_proj(image_embeds) */
    pf_tensor *const *to_k_ip, *const *to_v_ip; /* per cross-attention i (pf_unet_num_cross_attentions): (C_i, X) */
    float scale;                                /* set_ip_adapter_scale */
} pf_unet_ip;

/* added_cond_kwargs: SDXL's (addition_embed_type "text_time") and the image
 * prompts of IP-Adapters (any UNet; n_ip 0: none). */
typedef struct pf_unet_added {
    const pf_tensor *text_embeds;               /* (B, P) pooled text embedding */
    const float *time_ids;                      /* B x 6 host floats: original (h, w), crop (top, left), target (h, w) */
    const pf_unet_ip *ip;                       /* n_ip image prompts, summed in order */
    int n_ip;
} pf_unet_added;

typedef struct pf_unet pf_unet;

/* Reads a diffusers unet/config.json. Keys this family does not use must hold
 * their defaults; any other value is an error naming the key. */
int pf_unet_config_read(pf_unet_config *cfg, const char *path, pf_error *err);
/* The same from a loaded config; up_blocks 0 skips up_block_types (a
 * ControlNetModel config, which has the down and mid half only). */
int pf_unet_config_parse(pf_unet_config *cfg, const pf_config *c, int up_blocks, pf_error *err);

/* Loads every weight (keys under `prefix`, "" for a diffusers unet/ file) from w,
 * checking each shape against cfg. On error returns -1 with *out NULL. */
int pf_unet_load(pf_unet **out, pf_backend *be, const pf_unet_config *cfg, pf_weights *w, const char *prefix,
                 pf_error *err);
/* Loads model_dir/unet (config.json + diffusion_pytorch_model[.fp16].safetensors).
 * delta, when not NULL, is PeRFlow delta weights added to the base: a .safetensors
 * file or a folder holding diffusion_pytorch_model[.fp16].safetensors. */
int pf_unet_load_dir(pf_unet **out, pf_backend *be, const char *model_dir, const char *delta, pf_error *err);
void pf_unet_free(pf_unet *m);
const pf_unet_config *pf_unet_get_config(const pf_unet *m);

/* The cross-attentions (attn2 of every BasicTransformerBlock) in diffusers'
 * attn_processors order (down blocks, up blocks, mid block): IP-Adapter file
 * key ip_adapter.{2i+1} belongs to cross-attention i, whose queries have
 * pf_unet_cross_attention_channels(m, i) channels. */
int pf_unet_num_cross_attentions(const pf_unet *m);
int pf_unet_cross_attention_channels(const pf_unet *m, int i);

/* Number of down-path skip tensors (diffusers' down_block_res_samples): the
 * length of down_residuals in pf_unet_forward. */
int pf_unet_num_skips(const pf_unet *m);

/* One UNet evaluation: out[B, Cout, H, W] = unet(x[B, Cin, H, W], timesteps, context).
 * timesteps: B host floats. context: [B, L, X] encoder_hidden_states. Any H, W >= 1:
 * where a side is not a multiple of 2^(num_blocks - 1) the down path rounds odd
 * sides up and each upsampler resizes to its skip's size, as diffusers does.
 * down_residuals (NULL or pf_unet_num_skips tensors shaped like the skips) and
 * mid_residual (NULL or the mid block's output shape) are ControlNet's
 * down_block_additional_residuals / mid_block_additional_residual, added to the
 * skips and to the mid block output. ControlNet always passes both; diffusers'
 * deprecated T2I-adapter use of down residuals alone is not supported: each given
 * list is applied as ControlNet's. Tensors live on the model's backend; out is
 * made by the caller. On error returns -1 and fills err; out is then undefined. */
int pf_unet_forward(pf_unet *m, pf_tensor *out, const pf_tensor *x, const float *timesteps, const pf_tensor *context,
                    const pf_tensor *const *down_residuals, const pf_tensor *mid_residual, pf_error *err);
/* pf_unet_forward with added conditions: a "text_time" UNet (SDXL) needs them
 * (else -1 with err), any other ignores them (NULL). */
int pf_unet_forward_added(pf_unet *m, pf_tensor *out, const pf_tensor *x, const float *timesteps,
                          const pf_tensor *context, const pf_unet_added *added, const pf_tensor *const *down_residuals,
                          const pf_tensor *mid_residual, pf_error *err);

/* ---- the encoder half, which ControlNetModel copies (controlnet.c) ----
 * A model loaded with pf_unet_load_encoder has only conv_in, the time embedding,
 * the down blocks and the mid block; pf_unet_forward refuses it (invariant). */
int pf_unet_load_encoder(pf_unet **out, pf_backend *be, const pf_unet_config *cfg, pf_weights *w,
                         const char *prefix, pf_error *err);
/* silu(time_embedding(time_proj(timesteps)) [+ add_embedding(cat(text_embeds,
 * add_time_proj(time_ids)))]): (B, T), what every resnet takes. timesteps: B host
 * floats; added: NULL, or SDXL's conditions (required by a text_time UNet: the
 * caller checks). Returns a new tensor (errors are the backend's sticky error). */
pf_tensor *pf_unet_time_embed(const pf_unet *m, const float *timesteps, int64_t B, const pf_unet_added *added);
/* conv_in(x[B, Cin, H, W]): a new (B, C0, H, W) tensor. */
pf_tensor *pf_unet_conv_in(const pf_unet *m, const pf_tensor *x);
/* The down blocks and the mid block on h (B, C0, H, W), conv_in's output (plus,
 * in a ControlNet, the conditioning embedding). h becomes skips[0]; skips
 * (pf_unet_num_skips entries) receives every down_block_res_samples tensor,
 * owned by the caller; returns the mid block's output (B, C[last], h', w'). */
pf_tensor *pf_unet_down_mid(const pf_unet *m, pf_tensor *h, const pf_tensor *temb, const pf_tensor *context,
                            pf_tensor **skips);

#endif
