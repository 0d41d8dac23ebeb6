#!/usr/bin/env python3
"""make_goldens.py - golden tensors from the reference stack for the tiny models.

Run from the repository root with the reference venv, after make_tiny_models.py:
    .venv/bin/python tests/reference/make_goldens.py [GROUP ...]
(groups: text_encoder unet vae pipelines controlnet refine sdxl; all by default)

Writes tests/data/goldens/<model>/<component>.safetensors. Every file carries
__metadata__ {"format": "perflow-golden", "version": GOLDEN_VERSION, "generator": this
script}; the C tests refuse other versions and print the command above.
Everything runs on the CPU in float32 with deterministic algorithms.
"""
import os

import sys

import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GOLDEN_VERSION = "1"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODELS = os.path.join(ROOT, "tests", "data", "models")
OUT = os.path.join(ROOT, "tests", "data", "goldens")
META = {"format": "perflow-golden", "version": GOLDEN_VERSION, "generator": "tests/reference/make_goldens.py"}

# Prompts for the text encoder: ordinary, empty (the negative prompt of most jobs),
# punctuation and unicode, and one longer than 77 tokens (truncated).
PROMPTS = [
    "a photo of a cat",
    "",
    "A majestic lion, jumping from a big stone at night!! (8k, ultra-detailed)",
    "Ünïcödé façade, 東京 at dusk 🌆, it's ISO-800",
    " ".join(["a very long prompt about mountains rivers and forests"] * 12),
]


def save(path, tensors):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata=META)


def text_encoder_goldens(name):
    d = os.path.join(MODELS, name)
    tok = CLIPTokenizer.from_pretrained(os.path.join(d, "tokenizer"))
    variant = "fp16" if os.path.exists(os.path.join(d, "text_encoder", "model.fp16.safetensors")) else None
    te = CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"), variant=variant,
                                       torch_dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    # Ids stored as float32 (exact below 2^24) so the C side reads every golden one way.
    out = {"input_ids": ids.to(torch.float32)}
    with torch.no_grad():
        res = te(ids, output_hidden_states=True)
        out["last_hidden_state"] = res.last_hidden_state
        # clip_skip = 1 exactly as diffusers' StableDiffusionPipeline.encode_prompt does it:
        # the hidden state before the last layer, then the final layer norm.
        out["clip_skip_1"] = te.text_model.final_layer_norm(res.hidden_states[-2])
    save(os.path.join(OUT, name, "text_encoder.safetensors"), out)


GROUPS = ("text_encoder", "unet", "vae", "pipelines", "controlnet", "refine", "sdxl")


def main(argv):
    """make_goldens.py [GROUP ...]: all groups by default, else only those named (the
    other committed goldens stay as they are; goldens made on another machine differ
    from these in the last float bits, which the tests' tolerances absorb)."""
    groups = argv or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        sys.exit(f"unknown group(s) {unknown}; groups: {' '.join(GROUPS)}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    # Component goldens beyond the text encoder live one module each beside this script
    # (goldens_<component>.py with make(name, models_dir, save, out_dir)).
    import goldens_unet
    import goldens_vae
    for name in ("tiny-sd15", "tiny-sd2"):
        if "text_encoder" in groups:
            text_encoder_goldens(name)
        for group, mod in (("unet", goldens_unet), ("vae", goldens_vae)):
            if group in groups:
                mod.make(name, MODELS, lambda rel, tensors, n=name: save(os.path.join(OUT, n, rel), tensors), OUT)
    save_model = lambda model, rel, tensors: save(os.path.join(OUT, model, rel), tensors)  # noqa: E731
    if "pipelines" in groups:
        import goldens_pipeline
        goldens_pipeline.make_all(MODELS, save_model, OUT)
    if "controlnet" in groups:
        import goldens_controlnet
        goldens_controlnet.make_all(MODELS, save_model)
    if "refine" in groups:
        import goldens_refine
        goldens_refine.make_all(MODELS, save_model, OUT)
    if "sdxl" in groups:
        import goldens_sdxl
        goldens_sdxl.make_all(MODELS, save_model, OUT)
    print("wrote", OUT, "groups:", " ".join(groups))


if __name__ == "__main__":
    main(sys.argv[1:])
