"""goldens_images.py - writes tests/data/images/: input images of every PNG and
JPEG kind with the RGB bytes Pillow decodes them to, Lanczos resize cases with
Pillow's results, and the refiner's size rule as Python computes it; the oracle
for tests/test_image.c.

Run from the repository root with the reference venv (Pillow pinned in
tests/reference/requirements.txt):
    .venv/bin/python tests/reference/goldens_images.py

What it writes (everything made from fixed seeds, so a rerun with the same
Pillow gives the same files):
  cases.json             the index: {"format", "version", "generator", "pillow",
                         "libjpeg_turbo", "decode", "truncated", "hostile",
                         "lanczos", "refine_size"}; tests refuse another version
  png/*.png, jpeg/*.jpg  inputs; each NAME.rgb beside them holds
                         Image.open(NAME).convert("RGB") as raw bytes (w x h x 3)
  hostile/*              inputs that must be refused, with the expected message
  lanczos/src_*.png      structured sources (gradients, hard edges, noise)
  lanczos/out_*.png      Image.open(src).resize((w, h), Image.LANCZOS), stored
                         as PNG (lossless; the C test decodes it with the PNG
                         decoder the decode cases check)
  ../../fuzz/corpus_image/  a few of the small inputs: tests/fuzz/fuzz_image.c's seeds

PNGs are written by this script's own encoder (not Pillow's), so that every
colour type, bit depth, the five row filters, Adam7 interlacing and split IDAT
chunks occur; JPEGs by Pillow's encoder (libjpeg-turbo) with each subsampling
and progressive mode.
"""
import io
import json
import os
import shutil
import struct
import sys
import warnings
import zlib
from fractions import Fraction

import numpy as np
import PIL
from PIL import Image, features

VERSION = 1
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "images")
GENERATOR = "tests/reference/goldens_images.py"

