"""test_metrics.py - the worker's metrics and health endpoints (libmicrohttpd), scraped
over HTTP and parsed with an independent parser of the Prometheus text format
(prometheus_client); the counters must match what the worker's log and the model
cache say ran. /readyz must fail when Redis goes away."""
import json
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import servers
from servers import fail_puts


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as f:
            return f.status, f.read().decode(), f.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type")


def scrape(base):
    status, text, ctype = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype)
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def test_metrics_match_what_ran_and_readiness(rig, tmp_path):
    r = rig(partitions=1)
    private = servers.start_redis(str(tmp_path))  # stopped below to see /readyz fail
    try:
        cache = str(tmp_path / "cache")
        served_before = len(r.nginx.access())
        w = r.start_worker(PERFLOW_METRICS_LISTEN="127.0.0.1:0", PERFLOW_REDIS="127.0.0.1:%d" % private.port,
                           PERFLOW_CACHE_DIR=cache, PERFLOW_CACHE_HOST_ID="metrics-test")
        (ev,) = w.wait_event("metrics.listening")
        base = "http://127.0.0.1:%d" % ev["port"]
        assert get(base + "/healthz")[:2] == (200, "ok\n")
        end = time.time() + 30
        while get(base + "/readyz")[0] != 200 and time.time() < end:
            time.sleep(0.2)
        assert get(base + "/readyz")[:2] == (200, "ready\n")
        assert get(base + "/nothing")[0] == 404
        first = scrape(base)
        assert value(first, "perflow_jobs_total", state="succeeded", code="") == 0
        assert value(first, "perflow_worker_state", state="idle") == 1 and value(first, "perflow_ready") == 1

        bad = r.job("m-bad")
        bad["width"] = 60
        for j in (r.job("m-two", num_images=2), bad, r.refine_job("m-refine")):
            r.produce(j)
        r.events.wait_terminal(["m-two", "m-bad", "m-refine"], timeout=90)
        r.produce(r.job("m-two", num_images=2))  # a redelivery: answered from the record
        r.events.wait(lambda: len(r.events.terminal("m-two")) == 2, 30, "the replay")
        time.sleep(0.5)
        m = scrape(base)
        assert value(m, "perflow_jobs_total", state="succeeded", code="") == 2
        assert value(m, "perflow_jobs_total", state="rejected", code="invalid_job") == 1
        assert value(m, "perflow_dead_letters_total", code="invalid_job") == 1
        assert value(m, "perflow_jobs_replayed_total") == 1
        assert value(m, "perflow_images_total", stage="base") == 2
        assert value(m, "perflow_images_total", stage="refined") == 1
        # Engine calls and stages, against the log.
        gen = [e for e in w.events("engine.start") if e["stage"] == "generate"]
        ref = [e for e in w.events("engine.start") if e["stage"] == "refine"]
        assert len(gen) == 2 and len(ref) == 1
        for stage in ("text", "denoise", "decode"):
            assert value(m, "perflow_stage_duration_seconds_count", stage=stage) == len(gen), stage
        assert value(m, "perflow_stage_duration_seconds_count", stage="refine") == len(ref)
        assert value(m, "perflow_stage_duration_seconds_count", stage="upload") == 2
        assert value(m, "perflow_batch_jobs_count", stage="generate") == len(gen)
        assert value(m, "perflow_batch_jobs_sum", stage="generate") == sum(e["jobs"] for e in gen)
        assert value(m, "perflow_batch_images_sum", stage="generate") == sum(e["images"] for e in gen)
        infs = value(m, "perflow_stage_duration_seconds_bucket", stage="denoise", le="+Inf")
        assert infs == len(gen)
        # The warm set and the disk cache, against the log and the cache folder.
        loaded = w.events("model.loaded")
        assert value(m, "perflow_model_loads_total", kind="model") == len(loaded) == 1
        assert value(m, "perflow_model_loads_total", kind="controlnet") == len(w.events("model.controlnet_loaded")) == 1
        assert value(m, "perflow_model_cache_misses_total", kind="model") == 1
        assert value(m, "perflow_model_cache_hits_total", kind="model") == 1  # the refine job's batch
        assert value(m, "perflow_stage_duration_seconds_count", stage="download") == 2  # model, ControlNet
        # what nginx served this worker (its fresh cache fetched everything once)
        served = [line.split() for line in r.nginx.access()[served_before:]]
        got = [int(f[-1][len("bytes="):]) for f in served if f[0] == "GET" and f[2] in ("200", "206")]
        assert value(m, "perflow_cache_downloads_total") == len(got) > 0
        assert value(m, "perflow_cache_download_bytes_total") == sum(got)
        assert value(m, "perflow_models_loaded") == 1 and value(m, "perflow_model_memory_bytes") > 0
        assert value(m, "perflow_worker_state", state="idle") == 1 and value(m, "perflow_jobs_running") == 0
        (info,) = [k for k in m if k[0] == "perflow_worker_info"]
        assert dict(info[1])["backend"] == "cpu" and dict(info[1])["worker_id"] == loaded[0]["worker_id"]

        # Redis goes away: /readyz says so within a few checks; /healthz still answers.
        private.stop()
        end = time.time() + 20
        while get(base + "/readyz")[0] == 200 and time.time() < end:
            time.sleep(0.2)
        status, body, _ = get(base + "/readyz")
        assert status == 503 and "redis" in body, (status, body)
        assert get(base + "/healthz")[0] == 200
        assert value(scrape(base), "perflow_ready") == 0
    finally:
        private.stop()


