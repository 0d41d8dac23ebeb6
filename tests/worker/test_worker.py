"""test_worker.py - bin/perflow-worker end to end: jobs produced with confluent-kafka,
statuses and dead letters read back with it, outputs read with boto3 from moto's S3,
leases and cancel flags in a real Redis, the model (and the refiner's ControlNet)
fetched from nginx through the cache. Refined images are compared with what
`perflow generate --refine` writes for the same settings."""
import json
import os
import signal
import struct
import subprocess
import threading
import time
import zlib

import jsonschema
import pytest

from conftest import BIN, BUCKET, ROOT, fail_puts, redis_cli, sha256

SCHEMAS = os.path.join(ROOT, "schemas")
STATUS_SCHEMA = json.load(open(os.path.join(SCHEMAS, "status.v1.json")))
JOB_SCHEMA = json.load(open(os.path.join(SCHEMAS, "job.v1.json")))


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def png_pixels(data):
    """The concatenated IDAT chunks: the pixels, without the text chunks (which name the job)."""
    png_size(data)
    out, i = b"", 8
    while i < len(data):
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        if kind == b"IDAT":
            out += data[i + 8:i + 8 + n]
        i += 12 + n
    return out


def png_chunks(data):
    png_size(data)
    i = 8
    while i < len(data):
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        yield kind, data[i + 8:i + 8 + n]
        i += 12 + n


def png_text(data):
    """The tEXt chunks as a dict."""
    return dict(c.decode("latin-1").split("\0", 1) for k, c in png_chunks(data) if k == b"tEXt")


