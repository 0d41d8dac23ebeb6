"""clip_vocab.py - writes the real CLIP BPE tokenizer (49,408 tokens) as CLIPTokenizer files.

The vocabulary is rebuilt from the merges list OpenAI published with CLIP,
bpe_simple_vocab_16e6.txt.gz, exactly the way CLIP's simple_tokenizer builds
its encoder, then saved through transformers' CLIPTokenizer.save_pretrained so
the files (vocab.json, merges.txt, special_tokens_map.json,
tokenizer_config.json) are byte for byte what a Hugging Face checkpoint ships.

The .gz file comes from the PyPI package open_clip_torch (installed with
--no-deps, see requirements-nodeps.txt). open_clip is located with
importlib.util.find_spec and never imported: its __init__ needs torch extras.

Run:  .venv/bin/python tests/reference/clip_vocab.py [DIR]
      (default DIR: tests/data/clip-tokenizer, the committed copy)
Other reference scripts import write_clip_tokenizer(dir).
"""
import gzip
import importlib.util
import json
import os
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_DIR = os.path.join(ROOT, "tests", "data", "clip-tokenizer")
VOCAB_SIZE = 49408
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat", OpenAI's own encoding


def _bpe_gz_path():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("clip_vocab.py: open_clip_torch is not installed (pip install --no-deps open_clip_torch)")
    for loc in spec.submodule_search_locations:
        p = os.path.join(loc, "bpe_simple_vocab_16e6.txt.gz")
        if os.path.exists(p):
            return p
    sys.exit("clip_vocab.py: bpe_simple_vocab_16e6.txt.gz not found in the open_clip package")


def _bytes_to_unicode():
    # CLIP's simple_tokenizer.bytes_to_unicode, repeated here so the vocabulary
    # does not depend on the transformers copy it is checked against.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab_and_merges():
    """Returns (vocab dict token -> id, list of merge pairs) as CLIP's SimpleTokenizer builds them."""
    with gzip.open(_bpe_gz_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_clip_tokenizer(out_dir, pad_token="<|endoftext|>"):
    """Writes the CLIP tokenizer files to out_dir (created if needed) and returns out_dir.

    pad_token "<|endoftext|>" is SD-1.x's tokenizer; "!" is SD-2.x's."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges()
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        vp, mp = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
        with open(vp, "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(mp, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in merges))
        tok = CLIPTokenizer(vp, mp, pad_token=pad_token, model_max_length=77)
        os.makedirs(out_dir, exist_ok=True)
        tok.save_pretrained(out_dir)

    # Reload what was written: the committed files are the canonical ones.
    tok = CLIPTokenizer.from_pretrained(out_dir)
    assert len(tok) == VOCAB_SIZE, len(tok)
    ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    pad_id = tok.convert_tokens_to_ids(pad_token)
    assert ids == CAT_IDS + [pad_id] * (77 - len(CAT_IDS)), ids
    return out_dir


if __name__ == "__main__":
    d = write_clip_tokenizer(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR)
    print(f"wrote CLIP tokenizer ({VOCAB_SIZE} tokens) to {d}")
