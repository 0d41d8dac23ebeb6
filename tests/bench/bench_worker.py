"""bench_worker.py - per-job overhead of bin/perflow-worker with the tiny model: from
"accepted" to the engine's start (lease, status, model from the warm set) and from the
engine's end to the terminal status acknowledged by the broker (PNG, upload to S3,
Redis record, status), median and p99 over N jobs (default 200), one worker, one job
per engine call. Real processes as in tests/worker: the dev broker, redis-server,
nginx, moto's S3. The worker measures both intervals itself and logs them as
"job.overhead" events; this script reads them.

    .venv/bin/python tests/bench/bench_worker.py [N]      (make bench runs it)"""
import os
import statistics
import sys
import tempfile
import time
import types

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "worker"))
import conftest  # noqa: E402
from conftest import Broker, Rig, servers, start_model_server, start_s3  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    work = tempfile.mkdtemp(prefix="perflow-bench-worker-")
    started = []
    try:
        redis = servers.start_redis(work)
        started.append(redis)
        nginx = start_model_server(work)
        started.append(nginx)
        s3 = start_s3(work)
        started.append(s3)
        broker = Broker(work)
        started.append(broker)
        rig = Rig("bench", work, broker, redis, nginx, s3, types.SimpleNamespace(port=s3.port), partitions=1)
        w = rig.start_worker(PERFLOW_MAX_BATCH=1, PERFLOW_THREADS=os.environ.get("BENCH_THREADS", "1"))
        w.wait_event("kafka.assigned", timeout=60)
        rig.produce(rig.job("warmup"))  # fetches and loads the model
        rig.events.wait_terminal(["warmup"], timeout=120)
        ids = ["bench-%03d" % i for i in range(n)]
        t0 = time.time()
        for i in ids:
            rig.producer.produce(rig.jobs_topics[0], key=i, value=__import__("json").dumps(rig.job(i, seed=len(i))))
        rig.producer.flush(30)
        rig.events.wait_terminal(ids, timeout=60 + 2 * n)
        wall = time.time() - t0
        bad = [i for i in ids if rig.events.terminal(i)[0]["state"] != "succeeded"]
        assert not bad, "jobs did not succeed: %s" % bad[:5]
        ov = {e["job_id"]: e for e in w.events("job.overhead") if e["job_id"] in ids}
        received = [e["received_to_engine_ms"] for e in ov.values()]
        before = [e["before_engine_ms"] for e in ov.values()]
        after = [e["after_engine_ms"] for e in ov.values()]
        engine = [e["engine_ms"] for e in ov.values()]
        print("worker overhead, tiny model 64x64, 4 steps, %d jobs (%.1f jobs/s, engine median %.0f ms):"
              % (len(ov), len(ov) / wall, statistics.median(engine)))
        print("  %-44s median %6.1f ms   p99 %6.1f ms" % ("accepted -> engine start", statistics.median(before),
                                                            pct(before, 99)))
        print("  %-44s median %6.1f ms   p99 %6.1f ms" % ("message taken -> engine start (+ Redis, lease)",
                                                            statistics.median(received), pct(received, 99)))
        print("  %-44s median %6.1f ms   p99 %6.1f ms" % ("engine end -> terminal status acknowledged",
                                                            statistics.median(after), pct(after, 99)))
        rig.close()
    finally:
        for s in reversed(started):
            s.stop()


if __name__ == "__main__":
    main()
