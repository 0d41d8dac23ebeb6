#!/usr/bin/env python3
"""goldens_weights.py - single-file checkpoints, LoRAs and sharded weights, with diffusers
as the oracle (issue 14). Run from the repository root with the reference venv, after
make_tiny_models.py:
    .venv/bin/python tests/reference/goldens_weights.py

Writes
  tests/data/models/single-file/tiny-sd15.safetensors  tiny-sd15 in the original LDM layout
        (model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*, the
        schedule buffers and position_ids real SD-1.x files carry), as float16 ("EMA-only")
  tests/data/models/single-file/tiny-sd2.safetensors   tiny-sd2 likewise, with SD-2.x's OpenCLIP
        text encoder (cond_stage_model.model.*: fused in_proj, text_projection, logit_scale)
  tests/data/models/loras/*.safetensors   LoRAs in every format: PEFT (with and without
        lora_adapter_metadata) and diffusers written by the libraries, diffusers' old
        attention-processor spelling, kohya keys with LoCon convolutions written here, and
        bad ones (rank mismatch, keys of no model)
  tests/data/models/tiny-sd2-sharded/   tiny-sd2 with its VAE sharded by diffusers and its text
        encoder by transformers (save_pretrained(max_shard_size=...)); UNet, tokenizer and
        scheduler are links to tiny-sd2's
  tests/data/goldens/weights.json and goldens/<model>/weights-*.safetensors: fused weights
        (load base, merge the PeRFlow delta, load_lora_weights for each LoRA,
        set_adapters(names, scales), fuse_lora()) and whole pipeline images
        (StableDiffusionPipeline.from_single_file(..., config=DIR) with the PeRFlow sampler)

The script asserts what makes diffusers the oracle: from_single_file(config=DIR) loads each
single file back into exactly the tiny model's (float16-rounded) weights, also with EMA
copies and schedule buffers added ("pruned"); every fused weight equals
W + sum(scale * alpha / rank * up @ down) computed here in float64; and the sharded
folders load to the unsharded weights.
"""
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODELS = os.path.join(ROOT, "tests", "data", "models")
GOLDENS = os.path.join(ROOT, "tests", "data", "goldens")
SINGLE = os.path.join(MODELS, "single-file")
LORAS = os.path.join(MODELS, "loras")
VERSION = "1"
META = {"format": "perflow-golden", "version": VERSION, "generator": "tests/reference/goldens_weights.py"}


# ------------------------------------------------------------------ LDM layout, written here

RESNET_TO_LDM = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
                 ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection.")]


def sub_prefix(s, table):
    for a, b in table:
        if s.startswith(a):
            return b + s[len(a):]
    raise KeyError(s)


def unet_to_ldm(sd, config):
    """diffusers UNet2DConditionModel names -> the LDM UNetModel's (the inverse of diffusers'
    convert_ldm_unet_checkpoint, written independently of it)."""
    L = config["layers_per_block"]
    has_attn_up = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    out = {}
    for k, v in sd.items():
        m = None
        for a, b in fixed.items():
            if k.startswith(a):
                m = b + k[len(a):]
        if m is None:
            p = k.split(".")
            if p[0] == "down_blocks":
                b, kind = int(p[1]), p[2]
                if kind == "downsamplers":
                    m = f"input_blocks.{(b + 1) * (L + 1)}.0.op." + ".".join(p[5:])
                else:
                    i = 1 + b * (L + 1) + int(p[3])
                    rest = ".".join(p[4:])
                    m = f"input_blocks.{i}.0." + sub_prefix(rest, RESNET_TO_LDM) if kind == "resnets" \
                        else f"input_blocks.{i}.1.{rest}"
            elif p[0] == "mid_block":
                rest = ".".join(p[3:])
                if p[1] == "attentions":
                    m = f"middle_block.1.{rest}"
                else:
                    m = f"middle_block.{2 * int(p[2])}." + sub_prefix(rest, RESNET_TO_LDM)
            elif p[0] == "up_blocks":
                b, kind = int(p[1]), p[2]
                if kind == "upsamplers":
                    m = f"output_blocks.{b * (L + 1) + L}.{2 if has_attn_up[b] else 1}.conv." + ".".join(p[5:])
                else:
                    i = b * (L + 1) + int(p[3])
                    rest = ".".join(p[4:])
                    m = f"output_blocks.{i}.0." + sub_prefix(rest, RESNET_TO_LDM) if kind == "resnets" \
                        else f"output_blocks.{i}.1.{rest}"
        assert m is not None, k
        out["model.diffusion_model." + m] = v
    return out


