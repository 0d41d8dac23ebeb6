"""bench_routing.py - warm-model routing (issue 21, item 4) measured: a mixed batch of 3
models x N jobs (default 100) through 3 workers on Apache Kafka (a 6-partition jobs topic),
each mode on fresh topics: model loads over the fleet and images/s from the first job
accepted to the last terminal status. The models are the tiny SD-1.5 served by nginx as in
tests/worker: the base alone, with its PeRFlow delta, and with the delta and a LoRA at 0.7
(three identities). Each worker keeps one model loaded (model_memory 12M: a GPU's budget
holds one SD model), so a worker that meets another model loads it. The three submits run
at once (--rate each) so that the topic holds the models interleaved.

Modes: arrival order (jobs keyed by id, prefer_warm 0), the worker's preference alone (keyed
by id), and keyed by model with --route-spread 1, 2 and 3 (prefer_warm 8).

    PERFLOW_ROOT=$PWD .venv/bin/python tests/bench/bench_routing.py [N] [MODE ...]

Not part of make test (minutes); figures go to README.md (Warm-model routing)."""
import json
import os
import subprocess
import sys
import tempfile
import time
import types

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "worker"))
from conftest import BIN, BUCKET, Kafka, Rig, servers, start_model_server, start_s3  # noqa: E402

MODES = {
    "arrival": (["--no-route-by-model"], 0),
    "prefer": (["--no-route-by-model"], 8),
    "spread1": (["--route-spread", "1"], 8),
    "spread2": (["--route-spread", "2"], 8),
    "spread3": (["--route-spread", "3"], 8),
}


def run_mode(name, n, broker, redis, nginx, s3):
    args, prefer = MODES[name]
    r = Rig("route-" + name, os.path.join(broker.dir, ".."), broker, redis, nginx, s3,
            types.SimpleNamespace(port=s3.port), partitions=6)
    lora = "http://127.0.0.1:%d/loras/kohya-sd15.safetensors:0.7" % nginx.port
    models = [["--model-url", r.model], ["--model-url", r.model, "--delta-url", r.delta],
              ["--model-url", r.model, "--delta-url", r.delta, "--lora-url", lora]]
    workers = [r.start_worker(PERFLOW_MAX_BATCH=4, PERFLOW_BATCH_WAIT_MS=50, PERFLOW_MODEL_MEMORY="12M",
                              PERFLOW_PREFER_WARM=prefer) for _ in range(3)]
    for w in workers:
        w.wait_event("kafka.assigned", timeout=60)
    time.sleep(3)  # the group settles: every worker holds 2 partitions
    subs = [subprocess.Popen([os.path.join(BIN, "perflow"), "submit", *m, *args, "--prompt", "bench %s %d" % (name, i),
                              "--seeds", "0-%d" % (n - 1), "--width", "64", "--height", "64", "--steps", "2",
                              "--rate", "100", "--no-redis", "--batch-id", "%s-%d" % (name, i), "--output",
                              "s3://%s/{job_id}/{index}.png" % BUCKET],
                             env=r.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, m in enumerate(models)]
    for p in subs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    ids = None
    deadline = time.time() + 60 + 3 * n
    while time.time() < deadline:
        r.events.poll(0.5)
        done = {e["job_id"] for e in r.events.statuses if e.get("state") in ("succeeded", "failed", "cancelled", "rejected")}
        if len(done) >= 3 * n:
            ids = done
            break
    assert ids, "not every job ended"
    states = [e for e in r.events.statuses if e.get("state") in ("succeeded", "failed", "cancelled", "rejected")]
    bad = [e["job_id"] for e in states if e["state"] != "succeeded"]
    assert not bad, bad[:5]
    lines = [e for w in workers for e in w.lines()]
    acc = [e["ts"] for e in lines if e["event"] == "job.accepted"]
    fin = [e["ts"] for e in lines if e["event"] == "job.finished"]
    secs = (parse(max(fin)) - parse(min(acc)))
    loads = sum(1 for e in lines if e["event"] == "model.loaded")
    per_worker = [len(w.events("job.accepted")) for w in workers]
    loads_per = [len(w.events("model.loaded")) for w in workers]
    for w in workers:
        w.stop()
    r.close()
    return {"mode": name, "jobs": 3 * n, "seconds": round(secs, 1), "images_per_s": round(3 * n / secs, 2),
            "model_loads": loads, "loads_per_worker": loads_per, "jobs_per_worker": per_worker}


def parse(ts):
    t = time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")
    return time.mktime(t) + float("0" + ts[19:-1])


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    modes = sys.argv[2:] or list(MODES)
    work = tempfile.mkdtemp(prefix="perflow-bench-routing-")
    started = []
    try:
        redis = servers.start_redis(work)
        started.append(redis)
        nginx = start_model_server(work)
        started.append(nginx)
        s3 = start_s3(work)
        started.append(s3)
        broker = Kafka(os.path.join(work, "kafka"))
        started.append(broker)
        for m in modes:
            res = run_mode(m, n, broker, redis, nginx, s3)
            print("BENCH routing %s" % json.dumps(res), flush=True)
    finally:
        for s in reversed(started):
            s.stop()


if __name__ == "__main__":
    main()
