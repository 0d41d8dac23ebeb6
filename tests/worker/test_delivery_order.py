"""test_delivery_order.py - the order in which the worker ends a job
(worker/answers.c, pf_ans_finish()), each step checked by a test that fails when it moves: the result
record, then the terminal status (and dead letter), then the answered note and
the offset, and only then the lease. A job whose end cannot be delivered keeps
its offset uncommitted, its lease held and its message unanswered; killing the
worker then redelivers it, and exactly one terminal event results.

The faults are held open, not timed: the job is stopped in its upload (the S3
proxy fails every PUT, the worker retries) until the fault is in place, then
let go. The broker faults come from the `faults` fixture, so that the same
tests can run on another broker once it can fail a topic's produce requests."""
import json
import signal
import time

import pytest

import servers
from conftest import redis_cli
from servers import fail_puts


class DevBrokerFaults:
    """Produce requests failing on perflow-dev-broker (librdkafka's mock cluster)."""

    def __init__(self, broker):
        self.broker = broker

    def fail_produce(self):
        # Retriable, so the idempotent producer keeps trying; 1000 lasts minutes.
        self.broker.command("errors Produce 1000 NOT_ENOUGH_REPLICAS")

    def heal_produce(self):
        self.broker.command("clear Produce")


@pytest.fixture
def faults(dev_broker):
    """Kafka cannot be told to fail a topic's produce requests with a retriable error:
    the tests that need it run their rig on the dev broker (rig(on=faults.broker))."""
    f = DevBrokerFaults(dev_broker)
    yield f
    f.heal_produce()


@pytest.fixture
def own_redis(work):
    """A redis-server of this test's own, to be stopped (SIGSTOP: requests time out)."""
    s = servers.start_redis(work + "/own-redis-%d" % time.monotonic_ns())
    yield s
    try:
        s.proc.send_signal(signal.SIGCONT)
    except ProcessLookupError:
        pass
    s.stop()


# What the gate needs: uploads retried long enough for the fault to be put in place.
GATED = dict(PERFLOW_S3_ATTEMPTS=1, PERFLOW_RETRIES=20, PERFLOW_RETRY_MAX_MS=1000, PERFLOW_DELIVERY_TIMEOUT_MS=3000,
             PERFLOW_KAFKA_SESSION_TIMEOUT_MS=3000, PERFLOW_KAFKA_HEARTBEAT_INTERVAL_MS=500)


def held_in_upload(r, w, job):
    """Produces job and returns once its upload has failed once (the proxy fails every PUT)."""
    fail_puts(r.s3proxy, 1000)
    r.produce(job)
    w.wait_event("job.upload_failed", timeout=60, job_id=job["job_id"])


def never_committed(r, seconds=3.0):
    """Asserts for `seconds` that the group has committed no offset of the jobs topic."""
    end = time.time() + seconds
    while time.time() < end:
        got = r.committed(partitions=1)[0]
        assert got < 0, "offset %d committed while the job's end was undelivered" % got
        time.sleep(0.3)


def log_after(w, job_id, first, then):
    """1 when the worker logged event `then` for job_id after its event `first`."""
    lines = w.lines()
    idx = [i for i, e in enumerate(lines) if e["event"] == first and e.get("job_id") == job_id]
    return bool(idx) and any(e["event"] == then and e.get("job_id") == job_id for e in lines[idx[0] + 1:])


