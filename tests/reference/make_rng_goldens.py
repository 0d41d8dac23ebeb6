"""make_rng_goldens.py - writes tests/data/rng_goldens.json: torch.randn draws
from seeded CPU generators, as exact float32 bit patterns, for tests/test_rng.c.

Run from the repository root with the reference venv:
    .venv/bin/python tests/reference/make_rng_goldens.py

Each case seeds one torch.Generator("cpu") and makes a sequence of randn draws
from it (later draws continue the stream, as diffusers does). torch chooses its
normal_ kernel by CPU capability (the AVX2 one, also run on AVX-512 machines,
differs in the last bits from the generic one), so the script runs itself once
per capability (ATEN_CPU_CAPABILITY=default, avx2 and avx512, in child
processes, as the variable is read when torch loads) and records the two
kernels under "kernels": "x86" and "generic". Big draws keep only their first and last
KEEP values to stay small.
"""
import json
import os
import subprocess
import sys

VERSION = 1
KEEP = 64
OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "rng_goldens.json"))

SEEDS = [0, 1, 42, 2**32 + 5, 2**63 - 1, 2**64 - 1]
# Each entry is one sequence of shapes drawn from one freshly seeded generator.
SEQUENCES = [
    [[1]], [[3]], [[15]], [[16]], [[17]], [[31]], [[100]],
    [[2, 4, 8, 8]], [[1, 4, 64, 64]], [[1, 4, 128, 128]],
    [[3], [3]],              # the cached normal crosses calls
    [[1], [1], [1]],
    [[17], [5]],             # big draw leaves no cache; small one starts fresh
    [[5], [2, 4, 8, 8], [2]],  # the cache survives a big draw in between
    [[2, 4, 8, 8], [1, 4, 8, 8]],
]


def bits(t):
    import numpy as np
    return ["%08x" % v for v in t.contiguous().view(-1).numpy().view(np.uint32).tolist()]


def child():
    import torch
    cases = []
    for seed in SEEDS:
        for seq in SEQUENCES:
            g = torch.Generator("cpu").manual_seed(seed)
            draws = []
            for shape in seq:
                t = torch.randn(shape, generator=g, dtype=torch.float32)
                n = t.numel()
                b = bits(t)
                d = {"shape": shape, "numel": n}
                if n <= 2 * KEEP:
                    d["values"] = b
                else:
                    d["first"] = b[:KEEP]
                    d["last"] = b[-KEEP:]
                draws.append(d)
            cases.append({"seed": str(seed), "draws": draws})
    # Raw draws pin the engine, the seeding and random64's word order apart from
    # randn: random_() on int64 is random64() % 2**63 (uniform_int_distribution),
    # 400 of them cross the first 624-word twist.
    raw = []
    for seed in SEEDS:
        g = torch.Generator("cpu").manual_seed(seed)
        r = torch.empty(400, dtype=torch.int64).random_(generator=g)
        raw.append({"seed": str(seed), "random64_mod_2_63": ["%016x" % v for v in r.tolist()]})
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                      "cases": cases, "raw": raw}))


def main():
    kernels = {}
    torch_version = None
    runs = {}
    for cap in ("default", "avx512", "avx2"):
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, OMP_NUM_THREADS="1")
        res = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                             capture_output=True, text=True)
        runs[cap] = json.loads(res.stdout)
        torch_version = runs[cap]["torch"]
    # torch reports the generic build as "NO AVX"; a capability the CPU lacks falls back.
    if runs["avx2"]["capability"] != "AVX2":
        sys.exit("could not run torch's AVX2 kernel (capability %s)" % runs["avx2"]["capability"])
    if runs["avx512"]["capability"] != "AVX512":
        print("note: no AVX-512 here; not checked that it runs the AVX2 kernel", file=sys.stderr)
    elif runs["avx512"]["cases"] != runs["avx2"]["cases"]:
        sys.exit("torch's AVX-512 and AVX2 normal_ kernels disagree: rng.c models them as one")
    if runs["default"]["raw"] != runs["avx2"]["raw"]:
        sys.exit("raw draws depend on the capability?")
    kernels["x86"] = {"capability": "AVX2 (AVX512 identical)", "cases": runs["avx2"]["cases"]}
    kernels["generic"] = {"capability": runs["default"]["capability"], "cases": runs["default"]["cases"]}
    raw = runs["default"]["raw"]
    out = {
        "version": VERSION,
        "generator": "tests/reference/make_rng_goldens.py, torch %s" % torch_version,
        "hint": "re-run tests/reference/make_rng_goldens.py with the reference venv",
        "format": "float32 values as 8-digit hex bit patterns; seeds as decimal strings; "
                  "draws longer than %d keep first/last %d" % (2 * KEEP, KEEP),
        "raw": raw,
        "kernels": kernels,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print("wrote %s (%d bytes)" % (OUT, os.path.getsize(OUT)))


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        main()
