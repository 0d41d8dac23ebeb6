#!/bin/sh
# fuzz-long.sh - the long fuzz runs, outside CI: each libFuzzer target (make fuzz;
# ASan + UBSan) runs FUZZ_RUNS executions (default 10 million), or FUZZ_SECONDS
# seconds where that is set and comes first, starting from its seed corpus,
# FUZZ_PARALLEL targets at a time (default 2), and one table is
# printed: executions, executions/s, seed and final corpus sizes, peak RSS, time.
# Exit status 1 on any crash, leak or sanitizer report (the log is kept and named).
# Found inputs go to FUZZ_OUT (default a temp dir), never into the repository:
# copy the ones worth keeping into tests/fuzz/corpus_* by hand.
#   FUZZ_RUNS=10000000 FUZZ_PARALLEL=2 [FUZZ_SECONDS=600] sh ops/fuzz-long.sh [target ...]
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-build}
RUNS=${FUZZ_RUNS:-10000000}
PAR=${FUZZ_PARALLEL:-2}
SECS=${FUZZ_SECONDS:-0} # 0: no time limit
OUTDIR=${FUZZ_OUT:-$(mktemp -d)}
mkdir -p "$OUTDIR"
targets=$*
[ -n "$targets" ] || targets=$(cd "$ROOT/$B/fuzz" 2>/dev/null && ls fuzz_* 2>/dev/null)
[ -n "$targets" ] || { echo "fuzz-long: no fuzz targets in $ROOT/$B/fuzz (run make fuzz)"; exit 1; }

# one target: corpus in $OUTDIR/NAME, log in $OUTDIR/NAME.log, a line in $OUTDIR/NAME.row
run_one() {
    name=$1
    f=$ROOT/$B/fuzz/$name
    [ -x "$f" ] || { echo "| $name | not built | | | | | |" > "$OUTDIR/$name.row"; return 1; }
    seed=$ROOT/tests/fuzz/corpus_${name#fuzz_}
    work=$OUTDIR/$name
    mkdir -p "$work"
    nseed=0
    if [ -d "$seed" ]; then cp "$seed"/* "$work"/ 2>/dev/null; nseed=$(ls "$seed" | wc -l); fi
    t0=$(date +%s)
    UBSAN_OPTIONS=halt_on_error=1 "$f" -runs="$RUNS" -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$OUTDIR/$name-" "$work" > "$OUTDIR/$name.log" 2>&1
    rc=$?
    t1=$(date +%s)
    stat() { grep -o "stat::$1: *[0-9]*" "$OUTDIR/$name.log" | grep -o '[0-9]*$' | tail -1; }
    verdict=ok
    [ $rc -eq 0 ] || verdict="FAILED (rc $rc, $OUTDIR/$name.log)"
    echo "| $name | $(stat number_of_executed_units) | $(stat average_exec_per_sec) | $nseed | $(ls "$work" | wc -l) | $(stat peak_rss_mb) MiB | $((t1 - t0)) s | $verdict |" \
        > "$OUTDIR/$name.row"
    return $rc
}

echo "fuzz-long: $RUNS runs per target (time limit: ${SECS:-0} s, 0 = none), $PAR at a time, work in $OUTDIR"
pids=""
n=0
for t in $targets; do
    run_one "$t" &
    pids="$pids $!"
    n=$((n + 1))
    if [ $n -ge "$PAR" ]; then
        wait $(echo "$pids" | awk '{print $1}')
        pids=$(echo "$pids" | awk '{$1=""; print}')
        n=$((n - 1))
    fi
done
wait
echo
echo "| target | executions | exec/s | seed corpus | final corpus | peak RSS | time | result |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
status=0
for t in $targets; do
    cat "$OUTDIR/$t.row"
    grep -q '| ok |$' "$OUTDIR/$t.row" || status=1
done
exit $status
