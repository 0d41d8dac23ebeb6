#!/bin/sh
# test_storage.sh - the storage layer against real servers on 127.0.0.1, started
# and stopped by the tests themselves (tests/storage/, pytest): redis-server and
# nginx from Debian, moto's S3 server (signature checking on) with boto3 as the
# independent client, and tests/storage/fault_server.py for cut transfers, 500s,
# slow links, tokens and redirects. Needs .venv with tests/requirements.txt
# (ops/install-deps.sh installs it). pytest's own summary line is printed; its
# exit status is this script's.
. "$(dirname "$0")/pytest_run.sh"
pytest_need pytest boto3 moto -- redis-server nginx
# Hostile inputs (URLs, model indexes, Redis contents, server answers) run under
# the ASan + UBSan build when there is one, so a memory error or leak fails a test.
if [ -n "$PERFLOW_ASAN" ] && [ -x "$PERFLOW_ASAN" ]; then
    PERFLOW=$PERFLOW_ASAN
    export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
fi
pytest_perflow
echo "storage tests with $PERFLOW"
pytest_run storage TERM "$@"