def vae_to_ldm(sd, config):
    nb = len(config["block_out_channels"])
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        coder = p[0]
        if k.startswith(("quant_conv.", "post_quant_conv.")) or p[1] in ("conv_in", "conv_out"):
            m = k
        elif p[1] == "conv_norm_out":
            m = f"{coder}.norm_out.{p[2]}"
        elif p[1] == "mid_block" and p[2] == "resnets":
            m = f"{coder}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:])
        elif p[1] == "mid_block" and p[2] == "attentions":
            names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
            m = f"{coder}.mid.attn_1.{names[p[4]]}.{p[-1]}"
            if p[-1] == "weight" and v.ndim == 2:
                v = v[:, :, None, None]  # LDM's AttnBlock: 1x1 convolutions
        else:
            i = int(p[2])
            blk = f"down.{i}" if coder == "encoder" else f"up.{nb - 1 - i}"
            if p[3] == "resnets":
                rest = ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
                m = f"{coder}.{blk}.block.{p[4]}.{rest}"
            else:
                m = f"{coder}.{blk}.{'downsample' if coder == 'encoder' else 'upsample'}.conv.{p[-1]}"
        out["first_stage_model." + m] = v
    return out


def clip_to_ldm(sd):
    out = {"cond_stage_model.transformer." + k: v for k, v in sd.items()}
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return out


def openclip_to_ldm(sd, gen):
    """transformers CLIPTextModel -> open_clip's TextTransformer (q, k, v fused into in_proj)."""
    P = "cond_stage_model.model."
    out = {P + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           P + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           P + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           P + "ln_final.bias": sd["text_model.final_layer_norm.bias"]}
    n = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers."))
    for i in range(n):
        a, b = f"text_model.encoder.layers.{i}.", f"{P}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[b + f"attn.in_proj_{kind}"] = torch.cat([sd[a + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            out[b + f"attn.out_proj.{kind}"] = sd[a + f"self_attn.out_proj.{kind}"]
            out[b + f"ln_1.{kind}"] = sd[a + f"layer_norm1.{kind}"]
            out[b + f"ln_2.{kind}"] = sd[a + f"layer_norm2.{kind}"]
            out[b + f"mlp.c_fc.{kind}"] = sd[a + f"mlp.fc1.{kind}"]
            out[b + f"mlp.c_proj.{kind}"] = sd[a + f"mlp.fc2.{kind}"]
    D = sd["text_model.embeddings.token_embedding.weight"].shape[1]
    out[P + "text_projection"] = torch.randn(D, D, generator=gen) * 0.05  # skipped by every loader
    out[P + "logit_scale"] = torch.tensor(4.6052)
    return out


def schedule_buffers():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return {"betas": betas.float(), "alphas_cumprod": ac.float(), "sqrt_alphas_cumprod": ac.sqrt().float()}


def folder_state(name, component):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    d = os.path.join(MODELS, name)
    if component == "unet":
        m = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"))
    elif component == "vae":
        m = AutoencoderKL.from_pretrained(os.path.join(d, "vae"))
    else:
        variant = "fp16" if os.path.exists(os.path.join(d, "text_encoder", "model.fp16.safetensors")) else None
        m = CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"), variant=variant, dtype=torch.float32)
    return m, {k: v.detach().float() for k, v in m.state_dict().items()}


