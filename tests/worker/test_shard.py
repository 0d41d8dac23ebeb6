"""test_shard.py - shard jobs (worker/shard.c): a job's samples made in engine batches and
written as one WebDataset tar (libarchive) to moto's S3 and to file://, read back with
Python's tarfile and grouped by key as webdataset does; progress events; the result store
making a re-run with changed prompts recompute exactly those; a worker SIGKILLed mid-shard
leaving no object and the redelivered job completing it from the store; hostile shard
jobs rejected naming the field."""
import io
import json
import os
import signal
import tarfile
import time

import jsonschema
from PIL import Image

from conftest import BUCKET
from test_metrics import scrape, value
from test_worker import JOB_SCHEMA


def shard_job(r, job_id, prompts, seeds, url, shard=0, **over):
    j = r.job(job_id, **over)
    for k in ("prompt", "seed"):
        j.pop(k)
    j["shard"] = shard
    j["samples"] = [{"prompt": p, "seed": s, "meta": {"row": i}} for i, (p, s) in enumerate(zip(prompts, seeds))]
    j["output"] = {"url": url}
    jsonschema.validate(j, JOB_SCHEMA)
    return j


def read_tar(data):
    """The tar's members in order, and its samples grouped by key as webdataset groups them
    (consecutive members sharing the name up to the first dot)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = t.getmembers()
        names = [m.name for m in members]
        for m in members:
            assert m.isreg() and m.mode == 0o644 and m.mtime == 0 and m.uid == 0, m
        files = {m.name: t.extractfile(m).read() for m in members}
    groups, current = [], None
    for n in names:
        key, ext = n.split(".", 1)
        if current is None or current["__key__"] != key:
            current = {"__key__": key}
            groups.append(current)
        assert ext not in current, "member %s twice" % n
        current[ext] = files[n]
    return names, groups


def check_shard(data, job_id, prompts, seeds, shard):
    names, groups = read_tar(data)
    assert names == sorted(names), "members not in key order"
    assert [g["__key__"] for g in groups] == ["%06d%04d" % (shard, i) for i in range(len(prompts))]
    for i, g in enumerate(groups):
        assert set(g) == {"__key__", "json", "png", "txt"}, set(g)
        meta = json.loads(g["json"])
        assert meta["key"] == g["__key__"] and meta["index"] == i and meta["shard"] == shard
        assert meta["job_id"] == job_id and meta["prompt"] == prompts[i] and meta["seed"] == seeds[i]
        assert meta["meta"] == {"row": i}
        assert meta["settings"]["width"] == 64 and meta["settings"]["steps"] == 4
        assert meta["model"]["base"]["url"].endswith("/tiny-sd15") and len(meta["model"]["base"]["digest"]) == 64
        assert meta["model"]["delta"]["digest"] and meta["model"]["numerics"] == "cpu-fp32"
        assert len(meta["identity"]) == 64
        assert g["txt"].decode() == prompts[i]
        im = Image.open(io.BytesIO(g["png"]))
        assert im.size == (64, 64) and im.mode == "RGB"
    return groups


def test_shard_to_s3_and_file_with_store_rerun(rig):
    r = rig(partitions=1)
    root = os.path.join(r.dir, "out")
    prefix = "rs-" + os.path.basename(r.dir)
    w = r.start_worker(PERFLOW_RESULT_STORE_URL="s3://%s/store-%s" % (BUCKET, os.path.basename(r.dir)),
                       PERFLOW_RESULT_STORE_PREFIX=prefix, PERFLOW_METRICS_LISTEN="127.0.0.1:0",
                       PERFLOW_FILE_OUTPUT_ROOT=root, PERFLOW_MAX_BATCH="4")
    (ev,) = w.wait_event("metrics.listening")
    m = "http://127.0.0.1:%d" % ev["port"]
    prompts = ["a photo of a cat number %d" % i for i in range(10)]
    seeds = list(range(100, 110))
    s3_url = "s3://%s/ds/{job_id}.tar" % BUCKET
    r.produce(shard_job(r, "sh-s3", prompts, seeds, s3_url, shard=0))
    r.produce(shard_job(r, "sh-file", prompts, seeds, "file://" + root + "/ds/00001.tar", shard=1))
    r.events.wait_terminal(["sh-s3", "sh-file"], timeout=240)
    (ok,) = r.events.of("sh-s3", "succeeded")
    (out,) = ok["outputs"]
    assert out["url"] == "s3://%s/ds/sh-s3.tar" % BUCKET and out["samples"] == 10
    data = r.object("ds/sh-s3.tar")
    import hashlib
    assert hashlib.sha256(data).hexdigest() == out["sha256"] and len(data) == out["size"]
    g0 = check_shard(data, "sh-s3", prompts, seeds, 0)
    assert not any(json.loads(g["json"])["from_store"] for g in g0)
    running = [e for e in r.events.of("sh-s3", "running") if "samples_done" in e]
    assert [e["samples_done"] for e in running] == [0, 4, 8, 10] and all(e["samples_total"] == 10 for e in running)
    # the file:// shard: the same samples, so all from the store, and the same pixels
    fdata = open(os.path.join(root, "ds", "00001.tar"), "rb").read()
    g1 = check_shard(fdata, "sh-file", prompts, seeds, 1)
    assert all(json.loads(g["json"])["from_store"] for g in g1)
    assert [g["png"] for g in g1] == [g["png"] for g in g0]
    assert not [f for f in os.listdir(os.path.join(root, "ds")) if f != "00001.tar"], "a temporary file was left"
    s = scrape(m)
    assert value(s, "perflow_result_store_misses_total") == 10 and value(s, "perflow_result_store_hits_total") == 10

    # the same shard with one prompt in ten changed: exactly that sample is computed
    changed = list(prompts)
    changed[3] = "a photo of a dog"
    t0 = time.time()
    r.produce(shard_job(r, "sh-s3-rerun", changed, seeds, s3_url, shard=0))
    r.events.wait_terminal(["sh-s3-rerun"], timeout=240)
    rerun_s = time.time() - t0
    g2 = check_shard(r.object("ds/sh-s3-rerun.tar"), "sh-s3-rerun", changed, seeds, 0)
    assert [i for i, g in enumerate(g2) if not json.loads(g["json"])["from_store"]] == [3]
    assert [g["png"] for i, g in enumerate(g2) if i != 3] == [g["png"] for i, g in enumerate(g0) if i != 3]
    s = scrape(m)
    assert value(s, "perflow_result_store_misses_total") == 11 and value(s, "perflow_result_store_hits_total") == 19
    print("re-run of 10 samples with 1 changed: %.1f s" % rerun_s)


def test_killed_shard_leaves_no_object_and_completes(rig):
    r = rig(partitions=1)
    prefix = "rs-" + os.path.basename(r.dir)
    env = dict(PERFLOW_RESULT_STORE_URL="s3://%s/store-%s" % (BUCKET, os.path.basename(r.dir)),
               PERFLOW_RESULT_STORE_PREFIX=prefix, PERFLOW_MAX_BATCH="2", PERFLOW_METRICS_LISTEN="127.0.0.1:0")
    w = r.start_worker(**env)
    n = 24
    prompts = ["a red house %d" % i for i in range(n)]
    seeds = [7 + i for i in range(n)]
    r.produce(shard_job(r, "sh-kill", prompts, seeds, "s3://%s/kill/{job_id}.tar" % BUCKET, shard=5))
    r.events.wait(lambda: any(e.get("samples_done", 0) >= 8 for e in r.events.of("sh-kill", "running")), 240,
                  "8 samples done")
    w.signal(signal.SIGKILL)
    w.wait(10)
    done_before = max(e.get("samples_done", 0) for e in r.events.of("sh-kill", "running"))
    keys = [o["Key"] for o in r.moto.client.list_objects_v2(Bucket=BUCKET, Prefix="kill/").get("Contents", [])]
    assert keys == [], "a killed shard left %s" % keys
    w2 = r.start_worker(**env)
    (ev,) = w2.wait_event("metrics.listening")
    r.events.wait_terminal(["sh-kill"], timeout=300)
    (ok,) = r.events.of("sh-kill", "succeeded")
    groups = check_shard(r.object("kill/sh-kill.tar"), "sh-kill", prompts, seeds, 5)
    assert len(groups) == n  # no duplicates, none missing (check_shard checks the keys)
    hits = value(scrape("http://127.0.0.1:%d" % ev["port"]), "perflow_result_store_hits_total")
    assert hits >= done_before, (hits, done_before)
    assert sum(json.loads(g["json"])["from_store"] for g in groups) == hits == ok["outputs"][0]["samples_from_store"]


def test_hostile_shard_jobs_rejected_naming_the_field(rig):
    r = rig(partitions=1)
    r.start_worker()
    tar = "s3://%s/h/{job_id}.tar" % BUCKET

    def job(job_id, **over):
        j = r.job(job_id)
        for k in ("prompt", "seed"):
            j.pop(k)
        j.update({"samples": [{"prompt": "a cat", "seed": 1}], "output": {"url": tar}})
        j.update(over)
        return j
    cases = {
        "hs-notarray": (job("hs-notarray", samples={"prompt": "x"}), "samples"),
        "hs-empty": (job("hs-empty", samples=[]), "samples"),
        "hs-toomany": (job("hs-toomany", samples=[{"prompt": "x"}] * 10001), "samples"),
        "hs-unknown": (job("hs-unknown", samples=[{"prompt": "x", "sede": 1}]), "samples[0].sede"),
        "hs-noprompt": (job("hs-noprompt", samples=[{"prompt": "x"}, {"seed": 2}]), "samples[1].prompt"),
        "hs-badseed": (job("hs-badseed", samples=[{"prompt": "x", "seed": -1}]), "samples[0].seed"),
        "hs-ctl": (job("hs-ctl", samples=[{"prompt": "x\u0001"}]), "samples[0].prompt"),
        "hs-meta": (job("hs-meta", samples=[{"prompt": "x", "meta": [1]}]), "samples[0].meta"),
        "hs-prompt": (job("hs-prompt", prompt="also"), "prompt"),
        "hs-images": (job("hs-images", num_images=2), "num_images"),
        "hs-refine": (job("hs-refine", refine={"controlnet": {"url": r.controlnet}}), "refine"),
        "hs-notar": (job("hs-notar", output={"url": "s3://%s/h/{job_id}.png" % BUCKET}), "output.url"),
        "hs-shard": (dict(r.job("hs-shard"), shard=1), "shard"),
        "hs-shardneg": (job("hs-shardneg", shard=-1), "shard"),
        "hs-family": (job("hs-family", samples=[{"prompt": "ok"}, {"prompt": "x", "prompt_2": "y"}]),
                      "samples[1].prompt_2"),
    }
    for j, _ in cases.values():
        r.produce(j)
    r.events.wait_terminal(list(cases), timeout=180)
    for job_id, (_, field) in cases.items():
        (ev,) = r.events.terminal(job_id)
        assert ev["state"] == "rejected" and ev["error"]["field"] == field, (job_id, ev)
