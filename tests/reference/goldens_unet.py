"""goldens_unet.py - unet goldens for make_goldens.py (see there).

unet.safetensors (every model):
  sample [2, 4, 8, 8], timesteps [2], encoder_hidden_states [2, 77, X] -> out
  down_residual_<i> (one per skip), mid_residual -> out_residuals (ControlNet's
  down_block_additional_residuals / mid_block_additional_residual)
  tiny-sd15 also: sample_wide [2, 4, 8, 16], timesteps_wide -> out_wide
unet_delta.safetensors (tiny-sd15): the same inputs through base + PeRFlow delta
  weights (tests/data/models/tiny-sd15-delta/unet), merged tensor by tensor in float32.
"""
import os

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file


def load_unet(d):
    return UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), torch_dtype=torch.float32).eval()


def run(unet, sample, t, ctx, **kw):
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=ctx, return_dict=False, **kw)[0]


def skip_shapes(unet, sample):
    """Shapes of down_block_res_samples, read off a hooked forward of the down path."""
    shapes = []
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, o: shapes.append(o.shape))]
    for blk in unet.down_blocks:
        hooks.append(blk.register_forward_hook(lambda m, i, o: shapes.extend(r.shape for r in o[1])))
    mid = []
    hooks.append(unet.mid_block.register_forward_hook(lambda m, i, o: mid.append(o.shape)))
    return shapes, mid, hooks


def make(name, models_dir, save, out_dir):
    """Writes the unet goldens of model `name` through save(relative_path, {name: tensor})."""
    d = os.path.join(models_dir, name)
    unet = load_unet(d)
    cfg = unet.config
    g = torch.Generator().manual_seed(1234)
    sample = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    # 1000: PeRFlow's first window starts there; 250.5: a fractional timestep.
    t = torch.tensor([1000.0, 250.5])
    ctx = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    out = {"sample": sample, "timesteps": t, "encoder_hidden_states": ctx, "out": run(unet, sample, t, ctx)}

    shapes, mid, hooks = skip_shapes(unet, sample)
    run(unet, sample, t, ctx)
    for h in hooks:
        h.remove()
    down_res = [torch.randn(s, generator=g) * 0.5 for s in shapes]
    mid_res = torch.randn(mid[0], generator=g) * 0.5
    for i, r in enumerate(down_res):
        out[f"down_residual_{i}"] = r
    out["mid_residual"] = mid_res
    out["out_residuals"] = run(unet, sample, t, ctx, down_block_additional_residuals=tuple(down_res),
                               mid_block_additional_residual=mid_res)

    if name == "tiny-sd15":
        wide = torch.randn(2, cfg.in_channels, 8, 16, generator=g)
        tw = torch.tensor([500.0, 1.0])
        out.update({"sample_wide": wide, "timesteps_wide": tw, "out_wide": run(unet, wide, tw, ctx)})
    save("unet.safetensors", out)

    delta_file = os.path.join(models_dir, name + "-delta", "unet", "diffusion_pytorch_model.safetensors")
    if os.path.exists(delta_file):
        delta = load_file(delta_file)
        sd = unet.state_dict()
        assert set(sd) == set(delta), "delta and base key sets differ"
        unet.load_state_dict({k: v.float() + delta[k].float() for k, v in sd.items()})
        save("unet_delta.safetensors", {"sample": sample, "timesteps": t, "encoder_hidden_states": ctx,
                                        "out": run(unet, sample, t, ctx)})
