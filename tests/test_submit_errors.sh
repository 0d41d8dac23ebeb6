#!/bin/sh
# test_submit_errors.sh - hostile prompt files, seed ranges and flags given to
# `perflow submit` and `perflow status` give one clear line on stderr naming the
# file's line (or the flag) and a non-zero exit, before anything is sent; run under
# the ASan + UBSan build ($PERFLOW_ASAN), so a memory error or leak on an error path
# fails too. No broker is needed: every case fails before connecting, or is a
# --dry-run; the last ones check that an unreachable broker or Redis is an error
# within the timeout, never a hang.
. "$(dirname "$0")/expect.sh"
P=${PERFLOW_ASAN:-$ROOT/build/asan/perflow}
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
unset PERFLOW_REDIS PERFLOW_CONFIG PERFLOW_BROKERS
S="$P submit --model-url https://models.example/sd15 --output s3://out/{job_id}-{index}.png --dry-run"

f() { printf "$2" > "$T/$1"; }
f ok.jsonl '{"prompt": "a cat"}\n\n{"prompt": "a dog", "seed": 3}\n'
f notjson.jsonl '{"prompt": "a cat"}\n{"prompt": "a dog"\n'
f array.jsonl '["a cat"]\n'
f unknown.jsonl '{"prompt": "a cat", "negative_promt": "x"}\n'
f noprompt.jsonl '{"seed": 1}\n'
f seedneg.jsonl '{"prompt": "a", "seed": -1}\n'
f seedbig.jsonl '{"prompt": "a", "seed": 9223372036854775808}\n'
f seedfloat.jsonl '{"prompt": "a", "seed": 1.5}\n'
f empty.jsonl '\n\n'
f ctrl.jsonl '{"prompt": "a \\u0007 bell"}\n'
f nul.jsonl '{"prompt": "a"}\n{"prompt": "b\0"}\n'
f dup.jsonl '{"prompt": "a", "prompt": "b"}\n'
f badutf8.csv 'prompt\na \377 cat\n'
f unterminated.csv 'prompt,seed\n"a cat,1\nb,2\n'
f fields.csv 'prompt,seed\na,1\nb,2,3\n'
f stray.csv 'prompt\na "quoted" word\n'
f after.csv 'prompt\n"a"b\n'
f nohead.csv ''
f badcol.csv 'prompt,steps\na,4\n'
f twice.csv 'prompt,prompt\na,b\n'
f noprompt.csv 'seed\n1\n'
f seed.csv 'prompt,seed\na,0x10\n'
f ok.csv 'prompt,negative_prompt,seed\n"a cat, ""quoted""\nacross lines",blurry,7\nplain,,\n'
head -c 70000 /dev/zero | tr '\0' 'x' > "$T/long.jsonl"
python3 -c 'print("{\"prompt\": \"%s\"}" % ("x" * 5000))' > "$T/longprompt.jsonl"
printf 'prompt\n' > "$T/manyfields.csv"
python3 -c 'print(",".join(["a"] * 70))' >> "$T/manyfields.csv"

expect 0 "" $S --prompts "$T/ok.jsonl" --seeds 0-1
[ "$(wc -l < "$T/out")" -eq 3 ] && echo "ok: 2 prompts x 2 seeds, one pinned: 3 jobs" ||
    { echo "FAIL: ok.jsonl gave $(wc -l < "$T/out") jobs"; fails=$((fails + 1)); }
expect 0 "" $S --prompts "$T/ok.csv"
grep -q '"prompt":"a cat, \\"quoted\\"\\nacross lines","negative_prompt":"blurry","seed":7' "$T/out" &&
    echo "ok: CSV quoting, an embedded newline and a pinned seed" || { echo "FAIL: ok.csv: $(cat "$T/out")"; fails=$((fails + 1)); }