def write_single_file(name, gen):
    """The LDM file of tiny model `name`, float16 (the schedule buffers and ids keep their dtypes)."""
    unet, usd = folder_state(name, "unet")
    vae, vsd = folder_state(name, "vae")
    _, tsd = folder_state(name, "text_encoder")
    ckpt = {}
    ckpt.update(unet_to_ldm(usd, unet.config))
    ckpt.update(vae_to_ldm(vsd, vae.config))
    ckpt.update(clip_to_ldm(tsd) if name == "tiny-sd15" else openclip_to_ldm(tsd, gen))
    ckpt = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ckpt.items()}
    ckpt.update(schedule_buffers())
    os.makedirs(SINGLE, exist_ok=True)
    path = os.path.join(SINGLE, f"{name}.safetensors")
    save_file(ckpt, path, metadata={"format": "pt"})
    return path


def pruned_variant(path, out):
    """path plus EMA copies of the UNet (model_ema.<name without dots>, other values) and
    model_ema.decay: a "pruned" checkpoint, whose non-EMA weights diffusers (and perflow) use."""
    sd = load_file(path)
    for k in list(sd):
        if k.startswith("model.diffusion_model."):
            sd["model_ema." + k[len("model."):].replace(".", "")] = (sd[k].float() + 1).half()
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    save_file(sd, out, metadata={"format": "pt"})


def single_file_components(path, name):
    """unet, vae, text_encoder as diffusers' from_single_file(config=tiny folder) loads them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel
    cfg = os.path.join(MODELS, name)
    unet = UNet2DConditionModel.from_single_file(path, config=cfg, subfolder="unet", torch_dtype=torch.float32,
                                                 local_files_only=True)
    vae = AutoencoderKL.from_single_file(path, config=cfg, subfolder="vae", torch_dtype=torch.float32,
                                         local_files_only=True)
    te = create_diffusers_clip_model_from_ldm(CLIPTextModel, load_file(path), subfolder="text_encoder", config=cfg,
                                              torch_dtype=torch.float32, local_files_only=True)
    return unet, vae, te


def check_single_file(path, name):
    """diffusers loads the file back into the tiny model's weights, rounded to float16."""
    unet, vae, te = single_file_components(path, name)
    for comp, model in (("unet", unet), ("vae", vae), ("text_encoder", te)):
        _, want = folder_state(name, comp)
        got = {k: v.detach().float() for k, v in model.state_dict().items()}
        got.pop("text_model.embeddings.position_ids", None)
        want.pop("text_model.embeddings.position_ids", None)
        assert set(got) == set(want), (name, comp, set(got) ^ set(want))
        for k in want:
            assert torch.equal(got[k], want[k].half().float()), (name, comp, k)
    print(f"{os.path.relpath(path, ROOT)}: diffusers' from_single_file gives tiny model {name} exactly")


# ------------------------------------------------------------------ LoRAs