# ---------------------------------------------------------------- PNG encoder

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pack_rows(samples, depth):
    """(h, w, c) integer samples -> list of packed row byte strings."""
    h, w, c = samples.shape
    if depth == 16:
        return [samples[y].astype(">u2").tobytes() for y in range(h)]
    if depth == 8:
        return [samples[y].astype(np.uint8).tobytes() for y in range(h)]
    rows = []
    for y in range(h):
        bits = np.unpackbits(samples[y].reshape(-1).astype(np.uint8)[:, None], axis=1)[:, 8 - depth:]
        rows.append(np.packbits(bits.reshape(-1)).tobytes())
    return rows


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filter_row(kind, cur, prev, bpp):
    cur = np.frombuffer(cur, np.uint8).astype(np.int32)
    prev = np.frombuffer(prev, np.uint8).astype(np.int32)
    a = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
    c = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
    pred = {0: 0, 1: a, 2: prev, 3: (a + prev) // 2, 4: paeth(a, prev, c)}[kind]
    return bytes([kind]) + ((cur - pred) & 0xFF).astype(np.uint8).tobytes()


def encode_png(samples, depth, ctype, *, interlace=False, palette=None, extra=b"", idat_parts=1, rng=None,
               iend=True):
    """samples: (h, w, channels) ints. Rows get filters 0-4 in turn (or at random
    with rng), so that every unfiltering path is exercised."""
    h, w, c = samples.shape
    assert c == CHANNELS[ctype]
    bpp = max(1, c * depth // 8)
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    raw = b""
    row_no = 0
    for x0, y0, dx, dy in passes:
        sub = samples[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        prev = None
        for row in pack_rows(sub, depth):
            if prev is None:
                prev = bytes(len(row))
            kind = int(rng.integers(0, 5)) if rng is not None else row_no % 5
            raw += filter_row(kind, row, prev, bpp)
            prev = row
            row_no += 1
    z = zlib.compress(raw, 9)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, int(interlace)))
    if palette is not None:
        out += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
    out += extra
    step = -(-len(z) // idat_parts)
    for i in range(0, len(z), step):
        out += chunk(b"IDAT", z[i:i + step])
    if iend:
        out += chunk(b"IEND", b"")
    return out


# ---------------------------------------------------------------- content

def structured(w, h, rng, channels=3, maxval=255):
    """Gradients, a sawtooth, hard-edged shapes at the extremes and a noisy patch
    (at most 40 px square): smooth parts, edges that ring, and values that clip."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [x / max(w - 1, 1), y / max(h - 1, 1), ((x + 2 * y) % 16) / 15.0, (x * y % 7) / 6.0]
    img = np.stack([planes[i % 4] for i in range(channels)], axis=-1)
    img[(x > w * 0.2) & (x < w * 0.45) & (y > h * 0.3) & (y < h * 0.7)] = 1.0
    img[(x - w * 0.7) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.18) ** 2] = 0.0
    patch = (x > w * 0.55) & (x < w * 0.55 + 40) & (y > h * 0.65) & (y < h * 0.65 + 40)  # small: noise is large as PNG
    img[patch] += rng.uniform(-0.3, 0.3, size=(int(patch.sum()), channels))
    return np.clip(np.rint(img * maxval), 0, maxval).astype(np.int64)


def pillow_rgb(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette tRNS as bytes: Pillow warns, converts all the same
        im = Image.open(io.BytesIO(data))
        rgb = im.convert("RGB")
    return im.mode, rgb.size, np.asarray(rgb).tobytes()


def write(rel, data):
    path = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- decode cases

def png_cases(rng):
    cases = []

    def add(name, what, samples, depth, ctype, **kw):
        data = encode_png(samples, depth, ctype, **kw)
        cases.append((f"png/{name}.png", what, data))

    W, H = 37, 23  # odd, and not a multiple of 8: partial bytes at 1/2/4 bits
    for depth in (1, 2, 4, 8, 16):
        g = structured(W, H, rng, 1, 2 ** depth - 1)
        add(f"grey{depth}", f"greyscale {depth}-bit", g, depth, 0)
    add("grey1_interlaced", "greyscale 1-bit, Adam7", structured(W, H, rng, 1, 1), 1, 0, interlace=True)
    # 16-bit grey: Pillow clamps (mode I;16 -> RGB), so values below 256 matter
    low = rng.integers(0, 400, size=(H, W, 1))
    add("grey16_low", "greyscale 16-bit, values 0-399 (Pillow clamps at 255)", low, 16, 0)
    add("grey16_interlaced", "greyscale 16-bit, Adam7", low, 16, 0, interlace=True)
    add("grey16_trns", "greyscale 16-bit with tRNS", low, 16, 0, extra=chunk(b"tRNS", b"\x00\x05"))
    add("grey8_trns", "greyscale 8-bit with tRNS", structured(W, H, rng, 1), 8, 0, extra=chunk(b"tRNS", b"\x00\x40"))
    add("greyalpha8", "grey+alpha 8-bit", structured(W, H, rng, 2), 8, 4)
    add("greyalpha16", "grey+alpha 16-bit", structured(W, H, rng, 2, 65535), 16, 4)
    add("rgb8", "RGB 8-bit", structured(W, H, rng), 8, 2)
    add("rgb8_interlaced", "RGB 8-bit, Adam7", structured(W, H, rng), 8, 2, interlace=True, rng=rng)
    add("rgb8_split_idat", "RGB 8-bit, 5 IDAT chunks", structured(W, H, rng), 8, 2, idat_parts=5)
    add("rgb8_no_iend", "RGB 8-bit without IEND (Pillow accepts it)", structured(W, H, rng), 8, 2, iend=False)
    color_chunks = (chunk(b"gAMA", struct.pack(">I", 45455 * 2)) + chunk(b"sRGB", b"\x00") +
                    chunk(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)) +
                    chunk(b"tRNS", struct.pack(">3H", 0, 0, 0)) + chunk(b"tEXt", b"Comment\x00hello") +
                    chunk(b"sBIT", b"\x05\x06\x05") + chunk(b"prVt", b"private ancillary chunk"))
    add("rgb8_chunks", "RGB 8-bit with gAMA, sRGB, cHRM, tRNS, tEXt, sBIT and a private chunk (Pillow ignores them)",
        structured(W, H, rng), 8, 2, extra=color_chunks)
    add("rgb16", "RGB 16-bit", structured(W, H, rng, 3, 65535), 16, 2)
    add("rgba8", "RGBA 8-bit", structured(W, H, rng, 4), 8, 6)
    add("rgba16", "RGBA 16-bit", structured(W, H, rng, 4, 65535), 16, 6)
    add("rgba16_interlaced", "RGBA 16-bit, Adam7", structured(W, H, rng, 4, 65535), 16, 6, interlace=True, rng=rng)
    for depth in (1, 2, 4, 8):
        n = 2 ** depth
        pal = rng.integers(0, 256, size=(n, 3))
        idx = structured(W, H, rng, 1, n - 1)
        add(f"palette{depth}", f"palette {depth}-bit", idx, depth, 3, palette=pal)
    pal = rng.integers(0, 256, size=(256, 3))
    idx = structured(W, H, rng, 1)
    add("palette8_trns", "palette 8-bit with a tRNS of alphas", idx, 8, 3, palette=pal,
        extra=chunk(b"tRNS", bytes(rng.integers(0, 256, size=100).astype(np.uint8))))
    add("palette8_interlaced", "palette 8-bit, Adam7", idx, 8, 3, palette=pal, interlace=True)
    add("palette_short", "palette with 20 entries and indices past them (black in Pillow)", idx % 40, 8, 3,
        palette=pal[:20])
    add("rgb8_1x1", "RGB 1x1", structured(1, 1, rng), 8, 2)
    add("rgb8_1x1_interlaced", "RGB 1x1, Adam7 (six empty passes)", structured(1, 1, rng), 8, 2, interlace=True)
    add("grey4_row", "greyscale 4-bit, 1 row of 301", structured(301, 1, rng, 1, 15), 4, 0)
    add("rgb8_column", "RGB 1 column of 50, Adam7", structured(1, 50, rng), 8, 2, interlace=True)
    return cases


def jpeg_cases(rng):
    cases = []
    rgb = Image.fromarray(structured(67, 45, rng).astype(np.uint8), "RGB")
    big = Image.fromarray(structured(161, 119, rng).astype(np.uint8), "RGB")

    def add(name, what, im, **kw):
        b = io.BytesIO()
        im.save(b, "JPEG", **kw)
        cases.append((f"jpeg/{name}.jpg", what, b.getvalue()))

    add("baseline_420", "baseline 4:2:0, 67x45", rgb, quality=90, subsampling="4:2:0")
    add("baseline_422", "baseline 4:2:2", rgb, quality=85, subsampling="4:2:2")
    add("baseline_444", "baseline 4:4:4", rgb, quality=95, subsampling="4:4:4")
    add("progressive_420", "progressive 4:2:0", rgb, quality=80, subsampling="4:2:0", progressive=True)
    add("progressive_444", "progressive 4:4:4", big, quality=92, subsampling="4:4:4", progressive=True)
    add("optimized_420", "optimised Huffman tables, 4:2:0, 161x119", big, quality=75, optimize=True)
    add("restart_420", "restart markers every 2 rows", big, quality=88, restart_marker_rows=2)
    add("grey", "greyscale baseline", rgb.convert("L"), quality=90)
    add("grey_progressive", "greyscale progressive", big.convert("L"), quality=70, progressive=True)
    add("rgb_adobe", "RGB components (Adobe transform 0, no YCbCr)", rgb, quality=90, keep_rgb=True)
    add("cmyk", "CMYK (Adobe, inverted)", rgb.convert("CMYK"), quality=90)
    add("tiny_1x1", "1x1", rgb.resize((1, 1)), quality=90)
    add("tiny_9x3_420", "9x3, 4:2:0 (partial MCUs both ways)", rgb.resize((9, 3)), quality=90, subsampling="4:2:0")
    add("tiny_cmyk", "CMYK 5x4", rgb.resize((5, 4)).convert("CMYK"), quality=90)
    add("tiny_progressive", "progressive 11x6, 4:2:0", rgb.resize((11, 6)), quality=90, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW; Image.open does not apply it
    add("exif_orientation6", "EXIF orientation 6 (not applied)", rgb, quality=90, exif=exif)
    return cases


# ---------------------------------------------------------------- truncated and hostile inputs

def truncated(cases):
    """Cut points of a few inputs and Pillow's verdict on each: "error" (it
    raises) or "same" (it decodes the same pixels as the whole file)."""
    picks = {"png/rgb8.png", "png/rgba16_interlaced.png", "jpeg/baseline_420.jpg", "jpeg/progressive_420.jpg"}
    out = []
    for rel, _, data in cases:
        if rel not in picks:
            continue
        n = len(data)
        if rel.endswith(".png"):
            cuts = [4, 8, 20, 33, 41, n // 3, n // 2, n - 30, n - 12]
        else:
            cuts = [2, 3, 10, 100, n // 3, n // 2, n - 40, n - 2]
        _, _, full = pillow_rgb(data)
        for cut in cuts:
            try:
                _, _, got = pillow_rgb(data[:cut])
                verdict = "same" if got == full else "other"
            except Exception:
                verdict = "error"
            assert verdict != "other", (rel, cut)
            out.append({"file": rel, "bytes": cut, "pillow": verdict})
    return out


def hostile():
    """Inputs that must be refused, with a piece of the expected message."""
    def ihdr_only(w, h, depth=8, ctype=2):
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)) +
                chunk(b"IEND", b""))

    def sof_patched(w, h):
        b = io.BytesIO()
        Image.new("RGB", (16, 16), (9, 99, 199)).save(b, "JPEG", quality=90)
        d = bytearray(b.getvalue())
        i = d.index(b"\xff\xc0")
        struct.pack_into(">HH", d, i + 5, h, w)
        return bytes(d)

    bad_crc = bytearray(encode_png(np.zeros((4, 4, 3), np.int64), 8, 2))
    bad_crc[29] ^= 0xFF  # IHDR's CRC
    items = [
        ("hostile/not_a_png.png", b"this is a text file named .png\n", "not a PNG or JPEG image"),
        ("hostile/empty.png", b"", "empty file"),
        ("hostile/png_wide.png", ihdr_only(16385, 1), "larger than 16384 px a side"),
        ("hostile/png_tall.png", ihdr_only(1, 1 << 30), "larger than 16384 px a side"),
        ("hostile/png_huge.png", ihdr_only(0x7FFFFFFF, 0x7FFFFFFF), "larger than 16384 px a side"),
        ("hostile/png_bomb.png", ihdr_only(16384, 16384), "more than 178956970 pixels"),
        ("hostile/png_zero_width.png", ihdr_only(0, 5), "PNG"),
        ("hostile/png_bad_depth.png", ihdr_only(5, 5, depth=3), "PNG"),
        ("hostile/png_no_idat.png", ihdr_only(5, 5), "PNG"),
        ("hostile/png_bad_crc.png", bytes(bad_crc), "PNG"),
        ("hostile/png_palette_no_plte.png", encode_png(np.zeros((3, 3, 1), np.int64), 8, 3), "PNG"),
        ("hostile/jpeg_wide.jpg", sof_patched(16385, 16), "larger than 16384 px a side"),
        ("hostile/jpeg_bomb.jpg", sof_patched(16384, 16384), "more than 178956970 pixels"),
        ("hostile/jpeg_zero_height.jpg", sof_patched(16, 0), "JPEG"),
        ("hostile/jpeg_soi_only.jpg", b"\xff\xd8\xff", "JPEG"),
        ("hostile/jpeg_junk.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "JPEG"),
    ]
    out = []
    for rel, data, msg in items:
        write(rel, data)
        try:
            pillow_rgb(data)
            pillow = "decodes"  # only our limits refuse it
        except Exception:
            pillow = "error"
        out.append({"file": rel, "error": msg, "pillow": pillow})
    return out


# ---------------------------------------------------------------- Lanczos

LANCZOS = [
    # (source w, h), (target w, h), why
    ((64, 64), (1024, 1024), "16x up"),
    ((512, 512), (1024, 1024), "the refiner's 512 -> 1024"),
    ((768, 512), (1024, 1536), "non-uniform: x 4/3, y 3"),
    ((37, 23), (100, 61), "odd sizes, non-integer up"),
    ((100, 61), (37, 23), "odd sizes, non-integer down"),
    ((300, 200), (217, 143), "down by 1.38 and 1.40"),
    ((200, 150), (333, 250), "up by 1.665 and 1.667"),
    ((120, 80), (120, 57), "width unchanged, height down: one pass"),
    ((120, 80), (173, 80), "height unchanged, width up: one pass"),
    ((200, 300), (180, 70), "height shrinks most: vertical pass first"),
    ((160, 90), (150, 70), "height loses exactly twice what the width loses: still horizontal first"),
    ((160, 90), (150, 69), "height loses just over twice what the width loses: vertical first"),
    ((640, 480), (96, 72), "down by 6.67: widened support"),
    ((33, 17), (34, 16), "one side up by one, the other down by one"),
    ((90, 90), (1, 1), "to one pixel"),
    ((1, 1), (5, 3), "from one pixel"),
    ((3, 200), (1, 7), "thin"),
    ((255, 255), (256, 512), "up by 1.004 and 2.008"),
    ((50, 50), (50, 50), "same size: a copy"),
]


def lanczos_cases(rng):
    out = []
    for (sw, sh), (dw, dh), why in LANCZOS:
        src_rel = f"lanczos/src_{sw}x{sh}.png"
        src_path = os.path.join(OUT, src_rel)
        if not os.path.exists(src_path):
            im = Image.fromarray(structured(sw, sh, rng).astype(np.uint8), "RGB")
            os.makedirs(os.path.dirname(src_path), exist_ok=True)
            im.save(src_path, optimize=True)
        src = Image.open(src_path)
        src.load()
        res = src.resize((dw, dh), Image.LANCZOS)  # reducing_gap=None, the default
        out_rel = f"lanczos/out_{sw}x{sh}_{dw}x{dh}.png"
        res.save(os.path.join(OUT, out_rel), optimize=True)
        assert Image.open(os.path.join(OUT, out_rel)).tobytes() == res.tobytes()
        out.append({"src": src_rel, "width": dw, "height": dh, "expected": out_rel, "what": why})
    return out


# ---------------------------------------------------------------- refiner size

def refine_size(w, h, target):
    """The original PeRFlow predictor's rule, verbatim in Python."""
    k = target / min(w, h)
    return int(round(w * k / 64.0)) * 64, int(round(h * k / 64.0)) * 64


def refine_cases():
    cases = [(96, 96, 1024), (512, 512, 1024), (768, 512, 1024), (512, 768, 1024), (1000, 667, 1024),
             (1920, 1080, 1024), (33, 17, 1024), (1, 1, 1024), (640, 480, 768), (5000, 7, 512), (64, 64, 31),
             (64, 64, 32), (64, 64, 96), (64, 64, 160), (300, 300, 1056), (300, 300, 1120)]
    # Sides where side * k / 64 is exactly n + 0.5 in double, with n even and odd
    # (ties go to even), and sides where the exact rational value is a tie but the
    # double is not (Python's float arithmetic decides, not the rational).
    ties = {0: [], 1: []}
    near = []
    for target in (512, 768, 1024, 1056):
        for m in range(24, 400):
            for side in range(m + 1, 3 * m):
                k = target / m
                v = side * k / 64.0
                exact = Fraction(side * target, m * 64)
                if v - int(v) == 0.5 and len(ties[int(v) % 2]) < 5:
                    ties[int(v) % 2].append((side, m, target))
                elif exact.denominator == 2 and v - int(v) != 0.5 and len(near) < 5:
                    near.append((side, m, target))
    assert len(ties[0]) == 5 and len(ties[1]) == 5, ties
    cases += ties[0] + ties[1] + near + [(h, w, t) for w, h, t in ties[0][:2] + ties[1][:2]]
    out = []
    for w, h, t in cases:
        ow, oh = refine_size(w, h, t)
        out.append({"w": w, "h": h, "target": t, "width": ow, "height": oh})
    print(f"refine_size: {len(ties[0]) + len(ties[1])} exact ties, {len(near)} rational ties that are not in double")
    return out


# ---------------------------------------------------------------- main

FUZZ_SEEDS = ["png/rgb8_1x1_interlaced.png", "png/grey1.png", "png/palette4.png", "png/grey16.png",
              "png/greyalpha16.png", "png/rgb8_column.png", "jpeg/tiny_1x1.jpg", "jpeg/tiny_9x3_420.jpg",
              "jpeg/tiny_cmyk.jpg", "jpeg/tiny_progressive.jpg"]

def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    rng = np.random.default_rng(20240611)
    decode = []
    cases = png_cases(rng) + jpeg_cases(rng)
    for rel, what, data in cases:
        mode, (w, h), rgb = pillow_rgb(data)
        write(rel, data)
        rgb_rel = rel.rsplit(".", 1)[0] + ".rgb"
        write(rgb_rel, rgb)
        decode.append({"file": rel, "rgb": rgb_rel, "width": w, "height": h, "pillow_mode": mode, "what": what})
    index = {
        "format": "perflow-golden",
        "version": str(VERSION),
        "generator": GENERATOR,
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "decode": decode,
        "truncated": truncated(cases),
        "hostile": hostile(),
        "lanczos": lanczos_cases(rng),
        "refine_size": refine_cases(),
    }
    # The fuzz target's seeds: small files of each kind.
    corpus = os.path.join(ROOT, "tests", "fuzz", "corpus_image")
    if os.path.isdir(corpus):
        shutil.rmtree(corpus)
    os.makedirs(corpus)
    for rel in FUZZ_SEEDS:
        shutil.copy(os.path.join(OUT, rel), os.path.join(corpus, rel.replace("/", "_")))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT) for n in ns)
    print(f"wrote {OUT}: {len(decode)} decode cases, {len(index['lanczos'])} Lanczos cases, "
          f"{len(index['refine_size'])} size cases, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