expect 1 "notjson.jsonl:2: not valid JSON" $S --prompts "$T/notjson.jsonl"
expect 1 "array.jsonl:1: each line must be a JSON object" $S --prompts "$T/array.jsonl"
expect 1 'unknown.jsonl:1: unknown member "negative_promt"' $S --prompts "$T/unknown.jsonl"
expect 1 'noprompt.jsonl:1: "prompt" is missing' $S --prompts "$T/noprompt.jsonl"
expect 1 'seedneg.jsonl:1: "seed" must be an integer' $S --prompts "$T/seedneg.jsonl"
expect 1 "seedbig.jsonl:1:" $S --prompts "$T/seedbig.jsonl"
expect 1 'seedfloat.jsonl:1: "seed" must be an integer' $S --prompts "$T/seedfloat.jsonl"
expect 1 "empty.jsonl: no prompts in the file" $S --prompts "$T/empty.jsonl"
expect 1 "ctrl.jsonl:1: prompt has a control character" $S --prompts "$T/ctrl.jsonl"
expect 1 "nul.jsonl:2: NUL byte" $S --prompts "$T/nul.jsonl"
expect 1 "dup.jsonl:1: not valid JSON: duplicate object key" $S --prompts "$T/dup.jsonl"
expect 1 "long.jsonl:1: line longer than" $S --prompts "$T/long.jsonl"
expect 1 "longprompt.jsonl:1: prompt is longer than 4096 bytes" $S --prompts "$T/longprompt.jsonl"
expect 1 "badutf8.csv:2: prompt is not valid UTF-8" $S --prompts "$T/badutf8.csv"
expect 1 "unterminated.csv:2: a quoted field is never closed" $S --prompts "$T/unterminated.csv"
expect 1 "fields.csv:3: 3 fields, but the header has 2" $S --prompts "$T/fields.csv"
expect 1 "stray.csv:2: a quote inside an unquoted field" $S --prompts "$T/stray.csv"
expect 1 "after.csv:2: text after a closing quote" $S --prompts "$T/after.csv"
expect 1 "nohead.csv:1: no header row" $S --prompts "$T/nohead.csv"
expect 1 'badcol.csv:1: unknown column "steps"' $S --prompts "$T/badcol.csv"
expect 1 'twice.csv:1: column "prompt" appears twice' $S --prompts "$T/twice.csv"
expect 1 'noprompt.csv:1: the header row must name a "prompt" column' $S --prompts "$T/noprompt.csv"
expect 1 "seed.csv:2: seed must be an integer" $S --prompts "$T/seed.csv"
expect 1 "manyfields.csv:2: more than 64 fields" $S --prompts "$T/manyfields.csv"
expect 1 "must end in .jsonl or .csv" $S --prompts "$T/ok"
expect 1 "No such file" $S --prompts "$T/none.jsonl"
mkdir "$T/dir.jsonl"
expect 1 "not a regular file" $S --prompts "$T/dir.jsonl"
# The job the fleet would reject is rejected here, naming the field.
expect 1 "job: width: must be a multiple of 8" $S --prompt cat --width 60
expect 1 "job: model.delta.url: must name a .safetensors file" $S --prompt cat --delta-url https://h/d.bin
expect 1 "job: output.url: must contain {index}" $P submit --model-url https://m/x --output s3://b/{job_id}.png \
    --prompt cat --num-images 2 --dry-run
expect 1 "ok.csv:2: output.url" $P submit --model-url https://m/x --output 's3://b/{bogus}.png' --prompts "$T/ok.csv" \
    --dry-run
expect 1 "not valid UTF-8" $S --prompt "$(printf 'a \377 cat')"
# Flags
expect 2 "seed range '9-3' runs backwards" $S --prompt cat --seeds 9-3
expect 2 "seed range 'x' must be" $S --prompt cat --seeds x
expect 2 "seed range '0-9223372036854775808' must be" $S --prompt cat --seeds 0-9223372036854775808
expect 2 "--seed and --seeds" $S --prompt cat --seed 1 --seeds 0-3
expect 2 "needs --prompt TEXT or --prompts FILE" $S
expect 2 "--route-spread must be an integer in [1, 1024] (got '0')" $S --prompt cat --route-spread 0
expect 2 "--route-spread must be an integer in [1, 1024] (got '2x')" $S --prompt cat --route-spread 2x
expect 2 "--model names a local folder" $S --prompt cat --model "$M"
expect 2 "--device is the workers' setting" $S --prompt cat --device cpu
expect 2 "--refine needs --controlnet-url" $S --prompt cat --refine
expect 2 "--batch-id '../x' must be" $S --prompt cat --batch-id ../x
expect 2 "--timeout is for --wait" $S --prompt cat --timeout 3
expect 2 "--steps must be" $S --prompt cat --steps 0
expect 2 "unknown option" $S --prompt cat --frobnicate
# SDXL prompts, LoRAs and ControlNets by URL (issue 22): each -sha256 and image belongs to the URL flag before it
expect 2 "--control-image-url follows the --controlnet-url" $S --prompt cat --control-image-url https://h/c.png
expect 2 "--control-image-url follows the --controlnet-url" $S --prompt cat --controlnet-url https://h/cn \
    --control-image-url https://h/a.png --control-image-url https://h/b.png
expect 2 "is the refiner's tile: give --refine" $S --prompt cat --controlnet-url https://h/cn
expect 2 "one --controlnet-url without a --control-image-url" $S --prompt cat --refine --controlnet-url https://h/a \
    --controlnet-url https://h/b
expect 2 "--lora-sha256 follows the --lora-url" $S --prompt cat --lora-sha256 abc
expect 2 "--control-image-sha256 follows the --control-image-url" $S --prompt cat --controlnet-url https://h/cn \
    --control-image-sha256 abc
