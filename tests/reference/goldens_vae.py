"""goldens_vae.py - vae goldens for make_goldens.py (see there).

AutoencoderKL in float32: decode of seeded latents (square batch of 2 and a
non-square single) and encode of a seeded image in [-1, 1]. Inputs are stored
beside the outputs so the C test reads everything from one file:

    decode_latents   [2, 4, 8, 8]     decode_image   = vae.decode(latents / scaling_factor).sample
    decode_latents_ns [1, 4, 8, 12]   decode_image_ns
    encode_image     [1, 3, H, W]     encode_moments = latent_dist.parameters: the quant_conv
                                      output, (mean, logvar) along channels, logvar unclamped
"""
import os

import torch
from diffusers import AutoencoderKL


def make(name, models_dir, save, out_dir):
    """Writes the vae goldens of model `name` through save(relative_path, {name: tensor})."""
    vae = AutoencoderKL.from_pretrained(os.path.join(models_dir, name, "vae"), torch_dtype=torch.float32).eval()
    sf = vae.config.scaling_factor
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    gen = torch.Generator().manual_seed(4242)
    out = {}
    with torch.no_grad():
        # Latents at the scale the sampler produces them (std ~1 after scaling).
        out["decode_latents"] = torch.randn(2, 4, 8, 8, generator=gen)
        out["decode_image"] = vae.decode(out["decode_latents"] / sf).sample
        out["decode_latents_ns"] = torch.randn(1, 4, 8, 12, generator=gen)
        out["decode_image_ns"] = vae.decode(out["decode_latents_ns"] / sf).sample
        # Encoder input: 8x8 latents worth of pixels, non-square when the factor keeps it small.
        h, w = (64, 64) if f == 8 else (8 * f, 12 * f)
        out["encode_image"] = torch.rand(1, 3, h, w, generator=gen) * 2 - 1
        out["encode_moments"] = vae.encode(out["encode_image"]).latent_dist.parameters
    save("vae.safetensors", out)
