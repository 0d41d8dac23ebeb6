#!/usr/bin/env python3
"""make_safetensors_cases.py - valid and malformed .safetensors files for the reader's tests.

Run from the repository root with the reference venv:
    .venv/bin/python tests/reference/make_safetensors_cases.py

Writes tests/data/safetensors/:
  valid.safetensors        written by the safetensors library itself (torch): F32, F16,
                           BF16, a scalar, an empty tensor, an I64 tensor and __metadata__
                           {"format": "perflow-cases", "version": CASES_VERSION, ...}
  valid_unaligned.safetensors  hand-built: 16-bit tensors at odd offsets, which a reader
                           must not load as aligned uint16
  bad_*.safetensors        one malformation each
  cases.tsv                "file<TAB>phrase" per malformed file: the phrase the reader's
                           error must contain. Its first line names the version; the tests
                           (tests/test_safetensors.c, tests/test_safetensors_cli.sh) refuse
                           another and print the command above.
The expected values of the valid files are written out in tests/test_safetensors.c; every
value is exact in its dtype. valid.safetensors differs between runs only in the order of
its __metadata__ keys (the library keeps them in a hash map).
"""
import json
import os
import struct

import torch
from safetensors.torch import save_file

CASES_VERSION = "1"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "data", "safetensors")
META = {"format": "perflow-cases", "version": CASES_VERSION,
        "generator": "tests/reference/make_safetensors_cases.py"}


