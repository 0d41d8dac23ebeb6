#!/usr/bin/env python3
"""goldens_sdxl_single.py - SDXL single-file checkpoints with diffusers as the oracle (issue 22).
Run from the repository root with the reference venv, after make_tiny_models.py:
    .venv/bin/python tests/reference/goldens_sdxl_single.py
It writes only its own group:

  tests/data/models/single-file/tiny-sdxl.safetensors  tiny-sdxl in the original SGM layout, float16:
        model.diffusion_model.* (label_emb.0.0/0.2: the text_time embedding), first_stage_model.*,
        conditioner.embedders.0.transformer.* (CLIP, text_encoder) and conditioner.embedders.1.model.*
        (OpenCLIP: fused in_proj, text_projection as x @ P, logit_scale), plus the buffers real files carry
  tests/data/goldens/sdxl-single.json and goldens/tiny-sdxl/single-*.safetensors / .png: whole
        StableDiffusionXLPipeline.from_single_file(path, config=tiny-sdxl) runs with the PeRFlow sampler

The script asserts what makes diffusers the oracle: from_single_file(config=DIR) loads the file back
into exactly the tiny model's (float16-rounded) weights, all four components.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from goldens_weights import GOLDENS, MODELS, SINGLE, clip_to_ldm, openclip_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402

MODEL = "tiny-sdxl"
VERSION = "1"
META = {"format": "perflow-golden", "version": VERSION, "generator": "tests/reference/goldens_sdxl_single.py"}


def folder_states():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    d = os.path.join(MODELS, MODEL)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), variant="fp16", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(os.path.join(d, "vae"))
    te = CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"))
    te2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(d, "text_encoder_2"))
    sd = lambda m: {k: v.detach().float() for k, v in m.state_dict().items()}  # noqa: E731
    return unet.config, vae.config, {"unet": sd(unet), "vae": sd(vae), "text_encoder": sd(te), "text_encoder_2": sd(te2)}


def rename(sd, old, new):
    return {new + k[len(old):] if k.startswith(old) else k: v for k, v in sd.items()}


def write_single_file():
    """The SGM file of tiny-sdxl, float16 (buffers keep their dtypes); returns its path."""
    ucfg, vcfg, s = folder_states()
    unet = dict(s["unet"])
    label = {"model.diffusion_model.label_emb.0.0." + k.split(".")[-1]: unet.pop(k)
             for k in list(unet) if k.startswith("add_embedding.linear_1.")}
    label.update({"model.diffusion_model.label_emb.0.2." + k.split(".")[-1]: unet.pop(k)
                  for k in list(unet) if k.startswith("add_embedding.linear_2.")})
    ckpt = dict(unet_to_ldm(unet, ucfg))
    ckpt.update(label)
    ckpt.update(vae_to_ldm(s["vae"], vcfg))
    ckpt.update(rename(clip_to_ldm(s["text_encoder"]), "cond_stage_model.transformer.",
                       "conditioner.embedders.0.transformer."))
    oc = rename(openclip_to_ldm(s["text_encoder_2"], torch.Generator().manual_seed(22)), "cond_stage_model.model.",
                "conditioner.embedders.1.model.")
    oc["conditioner.embedders.1.model.text_projection"] = s["text_encoder_2"]["text_projection.weight"].T
    ckpt.update(oc)
    ckpt = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ckpt.items()}
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ckpt["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    os.makedirs(SINGLE, exist_ok=True)
    path = os.path.join(SINGLE, f"{MODEL}.safetensors")
    save_file(ckpt, path, metadata={"format": "pt"})
    return path, s


def load_single(path):
    from diffusers import StableDiffusionXLPipeline
    from perflow_scheduler import PeRFlowScheduler
    d = os.path.join(MODELS, MODEL)
    sched = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
    sched = PeRFlowScheduler(**{k: v for k, v in sched.items() if not k.startswith("_")})
    pipe = StableDiffusionXLPipeline.from_single_file(path, config=d, scheduler=sched, torch_dtype=torch.float32,
                                                      local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


def check(pipe, want):
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        got = {k: v.detach().float() for k, v in getattr(pipe, comp).state_dict().items()}
        w = dict(want[comp])
        for d in (got, w):
            d.pop("text_model.embeddings.position_ids", None)
        assert set(got) == set(w), (comp, set(got) ^ set(w))
        for k in w:
            assert torch.equal(got[k], w[k].half().float()), (comp, k)
    print(f"single-file/{MODEL}.safetensors: diffusers' from_single_file gives tiny-sdxl exactly (4 components)")


# name, prompt, prompt_2, negative, steps, guidance, seed, n, h, w
CASES = [
    ("plain", "a castle on a hill", None, "blurry", 4, 6.0, 3, 1, 64, 64),
    ("prompt2", "a red boat at sea", "oil painting", None, 4, 4.5, 11, 1, 48, 64),
]


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    path, states = write_single_file()
    pipe = load_single(path)
    check(pipe, states)
    index = {"version": VERSION, "generator": META["generator"], "cases": []}
    for name, prompt, prompt_2, neg, steps, g, seed, n, h, w in CASES:
        def run(s, output_type="np"):
            return pipe(prompt=prompt, prompt_2=prompt_2, negative_prompt=neg, num_inference_steps=steps,
                        guidance_scale=g, num_images_per_prompt=n, height=h, width=w, output_type=output_type,
                        generator=torch.Generator("cpu").manual_seed(s)).images
        with torch.no_grad():
            img, pils, other = run(seed), run(seed, "pil"), run(seed + 1)
        inside, diff = float(((img > 0) & (img < 1)).mean()), float(np.abs(img - other).mean())
        assert inside > 0.9 and diff > 0.02, (name, inside, diff)
        png = f"{MODEL}/single-{name}.png"
        pils[0].save(os.path.join(GOLDENS, png))
        save_file({"images": torch.from_numpy(np.ascontiguousarray(img)).float()},
                  os.path.join(GOLDENS, f"{MODEL}/single-{name}-images.safetensors"), metadata=META)
        index["cases"].append(dict(name=name, model=f"single-file/{MODEL}.safetensors", model_config=MODEL,
                                   delta=None, loras=[], prompt=prompt, prompt_2=prompt_2, negative_prompt=neg,
                                   steps=steps, guidance=g, prediction_type="ddim_eps", windows=4, seed=seed,
                                   num_images=n, height=h, width=w,
                                   images=f"{MODEL}/single-{name}-images.safetensors", pngs=[png]))
        print(f"sdxl-single {name}: {inside:.3f} inside (0, 1), seed+1 diff {diff:.3f}")
    with open(os.path.join(GOLDENS, "sdxl-single.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    print(f"wrote {len(index['cases'])} cases; {os.path.getsize(path) / 1e3:.0f} KB single file")


if __name__ == "__main__":
    main()
