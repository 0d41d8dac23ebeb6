"""goldens_vae.py - vae goldens for make_goldens.py (see there).

AutoencoderKL in float32: decode of seeded latents (square batch of 2 and a
non-square single) and encode of a seeded image in [-1, 1]. Inputs are stored
beside the outputs so the C test reads everything from one file:

    decode_latents   [2, 4, 8, 8]     decode_image   = vae.decode(latents / scaling_factor).sample
    decode_latents_ns [1, 4, 8, 12]   decode_image_ns
    encode_image     [1, 3, H, W]     encode_moments = latent_dist.parameters: the quant_conv
                                      output, (mean, logvar) along channels, logvar unclamped

vae_tiled.safetensors: the same passes with vae.enable_tiling() (diffusers'
tiled_decode / _tiled_encode), at sizes that need several overlapping tiles in
both directions (tile = config sample_size pixels = sample_size / f latents; 64
px / 8 latents for tiny-sd15, 16 px / 8 latents for tiny-sd2), each beside the
untiled result of the same input so the test can show that tiling changed it:

    tiled_latents   [1, 4, 20, 28]    tiled_decode    (4 x 5 tiles)   untiled_decode
    tiled_latents_b2 [2, 4, 13, 19]   tiled_decode_b2 (3 x 4 tiles, batch 2)
    tiled_image     [1, 3, 20f, 28f]  tiled_moments   (4 x 5 tiles)   untiled_moments
    tiled_image_b2  [2, 3, 13f, 19f]  tiled_moments_b2 (3 x 4 tiles, batch 2)

The batch-2 sizes end in a tile of one latent, narrower than the blend width,
so that blend_v / blend_h's min(a, b, blend_extent) is exercised.

Run alone (`.venv/bin/python tests/reference/goldens_vae.py`) it writes only the two
vae_tiled.safetensors, with make_goldens.py's settings and header.
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
    save("vae_tiled.safetensors", tiled(vae))


def tiled(vae):
    """The tiled passes of vae (see the title comment); its own generator, so vae.safetensors is unchanged."""
    sf = vae.config.scaling_factor
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    # Both models have 8-latent tiles; the sizes below need 4 x 5 and 3 x 4 tiles of them.
    assert vae.tile_latent_min_size == 8, vae.tile_latent_min_size
    gen = torch.Generator().manual_seed(4343)
    out = {}
    with torch.no_grad():
        out["tiled_latents"] = torch.randn(1, 4, 20, 28, generator=gen)
        out["tiled_latents_b2"] = torch.randn(2, 4, 13, 19, generator=gen)
        out["tiled_image"] = torch.rand(1, 3, 20 * f, 28 * f, generator=gen) * 2 - 1
        out["tiled_image_b2"] = torch.rand(2, 3, 13 * f, 19 * f, generator=gen) * 2 - 1
        vae.disable_tiling()
        out["untiled_decode"] = vae.decode(out["tiled_latents"] / sf).sample
        out["untiled_moments"] = vae.encode(out["tiled_image"]).latent_dist.parameters
        vae.enable_tiling()
        out["tiled_decode"] = vae.decode(out["tiled_latents"] / sf).sample
        out["tiled_decode_b2"] = vae.decode(out["tiled_latents_b2"] / sf).sample
        out["tiled_moments"] = vae.encode(out["tiled_image"]).latent_dist.parameters
        out["tiled_moments_b2"] = vae.encode(out["tiled_image_b2"]).latent_dist.parameters
        vae.disable_tiling()
    return out


if __name__ == "__main__":
    # Writes vae_tiled.safetensors only: vae.safetensors stays as committed (a rerun
    # here reproduces it only to ~1e-6, the CPU's float summation order).
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_goldens

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for model in ("tiny-sd15", "tiny-sd2"):
        vae = AutoencoderKL.from_pretrained(os.path.join(make_goldens.MODELS, model, "vae"),
                                            torch_dtype=torch.float32).eval()
        make_goldens.save(os.path.join(make_goldens.OUT, model, "vae_tiled.safetensors"), tiled(vae))
    print("wrote vae_tiled.safetensors under", make_goldens.OUT)
