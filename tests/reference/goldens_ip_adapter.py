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
        ip-adapter-plus.safetensors, an IP-Adapter Plus (the Resampler: 4 blocks 64 wide, as diffusers requires, 6 queries);
        ip-adapter-x64.safetensors (64-wide image tokens: another family's) and
        ip-adapter-e16.safetensors (takes 16-wide image embeddings) for the errors
  tests/data/goldens/ip-adapter.json and goldens/tiny-sd15/ip-adapter-*: whole StableDiffusionPipeline
        runs with the PeRFlow sampler after load_ip_adapter + set_ip_adapter_scale (plain, plus, and
        both at once)
  tests/data/models/tiny-sdxl-ip-adapter/: a plain and a plus adapter for tiny-sdxl, and
        tests/data/goldens/ip-adapter-sdxl.json with goldens/tiny-sdxl/ip-adapter-*: StableDiffusionXLPipeline
        runs (the SD-1.5 tiny image encoder serves both)
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

PLAIN, PLUS = "ip-adapter.safetensors", "ip-adapter-plus.safetensors"

# name, (prompt, negative, steps, guidance, seed, n, h, w), [(adapter, (image w, h, seed), scale)]
CASES = [
    ("cfg", ("a house by a lake", "blurry", 4, 6.0, 21, 1, 64, 64), [(PLAIN, (48, 40, 5), 0.8)]),
    ("two-images", ("a red bicycle", None, 4, 4.5, 22, 2, 48, 64), [(PLAIN, (30, 70, 6), 1.0)]),
    ("no-cfg", ("a cat", None, 4, 1.0, 23, 1, 64, 48), [(PLAIN, (64, 64, 7), 0.6)]),
    ("plus", ("a tree in winter", "dark", 4, 5.0, 24, 1, 64, 64), [(PLUS, (56, 40, 8), 0.9)]),
    ("plain-and-plus", ("a boat", None, 4, 4.5, 25, 1, 48, 48), [(PLAIN, (40, 40, 9), 0.5), (PLUS, (36, 52, 10), 0.7)]),
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
    list_image_encoder(os.path.join(MODELS, MODEL, "model_index.json"))
    return root


def list_image_encoder(index_path):
    """The model folder lists its image encoder as diffusers' save_pretrained does for a
    pipeline that has one, so that fetching the folder brings it (storage/model_index.c)."""
    with open(index_path) as f:
        index = json.load(f)
    index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
    with open(index_path, "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


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


def plus_tensors(unet, seed, X, E_in, H=64, N=6, depth=4):
    """h94's "plus" layout: the Resampler (image_proj.latents, proj_in, layers.i.0 = PerceiverAttention with
    norm1/norm2/to_q/to_kv/to_out, layers.i.1 = LayerNorm + Linear + GELU + Linear, proj_out, norm_out;
    heads of 64) and the same ip_adapter.* as the plain adapter."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: v for k, v in adapter_tensors(unet, seed + 1, X, E_in).items() if k.startswith("ip_adapter.")}

    def r(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s
    sd.update({"image_proj.latents": r(1, N, H, s=1.0), "image_proj.proj_in.weight": r(H, E_in),
               "image_proj.proj_in.bias": r(H, s=0.1), "image_proj.proj_out.weight": r(X, H, s=0.2),
               "image_proj.proj_out.bias": r(X, s=0.1), "image_proj.norm_out.weight": 1 + r(X, s=0.1),
               "image_proj.norm_out.bias": r(X, s=0.1)})
    for i in range(depth):
        p = f"image_proj.layers.{i}."
        sd.update({p + "0.norm1.weight": 1 + r(H, s=0.1), p + "0.norm1.bias": r(H, s=0.1),
                   p + "0.norm2.weight": 1 + r(H, s=0.1), p + "0.norm2.bias": r(H, s=0.1),
                   p + "0.to_q.weight": r(H, H, s=0.15), p + "0.to_kv.weight": r(2 * H, H, s=0.15),
                   p + "0.to_out.weight": r(H, H, s=0.15), p + "1.0.weight": 1 + r(H, s=0.1),
                   p + "1.0.bias": r(H, s=0.1), p + "1.1.weight": r(4 * H, H, s=0.15),
                   p + "1.3.weight": r(H, 4 * H, s=0.1)})
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
    save_file(plus_tensors(pipe.unet, 2305, X, 32), os.path.join(ADAPTER_DIR, PLUS))
    enc = CLIPVisionModelWithProjection.from_pretrained(enc_dir).eval()
    fe = CLIPImageProcessor.from_pretrained(enc_dir)
    pipe.image_encoder, pipe.feature_extractor = enc, fe
    pipe.register_modules(image_encoder=enc, feature_extractor=fe)
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
    index = {"version": VERSION, "generator": META["generator"], "cases": []}
    for name, (prompt, neg, steps, g, seed, n, h, w), adapters in CASES:
        if getattr(pipe.unet, "encoder_hid_proj", None) is not None:
            pipe.unload_ip_adapter()
            pipe.image_encoder, pipe.feature_extractor = enc, fe
            pipe.register_modules(image_encoder=enc, feature_extractor=fe)
        pipe.load_ip_adapter([ADAPTER_DIR] * len(adapters), subfolder=[""] * len(adapters),
                             weight_name=[a for a, _, _ in adapters], image_encoder_folder=None,
                             low_cpu_mem_usage=False)
        images, listed = [], []
        for k, (adapter, (iw, ih, iseed), scale) in enumerate(adapters):
            rel = f"{MODEL}/ip-adapter-{name}-image-{k}.png"
            input_image(iw, ih, iseed).save(os.path.join(GOLDENS, rel))
            images.append(Image.open(os.path.join(GOLDENS, rel)).convert("RGB"))
            listed.append(dict(adapter=f"tiny-sd15-ip-adapter/{adapter}", image=rel, scale=scale))
        scales = [a["scale"] for a in listed]

        def run(s, sc, output_type="np"):
            pipe.set_ip_adapter_scale(sc if len(sc) > 1 else sc[0])
            return pipe(prompt, negative_prompt=neg, ip_adapter_image=images if len(images) > 1 else images[0],
                        num_inference_steps=steps,
                        guidance_scale=g, num_images_per_prompt=n, height=h, width=w, output_type=output_type,
                        generator=torch.Generator("cpu").manual_seed(s)).images
        with torch.no_grad():
            img, pils, other = run(seed, scales), run(seed, scales, "pil"), run(seed + 1, scales)
            plain = run(seed, [0.0] * len(scales))
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
                                   height=h, width=w, ip_adapters=listed,
                                   images=f"{MODEL}/ip-adapter-{name}-images.safetensors", pngs=pngs))
        print(f"ip-adapter {name}: {inside:.3f} inside (0, 1), seed+1 diff {diff:.3f}, "
              f"up to {effect:.0f} levels from the image at scale 0")
    with open(os.path.join(GOLDENS, "ip-adapter.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


SDXL = "tiny-sdxl"
SDXL_ADAPTER_DIR = os.path.join(MODELS, "tiny-sdxl-ip-adapter")
# name, (prompt, prompt_2, negative, steps, guidance, seed, n, h, w), [(adapter, (image w, h, seed), scale)]
SDXL_CASES = [
    ("sdxl-plain", ("a red car", "at night", "blurry", 4, 5.0, 31, 1, 64, 64), [(PLAIN, (48, 40, 11), 0.8)]),
    ("sdxl-plain-and-plus", ("a boat", None, None, 4, 4.5, 32, 1, 64, 56),
     [(PLAIN, (40, 56, 12), 0.6), (PLUS, (64, 48, 13), 0.7)]),
]


def sdxl_pipeline(enc, fe):
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from goldens_sdxl import load_encoders
    from perflow_scheduler import PeRFlowScheduler
    d = os.path.join(MODELS, SDXL)
    tok, te, tok2, te2 = load_encoders(d)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), variant="fp16",
                                                torch_dtype=torch.float32).eval()
    sched = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
    sched = PeRFlowScheduler(**{k: v for k, v in sched.items() if not k.startswith("_")})
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(d, "vae")), text_encoder=te, text_encoder_2=te2, tokenizer=tok,
        tokenizer_2=tok2, unet=unet, scheduler=sched, image_encoder=enc, feature_extractor=fe,
        force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


def make_sdxl():
    """The same on tiny-sdxl (StableDiffusionXLPipeline): a plain and a plus adapter for its UNet
    (72-wide cross-attention, 12 of them), the SD-1.5 tiny image encoder (any encoder whose widths
    fit: the tests name it with --image-encoder)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    enc_dir = os.path.join(MODELS, MODEL, "image_encoder")
    enc = CLIPVisionModelWithProjection.from_pretrained(enc_dir).eval()
    fe = CLIPImageProcessor.from_pretrained(enc_dir)
    pipe = sdxl_pipeline(enc, fe)
    X = pipe.unet.config.cross_attention_dim
    shutil.rmtree(SDXL_ADAPTER_DIR, ignore_errors=True)
    os.makedirs(SDXL_ADAPTER_DIR)
    save_file(adapter_tensors(pipe.unet, 2401, X, E), os.path.join(SDXL_ADAPTER_DIR, PLAIN))
    save_file(plus_tensors(pipe.unet, 2402, X, 32), os.path.join(SDXL_ADAPTER_DIR, PLUS))
    sched = json.load(open(os.path.join(MODELS, SDXL, "scheduler", "scheduler_config.json")))
    index = {"version": VERSION, "generator": META["generator"], "cases": []}
    for name, (prompt, prompt_2, neg, steps, g, seed, n, h, w), adapters in SDXL_CASES:
        if getattr(pipe.unet, "encoder_hid_proj", None) is not None:
            pipe.unload_ip_adapter()
            pipe.image_encoder, pipe.feature_extractor = enc, fe
            pipe.register_modules(image_encoder=enc, feature_extractor=fe)
        pipe.load_ip_adapter([SDXL_ADAPTER_DIR] * len(adapters), subfolder=[""] * len(adapters),
                             weight_name=[a for a, _, _ in adapters], image_encoder_folder=None,
                             low_cpu_mem_usage=False)
        images, listed = [], []
        for k, (adapter, (iw, ih, iseed), scale) in enumerate(adapters):
            rel = f"{SDXL}/ip-adapter-{name}-image-{k}.png"
            input_image(iw, ih, iseed).save(os.path.join(GOLDENS, rel))
            images.append(Image.open(os.path.join(GOLDENS, rel)).convert("RGB"))
            listed.append(dict(adapter=f"tiny-sdxl-ip-adapter/{adapter}", image=rel, scale=scale))
        scales = [a["scale"] for a in listed]

        def run(s, sc, output_type="np"):
            pipe.set_ip_adapter_scale(sc if len(sc) > 1 else sc[0])
            return pipe(prompt=prompt, prompt_2=prompt_2, negative_prompt=neg,
                        ip_adapter_image=images if len(images) > 1 else images[0], num_inference_steps=steps,
                        guidance_scale=g, num_images_per_prompt=n, height=h, width=w, output_type=output_type,
                        generator=torch.Generator("cpu").manual_seed(s)).images
        with torch.no_grad():
            img, pils, other = run(seed, scales), run(seed, scales, "pil"), run(seed + 1, scales)
            plain = run(seed, [0.0] * len(scales))
        inside, diff = float(((img > 0) & (img < 1)).mean()), float(np.abs(img - other).mean())
        effect = float(np.abs(img - plain).max() * 255)
        assert inside > 0.9 and diff > 0.02, (name, inside, diff)
        assert effect > 10, (name, "the image prompt barely changes the image", effect)
        pngs = []
        for i, p in enumerate(pils):
            pngs.append(f"{SDXL}/ip-adapter-{name}-{i}.png")
            p.save(os.path.join(GOLDENS, pngs[-1]))
        save_file({"images": torch.from_numpy(np.ascontiguousarray(img)).float()},
                  os.path.join(GOLDENS, f"{SDXL}/ip-adapter-{name}-images.safetensors"), metadata=META)
        index["cases"].append(dict(name=name, model=SDXL, prompt=prompt, prompt_2=prompt_2, negative_prompt=neg,
                                   steps=steps, guidance=g, prediction_type=sched["prediction_type"],
                                   windows=sched["num_time_windows"], seed=seed, num_images=n, height=h, width=w,
                                   ip_adapters=listed, images=f"{SDXL}/ip-adapter-{name}-images.safetensors",
                                   pngs=pngs))
        print(f"ip-adapter {name}: {inside:.3f} inside (0, 1), seed+1 diff {diff:.3f}, "
              f"up to {effect:.0f} levels from the image at scale 0")
    with open(os.path.join(GOLDENS, "ip-adapter-sdxl.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
    make_sdxl()
