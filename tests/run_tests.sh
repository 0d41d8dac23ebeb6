#!/bin/sh
# run_tests.sh - runs every test binary given, then the shell tests
# (tests/test_*.sh), and prints each skip with its reason and one closing line
# "N passed, N failed, N skipped".
# Environment: PERFLOW (the CLI), PERFLOW_ASAN (the ASan build of the CLI),
# PERFLOW_NO_SKIP=1 (CI: a skip fails its test, except the one allowed reason:
# no GPU on this machine, for the CUDA tests).
#
# What counts as a skip, in a test's output: a line "SKIP: REASON" (the shell
# tests), "[  SKIPPED ] NAME" (cmocka, as it runs: not its closing list; the
# test prints its reason on a line before it) and pytest's "SKIPPED [N] WHERE: REASON" (-rs, tests/pytest_run.sh).
# A test that is missing (a binary not built) fails.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PERFLOW_ROOT="$ROOT"
export PERFLOW_SHARED="${PERFLOW_SHARED:-$ROOT/../shared}"
export PERFLOW="${PERFLOW:-$ROOT/bin/perflow}"
export PERFLOW_ASAN="${PERFLOW_ASAN:-$ROOT/build/asan/perflow}"
# Relative paths (make passes build/...) are made absolute: the suites change directory.
case "$PERFLOW" in /*) ;; *) PERFLOW="$PWD/$PERFLOW" ;; esac
case "$PERFLOW_ASAN" in /*) ;; *) PERFLOW_ASAN="$PWD/$PERFLOW_ASAN" ;; esac
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# The goldens are float32: compare on the CPU backend unless a test picks CUDA itself.
export PERFLOW_DEVICE="${PERFLOW_DEVICE:-cpu}"
export PERFLOW_NO_SKIP="${PERFLOW_NO_SKIP:-0}"
# The one reason a skip may have under PERFLOW_NO_SKIP=1 (the CUDA tests say it).
ALLOWED_SKIP="no GPU"
passed=0
failed=0
skipped=0
failures=""
skips=""
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "$@" "$ROOT"/tests/test_*.sh; do
    name=$(basename "$t")
    echo "=== $name"
    if [ ! -e "$t" ]; then
        echo "FAIL: $t does not exist (not built?)"
        failed=$((failed + 1))
        failures="$failures $name"
        continue
    fi
    # To a file, followed as it grows (not a pipe: a server a test leaves behind
    # would hold a pipe open), so that the skips can be read back.
    : > "$log"
    case "$t" in
    *.sh) sh "$t" > "$log" 2>&1 & ;;
    *) "$t" > "$log" 2>&1 & ;;
    esac
    pid=$!
    tail -n +1 -f --pid="$pid" "$log"
    wait "$pid"
    rc=$?
    # this test's skips: "REASON" lines (one per skipped test; pytest's [N] counts N)
    found=$(awk '
        /^SKIP: / { sub(/^SKIP: /, ""); print 1 "\t" $0; next }
        /^SKIPPED \[[0-9]+\] / { n = $2; gsub(/[^0-9]/, "", n); sub(/^SKIPPED \[[0-9]+\] /, ""); print n "\t" $0; next }
        /\[  SKIPPED \] [0-9]+ test\(s\), listed below/ { listing = 1; next }
        /\[  SKIPPED \] / && !listing { sub(/.*\[  SKIPPED \] /, ""); print 1 "\t" $0 " (" why ")"; next }
        /: skipped/ { why = $0; sub(/.*: skipped:? */, "", why) }' "$log")
    bad=0
    if [ -n "$found" ]; then
        while IFS="$(printf '\t')" read -r n why; do
            skipped=$((skipped + n))
            skips="$skips  $name: $n skipped: $why
"
            if [ "$PERFLOW_NO_SKIP" = 1 ] && ! echo "$why" | grep -qF "$ALLOWED_SKIP"; then
                echo "FAIL: skipped under PERFLOW_NO_SKIP=1 (only '$ALLOWED_SKIP' may skip): $why"
                bad=1
            fi
        done <<EOF
$found
EOF
    fi
    if [ "$rc" -eq 0 ] && [ "$bad" -eq 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures="$failures $name"
    fi
done
echo
[ -n "$skips" ] && printf 'skipped:\n%s' "$skips"
[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
