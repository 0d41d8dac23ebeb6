#!/bin/sh
# test_cli_errors.sh - bad inputs to bin/perflow give one clear line on stderr and a
# non-zero exit, never a crash: run under the ASan + UBSan build ($PERFLOW_ASAN), so a
# memory error or leak on any error path fails the test too.
. "$(dirname "$0")/expect.sh"
P=${PERFLOW_ASAN:-$ROOT/build/asan/perflow}
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
D=$ROOT/tests/data/models/tiny-sd15-delta/unet

G="$P generate --prompt cat --width 64 --height 64 --out $T/x.png"
expect 1 "no such directory" $G --model "$T/nope"
mkdir -p "$T/empty"
expect 1 "model_index.json: missing file" $G --model "$T/empty"
# A model folder with the UNet's weights gone.
cp -r "$M" "$T/noweights" && rm "$T/noweights/unet/diffusion_pytorch_model.safetensors"
expect 1 "no weights" $G --model "$T/noweights"
# A config that disagrees with the weights: the error names the tensor and both shapes.
cp -r "$M" "$T/badshape"
sed -i 's/"cross_attention_dim": 32/"cross_attention_dim": 48/' "$T/badshape/unet/config.json"
expect 1 "the config implies" $G --model "$T/badshape"
# A truncated weights file.
cp -r "$M" "$T/trunc"
head -c 100000 "$M/vae/diffusion_pytorch_model.safetensors" > "$T/trunc/vae/diffusion_pytorch_model.safetensors"
expect 1 "diffusion_pytorch_model.safetensors" $G --model "$T/trunc"
expect 1 "multiples of 8" $P generate --model "$M" --prompt cat --width 60 --height 64 --out "$T/x.png"
expect 2 "--steps must be" $G --model "$M" --steps 0
expect 2 "--steps must be" $G --model "$M" --steps -3
expect 1 "unknown prediction_type" $G --model "$M" --prediction-type sample
expect 2 "--guidance must be" $G --model "$M" --guidance nan
expect 2 "--seed must be" $G --model "$M" --seed -1
expect 2 "--out must name a .png" $P generate --model "$M" --prompt cat --out "$T/x.jpg"
expect 2 "usage" $P generate --model "$M" --out "$T/x.png"
# A delta whose key set differs from the base (here: an embeddings file).
$P encode --model "$M" --prompt cat --out "$T/emb.safetensors" 2>/dev/null
expect 1 "do not match the base" $G --model "$M" --delta "$T/emb.safetensors"
expect 1 "cannot open" $G --model "$M" --delta "$T/nope.safetensors"
# Invalid UTF-8 in a prompt.
expect 1 "UTF-8" $G --model "$M" --prompt "$(printf 'a \377 cat')"
expect 2 "unknown command" $P frobnicate
expect 1 "vocab.json: cannot open" $P tokenize --tokenizer "$T/empty" "a cat"
expect 1 "missing file" $P encode --model "$T/empty" --prompt cat --out "$T/e.safetensors"

# The refiner: bad inputs each give one line and exit 1 (a value the parser cannot
# read at all is a usage error, 2).
CN=$ROOT/tests/data/models/tiny-sd15-controlnet
IN=$ROOT/tests/data/goldens/tiny-sd15/refine-input-4step.png
R="$P refine --model $M --delta $D --controlnet $CN --out $T/r.png --steps 2"
printf 'not an image at all\n' > "$T/text.png"
expect 1 "not a PNG or JPEG image" $R --image "$T/text.png"
: > "$T/empty.png"
expect 1 "empty file" $R --image "$T/empty.png"
head -c 300 "$IN" > "$T/cut.png"
expect 1 "cut.png" $R --image "$T/cut.png"
expect 1 "cannot open" $R --image "$T/nope.png"
expect 1 "rounds the 64 x 64 image to 0 x 0" $R --image "$IN" --size 16
expect 1 "size must be in [0, 4096]" $R --image "$IN" --size 5000
expect 1 "more than 4096 a side" $P refine --model "$M" --controlnet "$CN" --image "$ROOT/tests/data/goldens/tiny-sd15/refine-input-ddim-strength.png" --out "$T/r.png" --size 2600
expect 1 "strength must be in (0, 1]" $R --image "$IN" --size 64 --strength 0
expect 1 "strength must be in (0, 1]" $R --image "$IN" --size 64 --strength 1.5
expect 1 "strength must be in (0, 1]" $R --image "$IN" --size 64 --strength -0.5
expect 1 "leaves no step" $R --image "$IN" --size 64 --steps 4 --strength 0.2
expect 2 "--strength must be a number" $R --image "$IN" --strength nan
expect 2 "--size must be" $R --image "$IN" --size 1e3
expect 1 "multiple of 8" $R --image "$ROOT/tests/data/images/png/grey8.png" --size 0
expect 1 "does not fit the model" $P refine --model "$ROOT/tests/data/models/tiny-sd2" --controlnet "$CN" --image "$IN" --out "$T/r.png"
expect 1 "loading controlnet" $P refine --model "$M" --controlnet "$M/unet" --image "$IN" --out "$T/r.png"
expect 2 "--vae-tiling must be" $R --image "$IN" --vae-tiling sometimes
expect 2 "usage" $P refine --model "$M" --image "$IN" --out "$T/r.png"
expect 2 "--refine needs --controlnet" $G --model "$M" --refine
expect 2 "--controlnet is used by --refine only" $G --model "$M" --controlnet "$CN"
expect 1 "strength must be in (0, 1]" $G --model "$M" --refine --controlnet "$CN" --refine-strength 2

