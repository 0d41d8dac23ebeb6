#!/bin/sh
# test_install.sh - `make install` and `make uninstall`: into a PREFIX (the
# installed units then name the installed worker, so `systemd-analyze verify`
# checks them as installed, and the installed programs run), and with DESTDIR for
# packaging (PREFIX=/usr: units in /lib/systemd/system, ExecStart=/usr/bin/...).
# After uninstall no file of ours is left.
ROOT=${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
BIN=$(dirname "${PERFLOW:-$ROOT/bin/perflow}")
case "$BIN" in /*) ;; *) BIN=$ROOT/$BIN ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
fail() {
    echo "FAIL: $*"
    failed=1
}
mk() { make -C "$ROOT" --no-print-directory B="${B:-build}" BIN="$BIN" "$@" > "$work/make.log" 2>&1 || fail "make $*: $(tail -3 "$work/make.log")"; }

# ---- into a prefix ---------------------------------------------------------------
P=$work/prefix
mk install PREFIX="$P" SYSCONFDIR="$work/etc"
for f in bin/perflow bin/perflow-worker bin/perflow-dev-broker lib/systemd/system/perflow-worker@.service \
    lib/systemd/system/perflow-workers.target share/perflow/schemas/job.v1.json share/perflow/schemas/status.v1.json \
    share/man/man1/perflow.1 share/man/man1/perflow-submit.1 share/man/man1/perflow-status.1 \
    share/man/man1/perflow-worker.1 share/doc/perflow/README.md share/doc/perflow/ops/README.md \
    share/perflow/configs/sd15/unet/config.json share/perflow/configs/sd21/tokenizer/vocab.json; do
    [ -s "$P/$f" ] || fail "make install: $P/$f is missing"
done
[ -s "$work/etc/perflow/worker.env.example" ] || fail "make install: no example settings file"
grep -q "^ExecStart=$P/bin/perflow-worker\$" "$P/lib/systemd/system/perflow-worker@.service" ||
    fail "the installed unit's ExecStart: $(grep ^ExecStart "$P/lib/systemd/system/perflow-worker@.service")"
if ! command -v systemd-analyze > /dev/null; then
    echo "SKIP: systemd-analyze verify of the installed units (no systemd-analyze: ops/install-deps.sh installs systemd)"
else
    out=$(systemd-analyze verify --man=no "$P/lib/systemd/system/perflow-worker@.service" \
        "$P/lib/systemd/system/perflow-workers.target" 2>&1) && [ -z "$out" ] ||
        fail "systemd-analyze verify of the installed units: $out"
fi
"$P/bin/perflow" submit --help | grep -q -- '--model-url' || fail "the installed perflow submit --help"
"$P/bin/perflow-worker" --help | grep -q PERFLOW_METRICS_LISTEN || fail "the installed perflow-worker --help"
grep -q '^\.TH PERFLOW-SUBMIT 1' "$P/share/man/man1/perflow-submit.1" || fail "perflow-submit.1 is not a man page"
if ! command -v man > /dev/null; then
    echo "SKIP: the installed man page through man (no man: ops/install-deps.sh installs man-db)"
else
    man -l "$P/share/man/man1/perflow-submit.1" 2> /dev/null | grep -q -- '--seeds A-B' || fail "man perflow-submit"
fi
mk uninstall PREFIX="$P" SYSCONFDIR="$work/etc"
left=$(find "$P" "$work/etc" -type f 2> /dev/null)
[ -z "$left" ] || fail "make uninstall left: $left"

# ---- DESTDIR for packaging -----------------------------------------------------------
D=$work/dest
mk install DESTDIR="$D" PREFIX=/usr
[ -x "$D/usr/bin/perflow-worker" ] && [ -s "$D/lib/systemd/system/perflow-worker@.service" ] &&
    [ -s "$D/etc/perflow/worker.env.example" ] && [ -s "$D/usr/share/man/man1/perflow-worker.1" ] ||
    fail "make install DESTDIR=... PREFIX=/usr: $(find "$D" -type f | head -5)"
grep -q '^ExecStart=/usr/bin/perflow-worker$' "$D/lib/systemd/system/perflow-worker@.service" ||
    fail "PREFIX=/usr: $(grep ^ExecStart "$D/lib/systemd/system/perflow-worker@.service")"
mk uninstall DESTDIR="$D" PREFIX=/usr
left=$(find "$D" -type f 2> /dev/null)
[ -z "$left" ] || fail "make uninstall DESTDIR left: $left"

[ "$failed" -eq 0 ] && echo "install: 2 layouts installed and removed"
exit "$failed"
