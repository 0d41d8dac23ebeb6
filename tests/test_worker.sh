#!/bin/sh
# test_worker.sh - bin/perflow-worker end to end (tests/worker/, pytest) against real
# processes on 127.0.0.1 that the tests start and stop: redis-server, nginx serving the
# tiny model, moto's S3 behind tests/storage/fault_server.py, Apache Kafka 4.x
# (ops/kafka.sh, one broker for the session), and bin/perflow-dev-broker (librdkafka's
# mock cluster) for the few tests that inject protocol errors. Jobs and statuses go
# through confluent-kafka, outputs are read with boto3. Needs .venv with
# tests/requirements.txt, java and .kafka/libs (ops/install-deps.sh).
# pytest's own summary line is printed; its exit status is this script's.
. "$(dirname "$0")/pytest_run.sh"
pytest_need pytest boto3 moto confluent_kafka jsonschema prometheus_client -- redis-server redis-cli nginx java openssl
[ -d "$ROOT/.kafka/libs" ] || { echo "FAIL: Apache Kafka is not installed in .kafka/libs: run 'sh ops/install-deps.sh'"; exit 1; }
pytest_perflow
for b in perflow-worker perflow-dev-broker; do
    [ -x "$(dirname "$PERFLOW")/$b" ] || { echo "FAIL: $(dirname "$PERFLOW")/$b is not built (make worker)"; exit 1; }
done
echo "worker tests with $(dirname "$PERFLOW")/perflow-worker"
pytest_run worker KILL "$@"