# (module, rank, alpha): what the kohya LoRAs change, in diffusers names, for tiny-sd15:
# attention projections and proj_in (1x1 convolutions in SD-1.x), a feed-forward layer,
# LoCon's 3x3 and 1x1 convolutions and a time-embedding projection, and the text encoder's
# attention and MLP.
KOHYA_SD15_UNET = [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 4, 2.0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", 4, 2.0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v", 4, 2.0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", 4, 2.0),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 4, 2.0),
    ("down_blocks.0.attentions.0.proj_in", 4, 2.0),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.to_v", 4, 2.0),
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", 4, 2.0),
    ("up_blocks.1.attentions.1.proj_out", 4, 2.0),
    ("down_blocks.0.resnets.0.conv1", 2, 1.0),            # LoCon: 3x3
    ("up_blocks.0.resnets.0.conv_shortcut", 2, 1.0),      # LoCon: 1x1
    ("down_blocks.1.resnets.0.time_emb_proj", 2, 1.0),
]
KOHYA_SD15_TE = [
    ("text_model.encoder.layers.0.self_attn.q_proj", 4, 2.0),
    ("text_model.encoder.layers.1.self_attn.out_proj", 4, 2.0),
    ("text_model.encoder.layers.2.mlp.fc1", 4, 2.0),
]
# tiny-sd2: linear proj_in, and the text encoder's q/k/v (slices of OpenCLIP's in_proj in the single file)
KOHYA_SD2_UNET = [
    ("down_blocks.1.attentions.1.proj_in", 4, 3.0),
    ("down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q", 4, 3.0),
    ("up_blocks.2.resnets.2.conv2", 4, 3.0),
]
KOHYA_SD2_TE = [
    ("text_model.encoder.layers.1.self_attn.q_proj", 3, 3.0),
    ("text_model.encoder.layers.1.self_attn.k_proj", 3, 3.0),
    ("text_model.encoder.layers.3.self_attn.v_proj", 3, 3.0),
    # diffusers infers the text encoder's spelling from a to_out_lora key: without an
    # out_proj module it cannot load a kohya text encoder LoRA at all
    ("text_model.encoder.layers.3.self_attn.out_proj", 3, 3.0),
]


def lora_pair(weight, rank, gen, std=0.1):
    """(up, down) for a weight of shape (out, in[, kh, kw]), as kohya shapes them."""
    out, rest = weight.shape[0], list(weight.shape[1:])
    down = torch.randn([rank] + rest, generator=gen) * std
    up = torch.randn([out, rank] + [1] * (len(rest) - 1), generator=gen) * std
    return up, down


def write_kohya(path, targets, gen, extra=None):
    """kohya/A1111 keys: lora_unet_/lora_te_ + the module name with "_" for ".". Returns
    {(component, module): (up, down, alpha)} for the formula check."""
    sd, mods = {}, {}
    for comp, sd_w, entries in targets:
        prefix = "lora_unet_" if comp == "unet" else "lora_te_"
        for module, rank, alpha in entries:
            up, down = lora_pair(sd_w[module + ".weight"], rank, gen)
            name = prefix + module.replace(".", "_")
            sd[name + ".lora_up.weight"] = up.half()
            sd[name + ".lora_down.weight"] = down.half()
            sd[name + ".alpha"] = torch.tensor(alpha).half()
            mods[(comp, module)] = (up.half().float(), down.half().float(), alpha)
    if extra:
        sd.update(extra)
    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata={"ss_network_module": "networks.lora"})
    return mods


