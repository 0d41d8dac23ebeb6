"""test_sasl.py - the worker against Apache Kafka's SASL_SSL listener (the session's broker,
ops/kafka.sh with the test CA's server certificate): SCRAM-SHA-512 users and ACLs made
through the admin client. The worker connects with the password from its credential
file and runs a job; a wrong password is refused at start with a clear error and no
retry storm (the broker logs the attempts); a user lacking READ on the jobs topic or
WRITE on the status topic gets one line naming the topic and the ACL; the password is
in no log line, status or metric.

librdkafka before 2.6.1 (Debian 12 has 2.0.2) fails every SCRAM login to Kafka 4.x
(librdkafka#4895): with such a system library, the worker here runs on the librdkafka
that the confluent-kafka wheel of the test tools bundles (2.16; the same ABI, so
LD_LIBRARY_PATH is enough), and one test checks that the system library's refusal
names the bug."""
import ctypes
import glob
import os
import subprocess
import time
import urllib.request
import uuid

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AclBinding, AdminClient, AclOperation, AclPermissionType, ResourcePatternType, ResourceType,
                                   ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion)

import servers


FIXED_SCRAM = 0x020601ff  # librdkafka 2.6.1


def system_rdkafka_version():
    return ctypes.CDLL("librdkafka.so.1").rd_kafka_version()


@pytest.fixture(scope="session")
def rdkafka(work):
    """The environment that gives the worker a librdkafka that speaks SCRAM to Kafka 4.x:
    none when the system's does, else LD_LIBRARY_PATH to the wheel's."""
    if system_rdkafka_version() >= FIXED_SCRAM:
        return {}
    import confluent_kafka
    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(confluent_kafka.__file__)),
                                  "confluent_kafka.libs", "librdkafka*.so.1"))
    assert libs, "confluent-kafka's wheel bundles no librdkafka (tests/requirements.txt)"
    d = os.path.join(work, "rdkafka")
    os.makedirs(d, exist_ok=True)
    if not os.path.exists(os.path.join(d, "librdkafka.so.1")):
        os.symlink(libs[0], os.path.join(d, "librdkafka.so.1"))
    return {"LD_LIBRARY_PATH": d}


def add_user(broker, certs, name, password):
    """A SCRAM-SHA-512 user, once the broker (not only the controller) knows it."""
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    for f in broker.admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(name, info, password.encode())]).values():
        f.result(30)
    conf = {"bootstrap.servers": broker.sasl_bootstrap, "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": name, "sasl.password": password,
            "ssl.ca.location": certs.path("ca.pem"), "log_level": 0}
    end = time.time() + 30
    while True:
        try:
            AdminClient(conf).list_topics(timeout=5)
            return
        except KafkaException:
            if time.time() > end:
                raise
            time.sleep(0.2)


def allow(broker, user, *grants):
    """grants: (resource type, name, operation)."""
    acls = [AclBinding(rt, name, ResourcePatternType.LITERAL, "User:" + user, "*", op, AclPermissionType.ALLOW)
            for rt, name, op in grants]
    for f in broker.admin.create_acls(acls).values():
        f.result(30)


def grants(r, jobs=True, status=True):
    """The ACLs a worker needs: READ on its jobs topics and its group, WRITE on the
    status and dead-letter topics (WRITE also covers the idempotent producer)."""
    g = [(ResourceType.GROUP, r.group, AclOperation.READ), (ResourceType.TOPIC, r.dlq_topic, AclOperation.WRITE)]
    if jobs:
        g += [(ResourceType.TOPIC, t, AclOperation.READ) for t in r.jobs_topics]
    if status:
        g.append((ResourceType.TOPIC, r.status_topic, AclOperation.WRITE))
    return g


def sasl_worker(r, certs, user, password, tmp, rdkafka, **extra):
    """A worker on the SASL_SSL listener, its password in $CREDENTIALS_DIRECTORY/kafka.sasl.password."""
    cred = os.path.join(str(tmp), "credentials-" + uuid.uuid4().hex[:6])
    os.makedirs(cred)
    with open(os.path.join(cred, "kafka.sasl.password"), "w") as f:
        f.write(password + "\n")
    return r.start_worker(PERFLOW_BROKERS=r.broker.sasl_bootstrap, CREDENTIALS_DIRECTORY=cred,
                          PERFLOW_KAFKA_SECURITY_PROTOCOL="SASL_SSL", PERFLOW_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                          PERFLOW_KAFKA_SASL_USERNAME=user, PERFLOW_KAFKA_SSL_CA_LOCATION=certs.path("ca.pem"),
                          **rdkafka, **extra)


def refused(w, timeout=40):
    """The worker's start_failed line, once it has stopped (exit status 1)."""
    try:
        rc = w.wait(timeout)
    except subprocess.TimeoutExpired:
        w.stop()
        raise AssertionError("the worker did not stop: %s" % open(w.log_path).read()[-2000:])
    assert rc == 1, open(w.log_path).read()[-2000:]
    failed = w.events("worker.start_failed")
    assert len(failed) == 1 and "\n" not in failed[0]["msg"], failed
    assert not [e for e in w.lines() if e["event"] in ("kafka.assigned", "job.accepted")]
    return failed[0]["msg"]


def no_password(w, password):
    with open(w.log_path) as f:
        assert password not in f.read(), "the SASL password reached the worker's log"


