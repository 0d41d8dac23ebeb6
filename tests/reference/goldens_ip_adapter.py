#!/usr/bin/env python3
"""goldens_ip_adapter.py - IP-Adapter on SD-1.5 with diffusers as the oracle (issue 22, item 4).
Run from the repository root with the reference venv, after make_tiny_models.py:
    .venv/bin/python tests/reference/goldens_ip_adapter.py
It writes only its own group:

  tests/data/models/tiny-sd15/image_encoder/  a tiny CLIPVisionModelWithProjection (2 layers, 32 wide,
        32 px images in 8 px patches, projection_dim 24) with its preprocessor_config.json
        (CLIPImageProcessor: shortest edge 32, crop 32, bicubic)
  tests/data/models/tiny-sd15-ip-adapter/ip-adapter.safetensors  an IP-Adapter for tiny-sd15 in
        h94/IP-Adapter's layout (image_proj.proj/norm, ip_adapter.{1,3,5,7}.to_k_ip/to_v_ip), random;
        ip-adapter-x64.safetensors (64-wide image tokens: another family's) and
        ip-adapter-e16.safetensors (takes 16-wide image embeddings) for the errors
  tests/data/goldens/ip-adapter.json and goldens/tiny-sd15/ip-adapter-*: whole StableDiffusionPipeline
        runs with the PeRFlow sampler after load_ip_adapter + set_ip_adapter_scale
  tests/data/goldens/tiny-sd15/ip-adapter-parts.safetensors: for each PREP image (w, h, seed):
        image_<k> (h, w, 3 uint8 as float), bicubic_<k> (Pillow's Image.BICUBIC resize to the
        processor's size, uint8 as float), pixels_<k> (CLIPImageProcessor's pixel_values) and
        embeds_<k> (the image encoder's image_embeds)
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

from goldens_pipeline import load_pipeline  # noqa: E402
from goldens_refine import input_image  # noqa: E402
from goldens_weights import GOLDENS, MODELS  # noqa: E402

MODEL = "tiny-sd15"
ADAPTER_DIR = os.path.join(MODELS, "tiny-sd15-ip-adapter")
VERSION = "1"
META = {"format": "perflow-golden", "version": VERSION, "generator": "tests/reference/goldens_ip_adapter.py"}
E = 24  # the image encoder's projection_dim

# images for the preprocessing and encoder goldens: down, up, square, odd, wide
PREP = [(48, 40, 31), (30, 70, 32), (64, 64, 33), (33, 97, 34), (211, 45, 35)]

# name, (prompt, negative, steps, guidance, seed, n, h, w), (image w, h, seed), scale
CASES = [
    ("cfg", ("a house by a lake", "blurry", 4, 6.0, 21, 1, 64, 64), (48, 40, 5), 0.8),
    ("two-images", ("a red bicycle", None, 4, 4.5, 22, 2, 48, 64), (30, 70, 6), 1.0),
    ("no-cfg", ("a cat", None, 4, 1.0, 23, 1, 64, 48), (64, 64, 7), 0.6),
]


def make_image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    root = os.path.join(MODELS, MODEL, "image_encoder")
    shutil.rmtree(root, ignore_errors=True)
    torch.manual_seed(2301)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=E, hidden_act="gelu")
    enc = CLIPVisionModelWithProjection(cfg).eval()
    enc.save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root)
    return root


def adapter_tensors(unet, seed, X, E_in):
    g = torch.Generator().manual_seed(seed)
    sd = {"image_proj.proj.weight": torch.randn(4 * X, E_in, generator=g) * 0.3,
          "image_proj.proj.bias": torch.randn(4 * X, generator=g) * 0.1,
          "image_proj.norm.weight": 1 + torch.randn(X, generator=g) * 0.1,
          "image_proj.norm.bias": torch.randn(X, generator=g) * 0.1}
    key = 1
    for name, proc in unet.attn_processors.items():
        if not name.endswith("attn2.processor"):
            continue
        mod = unet.get_submodule(name[:-len(".processor")])
        C = mod.to_q.out_features
        sd[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(C, X, generator=g) * 0.3
        sd[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(C, X, generator=g) * 0.3
        key += 2
    return sd


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    enc_dir = make_image_encoder()
    pipe = load_pipeline(MODELS, MODEL, False, "ddim_eps", 4)
    X = pipe.unet.config.cross_attention_dim
    shutil.rmtree(ADAPTER_DIR, ignore_errors=True)
    os.makedirs(ADAPTER_DIR)
    save_file(adapter_tensors(pipe.unet, 2302, X, E), os.path.join(ADAPTER_DIR, "ip-adapter.safetensors"))
    save_file(adapter_tensors(pipe.unet, 2303, 64, E), os.path.join(ADAPTER_DIR, "ip-adapter-x64.safetensors"))
    save_file(adapter_tensors(pipe.unet, 2304, X, 16), os.path.join(ADAPTER_DIR, "ip-adapter-e16.safetensors"))
    pipe.image_encoder = CLIPVisionModelWithProjection.from_pretrained(enc_dir).eval()
    pipe.feature_extractor = CLIPImageProcessor.from_pretrained(enc_dir)
    pipe.register_modules(image_encoder=pipe.image_encoder, feature_extractor=pipe.feature_extractor)
    parts = {}
    proc = pipe.feature_extractor
    for k, (w, h, seed) in enumerate(PREP):
        img = input_image(w, h, seed)
        short, long_ = min(w, h), max(w, h)
        nl = int(32 * long_ / short)
        size = (32, nl) if w <= h else (nl, 32)
        parts[f"image_{k}"] = torch.from_numpy(np.asarray(img).astype(np.float32))
        parts[f"bicubic_{k}"] = torch.from_numpy(np.asarray(img.resize(size, Image.BICUBIC)).astype(np.float32))
        px = proc(img, return_tensors="pt").pixel_values
        parts[f"pixels_{k}"] = px[0]
        with torch.no_grad():
            parts[f"embeds_{k}"] = pipe.image_encoder(px).image_embeds[0]
    save_file(parts, os.path.join(GOLDENS, f"{MODEL}/ip-adapter-parts.safetensors"), metadata=META)
    pipe.load_ip_adapter(ADAPTER_DIR, subfolder="", weight_name="ip-adapter.safetensors", image_encoder_folder=None)
    index = {"version": VERSION, "generator": META["generator"], "cases": []}
    for name, (prompt, neg, steps, g, seed, n, h, w), (iw, ih, iseed), scale in CASES:
        rel = f"{MODEL}/ip-adapter-{name}-image.png"
        input_image(iw, ih, iseed).save(os.path.join(GOLDENS, rel))
        image = Image.open(os.path.join(GOLDENS, rel)).convert("RGB")

        def run(s, sc, output_type="np"):
            pipe.set_ip_adapter_scale(sc)
            return pipe(prompt, negative_prompt=neg, ip_adapter_image=image, num_inference_steps=steps,
                        guidance_scale=g, num_images_per_prompt=n, height=h, width=w, output_type=output_type,
                        generator=torch.Generator("cpu").manual_seed(s)).images
        with torch.no_grad():
            img, pils, other, plain = run(seed, scale), run(seed, scale, "pil"), run(seed + 1, scale), run(seed, 0.0)
        inside, diff = float(((img > 0) & (img < 1)).mean()), float(np.abs(img - other).mean())
        effect = float(np.abs(img - plain).max() * 255)
        assert inside > 0.9 and diff > 0.02, (name, inside, diff)
        assert effect > 10, (name, "the image prompt barely changes the image", effect)
        pngs = []
        for i, p in enumerate(pils):
            pngs.append(f"{MODEL}/ip-adapter-{name}-{i}.png")
            p.save(os.path.join(GOLDENS, pngs[-1]))
        save_file({"images": torch.from_numpy(np.ascontiguousarray(img)).float()},
                  os.path.join(GOLDENS, f"{MODEL}/ip-adapter-{name}-images.safetensors"), metadata=META)
        index["cases"].append(dict(name=name, model=MODEL, prompt=prompt, negative_prompt=neg, steps=steps,
                                   guidance=g, prediction_type="ddim_eps", windows=4, seed=seed, num_images=n,
                                   height=h, width=w, ip_adapter="tiny-sd15-ip-adapter/ip-adapter.safetensors",
                                   ip_image=rel, ip_scale=scale,
                                   images=f"{MODEL}/ip-adapter-{name}-images.safetensors", pngs=pngs))
        print(f"ip-adapter {name}: {inside:.3f} inside (0, 1), seed+1 diff {diff:.3f}, "
              f"up to {effect:.0f} levels from the image at scale 0")
    with open(os.path.join(GOLDENS, "ip-adapter.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
