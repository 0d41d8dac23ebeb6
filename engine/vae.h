/* vae.h - the KL autoencoder of Stable Diffusion 1.x/2.x, mirroring diffusers'
 * AutoencoderKL (diffusers/models/autoencoders/autoencoder_kl.py, vae.py):
 * the Decoder that turns latents into images and the Encoder that turns images
 * into the moments of the latent distribution (img2img, ControlNet inputs).
 *
 * Only the SD layout is supported: DownEncoderBlock2D / UpDecoderBlock2D
 * blocks, SiLU, GroupNorm, a mid block with one attention, quant_conv and
 * post_quant_conv present, no shift_factor. */
#ifndef PF_VAE_H
#define PF_VAE_H

#include "backend.h"
#include "weights.h"

#define PF_VAE_MAX_BLOCKS 8

typedef struct pf_vae_config {
    int in_channels;                              /* image channels (3) */
    int out_channels;                             /* image channels out (3) */
    int latent_channels;                          /* L (4) */
    int num_blocks;                               /* len(block_out_channels) */
    int block_out_channels[PF_VAE_MAX_BLOCKS];    /* encoder order: [128, 256, 512, 512] for SD */
    int layers_per_block;                         /* resnets per down block; up blocks have one more */
    int norm_num_groups;
    float scaling_factor;                         /* latents = scaling_factor * z (0.18215 for SD-1.x/2.x) */
} pf_vae_config;

typedef struct pf_vae pf_vae;

/* Reads a diffusers AutoencoderKL config.json. Unsupported values (another block
 * type, activation, a shift_factor, no quant convs, no mid-block attention) are
 * errors naming the key and the value found. */
int pf_vae_config_read(pf_vae_config *cfg, const char *path, pf_error *err);

/* Loads the encoder and decoder weights under `prefix` ("" for diffusers
 * folders) with diffusers' key names, checking every shape against cfg; the
 * attention's pre-0.14 names (query, key, value, proj_attn) are accepted too.
 * On error returns -1 with *out NULL. */
int pf_vae_load(pf_vae **out, pf_backend *be, const pf_vae_config *cfg, pf_weights *w, const char *prefix,
                pf_error *err);
/* Loads the vae component of a diffusers-layout model folder. */
int pf_vae_load_dir(pf_vae **out, pf_backend *be, const char *model_dir, pf_error *err);
void pf_vae_free(pf_vae *m);
const pf_vae_config *pf_vae_config_of(const pf_vae *m);
/* Pixels per latent along each side: 2^(num_blocks - 1), 8 for SD. */
int pf_vae_scale_factor(const pf_vae *m);

/* Decodes latents [B, L, H, W] as the sampler leaves them into image_out
 * [B, out_channels, H*f, W*f], f = pf_vae_scale_factor. Divides by
 * scaling_factor itself (diffusers' pipelines do `latents / scaling_factor`
 * before vae.decode). The image is in [-1, 1] only roughly and is not clamped:
 * the caller clamps and converts. Errors: latents of the wrong channel count,
 * out of memory. Both tensors live on the model's backend. */
int pf_vae_decode(pf_vae *m, pf_tensor *image_out, const pf_tensor *latents, pf_error *err);

/* Encodes image [B, in_channels, H, W] with values in [-1, 1] into moments_out
 * [B, 2L, H/f, W/f]: channels [0, L) are the mean, [L, 2L) the log-variance
 * (unclamped), i.e. DiagonalGaussianDistribution.parameters. Errors: wrong
 * channel count, H or W not a multiple of f, out of memory. */
int pf_vae_encode(pf_vae *m, pf_tensor *moments_out, const pf_tensor *image, pf_error *err);

/* DiagonalGaussianDistribution.sample() times scaling_factor, on the host:
 * latents[b, c] = scaling_factor * (mean + exp(0.5 * clamp(logvar, -30, 20)) * noise)
 * with moments [B, 2C, H, W] from pf_vae_encode and noise [B, C, H, W] drawn by
 * the caller (torch-compatible RNG, so results match diffusers for a seed).
 * latents_out is [B, C, H, W]. */
void pf_vae_sample_latents(float *latents_out, const float *moments, const float *noise, int B, int C, int H, int W,
                           float scaling_factor);

#endif