def peft_loras(unet, te, gen):
    """PEFT adapters on diffusers' UNet and transformers' text encoder, lora_B non-zero."""
    from peft import LoraConfig
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"],
                                alpha_pattern={"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": 2}))
    te.add_adapter(LoraConfig(r=2, lora_alpha=3, init_lora_weights=False,
                              target_modules=["q_proj", "v_proj", "out_proj", "fc1"]))
    with torch.no_grad():  # small, as trained LoRAs are
        for m in (unet, te):
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def write_peft_and_diffusers(name):
    """PEFT format (unet./text_encoder. + lora_A/lora_B, lora_adapter_metadata) written by
    diffusers' save_lora_weights, the same without metadata, diffusers' own spelling
    (.lora.down in the UNet, .lora_linear_layer.down in the text encoder), and the old
    attention-processor spelling (processor.to_q_lora.down, self_attn.to_q_lora.down)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    unet, _ = folder_state(name, "unet")
    te, _ = folder_state(name, "text_encoder")
    peft_loras(unet, te, torch.Generator().manual_seed(1414))
    usd, tsd = get_peft_model_state_dict(unet), get_peft_model_state_dict(te)
    d = tempfile.mkdtemp()
    StableDiffusionPipeline.save_lora_weights(d, unet_lora_layers=usd, text_encoder_lora_layers=tsd,
                                              unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                                              text_encoder_lora_adapter_metadata=te.peft_config["default"].to_dict())
    shutil.copy(os.path.join(d, "pytorch_lora_weights.safetensors"), os.path.join(LORAS, "peft.safetensors"))
    sd = load_file(os.path.join(LORAS, "peft.safetensors"))
    save_file(sd, os.path.join(LORAS, "peft-nometa.safetensors"), metadata={"format": "pt"})
    # diffusers' spellings throughout: .lora.down/.up in the UNet, .lora_linear_layer.down/.up in the
    # text encoder (convert_state_dict_to_diffusers renames only the attention projections, and
    # diffusers' loader, which looks at the first key only, then drops the ones it left)
    dif = {"unet." + k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v for k, v in usd.items()}
    dif.update({"text_encoder." + k.replace(".lora_A.", ".lora_linear_layer.down.")
                .replace(".lora_B.", ".lora_linear_layer.up."): v for k, v in tsd.items()})
    save_file({k: v.contiguous() for k, v in dif.items()}, os.path.join(LORAS, "diffusers.safetensors"))
    old = {}
    for k, v in dif.items():
        m = re.match(r"(unet\..*\.attn[12])\.(to_q|to_k|to_v|to_out\.0)\.lora\.(up|down)\.weight$", k)
        t = re.match(r"(text_encoder\..*\.self_attn)\.(q|k|v|out)_proj\.lora_linear_layer\.(up|down)\.weight$", k)
        if m:
            old[f"{m[1]}.processor.{m[2].replace('.0', '')}_lora.{m[3]}.weight"] = v
        elif t:
            old[f"{t[1]}.to_{t[2]}_lora.{t[3]}.weight"] = v
        # the attention processors' LoRAs were attention-only: other modules had no such spelling
    save_file({k: v.contiguous() for k, v in old.items()}, os.path.join(LORAS, "diffusers-old.safetensors"))
    shutil.rmtree(d)


def bad_loras(gen):
    """A rank mismatch (up rank 4, down rank 2) and a LoRA of keys no SD-1.x/2.x model has."""
    write_kohya(os.path.join(LORAS, "bad-rank.safetensors"), [], gen, extra={
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(32, 4, 1, 1, generator=gen).half(),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 32, 1, 1, generator=gen).half(),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(2.0).half()})
    write_kohya(os.path.join(LORAS, "bad-foreign.safetensors"), [], gen, extra={
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn1_to_q.lora_up.weight":
            torch.randn(64, 4, generator=gen).half(),
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn1_to_q.lora_down.weight":
            torch.randn(4, 64, generator=gen).half(),
        "lora_te2_text_model_encoder_layers_30_mlp_fc1.lora_up.weight": torch.randn(128, 4, generator=gen).half(),
        "lora_te2_text_model_encoder_layers_30_mlp_fc1.lora_down.weight": torch.randn(4, 32, generator=gen).half()})


# ------------------------------------------------------------------ diffusers: fuse and run

def load_pipe(base, name, delta):
    """A pipeline of tiny model `name` from its folder or (base: a path) its single file,
    with the PeRFlow delta merged into the UNet's state dict (W + dW, float32)."""
    from diffusers import StableDiffusionPipeline
    from perflow_scheduler import PeRFlowScheduler
    d = os.path.join(MODELS, name)
    sched = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
    sched = PeRFlowScheduler(**{k: v for k, v in sched.items() if not k.startswith("_")})
    if base == "folder":
        from goldens_pipeline import load_pipeline
        pipe = load_pipeline(MODELS, name, delta, "diff_eps", 4)
        return pipe
    pipe = StableDiffusionPipeline.from_single_file(base, config=d, scheduler=sched, safety_checker=None,
                                                    feature_extractor=None, requires_safety_checker=False,
                                                    torch_dtype=torch.float32, local_files_only=True)
    if delta:
        dw = load_file(os.path.join(MODELS, name + "-delta", "unet", "diffusion_pytorch_model.safetensors"))
        sd = pipe.unet.state_dict()
        assert set(sd) == set(dw)
        pipe.unet.load_state_dict({k: v.float() + dw[k].float() for k, v in sd.items()})
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


