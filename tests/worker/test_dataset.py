"""test_dataset.py - the dataset path end to end: `perflow submit --prompts FILE --seeds A-B
--shard-size N --output .../{shard}.tar --wait` through the dev broker and a worker into moto's
S3 and file://, every tar member read back with Python's tarfile and grouped by key as
webdataset does, the manifest's lines checked against the objects, and a re-submit with 10 %
of the prompts changed recomputing exactly those samples (the result store's metrics)."""
import hashlib
import json
import os
import time

from conftest import BUCKET
from test_metrics import scrape, value
from test_shard import read_tar
from test_submit import status, submit


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))


def check_dataset(r, out_prefix, read, prompts, seeds, shard_size):
    """The shards and the manifest under out_prefix (read(name) gives an object's bytes)."""
    lines = [json.loads(x) for x in read("manifest.jsonl").decode().splitlines()]
    samples = [(p, s) for p in prompts for s in seeds]
    nshards = (len(samples) + shard_size - 1) // shard_size
    assert [e["shard"] for e in lines] == list(range(nshards))
    got = []
    for e in lines:
        name = "%05d.tar" % e["shard"]
        assert e["url"] == out_prefix + name and e["state"] == "succeeded", e
        data = read(name)
        assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["size"]
        assert e["model"]["base"]["url"] == r.model and len(e["model"]["base"]["digest"]) == 64
        assert e["settings"]["width"] == 64 and e["samples"] == min(shard_size, len(samples) - shard_size * e["shard"])
        names, groups = read_tar(data)
        assert names == sorted(names)
        for i, g in enumerate(groups):
            assert g["__key__"] == "%06d%04d" % (e["shard"], i) and set(g) == {"__key__", "json", "png", "txt"}
            meta = json.loads(g["json"])
            assert meta["prompt"] == g["txt"].decode() and meta["job_id"] == e["job_id"]
            assert g["png"][:8] == b"\x89PNG\r\n\x1a\n"
            got.append((meta["prompt"], meta["seed"], meta["from_store"]))
    assert [(p, s) for p, s, _ in got] == samples
    return lines, got


