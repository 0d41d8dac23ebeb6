#!/bin/sh
# test_chaos.sh - the short form of `make chaos` (ops/chaos.py --short): 40 jobs
# through 3 workers with the dev broker, Redis, moto's S3 and the model server on
# 127.0.0.1, a SIGKILL every 3 s and every other fault once (broker errors, outage
# and leader move, S3 5xx and slow PUTs, a Redis restart, cut model downloads, a
# full cache disk where a tmpfs can be mounted). Fails on any lost job or output
# whose bytes differ between two computations, and above 0.05 duplicate terminal
# events per job (the README's goal; at 40 jobs that is 2 duplicates). Then the
# same against Apache Kafka (--kafka: the broker SIGKILLed and restarted, a worker
# SIGSTOPped past its session, partitions added; about a minute more).
ROOT=${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
PY=$ROOT/.venv/bin/python
BINDIR=$(dirname "${PERFLOW:-$ROOT/bin/perflow}")
case "$BINDIR" in /*) ;; *) BINDIR=$ROOT/$BINDIR ;; esac
"$PY" -c "import confluent_kafka, boto3, moto" 2>/dev/null || { echo "FAIL: $PY lacks the test tools: run 'sh ops/install-deps.sh'"; exit 1; }
export PATH="$PATH:/usr/sbin"
# Bounded: the harness gives up by itself (--timeout); this is the backstop.
timeout -s TERM 900 "$PY" "$ROOT/ops/chaos.py" --short --bin "$BINDIR" --timeout 600 --settle 120 --max-extra 0.05 ||
    exit 1
timeout -s TERM 900 "$PY" "$ROOT/ops/chaos.py" --short --kafka --bin "$BINDIR" --timeout 600 --settle 120 \
    --max-extra 0.05
