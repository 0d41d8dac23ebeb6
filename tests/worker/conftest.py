"""conftest.py - fixtures of the worker tests: real processes on 127.0.0.1 (redis-server,
Apache Kafka 4.x (ops/kafka.sh: one broker for the session; the dev broker, librdkafka's
mock cluster, only where a test injects protocol errors only it can inject), nginx serving
the tiny model, its delta and its ControlNet, moto's S3 behind the fault proxy), the
worker started as bin/perflow-worker, and independent clients: confluent-kafka to
produce jobs and read statuses and dead letters, boto3 to read outputs, redis-cli.

Each test gets topics, a consumer group and job ids of its own, so the session's
servers are shared. The servers come from tests/storage/servers.py."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("PERFLOW_ROOT") or os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.append(os.path.join(ROOT, "tests", "storage"))
import servers  # noqa: E402
from servers import fail_puts, redis, s3proxy  # noqa: E402,F401 (fixtures; test_worker.py imports fail_puts from here)

BIN = os.path.dirname(os.environ.get("PERFLOW") or os.path.join(ROOT, "bin", "perflow"))
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
WORKER = os.path.join(BIN, "perflow-worker")
BROKER = os.path.join(BIN, "perflow-dev-broker")
BUCKET = "renders"
SECRET_MARK = None  # the S3 secret, set by the moto fixture; no log line may contain it
TERMINAL = ("succeeded", "rejected", "cancelled")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def is_terminal(ev):
    return ev["state"] in TERMINAL or (ev["state"] == "failed" and not ev["error"]["retryable"])


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return str(tmp_path_factory.mktemp("worker"))


def redis_cli(redis, *args):
    return servers.redis_cli(redis, *args).strip()


def start_model_server(work):
    """nginx serving the tiny models (tests/data/models: SD-1.5 with its delta and ControlNets, a
    single-file checkpoint, LoRAs, SD-2 sharded, SDXL and its ControlNet) and control images over http."""
    www = os.path.join(work, "www")
    os.makedirs(www)
    models = os.path.join(ROOT, "tests", "data", "models")
    for name in ("tiny-sd15", "tiny-sd15-delta", "tiny-sd15-controlnet", "tiny-sd15-controlnet-b", "single-file",
                 "loras", "tiny-sd2-sharded", "tiny-sdxl", "tiny-sdxl-controlnet", "tiny-sd15-ip-adapter",
                 "tiny-sdxl-ip-adapter"):
        os.symlink(os.path.join(models, name), os.path.join(www, name))
    images = os.path.join(www, "images")  # control images (the refine goldens') and a file that is not one
    os.makedirs(images)
    goldens = os.path.join(ROOT, "tests", "data", "goldens", "tiny-sd15")
    os.symlink(os.path.join(goldens, "refine-control-1-control-0.png"), os.path.join(images, "control.png"))
    os.symlink(os.path.join(goldens, "refine-control-2-control-1.png"), os.path.join(images, "control-b.png"))
    for k in (0, 1):  # image prompts (the IP-Adapter goldens')
        os.symlink(os.path.join(goldens, "ip-adapter-plain-and-plus-image-%d.png" % k),
                   os.path.join(images, "ip-%d.png" % k))
    os.symlink(os.path.join(ROOT, "tests", "data", "images", "hostile", "not_a_png.png"),
               os.path.join(images, "not-an-image.png"))
    return servers.start_nginx(work, www)


@pytest.fixture(scope="session")
def nginx(work):
    s = start_model_server(work)
    yield s
    s.stop()


class Broker:
    """perflow-dev-broker: the bootstrap address it prints, and its fault-injection commands
    (only the mock can fail chosen requests: test_broker_errors_recovered uses it)."""

    def __init__(self, work):
        self.proc = subprocess.Popen([BROKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(work, "broker.log"), "w"), text=True,
                                     start_new_session=True)
        piddir = os.environ.get("PERFLOW_TEST_PIDDIR")
        if piddir:
            with open(os.path.join(piddir, "broker.%d" % self.proc.pid), "w") as f:
                f.write(str(self.proc.pid))
        line = self.proc.stdout.readline().strip()
        assert line.startswith("bootstrap.servers="), line
        self.bootstrap = line.split("=", 1)[1]

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer == "ok", "%s: %s" % (line, answer)

    def topic(self, name, partitions):
        self.command("topic %s %d" % (name, partitions))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def dev_broker(work):
    b = Broker(work)
    yield b
    b.stop()


KAFKA_SH = os.path.join(ROOT, "ops", "kafka.sh")


class Kafka:
    """Apache Kafka 4.x, one KRaft node started by ops/kafka.sh in DIR: bootstrap (PLAINTEXT,
    whose anonymous user is a super user: topics, SCRAM users and ACLs are made through it)
    and, with certificates, sasl_bootstrap (SASL_SSL, SCRAM-SHA-512, the standard authorizer).
    Topics are never created automatically: topic() makes them. kill() and start() are the
    chaos run's broker crash and restart (same ports, same log)."""

    def __init__(self, d, certs=None):
        from confluent_kafka.admin import AdminClient
        self.dir = d
        self.tls = ["--tls-cert", certs.path("server.pem"), "--tls-key", certs.path("server.key")] if certs else []
        self.start()
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def start(self):
        r = subprocess.run(["sh", KAFKA_SH, "start", "--dir", self.dir, "--owner", str(os.getpid()), *self.tls],
                           capture_output=True, text=True, timeout=200)
        if r.returncode:
            raise RuntimeError("ops/kafka.sh start failed: %s" % (r.stderr.strip() or r.stdout.strip()))
        found = dict(line.split("=", 1) for line in r.stdout.split() if "=" in line)
        self.bootstrap = found["bootstrap.servers"]
        self.sasl_bootstrap = found.get("sasl_ssl.servers")
        with open(os.path.join(self.dir, "broker.pid")) as f:
            self.pid = int(f.read())
        piddir = os.environ.get("PERFLOW_TEST_PIDDIR")
        if piddir:
            with open(os.path.join(piddir, "kafka.%d" % self.pid), "w") as f:
                f.write(str(self.pid))

    def _forget_pid(self):
        piddir = os.environ.get("PERFLOW_TEST_PIDDIR")
        if piddir and os.path.exists(os.path.join(piddir, "kafka.%d" % self.pid)):
            os.unlink(os.path.join(piddir, "kafka.%d" % self.pid))

    def topic(self, name, partitions):
        from confluent_kafka.admin import NewTopic
        for f in self.admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30).values():
            f.result(60)
        self.wait_leaders(name, partitions)

    def add_partitions(self, name, total):
        from confluent_kafka.admin import NewPartitions
        for f in self.admin.create_partitions([NewPartitions(name, total)], operation_timeout=30).values():
            f.result(60)
        self.wait_leaders(name, total)

    def wait_leaders(self, name, partitions, timeout=30):
        """Until the broker serves every partition of the topic (a topic made by the
        controller is led a moment later)."""
        end = time.time() + timeout
        while time.time() < end:
            t = self.admin.list_topics(name, timeout=10).topics.get(name)
            if t and not t.error and len(t.partitions) == partitions and all(
                    p.leader >= 0 for p in t.partitions.values()):
                return
            time.sleep(0.1)
        raise AssertionError("topic %s: %d partitions not led within %ds" % (name, partitions, timeout))

    def kill(self):
        subprocess.run(["sh", KAFKA_SH, "kill", "--dir", self.dir], check=True, timeout=60)
        self._forget_pid()

    def stop(self):
        subprocess.run(["sh", KAFKA_SH, "stop", "--dir", self.dir], timeout=60)
        self._forget_pid()