def raw(header, data=b""):
    """A file image: header (bytes, or an object dumped as compact JSON) and data."""
    if not isinstance(header, bytes):
        header = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(header)) + header + data


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# (file name, image, phrase the error must contain). Each file breaks one rule.
F32_2x3 = t("F32", [2, 3], 0, 24)
BAD = [
    ("bad_empty", b"", "empty file"),
    ("bad_short", b"\x10\x00\x00", "too short for the 8-byte header length"),
    ("bad_header_past_eof", struct.pack("<Q", 1000) + b"{}", "runs past the end of the file"),
    ("bad_header_huge", struct.pack("<Q", 1 << 40) + b"{}", "exceeds the limit"),
    ("bad_header_max_u64", struct.pack("<Q", (1 << 64) - 1) + b"{}", "exceeds the limit"),
    ("bad_not_json", raw(b"{not json}"), "header is not valid JSON"),
    ("bad_empty_header", raw(b""), "header is not valid JSON"),
    ("bad_not_object", raw([1, 2, 3]), "header is not a JSON object"),
    ("bad_utf8_name", raw(b'{"a\xff":' + json.dumps(F32_2x3).encode() + b"}", bytes(24)),
     "header is not valid UTF-8"),
    ("bad_control_char", raw(b'{"a\nb":1}'), "header is not valid JSON"),
    ("bad_big_integer", raw(b'{"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}}'),
     "header is not valid JSON"),
    ("bad_deep_nesting", raw(b"[" * 5000 + b"]" * 5000), "header is not valid JSON"),
    ("bad_duplicate_key", raw(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                              b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', bytes(8)),
     "duplicate object key"),
    ("bad_dtype", raw({"w": t("Q4_K", [4], 0, 4)}, bytes(4)), 'tensor "w": unknown dtype "Q4_K"'),
    ("bad_dtype_newline_name", raw({"a\nb": t("X", [1], 0, 1)}, bytes(1)),
     'tensor "a\\x0ab": unknown dtype "X"'),
    ("bad_dtype_not_string", raw({"w": t(32, [1], 0, 4)}, bytes(4)), 'tensor "w": dtype is not a string'),
    ("bad_shape_negative", raw({"w": t("F32", [-1, 2], 0, 8)}, bytes(8)),
     'tensor "w": shape[0] is not a non-negative integer'),
    ("bad_shape_float", raw({"w": t("F32", [2, 2.0], 0, 16)}, bytes(16)),
     'tensor "w": shape[1] is not a non-negative integer'),
    ("bad_shape_not_array", raw({"w": t("F32", 4, 0, 16)}, bytes(16)), "shape is not an array"),
    ("bad_too_many_dims", raw({"w": t("F32", [1] * 6, 0, 4)}, bytes(4)),
     "shape has 6 dimensions, more than the 5 supported"),
    ("bad_offsets_out_of_bounds", raw({"a.weight": t("F32", [24], 0, 96)}, bytes(64)),
     'tensor "a.weight": data_offsets [0, 96] past the end of the data buffer (64 bytes)'),
    ("bad_offsets_reversed", raw({"w": t("F32", [1], 8, 4)}, bytes(8)),
     "data_offsets [8, 4] end before begin"),
    ("bad_offsets_form", raw({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, bytes(4)),
     "data_offsets is not [begin, end] of non-negative integers"),
    ("bad_offsets_negative", raw({"w": t("F32", [0], -4, -4)}, bytes(4)),
     "data_offsets is not [begin, end] of non-negative integers"),
    ("bad_span_mismatch", raw({"w": t("F32", [2, 3], 0, 20)}, bytes(24)),
     "shape (2, 3) x F32 is 24 bytes but data_offsets [0, 20] span 20 bytes"),
    ("bad_numel_overflow", raw({"w": t("F32", [1 << 62, 1 << 62], 0, 0)}), "overflows the element count"),
    ("bad_numel_overflow_zero", raw({"w": t("U8", [1 << 32, (1 << 32) - 1, 0], 0, 0)}),
     "overflows the element count"),
    ("bad_overlap", raw({"a": t("F32", [4], 0, 16), "b": t("F32", [4], 8, 24)}, bytes(24)),
     'tensors "a" [0, 16] and "b" [8, 24] overlap'),
    ("bad_unknown_key", raw({"w": {**t("F32", [1], 0, 4), "offset": 0}}, bytes(4)),
     'tensor "w": unknown key "offset"'),
    ("bad_missing_key", raw({"w": {"shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
     'tensor "w": missing "dtype"'),
    ("bad_entry_not_object", raw({"w": [0, 4]}, bytes(4)), 'tensor "w": entry is not an object'),
    ("bad_empty_name", raw({"": t("F32", [1], 0, 4)}, bytes(4)), "tensor with an empty name"),
    ("bad_metadata_values", raw({"__metadata__": {"k": 1}}), '__metadata__ "k" is not a string'),
    ("bad_metadata_not_object", raw({"__metadata__": ["k", "v"]}), "__metadata__ is not an object"),
]


def f16_bytes(values, dtype):
    return torch.tensor(values, dtype=dtype).view(torch.int16).numpy().tobytes()


def main():
    os.makedirs(OUT, exist_ok=True)
    save_file({
        "a.weight": torch.tensor([[0.5, -1.25, 3.0], [1e-3, 65504.0, -0.0]], dtype=torch.float32),
        "b.f16": torch.tensor([1.0, -2.5, 0.375, 65504.0], dtype=torch.float16),
        "c.bf16": torch.tensor([[1.0, -3.0], [0.15625, 256.0]], dtype=torch.bfloat16),
        "d.scalar": torch.tensor(7.25, dtype=torch.float32),
        "e.ids": torch.tensor([1, -2, 1 << 40], dtype=torch.int64),
        "f.empty": torch.zeros(0, 3, dtype=torch.float32),
    }, os.path.join(OUT, "valid.safetensors"), metadata=META)

    # 1 byte of U8 first puts the 16-bit tensors at odd addresses: the header is padded
    # to an even length (not to 8), so the data buffer starts at an even offset.
    data = b"\x2a" + f16_bytes([1.5, -0.25, 8.0], torch.float16) + f16_bytes([-6.0, 0.5], torch.bfloat16)
    header = json.dumps({"__metadata__": META, "u": t("U8", [1], 0, 1), "h": t("F16", [3], 1, 7),
                         "b": t("BF16", [2], 7, 11)}, separators=(",", ":")).encode()
    header += b" " * (len(header) % 2)
    image = raw(header, data)
    assert (len(image) - len(data)) % 2 == 0
    with open(os.path.join(OUT, "valid_unaligned.safetensors"), "wb") as f:
        f.write(image)

    with open(os.path.join(OUT, "cases.tsv"), "w") as manifest:
        manifest.write(f"# perflow safetensors cases version {CASES_VERSION}: "
                       "re-run tests/reference/make_safetensors_cases.py\n")
        for name, image, phrase in BAD:
            assert "\t" not in phrase and "\n" not in phrase
            with open(os.path.join(OUT, name + ".safetensors"), "wb") as f:
                f.write(image)
            manifest.write(f"{name}.safetensors\t{phrase}\n")
    print(f"wrote 2 valid and {len(BAD)} malformed files to {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
