"""goldens_refine.py - the refiner (diffusers' StableDiffusionControlNetImg2ImgPipeline with
the PeRFlow sampler), the chained text-to-image + refine of the original PeRFlow predictor,
text-to-image at sizes whose latents are not multiples of 2^(blocks-1), and text-to-image
with one and two ControlNets (StableDiffusionControlNetPipeline, MultiControlNetModel) and a
refine with a second ControlNet beside the tile, for make_goldens.py. A case's "controls"
lists its ControlNets in order: {controlnet (a folder under tests/data/models), image (a
condition PNG, or null for the refined image itself), scale}.

Writes tests/data/goldens/refine.json (the cases) and per case tiny-sd15/refine-<name>.safetensors
(float images, output_type="np", (N, H, W, 3)) plus tiny-sd15/refine-<name>-<i>.png (the 8-bit
images as a user saves them), and the input PNGs the cases read (refine-input-*.png).

Hand-over (the predictor, shared/spec/pipelines.md part 2): the first stage's 8-bit image,
convert("RGB"), short side scaled to `size`, each side int(round(side * k / 64.0)) * 64
(Python's round, halves to even), Image.LANCZOS; that image is both the img2img input and
the control image. size 0 here means "the image as it is" (perflow refine --size 0), which
is how a non-multiple-of-64 refine size is reached. Every refine run draws from a fresh
torch.manual_seed(seed) CPU generator, as the predictor does.
"""
import json
import os

import numpy as np
import torch
from diffusers import (AutoencoderKL, ControlNetModel, StableDiffusionControlNetImg2ImgPipeline,
                       StableDiffusionControlNetPipeline)
from PIL import Image

from goldens_pipeline import load_pipeline, run as run_txt2img

PROMPT = "best quality"
NEGATIVE = "blur, lowres, bad anatomy, bad hands, cropped, worst quality"


def refine_size(w, h, size):
    """The predictor's rule, in Python floats exactly as it computes it."""
    if size == 0:
        return w, h
    k = float(size) / min(h, w)
    return int(round(w * k / 64.0)) * 64, int(round(h * k / 64.0)) * 64


def hand_over(img, size):
    img = img.convert("RGB")
    w, h = refine_size(img.width, img.height, size)
    return img.resize((w, h), Image.LANCZOS)