def test_metrics_off_by_default_and_bad_address(rig):
    r = rig()
    w = r.start_worker()
    w.wait_event("kafka.assigned", timeout=30)
    assert not w.events("metrics.listening")
    bad = r.start_worker(PERFLOW_METRICS_LISTEN="localhost:9")  # names are not resolved
    assert bad.wait(30) == 1
    assert "is not an IPv4 address" in bad.events("worker.start_failed")[0]["msg"]


def test_consumer_lag_per_partition(rig):
    """perflow_consumer_lag{topic,partition}: the backlog of each assigned jobs partition
    (high watermark minus the group's committed offset), as an autoscaler reads it: the
    jobs waiting while one runs, then 0 once they are done and committed; Kafka's own
    view (the group's committed offsets) agrees."""
    r = rig(partitions=2)
    jobs = [r.job("lag-%d" % i, steps=8, prompt="lag %d" % i) for i in range(6)]
    for i, j in enumerate(jobs):  # 4 on partition 0 and 2 on 1, by explicit partition
        r.producer.produce(r.jobs_topics[0], key=j["job_id"], value=json.dumps(j), partition=0 if i < 4 else 1)
    r.producer.flush(10)
    # The first job is held in its upload (every PUT fails, the worker retries) until the
    # backlog has been seen, so that the tiny jobs cannot all end between two scrapes.
    fail_puts(r.s3proxy, 1000)
    try:
        w = r.start_worker(PERFLOW_METRICS_LISTEN="127.0.0.1:0", PERFLOW_MAX_BATCH=1,
                           PERFLOW_KAFKA_STATISTICS_INTERVAL_MS=500, PERFLOW_S3_ATTEMPTS=1, PERFLOW_RETRIES=20,
                           PERFLOW_RETRY_MAX_MS=1000)
        (ev,) = w.wait_event("metrics.listening")
        base = "http://127.0.0.1:%d" % ev["port"]
        topic = r.jobs_topics[0]
        seen = []
        end = time.time() + 60
        while time.time() < end and not (seen and seen[-1][0] + seen[-1][1] >= 5):
            s = scrape(base)
            seen.append((value(s, "perflow_consumer_lag", topic=topic, partition="0"),
                         value(s, "perflow_consumer_lag", topic=topic, partition="1")))
            time.sleep(0.3)
        assert seen and seen[-1][0] + seen[-1][1] >= 5, seen  # the backlog while the first job is held
    finally:
        fail_puts(r.s3proxy, 0)
    r.events.wait_terminal([j["job_id"] for j in jobs], timeout=120)
    end = time.time() + 30
    while time.time() < end:
        s = scrape(base)
        lag = {k[1]: v for k, v in s.items() if k[0] == "perflow_consumer_lag"}
        if sorted(lag) == [(("partition", "0"), ("topic", topic)), (("partition", "1"), ("topic", topic))] and \
                not any(lag.values()):
            break
        time.sleep(0.3)
    else:
        raise AssertionError("lag not 0 on both partitions: %s" % lag)
    assert r.committed(partitions=2) == {0: 4, 1: 2}
