#!/bin/sh
# demo.sh - `make demo`: the main job, PeRFlow text-to-image, on the embedded tiny model
# (tests/data/models/tiny-sd15 plus its delta weights, made by
# tests/reference/make_tiny_models.py and committed), so it needs no download.
# The tiny model has random weights: its images are colourful noise, not pictures;
# the point is the whole path (tokenizer, text encoder, UNet + delta, sampler, VAE, PNG).
set -e
cd "$(dirname "$0")/.."
PERFLOW=${PERFLOW:-bin/perflow}
MODEL=tests/data/models/tiny-sd15
OUT=${DEMO_OUT:-build/demo}
mkdir -p "$OUT"
run() { echo "\$ $*"; "$@"; }
run "$PERFLOW" tokenize --tokenizer "$MODEL/tokenizer" "a photo of a cat"
run "$PERFLOW" generate --model "$MODEL" --delta "$MODEL-delta/unet" --prompt "a photo of a cat" \
    --negative-prompt "blurry" --steps 4 --guidance 4.5 --seed 0 --width 256 --height 256 \
    --num-images 4 --grid --out "$OUT/cats.png"
run "$PERFLOW" inspect "$MODEL-delta/unet/diffusion_pytorch_model.safetensors" | head -3
echo "demo: wrote $OUT/cats.png (a 2x2 contact sheet of four 256x256 images)"
# The product's shape: the same job through the worker, with the local services it
# needs (dev broker, Redis, an HTTP model server) started and stopped by the script.
echo
echo "== the worker: one job through Kafka (dev broker), Redis and the model cache"
BIN=$(dirname "$PERFLOW") sh ops/worker-demo.sh
