#!/usr/bin/env python3
"""make_tiny_models.py - builds the tiny random-weight SD-1.x/2.x models the tests use.

Run from the repository root with the reference venv (make deps-reference):
    .venv/bin/python tests/reference/make_tiny_models.py

Writes, in diffusers layout (model_index.json, <component>/config.json, weights):
  tests/data/models/tiny-sd15/   SD-1.5-like: real CLIP vocabulary (49,408 tokens, text
                                 encoder stored as fp16 variant), quick_gelu, conv projections
  tests/data/models/tiny-sd2/    SD-2-like: a 1,000-token BPE vocabulary cut from the real one,
                                 gelu, linear projections, per-block head counts,
                                 upcast_attention, pad token "!"
  tests/data/models/tiny-sd15-delta/unet/   PeRFlow-style delta weights for tiny-sd15's UNet
  tests/data/models/tiny-sd15-controlnet/   a ControlNetModel matching tiny-sd15 (the shape of
                                 control_v11f1e_sd15_tile, shrunk), zero convolutions perturbed
  tests/data/models/tiny-sd15-controlnet-b/ a second one (other embedder widths, "bgr" order) for
                                 text-to-image with several ControlNets
  tests/data/models/tiny-sdxl/   SDXL-like (the shapes of diffusers' own tiny SDXL test pipeline):
                                 two text encoders (the second with projection, gelu), tokenizer_2
                                 padding with "!", a UNet with text_time embedding and per-block
                                 transformer depths, force_zeros_for_empty_prompt
Everything is seeded, so a re-run on the same library versions rewrites identical files.
The shapes follow diffusers' own tiny test pipelines, shrunk to keep the repository small.
"""
import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_vocab import write_clip_tokenizer  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "data", "models")

SCHEDULER_CONFIG = {
    "_class_name": "PeRFlowScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "diff_eps",
    "num_time_windows": 4,
    "t_noise": 1,
    "t_clean": 0,
}


