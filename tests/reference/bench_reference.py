#!/usr/bin/env python3
"""bench_reference.py - PyTorch side of `make bench`: builds real-size random-weight
models (seeded, cached under build/bench/models/) and times the reference forward pass.

    .venv/bin/python tests/reference/bench_reference.py clip --models build/bench/models --repeat 5

Prints one JSON line: {"what": ..., "seconds": median, "runs": [...], "peak_rss_mb": ..., "kernels": ...}. The C side
(build/bench/bench_*) loads the same model folder, so both time the same weights.
"""
import argparse
import json
import os
import re
import sys
import resource
import statistics
import time

import torch
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# CLIP ViT-L/14 text tower, as in SD-1.5's text_encoder/config.json.
CLIP_L14 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
                projection_dim=768)


def clip_model(models):
    d = os.path.join(models, "clip-vit-l14")
    if not os.path.exists(os.path.join(d, "model_index.json")):
        torch.manual_seed(0)
        te = CLIPTextModel(CLIPTextConfig(**CLIP_L14)).eval()
        te.save_pretrained(os.path.join(d, "text_encoder"), safe_serialization=True)
        with open(os.path.join(d, "model_index.json"), "w") as f:
            json.dump({"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]}, f)
    te = CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"), torch_dtype=torch.float32).eval()
    ids = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(0))
    return lambda: te(ids).last_hidden_state


def vae_model(models):
    """SD-1.5's AutoencoderKL (vae/config.json shapes), random weights; decodes [1, 4, 64, 64] -> 512x512."""
    from diffusers import AutoencoderKL
    d = os.path.join(models, "sd15-vae")
    if not os.path.exists(os.path.join(d, "model_index.json")):
        torch.manual_seed(0)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            norm_num_groups=32, sample_size=512, scaling_factor=0.18215).eval()
        vae.save_pretrained(os.path.join(d, "vae"), safe_serialization=True)
        with open(os.path.join(d, "model_index.json"), "w") as f:
            json.dump({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}, f)
    vae = AutoencoderKL.from_pretrained(os.path.join(d, "vae"), torch_dtype=torch.float32).eval()
    latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    return lambda: vae.decode(latents / vae.config.scaling_factor).sample


def sd15_unet(models):
    """The real-size SD-1.5 UNet (random weights), made once under models/sd15-unet."""
    from diffusers import UNet2DConditionModel
    d = os.path.join(models, "sd15-unet")
    if not os.path.exists(os.path.join(d, "model_index.json")):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
            layers_per_block=2, attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3).eval()
        unet.save_pretrained(os.path.join(d, "unet"), safe_serialization=True)
        with open(os.path.join(d, "model_index.json"), "w") as f:
            json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}, f)
    return UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), torch_dtype=torch.float32).eval()


def unet_model(models):
    """SD-1.5's UNet2DConditionModel (unet/config.json shapes), random weights; B=2 (the
    classifier-free guidance pair), 4x64x64 latents (512x512 images), 77x768 context, t=500."""
    unet = sd15_unet(models)
    g = torch.Generator().manual_seed(0)
    sample, ctx = torch.randn(2, 4, 64, 64, generator=g), torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([500.0, 500.0])
    return lambda: unet(sample, t, encoder_hidden_states=ctx).sample


