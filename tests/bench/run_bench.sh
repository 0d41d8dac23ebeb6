#!/bin/sh
# run_bench.sh - `make bench`: each benchmark timed for PyTorch and for perflow in the
# same run on the same machine, with the ratio (perflow / torch: < 1 is faster).
# Models are real-size shapes with random weights, made once under build/bench/models.
# Env: BENCH_REPEAT (default 5), BENCH_REFINE_REPEAT (default 3), BENCH_THREADS (default: all cores),
# BENCH_ONLY (names among clip vae unet refine sdxl load storage worker: run only those).
# RSS: each process's peak resident memory, weights included. Below the CPU rows: the
# kernels each side ran on (perflow: the OpenBLAS core engine/core/blas_core.c chose from
# CPUID; PyTorch: its CPU capability), as the last benchmark reported them.
set -e
cd "$(dirname "$0")/../.."
B=${B:-build}
REPEAT=${BENCH_REPEAT:-5}
THREADS=${BENCH_THREADS:-$(nproc)}
MODELS=$B/bench/models
mkdir -p "$MODELS"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); threads $THREADS; median of $REPEAT"
printf "%-44s %10s %12s %7s %11s %11s\n" benchmark "torch (s)" "perflow (s)" ratio "torch RSS" "ours RSS"
only() { [ -z "${BENCH_ONLY:-}" ] || case " $BENCH_ONLY " in *" $1 "*) ;; *) return 1 ;; esac; }
run() { # name, python what, C binary, model subdir[, repeat]
    only "$2" || return 0
    rep=${5:-$REPEAT}
    ref=$(.venv/bin/python tests/reference/bench_reference.py "$2" --models "$MODELS" --repeat "$rep" --threads "$THREADS")
    ours=$(OMP_NUM_THREADS=$THREADS "$B/bench/$3" "$MODELS/$4" "$rep" "$THREADS")
    .venv/bin/python -c 'import json, sys
r, o = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print("%-44s %10.4f %12.4f %6.2fx %8.0f MiB %7.0f MiB" % (sys.argv[1], r["seconds"], o["seconds"], o["seconds"] / r["seconds"],
      r["peak_rss_mb"], o["peak_rss_mb"]))
open(sys.argv[4], "w").write("kernels: perflow %s; PyTorch %s\n" % (o.get("kernels", "?"), r.get("kernels", "?")))' \
        "$1" "$ref" "$ours" "$KERNELS"
}
KERNELS=$(mktemp)
trap 'rm -f "$KERNELS"' EXIT
run "CLIP ViT-L/14 text, B=2, L=77" clip bench_clip clip-vit-l14
run "SD-1.5 VAE decode, 512x512, fp32" vae bench_vae sd15-vae
run "SD-1.5 UNet, B=2, 64x64, fp32" unet bench_unet sd15-unet
# The refiner's denoising step at 1024 px (ControlNet + UNet on the CFG pair): tens of
# seconds a run on a small machine, so fewer runs (BENCH_REFINE_REPEAT, default 3).
run "refine step 1024px: ControlNet+UNet, B=2, fp32" refine bench_refine sd15-refine "${BENCH_REFINE_REPEAT:-3}"
# SDXL's UNet (2.6 B parameters, 10 GB in float32) at 512 px: BENCH_SDXL_REPEAT, default 3.
run "SDXL UNet, B=2, 64x64, fp32" sdxl bench_sdxl sdxl-unet "${BENCH_SDXL_REPEAT:-3}"
# Loading: SD-1.5 from one LDM file (float16) with two LoRAs fused, to float32 weights on
# the CPU, vs diffusers' from_single_file + load_lora_weights + fuse_lora. Each run loads
# the whole model, so fewer runs (BENCH_LOAD_REPEAT, default 3).
run "load SD-1.5 single file + 2 LoRAs, fp32" load bench_load sd15-single "${BENCH_LOAD_REPEAT:-3}"
cat "$KERNELS"
# Storage: 2 GiB from a local nginx into the model cache vs curl, cache-hit open times.
only storage && B=$B sh tests/bench/bench_storage.sh
# The worker's own cost per job (no PyTorch side): real broker, Redis, nginx and S3
# processes on 127.0.0.1, the tiny model, BENCH_WORKER_JOBS jobs (default 200).
only worker || exit 0
echo
PATH="$PATH:/usr/sbin" .venv/bin/python tests/bench/bench_worker.py "${BENCH_WORKER_JOBS:-200}"
