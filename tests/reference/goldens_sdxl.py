"""goldens_sdxl.py - SDXL goldens for make_goldens.py (group "sdxl"): the tiny SDXL model's
two text encoders, its UNet with the text_time embedding, and whole runs of diffusers'
StableDiffusionXLPipeline with the PeRFlow sampler (prediction type ddim_eps, PeRFlow's
SDXL setting).

tiny-sdxl/text_encoders.safetensors: input_ids / input_ids_2 [N, 77] (as float), and for
  each prompt hidden_states[-2] of both encoders (hidden_1 [N, 77, 32], hidden_2 [N, 77, 40],
  no final layer norm: what SDXL's encode_prompt takes), last_hidden_state_2, and the second
  encoder's projected pooled output text_embeds_2 [N, 32].
tiny-sdxl/unet.safetensors: sample [2, 4, 8, 8], timesteps [2], encoder_hidden_states
  [2, 77, 72], text_embeds [2, 32], time_ids [2, 6] -> out; and at an odd latent size
  (sample_odd [1, 4, 9, 7]) -> out_odd.
sdxl.json + tiny-sdxl/sdxl-<name>.safetensors / -<i>.png: pipelines (no negative prompt:
  force_zeros_for_empty_prompt's zeros; an empty one; a real one; prompt_2 and
  negative_prompt_2; a non-square size with original/crop/target size; two images).
"""
import json
import os

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from perflow_scheduler import PeRFlowScheduler

PROMPTS = ["a photo of a cat", "", "A majestic lion at night!! (8k)", " ".join(["mountains and rivers"] * 30)]

# name, prompt, prompt_2, negative, negative_2, steps, guidance, seed, n, h, w, original, crop, target
# (original/target as (h, w) and crop as (top, left), diffusers' order; None: the defaults)
CASES = [
    ("no-negative", "a photo of a cat", None, None, None, 4, 4.5, 0, 1, 64, 64, None, None, None),
    ("empty-negative", "a photo of a cat", None, "", None, 4, 4.5, 0, 1, 64, 64, None, None, None),
    ("negative", "a castle on a hill", None, "blurry, lowres", None, 4, 7.5, 7, 1, 64, 64, None, None, None),
    ("prompt2", "a castle on a hill", "oil painting, warm light", "blurry", "cartoon", 5, 6.0, 3, 2, 64, 64,
     None, None, None),
    ("wide-sizes", "mountains at dawn", None, None, None, 4, 4.5, 5, 1, 48, 80, (96, 160), (8, 16), (48, 80)),
]


def load_encoders(d):
    te = CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"), torch_dtype=torch.float32,
                                       attn_implementation="eager").eval()
    te2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(d, "text_encoder_2"), torch_dtype=torch.float32,
                                                      attn_implementation="eager").eval()
    return (CLIPTokenizer.from_pretrained(os.path.join(d, "tokenizer")), te,
            CLIPTokenizer.from_pretrained(os.path.join(d, "tokenizer_2")), te2)


