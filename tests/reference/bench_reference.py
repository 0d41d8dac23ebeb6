#!/usr/bin/env python3
"""bench_reference.py - PyTorch side of `make bench`: builds real-size random-weight
models (seeded, cached under build/bench/models/) and times the reference forward pass.

    .venv/bin/python tests/reference/bench_reference.py clip --models build/bench/models --repeat 5

Prints one JSON line: {"what": ..., "seconds": median, "runs": [...]}. The C side
(build/bench/bench_*) loads the same model folder, so both time the same weights.
"""
import argparse
import json
import os
import statistics
import time

import torch
from transformers import CLIPTextConfig, CLIPTextModel

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["clip"])
    ap.add_argument("--models", default="build/bench/models")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fn = {"clip": clip_model}[a.what](a.models)
    runs = []
    with torch.inference_mode():
        fn()  # warm-up
        for _ in range(a.repeat):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
    print(json.dumps({"what": a.what, "impl": f"torch {torch.__version__}", "threads": a.threads,
                      "seconds": statistics.median(runs), "runs": runs}))


if __name__ == "__main__":
    main()