def kafka_unavailable():
    """Why Apache Kafka cannot run here ("" when it can)."""
    import shutil
    if not shutil.which("java"):
        return "java (OpenJDK 17) is not installed: run 'sh ops/install-deps.sh'"
    if not os.path.isdir(os.path.join(ROOT, ".kafka", "libs")):
        return "Apache Kafka is not installed in .kafka/libs: run 'sh ops/install-deps.sh'"
    return ""


@pytest.fixture(scope="session")
def broker(work, certs):
    """The session's Apache Kafka broker, with its SASL_SSL listener."""
    why = kafka_unavailable()
    if why:
        pytest.fail(why)
    b = Kafka(os.path.join(work, "kafka"), certs)
    yield b
    b.stop()


def start_s3(work):
    """moto's S3 server checking signatures, with a user whose keys the worker gets and the bucket."""
    global SECRET_MARK
    s = servers.start_s3(work, "worker", BUCKET)
    SECRET_MARK = s.secret
    return s


@pytest.fixture(scope="session")
def moto(work):
    s = start_s3(work)
    yield s
    s.stop()


class Events:
    """Reads the status and dead-letter topics of one test from the start."""

    def __init__(self, bootstrap, status_topic, dlq_topic):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-" + uuid.uuid4().hex,
                           "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0})
        self.c.subscribe([status_topic, dlq_topic])
        self.status_topic = status_topic
        self.statuses = []  # in arrival order
        self.dead = []      # (value bytes, headers dict)

    def poll(self, seconds=0.2):
        end = time.time() + seconds
        while True:
            m = self.c.poll(max(0.0, min(0.2, end - time.time())))
            if m is not None and not m.error():
                if m.topic() == self.status_topic:
                    ev = json.loads(m.value())
                    assert m.key().decode() == ev["job_id"], "status not keyed by job_id"
                    self.statuses.append(ev)
                else:
                    self.dead.append((m.value(), {k: v.decode() for k, v in (m.headers() or [])}))
            if time.time() >= end:
                return

    def of(self, job_id, state=None):
        return [e for e in self.statuses if e["job_id"] == job_id and (state is None or e["state"] == state)]

    def terminal(self, job_id):
        return [e for e in self.of(job_id) if is_terminal(e)]

    def wait(self, pred, timeout=60, what="condition"):
        end = time.time() + timeout
        while time.time() < end:
            self.poll(0.2)
            if pred():
                return
        raise AssertionError("timed out after %ds waiting for %s; statuses: %s; dead letters: %d" % (
            timeout, what, [(e["job_id"], e["state"]) for e in self.statuses][-30:], len(self.dead)))

    def wait_terminal(self, job_ids, timeout=60):
        self.wait(lambda: all(self.terminal(j) for j in job_ids), timeout, "terminal statuses of %s" % job_ids)

    def close(self):
        self.c.close()