# Grey, grey + alpha, palette and RGBA inputs are converted as Pillow's
# convert("RGB") does (tests/test_image.c checks the pixels); here they run under ASan.
for img in grey8.png greyalpha8.png palette8_trns.png rgba8.png; do
    [ -e "$ROOT/tests/data/images/png/$img" ] || { echo "FAIL: no test image $img"; fails=$((fails + 1)); continue; }
    "$P" refine --model "$M" --controlnet "$CN" --image "$ROOT/tests/data/images/png/$img" --size 64 --steps 1 \
        --out "$T/conv.png" > /dev/null 2> "$T/err"
    if [ $? -ne 0 ] || grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$T/err" || [ ! -s "$T/conv.png" ]; then
        echo "FAIL: refine of $img under ASan"; cat "$T/err"; fails=$((fails + 1))
    else
        echo "ok: refine of $img under ASan"
    fi
done

# SDXL: time ids must be positive (crop coordinates not negative), SDXL's settings
# belong to SDXL models, and an SDXL folder needs both tokenizers and text encoders.
XL=$ROOT/tests/data/models/tiny-sdxl
expect 2 "--original-size must be two integers" $P generate --model "$XL" --prompt cat --out "$T/x.png" --original-size 0,512
expect 2 "--target-size must be two integers" $P generate --model "$XL" --prompt cat --out "$T/x.png" --target-size 512
expect 2 "--crop-coords must be two integers" $P generate --model "$XL" --prompt cat --out "$T/x.png" --crop-coords -1,0
expect 1 "SDXL models only" $G --model "$M" --prompt-2 "a dog"
cp -r "$XL" "$T/xl-no-te2" && rm -r "$T/xl-no-te2/text_encoder_2"
expect 1 "without text_encoder_2" $P generate --model "$T/xl-no-te2" --prompt cat --out "$T/x.png"
cp -r "$XL" "$T/xl-no-tok2" && rm -r "$T/xl-no-tok2/tokenizer_2"
expect 1 "without tokenizer_2" $P generate --model "$T/xl-no-tok2" --prompt cat --out "$T/x.png"
expect 1 "do not match the base" $P generate --model "$XL" --delta "$D" --prompt cat --width 64 --height 64 --out "$T/x.png"

# The good path under the sanitizers too: a small image, and the tokenizer's
# documented output for "a photo of a cat".
"$P" generate --model "$M" --delta "$D" --prompt "a cat" --steps 4 --width 64 --height 64 --out "$T/ok.png" \
    > /dev/null 2> "$T/err"
if [ $? -ne 0 ] || grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$T/err" || [ ! -s "$T/ok.png" ]; then
    echo "FAIL: generate under ASan"; cat "$T/err"; fails=$((fails + 1))
else
    echo "ok: generate under ASan wrote a PNG"
fi
ids=$("$P" tokenize --tokenizer "$M/tokenizer" "a photo of a cat")
case "$ids" in
"[49406, 320, 1125, 539, 320, 2368, 49407, 49407,"*) echo "ok: tokenize" ;;
*) echo "FAIL: tokenize printed $ids"; fails=$((fails + 1)) ;;
esac
n=$(echo "$ids" | tr ',' '\n' | wc -l)
[ "$n" -eq 77 ] || { echo "FAIL: tokenize printed $n ids, want 77"; fails=$((fails + 1)); }

