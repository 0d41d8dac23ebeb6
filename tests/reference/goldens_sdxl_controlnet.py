#!/usr/bin/env python3
"""goldens_sdxl_controlnet.py - SDXL ControlNets with diffusers as the oracle (issue 22). Run from
the repository root with the reference venv, after make_tiny_models.py:
    .venv/bin/python tests/reference/goldens_sdxl_controlnet.py
It writes only its own group:

  tests/data/models/tiny-sdxl-controlnet/, tiny-sdxl-controlnet-b/  ControlNetModels of tiny-sdxl
        (ControlNetModel.from_unet: addition_embed_type "text_time", so the net takes SDXL's pooled
        text embedding and time ids as the UNet does), every weight perturbed (the zero convolutions
        would otherwise give zero residuals and no test could see a wrong net); -b has other
        condition-embedder widths and "bgr" order
  tests/data/goldens/sdxl-controlnet.json and goldens/tiny-sdxl/controlnet-*: whole
        StableDiffusionXLControlNetPipeline runs with the PeRFlow sampler, one net and two
        (MultiControlNetModel), condition images of other sizes (resized as diffusers does)
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from goldens_refine import input_image  # noqa: E402
from goldens_weights import GOLDENS, MODELS  # noqa: E402

MODEL = "tiny-sdxl"
VERSION = "1"
META = {"format": "perflow-golden", "version": VERSION, "generator": "tests/reference/goldens_sdxl_controlnet.py"}

# name, (prompt, prompt_2, negative, steps, guidance, seed, n, h, w), [(net, (image w, h, seed), scale)]
CASES = [
    ("one", ("a house by a lake", None, "blurry", 4, 6.0, 12, 1, 64, 64), [("tiny-sdxl-controlnet", (64, 64, 7), 0.8)]),
    ("two", ("a red bicycle", "oil painting", None, 4, 4.5, 13, 1, 56, 72),
     [("tiny-sdxl-controlnet", (80, 48, 8), 1.0), ("tiny-sdxl-controlnet-b", (40, 40, 9), 0.5)]),
]


def make_controlnet(name, seed, cond_channels, order="rgb"):
    from diffusers import ControlNetModel, UNet2DConditionModel
    gen = torch.Generator().manual_seed(seed)
    root = os.path.join(MODELS, name)
    shutil.rmtree(root, ignore_errors=True)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODELS, MODEL, "unet"), variant="fp16",
                                                torch_dtype=torch.float32)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=cond_channels,
                                   controlnet_conditioning_channel_order=order, load_weights_from_unet=True)
    with torch.no_grad():
        for p in cn.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        for m in list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block]:
            m.weight.add_(torch.randn(m.weight.shape, generator=gen) * 0.2)
        for p in cn.controlnet_cond_embedding.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.15)
    assert cn.config.addition_embed_type == "text_time"
    cn.to(torch.float16).save_pretrained(root)  # float16 on disk (half the size), read as float32 by both
    return root


def pipeline(nets):
    from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionXLControlNetPipeline, UNet2DConditionModel
    from goldens_sdxl import load_encoders
    from perflow_scheduler import PeRFlowScheduler
    d = os.path.join(MODELS, MODEL)
    tok, te, tok2, te2 = load_encoders(d)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), variant="fp16",
                                                torch_dtype=torch.float32).eval()
    sched = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
    sched = PeRFlowScheduler(**{k: v for k, v in sched.items() if not k.startswith("_")})
    cns = [ControlNetModel.from_pretrained(os.path.join(MODELS, n), torch_dtype=torch.float32).eval() for n in nets]
    pipe = StableDiffusionXLControlNetPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(d, "vae")), text_encoder=te, text_encoder_2=te2, tokenizer=tok,
        tokenizer_2=tok2, unet=unet, controlnet=cns[0] if len(cns) == 1 else cns, scheduler=sched,
        force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    make_controlnet("tiny-sdxl-controlnet", 2201, (8, 8, 16, 16))
    make_controlnet("tiny-sdxl-controlnet-b", 2202, (8, 16, 16, 32), "bgr")
    index = {"version": VERSION, "generator": META["generator"], "cases": []}
    for name, (prompt, prompt_2, neg, steps, g, seed, n, h, w), ctl in CASES:
        pipe = pipeline([c for c, _, _ in ctl])
        controls, images = [], []
        for k, (net, (iw, ih, iseed), scale) in enumerate(ctl):
            rel = f"{MODEL}/controlnet-{name}-control-{k}.png"
            input_image(iw, ih, iseed).save(os.path.join(GOLDENS, rel))
            images.append(Image.open(os.path.join(GOLDENS, rel)))
            controls.append(dict(controlnet=net, image=rel, scale=scale))
        scales = [c["scale"] for c in controls]

        def run(s, output_type="np"):
            return pipe(prompt=prompt, prompt_2=prompt_2, negative_prompt=neg, image=images if len(images) > 1 else
                        images[0], num_inference_steps=steps, guidance_scale=g, num_images_per_prompt=n, height=h,
                        width=w, controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0],
                        generator=torch.Generator("cpu").manual_seed(s), output_type=output_type).images
        with torch.no_grad():
            img, pils, other = run(seed), run(seed, "pil"), run(seed + 1)
            plain = pipe(prompt=prompt, prompt_2=prompt_2, negative_prompt=neg, image=images if len(images) > 1 else
                         images[0], num_inference_steps=steps, guidance_scale=g, num_images_per_prompt=n, height=h,
                         width=w, controlnet_conditioning_scale=[0.0] * len(scales) if len(scales) > 1 else 0.0,
                         generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images
        inside, diff = float(((img > 0) & (img < 1)).mean()), float(np.abs(img - other).mean())
        effect = float(np.abs(img - plain).max() * 255)
        assert inside > 0.9 and diff > 0.02, (name, inside, diff)
        assert effect > 10, (name, "the ControlNets barely change the image", effect)
        png = f"{MODEL}/controlnet-{name}.png"
        pils[0].save(os.path.join(GOLDENS, png))
        save_file({"images": torch.from_numpy(np.ascontiguousarray(img)).float()},
                  os.path.join(GOLDENS, f"{MODEL}/controlnet-{name}-images.safetensors"), metadata=META)
        index["cases"].append(dict(name=name, model=MODEL, prompt=prompt, prompt_2=prompt_2, negative_prompt=neg,
                                   steps=steps, guidance=g, prediction_type="ddim_eps", windows=4, seed=seed,
                                   num_images=n, height=h, width=w, controls=controls,
                                   images=f"{MODEL}/controlnet-{name}-images.safetensors", pngs=[png]))
        print(f"sdxl-controlnet {name}: {inside:.3f} inside (0, 1), seed+1 diff {diff:.3f}, "
              f"up to {effect:.0f} levels from the image at scale 0")
    with open(os.path.join(GOLDENS, "sdxl-controlnet.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