class Worker:
    """A bin/perflow-worker process with its JSON log lines."""

    def __init__(self, env, log, args=()):
        self.log_path = log
        self.proc = subprocess.Popen([WORKER, *args], env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "w"), start_new_session=True)
        piddir = os.environ.get("PERFLOW_TEST_PIDDIR")
        self.pidfile = None
        if piddir:
            self.pidfile = os.path.join(piddir, "worker.%d" % self.proc.pid)
            with open(self.pidfile, "w") as f:
                f.write(str(self.proc.pid))

    def lines(self):
        out = []
        with open(self.log_path) as f:
            for raw in f:
                out.append(json.loads(raw))  # every line is one JSON object
        return out

    def events(self, name, job_id=None):
        return [e for e in self.lines() if e["event"] == name and (job_id is None or e.get("job_id") == job_id)]

    def wait_event(self, name, timeout=30, job_id=None):
        end = time.time() + timeout
        while time.time() < end:
            ev = self.events(name, job_id)
            if ev:
                return ev
            assert self.proc.poll() is None, "worker exited (%s) waiting for %s" % (self.proc.returncode, name)
            time.sleep(0.1)
        raise AssertionError("worker logged no %s within %ds" % (name, timeout))

    def assignment(self):
        """The worker's current partitions, from its last assignment log line."""
        a = [e for e in self.lines() if e["event"] in ("kafka.assigned", "kafka.revoked")]
        return set(a[-1]["assignment"]) if a else set()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pidfile and os.path.exists(self.pidfile):
            os.unlink(self.pidfile)