# Issue 14: single-file checkpoints, LoRAs, sharded weights, ControlNet pairs. Each bad
# input is one line naming the file and what is wrong; the good paths run under ASan too.
SF=$ROOT/tests/data/models/single-file/tiny-sd15.safetensors
L=$ROOT/tests/data/models/loras
expect 1 "unknown architecture (UNet: cross-attention width 32, 4 input channels" $G --model "$SF"
python3 "$ROOT/tests/st_drop.py" "$SF" "$T/novae.safetensors" first_stage_model.
expect 1 "has no VAE (first_stage_model.*)" $G --model "$T/novae.safetensors" --model-config "$M"
python3 "$ROOT/tests/st_drop.py" "$SF" "$T/note.safetensors" cond_stage_model.
expect 1 "has no text encoder (cond_stage_model.*)" $G --model "$T/note.safetensors" --model-config "$M"
printf 'PK\003\004pickled' > "$T/model.ckpt"
expect 1 "perflow reads safetensors only" $G --model "$T/model.ckpt"
expect 1 "a model folder has its own configs" $G --model "$M" --model-config "$M"
expect 1 "--model-config: " $G --model "$SF" --model-config "$T/nope"
expect 1 "none of its 4 tensors matches a weight" $G --model "$M" --lora "$L/bad-foreign.safetensors"
expect 1 "rank mismatch: up has rank 4, down has rank 2" $G --model "$M" --lora "$L/bad-rank.safetensors:0.5"
expect 1 "does not fit the model's" $G --model "$M" --lora "$L/kohya-sd2.safetensors"
expect 1 "nope.safetensors: cannot open" $G --model "$M" --lora "$T/nope.safetensors:0.7"
expect 2 "must follow the --controlnet DIR it conditions" $G --model "$M" --control-image "$IN"
expect 2 "must follow the --controlnet DIR it conditions" $G --model "$M" --controlnet "$CN" --control-image "$IN" --control-image "$IN"
# a condition image over 16 x the output's pixels is refused from its header (issue 19)
python3 -c 'import struct, sys, zlib
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
w = h = 1024
raw = b"".join(b"\0" + b"\0" * w * 3 for _ in range(h))
sys.stdout.buffer.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
                        chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))' > "$T/big-control.png"
expect 1 "1024x1024 has more than 65536 pixels, the cap on input images" $G --model "$M" --controlnet "$CN" \
    --control-image "$T/big-control.png"
# IP-Adapter: pairs in order, an adapter of another width, an encoder of another width, no encoder, an SD-1.5 adapter on SDXL.
IPA=$ROOT/tests/data/models/tiny-sd15-ip-adapter
expect 2 "must follow the --ip-adapter FILE it prompts" $G --model "$M" --ip-image "$IN"
expect 2 "must follow the --ip-adapter FILE it prompts" $G --model "$M" --ip-adapter "$IPA/ip-adapter.safetensors" --ip-image "$IN" --ip-image "$IN"
expect 1 "has no --ip-image after it" $G --model "$M" --ip-adapter "$IPA/ip-adapter.safetensors"
expect 1 "does not fit the model: it has 4 cross-attentions over 64-wide image tokens" $G --model "$M" --ip-adapter "$IPA/ip-adapter-x64.safetensors" --ip-image "$IN"
expect 1 "takes 16-wide image embeddings but image encoder" $G --model "$M" --ip-adapter "$IPA/ip-adapter-e16.safetensors:0.5" --ip-image "$IN"
cp -r "$M" "$T/noenc" && rm -r "$T/noenc/image_encoder"
expect 1 "has no image_encoder/ folder" $G --model "$T/noenc" --ip-adapter "$IPA/ip-adapter.safetensors" --ip-image "$IN"
expect 1 "does not fit the model: it has 4 cross-attentions over 32-wide image tokens (unknown family), the model's UNet has 12 over 72" $G --model "$ROOT/tests/data/models/tiny-sdxl" --ip-adapter "$IPA/ip-adapter.safetensors" --ip-image "$IN" --image-encoder "$M/image_encoder"
expect 2 "at most 16 --lora" $G --model "$M" $(for i in $(seq 17); do printf -- '--lora x%s ' "$i"; done)
cp -rL "$ROOT/tests/data/models/tiny-sd2-sharded" "$T/sharded"
VS=$T/sharded/vae/diffusion_pytorch_model-00002-of-00004.safetensors
head -c 5000 "$VS" > "$T/shard" && mv "$T/shard" "$VS"
expect 1 "diffusion_pytorch_model-00002-of-00004.safetensors" $G --model "$T/sharded"
rm "$VS"
expect 1 "diffusion_pytorch_model-00002-of-00004.safetensors: cannot open" $G --model "$T/sharded"
"$P" generate --model "$SF" --model-config "$M" --delta "$D" --lora "$L/kohya-sd15.safetensors:0.8" \
    --lora "$L/peft.safetensors:-0.5" --prompt "a cat" --steps 2 --width 64 --height 64 --out "$T/lora.png" \
    > /dev/null 2> "$T/err"
if [ $? -ne 0 ] || grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$T/err" || [ ! -s "$T/lora.png" ] ||
    ! grep -q "lora $L/kohya-sd15.safetensors (kohya, scale 0.8): 45 of 46 tensors matched" "$T/err" ||
    ! grep -q "warning: lora .*dora_scale" "$T/err"; then
    echo "FAIL: generate from a single file with two LoRAs under ASan"; cat "$T/err"; fails=$((fails + 1))
