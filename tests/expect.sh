# expect.sh - the checks of the CLI error tests (tests/test_cli_errors.sh,
# tests/test_device_cli.sh); sourced by them, not run.
#
# Sets ROOT (the repository: $PERFLOW_ROOT, else the folder above the calling
# script's), M (the tiny model), T (a scratch folder, removed on exit) and fails
# (the count of failed checks, for the script's last line), and defines expect.
ROOT=${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
M=$ROOT/tests/data/models/tiny-sd15
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0

# expect STATUS PHRASE CMD...: runs CMD; it must exit with STATUS, write PHRASE on
# stderr (unless PHRASE is empty) and no sanitizer report, and for a runtime
# error (STATUS 1) exactly one line on stderr, not counting the lines that
# match $EXPECT_IGNORE (a grep pattern; unset: none). Prints "ok: <that line>"
# or "FAIL ..." with the stderr, counting the failure in fails.
expect() {
    want=$1 phrase=$2
    shift 2
    "$@" > "$T/out" 2> "$T/err"
    got=$?
    if [ -n "$EXPECT_IGNORE" ]; then
        lines=$(grep -vc -- "$EXPECT_IGNORE" "$T/err")
    else
        lines=$(wc -l < "$T/err")
    fi
    if [ "$got" -ne "$want" ] || { [ -n "$phrase" ] && ! grep -qF -- "$phrase" "$T/err"; } ||
        grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$T/err" ||
        { [ "$want" -eq 1 ] && [ "$lines" -ne 1 ]; }; then
        echo "FAIL (exit $got, want $want, phrase '$phrase'): $*"
        sed 's/^/    /' "$T/err" | head -20
        fails=$((fails + 1))
    else
        echo "ok: $(head -1 "$T/err" | grep . || echo "exit $got: $*")"
    fi
}