class Rig:
    """One test's topics, group, clients and workers."""

    def __init__(self, name, work, broker, redis, nginx, moto, s3proxy, partitions=2, topics=1):
        self.name = name
        self.broker, self.redis, self.nginx, self.moto, self.s3proxy = broker, redis, nginx, moto, s3proxy
        tag = name + "-" + uuid.uuid4().hex[:6]
        self.jobs_topics = ["jobs-%s-%d" % (tag, i) for i in range(topics)]
        self.status_topic, self.dlq_topic = "status-" + tag, "dlq-" + tag
        for t in self.jobs_topics:
            broker.topic(t, partitions)
        broker.topic(self.status_topic, 2)
        broker.topic(self.dlq_topic, 1)
        self.group = "g-" + tag
        self.dir = os.path.join(work, tag)
        os.makedirs(self.dir)
        self.producer = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 0})
        self.events = Events(broker.bootstrap, self.status_topic, self.dlq_topic)
        self.workers = []
        self.model = "http://127.0.0.1:%d/tiny-sd15" % nginx.port
        self.delta = "http://127.0.0.1:%d/tiny-sd15-delta/unet/diffusion_pytorch_model.safetensors" % nginx.port
        self.controlnet = "http://127.0.0.1:%d/tiny-sd15-controlnet" % nginx.port

    def env(self, **extra):
        e = servers.clean_env()
        e.update({
            "PERFLOW_BROKERS": self.broker.bootstrap,
            "PERFLOW_GROUP": self.group,
            "PERFLOW_JOBS_TOPICS": ",".join(self.jobs_topics),
            "PERFLOW_STATUS_TOPIC": self.status_topic,
            "PERFLOW_DEAD_LETTER_TOPIC": self.dlq_topic,
            "PERFLOW_REDIS": "127.0.0.1:%d" % self.redis.port,
            "PERFLOW_CACHE_DIR": os.path.join(os.path.dirname(self.dir), "cache"),  # shared: one download per run
            "PERFLOW_CACHE_HOST_ID": "worker-tests",
            "PERFLOW_FETCH_ALLOW_HTTP": "1",     # the documented development switches: nginx is
            "PERFLOW_FETCH_ALLOW_PRIVATE": "1",  # plain http on a loopback address
            "PERFLOW_FETCH_RETRY_BASE_MS": "50",
            "PERFLOW_DEVICE": "cpu",
            "PERFLOW_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "PERFLOW_WORK_DIR": self.dir,
            "PERFLOW_RETRY_BASE_MS": "50",
            "PERFLOW_RETRY_MAX_MS": "200",
            "PERFLOW_LEASE_TTL_MS": "3000",
            "PERFLOW_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "AWS_ACCESS_KEY_ID": self.moto.key_id,
            "AWS_SECRET_ACCESS_KEY": self.moto.secret,
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:%d" % self.s3proxy.port,
            "AWS_REGION": "us-east-1",
            "PERFLOW_S3_RETRY_BASE_MS": "50",
            "PERFLOW_S3_OUTPUT_PREFIXES": BUCKET,
        })
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def start_worker(self, args=(), **extra):
        w = Worker(self.env(**extra), os.path.join(self.dir, "worker-%d.log" % len(self.workers)), args)
        self.workers.append(w)
        return w

    def job(self, job_id, **over):
        j = {"job_id": job_id, "model": {"base": {"url": self.model}, "delta": {"url": self.delta}},
             "prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 4, "seed": 7,
             "output": {"url": "s3://%s/{job_id}/{index}-{seed}.png" % BUCKET}}
        j.update(over)
        return j

    def refine_job(self, job_id, refine=None, **over):
        """A job refined with the tiny ControlNet: 64 px base images refined at 128 px."""
        r = {"controlnet": {"url": self.controlnet}, "size": 128}
        r.update(refine or {})
        return self.job(job_id, refine=r, **over)

    def produce(self, value, key=None, topic=None):
        if isinstance(value, dict):
            key = key or value.get("job_id")
            value = json.dumps(value)
        self.producer.produce(topic or self.jobs_topics[0], key=key, value=value)
        self.producer.flush(10)

    def committed(self, topic=None, partitions=2):
        c = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": self.group, "log_level": 0})
        try:
            tps = c.committed([TopicPartition(topic or self.jobs_topics[0], p) for p in range(partitions)], timeout=10)
            return {tp.partition: tp.offset for tp in tps}
        finally:
            c.close()

    def object(self, key):
        return self.moto.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def close(self):
        for w in self.workers:
            w.stop()
        self.events.close()
        # No line of any worker's log may hold the S3 secret.
        for w in self.workers:
            with open(w.log_path) as f:
                assert SECRET_MARK not in f.read(), "a secret reached the worker's log"


