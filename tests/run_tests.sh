#!/bin/sh
# run_tests.sh - runs every test binary given, then the shell tests
# (tests/test_*.sh), and prints one closing line "N passed, N failed".
# Environment: PERFLOW (the CLI), PERFLOW_ASAN (the ASan build of the CLI).
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
passed=0
failed=0
failures=""
for t in "$@" "$ROOT"/tests/test_*.sh; do
    [ -e "$t" ] || continue
    name=$(basename "$t")
    echo "=== $name"
    case "$t" in
    *.sh) sh "$t" ;;
    *) "$t" ;;
    esac
    if [ $? -eq 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures="$failures $name"
    fi
done
echo
[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
