"""test_routing.py - warm-model routing (issue 21, item 4) on Apache Kafka: perflow submit
puts a model's jobs on the partitions protocol/model_route.h's rule names (read back from
the topic, the rule recomputed here from the job's model), and a worker holding jobs of a
model it has loaded and of one it has not takes the warm ones first without starving the
other (worker/prefer.h: the held head passed over at most prefer_warm times in a row). The pure pick is
tests/test_worker_prefer.c; the figures are tests/bench/bench_routing.py's."""
import hashlib
import json
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from test_submit import submit


def identity(model):
    """protocol/model_route.c's identity text of a job's model object, and its SHA-256."""
    def src(s):
        return [s["url"], s.get("sha256")] if s else ["", None]
    text = json.dumps({"base": src(model.get("base")), "config": src(model.get("config")),
                       "delta": src(model.get("delta")), "fp16": bool(model.get("fp16", False)),
                       "loras": [[src(lo), lo.get("scale", 1)] for lo in model.get("loras", [])]},
                      sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def read_topic(r, partitions):
    """Every message of the jobs topic: (partition, key, job)."""
    c = Consumer({"bootstrap.servers": r.broker.bootstrap, "group.id": "reader-" + r.group, "log_level": 0,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(r.jobs_topics[0], p, OFFSET_BEGINNING) for p in range(partitions)])
    out, idle = [], time.time()
    try:
        while time.time() - idle < 5:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            out.append((m.partition(), m.key().decode(), json.loads(m.value())))
            idle = time.time()
    finally:
        c.close()
    return out


def test_submit_routes_each_model_to_its_partitions(rig, tmp_path):
    """Three submits of 20 jobs: the plain model with --route-spread 2, the model with a LoRA at
    scale 0.5 with --route-spread 3, and the delta model with --no-route-by-model. Each routed
    job's key is <identity sha256>/<n mod spread> and its partition (first 32 bits of the
    digest + n mod spread) mod 5; the unrouted jobs keep their job id as key."""
    parts = 5
    r = rig(partitions=parts)
    lora = "http://127.0.0.1:%d/loras/kohya-sd15.safetensors" % r.nginx.port
    common = ["--prompt", "a cat", "--seeds", "0-19", "--width", "64", "--height", "64", "--steps", "2",
              "--no-redis", "--output", "s3://b/{job_id}/{index}.png"]
    for args in (["--model-url", r.model, "--route-spread", "2"],
                 ["--model-url", r.model, "--lora-url", lora + ":0.5", "--route-spread", "3"],
                 ["--model-url", r.model, "--delta-url", r.delta, "--no-route-by-model"]):
        rc, out, err = submit(r, *args, *common)
        assert rc == 0, out + err
    msgs = read_topic(r, parts)
    assert len(msgs) == 60
    by_model = {}
    for p, key, job in msgs:
        by_model.setdefault(identity(job["model"])[1], []).append((p, key, job))
    assert len(by_model) == 3
    spreads = {}
    for mid, ms in by_model.items():
        model = ms[0][2]["model"]
        if "delta" in model:  # --no-route-by-model
            assert all(key == job["job_id"] for _, key, job in ms)
            continue
        spread = 3 if "loras" in model else 2
        spreads[spread] = mid
        seen = {}
        for p, key, job in ms:
            assert key.startswith(mid + "/"), (key, mid)
            i = int(key.split("/")[1])
            assert 0 <= i < spread
            assert p == (int(mid[:8], 16) + i) % parts, (p, key)
            seen[i] = seen.get(i, 0) + 1
        # the n-th job gets n mod spread: the indexes take turns
        assert sorted(seen) == list(range(spread)) and max(seen.values()) - min(seen.values()) <= 1, seen
    # the identity is the worker's own model key: a LoRA scale makes another model
    assert len(spreads) == 2 and spreads[2] != spreads[3]
    assert identity({"base": {"url": r.model}})[0] == \
        '{"base":["%s",null],"config":["",null],"delta":["",null],"fp16":false,"loras":[]}' % r.model


def test_worker_prefers_warm_model_and_does_not_starve(rig):
    """A worker that has the delta model loaded (it ran a job of it) holds a job of the plain
    model (partition 0, first to arrive) and 4 of the delta model (partition 1, gathered into
    its lookahead by batch_wait_ms). With prefer_warm 2 it runs 2 warm ones, then the cold one
    (passed over twice, its bound), then the other 2: each partition's jobs in their order,
    every offset committed. With prefer_warm 0 the same queue runs in arrival order."""
    for prefer in (2, 0):
        r = rig(partitions=2)
        w = r.start_worker(PERFLOW_MAX_BATCH=1, PERFLOW_BATCH_WAIT_MS=4000, PERFLOW_PREFER_WARM=prefer)
        w.wait_event("kafka.assigned", timeout=60)
        t = "p%d-" % prefer  # job ids of their own: Redis keeps results across rigs
        warm = r.job(t + "warm-0", steps=1)
        r.producer.produce(r.jobs_topics[0], partition=1, key=warm["job_id"], value=json.dumps(warm))
        r.producer.flush(10)
        r.events.wait_terminal([t + "warm-0"], timeout=120)
        cold = r.job(t + "cold-1", steps=1, model={"base": {"url": r.model}})
        r.producer.produce(r.jobs_topics[0], partition=0, key=cold["job_id"], value=json.dumps(cold))
        r.producer.flush(10)
        # The cold job is polled first (fetching resumes within about a second after a job);
        # the warm ones arrive within its batch_wait_ms and are held with it.
        time.sleep(2.5)
        ids = [t + "warm-%d" % i for i in range(1, 5)]
        for i in ids:
            r.producer.produce(r.jobs_topics[0], partition=1, key=i, value=json.dumps(r.job(i, steps=1)))
        r.producer.flush(10)
        r.events.wait_terminal(ids + [t + "cold-1"], timeout=300)
        order = [e["job_id"] for e in w.events("job.accepted")]
        assert order[0] == t + "warm-0" and sorted(order[1:]) == sorted(ids + [t + "cold-1"]), order
        got = order[1:]
        if prefer:
            assert got == ids[:prefer] + [t + "cold-1"] + ids[prefer:], got
        else:
            assert got == [t + "cold-1"] + ids, got
        assert all(r.events.terminal(i)[0]["state"] == "succeeded" for i in ids + [t + "cold-1"])
        r.events.wait(lambda: r.committed() == {0: 1, 1: 5}, 30, "every offset committed")
        w.stop()
