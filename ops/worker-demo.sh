#!/bin/sh
# worker-demo.sh - the worker end to end on this machine, no cluster needed: the
# development broker (bin/perflow-dev-broker, librdkafka's mock cluster: development
# only), a private redis-server, the tiny model served over http from
# tests/data/models, one bin/perflow-worker with its metrics on, and one refine job
# sent and followed with `perflow submit --wait`; the images land in $OUT/images.
#
# It never hangs: every service is waited for by readiness (the broker's printed
# address and open port, Redis answering PING, the model server answering, the
# worker's /readyz), each wait is bounded (DEMO_WAIT_S, default 60 s; the job
# DEMO_JOB_TIMEOUT_S, default 300 s) and says what did not come up, and everything
# started is stopped on any exit (the worker first, so it leaves the group while the
# broker is there). The pids started are listed in $OUT/pids.
#
# Environment: BIN (default bin), PY (default .venv/bin/python), WORKER_DEMO_OUT (default build/worker-demo),
# DEMO_WAIT_S, DEMO_JOB_TIMEOUT_S.
set -e
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${BIN:-bin}
case "$BIN" in /*) ;; *) BIN=$ROOT/$BIN ;; esac
OUT=${WORKER_DEMO_OUT:-$ROOT/build/worker-demo}
case "$OUT" in /*) ;; *) OUT=$ROOT/$OUT ;; esac
WAIT_S=${DEMO_WAIT_S:-60}
JOB_TIMEOUT_S=${DEMO_JOB_TIMEOUT_S:-300}
PY=${PY:-$ROOT/.venv/bin/python} # any python3: the demo uses its standard library only
M=$ROOT/tests/data/models

say() { echo "demo: $*"; }
die() {
    echo "demo: error: $*" >&2
    exit 1
}
for tool in "$PY" "$BIN/perflow" "$BIN/perflow-worker" "$BIN/perflow-dev-broker"; do
    [ -x "$tool" ] || die "$tool is missing: run 'make demo' (it installs and builds what is needed)"
done
command -v redis-server > /dev/null || PATH=$PATH:/usr/sbin
command -v redis-server > /dev/null || die "redis-server is not installed: run 'sh ops/install-deps.sh'"
command -v curl > /dev/null || die "curl is not installed: run 'sh ops/install-deps.sh'"

rm -rf "$OUT"
mkdir -p "$OUT/images"
: > "$OUT/pids"
pids=""       # every process started, newest first
worker_pid="" # stopped first

# Stops pid (SIGTERM, then SIGKILL after secs seconds).
stop() {
    kill -TERM "$1" 2> /dev/null || return 0
    i=0
    while kill -0 "$1" 2> /dev/null && [ "$i" -lt $(($2 * 10)) ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$1" 2> /dev/null; then
        echo "demo: $1 did not stop within $2 s: killing it" >&2
        kill -KILL "$1" 2> /dev/null || true
    fi
    wait "$1" 2> /dev/null || true
}

cleanup() {
    status=$?
    trap - EXIT INT TERM
    [ -n "$worker_pid" ] && stop "$worker_pid" 20
    for p in $pids; do stop "$p" 5; done
    [ "$status" -eq 0 ] || echo "demo: failed; the logs are in $OUT" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started() { # pid
    pids="$1 $pids"
    echo "$1" >> "$OUT/pids"
}

# Runs the check "$@" every 0.2 s until it succeeds, for at most WAIT_S
# seconds; fails naming what did not come up, with the tail of its log.
# what: a name; pid: the process (its exit ends the wait at once); log: its log.
wait_ready() {
    what=$1 pid=$2 log=$3
    shift 3
    t0=$(date +%s)
    while ! "$@" > /dev/null 2>&1; do
        if ! kill -0 "$pid" 2> /dev/null; then
            tail -5 "$log" >&2 || true
            die "$what exited before it was ready (log: $log)"
        fi
        if [ $(($(date +%s) - t0)) -ge "$WAIT_S" ]; then
            tail -5 "$log" >&2 || true
            die "$what was not ready within $WAIT_S s (log: $log; DEMO_WAIT_S sets the limit)"
        fi
        sleep 0.2
    done
    say "$what ready ($(($(date +%s) - t0)) s)"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_open() { "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$1"; }
redis_pong() { [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2> /dev/null)" = PONG ]; }
broker_address() { grep -q '^bootstrap.servers=' "$OUT/broker.out"; }

REDIS_PORT=$(free_port)
say "starting redis-server on 127.0.0.1:$REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" > "$OUT/redis.log" 2>&1 &
started $!
wait_ready redis-server $! "$OUT/redis.log" redis_pong "$REDIS_PORT"

HTTP_PORT=$(free_port)
say "serving the tiny model over http on 127.0.0.1:$HTTP_PORT"
"$PY" -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$M" > "$OUT/http.log" 2>&1 &
started $!
wait_ready "the model server" $! "$OUT/http.log" \
    curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$HTTP_PORT/tiny-sd15/model_index.json"

say "starting the development broker (librdkafka's mock cluster)"
"$BIN/perflow-dev-broker" --topic demo.jobs:2 --topic demo.status --topic demo.dlq < /dev/null > "$OUT/broker.out" 2>&1 &
started $!
wait_ready "the broker's address" $! "$OUT/broker.out" broker_address
BROKERS=$(sed -n 's/^bootstrap.servers=//p' "$OUT/broker.out" | head -1)
wait_ready "the broker at $BROKERS" $! "$OUT/broker.out" port_open "${BROKERS##*:}"

say "starting perflow-worker (metrics on)"
PERFLOW_BROKERS=$BROKERS PERFLOW_JOBS_TOPICS=demo.jobs PERFLOW_STATUS_TOPIC=demo.status \
PERFLOW_DEAD_LETTER_TOPIC=demo.dlq PERFLOW_REDIS=127.0.0.1:$REDIS_PORT PERFLOW_CACHE_DIR="$OUT/cache" \
PERFLOW_FETCH_ALLOW_HTTP=1 PERFLOW_FETCH_ALLOW_PRIVATE=1 PERFLOW_FILE_OUTPUT_ROOT="$OUT/images" \
PERFLOW_WORK_DIR="$OUT" PERFLOW_METRICS_LISTEN=127.0.0.1:0 \
    "$BIN/perflow-worker" 2> "$OUT/worker.log" &
worker_pid=$!
echo "$worker_pid" >> "$OUT/pids"
metrics_port() { sed -n 's/.*"event":"metrics.listening".*"port":\([0-9]*\).*/\1/p' "$OUT/worker.log" | grep -q .; }
wait_ready "the worker's metrics server" "$worker_pid" "$OUT/worker.log" metrics_port
METRICS=http://127.0.0.1:$(sed -n 's/.*"event":"metrics.listening".*"port":\([0-9]*\).*/\1/p' "$OUT/worker.log")
wait_ready "the worker ($METRICS/readyz)" "$worker_pid" "$OUT/worker.log" curl -sf --max-time 2 "$METRICS/readyz"