def test_sasl_scram_worker_runs_a_job_password_never_shown(rig, broker, certs, tmp_path, rdkafka):
    r = rig()
    user, pw = "pf-ok-" + uuid.uuid4().hex[:6], "sCrAmPw-" + uuid.uuid4().hex
    add_user(broker, certs, user, pw)
    allow(broker, user, *grants(r))
    port = servers.free_port()
    w = sasl_worker(r, certs, user, pw, tmp_path, rdkafka, PERFLOW_METRICS_LISTEN="127.0.0.1:%d" % port,
                    PERFLOW_LOG_LEVEL="debug")
    w.wait_event("kafka.assigned", timeout=60)
    r.produce(r.job("sasl-1"))
    r.events.wait_terminal(["sasl-1"], timeout=90)
    assert [e["state"] for e in r.events.terminal("sasl-1")] == ["succeeded"]
    metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    statuses = "".join(str(e) for e in r.events.statuses)
    assert pw not in metrics and pw not in statuses
    no_password(w, pw)
    assert w.events("worker.started")[0]["brokers"] == broker.sasl_bootstrap


def test_sasl_wrong_password_refused_once(rig, broker, certs, tmp_path, rdkafka):
    r = rig()
    user, pw = "pf-wrong-" + uuid.uuid4().hex[:6], "sCrAmPw-" + uuid.uuid4().hex
    add_user(broker, certs, user, pw)
    allow(broker, user, *grants(r))
    log = os.path.join(broker.dir, "server.log")
    before = sum(1 for line in open(log, errors="replace") if "Failed authentication" in line)
    t = time.time()
    w = sasl_worker(r, certs, user, "not-" + pw, tmp_path, rdkafka)
    msg = refused(w)
    took = time.time() - t
    assert "Authentication failed" in msg or "SASL authentication error" in msg, msg
    assert "kafka.sasl.password" in msg or "SASL" in msg, msg
    no_password(w, "not-" + pw)
    time.sleep(1)
    attempts = sum(1 for line in open(log, errors="replace") if "Failed authentication" in line) - before
    # No retry storm: the worker stops at the first refusal (its two clients may each try once or twice).
    assert 1 <= attempts <= 4, "%d failed authentications in %.1f s" % (attempts, took)
    assert took < 30


@pytest.mark.parametrize("lacking", ["jobs", "status"])
def test_sasl_missing_acl_named(rig, broker, certs, tmp_path, rdkafka, lacking):
    r = rig()
    user, pw = "pf-acl-" + uuid.uuid4().hex[:6], "sCrAmPw-" + uuid.uuid4().hex
    add_user(broker, certs, user, pw)
    allow(broker, user, *grants(r, jobs=lacking != "jobs", status=lacking != "status"))
    w = sasl_worker(r, certs, user, pw, tmp_path, rdkafka)
    msg = refused(w)
    topic, acl = (r.jobs_topics[0], "READ") if lacking == "jobs" else (r.status_topic, "WRITE")
    assert "topic '%s'" % topic in msg and "%s ACL" % acl in msg, msg
    no_password(w, pw)


def test_sasl_system_librdkafka_scram_to_kafka4(rig, broker, certs, tmp_path):
    """The worker on the system's librdkafka with the right password: it runs where that
    library is 2.6.1 or later; before, the refusal names librdkafka's SCRAM bug, so no
    one hunts for a wrong password."""
    r = rig()
    user, pw = "pf-sys-" + uuid.uuid4().hex[:6], "sCrAmPw-" + uuid.uuid4().hex
    add_user(broker, certs, user, pw)
    allow(broker, user, *grants(r))
    w = sasl_worker(r, certs, user, pw, tmp_path, {})
    if system_rdkafka_version() >= FIXED_SCRAM:
        w.wait_event("kafka.assigned", timeout=60)
    else:
        msg = refused(w)
        assert "librdkafka#4895" in msg and "2.6.1" in msg, msg
    no_password(w, pw)


def test_sasl_status_readable_not_writable_named_per_send(rig, broker, certs, tmp_path, rdkafka):
    """A user that may read the status topic (so sees it, and the worker starts) but not
    write it: each failed status send is one line naming the topic and the WRITE ACL,
    retried with backoff (no storm), and the job's offset stays uncommitted."""
    r = rig(partitions=1)
    user, pw = "pf-ro-" + uuid.uuid4().hex[:6], "sCrAmPw-" + uuid.uuid4().hex
    add_user(broker, certs, user, pw)
    allow(broker, user, *grants(r, status=False), (ResourceType.TOPIC, r.status_topic, AclOperation.READ))
    w = sasl_worker(r, certs, user, pw, tmp_path, rdkafka, PERFLOW_RETRY_BASE_MS=200, PERFLOW_RETRY_MAX_MS=2000)
    w.wait_event("kafka.assigned", timeout=60)
    r.produce(r.job("ro-status"))
    failed = w.wait_event("kafka.delivery_failed", timeout=90, job_id="ro-status")
    msg = failed[0]["msg"]
    assert "topic '%s'" % r.status_topic in msg and "WRITE ACL" in msg and "\n" not in msg, msg
    time.sleep(5)
    n = len(w.events("kafka.delivery_failed", "ro-status"))
    assert n <= 8, "%d failed sends in about 5 s" % n
    assert r.committed(partitions=1)[0] < 0
    no_password(w, pw)