def test_undelivered_status_keeps_offset_lease_and_note(rig, faults):
    """Status produce failing: the result is recorded, but until the status is
    acknowledged the offset stays uncommitted, the lease held and the message
    not noted as answered; a kill then redelivers it and the redelivery
    replays the record (without waiting for the dead worker's lease): one
    terminal event."""
    r = rig(on=faults.broker, partitions=1)
    # A lease that outlives the wait, so that a lease released too early shows
    # (and not one that merely lapsed).
    w = r.start_worker(PERFLOW_LEASE_TTL_MS=120000, **GATED)
    w.wait_event("kafka.assigned", timeout=30)
    try:
        held_in_upload(r, w, r.job("order-status"))
        faults.fail_produce()
    finally:
        fail_puts(r.s3proxy, 0)
    end = time.time() + 60
    while not log_after(w, "order-status", "job.finished", "kafka.delivery_failed"):
        assert time.time() < end, "the terminal status was never tried"
        assert w.proc.poll() is None
        time.sleep(0.2)
    never_committed(r)
    assert redis_cli(r.redis, "GET", "pf:job:order-status:result"), "the result was not recorded first"
    lease = redis_cli(r.redis, "GET", "pf:job:order-status:lease")
    assert lease.startswith(w.lines()[0]["worker_id"] + ":"), "lease not held: %r" % lease
    assert redis_cli(r.redis, "SCARD", "pf:job:order-status:acked") == "0", "noted as answered before its status"
    w.proc.kill()
    w.wait(10)
    faults.heal_produce()
    r.events.poll(1)
    assert not r.events.terminal("order-status"), "a status got through the failing broker"
    w2 = r.start_worker(**GATED)
    r.events.wait_terminal(["order-status"], timeout=60)
    r.events.wait(lambda: r.committed(partitions=1)[0] == 1, 30, "the offset committed")
    r.events.poll(1)
    (ev,) = r.events.terminal("order-status")
    assert ev["state"] == "succeeded" and ev["replayed"] is True, ev
    assert w2.events("job.replayed", "order-status")
    # the note the check above looked for, written once the status went out
    assert redis_cli(r.redis, "SCARD", "pf:job:order-status:acked") == "1"


def test_unrecorded_result_keeps_offset(rig, own_redis):
    """Redis away when the result is to be recorded: nothing is sent and the
    offset stays uncommitted; a kill then redelivers the job, which runs
    again: one terminal event."""
    r = rig(partitions=1)
    rd = "127.0.0.1:%d" % own_redis.port
    w = r.start_worker(PERFLOW_REDIS=rd, **GATED)
    w.wait_event("kafka.assigned", timeout=30)
    try:
        held_in_upload(r, w, r.job("order-record"))
        own_redis.proc.send_signal(signal.SIGSTOP)
    finally:
        fail_puts(r.s3proxy, 0)
    end = time.time() + 60
    while not [e for e in w.events("redis.failed", "order-record") if "recording the result" in e.get("msg", "")]:
        assert time.time() < end, "the worker never tried to record the result"
        assert w.proc.poll() is None
        time.sleep(0.2)
    never_committed(r)
    r.events.poll(1)
    assert not r.events.terminal("order-record"), "a terminal status was sent before the result was recorded"
    w.proc.kill()
    w.wait(10)
    own_redis.proc.send_signal(signal.SIGCONT)
    w2 = r.start_worker(PERFLOW_REDIS=rd, **GATED)
    r.events.wait_terminal(["order-record"], timeout=90)
    r.events.wait(lambda: r.committed(partitions=1)[0] == 1, 30, "the offset committed")
    r.events.poll(1)
    (ev,) = r.events.terminal("order-record")
    assert ev["state"] == "succeeded" and "replayed" not in ev, ev
    assert w2.events("job.accepted", "order-record")


