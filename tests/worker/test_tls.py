"""test_tls.py - the worker over secured connections, against real servers on
127.0.0.1 with certificates the tests make: Kafka over mutual TLS (the dev
broker behind socat; the client key's password from $CREDENTIALS_DIRECTORY),
Redis over TLS with an ACL user and password (redis-server 7), the model and S3
over HTTPS (nginx; moto behind it) with the test CA as the CA bundle. Then the
wrong certificate and the wrong password of each: a clear error, the worker
does not start (Kafka, Redis) or fails the job naming the problem (the model
host, S3), and no secret value appears in any log line, status or dead letter.

The dev broker (librdkafka's mock cluster) answers no SASL handshake: what is
tested here is that the SASL password is read from its credential file, never
logged, and that a broker that does not complete SASL stops the worker at start
with the reason. SCRAM users, refused passwords and ACLs against Apache Kafka
are in test_sasl.py."""
import hashlib
import json
import os
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer

import servers
from conftest import BUCKET, TlsBroker, Worker, is_terminal, tls_broker_unavailable

REASON = tls_broker_unavailable()
TOPICS = ["tls.jobs:1", "tls.status:1", "tls.dlq:1"]


@pytest.fixture(scope="module")
def kafka_tls(work, certs):
    if REASON:
        pytest.skip("Kafka over TLS: " + REASON)
    b = TlsBroker(work, certs, TOPICS)
    yield b
    b.stop()


def kafka_client_conf(certs, bootstrap):
    return {"bootstrap.servers": bootstrap, "security.protocol": "ssl", "ssl.ca.location": certs.path("ca.pem"),
            "ssl.certificate.location": certs.path("client.pem"), "ssl.key.location": certs.path("client.key"),
            "ssl.key.password": certs.key_password, "log_level": 0}


class Secured:
    """One worker's secured settings, credentials folder and log; the secrets it was given."""

    def __init__(self, tmp, certs, kafka, redis, nginx, moto, **over):
        self.dir = str(tmp)
        self.cred = os.path.join(self.dir, "credentials")
        os.makedirs(self.cred)
        self.hub_token = "hUbToKeN-" + uuid.uuid4().hex
        files = {"kafka.ssl.key.password": certs.key_password, "redis_password": redis.password,
                 "aws_access_key_id": moto.key_id, "aws_secret_access_key": moto.secret,
                 "hub_token": self.hub_token}
        files.update(over.pop("files", {}))
        for name, value in files.items():
            if value is not None:
                with open(os.path.join(self.cred, name), "w") as f:
                    f.write(value + "\n")
        self.secrets = [certs.key_password, redis.password, moto.secret, self.hub_token]
        self.secrets += [v for v in over.pop("more_secrets", [])]
        self.env = servers.clean_env()
        self.env.update({
            "CREDENTIALS_DIRECTORY": self.cred,
            "PERFLOW_HUB_TOKEN_HOSTS": "127.0.0.1",
            "PERFLOW_S3_OUTPUT_PREFIXES": BUCKET,
            "PERFLOW_BROKERS": kafka.bootstrap if kafka else "127.0.0.1:9",
            "PERFLOW_KAFKA_SECURITY_PROTOCOL": "ssl",
            "PERFLOW_KAFKA_SSL_CA_LOCATION": certs.path("ca.pem"),
            "PERFLOW_KAFKA_SSL_CERTIFICATE_LOCATION": certs.path("client.pem"),
            "PERFLOW_KAFKA_SSL_KEY_LOCATION": certs.path("client.key"),
            "PERFLOW_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "PERFLOW_GROUP": "tls-" + uuid.uuid4().hex[:6],
            "PERFLOW_JOBS_TOPICS": "tls.jobs", "PERFLOW_STATUS_TOPIC": "tls.status",
            "PERFLOW_DEAD_LETTER_TOPIC": "tls.dlq",
            "PERFLOW_REDIS": "rediss://perflow@127.0.0.1:%d" % redis.port,
            "PERFLOW_REDIS_CA": certs.path("ca.pem"),
            "PERFLOW_CA_BUNDLE": certs.path("ca.pem"),
            "PERFLOW_CACHE_DIR": os.path.join(self.dir, "cache"),
            "PERFLOW_CACHE_HOST_ID": "tls-" + uuid.uuid4().hex[:6],
            "PERFLOW_FETCH_ALLOW_PRIVATE": "1",  # loopback; plain http stays refused
            "PERFLOW_FETCH_RETRY_BASE_MS": "50", "PERFLOW_RETRY_BASE_MS": "50", "PERFLOW_RETRY_MAX_MS": "200",
            "PERFLOW_DEVICE": "cpu", "PERFLOW_THREADS": "1", "OMP_NUM_THREADS": "1",
            "PERFLOW_WORK_DIR": self.dir, "PERFLOW_LEASE_TTL_MS": "3000",
            "AWS_ENDPOINT_URL_S3": "https://127.0.0.1:%d" % nginx.s3port, "AWS_REGION": "us-east-1",
            "PERFLOW_S3_RETRY_BASE_MS": "50",
        })
        self.env.update({k: str(v) for k, v in over.items()})
        self.nginx = nginx
        self.logs = []

    def start(self, name="worker"):
        log = os.path.join(self.dir, name + ".log")
        self.logs.append(log)
        return Worker(self.env, log)

    def model(self):
        return "https://127.0.0.1:%d/tiny-sd15" % self.nginx.port

    def delta(self):
        return "https://127.0.0.1:%d/tiny-sd15-delta/unet/diffusion_pytorch_model.safetensors" % self.nginx.port

    def job(self, job_id, **over):
        j = {"job_id": job_id, "model": {"base": {"url": self.model()}, "delta": {"url": self.delta()}},
             "prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 4, "seed": 7,
             "output": {"url": "s3://%s/{job_id}/{index}.png" % BUCKET}}
        j.update(over)
        return j

    def assert_no_secret(self, *texts):
        """No secret in any log of this worker nor in the texts given."""
        blobs = list(texts)
        for log in self.logs:
            with open(log, errors="replace") as f:
                blobs.append(f.read())
        for s in self.secrets:
            for b in blobs:
                assert s not in b, "a secret value reached the output"


