#!/usr/bin/env python3
"""goldens_sdxl_loras.py - SDXL LoRAs with diffusers as the oracle (issue 22). Run from the
repository root with the reference venv, after make_tiny_models.py:
    .venv/bin/python tests/reference/goldens_sdxl_loras.py
It writes only its own group (goldens_weights.py makes the SD-1.x/2.x ones):

  tests/data/models/loras/sdxl-peft.safetensors   PEFT keys (unet., text_encoder., text_encoder_2.
        + lora_A/lora_B) with lora_adapter_metadata, written by diffusers'
        StableDiffusionXLPipeline.save_lora_weights: what a user who trains with diffusers and
        peft holds. Its UNet targets SDXL's own modules too (add_embedding, the linear proj_in),
        the second text encoder its text_projection.
  tests/data/models/loras/sdxl-kohya.safetensors  kohya/sd-scripts' SDXL keys, written here:
        the UNet in the original (SGM) block numbering (lora_unet_input_blocks_4_1_..., middle_block_1,
        output_blocks_2_2_conv), resnets by their LDM names (in_layers_2, emb_layers_1,
        skip_connection, op: LoCon's 3x3 and 1x1 convolutions), lora_te1_ / lora_te2_ text encoders
  tests/data/models/loras/sdxl-diffusers.safetensors  diffusers' spelling (.lora.down in the
        UNet, .lora_linear_layer.down in both text encoders), no metadata
  tests/data/goldens/sdxl-loras.json and goldens/tiny-sdxl/loras-*.safetensors / .png: fused
        weights (load_lora_weights for each LoRA, set_adapters(names, scales), fuse_lora() of the
        UNet and both text encoders) and whole StableDiffusionXLPipeline images with the PeRFlow
        sampler

The script asserts what makes diffusers the oracle: every weight it fuses equals
W + sum(scale * alpha / rank * up @ down) computed here in float64 from the modules this script
wrote (the kohya names mapped back by a table written here, independent of diffusers'), and no
other weight changes.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from goldens_weights import GOLDENS, LORAS, MODELS, lora_pair  # noqa: E402

MODEL = "tiny-sdxl"
VERSION = "1"
META = {"format": "perflow-golden", "version": VERSION, "generator": "tests/reference/goldens_sdxl_loras.py"}
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def load_pipe():
    """tiny-sdxl as goldens_sdxl.py runs it: float32, the PeRFlow scheduler."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from goldens_sdxl import load_encoders
    from perflow_scheduler import PeRFlowScheduler
    d = os.path.join(MODELS, MODEL)
    tok, te, tok2, te2 = load_encoders(d)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"), variant="fp16",
                                                torch_dtype=torch.float32).eval()
    sched = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
    sched = PeRFlowScheduler(**{k: v for k, v in sched.items() if not k.startswith("_")})
    pipe = StableDiffusionXLPipeline(vae=AutoencoderKL.from_pretrained(os.path.join(d, "vae")), text_encoder=te,
                                     text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=sched,
                                     force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


def state(pipe):
    return {c: {k: v.detach().float().clone() for k, v in getattr(pipe, c).state_dict().items()} for c in COMPONENTS}


# ------------------------------------------------------------------ PEFT and diffusers spellings

def config(model):
    """The adapter's config as save_lora_weights stores it, target_modules (a set) sorted so
    that the file is the same on every run."""
    c = model.peft_config["default"].to_dict()
    c["target_modules"] = sorted(c["target_modules"])
    return c


def write_peft_and_diffusers(pipe, gen):
    """sdxl-peft (save_lora_weights with each component's adapter metadata) and
    sdxl-diffusers (the same modules' diffusers spelling, one rank per component, no
    metadata). Returns {(component, module): (up, down, alpha)} of each file."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    import copy
    unet, te, te2 = (copy.deepcopy(getattr(pipe, c)) for c in COMPONENTS)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                target_modules=["to_k", "to_out.0", "proj_in", "time_emb_proj",
                                                "add_embedding.linear_1"],
                                alpha_pattern={"down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k": 2}))
    te.add_adapter(LoraConfig(r=2, lora_alpha=3, init_lora_weights=False,
                              target_modules=["q_proj", "v_proj", "out_proj", "fc1"]))
    te2.add_adapter(LoraConfig(r=3, lora_alpha=6, init_lora_weights=False,
                               target_modules=["k_proj", "out_proj", "fc2", "text_projection"]))
    with torch.no_grad():  # small, as trained LoRAs are
        for m in (unet, te, te2):
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    sds = [get_peft_model_state_dict(m) for m in (unet, te, te2)]
    d = os.path.join(LORAS, "sdxl-peft.d")
    StableDiffusionXLPipeline.save_lora_weights(
        d, unet_lora_layers=sds[0], text_encoder_lora_layers=sds[1], text_encoder_2_lora_layers=sds[2],
        unet_lora_adapter_metadata=config(unet), text_encoder_lora_adapter_metadata=config(te),
        text_encoder_2_lora_adapter_metadata=config(te2))
    os.replace(os.path.join(d, "pytorch_lora_weights.safetensors"), os.path.join(LORAS, "sdxl-peft.safetensors"))
    os.rmdir(d)
    peft_mods, dif_mods, dif = {}, {}, {}
    alphas = {"unet": 8, "text_encoder": 3, "text_encoder_2": 6}
    ranks = {"unet": 4, "text_encoder": 2, "text_encoder_2": 3}
    for comp, sd in zip(COMPONENTS, sds):
        for k, v in sd.items():
            module, role = k.rsplit(".lora_", 1)
            if role == "A.weight":
                up = sd[module + ".lora_B.weight"]
                alpha = 2 if module == "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k" else alphas[comp]
                peft_mods[(comp, module)] = (up.float(), v.float(), alpha)
                dif_mods[(comp, module)] = (up.float(), v.float(), ranks[comp])  # no metadata: alpha = rank
        spell = ".lora." if comp == "unet" else ".lora_linear_layer."
        dif.update({f"{comp}." + k.replace(".lora_A.", spell + "down.").replace(".lora_B.", spell + "up."): v
                    for k, v in sd.items()})
    save_file({k: v.contiguous() for k, v in dif.items()}, os.path.join(LORAS, "sdxl-diffusers.safetensors"))
    return peft_mods, dif_mods


# ------------------------------------------------------------------ kohya's SDXL keys

# (diffusers module, kohya's SGM module name, rank, alpha) for tiny-sdxl (layers_per_block 2;
# down blocks DownBlock2D, CrossAttnDownBlock2D; up blocks CrossAttnUpBlock2D, UpBlock2D):
# input_blocks 1, 2 = down 0 layers 0, 1; 3 = its downsampler; 4, 5 = down 1 layers 0, 1 (resnet .0,
# transformer .1); middle_block 0, 1, 2 = resnet, transformer, resnet; output_blocks 0-2 = up 0
# layers 0-2 (its upsampler output_blocks_2_2_conv), 3-5 = up 1.
KOHYA_UNET = [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks_4_1_transformer_blocks_0_attn1_to_q", 4),
    ("down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k", "input_blocks_5_1_transformer_blocks_1_attn2_to_k", 4),
    ("down_blocks.1.attentions.1.proj_in", "input_blocks_5_1_proj_in", 4),
    ("mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj", "middle_block_1_transformer_blocks_1_ff_net_0_proj", 4),
    ("mid_block.attentions.0.proj_out", "middle_block_1_proj_out", 4),
    ("up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0", "output_blocks_2_1_transformer_blocks_0_attn1_to_out_0", 4),
    ("down_blocks.0.resnets.0.conv1", "input_blocks_1_0_in_layers_2", 2),          # LoCon: 3x3
    ("down_blocks.0.resnets.1.time_emb_proj", "input_blocks_2_0_emb_layers_1", 2),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks_3_0_op", 2),
    ("mid_block.resnets.1.conv2", "middle_block_2_out_layers_3", 2),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks_2_2_conv", 2),
    ("up_blocks.1.resnets.0.conv_shortcut", "output_blocks_3_0_skip_connection", 2),  # LoCon: 1x1
]
KOHYA_TE = [  # (component, module, rank); kohya's text encoder modules need an out_proj for diffusers
    ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", 4),
    ("text_encoder", "text_model.encoder.layers.2.self_attn.out_proj", 4),
    ("text_encoder", "text_model.encoder.layers.4.mlp.fc2", 4),
    ("text_encoder_2", "text_model.encoder.layers.1.self_attn.v_proj", 4),
    ("text_encoder_2", "text_model.encoder.layers.1.self_attn.out_proj", 4),
    ("text_encoder_2", "text_model.encoder.layers.3.mlp.fc1", 4),
]
KOHYA_ALPHA = 2.0  # one alpha for all (diffusers takes the most common one for attention modules)


def write_kohya(base, gen):
    sd, mods = {}, {}
    entries = [("unet", m, "lora_unet_" + k, r) for m, k, r in KOHYA_UNET]
    entries += [(c, m, ("lora_te1_" if c == "text_encoder" else "lora_te2_") + m.replace(".", "_"), r)
                for c, m, r in KOHYA_TE]
    for comp, module, name, rank in entries:
        up, down = lora_pair(base[comp][module + ".weight"], rank, gen)
        sd[name + ".lora_up.weight"] = up.half()
        sd[name + ".lora_down.weight"] = down.half()
        sd[name + ".alpha"] = torch.tensor(KOHYA_ALPHA).half()
        mods[(comp, module)] = (up.half().float(), down.half().float(), KOHYA_ALPHA)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(LORAS, "sdxl-kohya.safetensors"),
              metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"})
    return mods


# ------------------------------------------------------------------ fuse, check, run

def fuse(pipe, loras):
    """load_lora_weights for each as its own adapter, set_adapters with the scales, fuse_lora of
    the UNet and both text encoders, unload the adapters."""
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(path, adapter_name=f"a{i}")
        names.append(f"a{i}")
    pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
    pipe.fuse_lora(components=list(COMPONENTS), lora_scale=1.0, adapter_names=names)
    pipe.unload_lora_weights()


def expected(base, loras, modules):
    out = {}
    for f, scale in loras:
        for (comp, module), (up, down, alpha) in modules[f].items():
            key = (comp, module + ".weight")
            w = out.get(key, base[comp][key[1]].double())
            rank = down.shape[0]
            delta = (up.double().reshape(up.shape[0], rank) @ down.double().reshape(rank, -1)).reshape(w.shape)
            out[key] = w + scale * alpha / rank * delta
    return out


# name, [(lora, scale)], image run or None: (prompt, prompt_2, negative, steps, guidance, seed, n, h, w)
CASES = [
    ("peft", [("sdxl-peft", 1.0)], ("a castle on a hill", None, "blurry", 4, 6.0, 3, 1, 64, 64)),
    ("kohya", [("sdxl-kohya", 0.7)], None),
    ("diffusers", [("sdxl-diffusers", 0.9)], None),
    ("two", [("sdxl-kohya", 0.8), ("sdxl-peft", -0.5)], ("a red boat at sea", "oil painting", None, 4, 4.5, 11, 1, 64, 64)),
]


def save_golden(rel, tensors):
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, os.path.join(GOLDENS, rel),
              metadata=META)


def run_case(case, modules, index):
    name, loras, image = case
    pipe = load_pipe()
    paths = [(os.path.join(LORAS, f + ".safetensors"), s) for f, s in loras]
    before = state(pipe)
    fuse(pipe, paths)
    after = state(pipe)
    want = expected(before, loras, modules)
    worst = 0.0
    for comp in COMPONENTS:
        for k, v in after[comp].items():
            if (comp, k) in want:
                worst = max(worst, float((v.double() - want[(comp, k)]).abs().max()))
            else:
                assert torch.equal(v, before[comp][k]), (name, "diffusers changed", comp, k)
    assert worst < 1e-5, (name, worst)
    # every text encoder weight, up to 3 UNet convolutions and 16 UNet Linear weights of up to
    # 4096 values (add_embedding's and the attention's among them): every kind of module, small
    keep, convs, linears = {}, 0, 0
    for c, k in sorted(want):
        t = after[c][k]
        if c != "unet" or (t.ndim == 4 and convs < 3) or (t.ndim == 2 and t.numel() <= 4096 and linears < 16):
            keep[(c, k)] = t
            convs += c == "unet" and t.ndim == 4
            linears += c == "unet" and t.ndim == 2
    rel = f"{MODEL}/loras-{name}.safetensors"
    save_golden(rel, {f"{c}/{k}": v for (c, k), v in keep.items()})
    entry = dict(name=name, model=MODEL, model_config=None, delta=None,
                 loras=[[f"loras/{f}.safetensors", s] for f, s in loras], fused=rel, fused_tensors=len(keep),
                 lora_modules=len(want))
    print(f"sdxl-loras {name}: diffusers fused {len(want)} weights, max |diffusers - formula| {worst:.2g}")
    if image:
        prompt, prompt_2, neg, steps, g, seed, n, h, w = image

        def run(s, output_type="np"):
            return pipe(prompt=prompt, prompt_2=prompt_2, negative_prompt=neg, num_inference_steps=steps,
                        guidance_scale=g, num_images_per_prompt=n, height=h, width=w, output_type=output_type,
                        generator=torch.Generator("cpu").manual_seed(s)).images
        with torch.no_grad():
            img, pils, other = run(seed), run(seed, "pil"), run(seed + 1)
            plain = load_pipe()
            bare = plain(prompt=prompt, prompt_2=prompt_2, negative_prompt=neg, num_inference_steps=steps,
                         guidance_scale=g, num_images_per_prompt=n, height=h, width=w, output_type="np",
                         generator=torch.Generator("cpu").manual_seed(seed)).images
        inside, diff = float(((img > 0) & (img < 1)).mean()), float(np.abs(img - other).mean())
        lora_diff = float(np.abs(img - bare).max() * 255)
        assert inside > 0.9 and diff > 0.02, (name, inside, diff)
        assert lora_diff > 10, (name, "the LoRAs barely change the image", lora_diff)
        png = f"{MODEL}/loras-{name}.png"
        pils[0].save(os.path.join(GOLDENS, png))
        save_golden(f"{MODEL}/loras-{name}-images.safetensors", {"images": torch.from_numpy(np.ascontiguousarray(img))})
        entry.update(prompt=prompt, prompt_2=prompt_2, negative_prompt=neg, steps=steps, guidance=g,
                     prediction_type="ddim_eps", windows=4, seed=seed, num_images=n, height=h, width=w,
                     images=f"{MODEL}/loras-{name}-images.safetensors", pngs=[png])
        print(f"sdxl-loras {name}: image, {inside:.3f} inside (0, 1), seed+1 diff {diff:.3f}, "
              f"up to {lora_diff:.0f} levels from the image without LoRAs")
    index["cases"].append(entry)


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(22)
    pipe = load_pipe()
    base = state(pipe)
    os.makedirs(LORAS, exist_ok=True)
    peft_mods, dif_mods = write_peft_and_diffusers(pipe, gen)
    modules = {"sdxl-peft": peft_mods, "sdxl-diffusers": dif_mods, "sdxl-kohya": write_kohya(base, gen)}
    index = {"version": VERSION, "generator": META["generator"], "cases": []}
    for case in CASES:
        run_case(case, modules, index)
    with open(os.path.join(GOLDENS, "sdxl-loras.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(LORAS, f"{n}.safetensors")) for n in modules)
    print(f"wrote {len(index['cases'])} cases; LoRA fixtures {size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