def fuse(pipe, loras):
    """diffusers' way to several LoRAs at scales: load each as an adapter, set_adapters with
    the scales as weights, fuse_lora (float32 W += (B @ A) * scale * alpha / r per adapter,
    in order), unload the adapters."""
    names = []
    for i, (path, scale) in enumerate(loras):
        pipe.load_lora_weights(path, adapter_name=f"a{i}")
        names.append(f"a{i}")
    pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0, adapter_names=names)
    pipe.unload_lora_weights()


def lora_modules(path, part_prefixes):
    """(component, module) -> (up, down, alpha or None) read independently of diffusers,
    for the formula check: the spellings of convert.h, parsed here with regexes."""
    sd = load_file(path)
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata") or "null")
    mods = {}
    for k, v in sd.items():
        v = v.float()
        if k.endswith(".dora_scale"):  # dropped, as diffusers drops it
            continue
        m = re.match(r"lora_(unet|te)_(.*)\.(lora_up\.weight|lora_down\.weight|alpha)$", k)
        if m:
            comp = "unet" if m[1] == "unet" else "text_encoder"
            role = {"lora_up.weight": "up", "lora_down.weight": "down", "alpha": "alpha"}[m[3]]
            mods.setdefault((comp, "kohya:" + m[2]), {})[role] = v
            continue
        m = re.match(r"(unet|text_encoder)\.(.*?)(\.lora_A\.weight|\.lora_B\.weight|\.lora\.down\.weight|"
                     r"\.lora\.up\.weight|\.lora_linear_layer\.down\.weight|\.lora_linear_layer\.up\.weight|"
                     r"_lora\.down\.weight|_lora\.up\.weight)$", k)
        assert m, k
        module = m[2].replace(".processor", "")
        if m[3].startswith("_lora"):
            last = module.rsplit(".", 1)[-1]
            if m[1] == "unet":
                module += ".0" if last == "to_out" else ""
            else:
                module = module[: -len(last)] + {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj",
                                                 "to_out": "out_proj"}[last]
        role = "down" if ("lora_A" in m[3] or "down" in m[3]) else "up"
        mods.setdefault((m[1], module), {})[role] = v
    return mods, meta


def expected_fused(base_sd, loras):
    """W + sum(scale * alpha / rank * up @ down), float64, for every weight a LoRA changes."""
    out = {}
    for path, scale in loras:
        mods, meta = lora_modules(path, None)
        for (comp, module), t in mods.items():
            sd = base_sd[comp]
            if module.startswith("kohya:"):
                cands = [k for k in sd if k.endswith(".weight") and k[:-7].replace(".", "_") == module[6:]]
                assert len(cands) == 1, module
                key = cands[0]
            else:
                key = module + ".weight"
            up, down = t["up"].double(), t["down"].double()
            rank = down.shape[0]
            alpha = float(t["alpha"]) if "alpha" in t else rank
            if meta and "alpha" not in t:
                alpha = meta.get(f"{comp}.lora_alpha", rank)
                for pat, a in (meta.get(f"{comp}.alpha_pattern") or {}).items():
                    if key[:-7] == pat or key[:-7].endswith("." + pat):
                        alpha = a
            w = out.get((comp, key), sd[key].double())
            delta = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)).reshape(w.shape)
            out[(comp, key)] = w + scale * alpha / rank * delta
    return out


def state(pipe):
    return {"unet": {k: v.detach().float().clone() for k, v in pipe.unet.state_dict().items()},
            "text_encoder": {k: v.detach().float().clone() for k, v in pipe.text_encoder.state_dict().items()}}


