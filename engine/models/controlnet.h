/* controlnet.h - ControlNetModel of Stable Diffusion 1.x/2.x, mirroring diffusers'
 * ControlNetModel (diffusers/models/controlnets/controlnet.py): a copy of the
 * UNet's encoder half (conv_in, time embedding, down blocks, mid block, built by
 * unet.c from the same config keys), the conditioning-image embedder, and the
 * zero convolutions that turn each down-path tensor and the mid block's output
 * into the residuals pf_unet_forward accepts. Weights keep diffusers' key names.
 * A ControlNet is used as published: PeRFlow's delta merges into the UNet only. */
#ifndef PF_CONTROLNET_H
#define PF_CONTROLNET_H

#include "unet.h"

#define PF_CONTROLNET_MAX_COND_BLOCKS 8

typedef struct pf_controlnet_config {
    pf_unet_config unet;                 /* the encoder half: the UNet keys of config.json */
    int conditioning_channels;           /* channels of the condition image (3) */
    int num_cond_blocks;                 /* len(conditioning_embedding_out_channels) */
    int cond_channels[PF_CONTROLNET_MAX_COND_BLOCKS]; /* conditioning_embedding_out_channels */
    int bgr;                             /* controlnet_conditioning_channel_order "bgr" */
} pf_controlnet_config;

typedef struct pf_controlnet pf_controlnet;

/* Reads a diffusers ControlNetModel config.json. Keys whose non-default values
 * need code we do not have (global_pool_conditions, class or addition
 * embeddings, another mid block) are errors naming the key. */
int pf_controlnet_config_read(pf_controlnet_config *cfg, const char *path, pf_error *err);

/* Loads a ControlNet folder (config.json + diffusion_pytorch_model[.fp16].safetensors,
 * as published) onto be. On error returns -1 with *out NULL. */
int pf_controlnet_load_dir(pf_controlnet **out, pf_backend *be, const char *dir, pf_error *err);
int pf_controlnet_load(pf_controlnet **out, pf_backend *be, const pf_controlnet_config *cfg, pf_weights *w,
                       const char *prefix, pf_error *err);
void pf_controlnet_free(pf_controlnet *m);
const pf_controlnet_config *pf_controlnet_get_config(const pf_controlnet *m);

/* Checks that m's residuals fit unet's skips (channels, block layout, latent
 * channels, text width) and that its condition image is downscaled by the
 * VAE's factor vae_scale; on mismatch -1 with err naming what differs. */
int pf_controlnet_check_unet(const pf_controlnet *m, const pf_unet *unet, int vae_scale, pf_error *err);

/* Pixels per latent of the condition image: 2^(num_cond_blocks - 1). */
int pf_controlnet_cond_scale(const pf_controlnet *m);

/* ControlNetModel.forward(sample, t, context, cond, conditioning_scale), guess
 * mode off: x (B, Cin, H, W), timesteps B host floats, context (B, L, X), added
 * SDXL's text_embeds and time_ids for a text_time ControlNet (else NULL), cond
 * (B, conditioning_channels, H f, W f) with values in [0, 1], f =
 * pf_controlnet_cond_scale. Fills down_out[pf_unet_num_skips] and *mid_out with
 * new tensors (caller frees) shaped as the UNet's skips and mid output, each
 * multiplied by scale. Returns 0, or -1 with err set (shapes, memory); nothing
 * is left allocated on error. */
int pf_controlnet_forward(pf_controlnet *m, pf_tensor **down_out, pf_tensor **mid_out, const pf_tensor *x,
                          const float *timesteps, const pf_tensor *context, const pf_unet_added *added,
                          const pf_tensor *cond, float scale, pf_error *err);
/* Number of residual tensors in down_out (diffusers' down_block_res_samples). */
int pf_controlnet_num_residuals(const pf_controlnet *m);

#endif
