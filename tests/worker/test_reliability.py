"""test_reliability.py - terminal events once in effect, and the worker's own
shutdown when the broker is gone: a message answered but whose offset was not
committed (the worker died between the two) is committed on its redelivery
without a second terminal event; a resubmission (a new message) still gets the
recorded status replayed; a worker killed right after its jobs ended leaves
nothing to redeliver; a worker whose broker vanished stops within seconds."""
import signal
import time

from confluent_kafka import Consumer, TopicPartition

from conftest import Broker


def rewind(r, offset, partition=0):
    """Commits offset for the rig's group (no worker running): as if the
    worker that answered the message had died before its commit."""
    c = Consumer({"bootstrap.servers": r.broker.bootstrap, "group.id": r.group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "log_level": 0})
    assigned = []
    try:
        # a member of the group (the dev broker takes commits from members only)
        c.subscribe([r.jobs_topics[0]], on_assign=lambda _c, parts: assigned.extend(parts))
        end = time.time() + 30
        while not assigned and time.time() < end:
            c.poll(0.2)
        assert assigned, "the rewinding consumer got no partition"
        c.commit(offsets=[TopicPartition(r.jobs_topics[0], partition, offset)], asynchronous=False)
    finally:
        c.close()


def test_redelivered_answered_message_ends_without_second_event(rig):
    r = rig(partitions=1)
    w = r.start_worker()
    r.produce(r.job("once-a"))
    r.produce(r.job("once-b", width=60))  # rejected: its answer counts too
    r.events.wait_terminal(["once-a", "once-b"], timeout=60)
    r.events.wait(lambda: r.committed(partitions=1)[0] == 2, 10, "both offsets committed")
    w.stop()
    rewind(r, 0)  # both messages come again
    w2 = r.start_worker()
    w2.wait_event("job.redelivered", job_id="once-b", timeout=60)
    r.events.wait(lambda: r.committed(partitions=1)[0] == 2, 15, "the offsets committed again")
    r.events.poll(1)
    assert len(r.events.terminal("once-a")) == 1 and len(r.events.terminal("once-b")) == 1, r.events.statuses
    assert len(w2.events("job.redelivered")) == 2 and not w2.events("job.accepted")
    assert len(r.events.dead) == 1  # the rejection's dead letter, once


def test_resubmitted_job_still_answered_from_record(rig):
    r = rig(partitions=1)
    r.start_worker()
    r.produce(r.job("resub"))
    r.events.wait_terminal(["resub"], timeout=60)
    r.produce(r.job("resub"))  # a new message for the same job: its submitter waits for an answer
    r.events.wait(lambda: len(r.events.terminal("resub")) == 2, 30, "the replayed status")
    assert r.events.terminal("resub")[1]["replayed"] is True


def test_kill_right_after_the_end_redelivers_nothing(rig):
    r = rig(partitions=1)
    w = r.start_worker(PERFLOW_KAFKA_SESSION_TIMEOUT_MS=3000, PERFLOW_KAFKA_HEARTBEAT_INTERVAL_MS=500)
    ids = ["quick-%d" % i for i in range(3)]
    for i in ids:
        r.produce(r.job(i, prompt="kill %s" % i))
    r.events.wait_terminal(ids, timeout=60)
    w.proc.kill()  # within the old auto-commit second: the offsets must be committed already
    w.wait(10)
    w2 = r.start_worker(PERFLOW_KAFKA_SESSION_TIMEOUT_MS=3000, PERFLOW_KAFKA_HEARTBEAT_INTERVAL_MS=500)
    w2.wait_event("kafka.assigned", timeout=30)
    r.produce(r.job("quick-after"))
    r.events.wait_terminal(["quick-after"], timeout=60)
    for i in ids:
        assert len(r.events.terminal(i)) == 1, r.events.of(i)
    # Anything redelivered (a commit that had not reached the broker) ends silently.
    assert not w2.events("job.accepted", "quick-0") and not w2.events("job.replayed")


def test_shutdown_bounded_when_broker_gone(rig, work):
    b = Broker(work)  # a broker of its own, to be killed
    try:
        r = rig(partitions=1)
        b.command("topic %s 1" % r.jobs_topics[0])
        b.command("topic %s 1" % r.status_topic)
        b.command("topic %s 1" % r.dlq_topic)
        w = r.start_worker(PERFLOW_BROKERS=b.bootstrap)
        w.wait_event("kafka.assigned", timeout=30)
        from confluent_kafka import Producer
        p = Producer({"bootstrap.servers": b.bootstrap, "log_level": 0})
        p.produce(r.jobs_topics[0], key=b"junk", value=b"\x00 not a job")  # ends with a stored offset
        p.flush(10)
        w.wait_event("job.rejected", timeout=30)
        b.proc.kill()
        b.proc.wait(10)
        t = time.time()
        w.signal(signal.SIGTERM)
        assert w.wait(30) == 0
        took = time.time() - t
        assert took < 12, "the worker took %.1f s to stop with its broker gone" % took
    finally:
        if b.proc.poll() is None:
            b.stop()


def test_priority_hold_resumes_higher_topic(rig):
    """Low-priority messages already taken wait while the high topic has a
    backlog, with fetching resumed (before, the partitions stayed paused and
    a low job went after the 10 s hold, among the high ones)."""
    r = rig(partitions=1, topics=2)
    high, low = r.jobs_topics
    for i in range(3):
        r.produce(r.job("plow-%d" % i, prompt="low %d" % i), topic=low)
    for i in range(6):
        r.produce(r.job("phigh-%d" % i, prompt="high %d" % i), topic=high)
    w = r.start_worker(PERFLOW_MAX_BATCH=1)
    ids = ["plow-%d" % i for i in range(3)] + ["phigh-%d" % i for i in range(6)]
    r.events.wait_terminal(ids, timeout=120)
    order = [e["job_id"] for e in w.events("job.accepted")]
    first_high = next(i for i, j in enumerate(order) if j.startswith("phigh"))
    assert order[first_high:first_high + 6] == ["phigh-%d" % i for i in range(6)], order
    # every job taken exactly once, none lost to the pause and resume of fetching
    assert sorted(order) == sorted(ids), order
    assert not w.events("kafka.pause_failed")
