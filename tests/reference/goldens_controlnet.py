"""goldens_controlnet.py - ControlNetModel goldens and UNet goldens at latent sizes that
are not multiples of 2^(blocks-1), for make_goldens.py (see there).

tiny-sd15/controlnet.safetensors (the ControlNet tests/data/models/tiny-sd15-controlnet):
  sample [2, 4, 8, 8], timesteps [2], encoder_hidden_states [2, 77, 32], cond [2, 3, 64, 64]
  in [0, 1] -> down_<i> / mid at conditioning_scale 0.7, down_s1_<i> / mid_s1 at 1.0,
  down_bgr_<i> / mid_bgr at 0.7 with controlnet_conditioning_channel_order "bgr";
  sample_odd [1, 4, 5, 7], timesteps_odd, cond_odd [1, 3, 40, 56] -> down_odd_<i> / mid_odd
  (the first encoder_hidden_states row), and unet_out_odd: the UNet on sample_odd with
  those residuals (the whole ControlNet step at an odd latent size).
<model>/unet_odd.safetensors: the UNet on latents whose sides are not multiples of
  2^(blocks-1) (diffusers forwards each skip's size to the upsamplers):
  sample [1, 4, h, w], timesteps [1], encoder_hidden_states [1, 77, X] -> out, and a
  second size sample_b -> out_b.
"""
import os

import torch
from diffusers import ControlNetModel, UNet2DConditionModel


def run_cn(cn, sample, t, ctx, cond, scale):
    with torch.no_grad():
        down, mid = cn(sample, t, encoder_hidden_states=ctx, controlnet_cond=cond, conditioning_scale=scale,
                       return_dict=False)
    return down, mid


def put(out, prefix, down, mid):
    for i, d in enumerate(down):
        out[f"{prefix}_{i}"] = d
    out["mid" + prefix[len("down"):]] = mid


def make_controlnet(models_dir, save):
    cn_dir = os.path.join(models_dir, "tiny-sd15-controlnet")
    cn = ControlNetModel.from_pretrained(cn_dir, torch_dtype=torch.float32).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(models_dir, "tiny-sd15", "unet")).eval()
    g = torch.Generator().manual_seed(777)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([1000.0, 375.0])
    ctx = torch.randn(2, 77, 32, generator=g)
    cond = torch.rand(2, 3, 64, 64, generator=g)
    out = {"sample": sample, "timesteps": t, "encoder_hidden_states": ctx, "cond": cond}
    down, mid = run_cn(cn, sample, t, ctx, cond, 0.7)
    put(out, "down", down, mid)
    down1, mid1 = run_cn(cn, sample, t, ctx, cond, 1.0)
    put(out, "down_s1", down1, mid1)
    # The residuals must be able to fail a test: clearly non-zero, and the condition matters.
    assert min(float(d.abs().mean()) for d in down) > 1e-2, "residuals near zero"
    other, _ = run_cn(cn, sample, t, ctx, torch.rand(2, 3, 64, 64, generator=g), 0.7)
    assert float((other[0] - down[0]).abs().mean()) > 1e-3, "the condition image does not matter"

    so = torch.randn(1, 4, 5, 7, generator=g)
    to = torch.tensor([500.0])
    co = torch.rand(1, 3, 40, 56, generator=g)
    out.update({"sample_odd": so, "timesteps_odd": to, "cond_odd": co})
    down_o, mid_o = run_cn(cn, so, to, ctx[:1], co, 0.7)
    put(out, "down_odd", down_o, mid_o)
    with torch.no_grad():
        out["unet_out_odd"] = unet(so, to, encoder_hidden_states=ctx[:1], down_block_additional_residuals=down_o,
                                   mid_block_additional_residual=mid_o, return_dict=False)[0]

    cn.register_to_config(controlnet_conditioning_channel_order="bgr")
    down_b, mid_b = run_cn(cn, sample, t, ctx, cond, 0.7)
    put(out, "down_bgr", down_b, mid_b)
    assert float((down_b[0] - down[0]).abs().mean()) > 1e-3
    save("tiny-sd15", "controlnet.safetensors", out)


# model -> the two odd latent sizes: tiny-sd15 has 2 blocks (sides must be even to
# avoid the forwarded sizes), tiny-sd2 has 3 (multiples of 4).
ODD_SIZES = {"tiny-sd15": ((9, 17), (45, 80)), "tiny-sd2": ((13, 18), (10, 7))}


def make_unet_odd(models_dir, save):
    for name, (a, b) in ODD_SIZES.items():
        unet = UNet2DConditionModel.from_pretrained(os.path.join(models_dir, name, "unet")).eval()
        g = torch.Generator().manual_seed(4545)
        X = unet.config.cross_attention_dim
        out = {"encoder_hidden_states": torch.randn(1, 77, X, generator=g)}
        for sfx, (h, w), t in (("", a, 999.0), ("_b", b, 123.0)):
            s = torch.randn(1, 4, h, w, generator=g)
            ts = torch.tensor([t])
            with torch.no_grad():
                o = unet(s, ts, encoder_hidden_states=out["encoder_hidden_states"], return_dict=False)[0]
            out.update({"sample" + sfx: s, "timesteps" + sfx: ts, "out" + sfx: o})
        save(name, "unet_odd.safetensors", out)


def make_all(models_dir, save):
    """save(model, relative_path, {name: tensor})"""
    make_controlnet(models_dir, save)
    make_unet_odd(models_dir, save)
