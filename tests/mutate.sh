#!/bin/sh
# mutate.sh - the mutation check (`make mutate`; not part of `make test`):
# each tests/mutations/*.patch is a small bug put into the code on purpose,
# with the test expected to notice it on its "Caught by:" line. For each, the
# patch is applied to the working tree, the programs and tests are rebuilt
# CPU-only in a build folder of their own ($B, default build-mutate), the test
# runs, and the patch is taken out again (also when interrupted). The named
# tests first run once on the unmutated code: a test that fails there proves
# nothing about a mutation. Prints one line per mutation and a closing line
# "N caught, N survived, N broken" (broken: the patch did not apply or the
# mutant did not build); exits 1 unless every mutation was caught.
# Arguments: patch files (default: all of tests/mutations/).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
B=${B:-build-mutate}
BIN=$B/bin
export B PERFLOW="$ROOT/$BIN/perflow" PERFLOW_ROOT="$ROOT"
# what tests/run_tests.sh gives the tests
export PERFLOW_SHARED="${PERFLOW_SHARED:-$ROOT/../shared}" PERFLOW_DEVICE="${PERFLOW_DEVICE:-cpu}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
[ $# -gt 0 ] || set -- tests/mutations/*.patch
MAKE="make -j${JOBS:-2} NVCC= B=$B BIN=$BIN"

applied=
restore() {
    [ -n "$applied" ] && patch -p1 -R -s --no-backup-if-mismatch < "$applied" && echo "restored the source ($applied)"
    applied=
}
trap 'restore' EXIT
trap 'restore; exit 130' INT TERM

test_of() { sed -n 's/^Caught by: //p' "$1" | head -n 1; }
built_of() { # the test binary a command names ($B/tests/NAME), for make
    case "$1" in '$B/tests/'*) echo "$B/tests/${1#\$B/tests/}" ;; esac
}
run_test() { # the test's exit status; its output goes to $B/mutate-logs/
    eval "timeout ${MUTATE_TIMEOUT:-900} $1" > "$2" 2>&1
}

rm -rf "$B/mutate-logs" "$B/mutate-tmp"
mkdir -p "$B/mutate-logs" "$B/mutate-tmp"
# the scratch folders a failing test keeps (every caught mutation) stay in $B
case "$B" in /*) TMPDIR="$B/mutate-tmp" ;; *) TMPDIR="$ROOT/$B/mutate-tmp" ;; esac
export TMPDIR
echo "=== building the unmutated code in $B"
targets=
for p in "$@"; do targets="$targets $(built_of "$(test_of "$p")")"; done
$MAKE all $targets > "$B/mutate-logs/build-base.log" 2>&1 || { echo "the unmutated code does not build: $B/mutate-logs/build-base.log"; exit 1; }
echo "=== the named tests on the unmutated code"
for p in "$@"; do test_of "$p"; done | sort -u > "$B/mutate-logs/tests.txt"
while IFS= read -r t; do
    log="$B/mutate-logs/base-$(echo "$t" | tr -c 'A-Za-z0-9_\n' '_').log"
    if ! run_test "$t" "$log" < /dev/null; then
        echo "FAIL: '$t' fails without any mutation ($log)"
        exit 1
    fi
    echo "ok: $t"
done < "$B/mutate-logs/tests.txt"

caught=0 survived=0 broken=0 report=
for p in "$@"; do
    name=$(basename "$p" .patch)
    t=$(test_of "$p")
    what=$(sed -n 's/^Mutation: //p' "$p" | head -n 1)
    log="$B/mutate-logs/$name.log"
    if ! patch -p1 --dry-run -s --no-backup-if-mismatch < "$p" > "$log" 2>&1; then
        res="broken (does not apply)"
        broken=$((broken + 1))
    else
        patch -p1 -s --no-backup-if-mismatch < "$p"
        applied=$p
        if ! $MAKE all $(built_of "$t") >> "$log" 2>&1; then
            res="broken (does not build)"
            broken=$((broken + 1))
        elif run_test "$t" "$log"; then
            res="SURVIVED"
            survived=$((survived + 1))
        else
            res="caught"
            caught=$((caught + 1))
        fi
        restore > /dev/null
    fi
    line=$(printf '%-20s %-24s %s: %s' "$name" "$res" "$t" "$what")
    echo "$line"
    report="$report$line
"
done
# put the unmutated objects back, so that $B matches the source again
$MAKE all $targets > "$B/mutate-logs/build-after.log" 2>&1
echo
printf '%s' "$report" > "$B/mutate-logs/report.txt"
echo "$caught caught, $survived survived, $broken broken"
[ "$survived" -eq 0 ] && [ "$broken" -eq 0 ]
