#!/bin/sh
# bench_storage.sh - the storage section of `make bench`: downloading a 2 GiB file
# from a local nginx into the model cache (libcurl, SHA-256, fsync, rename), against
# curl on the same file in the same run, and cache-hit open times of a model (the
# tiny SD model with that file as its UNet weights) and of the file itself.
# Starts nginx and redis-server on 127.0.0.1 and stops them on every path; the
# 2 GiB file and the cache live in $B/bench-storage, deleted afterwards.
# Env: B (build dir), PERFLOW (default bin/perflow), BENCH_STORAGE_MB (default 2048),
# BENCH_REPEAT (cache-hit opens, default 50).
set -e
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
B=${B:-build}
PERFLOW=${PERFLOW:-bin/perflow}
MB=${BENCH_STORAGE_MB:-2048}
REPEAT=${BENCH_REPEAT:-50}
export PATH="$PATH:/usr/sbin"
W=$ROOT/$B/bench-storage
rm -rf "$W"
mkdir -p "$W/www" "$W/nginx/tmp" "$W/redis"
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
NP=$(free_port)
RP=$(free_port)

# The model: tiny-sd15 with its UNet weights replaced by MB MiB of random bytes.
cp -r tests/data/models/tiny-sd15 "$W/www/model"
BIG=$W/www/model/unet/diffusion_pytorch_model.safetensors
head -c 64M /dev/urandom > "$W/chunk"
: > "$BIG"
i=0
while [ $i -lt $((MB / 64)) ]; do cat "$W/chunk" >> "$BIG"; i=$((i + 1)); done
rm "$W/chunk"

cat > "$W/nginx/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $W/nginx/tmp/body;
    proxy_temp_path $W/nginx/tmp/proxy;
    fastcgi_temp_path $W/nginx/tmp/fastcgi;
    uwsgi_temp_path $W/nginx/tmp/uwsgi;
    scgi_temp_path $W/nginx/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    server { listen 127.0.0.1:$NP; root $W/www; }
}
CONF
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" &
pids="$pids $!"
redis-server --port "$RP" --bind 127.0.0.1 --dir "$W/redis" --save "" --appendonly no > "$W/redis/log" 2>&1 &
pids="$pids $!"
for port in $NP $RP; do
    n=0
    until python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; do
        n=$((n + 1))
        [ $n -lt 100 ] || { echo "bench_storage: server on port $port did not start"; exit 1; }
        sleep 0.05
    done
done

URL=http://127.0.0.1:$NP/model/unet/diffusion_pytorch_model.safetensors
MODEL=http://127.0.0.1:$NP/model
export PERFLOW_CACHE_DIR="$W/cache" PERFLOW_REDIS="127.0.0.1:$RP" PERFLOW_FETCH_ALLOW_HTTP=1 PERFLOW_FETCH_ALLOW_PRIVATE=1

t0=$(now)
curl -sS -o "$W/curl.out" "$URL"
t1=$(now)
sync "$W/curl.out" # the cache fsyncs before it renames: compare like with like too
t1s=$(now)
rm -f "$W/curl.out"
t2=$(now)
"$PERFLOW" cache fetch "$URL" > /dev/null
t3=$(now)
"$PERFLOW" cache fetch --model "$MODEL" > /dev/null
hits=$("$B/bench/bench_storage_cache" "$W/cache" "127.0.0.1:$RP" "$MODEL" "$URL" "$REPEAT")

python3 - "$MB" "$t0" "$t1" "$t1s" "$t2" "$t3" "$hits" "$REPEAT" <<'PY'
import json, sys
mb, t0, t1, t1s, t2, t3 = int(sys.argv[1]), *map(float, sys.argv[2:7])
h, rep = json.loads(sys.argv[7]), sys.argv[8]
curl, curl_sync, ours = t1 - t0, t1s - t0, t3 - t2
print()
print("%-46s %12s %12s %8s" % ("storage benchmark (perflow / curl)", "curl", "perflow", "ratio"))
print("%-46s %10.2f s %10.2f s %7.2fx" % ("download %d MiB from local nginx" % mb, curl, ours, ours / curl))
print("%-46s %10.2f s %10.2f s %7.2fx" % ("  the same, curl's file fsync'd too", curl_sync, ours, ours / curl_sync))
print("%-46s %6.0f MiB/s %6.0f MiB/s" % ("  throughput (perflow: + SHA-256, fsync)", mb / curl, mb / ours))
print("%-46s %12s %10.3f ms" % ("cache-hit open, model (12 files, median of %s)" % rep, "-", h["model_hit_ms"]))
print("%-46s %12s %10.3f ms" % ("cache-hit open, %d MiB file (median)" % mb, "-", h["file_hit_ms"]))
print("%-46s %12s %10.3f ms" % ("cache open (connect Redis, reconcile)", "-", h["cache_open_ms"]))
PY
