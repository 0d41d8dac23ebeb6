#!/bin/sh
# worker-demo.sh - the worker end to end on this machine, no cluster needed: the
# development broker (bin/perflow-dev-broker, librdkafka's mock cluster: development
# only), a private redis-server, the tiny model served over http from
# tests/data/models, one bin/perflow-worker writing PNGs under build/worker-demo/, and
# one job produced with the test tools' Kafka client (.venv, ops/install-deps.sh).
# Prints the job's status events, then stops everything it started.
set -e
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
OUT=$(pwd)/build/worker-demo
mkdir -p "$OUT"
PY=.venv/bin/python
port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=""
trap 'for p in $pids; do kill $p 2>/dev/null; done' EXIT
REDIS_PORT=$(port)
HTTP_PORT=$(port)
PATH="$PATH:/usr/sbin" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no > "$OUT/redis.log" 2>&1 &
pids="$pids $!"
$PY -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory tests/data/models > "$OUT/http.log" 2>&1 &
pids="$pids $!"
mkfifo "$OUT/broker.in" 2>/dev/null || true
"$BIN/perflow-dev-broker" --topic demo.jobs --topic demo.status --topic demo.dlq < "$OUT/broker.in" > "$OUT/broker.out" 2>&1 &
pids="$pids $!"
exec 3> "$OUT/broker.in" # keeps the broker's stdin open
sleep 1
BROKERS=$(sed -n 's/^bootstrap.servers=//p' "$OUT/broker.out")
echo "dev broker at $BROKERS, redis at 127.0.0.1:$REDIS_PORT"
PERFLOW_BROKERS=$BROKERS PERFLOW_JOBS_TOPICS=demo.jobs PERFLOW_STATUS_TOPIC=demo.status \
PERFLOW_DEAD_LETTER_TOPIC=demo.dlq PERFLOW_REDIS=127.0.0.1:$REDIS_PORT PERFLOW_CACHE_DIR="$OUT/cache" \
PERFLOW_FETCH_ALLOW_HTTP=1 PERFLOW_FETCH_ALLOW_PRIVATE=1 PERFLOW_FILE_OUTPUT_ROOT="$OUT" PERFLOW_WORK_DIR="$OUT" \
    "$BIN/perflow-worker" --once 2> "$OUT/worker.log" &
pids="$pids $!"
$PY - "$BROKERS" "$HTTP_PORT" "$OUT" <<'PYEOF'
import json, sys, time
from confluent_kafka import Consumer, Producer
brokers, port, out = sys.argv[1:]
base = "http://127.0.0.1:%s/" % port
job = {"job_id": "demo-1", "model": {"base": {"url": base + "tiny-sd15"},
       "delta": {"url": base + "tiny-sd15-delta/unet/diffusion_pytorch_model.safetensors"}},
       "prompt": "a photo of a cat", "width": 128, "height": 128, "steps": 4, "seed": 0, "num_images": 2,
       "output": {"url": "file://%s/{job_id}-{index}.png" % out}}
p = Producer({"bootstrap.servers": brokers})
p.produce("demo.jobs", key=job["job_id"], value=json.dumps(job))
p.flush()
print("$ produced", json.dumps(job)[:120] + "...")
c = Consumer({"bootstrap.servers": brokers, "group.id": "demo-reader", "auto.offset.reset": "earliest"})
c.subscribe(["demo.status"])
end = time.time() + 120
while time.time() < end:
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    ev = json.loads(m.value())
    print("status:", ev["state"], {k: v for k, v in ev.items() if k in ("step", "steps", "outputs", "error")} or "")
    if ev["state"] in ("succeeded", "rejected", "cancelled") or (ev["state"] == "failed" and not ev["error"]["retryable"]):
        break
c.close()
PYEOF
echo "worker log: $OUT/worker.log"
