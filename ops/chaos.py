#!/usr/bin/env python3
"""chaos.py - the worker fleet under the failures operators see, with figures.

Runs N jobs (default 500) through W perflow-workers (default 3) against real
processes on 127.0.0.1 that it starts and stops itself: the dev broker
(librdkafka's mock cluster, 3 brokers), a redis-server with an append-only file,
moto's S3 behind tests/storage/fault_server.py (5xx and slow PUTs), and the tiny
model served by fault_server.py (connections cut mid-download). The model cache
is a small tmpfs the harness mounts, where the machine allows, so that it can run
out of space. While the jobs go through it injects, on a schedule it prints
first: a SIGKILL of a random worker every --kill-every seconds (then a restart),
SIGTERM drains, broker request errors, a broker outage, partition leader moves,
S3 5xx and slow responses, a Redis restart, cut model downloads after the cache
was emptied, and a full cache disk.

Then it prints one table: jobs, succeeded, rejected, dead-lettered, lost,
duplicate terminal events, jobs computed more than once, outputs whose bytes
differ between two computations (every upload is kept: the bucket is
versioned), p50/p99 latency from send to the first terminal status, kills and
faults. Exit status 1 on any lost job or differing output (and, with
--max-extra X, when duplicate terminal events per job exceed X), 2 when the
servers could not be started.

    .venv/bin/python ops/chaos.py                    # make chaos: 500 jobs, 3 workers
    .venv/bin/python ops/chaos.py --short            # the short form make test runs
    .venv/bin/python ops/chaos.py --jobs 200 --kill-every 3 --keep   # keep logs
    .venv/bin/python ops/chaos.py --kafka            # against Apache Kafka (ops/kafka.sh)

With --kafka the broker is Apache Kafka 4.x, one KRaft node that ops/kafka.sh starts,
and the faults only the mock can inject (request errors, leader moves, one of three
brokers down) give way to those only a real broker has: the broker SIGKILLed and
restarted (every cycle, so at least 3 times in a default run), a worker SIGSTOPped past
its session timeout (its partitions move; when it resumes it must not post a second
terminal event for a job another worker finished) and partitions added to the jobs
topic mid-run.

Each job is a small text-to-image job (64 x 64, 4 steps) with its own prompt
and seed; 2 % are invalid (expected: rejected) and 1 % pin a wrong digest for
their delta weights (expected: failed, dead-lettered)."""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "storage"))
import servers  # noqa: E402

from confluent_kafka import Consumer, Producer  # noqa: E402

BUCKET = "chaos"
TERMINAL = ("succeeded", "rejected", "cancelled")


def is_terminal(ev):
    return ev["state"] in TERMINAL or (ev["state"] == "failed" and not ev.get("error", {}).get("retryable"))


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