def test_dead_letter_after_record_before_offset(rig, own_redis):
    """A job that fails for good (uploads exhausted, one attempt allowed) with
    Redis away: no status and no dead letter go out, the offset stays
    uncommitted; after a kill the redelivery fails the job again and exactly
    one terminal event and one dead letter result."""
    r = rig(partitions=1)
    rd = "127.0.0.1:%d" % own_redis.port
    gated = dict(GATED, PERFLOW_RETRIES=6, PERFLOW_MAX_ATTEMPTS=1)
    w = r.start_worker(PERFLOW_REDIS=rd, **gated)
    w.wait_event("kafka.assigned", timeout=30)
    try:
        held_in_upload(r, w, r.job("order-dlq"))
        own_redis.proc.send_signal(signal.SIGSTOP)
        end = time.time() + 90
        while not [e for e in w.events("redis.failed", "order-dlq") if "recording the result" in e.get("msg", "")]:
            assert time.time() < end, "the worker never tried to record the result"
            assert w.proc.poll() is None
            time.sleep(0.2)
        (fin,) = w.events("job.finished", "order-dlq")
        assert fin["dead_letter"] is True and fin["state"] == "failed", fin
        never_committed(r)
        r.events.poll(1)
        assert not r.events.terminal("order-dlq") and not r.events.dead, "sent before the result was recorded"
        w.proc.kill()
        w.wait(10)
        own_redis.proc.send_signal(signal.SIGCONT)
        w2 = r.start_worker(PERFLOW_REDIS=rd, **gated)
        r.events.wait_terminal(["order-dlq"], timeout=90)
    finally:
        fail_puts(r.s3proxy, 0)
    r.events.wait(lambda: r.committed(partitions=1)[0] == 1, 30, "the offset committed")
    r.events.wait(lambda: r.events.dead, 15, "the dead letter")
    r.events.poll(1)
    (ev,) = r.events.terminal("order-dlq")
    assert ev["state"] == "failed" and ev["error"]["code"] == "upload" and "replayed" not in ev, ev
    assert len(r.events.dead) == 1 and r.events.dead[0][1]["perflow-job-id"] == "order-dlq"
    assert w2.events("job.accepted", "order-dlq")


def test_recorded_dead_letter_replayed(rig, faults):
    """A job that fails for good (uploads exhausted, one attempt allowed) whose
    result is recorded but whose status and dead letter the broker refuses:
    after a kill, the redelivery replays the record and the dead letter
    recorded with it, with the original headers and payload (the dead letter
    is not lost with the worker)."""
    r = rig(on=faults.broker, partitions=1)
    gated = dict(GATED, PERFLOW_RETRIES=6, PERFLOW_MAX_ATTEMPTS=1)
    w = r.start_worker(**gated)
    w.wait_event("kafka.assigned", timeout=30)
    job = r.job("order-dlq-replay")
    try:
        held_in_upload(r, w, job)
        faults.fail_produce()
        end = time.time() + 90
        while not log_after(w, "order-dlq-replay", "job.finished", "kafka.delivery_failed"):
            assert time.time() < end, "the terminal status was never tried"
            assert w.proc.poll() is None
            time.sleep(0.2)
    finally:
        fail_puts(r.s3proxy, 0)
    (fin,) = w.events("job.finished", "order-dlq-replay")
    assert fin["dead_letter"] is True and fin["state"] == "failed", fin
    assert redis_cli(r.redis, "GET", "pf:job:order-dlq-replay:result"), "the result was not recorded first"
    never_committed(r, 1.0)
    w.proc.kill()
    w.wait(10)
    faults.heal_produce()
    r.events.poll(1)
    assert not r.events.terminal("order-dlq-replay") and not r.events.dead, "sent through the failing broker"
    w2 = r.start_worker(**gated)
    r.events.wait_terminal(["order-dlq-replay"], timeout=60)
    r.events.wait(lambda: r.committed(partitions=1)[0] == 1, 30, "the offset committed")
    r.events.wait(lambda: r.events.dead, 15, "the dead letter")
    r.events.poll(1)
    (ev,) = r.events.terminal("order-dlq-replay")
    assert ev["state"] == "failed" and ev["error"]["code"] == "upload" and ev["replayed"] is True, ev
    assert w2.events("job.replayed", "order-dlq-replay") and not w2.events("job.accepted", "order-dlq-replay")
    assert len(r.events.dead) == 1, r.events.dead
    value, headers = r.events.dead[0]
    assert json.loads(value) == job
    assert headers["perflow-job-id"] == "order-dlq-replay" and headers["perflow-error-code"] == "upload", headers
    assert headers["perflow-worker-id"] == w.lines()[0]["worker_id"], headers  # the first worker's, as recorded
    assert headers["perflow-source-offset"] == "0" and headers["perflow-attempt"] == "1", headers


