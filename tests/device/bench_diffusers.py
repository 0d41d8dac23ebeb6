#!/usr/bin/env python3
"""bench_diffusers.py - the diffusers side of tests/device/check.sh: makes a random-weight
SD-1.5 model folder (UNet, VAE, CLIP text encoder in fp16, the tiny model's tokenizer and
PeRFlow scheduler config) for bench_gpu, then times the same shapes with diffusers on CUDA
in fp16 with SDPA attention:

  unet_cfg_step_64x64_b2    one UNet call, batch 2 (the CFG pair), 4x64x64 latents, 77x768 context
  vae_decode_512_b1         vae.decode of 1x4x64x64 latents to 512x512
  txt2img_512_4step_cfg_b1  text encoding (prompt + negative), 4 CFG UNet steps, VAE decode,
  txt2img_512_4step_cfg_b8  postprocessing to host floats: what StableDiffusionPipeline does per
                            image batch (PeRFlow's scheduler is not in diffusers; its step is a few
                            elementwise operations, here a plain Euler update)
  refine_1024_4step_cfg_b1  the refiner: diffusers' StableDiffusionControlNetImg2ImgPipeline with
  refine_1024_4step_cfg_b4  the PeRFlow sampler (tests/reference/perflow_scheduler.py) and a random
                            SD-1.5 ControlNet (ControlNetModel.from_unet, the tile model's shapes),
                            512 px images handed over as the predictor does (Pillow Lanczos to
                            1024 px), 4 steps, guidance 7.5, strength 1, output_type "np"

    python3 tests/device/bench_diffusers.py --models /tmp/pf-models --out diffusers.json

Shapes are SD-1.5's configs, as in tests/reference/bench_reference.py (which builds the same
models in fp32 on the CPU). Each benchmark holds only the modules it uses on the GPU (the
others wait in host memory), warms up, then times REPEAT runs with torch.cuda.synchronize()
around perf_counter; the median is reported with torch's peak allocated and reserved memory.
torch's CUDA generator differs from perflow's: the values differ, the work does not.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "data", "models", "tiny-sd15")
DEVICE = "cuda"  # where the random modules are made (a dry run of the folder format may use "cpu")

CLIP_L14 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
                projection_dim=768)
UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
            layers_per_block=2, attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
           layers_per_block=2, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, sample_size=512,
           scaling_factor=0.18215)


def log(*a):
    print("bench_diffusers:", *a, file=sys.stderr, flush=True)


def save_weights(module, path, prefix=""):
    """fp16 safetensors of module's state dict, each key prefixed unless it already starts so."""
    from safetensors.torch import save_file
    save_file({(k if k.startswith(prefix) else prefix + k): v.detach().to(torch.float16).contiguous().cpu()
               for k, v in module.state_dict().items()}, path)


def make_models(folder):
    """Random SD-1.5 modules in fp16 on the GPU; writes the folder (with a controlnet/ of
    the refiner's shapes) unless it is complete."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device(DEVICE):
        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        te = CLIPTextModel(CLIPTextConfig(**CLIP_L14))
        cn = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        with torch.no_grad():  # random, not zero, convolutions: the residuals cost what a real model's do
            for p in cn.parameters():
                p.normal_(0, 0.02)
    unet, vae, te, cn = (m.to(torch.float16).eval() for m in (unet, vae, te, cn))
    log("models made in %.1fs" % (time.perf_counter() - t))
    if not os.path.exists(os.path.join(folder, "model_index.json")):
        t = time.perf_counter()
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for sub in ("unet", "vae", "text_encoder", "controlnet"):
            os.makedirs(os.path.join(tmp, sub))
        cn.save_config(os.path.join(tmp, "controlnet"))
        save_weights(cn, os.path.join(tmp, "controlnet", "diffusion_pytorch_model.safetensors"))
        unet.save_config(os.path.join(tmp, "unet"))
        save_weights(unet, os.path.join(tmp, "unet", "diffusion_pytorch_model.safetensors"))
        vae.save_config(os.path.join(tmp, "vae"))
        save_weights(vae, os.path.join(tmp, "vae", "diffusion_pytorch_model.safetensors"))
        with open(os.path.join(tmp, "text_encoder", "config.json"), "w") as f:
            json.dump(dict(CLIP_L14, architectures=["CLIPTextModel"], model_type="clip_text_model"), f, indent=1)
        # transformers 5 dropped the text_model submodule of CLIPTextModel; checkpoints
        # (and perflow's loader) keep the text_model. prefix of transformers 4
        save_weights(te, os.path.join(tmp, "text_encoder", "model.safetensors"), "text_model.")
        shutil.copytree(os.path.join(TINY, "tokenizer"), os.path.join(tmp, "tokenizer"))
        shutil.copytree(os.path.join(TINY, "scheduler"), os.path.join(tmp, "scheduler"))
        shutil.copy(os.path.join(TINY, "model_index.json"), os.path.join(tmp, "model_index.json"))
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
        log("folder %s written in %.1fs" % (folder, time.perf_counter() - t))
    return unet, vae, te, cn


def use_sdpa(unet, vae):
    """diffusers' default processor on torch 2 is already AttnProcessor2_0 (SDPA); set it explicitly."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    unet.set_attn_processor(AttnProcessor2_0())
    vae.set_attn_processor(AttnProcessor2_0())