def png_rgb(data):
    """The pixels of an 8-bit RGB non-interlaced PNG (what pf_png_write writes), unfiltered:
    (width, height, bytes). Plain Python: the test venv has no image library."""
    w, h = png_size(data)
    assert data[24:29] == b"\x08\x02\x00\x00\x00", "not 8-bit RGB, non-interlaced"
    raw = zlib.decompress(b"".join(c for k, c in png_chunks(data) if k == b"IDAT"))
    stride, bpp, out, prev = w * 3, 3, bytearray(), bytearray(w * 3)
    for y in range(h):
        f, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = row[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1:
                row[x] = (row[x] + a) & 255
            elif f == 2:
                row[x] = (row[x] + b) & 255
            elif f == 3:
                row[x] = (row[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            else:
                assert f == 0, "bad PNG filter %d" % f
        out += row
        prev = row
    return w, h, bytes(out)


def assert_u8_close(what, got, want):
    """Equal 8-bit images but for at most 1 level on at most 0.1 % of values (tests/test_refine.c)."""
    assert got[:2] == want[:2], "%s: %s != %s" % (what, got[:2], want[:2])
    diff = [abs(a - b) for a, b in zip(got[2], want[2]) if a != b]
    assert not diff or (max(diff) <= 1 and len(diff) <= len(want[2]) / 1000), \
        "%s: %d values differ, by up to %d" % (what, len(diff), max(diff))


def cli_images(r, seed, num_images=1, refine=True, prompt="a photo of a cat", refine_size=128, refine_prompt=None):
    """What `perflow generate [--refine]` writes for Rig.job / Rig.refine_job's settings: each image's pixels."""
    models = os.path.join(ROOT, "tests", "data", "models")
    out = os.path.join(r.dir, "cli-%s.png" % sha256(repr((seed, num_images, refine, prompt, refine_size,
                                                           refine_prompt)).encode())[:12])
    argv = [os.path.join(BIN, "perflow"), "generate", "--model", os.path.join(models, "tiny-sd15"),
            "--delta", os.path.join(models, "tiny-sd15-delta", "unet", "diffusion_pytorch_model.safetensors"),
            "--prompt", prompt, "--seed", str(seed), "--width", "64", "--height", "64", "--steps", "4",
            "--guidance", "4.5", "--num-images", str(num_images), "--device", "cpu", "--threads", "1", "--out", out]
    if refine:
        argv += ["--refine", "--controlnet", os.path.join(models, "tiny-sd15-controlnet"),
                 "--refine-size", str(refine_size)]
        if refine_prompt is not None:
            argv += ["--refine-prompt", refine_prompt]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # as the worker runs
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)
    paths = [out] if num_images == 1 else [out[:-4] + "-%d.png" % i for i in range(num_images)]
    return [png_rgb(open(p, "rb").read()) for p in paths]


def check_statuses(events):
    for ev in events.statuses:
        jsonschema.validate(ev, STATUS_SCHEMA)


def long_job(rig, job_id, steps=14, side=256):
    """A job of a few seconds on the CPU (the tiny model at 256 x 256)."""
    return rig.job(job_id, width=side, height=side, steps=steps)


def test_happy_path_events_and_outputs(rig):
    r = rig()
    job = r.job("happy-1", num_images=2, seed=11, negative_prompt="blurry")
    jsonschema.validate(job, JOB_SCHEMA)
    r.produce(job)
    w = r.start_worker()
    r.events.wait_terminal(["happy-1"], timeout=60)
    states = [e["state"] for e in r.events.of("happy-1")]
    assert states[0] == "accepted" and states[1] == "downloading", states
    assert "running" in states and states.index("running") < states.index("uploading") < states.index("succeeded")
    assert states[-1] == "succeeded" and states.count("succeeded") == 1, states
    running = r.events.of("happy-1", "running")
    assert running[-1]["step"] == running[-1]["steps"] == 4
    assert {e["stage"] for e in running} == {"generate"}
    done = r.events.of("happy-1", "succeeded")[0]
    assert done["attempt"] == 1 and done["worker_id"] == w.events("worker.started")[0]["worker_id"]
    assert set(done["timings"]) >= {"download_ms", "load_ms", "engine_ms", "upload_ms", "total_ms"}
    assert [o["index"] for o in done["outputs"]] == [0, 1]
    for o in done["outputs"]:
        assert o["url"] == "s3://%s/happy-1/%d-11.png" % (BUCKET, o["index"]) and o["seed"] == 11
        assert o["stage"] == "base"
        data = r.object("happy-1/%d-11.png" % o["index"])
        assert sha256(data) == o["sha256"] and len(data) == o["size"]
        assert png_size(data) == (64, 64)
    check_statuses(r.events)
    # one structured line per event, job lines carry the job id
    for line in w.lines():
        assert "event" in line and "ts" in line
        if line["event"].startswith("job."):
            assert line.get("job_id") == "happy-1", line
    # the offset is committed once the terminal status is acknowledged
    r.events.wait(lambda: sum(v for v in r.committed().values() if v > 0) == 1, 15, "the committed offset")


def test_batched_jobs_share_one_engine_call(rig):
    r = rig(partitions=1)
    same = ["same-%d" % i for i in range(2)]
    for i in same:
        r.produce(r.job(i))  # same model, size, prompt, seed: the same images
    # same model, size and settings, but another prompt, negative prompt, seed and image count
    mix = r.job("mix-0", prompt="a red car", negative_prompt="blurry", seed=3, num_images=2)
    r.produce(mix)
    ids = same + ["mix-0"]
    w = r.start_worker(PERFLOW_MAX_BATCH=4, PERFLOW_BATCH_WAIT_MS=300)
    r.events.wait_terminal(ids, timeout=60)
    starts = w.events("engine.start")
    assert len(starts) == 1, starts
    assert (starts[0]["jobs"], starts[0]["items"], starts[0]["images"]) == (3, 2, 3), starts
    outs = {i: r.events.of(i, "succeeded")[0] for i in ids}
    assert all(o["batch_jobs"] == 3 for o in outs.values())
    keys = ["same-0/0-7.png", "same-1/0-7.png", "mix-0/0-3.png", "mix-0/1-3.png"]
    for k in keys:
        job_id = k.split("/")[0]
        (o,) = [o for o in outs[job_id]["outputs"] if o["url"].endswith(k)]
        assert sha256(r.object(k)) == o["sha256"]
    pixels = {k: png_pixels(r.object(k)) for k in keys}
    assert pixels["same-0/0-7.png"] == pixels["same-1/0-7.png"]  # one image, two keys
    assert len({pixels[k] for k in keys[1:]}) == 3  # each job its own images
    # A job batched with others gets the pixels it gets alone.
    mix["job_id"] = "alone-0"
    r.produce(mix)
    r.events.wait_terminal(["alone-0"], timeout=60)
    starts = w.events("engine.start")
    assert len(starts) == 2 and starts[1]["jobs"] == 1, starts
    for i in range(2):
        assert png_pixels(r.object("alone-0/%d-3.png" % i)) == pixels["mix-0/%d-3.png" % i]


INVALID = [  # (job id, change, field named in the rejection)
    ("bad-width", {"width": 60}, "width"),
    ("bad-steps", {"steps": 0}, "steps"),
    ("bad-unknown", {"negative_promt": "x"}, "negative_promt"),
    ("bad-prompt", {"prompt": "x" * 5000}, "prompt"),
    ("bad-guidance", {"guidance": "high"}, "guidance"),
    ("bad-base", {"model": {"base": {"url": "ftp://127.0.0.1/m"}}}, "model.base.url"),
    ("bad-sha", {"model": {"base": {"url": "https://h/m"}, "delta": {"url": "https://h/d.safetensors",
                                                                     "sha256": "xyz"}}}, "model.delta.sha256"),
    ("bad-output", {"output": {"url": "s3://renders/{bogus}.png"}}, "output.url"),
    ("bad-deadline", {"deadline": "tomorrow"}, "deadline"),
    ("bad-images", {"num_images": 2, "output": {"url": "s3://renders/{job_id}.png"}}, "output.url"),
]


def test_poison_and_invalid_jobs_rejected_or_dead_lettered(rig):
    r = rig()
    r.produce(b"\x00\xffnot json at all", key="poison")
    r.produce(r.job("../escape"))  # no usable job id: dead letter only
    for job_id, change, _ in INVALID:
        j = r.job(job_id)
        j.update(change)
        r.produce(j)
    old_cn = r.job("bad-old-cn")  # the first draft of text-to-image ControlNets: valid, not run
    old_cn["model"]["controlnet"] = {"url": "https://h/cn", "image_url": "https://h/i.png"}
    r.produce(old_cn)
    r.produce(r.job("good-after"))
    w = r.start_worker()
    ids = [i for i, _, _ in INVALID] + ["bad-old-cn", "good-after"]
    r.events.wait_terminal(ids, timeout=60)
    for job_id, _, field in INVALID:
        (ev,) = r.events.terminal(job_id)
        assert ev["state"] == "rejected" and ev["error"]["code"] == "invalid_job", ev
        assert ev["error"]["field"] == field, ev
        assert not r.events.of(job_id, "accepted")
    (lev,) = r.events.terminal("bad-old-cn")
    assert lev["state"] == "rejected" and lev["error"]["code"] == "unsupported" and lev["error"]["field"] == "model.controlnet"
    assert '"control"' in lev["error"]["message"]
    assert r.events.terminal("good-after")[0]["state"] == "succeeded"
    r.events.wait(lambda: len(r.events.dead) == 13, 15, "13 dead letters")
    by_code = {}
    for value, headers in r.events.dead:
        by_code.setdefault(headers["perflow-error-code"], []).append((value, headers))
        assert headers["perflow-source-topic"] == r.jobs_topics[0] and "perflow-source-offset" in headers
    assert len(by_code["invalid_message"]) == 2 and len(by_code["invalid_job"]) == 10
    assert any(v == b"\x00\xffnot json at all" for v, _ in by_code["invalid_message"])  # the original bytes
    check_statuses(r.events)
    assert w.proc.poll() is None  # alive


def test_transient_s3_failures_retried(rig):
    r = rig()
    w = r.start_worker(PERFLOW_S3_ATTEMPTS=1, PERFLOW_RETRIES=4)
    w.wait_event("kafka.assigned")
    fail_puts(r.s3proxy, 2)
    r.produce(r.job("flaky-s3"))
    r.events.wait_terminal(["flaky-s3"], timeout=60)
    (ev,) = r.events.terminal("flaky-s3")
    assert ev["state"] == "succeeded" and ev["retries"] == 2, ev
    assert len(w.events("job.upload_failed", "flaky-s3")) == 2
    assert sha256(r.object("flaky-s3/0-7.png")) == ev["outputs"][0]["sha256"]


def test_retries_exhausted_requeue_then_dead_letter(rig):
    r = rig()
    w = r.start_worker(PERFLOW_S3_ATTEMPTS=1, PERFLOW_RETRIES=1, PERFLOW_MAX_ATTEMPTS=2)
    w.wait_event("kafka.assigned")
    fail_puts(r.s3proxy, 1000)
    try:
        r.produce(r.job("doomed"))
        r.events.wait(lambda: any(not e["error"]["retryable"] for e in r.events.of("doomed", "failed")), 60,
                      "the final failure")
    finally:
        fail_puts(r.s3proxy, 0)
    fails = r.events.of("doomed", "failed")
    assert [(e["attempt"], e["error"]["retryable"]) for e in fails] == [(1, True), (2, False)], fails
    assert fails[0]["next_attempt"] == 2 and fails[0]["error"]["code"] == "upload"
    r.events.wait(lambda: len(r.events.dead) == 1, 15, "the dead letter")
    value, headers = r.events.dead[0]
    assert headers["perflow-attempt"] == "2" and headers["perflow-error-code"] == "upload"
    assert json.loads(value)["attempt"] == 2  # the re-enqueued message, as it was delivered
    check_statuses(r.events)


def test_duplicate_delivery_of_finished_job_not_recomputed(rig):
    r = rig()
    w = r.start_worker()
    r.produce(r.job("twice"))
    r.events.wait_terminal(["twice"], timeout=60)
    first = r.events.terminal("twice")[0]
    mtime = r.moto.client.head_object(Bucket=BUCKET, Key="twice/0-7.png")["LastModified"]
    r.produce(r.job("twice"))  # delivered again
    r.events.wait(lambda: len(r.events.terminal("twice")) == 2, 30, "the replayed status")
    again = r.events.terminal("twice")[1]
    assert again["replayed"] is True and again["outputs"] == first["outputs"]
    assert len(r.events.of("twice", "accepted")) == 1
    assert len(w.events("engine.start")) == 1 and len(w.events("job.replayed", "twice")) == 1
    assert r.moto.client.head_object(Bucket=BUCKET, Key="twice/0-7.png")["LastModified"] == mtime


def test_cancel_before_and_during_and_deadline(rig):
    r = rig()
    redis_cli(r.redis, "SET", "pf:job:cancel-early:cancel", "1", "EX", "600")
    r.produce(r.job("cancel-early"))
    r.produce(r.job("too-late", deadline="2001-01-01T00:00:00Z"))
    r.produce(long_job(r, "cancel-mid", steps=40))
    w = r.start_worker()
    r.events.wait(lambda: r.events.of("cancel-mid", "running"), 60, "cancel-mid running")
    redis_cli(r.redis, "SET", "pf:job:cancel-mid:cancel", "1", "EX", "600")
    r.events.wait_terminal(["cancel-early", "too-late", "cancel-mid"], timeout=60)
    assert [e["state"] for e in r.events.of("cancel-early")] == ["cancelled"]
    (late,) = r.events.of("too-late")
    assert late["state"] == "failed" and late["error"]["code"] == "deadline" and not late["error"]["retryable"]
    mid = r.events.terminal("cancel-mid")[0]
    assert mid["state"] == "cancelled"
    assert r.events.of("cancel-mid", "running")[-1]["step"] < 40
    assert "Contents" not in r.moto.client.list_objects_v2(Bucket=BUCKET, Prefix="cancel-mid/")
    assert not r.events.dead
    check_statuses(r.events)
    assert w.proc.poll() is None


def test_job_longer_than_max_poll_interval_no_rebalance(rig):
    r = rig()
    w = r.start_worker(PERFLOW_KAFKA_SESSION_TIMEOUT_MS=3000, PERFLOW_KAFKA_MAX_POLL_INTERVAL_MS=3000,
                       PERFLOW_KAFKA_HEARTBEAT_INTERVAL_MS=500)
    w.wait_event("kafka.assigned")
    # longer than max.poll.interval.ms (3 s) with room to spare on a fast CPU backend (64
    # steps at 256 px took 2.8 s once the CPU kernels got faster: too short to prove anything)
    r.produce(long_job(r, "slow", steps=100, side=384))
    r.events.wait_terminal(["slow"], timeout=90)
    (ev,) = r.events.terminal("slow")
    assert ev["state"] == "succeeded" and ev["timings"]["engine_ms"] > 3000, ev["timings"]
    assert len(r.events.of("slow", "accepted")) == 1
    assert not w.events("kafka.revoked") and len(w.events("kafka.assigned")) == 1
    assert not [e for e in w.events("kafka.error") if "MAX_POLL" in e.get("msg", "")]


def test_sigterm_drains_the_running_job(rig):
    r = rig()
    w = r.start_worker()
    r.produce(long_job(r, "drain-me", steps=10))
    r.events.wait(lambda: r.events.of("drain-me", "running"), 60, "drain-me running")
    w.signal(signal.SIGTERM)
    assert w.wait(60) == 0
    r.events.wait_terminal(["drain-me"], timeout=10)
    assert r.events.terminal("drain-me")[0]["state"] == "succeeded"
    assert sum(v for v in r.committed().values() if v > 0) == 1  # its offset was stored and committed
    assert w.events("worker.draining") and not w.events("job.abandoned")


def test_second_signal_abandons_without_offset(rig):
    r = rig()
    w = r.start_worker()
    r.produce(long_job(r, "abandon-me", steps=40))
    r.events.wait(lambda: r.events.of("abandon-me", "running"), 60, "abandon-me running")
    w.signal(signal.SIGTERM)
    time.sleep(0.3)
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 1
    r.events.poll(1)
    assert not r.events.terminal("abandon-me")
    assert all(v <= 0 for v in r.committed().values())  # nothing stored: it will be delivered again
    assert redis_cli(r.redis, "EXISTS", "pf:job:abandon-me:lease") == "0"  # released for the next worker
    assert w.events("job.abandoned", "abandon-me")


def test_killed_worker_job_redelivered_and_completed(rig):
    r = rig()
    a = r.start_worker(PERFLOW_KAFKA_SESSION_TIMEOUT_MS=3000, PERFLOW_KAFKA_HEARTBEAT_INTERVAL_MS=500)
    r.produce(long_job(r, "survivor", steps=40))  # still running when the kill comes
    r.events.wait(lambda: r.events.of("survivor", "running"), 60, "survivor running")
    a.proc.kill()  # SIGKILL: no status, no offset, the lease left to expire
    a.wait(10)
    b = r.start_worker(PERFLOW_KAFKA_SESSION_TIMEOUT_MS=3000, PERFLOW_KAFKA_HEARTBEAT_INTERVAL_MS=500)
    r.events.wait_terminal(["survivor"], timeout=90)
    (ev,) = r.events.terminal("survivor")
    assert ev["state"] == "succeeded" and ev["worker_id"] != a.events("worker.started")[0]["worker_id"]
    assert len(r.events.of("survivor", "accepted")) == 2  # delivered twice, completed once
    data = r.object("survivor/0-7.png")
    assert sha256(data) == ev["outputs"][0]["sha256"] and png_size(data) == (256, 256)
    assert b.events("job.accepted", "survivor")


def test_three_workers_twenty_jobs_each_once(rig):
    r = rig(partitions=6)
    ws = [r.start_worker(PERFLOW_MAX_BATCH=1) for _ in range(3)]
    # Wait for the group to settle (every partition owned, every worker has some)
    # so that the jobs are not moved between workers by the joins.
    want = {"%s[%d]" % (r.jobs_topics[0], p) for p in range(6)}

    def settled():
        a = [w.assignment() for w in ws]
        return all(a) and set().union(*a) == want and sum(len(x) for x in a) == 6
    r.events.wait(settled, 60, "a settled group")
    ids = ["many-%02d" % i for i in range(20)]
    for i in ids:
        r.produce(r.job(i, prompt="job %s" % i))
    r.events.wait_terminal(ids, timeout=120)
    for i in ids:
        done = r.events.terminal(i)
        assert len(done) == 1 and done[0]["state"] == "succeeded" and "replayed" not in done[0], done
        assert len(r.events.of(i, "accepted")) == 1
        assert sha256(r.object("%s/0-7.png" % i)) == done[0]["outputs"][0]["sha256"]
    assert len({r.events.terminal(i)[0]["worker_id"] for i in ids}) >= 2  # the work was shared


def test_broker_errors_recovered(rig, dev_broker):
    r = rig(on=dev_broker)  # only the mock fails chosen requests
    w = r.start_worker(PERFLOW_KAFKA_RECONNECT_BACKOFF_MAX_MS=500)
    w.wait_event("kafka.assigned")
    # Produce requests fail (the idempotent producer retries them without duplicates) ...
    r.broker.command("errors Produce 4 NOT_ENOUGH_REPLICAS")
    r.produce(long_job(r, "stormy", steps=10))
    r.events.wait(lambda: r.events.of("stormy", "running"), 60, "stormy running")
    # ... and the broker goes away for a while mid-job.
    r.broker.command("down -1")
    try:
        time.sleep(2.5)
    finally:
        r.broker.command("up -1")
    r.events.wait_terminal(["stormy"], timeout=90)
    # Computed once. If the outage outlasted the session, the group took the
    # partition back before the offset was stored: the redelivery then re-posts
    # the recorded result ("replayed") without running the job again.
    done = r.events.terminal("stormy")
    assert [e["state"] for e in done if "replayed" not in e] == ["succeeded"], done
    assert len(r.events.of("stormy", "accepted")) == 1 and len(w.events("engine.start")) == 1
    r.events.wait(lambda: sum(v for v in r.committed().values() if v > 0) >= 1, 30, "the committed offset")
    r.produce(r.job("after-storm"))
    r.events.wait_terminal(["after-storm"], timeout=60)
    assert w.proc.poll() is None


def test_priority_topics_higher_first(rig):
    r = rig(partitions=1, topics=2)
    high, low = r.jobs_topics
    for i in range(4):
        r.produce(r.job("low-%d" % i, prompt="low %d" % i), topic=low)
    for i in range(4):
        r.produce(r.job("high-%d" % i, prompt="high %d" % i), topic=high)
    w = r.start_worker(PERFLOW_MAX_BATCH=1)
    ids = ["low-%d" % i for i in range(4)] + ["high-%d" % i for i in range(4)]
    r.events.wait_terminal(ids, timeout=90)
    order = [e["job_id"] for e in w.events("job.accepted")]
    # Each topic has its own client, so the first job may come from either; once
    # the high topic's backlog is known, it is drained before the low one goes on.
    first_high = next(i for i, j in enumerate(order) if j.startswith("high"))
    assert order[first_high:first_high + 4] == ["high-%d" % i for i in range(4)], order


def test_help_and_bad_settings():
    import subprocess
    from conftest import WORKER
    r = subprocess.run([WORKER, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "PERFLOW_MAX_BATCH" in r.stdout and "--once" in r.stdout
    r = subprocess.run([WORKER], env={"PERFLOW_MAX_BATCH": "zero", "PATH": os.environ["PATH"]},
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "PERFLOW_MAX_BATCH" in r.stderr


def test_once_config_file_and_sd_notify(rig, tmp_path):
    import socket
    r = rig(partitions=1)
    conf = tmp_path / "worker.conf"
    conf.write_text("# a config file\nmax_batch = 2\nlog_level = debug\n")
    r.produce(r.job("once-1"))
    r.produce(r.job("once-2"))
    # systemd's side of sd_notify: a datagram socket named by $NOTIFY_SOCKET, read
    # as it comes (a unix datagram queue holds only a few messages)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    got = []

    def read():
        while not done:
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
    done = False
    reader = threading.Thread(target=read)
    reader.start()
    try:
        w = r.start_worker(args=["--once", "--config", str(conf)], NOTIFY_SOCKET=str(tmp_path / "notify"),
                           WATCHDOG_USEC=400000)
        assert w.wait(60) == 0
    finally:
        done = True
        reader.join()
    r.events.poll(1)
    assert r.events.terminal("once-1") and not r.events.of("once-2")
    assert w.events("kafka.log")  # log_level = debug from the file
    text = "\n".join(got)
    assert "READY=1" in text and "STATUS=" in text and "WATCHDOG=1" in text and "STOPPING=1" in text, got


# ---- the refiner -------------------------------------------------------------


def test_refine_job_end_to_end(rig):
    r = rig()
    job = r.refine_job("refine-1", num_images=2, seed=5)
    jsonschema.validate(job, JOB_SCHEMA)
    r.produce(job)
    r.start_worker()
    r.events.wait_terminal(["refine-1"], timeout=60)
    states = [e["state"] for e in r.events.of("refine-1")]
    assert states[-1] == "succeeded", r.events.of("refine-1")
    # the text-to-image stage's steps, then the refiner's, each to its last step
    running = r.events.of("refine-1", "running")
    stages = [e["stage"] for e in running]
    assert stages == sorted(stages, key=["generate", "refine"].index) and set(stages) == {"generate", "refine"}
    for stage in ("generate", "refine"):
        last = [e for e in running if e["stage"] == stage][-1]
        assert last["step"] == last["steps"] == 4, running
    assert states.index("running") < states.index("uploading")
    done = r.events.of("refine-1", "succeeded")[0]
    assert set(done["timings"]) >= {"download_ms", "load_ms", "engine_ms", "refine_ms", "upload_ms", "total_ms"}
    assert done["batch_jobs"] == 1 and done["refine_batch_jobs"] == 1
    assert [(o["index"], o["stage"]) for o in done["outputs"]] == [(0, "refined"), (1, "refined")]
    want = cli_images(r, 5, num_images=2)
    for o in done["outputs"]:
        key = "refine-1/%d-5.png" % o["index"]
        assert o["url"] == "s3://%s/%s" % (BUCKET, key) and o["seed"] == 5
        data = r.object(key)
        assert sha256(data) == o["sha256"] and len(data) == o["size"]
        assert png_size(data) == (128, 128)
        text = png_text(data)
        assert text["stage"] == "refined" and text["refine_size"] == "128x128" and text["size"] == "64x64"
        assert text["refine_controlnet"] == r.controlnet and text["refine_prompt"] == "best quality"
        assert_u8_close(key, png_rgb(data), want[o["index"]])
    check_statuses(r.events)


def test_refine_keep_base_uploads_both_stages_idempotently(rig):
    r = rig()
    job = r.refine_job("keep-1", refine={"keep_base": True}, seed=8,
                       output={"url": "s3://%s/{job_id}/{stage}-{index}.png" % BUCKET})
    jsonschema.validate(job, JOB_SCHEMA)
    r.produce(job)
    r.start_worker()
    r.events.wait_terminal(["keep-1"], timeout=60)
    done = r.events.of("keep-1", "succeeded")[0]
    assert [(o["url"], o["stage"]) for o in done["outputs"]] == [
        ("s3://%s/keep-1/refined-0.png" % BUCKET, "refined"), ("s3://%s/keep-1/base-0.png" % BUCKET, "base")]
    refined, base = r.object("keep-1/refined-0.png"), r.object("keep-1/base-0.png")
    assert png_size(refined) == (128, 128) and png_size(base) == (64, 64)
    assert png_text(base)["stage"] == "base" and "refine_size" not in png_text(base)
    assert_u8_close("refined", png_rgb(refined), cli_images(r, 8)[0])
    assert_u8_close("base", png_rgb(base), cli_images(r, 8, refine=False)[0])
    # Run again (the result record gone, as after a crash before it was written): the same keys and bytes.
    redis_cli(r.redis, "DEL", "pf:job:keep-1:result")
    r.produce(job)
    r.events.wait(lambda: len(r.events.of("keep-1", "succeeded")) == 2, 60, "the second run")
    again = r.events.of("keep-1", "succeeded")[1]
    assert "replayed" not in again
    assert [(o["url"], o["sha256"]) for o in again["outputs"]] == [(o["url"], o["sha256"]) for o in done["outputs"]]
    check_statuses(r.events)


def test_refine_controlnet_digest_pinned(rig):
    r = rig(partitions=1)
    weights = os.path.join(ROOT, "tests", "data", "models", "tiny-sd15-controlnet", "diffusion_pytorch_model.safetensors")
    digest = sha256(open(weights, "rb").read())
    r.produce(r.refine_job("pinned-ok", refine={"controlnet": {"url": r.controlnet, "sha256": digest}}))
    r.produce(r.refine_job("pinned-bad", refine={"controlnet": {"url": r.controlnet, "sha256": "0" * 64}}))
    r.start_worker()
    r.events.wait_terminal(["pinned-ok", "pinned-bad"], timeout=60)
    assert r.events.terminal("pinned-ok")[0]["state"] == "succeeded"
    (bad,) = r.events.terminal("pinned-bad")
    assert bad["state"] == "failed" and bad["error"]["code"] == "download" and not bad["error"]["retryable"], bad
    assert "refine.controlnet" in bad["error"]["message"] and "digest mismatch" in bad["error"]["message"]
    r.events.wait(lambda: len(r.events.dead) == 1, 15, "the dead letter")
    assert r.events.dead[0][1]["perflow-error-code"] == "download"
    check_statuses(r.events)


REFINE_INVALID = [  # (job id, refine settings, field): the parser's, then the engine's once the model is loaded
    ("rbad-size-max", {"size": 5000}, "refine.size"),
    ("rbad-strength-0", {"strength": 0}, "refine.strength"),
    ("rbad-strength-big", {"strength": 1.5}, "refine.strength"),
    ("rbad-cn", {"controlnet": {"url": "http://127.0.0.1/cn.safetensors"}}, "refine.controlnet.url"),
    ("rbad-size-zero", {"size": 16}, "refine.size"),          # 64 px scaled to 16: rounds to 0
    ("rbad-no-step", {"strength": 0.1}, "refine.strength"),   # int(4 * 0.1) = 0 steps left
]


def test_refine_invalid_settings_rejected(rig):
    r = rig(partitions=1)
    for job_id, refine, _ in REFINE_INVALID:
        r.produce(r.refine_job(job_id, refine=refine))
    old = r.job("rbad-refiner", refiner={"model": {"url": r.model}})
    r.produce(old)
    r.produce(r.refine_job("rgood-after"))
    w = r.start_worker()
    ids = [i for i, _, _ in REFINE_INVALID] + ["rbad-refiner", "rgood-after"]
    r.events.wait_terminal(ids, timeout=60)
    for job_id, _, field in REFINE_INVALID:
        (ev,) = r.events.terminal(job_id)
        assert ev["state"] == "rejected" and ev["error"]["code"] == "invalid_job", ev
        assert ev["error"]["field"] == field and ev["error"]["message"].startswith(field), ev
        assert not r.events.of(job_id, "uploading")
    (ev,) = r.events.terminal("rbad-refiner")
    assert ev["state"] == "rejected" and ev["error"]["code"] == "unsupported" and ev["error"]["field"] == "refiner"
    assert '"refine"' in ev["error"]["message"]
    assert r.events.terminal("rgood-after")[0]["state"] == "succeeded"
    n = len(REFINE_INVALID) + 1
    r.events.wait(lambda: len(r.events.dead) == n, 15, "%d dead letters" % n)
    fields = sorted(h.get("perflow-error-field") for _, h in r.events.dead)
    assert fields == sorted([f for _, _, f in REFINE_INVALID] + ["refiner"])
    check_statuses(r.events)
    assert w.proc.poll() is None


def test_refine_jobs_batched_into_one_call(rig):
    r = rig(partitions=1)
    ids = ["rbatch-0", "rbatch-1"]
    r.produce(r.refine_job(ids[0], seed=21))
    r.produce(r.refine_job(ids[1], seed=22, prompt="a red car", refine={"prompt": "sharp, detailed"}))
    w = r.start_worker(PERFLOW_MAX_BATCH=4, PERFLOW_BATCH_WAIT_MS=300)
    r.events.wait_terminal(ids, timeout=60)
    starts = w.events("engine.start")
    assert [(s["stage"], s["jobs"], s["items"]) for s in starts] == [("generate", 2, 2), ("refine", 2, 2)], starts
    assert (starts[1]["width"], starts[1]["height"]) == (128, 128)
    # each job gets the images it gets alone (its own seed, prompts and generator)
    for job_id, seed, prompt, rprompt in ((ids[0], 21, "a photo of a cat", None),
                                          (ids[1], 22, "a red car", "sharp, detailed")):
        done = r.events.of(job_id, "succeeded")[0]
        assert done["batch_jobs"] == 2 and done["refine_batch_jobs"] == 2, done
        data = r.object("%s/0-%d.png" % (job_id, seed))
        assert sha256(data) == done["outputs"][0]["sha256"]
        assert png_text(data)["refine_prompt"] == (rprompt or "best quality")
        assert_u8_close(job_id, png_rgb(data), cli_images(r, seed, prompt=prompt, refine_prompt=rprompt)[0])
    check_statuses(r.events)