def expect_refused(sec, needle, timeout=40):
    """Starts a worker that must stop at once with an error containing needle."""
    w = sec.start("refused-%d" % len(sec.logs))
    try:
        rc = w.wait(timeout)
    except subprocess.TimeoutExpired:
        w.stop()
        raise AssertionError("the worker did not stop: %s" % open(w.log_path).read()[-2000:])
    text = open(w.log_path).read()
    assert rc != 0, text[-2000:]
    assert needle in text, text[-3000:]
    assert not [e for e in w.lines() if e["event"] in ("kafka.assigned", "job.accepted")]
    sec.assert_no_secret()
    return text


def test_secured_worker_end_to_end(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto):
    sec = Secured(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto)
    w = sec.start()
    conf = kafka_client_conf(certs, kafka_tls.bootstrap)
    events = Consumer(dict(conf, **{"group.id": "tls-reader-" + uuid.uuid4().hex, "auto.offset.reset": "earliest"}))
    events.subscribe(["tls.status", "tls.dlq"])
    statuses, dead = [], []
    try:
        w.wait_event("kafka.assigned", timeout=60)
        p = Producer(conf)
        job_id = "tls-" + uuid.uuid4().hex[:8]
        p.produce("tls.jobs", key=job_id, value=json.dumps(sec.job(job_id)))
        p.produce("tls.jobs", key=job_id + "-bad", value=b"{not json")  # a rejection through TLS too
        assert p.flush(20) == 0
        end = time.time() + 90
        while time.time() < end and not [s for s in statuses if s["job_id"] == job_id and is_terminal(s)]:
            m = events.poll(0.5)
            if m is not None and not m.error():
                (statuses if m.topic() == "tls.status" else dead).append(
                    json.loads(m.value()) if m.topic() == "tls.status" else dict(m.headers() or []))
        done = [s for s in statuses if s["job_id"] == job_id and is_terminal(s)]
        assert done and done[0]["state"] == "succeeded", statuses
        data = moto.client.get_object(Bucket=BUCKET, Key="%s/0.png" % job_id)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == done[0]["outputs"][0]["sha256"]
        # the model came over https (nginx logged it), S3 through the TLS proxy
        assert "tiny-sd15/model_index.json" in open(os.path.join(nginx_https.dir, "access.log")).read()
        # Redis got the records over TLS, as the ACL user
        r = subprocess.run(["redis-cli", "--tls", "--cacert", certs.path("ca.pem"), "-p", str(redis_tls.port),
                            "--user", "perflow", "--pass", redis_tls.password, "--no-auth-warning", "EXISTS",
                            "pf:job:%s:result" % job_id], capture_output=True, text=True, timeout=10)
        assert r.stdout.strip() == "1", r.stdout + r.stderr
    finally:
        w.stop()
        events.close()
    sec.assert_no_secret(json.dumps(statuses), json.dumps([{k: v.decode() for k, v in d.items()} for d in dead]))


def test_redis_wrong_password_refused_at_start(tmp_path, certs, redis_tls, nginx_https, moto):
    sec = Secured(tmp_path, certs, None, redis_tls, nginx_https, moto, files={"redis_password": "not-the-password"},
                  more_secrets=["not-the-password"])
    expect_refused(sec, "AUTH as user 'perflow' refused")


def test_redis_missing_password_refused_at_start(tmp_path, certs, redis_tls, nginx_https, moto):
    sec = Secured(tmp_path, certs, None, redis_tls, nginx_https, moto, files={"redis_password": None},
                  PERFLOW_REDIS="rediss://127.0.0.1:%d" % redis_tls.port)
    expect_refused(sec, "wants a password")


