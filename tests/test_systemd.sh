#!/bin/sh
# test_systemd.sh - the units in systemd/:
#  1. `systemd-analyze verify` passes on perflow-worker@.service and
#     perflow-workers.target (ExecStart pointed at the built worker: verify checks
#     that the binary exists);
#  2. `systemd-analyze security` of the worker unit is printed, and its exposure
#     must be 2.5 or lower (--threshold=25: the tool's scale is tenths);
#  3. where this machine allows it (root, unshare, systemd installed: these
#     machines do not boot systemd as PID 1), a systemd is started as PID 1 of a
#     private pid + mount + cgroup namespace, and the real unit, hardening and
#     all, runs perflow-worker@0 on the CPU against a dev broker, Redis and a model
#     server started here: READY, watchdog pings, a job sent with perflow submit
#     done inside the sandbox, and a clean drain on stop. Only test-specific
#     settings come from a drop-in (the binary's path, the environment file, no
#     default dependencies on the host's boot units, a short watchdog, log files).
# Every wait is bounded; everything started is stopped on exit.
ROOT=${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
BIN=$(dirname "${PERFLOW:-$ROOT/bin/perflow}")
case "$BIN" in /*) ;; *) BIN=$ROOT/$BIN ;; esac
PY=$ROOT/.venv/bin/python
PATH=$PATH:/usr/sbin:/sbin
mkdir -p "$ROOT/build"
# Not under /tmp: the unit's PrivateTmp= would hide it from the worker.
work=$(mktemp -d "$ROOT/build/test-systemd.XXXXXX")
chmod 755 "$work"
pids=""
ns_unshare=""
ns_pid=""
had_init_scope=0
[ -d /sys/fs/cgroup/systemd/init.scope ] && had_init_scope=1
failed=0
fail() {
    echo "FAIL: $*"
    failed=1
}
ns() { nsenter -t "$ns_pid" -m -p "$@"; }
stop() {
    kill -TERM "$1" 2> /dev/null || return 0
    i=0
    while kill -0 "$1" 2> /dev/null && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL "$1" 2> /dev/null
    wait "$1" 2> /dev/null
}
cleanup() {
    if [ -n "$ns_pid" ] && kill -0 "$ns_pid" 2> /dev/null; then
        timeout 30 nsenter -t "$ns_pid" -m -p systemctl exit > /dev/null 2>&1
        i=0
        while kill -0 "$ns_pid" 2> /dev/null && [ $i -lt 200 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        kill -KILL "$ns_pid" 2> /dev/null
    fi
    [ -n "$ns_unshare" ] && stop "$ns_unshare"
    # the empty cgroup the namespace's systemd made for itself in the host's hierarchy
    [ "$had_init_scope" -eq 0 ] && rmdir /sys/fs/cgroup/systemd/init.scope 2> /dev/null
    for p in $pids; do stop "$p"; done
    [ -n "$KEEP" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v systemd-analyze > /dev/null || {
    echo "FAIL: systemd-analyze is not installed: run 'sh ops/install-deps.sh'"
    exit 1
}

# ---- 1. verify -----------------------------------------------------------------
mkdir -p "$work/units"
cp "$ROOT/systemd/perflow-worker@.service" "$ROOT/systemd/perflow-workers.target" "$work/units/"
sed -i "s|^ExecStart=.*|ExecStart=$BIN/perflow-worker|" "$work/units/perflow-worker@.service"
if out=$(systemd-analyze verify --man=no "$work/units/perflow-worker@.service" "$work/units/perflow-workers.target" \
    2>&1) && [ -z "$out" ]; then
    echo "ok: systemd-analyze verify perflow-worker@.service perflow-workers.target"
else
    fail "systemd-analyze verify: $out"
fi

# ---- 1b. what the unit must carry (issue 19) -------------------------------------
# every credential ops/README.md lists, no core dumps, per-instance limits
creds=$(sed -n '/^Credentials can also come as files/,/^sets)/p' "$ROOT/ops/README.md" | grep -o '`[a-z_.]*`' | tr -d '`')
[ -n "$creds" ] || fail "no credential list found in ops/README.md"
for c in $creds; do
    grep -qx "LoadCredential=$c" "$ROOT/systemd/perflow-worker@.service" || fail "the unit does not load credential $c"
done
for line in LimitCORE=0 'MemoryMax=[0-9]*[KMGT]' 'TasksMax=[0-9]*'; do
    grep -qx "$line" "$ROOT/systemd/perflow-worker@.service" || fail "the unit lacks $line"
done
grep -q '^#*Environment=PERFLOW_METRICS_LISTEN=0\.0\.0\.0' "$ROOT/systemd/perflow-worker@.service" &&
    fail "the unit's metrics example binds every interface"
[ "$failed" -eq 0 ] && echo "ok: the unit loads every listed credential ($(echo $creds | wc -w)), LimitCORE=0, MemoryMax, TasksMax"

# ---- 2. security ---------------------------------------------------------------
systemd-analyze security --offline=yes --threshold=25 --no-pager "$work/units/perflow-worker@.service" \
    > "$work/security.txt" 2>&1
rc=$?
echo "systemd-analyze security perflow-worker@.service (what is not restricted, and the score):"
grep -E '✗|Overall' "$work/security.txt" | sed 's/  */ /g; s/^/  /'
score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$work/security.txt")
if [ "$rc" -eq 0 ] && [ -n "$score" ]; then
    echo "ok: exposure $score (at most 2.5)"
else
    fail "exposure ${score:-unknown} is over 2.5 (or the analysis failed: $(tail -2 "$work/security.txt"))"
fi

# ---- 3. the unit for real --------------------------------------------------------
why_not=""
[ "$(id -u)" -eq 0 ] || why_not="not root"
command -v unshare > /dev/null && command -v nsenter > /dev/null || why_not="${why_not:+$why_not, }no unshare/nsenter"
[ -x /lib/systemd/systemd ] || why_not="${why_not:+$why_not, }no /lib/systemd/systemd"
[ -x "$PY" ] || why_not="${why_not:+$why_not, }no .venv"
if [ -n "$why_not" ]; then
    echo "SKIP: starting the unit under a real systemd ($why_not)"
    [ "$failed" -eq 0 ] && echo "systemd: 2 checks passed"
    exit "$failed"
fi

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# waits up to $1 seconds for the command after it to succeed
wait_for() {
    secs=$1
    shift
    i=0
    while ! "$@" > /dev/null 2>&1; do
        [ $i -ge $((secs * 5)) ] && return 1
        sleep 0.2
        i=$((i + 1))
    done
}
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
pids="$pids $!"
HTTP_PORT=$(free_port)
"$PY" -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$ROOT/tests/data/models" > "$work/http.log" 2>&1 &
pids="$pids $!"
"$BIN/perflow-dev-broker" --topic sd.jobs --topic sd.status --topic sd.dlq < /dev/null > "$work/broker.out" 2>&1 &
pids="$pids $!"
wait_for 30 grep -q '^bootstrap.servers=' "$work/broker.out" || fail "the dev broker printed no address"
wait_for 30 sh -c "[ \"\$(redis-cli -p $REDIS_PORT ping)\" = PONG ]" || fail "redis-server did not answer"
wait_for 30 curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/tiny-sd15/model_index.json" || fail "no model server"
BROKERS=$(sed -n 's/^bootstrap.servers=//p' "$work/broker.out")
METRICS_PORT=$(free_port)
mkdir -p "$work/out"
chmod 777 "$work/out"
printf 'not-a-real-token\n' > "$work/hub_token"
cat > "$work/worker.env" << EOF
PERFLOW_BROKERS=$BROKERS
PERFLOW_JOBS_TOPICS=sd.jobs
PERFLOW_STATUS_TOPIC=sd.status
PERFLOW_DEAD_LETTER_TOPIC=sd.dlq
PERFLOW_REDIS=127.0.0.1:$REDIS_PORT
PERFLOW_CACHE_HOST_ID=systemd-test
PERFLOW_FETCH_ALLOW_HTTP=1
PERFLOW_FETCH_ALLOW_PRIVATE=1
PERFLOW_HUB_TOKEN_HOSTS=hub.example.com
PERFLOW_FILE_OUTPUT_ROOT=$work/out
PERFLOW_METRICS_LISTEN=127.0.0.1:$METRICS_PORT
PERFLOW_THREADS=1
EOF
# The namespace's unit folder: the units as shipped, a test drop-in, and the
# host's boot units kept out (network-online.target masked).
mkdir -p "$work/ns/perflow-worker@.service.d" "$work/ns/perflow-workers.target.d"
cp "$ROOT/systemd/perflow-worker@.service" "$ROOT/systemd/perflow-workers.target" "$work/ns/"
cat > "$work/ns/perflow-worker@.service.d/test.conf" << EOF
[Unit]
DefaultDependencies=no
[Service]
ExecStart=
ExecStart=$BIN/perflow-worker
EnvironmentFile=
EnvironmentFile=$work/worker.env
Environment=PERFLOW_DEVICE=cpu
WatchdogSec=3
StandardOutput=file:$work/worker.out
StandardError=file:$work/worker.log
LoadCredential=hub_token:$work/hub_token
BindReadOnlyPaths=$ROOT $BIN
BindPaths=$work/out
EOF
printf '[Unit]\nDefaultDependencies=no\nWants=perflow-worker@0.service\n' > "$work/ns/perflow-workers.target.d/test.conf"
cat > "$work/init.sh" << EOF
#!/bin/sh
# PID 1 of the namespace: a private /run with the units, then systemd. The
# namespace's mounts are private to it (unshare --propagation private); made
# shared among themselves again, as systemd expects of / (it mounts each unit's
# credentials in a helper's namespace and relies on that propagating back).
mount --make-rshared / || exit 1
mount -t tmpfs tmpfs /run || exit 1
mkdir -p /run/systemd/system
cp -r "$work/ns/." /run/systemd/system/
ln -s /dev/null /run/systemd/system/network-online.target
export container=perflow-test
exec /lib/systemd/systemd --system --unit=perflow-workers.target --show-status=no --log-level=notice
EOF
unshare --pid --fork --kill-child=SIGKILL --mount --mount-proc --cgroup --propagation private sh "$work/init.sh" \
    > "$work/systemd.log" 2>&1 &
ns_unshare=$!
wait_for 20 sh -c "ps -o pid= --ppid $ns_unshare | grep -q ." || fail "no systemd in the namespace"
ns_pid=$(ps -o pid= --ppid "$ns_unshare" | tr -d ' ' | head -1)
unit=perflow-worker@0.service
prop() { ns systemctl show -p "$1" --value "$unit" 2> /dev/null; }
if [ -z "$ns_pid" ] || ! wait_for 30 ns systemctl --no-pager list-units; then
    fail "systemd did not start in the namespace: $(cat "$work/systemd.log")"
fi
if [ "$failed" -eq 0 ]; then
    if wait_for 60 sh -c "[ \"\$(nsenter -t $ns_pid -m -p systemctl is-active $unit)\" = active ]"; then
        echo "ok: $unit active (Type=notify: READY=1 received); status: $(prop StatusText)"
    else
        fail "$unit did not become active: $(ns systemctl --no-pager status $unit 2>&1 | head -20); log: $(tail -5 "$work/worker.log")"
    fi
fi
if [ "$failed" -eq 0 ]; then
    w1=$(prop WatchdogTimestampMonotonic)
    sleep 4
    w2=$(prop WatchdogTimestampMonotonic)
    if [ -n "$w1" ] && [ "$w1" != 0 ] && [ "$w2" != "$w1" ]; then
        echo "ok: watchdog pings (WatchdogSec=3: last ping at $w1, then $w2 us)"
    else
        fail "no watchdog ping seen ($w1, $w2)"
    fi
    wait_for 20 curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" && echo "ok: /readyz from inside the sandbox" ||
        fail "/readyz did not answer 200"
    if "$BIN/perflow" submit --brokers "$BROKERS" --topic sd.jobs --status-topic sd.status --no-redis \
        --model-url "http://127.0.0.1:$HTTP_PORT/tiny-sd15" --prompt "a photo of a cat" --width 64 --height 64 \
        --output "file://$work/out/{job_id}-{index}.png" --wait --timeout 120 > "$work/submit.log" 2>&1 &&
        ls "$work/out/"*.png > /dev/null 2>&1; then
        echo "ok: a job ran in the hardened unit (DynamicUser, ProtectSystem=strict, seccomp, ...)"
    else
        fail "the job did not succeed in the unit: $(tail -3 "$work/submit.log"); worker: $(tail -3 "$work/worker.log")"
    fi
    ns systemctl stop "$unit"
    if [ "$(prop ActiveState)" = inactive ] && [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] &&
        grep -q '"event":"worker.stopped"' "$work/worker.log"; then
        echo "ok: systemctl stop drained the worker (exit 0)"
    else
        fail "stop: $(prop ActiveState) $(prop Result) $(prop ExecMainStatus)"
    fi
fi
[ "$failed" -eq 0 ] && echo "systemd: 6 checks passed"
exit "$failed"
