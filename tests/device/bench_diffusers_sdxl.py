#!/usr/bin/env python3
"""bench_diffusers_sdxl.py - the diffusers side of tests/device/check.sh's SDXL timing: makes a
random-weight SDXL folder in fp16 (SDXL 1.0 base's configs: UNet, VAE, CLIP ViT-L and OpenCLIP
bigG text encoders; the tiny SDXL model's tokenizers, whose vocabulary is cut down but whose
sequence length is the real 77, and a PeRFlowScheduler config with ddim_eps) for bench_gpu,
then times diffusers' StableDiffusionXLPipeline with the PeRFlow sampler
(tests/reference/perflow_scheduler.py) on CUDA in fp16 with SDPA:

  sdxl_1024_4step_cfg_b1   a 1024 x 1024 image, 4 steps, guidance 4.5 (CFG), output_type "np"
  sdxl_1024_4step_cfg_b4   the same, 4 images of one prompt

The VAE runs in fp16 here as the timing's subject is the pipeline; diffusers upcasts it only when
force_upcast is set and the VAE is fp16, which this folder's config (force_upcast false, an
fp16-safe VAE's setting) does not ask. perflow's CUDA backend is fp16 throughout.

    python3 tests/device/bench_diffusers_sdxl.py --models /tmp/pf-models --out diffusers_sdxl.json
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_diffusers import ROOT, log, save_weights, timed  # noqa: E402

TINY = os.path.join(ROOT, "tests", "data", "models", "tiny-sdxl")
UNET = dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280], layers_per_block=2,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[5, 10, 20],
            transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
           layers_per_block=2, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
           norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=False)
TE1 = dict(vocab_size=1000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
           max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
           pad_token_id=1)
TE2 = dict(vocab_size=1000, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
           max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, bos_token_id=0, eos_token_id=2,
           pad_token_id=1)


def make(folder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device("cuda"):
        unet, vae = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE)
        te, te2 = CLIPTextModel(CLIPTextConfig(**TE1)), CLIPTextModelWithProjection(CLIPTextConfig(**TE2))
    mods = [m.to(torch.float16).eval() for m in (unet, vae, te, te2)]
    log("SDXL modules made in %.1fs" % (time.perf_counter() - t))
    if not os.path.exists(os.path.join(folder, "model_index.json")):
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for sub, m in zip(("unet", "vae"), mods[:2]):
            os.makedirs(os.path.join(tmp, sub))
            m.save_config(os.path.join(tmp, sub))
            save_weights(m, os.path.join(tmp, sub, "diffusion_pytorch_model.safetensors"))
        for sub, m, cfg, arch in (("text_encoder", mods[2], TE1, "CLIPTextModel"),
                                  ("text_encoder_2", mods[3], TE2, "CLIPTextModelWithProjection")):
            os.makedirs(os.path.join(tmp, sub))
            with open(os.path.join(tmp, sub, "config.json"), "w") as f:
                json.dump(dict(cfg, architectures=[arch], model_type="clip_text_model"), f, indent=1)
            save_weights(m, os.path.join(tmp, sub, "model.safetensors"))
        for sub in ("tokenizer", "tokenizer_2", "scheduler"):
            shutil.copytree(os.path.join(TINY, sub), os.path.join(tmp, sub))
        shutil.copy(os.path.join(TINY, "model_index.json"), os.path.join(tmp, "model_index.json"))
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
        log("folder %s written in %.1fs" % (folder, time.perf_counter() - t))
    return mods


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="/tmp/pf-models")
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    from diffusers import StableDiffusionXLPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTokenizer
    sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
    from perflow_scheduler import PeRFlowScheduler
    folder = os.path.join(a.models, "sdxl-random")
    os.makedirs(a.models, exist_ok=True)
    unet, vae, te, te2 = make(folder)
    unet.set_attn_processor(AttnProcessor2_0())
    vae.set_attn_processor(AttnProcessor2_0())
    sched = json.load(open(os.path.join(folder, "scheduler", "scheduler_config.json")))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te, text_encoder_2=te2, unet=unet,
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer_2")),
        scheduler=PeRFlowScheduler(**{k: v for k, v in sched.items() if k[0] != "_"}))
    pipe.set_progress_bar_config(disable=True)
    res = {"impl": "diffusers StableDiffusionXLPipeline fp16, SDPA, PeRFlow sampler (ddim_eps)",
           "device": torch.cuda.get_device_name(0), "model_dir": folder}
    with torch.inference_mode():
        for batch, rep in ((1, a.repeat), (4, max(1, a.repeat - 1))):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            key = "sdxl_1024_4step_cfg_b%d" % batch
            res[key] = timed(lambda: pipe("a photo of an astronaut riding a horse on mars", negative_prompt="",
                                          num_images_per_prompt=batch, height=1024, width=1024,
                                          num_inference_steps=4, guidance_scale=4.5,
                                          generator=torch.Generator("cpu").manual_seed(0), output_type="np").images,
                             1, rep)
            res[key]["batch"] = batch
            log("%s %.1f ms" % (key, 1e3 * res[key]["seconds"]))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
