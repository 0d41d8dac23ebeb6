#!/bin/sh
# test_demo.sh - the README's first command, `make demo`, as a new user runs it:
# once on a quiet machine and once while the machine is busy (a parallel build of
# the engine and a CPU burner beside it, both bounded), because the first run on a
# fresh machine is a busy one and that is where it used to hang. Each run must end
# within DEMO_TEST_LIMIT_S (default 600 s), succeed, end by naming where the images
# are, write cats.png as a 256x256 PNG (four 128 px refined images) and two 128x128
# worker images, and leave none of the processes it started running.
ROOT=${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
LIMIT=${DEMO_TEST_LIMIT_S:-600}
PY=$ROOT/.venv/bin/python
BIN=$(dirname "${PERFLOW:-$ROOT/bin/perflow}")
case "$BIN" in /*) ;; *) BIN=$ROOT/$BIN ;; esac
work=$(mktemp -d)
load_pids=""
cleanup() {
    for p in $load_pids; do kill -TERM "$p" 2> /dev/null; done
    for p in $load_pids; do wait "$p" 2> /dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
failed=0
fail() {
    echo "FAIL: $*"
    failed=1
}

png_size() { # prints "WxH" of a PNG, or "not a PNG"
    "$PY" -c 'import struct, sys
d = open(sys.argv[1], "rb").read(24)
print("%dx%d" % struct.unpack(">II", d[16:24]) if d[:8] == b"\x89PNG\r\n\x1a\n" else "not a PNG")' "$1" 2> /dev/null ||
        echo "missing"
}

# run NAME: `make demo` into $work/NAME, checked.
run() {
    out=$work/$1
    t0=$(date +%s)
    timeout -k 10 "$LIMIT" make -C "$ROOT" --no-print-directory demo B="${B:-build}" BIN="$BIN" DEMO_OUT="$out" > "$work/$1.log" 2>&1
    rc=$?
    secs=$(($(date +%s) - t0))
    if [ "$rc" -ne 0 ]; then
        fail "$1: make demo exited $rc after $secs s ($([ "$rc" -eq 124 ] && echo "timed out: it hung"))"
        tail -30 "$work/$1.log"
        return
    fi
    last=$(tail -1 "$work/$1.log")
    case "$last" in
    "demo: done. Images: "*"$out/cats.png"*"$out/worker/images/"*) ;;
    *) fail "$1: the last line does not say where the images are: $last" ;;
    esac
    [ "$(png_size "$out/cats.png")" = 256x256 ] || fail "$1: cats.png is $(png_size "$out/cats.png"), not 256x256"
    n=0
    for f in "$out"/worker/images/*.png; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        [ "$(png_size "$f")" = 128x128 ] || fail "$1: $f is $(png_size "$f"), not 128x128"
    done
    [ "$n" -eq 2 ] || fail "$1: $n worker images, not 2"
    grep -q '^\[####################\] 1/1 ' "$work/$1.log" || fail "$1: no progress line of the job"
    for p in $(cat "$out/worker/pids" 2> /dev/null); do
        kill -0 "$p" 2> /dev/null && fail "$1: process $p ($(cat /proc/$p/comm 2> /dev/null)) still runs after the demo"
    done
    [ -s "$out/worker/pids" ] || fail "$1: the demo listed no pids"
    echo "ok: make demo ($1) in $secs s"
}

run quiet

# The loaded run: a parallel build of the engine into a scratch folder and a CPU
# burner, both stopped after at most LIMIT seconds whatever happens.
timeout "$LIMIT" make -C "$ROOT" --no-print-directory -j2 B="$work/load-build" "$work/load-build/libperflow_engine.a" \
    > "$work/load-build.log" 2>&1 &
load_pids="$load_pids $!"
timeout "$LIMIT" sh -c 'while :; do :; done' &
load_pids="$load_pids $!"
sleep 2
run loaded
for p in $load_pids; do kill -TERM "$p" 2> /dev/null; done

[ "$failed" -eq 0 ] && echo "demo: 2 runs passed"
exit "$failed"
