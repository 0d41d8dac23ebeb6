#!/bin/sh
# test_worker.sh - bin/perflow-worker end to end (tests/worker/, pytest) against real
# processes on 127.0.0.1 that the tests start and stop: redis-server, nginx serving the
# tiny model, moto's S3 behind tests/storage/fault_server.py, and bin/perflow-dev-broker
# (librdkafka's mock cluster). Jobs and statuses go through confluent-kafka, outputs
# are read with boto3. Needs .venv with tests/requirements.txt (ops/install-deps.sh).
# pytest's own summary line is printed; its exit status is this script's.
ROOT=${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
PY=$ROOT/.venv/bin/python
if ! "$PY" -c "import pytest, boto3, moto, confluent_kafka, jsonschema" 2>/dev/null; then
    echo "FAIL: $PY lacks pytest, boto3, moto, confluent_kafka or jsonschema: run 'sh ops/install-deps.sh'"
    exit 1
fi
for tool in redis-server redis-cli nginx; do
    command -v $tool > /dev/null || [ -x /usr/sbin/$tool ] || { echo "FAIL: $tool is not installed: run 'sh ops/install-deps.sh'"; exit 1; }
done
export PATH="$PATH:/usr/sbin" PYTHONDONTWRITEBYTECODE=1
export PERFLOW="${PERFLOW:-$ROOT/bin/perflow}"
case "$PERFLOW" in /*) ;; *) PERFLOW="$ROOT/$PERFLOW" ;; esac
for b in perflow-worker perflow-dev-broker; do
    [ -x "$(dirname "$PERFLOW")/$b" ] || { echo "FAIL: $(dirname "$PERFLOW")/$b is not built (make worker)"; exit 1; }
done
echo "worker tests with $(dirname "$PERFLOW")/perflow-worker"
# Servers and workers register their pids here; whatever a crashed or interrupted
# run left running is stopped on the way out.
PERFLOW_TEST_PIDDIR=$(mktemp -d)
export PERFLOW_TEST_PIDDIR
cleanup() {
    for f in "$PERFLOW_TEST_PIDDIR"/*; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    done
    rm -rf "$PERFLOW_TEST_PIDDIR"
}
pytest_pid=
trap cleanup EXIT
trap '[ -n "$pytest_pid" ] && kill -TERM "$pytest_pid" 2>/dev/null; exit 130' INT TERM
cd "$ROOT/tests/worker" || exit 1
"$PY" -m pytest -q -p no:cacheprovider -o console_output_style=classic --durations=5 "$@" . &
pytest_pid=$!
wait "$pytest_pid"