def refine_model(models):
    """One refiner step at 1024 x 1024: SD-1.5's ControlNet (ControlNetModel.from_unet of the
    UNet above, the shapes of control_v11f1e_sd15_tile, random weights) then the UNet with its
    residuals, on the CFG batch: B=2, 4x128x128 latents, 77x768 context, a 3x1024x1024
    condition image, t=999. The folder holds the UNet's unet/ (linked) and controlnet/."""
    from diffusers import ControlNetModel
    unet = sd15_unet(models)
    d = os.path.join(models, "sd15-refine")
    if not os.path.exists(os.path.join(d, "controlnet", "config.json")):
        torch.manual_seed(1)
        cn = ControlNetModel.from_unet(unet, load_weights_from_unet=False).eval()
        with torch.no_grad():  # zero convolutions would make the residuals free to compute
            for p in cn.parameters():
                p.normal_(0, 0.02)
        cn.save_pretrained(os.path.join(d, "controlnet"), safe_serialization=True)
        os.makedirs(d, exist_ok=True)
        if not os.path.exists(os.path.join(d, "unet")):
            os.symlink(os.path.abspath(os.path.join(models, "sd15-unet", "unet")), os.path.join(d, "unet"))
        with open(os.path.join(d, "model_index.json"), "w") as f:
            json.dump({"_class_name": "StableDiffusionControlNetImg2ImgPipeline"}, f)
    cn = ControlNetModel.from_pretrained(os.path.join(d, "controlnet"), torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    sample, ctx = torch.randn(2, 4, 128, 128, generator=g), torch.randn(2, 77, 768, generator=g)
    cond = torch.rand(2, 3, 1024, 1024, generator=g)
    t = torch.tensor([999.0, 999.0])

    def step():
        down, mid = cn(sample, t, encoder_hidden_states=ctx, controlnet_cond=cond, conditioning_scale=1.0,
                       return_dict=False)
        return unet(sample, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
    return step


def single_file_model(models):
    """Real-size SD-1.5 as one LDM file (float16, the random weights of the models above)
    and two LoRAs: kohya keys of rank 32 on every attention, feed-forward and projection
    layer of the UNet and text encoder, and PEFT keys of rank 16 on the UNet's attention.
    Made once under models/sd15-single (tests/reference/goldens_weights.py's LDM writer)."""
    d = os.path.join(models, "sd15-single")
    ckpt, loras = os.path.join(d, "sd15.safetensors"), [os.path.join(d, f) for f in ("kohya.safetensors",
                                                                                      "peft.safetensors")]
    if not os.path.exists(loras[1]):
        from diffusers import AutoencoderKL
        from safetensors.torch import save_file
        from goldens_weights import clip_to_ldm, unet_to_ldm, vae_to_ldm
        os.makedirs(d, exist_ok=True)
        unet = sd15_unet(models)
        vae_model(models)
        vae = AutoencoderKL.from_pretrained(os.path.join(models, "sd15-vae", "vae"))
        clip_model(models)
        te = CLIPTextModel.from_pretrained(os.path.join(models, "clip-vit-l14", "text_encoder"))
        usd, vsd, tsd = unet.state_dict(), vae.state_dict(), te.state_dict()
        sd = {}
        sd.update(unet_to_ldm(usd, unet.config))
        sd.update(vae_to_ldm(vsd, vae.config))
        sd.update(clip_to_ldm(tsd))
        save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, ckpt)
        g = torch.Generator().manual_seed(0)
        kohya, peft = {}, {}
        for comp, src, pat in (("unet", usd, r"(attn[12]\.to_(q|k|v|out\.0)|ff\.net\.(0\.proj|2)|proj_(in|out))\.weight$"),
                               ("te", tsd, r"(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$")):
            for k, w in src.items():
                if not re.search(pat, k):
                    continue
                name = f"lora_{comp}_" + k[:-7].replace(".", "_")
                kohya[name + ".lora_down.weight"] = (torch.randn([32] + list(w.shape[1:]), generator=g) * 0.01).half()
                kohya[name + ".lora_up.weight"] = (torch.randn([w.shape[0], 32] + [1] * (w.ndim - 2), generator=g)
                                                   * 0.01).half()
                kohya[name + ".alpha"] = torch.tensor(16.0).half()
                if comp == "unet" and "attn" in k:
                    peft[f"unet.{k[:-7]}.lora_A.weight"] = (torch.randn(16, w.shape[1], generator=g) * 0.01).half()
                    peft[f"unet.{k[:-7]}.lora_B.weight"] = (torch.randn(w.shape[0], 16, generator=g) * 0.01).half()
        save_file(kohya, loras[0])
        save_file(peft, loras[1])
    return ckpt, loras


def load_model(models):
    """Loading SD-1.5 from a single file with two LoRAs fused, as diffusers does it:
    from_single_file(config=configs/sd15), load_lora_weights for each, set_adapters with the
    scales, fuse_lora, unload_lora_weights (float32 weights on the CPU)."""
    from diffusers import StableDiffusionPipeline
    from perflow_scheduler import PeRFlowScheduler
    ckpt, loras = single_file_model(models)
    cfg = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "sd15")
    sched = json.load(open(os.path.join(cfg, "scheduler", "scheduler_config.json")))

    def load():
        pipe = StableDiffusionPipeline.from_single_file(
            ckpt, config=cfg, scheduler=PeRFlowScheduler(**{k: v for k, v in sched.items() if k[0] != "_"}),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False, torch_dtype=torch.float32,
            local_files_only=True)
        pipe.load_lora_weights(loras[0], adapter_name="a")
        pipe.load_lora_weights(loras[1], adapter_name="b")
        pipe.set_adapters(["a", "b"], adapter_weights=[0.8, 0.5])
        pipe.fuse_lora(adapter_names=["a", "b"])
        pipe.unload_lora_weights()
        return pipe
    return load


def sdxl_model(models):
    """SDXL 1.0 base's UNet2DConditionModel (its unet/config.json shapes), random weights; B=2, 4x64x64
    latents, 77x2048 context, pooled text embeddings (2, 1280) and time ids, t=500."""
    from diffusers import UNet2DConditionModel
    d = os.path.join(models, "sdxl-unet")
    if not os.path.exists(os.path.join(d, "model_index.json")):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280], layers_per_block=2,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[5, 10, 20],
            transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32).eval()
        unet.save_pretrained(os.path.join(d, "unet"), safe_serialization=True)
        with open(os.path.join(d, "model_index.json"), "w") as f:
            json.dump({"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}, f)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    sample, ctx = torch.randn(2, 4, 64, 64, generator=g), torch.randn(2, 77, 2048, generator=g)
    added = {"text_embeds": torch.randn(2, 1280, generator=g),
             "time_ids": torch.tensor([[512.0, 512, 0, 0, 512, 512]] * 2)}
    t = torch.tensor([500.0, 500.0])
    return lambda: unet(sample, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["clip", "vae", "unet", "refine", "load", "sdxl"])
    ap.add_argument("--models", default="build/bench/models")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fn = {"clip": clip_model, "vae": vae_model, "unet": unet_model, "refine": refine_model,
          "load": load_model, "sdxl": sdxl_model}[a.what](a.models)
    runs = []
    with torch.inference_mode():
        fn()  # warm-up
        for _ in range(a.repeat):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
    print(json.dumps({"what": a.what, "impl": f"torch {torch.__version__}", "threads": a.threads,
                      "seconds": statistics.median(runs), "runs": runs,
                      # peak resident memory of the process, weights included (Linux: KiB)
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      # the instruction set of torch's CPU kernels (ATen dispatch; oneDNN and MKL pick alike)
                      "kernels": f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"}))


if __name__ == "__main__":
    main()