def test_lease_renewed_while_status_held(rig, faults):
    """A status send held by the broker for many lease TTLs: the lease stays
    this worker's all along (renewed while the job ends, not only while it
    runs), so that no other worker takes the job over; once the broker
    answers, one terminal event, and the lease is released."""
    r = rig(on=faults.broker, partitions=1)
    ttl = 1500
    w = r.start_worker(PERFLOW_LEASE_TTL_MS=ttl, **GATED)
    w.wait_event("kafka.assigned", timeout=30)
    me = w.lines()[0]["worker_id"] + ":"
    try:
        held_in_upload(r, w, r.job("order-lease"))
        faults.fail_produce()
    finally:
        fail_puts(r.s3proxy, 0)
    end = time.time() + 60
    while not log_after(w, "order-lease", "job.finished", "kafka.delivery_failed"):
        assert time.time() < end, "the terminal status was never tried"
        assert w.proc.poll() is None
        time.sleep(0.2)
    end = time.time() + 4 * ttl / 1000
    while time.time() < end:  # four TTLs with the status held
        lease = redis_cli(r.redis, "GET", "pf:job:order-lease:lease")
        assert lease.startswith(me), "the lease lapsed while the status was held: %r" % lease
        time.sleep(0.1)
    assert not w.events("job.lease_lost", "order-lease")
    faults.heal_produce()
    r.events.wait_terminal(["order-lease"], timeout=60)
    r.events.wait(lambda: r.committed(partitions=1)[0] == 1, 30, "the offset committed")
    r.events.poll(1)
    (ev,) = r.events.terminal("order-lease")
    assert ev["state"] == "succeeded" and "replayed" not in ev, ev
    r.events.wait(lambda: redis_cli(r.redis, "EXISTS", "pf:job:order-lease:lease") == "0", 10, "the lease released")


def test_recorded_dead_letter_hostile(rig):
    """The dead letter recorded beside a result is read back from Redis as
    hostile input: one that is not a dead letter (not JSON, a header that is no
    pair of strings, too many headers, a payload that is no string) is left
    out with a job.bad_record warning and the status still replayed; a valid
    one is sent as recorded (a NUL in its payload kept), or with the
    redelivered message as its payload when it records none."""
    r = rig(partitions=1)
    job = r.job("dl-hostile")
    r.produce(job)
    w = r.start_worker()
    r.events.wait_terminal(["dl-hostile"], timeout=60)
    key = "pf:job:dl-hostile:dead_letter"
    bad = ["not json", '{"headers": [["perflow-error-code"]]}', '{"headers": [["a", 1]]}',
           json.dumps({"headers": [["h%d" % i, "v"] for i in range(10)]}), '{"headers": [], "payload": 7}', "[]"]
    good = [('{"headers": [["perflow-error-code", "upload"]], "payload": "p\\u0000q"}', b"p\x00q"),
            ('{"headers": [["perflow-error-code", "upload"]]}', json.dumps(job).encode())]
    seen = 1
    for i, rec in enumerate(bad + [g for g, _ in good]):
        redis_cli(r.redis, "SET", key, rec)
        r.produce(job)
        seen += 1
        r.events.wait(lambda: len(r.events.of("dl-hostile", "succeeded")) == seen, 60, "replay %d" % i)
        assert w.proc.poll() is None
    r.events.wait(lambda: len(r.events.dead) == len(good), 15, "the valid dead letters")
    r.events.poll(1)
    assert [v for v, _ in r.events.dead] == [want for _, want in good]
    assert all(h == {"perflow-error-code": "upload"} for _, h in r.events.dead), r.events.dead
    assert len([e for e in w.events("job.bad_record", "dl-hostile") if "dead letter" in e.get("msg", "")]) == len(bad)
    replays = w.events("job.replayed", "dl-hostile")
    assert [e["dead_letter"] for e in replays] == [False] * len(bad) + [True] * len(good), replays