else
    echo "ok: generate from a single file with two LoRAs under ASan"
fi
"$P" refine --model "$M" --controlnet "$CN" --controlnet "$ROOT/tests/data/models/tiny-sd15-controlnet-b:0.5" \
    --control-image "$IN" --image "$IN" --size 64 --steps 1 --out "$T/pair.png" > /dev/null 2> "$T/err"
if [ $? -ne 0 ] || grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$T/err" || [ ! -s "$T/pair.png" ]; then
    echo "FAIL: refine with a tile and a ControlNet pair under ASan"; cat "$T/err"; fails=$((fails + 1))
else
    echo "ok: refine with a tile and a ControlNet pair under ASan"
fi
out=$("$P" inspect --summary --model "$M" "$L/peft.safetensors" 2> "$T/err")
case "$out" in
*"LoRA, PEFT format"*"104 of 104 tensors match"*) echo "ok: inspect of a LoRA against a model" ;;
*) echo "FAIL: inspect printed: $out"; cat "$T/err"; fails=$((fails + 1)) ;;
esac
# SDXL LoRAs: kohya's original block numbering matches; a LoRA of the other family is one line naming both
out=$("$P" inspect --summary --model "$XL" "$L/sdxl-kohya.safetensors" 2> "$T/err")
case "$out" in
*"LoRA, kohya format"*"an SDXL LoRA"*"54 of 54 tensors match"*) echo "ok: inspect of a kohya SDXL LoRA against SDXL" ;;
*) echo "FAIL: inspect printed: $out"; cat "$T/err"; fails=$((fails + 1)) ;;
esac
out=$("$P" inspect "$ROOT/tests/data/models/single-file/tiny-sdxl.safetensors" 2> "$T/err")
case "$out" in
*"family SDXL"*"second text encoder: OpenCLIP, width 40"*"text_encoder_2 65"*"unknown 0"*) echo "ok: inspect of an SDXL single file" ;;
*) echo "FAIL: inspect printed: $out"; cat "$T/err"; fails=$((fails + 1)) ;;
esac
out=$("$P" inspect --summary "$ROOT/tests/data/models/tiny-sdxl-controlnet/diffusion_pytorch_model.safetensors" 2> "$T/err")
case "$out" in
*"ControlNetModel weights with SDXL's text_time embedding (an SDXL ControlNet)"*) echo "ok: inspect of an SDXL ControlNet" ;;
*) echo "FAIL: inspect printed: $out"; cat "$T/err"; fails=$((fails + 1)) ;;
esac
# IP-Adapters: plain and Plus, what they take, and whether they fit --model's UNet
out=$("$P" inspect --summary --model "$M" "$ROOT/tests/data/models/tiny-sdxl-ip-adapter/ip-adapter-plus.safetensors" 2> "$T/err")
case "$out" in
*"IP-Adapter Plus (Resampler): 12 cross-attentions over 72-wide image tokens, 6 tokens from the penultimate hidden states of 32"*"does not fit: its UNet has 4 cross-attentions over 32"*)
    echo "ok: inspect of an SDXL IP-Adapter Plus against SD-1.5" ;;
*) echo "FAIL: inspect printed: $out"; cat "$T/err"; fails=$((fails + 1)) ;;
esac
out=$("$P" inspect --summary --model "$M" "$ROOT/tests/data/models/tiny-sd15-ip-adapter/ip-adapter.safetensors" 2> "$T/err")
case "$out" in
*"# IP-Adapter: 4 cross-attentions over 32-wide image tokens, 4 tokens from image_embeds of 24 (the image encoder's projection_dim)"*"fits its UNet (4 cross-attentions over 32)"*)
    echo "ok: inspect of an IP-Adapter that fits" ;;
*) echo "FAIL: inspect printed: $out"; cat "$T/err"; fails=$((fails + 1)) ;;
esac
expect 1 "an SDXL checkpoint, but the configs of" $P generate --model "$ROOT/tests/data/models/single-file/tiny-sdxl.safetensors" \
    --model-config "$M" --prompt cat --width 64 --height 64 --out "$T/x.png"
expect 1 "an SD-1.x/2.x LoRA on an SDXL model: " $P generate --model "$XL" --lora "$L/kohya-sd15.safetensors" \
    --prompt cat --width 64 --height 64 --out "$T/x.png"
expect 1 "an SDXL LoRA on an SD-1.x/2.x model: " $P generate --model "$M" --lora "$L/sdxl-peft.safetensors" \
    --prompt cat --width 64 --height 64 --out "$T/x.png"

[ $fails -eq 0 ] || { echo "$fails failures"; exit 1; }