class Redis:
    """redis-server with an append-only file, so that a restart keeps the records (as production does)."""

    def __init__(self, work):
        self.dir = os.path.join(work, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.port = servers.free_port()
        self.server = None
        self.start()

    def start(self):
        self.server = servers.Server("redis", [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec"], self.port, log=os.path.join(self.dir, "log"))

    def restart(self, down_s):
        self.server.stop()  # SIGTERM: Redis writes its append-only file and exits
        time.sleep(down_s)
        self.start()

    def stop(self):
        self.server.stop()

    def keys(self):
        out = subprocess.run(["redis-cli", "-p", str(self.port), "DBSIZE"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        return int(out or 0)


class Broker:
    """perflow-dev-broker with its fault-injection commands on stdin."""

    def __init__(self, binary, work, nbrokers, topics):
        argv = [binary, "--brokers", str(nbrokers)] + sum((["--topic", t] for t in topics), [])
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(work, "broker.log"), "w"), text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("bootstrap.servers="):
            raise RuntimeError("the dev broker did not start: %r" % line)
        self.bootstrap = line.split("=", 1)[1]

    def command(self, line):
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError("broker command %r: %s" % (line, answer))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Kafka:
    """Apache Kafka 4.x by ops/kafka.sh in work/kafka: the topics made through the admin
    client, and the crash (SIGKILL, then a start on the same ports and log)."""

    def __init__(self, work, topics):
        from confluent_kafka.admin import AdminClient, NewTopic
        self.dir = os.path.join(work, "kafka")
        self.lock = threading.Lock()
        self.start()
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        for f in self.admin.create_topics([NewTopic(t, n, 1) for t, n in topics], operation_timeout=30).values():
            f.result(60)

    def start(self):
        r = subprocess.run(["sh", os.path.join(ROOT, "ops", "kafka.sh"), "start", "--dir", self.dir,
                            "--owner", str(os.getpid())], capture_output=True, text=True, timeout=200)
        if r.returncode:
            raise RuntimeError("ops/kafka.sh start: %s" % r.stderr.strip())
        self.bootstrap = r.stdout.split("bootstrap.servers=", 1)[1].split()[0]

    def crash(self, down_s):
        with self.lock:
            subprocess.run(["sh", os.path.join(ROOT, "ops", "kafka.sh"), "kill", "--dir", self.dir], check=True,
                           timeout=60)
            time.sleep(down_s)
            self.start()

    def add_partitions(self, topic, total):
        from confluent_kafka.admin import NewPartitions
        for f in self.admin.create_partitions([NewPartitions(topic, total)], operation_timeout=30).values():
            f.result(60)

    def stop(self):
        subprocess.run(["sh", os.path.join(ROOT, "ops", "kafka.sh"), "stop", "--dir", self.dir], timeout=60)


class Fleet:
    """W worker slots; each slot's processes log to worker-<slot>-<generation>.log."""

    def __init__(self, binary, work, env, n, static):
        self.binary, self.work, self.env, self.static = binary, work, env, static
        self.procs = [None] * n
        self.gen = [0] * n
        self.logs = []
        self.stopped = False
        self.lock = threading.Lock()
        for i in range(n):
            self.start(i)

    def start(self, i):
        with self.lock:
            if self.stopped:  # a drain that ends after the run must not start another
                return
            if self.procs[i] is not None and self.procs[i].poll() is None:
                return  # a kill and a drain of the same slot: one restart is enough
            self.gen[i] += 1
            log = os.path.join(self.work, "worker-%d-%d.log" % (i, self.gen[i]))
            self.logs.append(log)
            # Static membership, as the systemd unit sets it (<host>-gpuN): a
            # restarted worker takes its slot's partitions back at once instead
            # of a rebalance that waits out the dead member's session.
            env = dict(self.env, PERFLOW_WORKER_ID="chaos-w%d-%d" % (i, self.gen[i]))
            if self.static:
                env["PERFLOW_INSTANCE_ID"] = "chaos-w%d" % i
            self.procs[i] = subprocess.Popen([self.binary], env=env, stdout=subprocess.DEVNULL,
                                             stderr=open(log, "w"), start_new_session=True)

    def kill(self, i):
        with self.lock:
            p = self.procs[i]
        p.kill()
        p.wait(10)
        self.start(i)

    def pause(self, i, seconds):
        """SIGSTOP for seconds (past the session timeout: the group moves its partitions), then SIGCONT."""
        with self.lock:
            p = self.procs[i]
        p.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        p.send_signal(signal.SIGCONT)

    def drain(self, i, timeout):
        """SIGTERM, wait for the clean exit (bounded), start a new one. Returns the exit status."""
        with self.lock:
            p = self.procs[i]
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            rc = "killed after %ds" % timeout
        self.start(i)
        return rc

    def stop(self):
        with self.lock:
            self.stopped = True
        for p in self.procs:
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)

    def log_events(self):
        """Every JSON line of every worker process (a killed process may leave a half line)."""
        out = []
        for path in self.logs:
            with open(path, errors="replace") as f:
                for raw in f:
                    try:
                        out.append(json.loads(raw))
                    except ValueError:
                        pass
        return out


class Events:
    """Reads the status and dead-letter topics from the start, on a thread of its own."""

    def __init__(self, bootstrap, status_topic, dlq_topic):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-reader-%d" % os.getpid(),
                           "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0})
        self.c.subscribe([status_topic, dlq_topic])
        self.status_topic = status_topic
        self.statuses, self.dead = [], []  # (receive time, event) / headers
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            m = self.c.poll(0.2)
            if m is None or m.error():
                continue
            now = time.time()
            with self.lock:
                if m.topic() == self.status_topic:
                    self.statuses.append((now, json.loads(m.value())))
                else:
                    self.dead.append({k: v.decode() for k, v in (m.headers() or [])})

    def terminal_ids(self):
        with self.lock:
            return {ev["job_id"] for _, ev in self.statuses if is_terminal(ev)}

    def stop(self):
        self.running = False
        self.thread.join(10)
        self.c.close()


def post(port, path):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method="POST", data=b"")
    urllib.request.urlopen(req, timeout=5).read()


def try_mount(path, size_mb):
    """A tmpfs of size_mb for the cache, so that it can fill up; (mounted, why not)."""
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % size_mb, "perflow-chaos", path],
                       capture_output=True, text=True, timeout=20)
    if r.returncode == 0:
        return True, ""
    return False, (r.stderr.strip() or "mount failed")


