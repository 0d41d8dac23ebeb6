#!/bin/sh
# test_storage.sh - the storage layer against real servers on 127.0.0.1, started
# and stopped by the tests themselves (tests/storage/, pytest): redis-server and
# nginx from Debian, moto's S3 server (signature checking on) with boto3 as the
# independent client, and tests/storage/fault_server.py for cut transfers, 500s,
# slow links, tokens and redirects. Needs .venv with tests/requirements.txt
# (ops/install-deps.sh installs it). pytest's own summary line is printed; its
# exit status is this script's.
ROOT=${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
PY=$ROOT/.venv/bin/python
if ! "$PY" -c "import pytest, boto3, moto" 2>/dev/null; then
    echo "FAIL: $PY lacks pytest, boto3 or moto: run 'sh ops/install-deps.sh'"
    exit 1
fi
for tool in redis-server nginx; do
    command -v $tool > /dev/null || [ -x /usr/sbin/$tool ] || { echo "FAIL: $tool is not installed: run 'sh ops/install-deps.sh'"; exit 1; }
done
export PATH="$PATH:/usr/sbin" PYTHONDONTWRITEBYTECODE=1
# Hostile inputs (URLs, model indexes, Redis contents, server answers) run under
# the ASan + UBSan build when there is one, so a memory error or leak fails a test.
if [ -n "$PERFLOW_ASAN" ] && [ -x "$PERFLOW_ASAN" ]; then
    PERFLOW=$PERFLOW_ASAN
    export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
fi
export PERFLOW="${PERFLOW:-$ROOT/bin/perflow}"
case "$PERFLOW" in /*) ;; *) PERFLOW="$ROOT/$PERFLOW" ;; esac
echo "storage tests with $PERFLOW"
# Servers register their pids here; whatever a crashed or interrupted run left
# running is stopped on the way out.
PERFLOW_TEST_PIDDIR=$(mktemp -d)
export PERFLOW_TEST_PIDDIR
cleanup() {
    for f in "$PERFLOW_TEST_PIDDIR"/*; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    done
    rm -rf "$PERFLOW_TEST_PIDDIR"
}
pytest_pid=
trap cleanup EXIT
trap '[ -n "$pytest_pid" ] && kill -TERM "$pytest_pid" 2>/dev/null; exit 130' INT TERM
cd "$ROOT/tests/storage" || exit 1
"$PY" -m pytest -q -p no:cacheprovider -o console_output_style=classic --durations=5 "$@" . &
pytest_pid=$!
wait "$pytest_pid"