def make_all(models_dir, save, out_dir):
    d = os.path.join(models_dir, "tiny-sdxl")
    tok, te, tok2, te2 = load_encoders(d)
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids2 = tok2(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        o1 = te(ids, output_hidden_states=True)
        o2 = te2(ids2, output_hidden_states=True)
    save("tiny-sdxl", "text_encoders.safetensors", {
        "input_ids": ids.float(), "input_ids_2": ids2.float(), "hidden_1": o1.hidden_states[-2],
        "hidden_2": o2.hidden_states[-2], "last_hidden_state_2": o2.last_hidden_state,
        "text_embeds_2": o2.text_embeds})

    unet = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), variant="fp16",
                                                torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(99)
    out = {"sample": torch.randn(2, 4, 8, 8, generator=g), "timesteps": torch.tensor([999.0, 250.0]),
           "encoder_hidden_states": torch.randn(2, 77, 72, generator=g), "text_embeds": torch.randn(2, 32, generator=g),
           "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64], [1024.0, 768, 16, 32, 512, 384]])}
    out["sample_odd"] = torch.randn(1, 4, 9, 7, generator=g)
    with torch.no_grad():
        out["out"] = unet(out["sample"], out["timesteps"], encoder_hidden_states=out["encoder_hidden_states"],
                          added_cond_kwargs={"text_embeds": out["text_embeds"], "time_ids": out["time_ids"]}).sample
        out["out_odd"] = unet(out["sample_odd"], out["timesteps"][:1],
                              encoder_hidden_states=out["encoder_hidden_states"][:1],
                              added_cond_kwargs={"text_embeds": out["text_embeds"][:1],
                                                 "time_ids": out["time_ids"][:1]}).sample
        # the added conditions matter: other time ids change the output
        other = unet(out["sample"], out["timesteps"], encoder_hidden_states=out["encoder_hidden_states"],
                     added_cond_kwargs={"text_embeds": out["text_embeds"], "time_ids": out["time_ids"] * 0.5}).sample
    assert float((other - out["out"]).abs().mean()) > 1e-3
    save("tiny-sdxl", "unet.safetensors", out)

    sched_cfg = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
    sched = PeRFlowScheduler(**{k: v for k, v in sched_cfg.items() if not k.startswith("_")})
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(d, "vae")), text_encoder=te, text_encoder_2=te2,
        tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to("cpu", torch.float32)
    index = {"version": "1", "generator": "tests/reference/make_goldens.py", "model": "tiny-sdxl", "cases": []}
    for name, p, p2, neg, neg2, steps, gs, seed, n, h, w, orig, crop, target in CASES:
        kw = dict(prompt=p, prompt_2=p2, negative_prompt=neg, negative_prompt_2=neg2, num_inference_steps=steps,
                  guidance_scale=gs, num_images_per_prompt=n, height=h, width=w)
        if orig:
            kw.update(original_size=orig, crops_coords_top_left=crop, target_size=target)

        def run(s, output_type="np"):
            return pipe(**kw, generator=torch.Generator("cpu").manual_seed(s), output_type=output_type).images
        with torch.no_grad():
            img, pils, other = run(seed), run(seed, "pil"), run(seed + 1)
        inside = float(((img > 0) & (img < 1)).mean())
        diff = float(np.abs(img - other).mean())
        assert inside > 0.9, (name, inside)
        assert diff > 0.02, (name, diff)
        save("tiny-sdxl", f"sdxl-{name}.safetensors", {"images": torch.from_numpy(np.ascontiguousarray(img))})
        pngs = []
        for i, im in enumerate(pils):
            rel = f"tiny-sdxl/sdxl-{name}-{i}.png"
            im.save(os.path.join(out_dir, rel))
            pngs.append(rel)
        index["cases"].append(dict(
            name=name, model="tiny-sdxl", prompt=p, prompt_2=p2, negative_prompt=neg, negative_prompt_2=neg2,
            steps=steps, guidance=gs, prediction_type="ddim_eps", windows=4, seed=seed, num_images=n, height=h,
            width=w, original_size=list(orig) if orig else None, crop_coords=list(crop) if crop else None,
            target_size=list(target) if target else None, images=f"tiny-sdxl/sdxl-{name}.safetensors", pngs=pngs,
            pixels_inside=inside, seed_plus_one_mean_abs_diff=diff))
        print(f"sdxl {name}: {img.shape}, {inside:.3f} inside (0, 1), seed+1 diff {diff:.3f}")
    # the goldens must tell the negative-prompt cases apart (zeros vs an encoded "")
    a = index["cases"][0]["images"]
    b = index["cases"][1]["images"]
    from safetensors.torch import load_file
    da = load_file(os.path.join(out_dir, a))["images"]
    db = load_file(os.path.join(out_dir, b))["images"]
    assert float((da - db).abs().mean()) > 1e-3, "zeros and an encoded empty prompt give the same image"
    with open(os.path.join(out_dir, "sdxl.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