def make_schedule(rng, duration, kill_every, nworkers, partitions, fill_ok, kafka=False, session_ms=3000):
    """[(t, kind, arg)], sorted: the kills, then a cycle of the other faults every 33 s
    (with kafka, the real broker's faults instead of the mock's, and partitions added once)."""
    ev = []
    t = kill_every
    while t < duration:
        ev.append((t, "sigkill", rng.randrange(nworkers)))
        t += kill_every
    if kafka:
        cycle = [
            (4.0, "sigstop", session_ms / 1000.0 * 2 + 1),
            (7.0, "s3_5xx", 4),
            (10.0, "sigterm", None),
            (13.0, "kafka_kill", 2.0),
            (16.0, "model_cut", 2),
            (19.0, "redis_restart", 1.0),
            (22.0, "s3_slow", (5, 1500)),
            (28.0, "cache_full", 4.0),
        ]
        ev.append((duration / 2, "add_partitions", partitions + 2))
    else:
        cycle = [
            (4.0, "broker_errors", "Produce 5 NOT_ENOUGH_REPLICAS"),
            (7.0, "s3_5xx", 4),
            (10.0, "sigterm", None),
            (13.0, "leader_move", None),
            (16.0, "model_cut", 2),
            (19.0, "redis_restart", 1.0),
            (22.0, "s3_slow", (5, 1500)),
            (25.0, "broker_down", (3, 2.0)),
            (28.0, "cache_full", 4.0),
            (31.0, "broker_errors", "OffsetCommit 3 REQUEST_TIMED_OUT"),
            (32.0, "broker_errors", "Fetch 3 NOT_LEADER_FOR_PARTITION"),
        ]
    base = 0.0
    while base < duration:
        for off, kind, arg in cycle:
            if base + off >= duration:
                break
            if kind == "cache_full" and not fill_ok:
                continue
            if kind == "sigterm":
                arg = rng.randrange(nworkers)
            if kind == "sigstop":
                arg = (rng.randrange(nworkers), arg)
            if kind == "leader_move":
                arg = (rng.randrange(partitions), 2 + rng.randrange(2))  # to broker 2 or 3
            if kind == "broker_down":
                arg = (2 + rng.randrange(2), arg[1])
            ev.append((base + off, kind, arg))
        base += 33.0
    return sorted(ev, key=lambda e: e[0])