expect 2 "--lora-url: the scale must be in [-10, 10]" $S --prompt cat --lora-url https://h/l.safetensors:99
expect 2 "--lora names a local file" $S --prompt cat --lora /x.safetensors
expect 2 "--original-size must be two integers" $S --prompt cat --original-size 0,5
expect 1 "job: model.loras[0].sha256: must be 64 lower-case hex digits" $S --prompt cat \
    --lora-url https://h/l.safetensors --lora-sha256 xyz
expect 1 "job: model.loras[0].url: must name a .safetensors" $S --prompt cat --lora-url https://h/l.bin
H64=$(printf '%064d' 0 | tr 0 a)
out=$($S --prompt cat --prompt-2 oil --negative-prompt-2 dull --original-size 1024,768 --crop-coords 8,4 \
    --target-size 1024,1024 --lora-url https://h:8443/l.safetensors:0.5 --lora-sha256 "$H64" \
    --lora-url https://h/m.safetensors --controlnet-url https://h/cn:0.25 --control-image-url https://h/c.png \
    --control-image-sha256 "$H64" 2> "$T/err")
case "$out" in
*'"loras":[{"url":"https://h:8443/l.safetensors","sha256":"'"$H64"'","scale":0.5},{"url":"https://h/m.safetensors"}]'*'"prompt_2":"oil","negative_prompt_2":"dull","original_size":[1024,768],"crop_coords":[8,4],"target_size":[1024,1024],"control":[{"controlnet":{"url":"https://h/cn"},"image":{"url":"https://h/c.png","sha256":"'"$H64"'"},"scale":0.25}]'*)
    echo "ok: submit --dry-run: SDXL prompts and time ids, LoRAs and a ControlNet by URL in the job" ;;
*) echo "FAIL: submit --dry-run printed: $out"; cat "$T/err"; fails=$((fails + 1)) ;;
esac
# IP-Adapters by URL: pairs in order, the encoder defaulting to the model URL's image_encoder
expect 2 "--ip-image-url follows the --ip-adapter-url" $S --prompt cat --ip-image-url https://h/i.png
expect 2 "--ip-image-url follows the --ip-adapter-url" $S --prompt cat --ip-adapter-url https://h/a.safetensors \
    --ip-image-url https://h/i.png --ip-image-url https://h/j.png
expect 2 "needs its --ip-image-url after it" $S --prompt cat --ip-adapter-url https://h/a.safetensors
expect 2 "--image-encoder-url is for --ip-adapter-url" $S --prompt cat --image-encoder-url https://h/e
expect 2 "--ip-adapter names a local file" $S --prompt cat --ip-adapter /x.safetensors
expect 2 "with a single-file --model-url needs --image-encoder-url" $P submit --model-url https://h/m.safetensors \
    --output 's3://b/{job_id}.png' --dry-run --prompt cat --ip-adapter-url https://h/a.safetensors --ip-image-url https://h/i.png
expect 1 "job: ip_adapters[0].adapter: must name a .safetensors IP-Adapter file" $S --prompt cat \
    --ip-adapter-url https://h/a.bin --ip-image-url https://h/i.png
out=$($S --prompt cat --ip-adapter-url https://h/a.safetensors:0.25 --ip-adapter-sha256 "$H64" \
    --ip-image-url https://h/i.png --ip-adapter-url https://h/p.safetensors --ip-image-url https://h/j.png \
    --ip-image-sha256 "$H64" 2> "$T/err")
case "$out" in
*'"ip_adapters":[{"adapter":{"url":"https://h/a.safetensors","sha256":"'"$H64"'"},"image":{"url":"https://h/i.png"},"image_encoder":{"url":"https://models.example/sd15/image_encoder"},"scale":0.25},{"adapter":{"url":"https://h/p.safetensors"},"image":{"url":"https://h/j.png","sha256":"'"$H64"'"},"image_encoder":{"url":"https://models.example/sd15/image_encoder"}}]'*)
    echo "ok: submit --dry-run: IP-Adapters by URL in the job, the encoder the model's image_encoder" ;;
*) echo "FAIL: submit --dry-run printed: $out"; cat "$T/err"; fails=$((fails + 1)) ;;
esac
# Nothing listens: a clear error within the connect timeout, never a hang.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
expect 1 "no broker of 127.0.0.1:$port answered" timeout 60 $P submit --brokers "127.0.0.1:$port" \
    --model-url https://m/x --output 's3://b/{job_id}.png' --prompt cat
expect 1 "Connection refused" timeout 60 $P submit --redis "127.0.0.1:$port" --brokers "127.0.0.1:$port" \
    --model-url https://m/x --output 's3://b/{job_id}.png' --prompt cat
expect 1 "Connection refused" timeout 60 $P status --redis "127.0.0.1:$port" some-job
expect 2 "needs JOB_ID or --batch ID" $P status
expect 2 "--jobs and --manifest go with --batch" $P status --jobs x
expect 2 "'../x' is not a job or batch id" $P status ../x
expect 2 "is not a job or batch id" $P status --batch "$(printf 'a \377')"
echo "submit errors: $fails failed"
[ "$fails" -eq 0 ]