def on_gpu(keep, every):
    """Moves the modules in keep to the GPU and the others to the host; starts a new peak."""
    for m in every:
        if not any(m is k for k in keep):
            m.to("cpu")
    for m in keep:
        m.to(DEVICE)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def timed(fn, warmup, repeat):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        runs.append(time.perf_counter() - t)
    return {"seconds": statistics.median(runs), "runs": runs,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="/tmp/pf-models")
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    import diffusers
    import transformers
    folder = os.path.join(a.models, "sd15-random")
    os.makedirs(a.models, exist_ok=True)
    unet, vae, te, cn = make_models(folder)
    use_sdpa(unet, vae)
    from diffusers.models.attention_processor import AttnProcessor2_0
    cn.set_attn_processor(AttnProcessor2_0())
    every = (unet, vae, te, cn)
    res = {"impl": "diffusers %s, transformers %s, torch %s, fp16, SDPA" % (
               diffusers.__version__, transformers.__version__, torch.__version__),
           "device": torch.cuda.get_device_name(0), "model_dir": folder, "repeat": a.repeat,
           "fp16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
           "cudnn_benchmark": torch.backends.cudnn.benchmark}
    g = torch.Generator("cpu").manual_seed(0)
    h = dict(device=DEVICE, dtype=torch.float16)

    with torch.inference_mode():
        on_gpu([unet], every)
        sample, ctx = torch.randn(2, 4, 64, 64, generator=g).to(**h), torch.randn(2, 77, 768, generator=g).to(**h)
        t500 = torch.tensor([500.0, 500.0], device=DEVICE)
        res["unet_cfg_step_64x64_b2"] = timed(lambda: unet(sample, t500, encoder_hidden_states=ctx).sample, 3, a.repeat)
        log("unet step %.2f ms" % (1e3 * res["unet_cfg_step_64x64_b2"]["seconds"]))

        on_gpu([vae], every)
        lat = torch.randn(1, 4, 64, 64, generator=g).to(**h)
        res["vae_decode_512_b1"] = timed(lambda: vae.decode(lat / VAE["scaling_factor"]).sample, 2, a.repeat)
        log("vae decode %.2f ms" % (1e3 * res["vae_decode_512_b1"]["seconds"]))

        on_gpu([unet, vae, te], every)
        ids_cond = torch.randint(0, 49408, (1, 77), generator=g).to(DEVICE)
        ids_uncond = torch.randint(0, 49408, (1, 77), generator=g).to(DEVICE)
        sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]

        def txt2img(batch, guidance=4.5):
            cond = te(ids_cond).last_hidden_state
            uncond = te(ids_uncond).last_hidden_state
            c = torch.cat([uncond.repeat(batch, 1, 1), cond.repeat(batch, 1, 1)])
            x = torch.randn(batch, 4, 64, 64, generator=g).to(**h)  # drawn on the host, as perflow does
            for i in range(4):
                t = torch.full((2 * batch,), 999.0 * sigmas[i], device=DEVICE)
                eps = unet(torch.cat([x, x]), t, encoder_hidden_states=c).sample
                u, e = eps.chunk(2)
                eps = u + guidance * (e - u)
                x = x + (sigmas[i + 1] - sigmas[i]) * eps
            img = vae.decode(x / VAE["scaling_factor"]).sample
            return (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()

        for batch, rep in ((1, min(a.repeat, 3)), (8, min(a.repeat, 2))):
            torch.cuda.reset_peak_memory_stats()
            key = "txt2img_512_4step_cfg_b%d" % batch
            res[key] = timed(lambda: txt2img(batch), 1, rep)
            res[key]["batch"] = batch
            log("%s %.1f ms" % (key, 1e3 * res[key]["seconds"]))

        refine(res, folder, unet, vae, te, cn, every, a.repeat)

    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


def refine(res, folder, unet, vae, te, cn, every, repeat):
    """The refiner at 1024 px, batch 1 and 4, through diffusers' own pipeline class."""
    import numpy as np
    from diffusers import StableDiffusionControlNetImg2ImgPipeline
    from PIL import Image
    from transformers import CLIPTokenizer
    sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
    from perflow_scheduler import PeRFlowScheduler
    sched = json.load(open(os.path.join(TINY, "scheduler", "scheduler_config.json")))
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=vae, text_encoder=te, tokenizer=CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
        unet=unet, controlnet=cn, scheduler=PeRFlowScheduler(**{k: v for k, v in sched.items() if k[0] != "_"}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8), "RGB")

    def run(batch):
        imgs = [base.resize((1024, 1024), Image.LANCZOS) for _ in range(batch)]  # the predictor's hand-over
        return pipe(["best quality"] * batch, image=imgs, control_image=imgs, height=1024, width=1024,
                    strength=1.0, num_inference_steps=4, guidance_scale=7.5,
                    negative_prompt=["blur, lowres, bad anatomy, bad hands, cropped, worst quality"] * batch,
                    generator=torch.manual_seed(0), output_type="np").images

    on_gpu([unet, vae, te, cn], every)
    for batch, rep in ((1, min(repeat, 3)), (4, min(repeat, 2))):
        torch.cuda.reset_peak_memory_stats()
        key = "refine_1024_4step_cfg_b%d" % batch
        res[key] = timed(lambda: run(batch), 1, rep)
        res[key]["batch"] = batch
        log("%s %.1f ms" % (key, 1e3 * res[key]["seconds"]))


if __name__ == "__main__":
    main()
