"""test_security.py - the worker's side of the security review (issue 19): the hub
token's hosts, the output allow lists, the per-job limits, hostile images, crash
counts and the metrics endpoint's limits. Each test reproduces a finding."""
import json
import os
import subprocess
import time

from conftest import BUCKET, ROOT, WORKER, redis_cli, servers


def run_worker(env, timeout=30):
    return subprocess.run([WORKER], env=env, capture_output=True, text=True, timeout=timeout)


def test_token_without_hub_token_hosts_refuses_to_start(tmp_path):
    env = servers.clean_env()
    env.update({"PERFLOW_HUB_TOKEN": "hub-token-never-sent", "PERFLOW_CACHE_DIR": str(tmp_path / "cache"),
                "PERFLOW_BROKERS": "127.0.0.1:9", "PERFLOW_REDIS": "127.0.0.1:9", "PERFLOW_DEVICE": "cpu"})
    r = run_worker(env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line["event"] == "worker.config_error" and "hub_token_hosts" in line["msg"], line
    assert "hub-token-never-sent" not in r.stderr


def test_output_allow_lists_and_job_limits(rig):
    """s3:// outputs only under s3_output_prefixes (the review: a job could
    overwrite the model bucket), and a job over max_pixels, max_steps or
    max_images rejected naming the field and the limit."""
    r = rig(partitions=1)
    cases = [  # (job id, changes, field, words of the message)
        ("s-models", {"output": {"url": "s3://models/{job_id}.png"}}, "output.url", "s3_output_prefixes"),
        ("s-pixels", {"width": 128}, "width", "max_pixels of 4096"),
        ("s-steps", {"steps": 9}, "steps", "max_steps of 8"),
        ("s-images", {"num_images": 3, "output": {"url": "s3://%s/{job_id}/{index}.png" % BUCKET}}, "num_images",
         "max_images of 2"),
    ]
    for job_id, change, _, _ in cases:
        r.produce(r.job(job_id, **change))
    r.produce(r.job("s-good"))
    r.start_worker(PERFLOW_MAX_PIXELS="4096", PERFLOW_MAX_STEPS="8", PERFLOW_MAX_IMAGES="2")
    r.events.wait_terminal([c[0] for c in cases] + ["s-good"], timeout=120)
    for job_id, _, field, words in cases:
        ev = r.events.terminal(job_id)[0]
        assert ev["state"] == "rejected" and ev["error"]["field"] == field, ev
        assert words in ev["error"]["message"], ev
    assert r.events.terminal("s-good")[0]["state"] == "succeeded"
    # neither allow list set: every output is refused, naming the settings
    r2 = rig(partitions=1)
    r2.produce(r2.job("s-unset"))
    r2.start_worker(PERFLOW_S3_OUTPUT_PREFIXES="")
    r2.events.wait_terminal(["s-unset"], timeout=120)
    ev = r2.events.terminal("s-unset")[0]
    assert ev["state"] == "rejected" and ev["error"]["field"] == "output.url", ev
    assert "s3_output_prefixes" in ev["error"]["message"], ev


def test_job_over_max_job_seconds_fails_with_timeout(rig):
    r = rig(partitions=1)
    r.produce(r.job("s-slow", width=384, height=384, steps=50))
    w = r.start_worker(PERFLOW_MAX_JOB_SECONDS="1")
    r.events.wait_terminal(["s-slow"], timeout=120)
    ev = r.events.terminal("s-slow")[0]
    assert ev["state"] == "failed" and ev["error"]["code"] == "timeout", ev
    assert "max_job_seconds" in ev["error"]["message"] and not ev["error"]["retryable"]
    assert w.proc.poll() is None


def test_submit_dry_run_warns_outside_output_allow_lists():
    perflow = os.path.join(os.path.dirname(WORKER), "perflow")
    args = [perflow, "submit", "--model-url", "https://hub.example.com/m", "--prompt", "a cat", "--dry-run",
            "--no-redis", "--output"]
    env = servers.clean_env()
    # nothing known here: no warning (the workers' own settings decide)
    r = subprocess.run(args + ["s3://models/{job_id}.png"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    env["PERFLOW_S3_OUTPUT_PREFIXES"] = "renders/out"
    r = subprocess.run(args + ["s3://models/{job_id}.png"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert "warning" in r.stderr and "s3_output_prefixes" in r.stderr, r.stderr
    r = subprocess.run(args + ["s3://renders/out/{job_id}.png"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_scratch_files_in_a_private_directory(rig, tmp_path):
    """The review: /tmp/perflow-<pid>-<job>-...png, a predictable name opened with
    fopen("wb") in a shared folder. Now the worker works in a 0700 directory of
    its own inside work_dir (mkdtemp), with files made by mkstemps, and removes
    it at exit; its process is not dumpable (no core file holds a secret)."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    r = rig(partitions=1)
    w = r.start_worker(PERFLOW_WORK_DIR=str(shared))
    w.wait_event("worker.started")
    entries = os.listdir(shared)
    assert len(entries) == 1 and entries[0].startswith("perflow-worker-"), entries
    private = shared / entries[0]
    assert os.stat(private).st_mode & 0o777 == 0o700
    assert open("/proc/%d/limits" % w.proc.pid).read().split("Max core file size")[1].split()[0] == "0"
    r.produce(r.job("s-scratch"))
    r.events.wait_terminal(["s-scratch"], timeout=120)
    assert r.events.terminal("s-scratch")[0]["state"] == "succeeded"
    assert os.listdir(shared) == [entries[0]] and os.listdir(private) == []
    w.stop()
    assert os.listdir(shared) == []


def listening_on(port):
    """The local addresses (hex, as /proc/net/tcp writes them) listening on port."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.split(":")[1], 16) == port:
                    out.append(local.split(":")[0])
    return out


def test_metrics_idle_clients_do_not_lock_out_healthz(rig):
    """The review: 16 idle connections locked /healthz out (a health probe then
    kills a healthy worker), and ":PORT" served every interface."""
    import socket
    import urllib.request
    r = rig(partitions=1)
    port = servers.free_port()
    w = r.start_worker(PERFLOW_METRICS_LISTEN=":%d" % port)
    w.wait_event("metrics.listening")
    assert listening_on(port) == ["0100007F"], listening_on(port)  # 127.0.0.1 only
    idle = []
    try:
        # 64 idle clients: 56 from one address (over the per-address limit), 8 from others
        for i in range(64):
            s = socket.socket()
            s.bind(("127.0.0.2" if i < 56 else "127.0.1.%d" % (i - 55), 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                pass
            idle.append(s)
        time.sleep(0.5)
        t0 = time.time()
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=3) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
        assert time.time() - t0 < 3
        # idle connections are closed after a short time (5 s)
        time.sleep(7)
        closed = 0
        for s in idle[56:]:
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
        assert closed == 8, closed
    finally:
        for s in idle:
            s.close()
    assert w.proc.poll() is None


def test_cancel_stops_a_running_download(rig, work, tmp_path):
    """The review: the cache's progress hook checked a flag the worker never set,
    so a cancelled (or late) job's download ran on. Now the cancel is seen within
    cancel_poll_ms and the partial file stays for a resume."""
    import shutil
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(os.path.join(ROOT, "tests", "data", "models", "tiny-sd15-delta", "unet",
                             "diffusion_pytorch_model.safetensors"), www / "delta.safetensors")
    faults = servers.start_fault_server(str(tmp_path), www=str(www))
    try:
        r = rig(partitions=1)
        cache = os.path.join(r.dir, "cache")
        job = r.job("s-cancel-dl")
        # the delta (1.6 MB) at 20 kB/s: over a minute
        job["model"]["delta"]["url"] = "http://127.0.0.1:%d/slow/20000/delta.safetensors" % faults.port
        r.produce(job)
        r.start_worker(PERFLOW_CACHE_DIR=cache)
        r.events.wait(lambda: r.events.of("s-cancel-dl", "downloading"), 60, "downloading")
        time.sleep(2)
        redis_cli(r.redis, "SET", "pf:job:s-cancel-dl:cancel", "1", "EX", "600")
        t0 = time.time()
        r.events.wait_terminal(["s-cancel-dl"], timeout=20)
        ev = r.events.terminal("s-cancel-dl")[0]
        assert ev["state"] == "cancelled", ev.get("error")
        assert time.time() - t0 < 10
        parts = [p for p in os.listdir(os.path.join(cache, "tmp")) if p.endswith(".part")]
        assert parts and all(os.path.getsize(os.path.join(cache, "tmp", p)) > 0 for p in parts), parts
    finally:
        faults.stop()


def test_job_that_kills_its_workers_is_dead_lettered_as_poison(rig, tmp_path):
    """The review: a job whose model kills the worker (out of memory) was handed
    to every worker in turn. Each takeover from a worker that died running it
    counts (Redis, by job id); at max_crashes (2) the job fails with code
    poison and goes to the dead-letter topic without running again."""
    import shutil
    import signal
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(os.path.join(ROOT, "tests", "data", "models", "tiny-sd15-delta", "unet",
                             "diffusion_pytorch_model.safetensors"), www / "delta.safetensors")
    faults = servers.start_fault_server(str(tmp_path), www=str(www))
    try:
        r = rig(partitions=1)
        job = r.job("s-poison")
        # a download that takes a minute: the worker is killed while "running" it
        job["model"]["delta"]["url"] = "http://127.0.0.1:%d/slow/20000/delta.safetensors" % faults.port
        r.produce(job)
        cache = os.path.join(r.dir, "cache")
        for n in range(2):  # two workers die holding the job
            w = r.start_worker(PERFLOW_CACHE_DIR=cache)
            r.events.wait(lambda: len(r.events.of("s-poison", "downloading")) > n, 60, "downloading #%d" % (n + 1))
            w.signal(signal.SIGKILL)
            w.wait()
        w = r.start_worker(PERFLOW_CACHE_DIR=cache)
        r.events.wait_terminal(["s-poison"], timeout=60)
        ev = r.events.terminal("s-poison")[0]
        assert ev["state"] == "failed" and ev["error"]["code"] == "poison", ev
        assert not ev["error"]["retryable"] and "max_crashes 2" in ev["error"]["message"], ev
        assert len(r.events.of("s-poison", "downloading")) == 2  # the third worker did not run it
        r.events.wait(lambda: r.events.dead, 20, "a dead letter")
        assert r.events.dead[0][1]["perflow-error-code"] == "poison"
        assert w.events("job.poison", "s-poison")
        assert w.proc.poll() is None
    finally:
        faults.stop()


def test_condition_image_over_the_cap_refused_from_its_header(rig, work):
    """The review: a 521 KB PNG of 16384 x 10922 decoded to 514 MiB, and every
    condition image was held at full size until its batch ended. A condition
    image over 16 x the output's pixels (or max_input_pixels) is refused from
    its header, naming the field; one within is scaled to the job's size."""
    from PIL import Image
    images = os.path.join(work, "www", "images")
    Image.new("RGB", (512, 512), (200, 30, 90)).save(os.path.join(images, "big-control.png"))  # 64 x a 64 px job
    Image.new("RGB", (128, 128), (30, 200, 90)).save(os.path.join(images, "mid-control.png"))
    r = rig(partitions=1)
    base = "http://127.0.0.1:%d/images/" % r.nginx.port
    for job_id, name in (("s-img-big", "big-control.png"), ("s-img-ok", "mid-control.png")):
        r.produce(r.job(job_id, control=[{"controlnet": {"url": r.controlnet}, "image": {"url": base + name}}]))
    r.start_worker()
    r.events.wait_terminal(["s-img-big", "s-img-ok"], timeout=120)
    ev = r.events.terminal("s-img-big")[0]
    assert ev["state"] == "rejected" and ev["error"]["field"] == "control[0].image", ev
    assert "max_input_pixels" in ev["error"]["message"] and "512x512" in ev["error"]["message"], ev
    assert r.events.terminal("s-img-ok")[0]["state"] == "succeeded"