def input_image(w, h, seed):
    """A structured test image: gradients, a few hard-edged shapes and noise (so that
    the resize and the encoder see edges as well as smooth parts)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin((x + y) / 5)], -1)
    for _ in range(4):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        img[y0:y0 + h // 4, x0:x0 + w // 4] = rng.integers(0, 256, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def controlnet(models_dir, name):
    return ControlNetModel.from_pretrained(os.path.join(models_dir, name), torch_dtype=torch.float32)


def refine_pipeline(models_dir, prediction, windows, tiling, nets=("tiny-sd15-controlnet",)):
    """The refiner's pipeline; several nets make diffusers' MultiControlNetModel."""
    base = load_pipeline(models_dir, "tiny-sd15", True, prediction, windows)
    cns = [controlnet(models_dir, n) for n in nets]
    cn = cns[0] if len(cns) == 1 else cns
    vae = AutoencoderKL.from_pretrained(os.path.join(models_dir, "tiny-sd15", "vae"))
    if tiling:
        vae.enable_tiling()
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet, controlnet=cn,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


def refine(pipe, images, r, output_type="np", extra=()):
    """One refine call over a list of PIL images (one generator for all, as one diffusers
    call with a batch of images); r holds the refine settings; extra: (PIL image, scale)
    of further ControlNets after the tile (the pipeline then has a MultiControlNetModel)."""
    conds = [hand_over(im, r["size"]) for im in images]
    n = len(conds)
    control, scale = conds, r["controlnet_scale"]
    if extra:  # diffusers takes one image per net with several nets (so one refined image here)
        assert n == 1
        control = [conds[0]] + [im for im, _ in extra]
        scale = [scale] + [sc for _, sc in extra]
    return pipe(
        [r["prompt"]] * n, image=conds, control_image=control, height=conds[0].height, width=conds[0].width,
        strength=r["strength"], num_inference_steps=r["steps"], guidance_scale=r["guidance"],
        negative_prompt=[r["negative_prompt"]] * n, controlnet_conditioning_scale=scale,
        generator=torch.manual_seed(r["seed"]), output_type=output_type).images


def refine_settings(**kw):
    r = dict(prompt=PROMPT, negative_prompt=NEGATIVE, size=1024, steps=4, guidance=7.5, strength=1.0,
             controlnet_scale=1.0, seed=0, prediction_type="diff_eps", windows=4, vae_tiling="off")
    r.update(kw)
    return r


# name, input (w, h, seed) or None for a chained case, refine settings
REFINE_CASES = [
    ("4step", (64, 64, 1), refine_settings(size=128)),
    ("ddim-strength", (80, 48, 2), refine_settings(size=96, steps=5, strength=0.6, guidance=4.5, controlnet_scale=0.8,
                                                   prompt="a sharp photo, fine detail", negative_prompt="",
                                                   seed=11, prediction_type="ddim_eps")),
    ("velocity-nocfg", (64, 64, 3), refine_settings(size=64, guidance=1.0, strength=0.75, seed=3,
                                                    prediction_type="velocity")),
    ("own-size-odd", (72, 40, 4), refine_settings(size=0, seed=4, steps=6, windows=2)),
    ("tiled", (64, 64, 5), refine_settings(size=128, seed=6, vae_tiling="on")),
]

# name, txt2img settings (as goldens_pipeline's CASES, tiny-sd15 with delta), refine settings or None
CHAINED_CASES = [
    ("cat", dict(prompt="a photo of a cat", negative=None, steps=4, guidance=4.5, prediction="diff_eps", windows=4,
                 seed=0, n=1, h=64, w=64), refine_settings(size=128, seed=0)),
    ("castle-2img", dict(prompt="a castle on a hill, oil painting", negative="blurry", steps=4, guidance=7.5,
                         prediction="diff_eps", windows=4, seed=42, n=2, h=64, w=48),
     refine_settings(size=96, seed=42, prompt="best quality, castle", strength=0.8)),
    # text to image alone at odd latent sizes (tiny-sd15's UNet has 2 blocks): 136 x 72 -> latents 17 x 9
    ("odd-latents", dict(prompt="a wide landscape at dusk", negative="", steps=4, guidance=4.5,
                         prediction="diff_eps", windows=4, seed=9, n=1, h=72, w=136), None),
    # a 16:9 render at 640 x 360: latents 80 x 45, an odd side (test_refine.c test_cli_16x9 through the CLI)
    ("wide-16x9", dict(prompt="a wide landscape", negative=None, steps=4, guidance=4.5, prediction="diff_eps",
                       windows=4, seed=5, n=1, h=360, w=640), None),
]


# Text to image with ControlNets (StableDiffusionControlNetPipeline; two nets: MultiControlNetModel):
# name, txt2img settings, [(controlnet, (w, h, image seed), scale)]
CONTROL_CASES = [
    ("control-1", dict(prompt="a house by a lake", negative=None, steps=4, guidance=4.5, prediction="diff_eps",
                       windows=4, seed=12, n=1, h=64, w=64),
     [("tiny-sd15-controlnet", (64, 64, 7), 0.8)]),
    # two nets, condition images of other sizes (resized with Lanczos), odd latents 9 x 7
    ("control-2", dict(prompt="a red bicycle", negative="blurry", steps=4, guidance=7.5, prediction="diff_eps",
                       windows=4, seed=13, n=2, h=56, w=72),
     [("tiny-sd15-controlnet", (80, 48, 8), 1.0), ("tiny-sd15-controlnet-b", (40, 40, 9), 0.5)]),
]

# A refine with the tile and a second ControlNet with its own condition image.
REFINE_MULTI = ("refine-multi", (64, 64, 10), refine_settings(size=128, seed=14), ("tiny-sd15-controlnet-b",
                                                                                    (50, 70, 11), 0.6))


def control_pipeline(models_dir, nets, prediction, windows):
    base = load_pipeline(models_dir, "tiny-sd15", True, prediction, windows)
    cns = [controlnet(models_dir, n) for n in nets]
    pipe = StableDiffusionControlNetPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        controlnet=cns[0] if len(cns) == 1 else cns, scheduler=base.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


def check_can_fail(name, img, other):
    inside = float(((img > 0) & (img < 1)).mean())
    diff = float(np.abs(img - other).mean())
    assert inside > 0.9, (name, inside)
    assert diff > 0.02, (name, diff)
    return inside, diff


def save_images(out_dir, save, name, img, pils):
    save("tiny-sd15", f"refine-{name}.safetensors", {"images": torch.from_numpy(np.ascontiguousarray(img))})
    pngs = []
    for i, im in enumerate(pils):
        rel = f"tiny-sd15/refine-{name}-{i}.png"
        im.save(os.path.join(out_dir, rel))
        pngs.append(rel)
    return pngs


def make_all(models_dir, save, out_dir):
    torch.use_deterministic_algorithms(True)
    index = {"version": "1", "generator": "tests/reference/make_goldens.py", "model": "tiny-sd15",
             "delta": "tiny-sd15-delta/unet", "controlnet": "tiny-sd15-controlnet", "cases": []}
    os.makedirs(os.path.join(out_dir, "tiny-sd15"), exist_ok=True)
    for name, (w, h, iseed), r in REFINE_CASES:
        src = input_image(w, h, iseed)
        rel_in = f"tiny-sd15/refine-input-{name}.png"
        src.save(os.path.join(out_dir, rel_in))
        src = Image.open(os.path.join(out_dir, rel_in))  # as a user's file is read
        pipe = refine_pipeline(models_dir, r["prediction_type"], r["windows"], r["vae_tiling"] == "on")
        with torch.no_grad():
            img = refine(pipe, [src], r)
            pils = refine(pipe, [src], r, output_type="pil")
            other = refine(pipe, [src], dict(r, seed=r["seed"] + 1))
        inside, diff = check_can_fail(name, img, other)
        pngs = save_images(out_dir, save, name, img, pils)
        index["cases"].append(dict(name=name, kind="refine", input=rel_in, refine=r, num_images=1,
                                   height=int(img.shape[1]), width=int(img.shape[2]),
                                   images=f"tiny-sd15/refine-{name}.safetensors", pngs=pngs, pixels_inside=inside,
                                   seed_plus_one_mean_abs_diff=diff))
        print(f"refine {name}: {img.shape}, {inside:.3f} inside (0, 1), seed+1 diff {diff:.3f}")

    for name, g, r in CHAINED_CASES:
        base = load_pipeline(models_dir, "tiny-sd15", True, g["prediction"], g["windows"])
        with torch.no_grad():
            first = run_txt2img(base, g["prompt"], g["negative"], g["steps"], g["guidance"], g["seed"], g["n"], g["h"],
                                g["w"], output_type="pil")
            if r is None:
                img = run_txt2img(base, g["prompt"], g["negative"], g["steps"], g["guidance"], g["seed"], g["n"],
                                  g["h"], g["w"])
                other = run_txt2img(base, g["prompt"], g["negative"], g["steps"], g["guidance"], g["seed"] + 1,
                                    g["n"], g["h"], g["w"])
                pils = first
            else:
                pipe = refine_pipeline(models_dir, r["prediction_type"], r["windows"], r["vae_tiling"] == "on")
                img = refine(pipe, first, r)
                pils = refine(pipe, first, r, output_type="pil")
                other = refine(pipe, first, dict(r, seed=r["seed"] + 1))
        inside, diff = check_can_fail(name, img, other)
        pngs = save_images(out_dir, save, name, img, pils)
        generate = dict(prompt=g["prompt"], negative_prompt=g["negative"], steps=g["steps"], guidance=g["guidance"],
                        prediction_type=g["prediction"], windows=g["windows"], seed=g["seed"], num_images=g["n"],
                        height=g["h"], width=g["w"])
        index["cases"].append(dict(name=name, kind="generate" if r is None else "generate+refine", generate=generate,
                                   refine=r, num_images=g["n"], height=int(img.shape[1]), width=int(img.shape[2]),
                                   images=f"tiny-sd15/refine-{name}.safetensors", pngs=pngs, pixels_inside=inside,
                                   seed_plus_one_mean_abs_diff=diff))
        print(f"{'generate+refine' if r else 'generate'} {name}: {img.shape}, {inside:.3f} inside, diff {diff:.3f}")

    for name, g, ctl in CONTROL_CASES:
        pipe = control_pipeline(models_dir, [c for c, _, _ in ctl], g["prediction"], g["windows"])
        controls, images = [], []
        for k, (net, (w, h, iseed), scale) in enumerate(ctl):
            rel = f"tiny-sd15/refine-{name}-control-{k}.png"
            input_image(w, h, iseed).save(os.path.join(out_dir, rel))
            images.append(Image.open(os.path.join(out_dir, rel)))
            controls.append(dict(controlnet=net, image=rel, scale=scale))
        scales = [c["scale"] for c in controls]

        def run(seed, output_type="np"):
            return pipe([g["prompt"]] * g["n"], image=images if len(images) > 1 else images[0],
                        negative_prompt=None if g["negative"] is None else [g["negative"]] * g["n"],
                        num_inference_steps=g["steps"], guidance_scale=g["guidance"], height=g["h"], width=g["w"],
                        controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0],
                        generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type).images
        with torch.no_grad():
            img, pils, other = run(g["seed"]), run(g["seed"], "pil"), run(g["seed"] + 1)
        inside, diff = check_can_fail(name, img, other)
        pngs = save_images(out_dir, save, name, img, pils)
        generate = dict(prompt=g["prompt"], negative_prompt=g["negative"], steps=g["steps"], guidance=g["guidance"],
                        prediction_type=g["prediction"], windows=g["windows"], seed=g["seed"], num_images=g["n"],
                        height=g["h"], width=g["w"])
        index["cases"].append(dict(name=name, kind="generate", generate=generate, refine=None, controls=controls,
                                   num_images=g["n"], height=int(img.shape[1]), width=int(img.shape[2]),
                                   images=f"tiny-sd15/refine-{name}.safetensors", pngs=pngs, pixels_inside=inside,
                                   seed_plus_one_mean_abs_diff=diff))
        print(f"generate with {len(ctl)} ControlNet(s) {name}: {img.shape}, {inside:.3f} inside, diff {diff:.3f}")

    name, (w, h, iseed), r, (net_b, (bw, bh, bseed), bscale) = REFINE_MULTI
    src_rel, b_rel = f"tiny-sd15/refine-input-{name}.png", f"tiny-sd15/refine-{name}-control-1.png"
    input_image(w, h, iseed).save(os.path.join(out_dir, src_rel))
    input_image(bw, bh, bseed).save(os.path.join(out_dir, b_rel))
    src, bimg = Image.open(os.path.join(out_dir, src_rel)), Image.open(os.path.join(out_dir, b_rel))
    pipe = refine_pipeline(models_dir, r["prediction_type"], r["windows"], False, ("tiny-sd15-controlnet", net_b))
    with torch.no_grad():
        img = refine(pipe, [src], r, extra=[(bimg, bscale)])
        pils = refine(pipe, [src], r, output_type="pil", extra=[(bimg, bscale)])
        other = refine(pipe, [src], dict(r, seed=r["seed"] + 1), extra=[(bimg, bscale)])
    inside, diff = check_can_fail(name, img, other)
    pngs = save_images(out_dir, save, name, img, pils)
    controls = [dict(controlnet="tiny-sd15-controlnet", image=None, scale=r["controlnet_scale"]),
                dict(controlnet=net_b, image=b_rel, scale=bscale)]
    index["cases"].append(dict(name=name, kind="refine", input=src_rel, refine=r, controls=controls, num_images=1,
                               height=int(img.shape[1]), width=int(img.shape[2]),
                               images=f"tiny-sd15/refine-{name}.safetensors", pngs=pngs, pixels_inside=inside,
                               seed_plus_one_mean_abs_diff=diff))
    print(f"refine with two ControlNets {name}: {img.shape}, {inside:.3f} inside, diff {diff:.3f}")

    # The predictor's size rule at its edges, for the C function that computes it.
    sizes = []
    for w, h, s in [(512, 512, 1024), (768, 512, 1024), (640, 360, 1024), (512, 768, 1024), (96, 96, 1024),
                    (100, 60, 1024), (333, 517, 1024), (64, 48, 96), (4096, 2160, 1000), (72, 40, 0), (50, 30, 80),
                    (30, 50, 96), (48, 80, 96), (1000, 1, 64), (5, 7, 100),
                    # exact halves, rounded to even: 2.5 -> 2, 3.5 -> 4
                    (160, 96, 96), (224, 96, 96), (96, 160, 96)]:
        ow, oh = refine_size(w, h, s)
        sizes.append(dict(width=w, height=h, size=s, out_width=ow, out_height=oh))
    index["refine_sizes"] = sizes
    with open(os.path.join(out_dir, "refine.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