say "one refine job: 2 images, 64 px refined to 128 px"
URL=http://127.0.0.1:$HTTP_PORT
set -- "$BIN/perflow" submit --brokers "$BROKERS" --topic demo.jobs --status-topic demo.status \
    --redis "127.0.0.1:$REDIS_PORT" --model-url "$URL/tiny-sd15" \
    --delta-url "$URL/tiny-sd15-delta/unet/diffusion_pytorch_model.safetensors" \
    --prompt "a photo of a cat" --steps 4 --seed 0 --width 64 --height 64 --num-images 2 \
    --refine --controlnet-url "$URL/tiny-sd15-controlnet" --refine-size 128 \
    --output "file://$OUT/images/{job_id}-{index}.png" --manifest "$OUT/manifest.jsonl" \
    --wait --timeout "$JOB_TIMEOUT_S"
echo "\$ perflow submit ... --refine --wait   (the full command is in $OUT/submit.cmd)"
echo "$*" > "$OUT/submit.cmd"
"$@" || die "the job did not succeed (worker log: $OUT/worker.log)"

say "the worker's metrics ($METRICS/metrics), a few of them:"
curl -sf --max-time 5 "$METRICS/metrics" | grep -E '^perflow_(jobs_total|images_total|model_loads_total|ready)[{ ]' | sed 's/^/  /' || true
n=$(ls "$OUT/images" | grep -c '\.png$' || true)
[ "$n" -ge 2 ] || die "expected 2 images in $OUT/images, found $n"
say "worker images: $OUT/images/ ($n PNG files, 128x128; manifest: $OUT/manifest.jsonl)"
