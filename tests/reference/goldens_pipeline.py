"""goldens_pipeline.py - whole text-to-image runs of diffusers' StableDiffusionPipeline
with the PeRFlow sampler (perflow_scheduler.py, checked against the original's golden
first), for make_goldens.py.

Writes tests/data/goldens/pipelines.json (the cases: parameters and file names) and,
per case, <model>/pipeline-<name>.safetensors holding the float images
(output_type="np", (N, H, W, 3)) and <model>/pipeline-<name>-<i>.png (diffusers' own
8-bit PNGs, as a user would save them).
"""
import json
import os

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from perflow_scheduler import PeRFlowScheduler, check_against_shared_golden

# name, model, delta, prompt, negative, steps, guidance, prediction, windows, seed, n, h, w
CASES = [
    ("4step-diff", "tiny-sd15", True, "a photo of a cat", None, 4, 4.5, "diff_eps", 4, 0, 1, 64, 64),
    ("8step-cfg-2img", "tiny-sd15", True, "a castle on a hill, oil painting", "blurry, lowres", 8, 7.5,
     "diff_eps", 4, 42, 2, 64, 64),
    ("nocfg-ddim", "tiny-sd15", True, "a red car", None, 4, 1.0, "ddim_eps", 4, 7, 1, 64, 64),
    ("velocity-wide", "tiny-sd15", False, "mountains at dawn", "", 6, 7.5, "velocity", 4, 3, 1, 64, 96),
    ("sd2-windows2", "tiny-sd2", False, "a bowl of fruit!", None, 5, 4.5, "diff_eps", 2, 5, 1, 32, 48),
]


def load_pipeline(models_dir, model, delta, prediction, windows):
    d = os.path.join(models_dir, model)
    variant = "fp16" if os.path.exists(os.path.join(d, "text_encoder", "model.fp16.safetensors")) else None
    te = CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"), variant=variant, dtype=torch.float32,
                                       attn_implementation="eager")
    unet = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"))
    if delta:
        # W = W_base + dW in float32, tensor by tensor (the PeRFlow delta merge).
        dw = load_file(os.path.join(models_dir, model + "-delta", "unet", "diffusion_pytorch_model.safetensors"))
        sd = unet.state_dict()
        assert set(sd) == set(dw)
        unet.load_state_dict({k: v.float() + dw[k].float() for k, v in sd.items()})
    sched_cfg = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
    sched_cfg = {k: v for k, v in sched_cfg.items() if not k.startswith("_")}
    sched_cfg.update(prediction_type=prediction, num_time_windows=windows)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(d, "vae")), text_encoder=te,
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(d, "tokenizer")), unet=unet,
        scheduler=PeRFlowScheduler(**sched_cfg), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


def run(pipe, prompt, negative, steps, guidance, seed, n, h, w, output_type="np"):
    return pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                num_images_per_prompt=n, height=h, width=w, output_type=output_type,
                generator=torch.Generator("cpu").manual_seed(seed)).images


def make_all(models_dir, save, out_dir):
    worst, count = check_against_shared_golden()
    print(f"PeRFlow port reproduces the original sampler's golden ({count} cases, max rel err {worst:.2g})")
    index = {"version": "1", "generator": "tests/reference/make_goldens.py", "cases": []}
    for name, model, delta, prompt, neg, steps, g, pred, K, seed, n, h, w in CASES:
        pipe = load_pipeline(models_dir, model, delta, pred, K)
        with torch.no_grad():
            img = run(pipe, prompt, neg, steps, g, seed, n, h, w)
            pils = run(pipe, prompt, neg, steps, g, seed, n, h, w, output_type="pil")
            other = run(pipe, prompt, neg, steps, g, seed + 1, n, h, w)
        # The goldens must be able to fail: not saturated, and the seed must matter.
        inside = float(((img > 0) & (img < 1)).mean())
        diff = float(np.abs(img - other).mean())
        assert inside > 0.9, (name, inside)
        assert diff > 0.02, (name, diff)
        save(model, f"pipeline-{name}.safetensors", {"images": torch.from_numpy(np.ascontiguousarray(img))})
        pngs = []
        for i, im in enumerate(pils):
            rel = f"{model}/pipeline-{name}-{i}.png"
            im.save(os.path.join(out_dir, rel))
            pngs.append(rel)
        index["cases"].append(dict(
            name=name, model=model, delta=f"{model}-delta/unet" if delta else None, prompt=prompt,
            negative_prompt=neg, steps=steps, guidance=g, prediction_type=pred, windows=K, seed=seed,
            num_images=n, height=h, width=w, images=f"{model}/pipeline-{name}.safetensors", pngs=pngs,
            pixels_inside=inside, seed_plus_one_mean_abs_diff=diff))
        print(f"pipeline {name}: {inside:.3f} of pixels inside (0, 1), seed+1 mean abs diff {diff:.3f}")
    with open(os.path.join(out_dir, "pipelines.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