def describe(kind, arg):
    return {
        "sigkill": lambda: "SIGKILL worker %d, restart it" % arg,
        "sigterm": lambda: "SIGTERM worker %d (drain), restart it" % arg,
        "broker_errors": lambda: "broker: the next %s %s requests fail with %s" % tuple(arg.split(" ")[1::-1] + [
            arg.split(" ")[2]]),
        "leader_move": lambda: "broker: jobs partition %d leader -> broker %d" % arg,
        "model_cut": lambda: "model server: cache emptied, next %d downloads cut halfway" % arg,
        "redis_restart": lambda: "Redis restart (down %.1f s)" % arg,
        "s3_5xx": lambda: "S3: next %d PUTs answer 500" % arg,
        "s3_slow": lambda: "S3: next %d PUTs delayed %d ms" % arg,
        "broker_down": lambda: "broker %d down %.1f s (partition leaders move)" % arg,
        "cache_full": lambda: "cache disk full for %.1f s (cache emptied first)" % arg,
        "kafka_kill": lambda: "Kafka: the broker SIGKILLed, restarted after %.1f s" % arg,
        "sigstop": lambda: "SIGSTOP worker %d for %.1f s (past its session timeout), then SIGCONT" % arg,
        "add_partitions": lambda: "Kafka: the jobs topic grows to %d partitions" % arg,
    }[kind]()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kill-every", type=float, default=3.0, help="seconds between SIGKILLs (0: none)")
    ap.add_argument("--rate", type=float, default=3.0, help="jobs sent per second")
    ap.add_argument("--no-faults", action="store_true", help="kills only (with --kill-every), no other faults")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600, help="give up waiting for the jobs after this")
    ap.add_argument("--settle", type=float, default=180,
                    help="after the schedule, give up when no job ended for this long")
    ap.add_argument("--short", action="store_true", help="make test's form: 40 jobs, 2 workers, every fault once")
    ap.add_argument("--max-extra", type=float, default=None, help="also fail above this many extra terminal events per job")
    ap.add_argument("--session-ms", type=int, default=3000, help="the workers' Kafka session timeout")
    ap.add_argument("--static", type=int, default=0,
                    help="static group membership (1, as the systemd unit sets it); off by default: the dev "
                         "broker's group coordinator asserts when a static member rejoins mid-join under churn")
    ap.add_argument("--kafka", action="store_true",
                    help="Apache Kafka (ops/kafka.sh) instead of the dev broker, with the real broker's faults")
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs) and print its path")
    a = ap.parse_args()
    # SIGTERM (a CI timeout, Ctrl-C's cousin) runs the clean-up below too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    if a.short:
        a.jobs, a.workers, a.rate = 40, 3, 1.2
    rng = random.Random(a.seed)
    binary = os.path.abspath(a.bin)
    for b in ("perflow-worker", "perflow-dev-broker", "perflow"):
        if not os.access(os.path.join(binary, b), os.X_OK):
            print("chaos: %s/%s is missing (make worker)" % (binary, b), file=sys.stderr)
            return 2
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin"
    work = tempfile.mkdtemp(prefix="perflow-chaos-")
    started, fleet, events, broker, redis, moto, s3proxy, models = [], None, None, None, None, None, None, None
    cache = os.path.join(work, "cache")
    mounted, why = try_mount(cache, 48)
    rc = 0
    try:
        # ---- the servers -------------------------------------------------------
        partitions = max(6, a.workers * 2)
        run = "chaos-%d" % os.getpid()
        jobs_topic, status_topic, dlq_topic = "perflow.jobs", "perflow.status", "perflow.jobs.dlq"
        try:
            redis = Redis(work)
            if a.kafka:
                broker = Kafka(work, [(jobs_topic, partitions), (status_topic, 3), (dlq_topic, 1)])
            else:
                broker = Broker(os.path.join(binary, "perflow-dev-broker"), work, 3,
                                ["%s:%d" % (jobs_topic, partitions), "%s:3" % status_topic, dlq_topic])
                # Broker 1 coordinates the group and is spared the outages: the mock
                # cluster's coordinator asserts (and the dev broker dies) when a member
                # whose join is pending joins again after its connection broke.
                broker.command("coordinator chaos 1")
            moto = servers.start_s3(work, "chaos", BUCKET)
            moto.client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
            s3proxy = servers.start_fault_server(work, proxy=moto.endpoint)
            www = os.path.join(work, "www")
            for name in ("tiny-sd15", "tiny-sd15-delta"):
                shutil.copytree(os.path.join(ROOT, "tests", "data", "models", name), os.path.join(www, name))
            models = servers.start_fault_server(work, www=www)
        except Exception as e:  # noqa: BLE001 - say what did not start and stop the rest
            print("chaos: the servers did not start: %s" % e, file=sys.stderr)
            return 2
        model_url = "http://127.0.0.1:%d/files/tiny-sd15" % models.port
        delta_url = "http://127.0.0.1:%d/files/tiny-sd15-delta/unet/diffusion_pytorch_model.safetensors" % models.port
        env = servers.clean_env()
        env.update({
            "PERFLOW_BROKERS": broker.bootstrap, "PERFLOW_GROUP": "chaos", "PERFLOW_JOBS_TOPICS": jobs_topic,
            "PERFLOW_STATUS_TOPIC": status_topic, "PERFLOW_DEAD_LETTER_TOPIC": dlq_topic,
            "PERFLOW_REDIS": "127.0.0.1:%d" % redis.port, "PERFLOW_CACHE_DIR": cache,
            "PERFLOW_CACHE_HOST_ID": "chaos", "PERFLOW_FETCH_ALLOW_HTTP": "1", "PERFLOW_FETCH_ALLOW_PRIVATE": "1",
            "PERFLOW_FETCH_RETRY_BASE_MS": "100", "PERFLOW_DEVICE": "cpu", "PERFLOW_THREADS": "1",
            "OMP_NUM_THREADS": "1", "PERFLOW_WORK_DIR": work, "PERFLOW_RETRY_BASE_MS": "100",
            "PERFLOW_RETRY_MAX_MS": "1000", "PERFLOW_LEASE_TTL_MS": "3000", "PERFLOW_DRAIN_GRACE_S": "20",
            "PERFLOW_KAFKA_SESSION_TIMEOUT_MS": str(a.session_ms),
            "PERFLOW_KAFKA_HEARTBEAT_INTERVAL_MS": str(max(100, a.session_ms // 10)),
            "PERFLOW_KAFKA_RECONNECT_BACKOFF_MAX_MS": "500",
            "AWS_ACCESS_KEY_ID": moto.key_id, "AWS_SECRET_ACCESS_KEY": moto.secret,
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:%d" % s3proxy.port, "AWS_REGION": "us-east-1",
            "PERFLOW_S3_RETRY_BASE_MS": "100", "PERFLOW_S3_OUTPUT_PREFIXES": BUCKET,
        })
        # ---- the jobs and the schedule -----------------------------------------
        jobs, expect = [], {}
        for i in range(a.jobs):
            jid = "%s-%04d" % (run, i)
            j = {"job_id": jid, "model": {"base": {"url": model_url}, "delta": {"url": delta_url}},
                 "prompt": "chaos job %d, a photo of a cat" % i, "width": 64, "height": 64, "steps": 4,
                 "seed": 1000 + i, "output": {"url": "s3://%s/{job_id}/{index}.png" % BUCKET}}
            kind = rng.random()
            if kind < 0.02:
                j["width"] = 60  # invalid: not a multiple of 8
                expect[jid] = "rejected"
            elif kind < 0.03:
                j["model"]["delta"]["sha256"] = "0" * 64  # permanent: digest mismatch
                expect[jid] = "failed"
            else:
                expect[jid] = "succeeded"
            jobs.append(j)
        send_s = a.jobs / a.rate
        schedule = make_schedule(rng, send_s + 10, a.kill_every or 1e9, a.workers, partitions, mounted, a.kafka,
                                 a.session_ms)
        if a.no_faults:
            schedule = [e for e in schedule if e[1] == "sigkill"]
        if a.kill_every <= 0:
            schedule = [e for e in schedule if e[1] != "sigkill"]
        print("chaos: %d jobs (%d expected rejected, %d expected dead-lettered) through %d workers at %.1f jobs/s" % (
            a.jobs, sum(v == "rejected" for v in expect.values()), sum(v == "failed" for v in expect.values()),
            a.workers, a.rate))
        print("chaos: cache on %s" % ("a %d MiB tmpfs" % 48 if mounted else
                                      "the work folder: could not mount a tmpfs (%s): no cache-full fault" % why))
        print("chaos: fault schedule (seconds from the first job):")
        kinds = {}
        for t, kind, arg in schedule:
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind != "sigkill":
                print("  %7.1f  %s" % (t, describe(kind, arg)))
        if kinds.get("sigkill"):
            print("  every %.1f s from %.1f to %.1f: SIGKILL of a random worker (%d kills), restarted at once" % (
                a.kill_every, a.kill_every, schedule[-1][0] if schedule else 0, kinds["sigkill"]))
        sys.stdout.flush()
        # ---- run ----------------------------------------------------------------
        events = Events(broker.bootstrap, status_topic, dlq_topic)
        fleet = Fleet(os.path.join(binary, "perflow-worker"), work, env, a.workers, a.static)
        time.sleep(3)  # let the group form before the first job
        sent = {}
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "log_level": 0})
        t0 = time.time()
        stop_faults = threading.Event()
        fault_log, fault_errors = [], []

        def faults():
            for t, kind, arg in schedule:
                while time.time() < t0 + t:
                    if stop_faults.wait(0.05):
                        return
                try:
                    if kind == "sigkill":
                        fleet.kill(arg)
                    elif kind == "sigterm":
                        threading.Thread(target=fleet.drain, args=(arg, 30), daemon=True).start()
                    elif kind == "broker_errors":
                        broker.command("errors " + arg)
                    elif kind == "leader_move":
                        broker.command("leader %s %d %d" % (jobs_topic, arg[0], arg[1]))
                    elif kind == "model_cut":
                        post(models.port, "/_control/cut_next/%d" % arg)
                        subprocess.run([os.path.join(binary, "perflow"), "cache", "evict", "--to", "0"], env=env,
                                       capture_output=True, timeout=60)
                    elif kind == "redis_restart":
                        redis.restart(arg)
                    elif kind == "s3_5xx":
                        post(s3proxy.port, "/_control/fail_puts/%d" % arg)
                    elif kind == "s3_slow":
                        post(s3proxy.port, "/_control/slow_puts/%d/%d" % arg)
                    elif kind == "kafka_kill":
                        broker.crash(arg)
                    elif kind == "sigstop":
                        threading.Thread(target=fleet.pause, args=arg, daemon=True).start()
                    elif kind == "add_partitions":
                        broker.add_partitions(jobs_topic, arg)
                    elif kind == "broker_down":
                        broker.command("down %d" % arg[0])
                        time.sleep(arg[1])
                        broker.command("up %d" % arg[0])
                    elif kind == "cache_full":
                        subprocess.run([os.path.join(binary, "perflow"), "cache", "evict", "--to", "0"], env=env,
                                       capture_output=True, timeout=60)
                        filler = os.path.join(cache, "chaos-filler")  # zeros until the disk is full
                        subprocess.run(["dd", "if=/dev/zero", "of=" + filler, "bs=1M"], capture_output=True,
                                       timeout=20)
                        time.sleep(arg)
                        os.unlink(filler)
                    fault_log.append((time.time() - t0, kind))
                except Exception as e:  # noqa: BLE001 - a fault that could not be injected is reported
                    fault_errors.append("%s at %.1f s: %s" % (kind, time.time() - t0, e))

        ft = threading.Thread(target=faults, daemon=True)
        ft.start()
        # As a submitter does: a send the broker did not acknowledge (its
        # injected errors outlast the producer's retries) is sent again.
        failed_sends = []

        def delivered(err, msg):
            # No offset is no delivery: the dev broker acknowledges without
            # storing the first batch of a partition retried after an injected
            # error (a bug of librdkafka's mock cluster, not of Kafka).
            if err is not None or msg.offset() is None or msg.offset() < 0:
                failed_sends.append(msg.key().decode())

        by_id = {j["job_id"]: j for j in jobs}
        for i, j in enumerate(jobs):
            while time.time() < t0 + i / a.rate:
                producer.poll(0.01)
            producer.produce(jobs_topic, key=j["job_id"], value=json.dumps(j), on_delivery=delivered)
            producer.poll(0)
            sent[j["job_id"]] = time.time()
        resent, unsent = 0, set()
        for _ in range(10):
            producer.flush(30)
            if not failed_sends:
                break
            again, failed_sends[:] = list(failed_sends), []
            for jid in again:
                resent += 1
                producer.produce(jobs_topic, key=jid, value=json.dumps(by_id[jid]), on_delivery=delivered)
        unsent = set(failed_sends) | set()
        if producer.flush(30):
            unsent |= {"(unacknowledged)"}
        if resent:
            print("chaos: %d job messages were sent again after a failed send" % resent)
        for jid in unsent & set(sent):
            print("chaos: %s could not be sent" % jid)
            del sent[jid]
        sys.stdout.flush()
        # Wait for every job's end: at most --timeout in all, and at most
        # --settle seconds without progress once the schedule is over.
        deadline, last, last_t = t0 + a.timeout, -1, time.time()
        schedule_end = t0 + (schedule[-1][0] if schedule else 0)
        while time.time() < deadline:
            done = len(events.terminal_ids() & set(sent))
            if done == len(sent):
                break
            if done != last:
                last, last_t = done, time.time()
            elif time.time() > max(schedule_end, last_t) + a.settle:
                break
            time.sleep(0.5)
        stop_faults.set()
        ft.join(60)
        # Let late duplicates arrive, then stop the fleet cleanly.
        time.sleep(5)
        elapsed = time.time() - t0
        fleet.stop()
        time.sleep(1)
        events.stop()
        # ---- figures -----------------------------------------------------------
        statuses = events.statuses
        terminal = {}
        for when, ev in statuses:
            if is_terminal(ev):
                terminal.setdefault(ev["job_id"], []).append((when, ev))
        ids = list(sent)
        ended = [j for j in ids if j in terminal]
        lost = [j for j in ids if j not in terminal]
        first_state = {j: terminal[j][0][1]["state"] for j in ended}
        dup = sum(len(terminal[j]) - 1 for j in ended)
        replayed = sum(1 for j in ended for _, ev in terminal[j][1:] if ev.get("replayed"))
        unexpected = [(j, first_state[j], expect[j]) for j in ended if first_state[j] != expect[j]]
        lat = [terminal[j][0][0] - sent[j] for j in ended if first_state[j] == "succeeded"]
        logs = fleet.log_events()
        computed = {}
        for e in logs:
            if e.get("event") == "job.computed" and e.get("job_id") in sent:
                computed[e["job_id"]] = computed.get(e["job_id"], 0) + 1
        twice = sum(1 for n in computed.values() if n > 1)
        # Every upload is a version: a key whose versions differ in content differs between computations.
        versions, differ, mismatch = {}, [], []
        paginator = moto.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=BUCKET):
            for v in page.get("Versions", []):
                versions.setdefault(v["Key"], set()).add(v["ETag"])
        for key, etags in versions.items():
            if len(etags) > 1:
                differ.append(key)
        for j in ended:
            ev = terminal[j][0][1]
            for o in ev.get("outputs", []) if ev["state"] == "succeeded" else []:
                key = o["url"].split("/", 3)[3]
                if key not in versions:
                    mismatch.append(key)
        dead = len(events.dead)
        n_faults = len([f for f in fault_log if f[1] != "sigkill"])
        n_kills = len([f for f in fault_log if f[1] == "sigkill"])
        rows = [
            ("jobs", len(ids)),
            ("succeeded", sum(1 for j in ended if first_state[j] == "succeeded")),
            ("rejected", sum(1 for j in ended if first_state[j] == "rejected")),
            ("failed (final)", sum(1 for j in ended if first_state[j] == "failed")),
            ("dead-lettered (messages)", dead),
            ("lost (no terminal status)", len(lost)),
            ("duplicate terminal events", "%d (%.3f per job; %d marked replayed)" % (dup, dup / max(1, len(ids)),
                                                                                    replayed)),
            ("jobs computed more than once", twice),
            ("outputs whose bytes differ", len(differ)),
            ("outputs missing from S3", len(mismatch)),
            ("latency send -> terminal, p50 / p99", "%.2f s / %.2f s" % (pct(lat, 50), pct(lat, 99))),
            ("SIGKILLs / other faults injected", "%d / %d" % (n_kills, n_faults)),
            ("wall time", "%.0f s" % elapsed),
        ]
        print()
        print("| chaos: %d jobs, %d workers, SIGKILL every %s s | |" % (
            a.jobs, a.workers, ("%g" % a.kill_every) if a.kill_every > 0 else "-"))
        print("|---|---:|")
        for k, v in rows:
            print("| %s | %s |" % (k, v))
        print()
        by_kind = {}
        for _, kind in fault_log:
            by_kind[kind] = by_kind.get(kind, 0) + 1
        print("faults injected: " + ", ".join("%s %d" % kv for kv in sorted(by_kind.items())))
        if fault_errors:
            print("faults that could not be injected: " + "; ".join(fault_errors))
        if unexpected:
            print("jobs that ended otherwise than expected (%d): %s" % (
                len(unexpected), ", ".join("%s %s (expected %s)" % u for u in unexpected[:10])))
        if lost:
            print("lost: " + ", ".join(lost[:20]))
        if differ:
            print("differing outputs: " + ", ".join(differ[:20]))
        if lost or differ or mismatch:
            rc = 1
        if a.max_extra is not None and dup / max(1, len(ids)) > a.max_extra:
            print("chaos: %.3f duplicate terminal events per job is over --max-extra %.3f" % (
                dup / max(1, len(ids)), a.max_extra))
            rc = 1
        print("chaos: %s" % ("ok" if rc == 0 else "FAILED"))
        return rc
    finally:
        for thing in (fleet, events):
            if thing is not None:
                try:
                    thing.stop()
                except Exception:  # noqa: BLE001 - stopping twice is fine
                    pass
        for s in (models, s3proxy, moto, broker, redis):
            if s is not None:
                s.stop()
        if mounted:
            subprocess.run(["umount", "-l", cache], capture_output=True, timeout=20)
        if a.keep:
            print("chaos: logs kept in %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
