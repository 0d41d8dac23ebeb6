#!/bin/sh
# test_safetensors_cli.sh - `perflow inspect` on hostile files, under ASan+UBSan.
#
# For every malformed file of tests/data/safetensors/cases.tsv the sanitized CLI
# ($PERFLOW_ASAN, built by `make asan`) must exit 1 with exactly one stderr line,
# "perflow: " followed by a message holding the case's phrase, and no sanitizer
# report (leaks included). A valid file must list its tensors and exit 0.
# Regenerate the files with tests/reference/make_safetensors_cases.py.
ROOT="${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}"
CLI="${PERFLOW_ASAN:-$ROOT/build/asan/perflow}"
DATA="$ROOT/tests/data/safetensors"
VERSION=1
export ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

if [ ! -x "$CLI" ]; then
    echo "FAIL: no sanitized CLI at $CLI (build it with 'make asan', or set PERFLOW_ASAN)"
    exit 1
fi
if ! head -n 1 "$DATA/cases.tsv" 2>/dev/null | grep -q "cases version $VERSION:"; then
    echo "FAIL: $DATA/cases.tsv is missing or not version $VERSION: re-run tests/reference/make_safetensors_cases.py"
    exit 1
fi

TMP=$(mktemp -d) || exit 1
trap 'rm -rf "$TMP"' EXIT
failures=0
checked=0

fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# run EXPECTED_STATUS ARGS...: runs the CLI into $TMP/out and $TMP/err and
# checks the status and that no sanitizer spoke.
run() {
    want=$1
    shift
    "$CLI" "$@" >"$TMP/out" 2>"$TMP/err"
    status=$?
    checked=$((checked + 1))
    if grep -q -e "ERROR: AddressSanitizer" -e "ERROR: LeakSanitizer" -e "runtime error" "$TMP/out" "$TMP/err"; then
        fail "inspect $*: sanitizer report:"
        sed 's/^/    /' "$TMP/err" | head -n 30
        return 1
    fi
    if [ "$status" -ne "$want" ]; then
        fail "inspect $*: exit status $status, want $want; stderr:"
        sed 's/^/    /' "$TMP/err" | head -n 10
        return 1
    fi
    return 0
}

# one_error_line PHRASE ARGS...: stderr must be one line, "perflow: ...PHRASE...".
one_error_line() {
    phrase=$1
    shift
    lines=$(wc -l <"$TMP/err")
    if [ "$lines" -ne 1 ] || ! grep -q "^perflow: " "$TMP/err"; then
        fail "inspect $*: want exactly one stderr line starting 'perflow: ', got $lines:"
        sed 's/^/    /' "$TMP/err" | head -n 10
    elif ! grep -q -F -e "$phrase" "$TMP/err"; then
        fail "inspect $*: stderr lacks '$phrase': $(cat "$TMP/err")"
    elif [ -s "$TMP/out" ]; then
        fail "inspect $*: printed to stdout on error"
    fi
}

tab=$(printf '\t')
n=0
while IFS="$tab" read -r file phrase; do
    case "$file" in '#'* | '') continue ;; esac
    n=$((n + 1))
    run 1 inspect "$DATA/$file" && one_error_line "$phrase" "$DATA/$file"
done <"$DATA/cases.tsv"
[ "$n" -ge 12 ] || fail "only $n malformed cases in cases.tsv"

run 1 inspect "$TMP/absent.safetensors" && one_error_line "absent.safetensors: cannot open" absent
run 1 inspect "$DATA" && one_error_line "not a regular file" "$DATA"

cat >"$TMP/want" <<'EOF'
a.weight F32 (2, 3)
b.f16 F16 (4,)
c.bf16 BF16 (2, 2)
d.scalar F32 ()
e.ids I64 (3,)
f.empty F32 (0, 3)
EOF
if run 0 inspect "$DATA/valid.safetensors"; then
    cmp -s "$TMP/out" "$TMP/want" || fail "inspect valid.safetensors listed:
$(cat "$TMP/out")
want:
$(cat "$TMP/want")"
    [ -s "$TMP/err" ] && fail "inspect valid.safetensors wrote to stderr: $(cat "$TMP/err")"
fi

# Usage: --help succeeds on stdout; anything else malformed exits 2.
if run 0 inspect --help; then
    grep -q "usage: perflow inspect" "$TMP/out" || fail "inspect --help prints no usage"
fi
run 2 inspect
run 2 inspect --bogus "$DATA/valid.safetensors"
run 2 inspect "$DATA/valid.safetensors" "$DATA/valid.safetensors"

if [ "$failures" -ne 0 ]; then
    echo "test_safetensors_cli: $failures of $checked checks failed"
    exit 1
fi
echo "test_safetensors_cli: $checked runs ($n malformed files) passed"