def small_vocab_tokenizer(real_dir, out_dir, n_merges, pad_token):
    """A valid CLIP BPE tokenizer keeping only the first n_merges merges of the real one."""
    with open(os.path.join(real_dir, "merges.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    header, merges = lines[0], [m for m in lines[1:] if m][:n_merges]
    base = json.load(open(os.path.join(real_dir, "vocab.json"), encoding="utf-8"))
    # The real vocabulary starts with the 256 byte symbols, then the same with </w>.
    ordered = sorted(base.items(), key=lambda kv: kv[1])
    vocab = [tok for tok, _ in ordered[:512]]
    vocab += ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    tmp = out_dir + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(header + "\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), pad_token=pad_token,
                        model_max_length=77)
    tok.save_pretrained(out_dir)
    shutil.rmtree(tmp)
    return tok


def perturb_(module, std, gen):
    """Adds N(0, std^2) noise to every parameter: default inits leave norms at exactly 1/0
    and biases near 0, which would let a wrong scale or bias pass the comparisons."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)


def save_component(model, out_dir, weights_name, dtype=torch.float32):
    model.save_pretrained(out_dir, safe_serialization=True)
    # save_pretrained picks its own file name; rewrite with the name and dtype we want.
    for f in os.listdir(out_dir):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(out_dir, f))
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(out_dir, weights_name), metadata={"format": "pt"})


def write_model_index(path, te_class="CLIPTextModel"):
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.35.2",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PeRFlowScheduler"],
        "text_encoder": ["transformers", te_class],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


def write_scheduler(d):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER_CONFIG, f, indent=2)
        f.write("\n")


def make_sd15(gen):
    root = os.path.join(OUT, "tiny-sd15")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    write_clip_tokenizer(os.path.join(root, "tokenizer"))
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
        projection_dim=32))
    perturb_(te, 0.02, gen)
    # fp16 variant only: exercises the F16 path; the reference upcasts the same values.
    te = te.half().float()
    save_component(te, os.path.join(root, "text_encoder"), "model.fp16.safetensors", torch.float16)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0)
    perturb_(unet, 0.02, gen)
    save_component(unet, os.path.join(root, "unet"), "diffusion_pytorch_model.safetensors")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[16, 16, 32, 32],
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
    perturb_(vae, 0.02, gen)
    save_component(vae, os.path.join(root, "vae"), "diffusion_pytorch_model.safetensors")
    write_scheduler(os.path.join(root, "scheduler"))
    write_model_index(os.path.join(root, "model_index.json"))

    # Delta weights: small dense changes to every UNet tensor, the shape of a PeRFlow delta.
    delta_dir = os.path.join(OUT, "tiny-sd15-delta", "unet")
    shutil.rmtree(os.path.dirname(delta_dir), ignore_errors=True)
    os.makedirs(delta_dir)
    delta = {k: (torch.randn(v.shape, generator=gen) * 0.01).to(torch.float16).contiguous()
             for k, v in unet.state_dict().items()}
    save_file(delta, os.path.join(delta_dir, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(delta_dir, "config.json"), "w") as f:
        cfg = dict(unet.config)
        # diffusers lists these from a set: sorted, so that a re-run writes the same file
        cfg["_use_default_values"] = sorted(cfg.get("_use_default_values", []))
        json.dump(cfg, f, indent=2, sort_keys=True, default=list)
        f.write("\n")


def make_sd2(gen):
    root = os.path.join(OUT, "tiny-sd2")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    real = os.path.join(OUT, "tiny-sd15", "tokenizer")
    tok = small_vocab_tokenizer(real, os.path.join(root, "tokenizer"), 1000 - 512 - 2, pad_token="!")
    assert len(tok) == 1000, len(tok)
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=1000, hidden_size=24, intermediate_size=40, num_hidden_layers=4,
        num_attention_heads=3, max_position_embeddings=77, hidden_act="gelu",
        layer_norm_eps=1e-5, bos_token_id=998, eos_token_id=999, pad_token_id=0, projection_dim=24))
    perturb_(te, 0.02, gen)
    save_component(te, os.path.join(root, "text_encoder"), "model.safetensors")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=(2, 4, 4), use_linear_projection=True,
        upcast_attention=True, norm_num_groups=8, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0)
    perturb_(unet, 0.02, gen)
    save_component(unet, os.path.join(root, "unet"), "diffusion_pytorch_model.safetensors")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[16, 32],
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=2, norm_num_groups=8, sample_size=16, scaling_factor=0.18215)
    perturb_(vae, 0.02, gen)
    save_component(vae, os.path.join(root, "vae"), "diffusion_pytorch_model.safetensors")
    write_scheduler(os.path.join(root, "scheduler"))
    write_model_index(os.path.join(root, "model_index.json"))


def make_controlnet(name, seed, cond_channels, order="rgb"):
    """A ControlNet for tiny-sd15: its UNet's down and mid half (ControlNetModel.from_unet
    copies the config), a 4-block condition embedder (8x downscale, as the VAE), and every
    weight perturbed: the zero convolutions would otherwise give zero residuals and no test
    could see a wrong ControlNet. Its own generator, so the other models stay as they were."""
    gen = torch.Generator().manual_seed(seed)
    root = os.path.join(OUT, name)
    shutil.rmtree(root, ignore_errors=True)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(OUT, "tiny-sd15", "unet"))
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=cond_channels,
                                   controlnet_conditioning_channel_order=order, load_weights_from_unet=True)
    perturb_(cn, 0.02, gen)
    with torch.no_grad():
        # zero convolutions at the scale of a trained ControlNet's, and a condition
        # embedder strong enough that the condition image visibly moves the residuals
        for m in list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block]:
            m.weight.add_(torch.randn(m.weight.shape, generator=gen) * 0.2)
        for p in cn.controlnet_cond_embedding.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.15)
    save_component(cn, root, "diffusion_pytorch_model.safetensors")


def make_sdxl():
    """Its own generator, so the other models stay as they were."""
    gen = torch.Generator().manual_seed(1129)
    root = os.path.join(OUT, "tiny-sdxl")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    real = os.path.join(OUT, "tiny-sd15", "tokenizer")
    # CLIP ViT-L's tokenizer pads with its end token, OpenCLIP bigG's with "!" (id 0 here)
    small_vocab_tokenizer(real, os.path.join(root, "tokenizer"), 1000 - 512 - 2, pad_token="<|endoftext|>")
    small_vocab_tokenizer(real, os.path.join(root, "tokenizer_2"), 1000 - 512 - 2, pad_token="!")
    # SDXL's text_encoder_2 config says eos_token_id 2, so transformers pools at the
    # largest id (the end token) rather than searching for the end token's id: kept.
    te_cfg = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=5,
                  num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5, bos_token_id=0,
                  eos_token_id=2, pad_token_id=1, projection_dim=32)
    te = CLIPTextModel(CLIPTextConfig(hidden_act="quick_gelu", **te_cfg))
    perturb_(te, 0.02, gen)
    save_component(te, os.path.join(root, "text_encoder"), "model.safetensors")
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_act="gelu", **dict(te_cfg, hidden_size=40,
                                                                                 num_attention_heads=5)))
    perturb_(te2, 0.02, gen)
    save_component(te2, os.path.join(root, "text_encoder_2"), "model.safetensors")
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=32 + 40, norm_num_groups=8)
    perturb_(unet, 0.02, gen)
    # the fp16 variant only (as SDXL checkpoints are published; half the size): the
    # reference loads it with variant="fp16" and upcasts the same values
    unet = unet.half().float()
    save_component(unet, os.path.join(root, "unet"), "diffusion_pytorch_model.fp16.safetensors", torch.float16)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[16, 16, 32, 32],
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=True)
    perturb_(vae, 0.02, gen)
    save_component(vae, os.path.join(root, "vae"), "diffusion_pytorch_model.safetensors")
    write_scheduler(os.path.join(root, "scheduler"))
    with open(os.path.join(root, "scheduler", "scheduler_config.json")) as f:
        sched = json.load(f)
    sched["prediction_type"] = "ddim_eps"  # PeRFlow's SDXL models
    with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(sched, f, indent=2)
        f.write("\n")
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": "0.35.2",
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "PeRFlowScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


def main():
    torch.manual_seed(20261126)
    gen = torch.Generator().manual_seed(1126)
    make_sd15(gen)
    make_sd2(gen)
    make_controlnet("tiny-sd15-controlnet", 1127, (8, 8, 16, 16))  # the refiner's tile
    make_controlnet("tiny-sd15-controlnet-b", 1128, (8, 16, 16, 32), "bgr")  # a second, for MultiControlNet
    make_sdxl()
    total = 0
    for dirpath, _, files in os.walk(OUT):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    print(f"wrote {OUT} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
