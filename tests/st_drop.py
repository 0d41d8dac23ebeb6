#!/usr/bin/env python3
"""st_drop.py SRC DST PREFIX... - copies the safetensors file SRC to DST without the tensors whose
names start with any PREFIX (standard library only: the shell tests make bad checkpoints with it,
e.g. a single file without its VAE)."""
import json
import struct
import sys


def main(src, dst, prefixes):
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out, chunks, offset = {}, [], 0
    for name, t in sorted(header.items()):
        if name == "__metadata__":
            out[name] = t
            continue
        if any(name.startswith(p) for p in prefixes):
            continue
        b, e = t["data_offsets"]
        chunks.append(data[b:e])
        out[name] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [offset, offset + e - b]}
        offset += e - b
    text = json.dumps(out).encode()
    text += b" " * (-len(text) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