def sharded_folder():
    """tiny-sd2 with the VAE and text encoder as diffusers and transformers shard them."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel
    src, dst = os.path.join(MODELS, "tiny-sd2"), os.path.join(MODELS, "tiny-sd2-sharded")
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    shutil.copy(os.path.join(src, "model_index.json"), dst)
    for link in ("unet", "tokenizer", "scheduler"):
        os.symlink(os.path.join("..", "tiny-sd2", link), os.path.join(dst, link))
    vae = AutoencoderKL.from_pretrained(os.path.join(src, "vae"))
    vae.save_pretrained(os.path.join(dst, "vae"), max_shard_size="300KB")
    te = CLIPTextModel.from_pretrained(os.path.join(src, "text_encoder"))
    te.save_pretrained(os.path.join(dst, "text_encoder"), max_shard_size="80KB")
    for comp, cls, model in (("vae", AutoencoderKL, vae), ("text_encoder", CLIPTextModel, te)):
        files = sorted(os.listdir(os.path.join(dst, comp)))
        assert any(f.endswith(".index.json") for f in files) and sum(f.endswith(".safetensors") for f in files) > 1
        back = cls.from_pretrained(os.path.join(dst, comp)).state_dict()
        for k, v in model.state_dict().items():
            assert torch.equal(back[k], v), (comp, k)
        print(f"tiny-sd2-sharded/{comp}: {files}")


# name, model, base ("folder" or "single"), delta, [(lora file, scale)], image run or None
# (prompt, negative, steps, guidance, seed, num_images, height, width)
CASES = [
    ("single-sd15", "tiny-sd15", "single", True, [], ("a photo of a cat", None, 4, 4.5, 0, 1, 64, 64)),
    ("single-sd2", "tiny-sd2", "single", False, [], ("a bowl of fruit!", "blurry", 5, 4.5, 5, 1, 32, 48)),
    ("lora-kohya", "tiny-sd15", "folder", True, [("kohya-sd15", 0.7)], None),
    ("lora-peft", "tiny-sd15", "folder", False, [("peft", 1.3)], None),
    ("lora-peft-nometa", "tiny-sd15", "folder", False, [("peft-nometa", 1.0)], None),
    ("lora-diffusers", "tiny-sd15", "folder", False, [("diffusers", 0.9)], None),
    ("lora-diffusers-old", "tiny-sd15", "folder", False, [("diffusers-old", 1.0)], None),
    ("lora-two", "tiny-sd15", "single", True, [("kohya-sd15", 0.8), ("peft", -0.5)],
     ("a castle on a hill, oil painting", "blurry, lowres", 4, 7.5, 42, 1, 64, 64)),
    ("lora-sd2", "tiny-sd2", "single", False, [("kohya-sd2", 1.0)], None),
]


def save_golden(rel, tensors):
    path = os.path.join(GOLDENS, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, path, metadata=META)


def run_case(case, index):
    from goldens_pipeline import run
    name, model, base, delta, loras, image = case
    single = os.path.join(SINGLE, f"{model}.safetensors")
    pipe = load_pipe(single if base == "single" else "folder", model, delta)
    entry = dict(name=name, model=f"single-file/{model}.safetensors" if base == "single" else model,
                 model_config=model if base == "single" else None,
                 delta=f"{model}-delta/unet" if delta else None,
                 loras=[[f"loras/{f}.safetensors", s] for f, s in loras])
    if loras:
        paths = [(os.path.join(LORAS, f + ".safetensors"), s) for f, s in loras]
        before = state(pipe)
        fuse(pipe, paths)
        after = state(pipe)
        want = expected_fused(before, paths)
        worst = 0.0
        for comp in ("unet", "text_encoder"):
            for k, v in after[comp].items():
                if (comp, k) in want:
                    worst = max(worst, float((v.double() - want[(comp, k)]).abs().max()))
                else:
                    assert torch.equal(v, before[comp][k]), (name, "diffusers changed", comp, k)
        assert worst < 1e-5, (name, worst)
        # every text encoder weight a LoRA changed, up to 3 UNet convolutions and 12 UNet Linear
        # weights of up to 1024 values: every kind of module in ~100 KB a case
        keep, convs, linears = {}, 0, 0
        for c, k in sorted(want):
            t = after[c][k]
            if c == "text_encoder" or (t.ndim == 4 and convs < 3) or (t.ndim == 2 and t.numel() <= 1024 and linears < 12):
                keep[(c, k)] = t
                convs += c == "unet" and t.ndim == 4
                linears += c == "unet" and t.ndim == 2
        rel = f"{model}/weights-{name}.safetensors"
        save_golden(rel, {f"{c}/{k}": v for (c, k), v in keep.items()})
        entry.update(fused=rel, fused_tensors=len(keep), lora_modules=len(want))
        print(f"{name}: diffusers fused {len(want)} weights, max |diffusers - formula| {worst:.2g}")
    if image:
        prompt, neg, steps, g, seed, n, h, w = image
        with torch.no_grad():
            img = run(pipe, prompt, neg, steps, g, seed, n, h, w)
            pils = run(pipe, prompt, neg, steps, g, seed, n, h, w, output_type="pil")
            other = run(pipe, prompt, neg, steps, g, seed + 1, n, h, w)
        inside, diff = float(((img > 0) & (img < 1)).mean()), float(np.abs(img - other).mean())
        assert inside > 0.9 and diff > 0.02, (name, inside, diff)
        rel = f"{model}/weights-{name}.png"
        pils[0].save(os.path.join(GOLDENS, rel))
        save_golden(f"{model}/weights-{name}-images.safetensors", {"images": torch.from_numpy(np.ascontiguousarray(img))})
        entry.update(prompt=prompt, negative_prompt=neg, steps=steps, guidance=g, prediction_type="diff_eps",
                     windows=4, seed=seed, num_images=n, height=h, width=w,
                     images=f"{model}/weights-{name}-images.safetensors", pngs=[rel])
        print(f"{name}: image, {inside:.3f} of pixels inside (0, 1), seed+1 mean abs diff {diff:.3f}")
    index["cases"].append(entry)


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    from perflow_scheduler import check_against_shared_golden
    check_against_shared_golden()
    gen = torch.Generator().manual_seed(14)
    for name in ("tiny-sd15", "tiny-sd2"):
        path = write_single_file(name, gen)
        check_single_file(path, name)
        with tempfile.TemporaryDirectory() as d:
            pruned = os.path.join(d, "pruned.safetensors")
            pruned_variant(path, pruned)
            check_single_file(pruned, name)
    os.makedirs(LORAS, exist_ok=True)
    _, u15 = folder_state("tiny-sd15", "unet")
    _, t15 = folder_state("tiny-sd15", "text_encoder")
    write_kohya(os.path.join(LORAS, "kohya-sd15.safetensors"),
                [("unet", u15, KOHYA_SD15_UNET), ("text_encoder", t15, KOHYA_SD15_TE)], gen,
                extra={"lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale": torch.ones(1, 32).half()})
    _, u2 = folder_state("tiny-sd2", "unet")
    _, t2 = folder_state("tiny-sd2", "text_encoder")
    write_kohya(os.path.join(LORAS, "kohya-sd2.safetensors"),
                [("unet", u2, KOHYA_SD2_UNET), ("text_encoder", t2, KOHYA_SD2_TE)], gen)
    write_peft_and_diffusers("tiny-sd15")
    bad_loras(gen)
    sharded_folder()
    index = {"version": VERSION, "generator": META["generator"], "cases": []}
    for case in CASES:
        run_case(case, index)
    with open(os.path.join(GOLDENS, "weights.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    total = 0
    for d in (SINGLE, LORAS, os.path.join(MODELS, "tiny-sd2-sharded")):
        for dirpath, _, files in os.walk(d):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files
                         if not os.path.islink(os.path.join(dirpath, f)))
    print(f"wrote {len(index['cases'])} cases; fixtures {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
