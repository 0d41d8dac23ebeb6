#!/bin/sh
# test_fuzz.sh - runs each libFuzzer target (built by `make fuzz`, ASan + UBSan) for a
# short while over its seed corpus; any crash, leak or sanitizer report fails the test.
# FUZZ_SECONDS (default 15) sets the time per target. Found inputs go to a temp dir,
# never into the repository.
ROOT=${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
B=${B:-build}
SECS=${FUZZ_SECONDS:-15}
status=0
# every target of tests/fuzz/ must be built (make fuzz; make test builds them)
for src in "$ROOT"/tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    f="$ROOT/$B/fuzz/$name"
    if [ ! -x "$f" ]; then
        echo "FAIL: $name is not built ($f: make fuzz)"
        status=1
        continue
    fi
    corpus="$ROOT/tests/fuzz/corpus_${name#fuzz_}"
    work=$(mktemp -d)
    [ -d "$corpus" ] && cp "$corpus"/* "$work"/ 2>/dev/null
    if UBSAN_OPTIONS=halt_on_error=1 "$f" -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1 "$work" > "$work.log" 2>&1; then
        echo "ok: $name ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work.log" | grep -o '[0-9]*$' || echo ?) runs)"
    else
        echo "FAIL: $name"; tail -30 "$work.log"; status=1
    fi
    rm -rf "$work" "$work.log"
done
exit $status