def test_dataset_two_shards_s3_file_and_rerun(rig, tmp_path):
    r = rig(partitions=1)
    root = os.path.join(r.dir, "out")
    w = r.start_worker(PERFLOW_RESULT_STORE_URL="file://" + os.path.join(r.dir, "store"),
                       PERFLOW_RESULT_STORE_PREFIX="rs-" + os.path.basename(r.dir), PERFLOW_MAX_BATCH="8",
                       PERFLOW_METRICS_LISTEN="127.0.0.1:0", PERFLOW_FILE_OUTPUT_ROOT=root)
    (ev,) = w.wait_event("metrics.listening")
    m = "http://127.0.0.1:%d" % ev["port"]
    w.wait_event("kafka.assigned", timeout=30)
    prompts = ["a photo of a cat, number %d" % i for i in range(50)]
    pfile = tmp_path / "prompts.jsonl"
    write_prompts(pfile, prompts)
    tag = os.path.basename(r.dir)
    s3_prefix = "s3://%s/ds-%s/" % (BUCKET, tag)
    common = ["--model-url", r.model, "--delta-url", r.delta, "--width", "64", "--height", "64", "--seeds", "0-1",
              "--shard-size", "50", "--wait", "--timeout", "600"]
    t0 = time.time()
    rc, out, err = submit(r, "--prompts", str(pfile), "--output", s3_prefix + "{shard}.tar", *common, timeout=900)
    first_s = time.time() - t0
    assert rc == 0, out + err
    assert "2/2 shards succeeded; 100 samples (0 from the result store)" in out, out
    assert "samples/s" in err and "ETA" in err and "samples 100/100" in err, err

    def s3_read(name):
        return r.object("ds-%s/%s" % (tag, name))
    check_dataset(r, s3_prefix, s3_read, prompts, [0, 1], 50)
    batch = out.split()[1].rstrip(":")
    rc, sout, serr = status(r, "--batch", batch)
    assert rc == 0 and "dataset %s: 2 shards, 100 of 100 samples done (2 of 2 shards succeeded)" % batch in sout, sout + serr
    rc, sout, serr = status(r, "--json", "--batch", batch)
    st = json.loads(sout)
    assert (st["shards"], st["samples"], st["samples_done"], st["succeeded"]) == (2, 100, 100, 2), st
    s = scrape(m)
    assert value(s, "perflow_result_store_misses_total") == 100 and value(s, "perflow_result_store_hits_total") == 0

    # the same dataset into file://: every sample from the store
    file_prefix = "file://%s/ds/" % root
    rc, out, err = submit(r, "--prompts", str(pfile), "--output", file_prefix + "{shard}.tar", *common, timeout=900)
    assert rc == 0 and "100 samples (100 from the result store)" in out, out + err
    check_dataset(r, file_prefix, lambda name: open(os.path.join(root, "ds", name), "rb").read(), prompts, [0, 1], 50)
    assert value(scrape(m), "perflow_result_store_hits_total") == 100

    # 10 % of the prompts changed: exactly their samples are computed
    changed = list(prompts)
    for i in range(0, 50, 10):
        changed[i] = "a photo of a dog, number %d" % i
    write_prompts(pfile, changed)
    t0 = time.time()
    rc, out, err = submit(r, "--prompts", str(pfile), "--output", s3_prefix + "{shard}.tar", *common, timeout=900)
    rerun_s = time.time() - t0
    assert rc == 0 and "100 samples (90 from the result store)" in out, out + err
    _, got = check_dataset(r, s3_prefix, s3_read, changed, [0, 1], 50)
    assert sorted({p for p, _, cached in got if not cached}) == sorted(changed[i] for i in range(0, 50, 10))
    s = scrape(m)
    assert value(s, "perflow_result_store_misses_total") == 110 and value(s, "perflow_result_store_hits_total") == 190
    print("dataset 2 x 50 samples at 64 px: first run %.1f s, re-run with 10 %% changed %.1f s" % (first_s, rerun_s))


def test_dataset_submit_refuses_what_it_cannot_shard(tmp_path):
    """Checked before anything is sent (--dry-run needs no broker)."""
    import subprocess
    from test_submit import PERFLOW
    pfile = tmp_path / "p.jsonl"
    write_prompts(pfile, ["a", "b", "c"])
    base = [PERFLOW, "submit", "--dry-run", "--no-redis", "--model-url", "https://m.example/tiny", "--prompts",
            str(pfile), "--seeds", "1-3"]

    def run(*args):
        p = subprocess.run(base + list(args), capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr
    rc, out, err = run("--shard-size", "4", "--output", "s3://b/p/{shard}.tar")
    jobs = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and [j["output"]["url"] for j in jobs] == ["s3://b/p/00000.tar", "s3://b/p/00001.tar",
                                                              "s3://b/p/00002.tar"]
    assert [len(j["samples"]) for j in jobs] == [4, 4, 1] and [j["shard"] for j in jobs] == [0, 1, 2]
    assert run("--shard-size", "4", "--output", "s3://b/p/{shard}.tar")[1] == out  # stable for the same inputs
    rc, out, err = run("--shard-size", "4", "--output", "s3://b/p/x.tar")
    assert rc == 1 and "{shard}" in err, err
    rc, out, err = run("--shard-size", "4", "--output", "s3://b/p/{shard}.png")
    assert rc == 1 and "output.url" in err and ".tar" in err, err
    rc, out, err = run("--shard-size", "0", "--output", "s3://b/p/{shard}.tar")
    assert rc == 2, err
    rc, out, err = run("--shard-size", "4", "--output", "s3://b/p/{shard}.tar", "--refine", "--controlnet-url",
                       "https://m.example/cn")
    assert rc == 1 and "--refine" in err, err
