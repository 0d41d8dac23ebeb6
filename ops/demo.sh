#!/bin/sh
# demo.sh - `make demo`: the main job on the embedded tiny model (tests/data/models/tiny-sd15),
# made by tests/reference/make_tiny_models.py and committed, so it needs no download.
set -e
cd "$(dirname "$0")/.."
MODEL=tests/data/models/tiny-sd15
OUT=${DEMO_OUT:-build/demo}
mkdir -p "$OUT"
echo "== perflow tokenize --tokenizer $MODEL/tokenizer \"a photo of a cat\""
bin/perflow tokenize --tokenizer "$MODEL/tokenizer" "a photo of a cat"
echo "== perflow encode --model $MODEL --prompt \"a photo of a cat\" --out $OUT/prompt.safetensors"
bin/perflow encode --model "$MODEL" --prompt "a photo of a cat" --out "$OUT/prompt.safetensors"
bin/perflow inspect "$OUT/prompt.safetensors"
