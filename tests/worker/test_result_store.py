"""test_result_store.py - the content-addressed result store (storage/result_store.c,
worker/result_replay.c): an image asked for again (by another job, on another worker) is
copied from the store, not computed, and the output is byte-identical to the one the
engine would write; anything that changes the image (the seed) misses; the off switch
computes everything; an entry whose object vanished is a miss. Real redis-server, moto's
S3 and file:// stores; counters read from /metrics with prometheus_client's parser."""
import os
import subprocess

import pytest

from conftest import BUCKET, ROOT, redis_cli
from test_metrics import get, scrape, value


def metrics_of(w):
    (ev,) = w.wait_event("metrics.listening")
    return "http://127.0.0.1:%d" % ev["port"]


def outputs(r, job_id):
    (ev,) = r.events.of(job_id, "succeeded")
    return [r.object(o["url"][len("s3://%s/" % BUCKET):]) for o in ev["outputs"]]


def computed(w, job_id):
    """Whether the engine ran for job_id: job.computed follows the terminal status, so wait for the
    job's last line (job.finished) first."""
    w.wait_event("job.finished", job_id=job_id)
    return w.events("job.computed", job_id)


def pixels(data):
    from PIL import Image
    import io
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


@pytest.mark.parametrize("store", ["s3", "file"])
def test_store_replays_identical_images_across_workers(rig, store):
    r = rig(partitions=1)
    if store == "s3":
        url = "s3://%s/store-%s" % (BUCKET, os.path.basename(r.dir))
    else:
        url = "file://" + os.path.join(r.dir, "store")
    prefix = "rs-" + os.path.basename(r.dir)
    ida, idb, idc = ("%s-%s" % (x, store) for x in ("rs-a", "rs-b", "rs-c"))  # job ids are unique per Redis
    on = dict(PERFLOW_RESULT_STORE_URL=url, PERFLOW_RESULT_STORE_PREFIX=prefix, PERFLOW_METRICS_LISTEN="127.0.0.1:0",
              PERFLOW_RESULT_STORE_RETENTION_S="3600")
    w1 = r.start_worker(**on)
    m1 = metrics_of(w1)
    r.produce(r.job(ida, num_images=2, seed=11))
    r.events.wait_terminal([ida], timeout=120)
    a = outputs(r, ida)
    assert len(a) == 2 and computed(w1, ida)
    s = scrape(m1)
    assert value(s, "perflow_result_store_misses_total") == 2 and value(s, "perflow_result_store_hits_total") == 0
    keys = redis_cli(r.redis, "--scan", "--pattern", prefix + ":*").split()
    assert len(keys) == 2, keys
    ttl = int(redis_cli(r.redis, "TTL", keys[0]))
    assert 3500 < ttl <= 3600, ttl  # the retention setting

    # the same images asked for by another job, taken by a second worker: copied, not computed
    w1.stop()
    w2 = r.start_worker(**on)
    m2 = metrics_of(w2)
    r.produce(r.job(idb, num_images=2, seed=11))
    r.events.wait_terminal([idb], timeout=120)
    b = outputs(r, idb)
    assert not computed(w2, idb), "a job found in the store ran the engine"
    assert w2.events("result_store.hit", idb)
    s = scrape(m2)
    assert value(s, "perflow_result_store_hits_total") == 2 and value(s, "perflow_result_store_misses_total") == 0
    assert [pixels(x) for x in b] == [pixels(x) for x in a]

    # a changed seed is another image: computed
    r.produce(r.job(idc, num_images=1, seed=12))
    r.events.wait_terminal([idc], timeout=120)
    assert computed(w2, idc)
    assert value(scrape(m2), "perflow_result_store_misses_total") == 1

    # byte-identical: rs-b computed by a worker with the store off (job records under another
    # prefix, so that idb is new to it) writes exactly the bytes the replay wrote
    w2.stop()
    w3 = r.start_worker(PERFLOW_RESULT_STORE="0", PERFLOW_RESULT_STORE_URL=url, PERFLOW_JOB_PREFIX="pf:rs-off",
                        PERFLOW_METRICS_LISTEN="127.0.0.1:0")
    m3 = metrics_of(w3)
    r.events.statuses = [e for e in r.events.statuses if e["job_id"] != idb]
    r.produce(r.job(idb, num_images=2, seed=11))
    r.events.wait_terminal([idb], timeout=120)
    assert computed(w3, idb), "the off switch did not compute"
    s = scrape(m3)
    assert value(s, "perflow_result_store_hits_total") == 0 and value(s, "perflow_result_store_misses_total") == 0
    assert outputs(r, idb) == b, "a replayed output differs from the computed one"


def test_vanished_object_is_a_miss(rig):
    r = rig(partitions=1)
    store = os.path.join(r.dir, "store")
    prefix = "rs-" + os.path.basename(r.dir)
    w = r.start_worker(PERFLOW_RESULT_STORE_URL="file://" + store, PERFLOW_RESULT_STORE_PREFIX=prefix,
                       PERFLOW_METRICS_LISTEN="127.0.0.1:0")
    m = metrics_of(w)
    r.produce(r.job("rv-a", seed=21))
    r.events.wait_terminal(["rv-a"], timeout=120)
    files = subprocess.run(["find", store, "-name", "*.png"], capture_output=True, text=True).stdout.split()
    assert len(files) == 1
    os.unlink(files[0])
    r.produce(r.job("rv-b", seed=21))
    r.events.wait_terminal(["rv-b"], timeout=120)
    assert r.events.of("rv-b", "succeeded") and computed(w, "rv-b")
    s = scrape(m)
    assert value(s, "perflow_result_store_hits_total") == 0 and value(s, "perflow_result_store_misses_total") == 2
    # and the recomputed image was recorded again
    files = subprocess.run(["find", store, "-name", "*.png"], capture_output=True, text=True).stdout.split()
    assert len(files) == 1
    assert get(m + "/healthz")[0] == 200
