#!/bin/sh
# demo.sh - `make demo`: the main job, PeRFlow text-to-image and the refiner, on the
# embedded tiny model (tests/data/models/tiny-sd15 with its delta weights and its
# ControlNet-Tile, made by tests/reference/make_tiny_models.py and committed), so it
# needs no download; then the same kind of job through the worker fleet's path
# (ops/worker-demo.sh: broker, Redis, model server, worker, perflow submit --wait).
# The tiny model has random weights: its images are colourful noise, not pictures;
# the point is the whole path (tokenizer, text encoder, UNet + delta, sampler, VAE,
# ControlNet refiner, PNG; Kafka, Redis, the model cache, the status topic).
#
# Environment: PERFLOW (default bin/perflow), DEMO_OUT (default build/demo); the
# worker part's settings are in ops/worker-demo.sh. Every wait is bounded and
# everything started is stopped on any exit.
set -e
cd "$(dirname "$0")/.."
PERFLOW=${PERFLOW:-bin/perflow}
MODEL=tests/data/models/tiny-sd15
OUT=${DEMO_OUT:-build/demo}
mkdir -p "$OUT"
run() {
    echo "\$ $*"
    "$@"
}
run "$PERFLOW" tokenize --tokenizer "$MODEL/tokenizer" "a photo of a cat"
run "$PERFLOW" generate --model "$MODEL" --delta "$MODEL-delta/unet" --prompt "a photo of a cat" \
    --negative-prompt "blurry" --steps 4 --guidance 4.5 --seed 0 --width 64 --height 64 \
    --refine --controlnet "$MODEL-controlnet" --refine-size 128 --num-images 4 --grid --out "$OUT/cats.png"
run "$PERFLOW" inspect "$MODEL-delta/unet/diffusion_pytorch_model.safetensors" | head -3
echo "demo: wrote $OUT/cats.png (a 2x2 contact sheet of four 64 px images refined to 128 px)"
echo
echo "== the worker: one refine job through Kafka (dev broker), Redis and the model cache"
BIN=$(dirname "$PERFLOW") WORKER_DEMO_OUT="$OUT/worker" sh ops/worker-demo.sh
echo
echo "demo: done. Images: $OUT/cats.png (perflow generate --refine) and $OUT/worker/images/ (the worker)"
