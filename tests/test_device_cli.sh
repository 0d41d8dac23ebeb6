#!/bin/sh
# test_device_cli.sh - --device and $PERFLOW_DEVICE on `perflow encode` and `perflow
# generate`: an unknown name, or a CUDA device this build or machine cannot give,
# is one clear line on stderr and exit status 1, never a crash; cpu always works.
# Runs the normal CLI ($PERFLOW, with CUDA where nvcc was found) and the ASan
# build ($PERFLOW_ASAN, always CPU-only), so a leak on these paths fails too.
. "$(dirname "$0")/expect.sh"
P=${PERFLOW:-$ROOT/bin/perflow}
A=${PERFLOW_ASAN:-$ROOT/build/asan/perflow}
export ASAN_OPTIONS=detect_leaks=1
# Progress lines ("step i/n") do not count against the one error line.
EXPECT_IGNORE='^step '

for bin in "$P" "$A"; do
    [ -x "$bin" ] || { echo "FAIL: no binary $bin"; fails=$((fails + 1)); continue; }
    E="$bin encode --model $M --prompt cat --out $T/e.safetensors"
    expect 1 "unknown device 'tpu'" $E --device tpu
    expect 1 "unknown device 'cuda:x'" $E --device cuda:x
    expect 1 "--device cuda:99" $E --device cuda:99
    expect 1 "PERFLOW_DEVICE cuda:99" env PERFLOW_DEVICE=cuda:99 $E
    expect 1 "PERFLOW_DEVICE: unknown device 'gpu'" env PERFLOW_DEVICE=gpu $E
    expect 0 "" $E --device cpu
    expect 0 "" env PERFLOW_DEVICE=cpu $E
    expect 1 "unknown device" $bin generate --model "$M" --prompt cat --width 64 --height 64 --device npu --out "$T/x.png"
done
# A build without CUDA says so when CUDA is asked for.
expect 1 "built without CUDA" $A encode --model "$M" --prompt cat --out "$T/e.safetensors" --device cuda
[ "$fails" -eq 0 ]