def test_redis_wrong_certificate_refused_at_start(tmp_path, certs, redis_tls, nginx_https, moto):
    sec = Secured(tmp_path, certs, None, redis_tls, nginx_https, moto, PERFLOW_REDIS_CA=certs.path("wrong-ca.pem"))
    expect_refused(sec, "certificate was refused")


def test_redis_password_in_address_refused(tmp_path, certs, redis_tls, nginx_https, moto):
    sec = Secured(tmp_path, certs, None, redis_tls, nginx_https, moto,
                  PERFLOW_REDIS="rediss://perflow:%s@127.0.0.1:%d" % (redis_tls.password, redis_tls.port))
    expect_refused(sec, "does not belong in the address")


def test_kafka_wrong_ca_refused_at_start(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto):
    sec = Secured(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto,
                  PERFLOW_KAFKA_SSL_CA_LOCATION=certs.path("wrong-ca.pem"))
    text = expect_refused(sec, "worker.start_failed")
    assert "certificate verify failed" in text or "SSL" in text


def test_kafka_client_certificate_required(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto):
    sec = Secured(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto,
                  PERFLOW_KAFKA_SSL_CERTIFICATE_LOCATION="", PERFLOW_KAFKA_SSL_KEY_LOCATION="")
    sec.env.pop("PERFLOW_KAFKA_SSL_CERTIFICATE_LOCATION")
    sec.env.pop("PERFLOW_KAFKA_SSL_KEY_LOCATION")
    expect_refused(sec, "worker.start_failed")


def test_kafka_wrong_key_password_refused_at_start(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto):
    sec = Secured(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto,
                  files={"kafka.ssl.key.password": "wrong-key-password"}, more_secrets=["wrong-key-password"])
    expect_refused(sec, "ssl.key")


def test_kafka_sasl_password_from_credentials_never_logged(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto):
    pw = "sAsLpW-" + uuid.uuid4().hex
    sec = Secured(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto, files={"kafka.sasl.password": pw},
                  more_secrets=[pw], PERFLOW_KAFKA_SECURITY_PROTOCOL="sasl_ssl", PERFLOW_KAFKA_SASL_MECHANISM="PLAIN",
                  PERFLOW_KAFKA_SASL_USERNAME="perflow", PERFLOW_LOG_LEVEL="debug")
    expect_refused(sec, "SASL")


def test_https_wrong_ca_fails_the_job_naming_it(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto, nginx):
    """Model host and S3 with a CA bundle that does not sign them: each job
    fails with the TLS reason (the worker itself runs on)."""
    sec = Secured(tmp_path, certs, kafka_tls, redis_tls, nginx_https, moto, PERFLOW_CA_BUNDLE=certs.path("wrong-ca.pem"),
                  PERFLOW_FETCH_ALLOW_HTTP="1", PERFLOW_MAX_ATTEMPTS="1", PERFLOW_RETRIES="1",
                  PERFLOW_S3_ATTEMPTS="1", PERFLOW_FETCH_ATTEMPTS="1")
    w = sec.start()
    conf = kafka_client_conf(certs, kafka_tls.bootstrap)
    events = Consumer(dict(conf, **{"group.id": "tls-reader-" + uuid.uuid4().hex, "auto.offset.reset": "earliest"}))
    events.subscribe(["tls.status"])
    try:
        w.wait_event("kafka.assigned", timeout=60)
        p = Producer(conf)
        a, b = "tlsca-model-" + uuid.uuid4().hex[:6], "tlsca-s3-" + uuid.uuid4().hex[:6]
        p.produce("tls.jobs", key=a, value=json.dumps(sec.job(a)))
        plain = "http://127.0.0.1:%d" % nginx.port  # the model over http, so that the upload is what fails
        p.produce("tls.jobs", key=b, value=json.dumps(sec.job(b, model={
            "base": {"url": plain + "/tiny-sd15"},
            "delta": {"url": plain + "/tiny-sd15-delta/unet/diffusion_pytorch_model.safetensors"}})))
        assert p.flush(20) == 0
        ends, statuses = {}, []
        end = time.time() + 90
        while time.time() < end and len(ends) < 2:
            m = events.poll(0.5)
            if m is not None and not m.error():
                s = json.loads(m.value())
                statuses.append(s)
                if s["job_id"] in (a, b) and is_terminal(s):
                    ends[s["job_id"]] = s
        assert ends[a]["state"] == "failed" and ends[a]["error"]["code"] == "download", ends[a]
        assert "certificate" in ends[a]["error"]["message"].lower(), ends[a]
        assert ends[b]["state"] == "failed" and ends[b]["error"]["code"] == "upload", ends[b]
        assert "certificate" in ends[b]["error"]["message"].lower(), ends[b]
        assert w.proc.poll() is None
    finally:
        w.stop()
        events.close()
    sec.assert_no_secret(json.dumps(statuses))
