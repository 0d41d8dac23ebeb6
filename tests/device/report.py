#!/usr/bin/env python3
"""report.py - the last step of tests/device/check.sh: merges what the steps left in the
work folder into one JSON (device_report.json) and prints a table of perflow against
diffusers.

    python3 tests/device/report.py WORK_DIR OUT_JSON

WORK_DIR holds steps.txt ("name exit_status seconds" per step), gpu.txt (nvidia-smi),
test_cuda_ops.txt and test_cuda_pipeline.txt (the tests' output: one line per checked op,
model or pipeline), perflow.json (tests/bench/bench_gpu.c), profile.json (bench_gpu's time per
op), worker_demo.txt (ops/worker-demo.sh on the GPU) and diffusers.json
(tests/device/bench_diffusers.py). Missing or broken inputs are reported in the JSON,
never fatal. Ratios are perflow / diffusers: below 1, perflow is faster or smaller.
Exit status 0 unless the output cannot be written.
"""
import json
import os
import sys

BENCHES = ["unet_cfg_step_64x64_b2", "vae_decode_512_b1", "txt2img_512_4step_cfg_b1", "txt2img_512_4step_cfg_b8",
           "refine_1024_4step_cfg_b1", "refine_1024_4step_cfg_b4", "sdxl_1024_4step_cfg_b1", "sdxl_1024_4step_cfg_b4"]
MIB = 1048576.0


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return None if e.errno == 2 else "unreadable: %s" % e


def load_json(path, problems):
    text = read(path)
    if text is None:
        problems.append("%s: missing" % os.path.basename(path))
        return {}
    try:
        return json.loads(text)
    except ValueError as e:
        problems.append("%s: not JSON (%s)" % (os.path.basename(path), e))
        return {}


def test_summary(text):
    """The per-check lines (indented), the failures among them, and cmocka's verdicts."""
    if text is None:
        return {"ran": False}
    lines = text.splitlines()
    checks = [l.strip() for l in lines if l.startswith("  ") and l.strip()]
    return {"ran": True, "checks": checks, "failed": [l for l in checks if l.endswith("FAIL")],
            "cmocka": [l for l in lines if l.startswith("[  ") or "skipped" in l]}


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


def main():
    work, out = sys.argv[1], sys.argv[2]
    problems = []
    steps = []
    for line in (read(os.path.join(work, "steps.txt")) or "").splitlines():
        parts = line.split()
        if len(parts) == 3:
            steps.append({"name": parts[0], "exit": int(parts[1]), "at_seconds": int(parts[2])})
    ours = load_json(os.path.join(work, "perflow.json"), problems)
    ref = load_json(os.path.join(work, "diffusers.json"), problems)
    # the SDXL timings come in files of their own (a model of their own)
    ours.update(load_json(os.path.join(work, "perflow_sdxl.json"), problems))
    ref.update({k: v for k, v in load_json(os.path.join(work, "diffusers_sdxl.json"), problems).items()
                if k.startswith("sdxl_")})
    benches = {}
    for key in BENCHES:
        p, d = ours.get(key, {}), ref.get(key, {})
        if not p and not d:
            continue
        benches[key] = {
            "perflow_s": p.get("seconds"), "diffusers_s": d.get("seconds"),
            "time_ratio": ratio(p.get("seconds"), d.get("seconds")),
            "perflow_peak_reserved_mib": p.get("peak_reserved_bytes", 0) / MIB if p else None,
            "diffusers_peak_reserved_mib": d.get("peak_reserved_bytes", 0) / MIB if d else None,
            "reserved_ratio": ratio(p.get("peak_reserved_bytes"), d.get("peak_reserved_bytes")),
            "perflow_peak_in_use_mib": p.get("peak_in_use_bytes", 0) / MIB if p else None,
            "diffusers_peak_allocated_mib": d.get("peak_allocated_bytes", 0) / MIB if d else None,
            "allocated_ratio": ratio(p.get("peak_in_use_bytes"), d.get("peak_allocated_bytes")),
            "perflow_steady_device_allocs": p.get("steady_device_allocs"),
            "perflow_alloc_after_step1": p.get("alloc_after_step1"),
        }
    report = {
        "version": 1,
        "generator": "tests/device/check.sh (re-run it on a GPU machine to refresh)",
        "gpu": (read(os.path.join(work, "gpu.txt")) or "").strip(),
        "steps": steps,
        "failed_steps": [s["name"] for s in steps if s["exit"] != 0],
        "tests": {name: test_summary(read(os.path.join(work, name + ".txt")))
                  for name in ("test_cuda_ops", "test_cuda_pipeline")},
        "benchmarks": benches,
        "perflow": ours,
        "diffusers": ref,
        # time per op kind of one warm image at batch 1 and 8 (bench_gpu ... profile)
        "profile": load_json(os.path.join(work, "profile.json"), problems),
        "worker_demo": (read(os.path.join(work, "worker_demo.txt")) or "").splitlines()[-40:],
        "problems": problems,
    }
    with open(out, "w") as f:
        json.dump(report, f, indent=1)

    print("%-26s %11s %11s %7s %12s %12s %7s %6s" % ("benchmark", "perflow ms", "diffusers", "ratio",
                                                      "perflow MiB", "diffusers", "ratio", "allocs"))
    fmt = lambda v, f: (f % v) if isinstance(v, (int, float)) else "-"
    for key, b in benches.items():
        print("%-26s %11s %11s %7s %12s %12s %7s %6s" % (
            key, fmt(b["perflow_s"] and b["perflow_s"] * 1e3, "%.1f"), fmt(b["diffusers_s"] and b["diffusers_s"] * 1e3, "%.1f"),
            fmt(b["time_ratio"], "%.2fx"), fmt(b["perflow_peak_reserved_mib"], "%.0f"),
            fmt(b["diffusers_peak_reserved_mib"], "%.0f"), fmt(b["reserved_ratio"], "%.2fx"),
            fmt(b["perflow_steady_device_allocs"], "%d")))
    print("(ms: median wall time; MiB: peak device memory reserved by each side's caching allocator;"
          " ratio: perflow / diffusers; allocs: cudaMalloc calls during perflow's timed runs)")
    for name, t in report["tests"].items():
        if t.get("ran"):
            print("%s: %d checks, %d failed" % (name, len(t["checks"]), len(t["failed"])))
    if report["failed_steps"]:
        print("failed steps:", ", ".join(report["failed_steps"]))
    for key, prof in sorted(report["profile"].items()):
        if isinstance(prof, dict) and isinstance(prof.get("ops"), dict):
            total = sum(v.get("seconds", 0) for v in prof["ops"].values()) or 1
            print("%s: %.1f ms, by op: %s" % (key, prof.get("seconds", 0) * 1e3, ", ".join(
                "%s %.0f%%" % (op, 100 * v.get("seconds", 0) / total) for op, v in list(prof["ops"].items())[:8])))
    for p in problems:
        print("problem:", p)
    print("wrote", out)


if __name__ == "__main__":
    main()
