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
    int sample_size;                              /* tile side in pixels of tiled passes (512 for SD-1.5):
                                                     config sample_size, the first entry of a list; absent 32 */
    int force_upcast;                             /* config force_upcast (absent: true, diffusers' default):
                                                     StableDiffusionXLPipeline runs such a VAE in float32 */
} pf_vae_config;

typedef struct pf_vae pf_vae;

/* Tiled VAE passes, exactly as diffusers' AutoencoderKL computes them once
 * enable_tiling() is called (tiled_decode, _tiled_encode in 0.35.2). With S =
 * sample_size pixels and T = S / f latents (SD-1.5: 512 and 64):
 *   decode: latent tiles T x T at 0, 3T/4, 3T/2, ... (shorter at the far edges),
 *           each through post_quant_conv and the decoder alone; a decoded
 *           tile's first S/4 rows are blended linearly with the last rows of the
 *           tile above, then its first S/4 columns with the tile to its left
 *           (both blended already); each keeps its first 3S/4 rows and columns.
 *   encode: image tiles S x S at 0, 3S/4, ..., each through the encoder and
 *           quant_conv alone; moments blended over T/4 and cropped to 3T/4.
 * A pass tiles only when its input is larger than one tile along either side
 * (latent side > T for decode, image side > S for encode), as diffusers decides.
 * Tiled results differ from untiled ones (each tile sees only its own
 * neighbourhood in the convolutions, group norms and attention); they equal
 * diffusers' tiled results to float rounding.
 *   ON:   tile whenever diffusers with tiling enabled would.
 *   OFF:  never tile (diffusers' default).
 *   AUTO: tile only where ON would and the untiled pass would not fit the
 *         backend's memory budget (pf_vae_tiling_needed), so at ordinary sizes it
 *         equals OFF. When even one tile does not fit, AUTO still tiles with
 *         diffusers' tile size and lets the pass fail with out of memory:
 *         smaller tiles would give an image diffusers never makes. */
typedef enum pf_vae_tiling { PF_VAE_TILING_AUTO = 0, PF_VAE_TILING_OFF = 1, PF_VAE_TILING_ON = 2 } pf_vae_tiling;
/* "auto", "on", "off" (exactly, lower case) -> *out; anything else, NULL
 * included: -1 with err naming the accepted values, *out unchanged. */
int pf_vae_tiling_parse(pf_vae_tiling *out, const char *s, pf_error *err);
/* "auto", "on" or "off". */
const char *pf_vae_tiling_name(pf_vae_tiling t);

typedef enum pf_vae_pass { PF_VAE_DECODE = 0, PF_VAE_ENCODE = 1 } pf_vae_pass;

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
/* The backend the VAE's weights live on: its inputs and outputs must be made there. */
pf_backend *pf_vae_backend(const pf_vae *m);
/* Pixels per latent along each side: 2^(num_blocks - 1), 8 for SD. */
int pf_vae_scale_factor(const pf_vae *m);

/* Decodes latents [B, L, H, W] as the sampler leaves them into image_out
 * [B, out_channels, H*f, W*f], f = pf_vae_scale_factor, tiled or not as
 * `tiling` says (pf_vae_tiling_needed). Divides by scaling_factor itself
 * (diffusers' pipelines do `latents / scaling_factor` before vae.decode). The
 * image is in [-1, 1] only roughly and is not clamped: the caller clamps and
 * converts. A tiled decode keeps on the backend only one tile's activations
 * and writes image_out a row of tiles at a time; the blending runs on the host
 * in float32 over two rows of decoded tiles. Errors: latents of the wrong
 * channel count, a tiled pass whose tiles would not cover exactly H*f x W*f
 * pixels (diffusers' geometry needs a sample_size that is a multiple of 4f),
 * out of memory (on the backend or the host). Both tensors live on the model's
 * backend; on error image_out holds unspecified values. */
int pf_vae_decode(pf_vae *m, pf_tensor *image_out, const pf_tensor *latents, pf_vae_tiling tiling, pf_error *err);

/* Encodes image [B, in_channels, H, W] with values in [-1, 1] into moments_out
 * [B, 2L, H/f, W/f]: channels [0, L) are the mean, [L, 2L) the log-variance
 * (unclamped), i.e. DiagonalGaussianDistribution.parameters; tiled or not as
 * `tiling` says, like pf_vae_decode (all B images go through each tile
 * together, as diffusers' encode does without slicing). Errors: wrong channel
 * count, H or W not a multiple of f, tiles that would not cover exactly
 * H/f x W/f latents, out of memory. */
int pf_vae_encode(pf_vae *m, pf_tensor *moments_out, const pf_tensor *image, pf_vae_tiling tiling, pf_error *err);

/* Peak bytes that an untiled pass allocates on m's backend beyond its own
 * arguments, for B latents of h x w (decode) or B images of H x W pixels
 * (encode): the activations in the backend's compute dtype as the forward in
 * vae.c allocates and frees them, plus the op scratch the backend takes (CPU:
 * im2col tiles and per-thread attention score blocks, one thread a core; CUDA:
 * its persistent im2col buffer; its flash attention needs none), plus 1/8 for
 * allocator rounding and the small scratch not modelled. The decoder's
 * full-resolution blocks dominate: SD-1.5 at 512 px in float32 738 MiB (peak
 * RSS measured 658 MiB), at 768 px 1638 MiB (measured 1460 MiB).
 * A model of the code, not a measurement; never fails (saturates at SIZE_MAX). */
size_t pf_vae_decode_peak_bytes(const pf_vae *m, int64_t B, int64_t h, int64_t w);
size_t pf_vae_encode_peak_bytes(const pf_vae *m, int64_t B, int64_t H, int64_t W);
/* The same model for a configuration alone (no weights needed): `backend` is
 * the backend's name, "cuda" (float16 activations, its scratch) or anything
 * else for the CPU's (float32). */
size_t pf_vae_peak_bytes(const pf_vae_config *cfg, pf_vae_pass pass, const char *backend, int64_t B, int64_t h,
                         int64_t w);

/* Whether pass `pass` over B inputs of h x w (latents for decode, pixels for
 * encode) runs tiled under `mode` (see pf_vae_tiling): OFF never; ON when h or
 * w exceeds one tile; AUTO when ON would, the tiling fits this configuration
 * (see pf_vae_decode) and the pass's peak bytes exceed
 * pf_backend_mem_available (PERFLOW_MEM_BUDGET overrides that). Never fails. */
int pf_vae_tiling_needed(const pf_vae *m, pf_vae_tiling mode, pf_vae_pass pass, int64_t B, int64_t h, int64_t w);

/* DiagonalGaussianDistribution.sample() times scaling_factor, on the host:
 * latents[b, c] = scaling_factor * (mean + exp(0.5 * clamp(logvar, -30, 20)) * noise)
 * with moments [B, 2C, H, W] from pf_vae_encode and noise [B, C, H, W] drawn by
 * the caller (torch-compatible RNG, so results match diffusers for a seed).
 * latents_out is [B, C, H, W]. */
void pf_vae_sample_latents(float *latents_out, const float *moments, const float *noise, int B, int C, int H, int W,
                           float scaling_factor);

#endif