@pytest.fixture
def rig(request, work, broker, redis, nginx, moto, s3proxy):
    made = []

    def make(on=None, **kw):
        """A rig on the session's Kafka, or on the broker given (the dev broker)."""
        r = Rig(re.sub(r"[^A-Za-z0-9.-]", "-", request.node.name[5:40]), work, on or broker, redis, nginx, moto, s3proxy, **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


# ---- secured connections (test_tls.py) ------------------------------------------
# Certificates the tests make with the openssl CLI: a CA, a server certificate for
# 127.0.0.1 and localhost, a client certificate whose key is encrypted, and an
# unrelated CA for the wrong-certificate cases. The servers: redis-server with TLS
# and an ACL user, nginx with TLS (the models, and a reverse proxy to moto for S3),
# and the dev broker behind a TLS proxy (socat) in a network namespace of its own.

class Certs:
    def __init__(self, d):
        self.dir = d
        self.key_password = "kEyPaSs-" + uuid.uuid4().hex[:12]

        def run(*argv):
            subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)
        for ca in ("ca", "wrong-ca"):
            run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=perflow test %s" % ca,
                "-keyout", self.path(ca + ".key"), "-out", self.path(ca + ".pem"))
        ext = self.path("server.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", self.path("server.key"),
            "-out", self.path("server.csr"))
        run("x509", "-req", "-in", self.path("server.csr"), "-CA", self.path("ca.pem"), "-CAkey", self.path("ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", self.path("server.pem"))
        run("req", "-newkey", "rsa:2048", "-subj", "/CN=perflow-worker", "-passout", "pass:" + self.key_password,
            "-keyout", self.path("client.key"), "-out", self.path("client.csr"))
        run("x509", "-req", "-in", self.path("client.csr"), "-CA", self.path("ca.pem"), "-CAkey", self.path("ca.key"),
            "-CAcreateserial", "-days", "2", "-out", self.path("client.pem"))

    def path(self, name):
        return os.path.join(self.dir, name)


@pytest.fixture(scope="session")
def certs(work):
    d = os.path.join(work, "certs")
    os.makedirs(d)
    return Certs(d)


@pytest.fixture(scope="session")
def redis_tls(work, certs):
    """redis-server on TLS only, default user off, user "perflow" with a password."""
    d = os.path.join(work, "redis-tls")
    os.makedirs(d)
    port = servers.free_port()
    password = "rEdIsPw-" + uuid.uuid4().hex[:16]
    s = servers.Server("redis-tls", [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "",
        "--appendonly", "no", "--tls-cert-file", certs.path("server.pem"), "--tls-key-file", certs.path("server.key"),
        "--tls-ca-cert-file", certs.path("ca.pem"), "--tls-auth-clients", "no",
        "--user", "default", "off", "--user", "perflow", "on", ">" + password, "~*", "&*", "+@all"],
        port, log=os.path.join(d, "log"))
    s.password = password
    yield s
    s.stop()


NGINX_HTTPS_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    client_max_body_size 64m;
    default_type application/octet-stream;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    server {{
        listen 127.0.0.1:{port} ssl;
        root {www};
    }}
    server {{
        listen 127.0.0.1:{s3port} ssl;
        location / {{
            proxy_pass http://127.0.0.1:{moto};
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_http_version 1.1;
        }}
    }}
}}
"""


@pytest.fixture(scope="session")
def nginx_https(work, certs, moto):
    """nginx on TLS: the tiny model (port) and S3 in front of moto (s3port; the
    Host header goes through unchanged, as the signature covers it)."""
    d = os.path.join(work, "nginx-https")
    www = os.path.join(d, "www")
    os.makedirs(os.path.join(d, "tmp"))
    os.makedirs(www)
    for name in ("tiny-sd15", "tiny-sd15-delta"):
        os.symlink(os.path.join(ROOT, "tests", "data", "models", name), os.path.join(www, name))
    port, s3port = servers.free_port(), servers.free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_HTTPS_CONF.format(d=d, www=www, port=port, s3port=s3port, moto=moto.port,
                                        cert=certs.path("server.pem"), key=certs.path("server.key")))
    s = servers.Server("nginx-https", ["nginx", "-c", conf, "-p", d], port, log=os.path.join(d, "stdout"))
    servers.wait_port(s3port, s.proc, "nginx-https (S3)")
    s.s3port, s.dir = s3port, d
    yield s
    s.stop()


class TlsBroker:
    """The dev broker reached only through TLS. Kafka clients connect to the
    addresses the broker advertises (127.0.0.1:PORT of its own listener), so a
    proxy in front of it must answer on that very address: the broker runs in a
    network namespace of its own, whose 127.0.0.1:PORT no one else sees, and on
    the host's 127.0.0.1:PORT socat terminates TLS (mutual: a client certificate
    signed by the test CA is required) and forwards through a unix socket to a
    second socat inside the namespace, which connects to the broker."""

    def __init__(self, work, certs, topics):
        self.procs = []
        d = os.path.join(work, "kafka-tls")
        os.makedirs(d, exist_ok=True)
        sock = os.path.join(d, "broker.sock")
        argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', BROKER]
        for t in topics:
            argv += ["--topic", t]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(d, "broker.log"), "w"), text=True,
                                     start_new_session=True)
        self.procs.append(self.proc)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("bootstrap.servers="):
            self.stop()
            raise RuntimeError("the dev broker did not start in a network namespace: %r" % line)
        self.bootstrap = line.split("=", 1)[1]
        port = int(self.bootstrap.rsplit(":", 1)[1])
        self.spawn(["nsenter", "--net=/proc/%d/ns/net" % self.proc.pid, "socat",
                    "UNIX-LISTEN:%s,fork,unlink-early" % sock, "TCP:127.0.0.1:%d" % port], d, "socat-inner")
        deadline = time.time() + 10
        while not os.path.exists(sock) and time.time() < deadline:
            time.sleep(0.05)
        self.spawn(["socat", "OPENSSL-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,cert=%s,key=%s,cafile=%s,verify=1" % (
            port, certs.path("server.pem"), certs.path("server.key"), certs.path("ca.pem")),
            "UNIX-CONNECT:%s" % sock], d, "socat-tls")
        servers.wait_port(port, self.procs[-1], "socat (TLS in front of the broker)")

    def spawn(self, argv, d, name):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(d, name + ".log"), "w"), start_new_session=True)
        self.procs.append(p)
        piddir = os.environ.get("PERFLOW_TEST_PIDDIR")
        if piddir:
            with open(os.path.join(piddir, "%s.%d" % (name, p.pid)), "w") as f:
                f.write(str(p.pid))

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


def tls_broker_unavailable():
    """Why the TLS broker cannot run here ("" when it can): it needs socat, and
    root to make a network namespace."""
    import shutil
    for tool in ("socat", "unshare", "nsenter", "ip"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            return "%s is not installed (ops/install-deps.sh installs socat)" % tool
    r = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=10)
    if r.returncode:
        return "cannot make a network namespace here: %s" % r.stderr.strip()
    return ""
