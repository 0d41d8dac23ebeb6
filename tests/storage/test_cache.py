"""The shared cache: one transfer for concurrent workers, takeover of a dead
worker's lock, damaged blobs, the LRU budget with pins, Redis going away or
holding garbage, and diffusers models (views, cache hits without network)."""
import filecmp
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import PERFLOW, blobs, fault_stats, perflow, redis_cli, servers, sha256


def url(srv, path, host="127.0.0.1"):
    return "http://%s:%d/%s" % (host, srv.port, path)


def url_key(u):
    return hashlib.sha256(("url\n" + u).encode()).hexdigest()


def ns(env):
    return "pf:cache:" + env["PERFLOW_CACHE_HOST_ID"]


def spawn(args, env):
    return subprocess.Popen([PERFLOW, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p, timeout=60):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@pytest.mark.parametrize("with_redis", [True, False])
def test_four_processes_one_transfer(env, faults, www, with_redis):
    if not with_redis:  # nothing listens there: each process says so and goes on alone
        env["PERFLOW_REDIS"] = "127.0.0.1:%d" % servers.free_port()
    name = "f7.bin" if with_redis else "f8.bin"
    path = "/slow/100000/" + name  # 200 kB over two seconds: the four overlap even on a busy machine
    procs = [spawn(["cache", "-v", "fetch", url(faults, path[1:])], env) for _ in range(4)]
    results = [finish(p) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), [e for _, _, e in results]
    paths = {out.strip() for _, out, _ in results}
    assert len(paths) == 1
    assert open(paths.pop(), "rb").read() == open(os.path.join(www, name), "rb").read()
    seen = [s for s in fault_stats(faults) if s["path"] == path]
    assert len(seen) == 1, seen  # exactly one transfer
    errs = "".join(e for _, _, e in results)
    assert "waiting for another worker's download" in errs
    if not with_redis:
        assert "unreachable" in errs and "no cross-worker coordination" in errs


def test_killed_worker_lock_expires_and_is_taken_over(env, faults, www, redis):
    env["PERFLOW_LOCK_TTL_MS"] = "1500"
    path = "/slow/300000/slow.bin"  # 768 KiB at 300 kB/s: about 2.6 s
    u = url(faults, path[1:])
    a = spawn(["cache", "-v", "fetch", u], env)
    deadline = time.time() + 20
    while not [s for s in fault_stats(faults) if s["path"] == path]:  # A holds the lock and downloads
        assert time.time() < deadline and a.poll() is None
        time.sleep(0.05)
    b = spawn(["cache", "-v", "fetch", u], env)
    time.sleep(0.6)
    os.kill(a.pid, signal.SIGKILL)
    killed = time.time()
    a.communicate()
    lock = "%s:lock:%s" % (ns(env), url_key(u))
    assert int(redis_cli(redis, "PTTL", lock)) > 0  # the dead worker's lock is still there
    rc, out, err = finish(b)
    assert rc == 0, err
    assert time.time() - killed >= 0.9  # B waited for the expiry
    assert open(out.strip(), "rb").read() == open(os.path.join(www, "slow.bin"), "rb").read()
    assert "waiting for another worker's download" in err
    assert "taking over a partial download at byte" in err, err
    seen = [s for s in fault_stats(faults) if s["path"] == path]
    assert len(seen) == 2 and seen[0]["range"] is None and seen[1]["range"].startswith("bytes="), seen
    offset = int(seen[1]["range"][6:-1])
    assert offset > 0 and "at byte %d" % offset in err


def test_corrupted_blob_detected_and_fetched_again(env, nginx, www):
    u = url(nginx, "f9.bin")
    data = open(os.path.join(www, "f9.bin"), "rb").read()
    r = perflow(["cache", "fetch", u], env)
    blob = r.stdout.strip()
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:  # same size, one byte changed
        f.seek(1000)
        f.write(bytes([data[1000] ^ 0xFF]))
    r = perflow(["cache", "verify"], env)
    assert r.returncode == 1 and "corrupt, removed" in r.stdout and "1 damaged blob" in r.stderr
    assert not os.path.exists(blob)
    r = perflow(["cache", "fetch", u], env)
    assert r.returncode == 0 and open(r.stdout.strip(), "rb").read() == data
    assert len([l for l in nginx.access() if l.split()[1] == "/f9.bin"]) == 2
    # a truncated blob (wrong size) is not taken for the file either
    os.chmod(blob, 0o644)
    os.truncate(blob, 100)
    r = perflow(["cache", "fetch", u], env)
    assert r.returncode == 0 and open(r.stdout.strip(), "rb").read() == data
    assert len([l for l in nginx.access() if l.split()[1] == "/f9.bin"]) == 3
    r = perflow(["cache", "verify"], env)
    assert r.returncode == 0 and " ok" in r.stdout


def test_budget_evicts_least_recently_used_unpinned(env, nginx, www):
    env["PERFLOW_CACHE_BUDGET"] = "3M"  # three of the 1 MiB files
    digest = {n: sha256(open(os.path.join(www, n), "rb").read()) for n in ("a.bin", "b.bin", "c.bin", "d.bin", "e.bin")}
    # a is pinned by a running "job" until the stop file appears, and is the least recently used
    stop = os.path.join(env["PERFLOW_CACHE_DIR"], "..", "stop")
    holder = spawn(["cache", "fetch", url(nginx, "a.bin"), "--", "sh", "-c",
                    'while [ ! -e "$0" ]; do sleep 0.05; done', stop], env)
    deadline = time.time() + 10
    while digest["a.bin"] not in blobs(env) and time.time() < deadline:
        time.sleep(0.05)
    for n in ("b.bin", "c.bin", "d.bin"):
        time.sleep(0.02)
        r = perflow(["cache", "fetch", url(nginx, n)], env)
        assert r.returncode == 0, r.stderr
    have = set(blobs(env))
    assert digest["a.bin"] in have and digest["b.bin"] not in have  # b went, not the pinned a
    assert {digest["c.bin"], digest["d.bin"]} <= have
    ls = perflow(["cache", "ls"], env).stdout
    assert any("pinned" in l and url(nginx, "a.bin") in l for l in ls.splitlines()), ls
    open(stop, "w").close()
    assert holder.wait(20) == 0
    # released: a was used last, so c is now the oldest
    r = perflow(["cache", "-v", "fetch", url(nginx, "e.bin")], env)
    assert r.returncode == 0
    have = set(blobs(env))
    assert have == {digest["a.bin"], digest["d.bin"], digest["e.bin"]}, r.stderr
    assert "evicted sha256 " + digest["c.bin"] in r.stderr
    # an evicted URL is fetched again when asked for
    r = perflow(["cache", "fetch", url(nginx, "b.bin")], env)
    assert r.returncode == 0 and os.path.basename(r.stdout.strip()) == digest["b.bin"]


def test_evict_all_and_ls(env, nginx, redis):
    for n in ("f10.bin", "f11.bin"):
        assert perflow(["cache", "fetch", url(nginx, n)], env).returncode == 0
    ls = perflow(["cache", "ls"], env)
    assert ls.returncode == 0 and "# 2 entries, 2 blobs, 400000 bytes" in ls.stdout, ls.stdout
    assert "# redis: connected to" in ls.stdout
    r = perflow(["cache", "evict", "--to", "0"], env)
    assert r.returncode == 0 and "evicted 2 blobs, 400000 bytes" in r.stdout
    assert blobs(env) == [] and os.listdir(os.path.join(env["PERFLOW_CACHE_DIR"], "refs")) == []
    assert redis_cli(redis, "ZCARD", ns(env) + ":lru").strip() == "0"
    assert redis_cli(redis, "KEYS", ns(env) + ":entry:*").strip() == ""


def test_redis_unreachable_cache_still_works(env, nginx):
    env["PERFLOW_REDIS"] = "127.0.0.1:%d" % servers.free_port()
    r = perflow(["cache", "fetch", url(nginx, "small.bin")], env)
    assert r.returncode == 0, r.stderr
    assert "warning: redis: unreachable at" in r.stderr and "no cross-worker coordination" in r.stderr
    ls = perflow(["cache", "ls"], env)
    assert ls.returncode == 0 and "# redis: unreachable at" in ls.stdout and "small.bin" in ls.stdout


def test_start_drops_entries_whose_files_are_missing_or_wrong(env, nginx, redis):
    paths = {}
    for n in ("f0.bin", "f1.bin", "f2.bin"):
        paths[n] = perflow(["cache", "fetch", url(nginx, n)], env).stdout.strip()
    entry = lambda n: "%s:entry:%s" % (ns(env), url_key(url(nginx, n)))
    assert all(redis_cli(redis, "EXISTS", entry(n)).strip() == "1" for n in paths)
    os.unlink(paths["f0.bin"])
    os.chmod(paths["f1.bin"], 0o644)
    os.truncate(paths["f1.bin"], 10)
    r = perflow(["cache", "-v", "ls"], env)
    assert r.returncode == 0 and "dropped 2 index entries" in r.stderr, r.stderr
    assert redis_cli(redis, "EXISTS", entry("f0.bin")).strip() == "0"
    assert redis_cli(redis, "EXISTS", entry("f1.bin")).strip() == "0"
    assert redis_cli(redis, "EXISTS", entry("f2.bin")).strip() == "1"


def test_hostile_redis_contents(env, nginx, redis, www):
    n = ns(env)
    key = url_key(url(nginx, "f3.bin"))
    redis_cli(redis, "HSET", "%s:entry:%s" % (n, key), "url", "not a url", "digest", "../../../../etc/passwd",
              "size", "-1", "path", "/etc/passwd", "state", "ready", "last_use", "x")
    redis_cli(redis, "HSET", "%s:entry:not-hex" % n, "url", "http://x/", "state", "ready")
    redis_cli(redis, "HSET", "%s:entry:%s" % (n, "ab" * 32), "url", "http://127.0.0.1:1/x", "state", "downloading")
    redis_cli(redis, "ZADD", n + ":lru", "-inf", "../../../../etc/passwd", "1", "zz" * 32)
    passwd = open("/etc/passwd", "rb").read()
    r = perflow(["cache", "fetch", url(nginx, "f3.bin")], env)
    assert r.returncode == 0, r.stderr
    assert open(r.stdout.strip(), "rb").read() == open(os.path.join(www, "f3.bin"), "rb").read()
    for args in (["cache", "ls"], ["cache", "evict", "--to", "0"], ["cache", "verify"]):
        r = perflow(args, env)
        assert r.returncode == 0, (args, r.stderr)
    assert open("/etc/passwd", "rb").read() == passwd
    assert redis_cli(redis, "EXISTS", "%s:entry:not-hex" % n).strip() == "0"
    assert redis_cli(redis, "EXISTS", "%s:entry:%s" % (n, "ab" * 32)).strip() == "0"
    # the wrong type where the LRU should be: the cache says so and goes on alone
    redis_cli(redis, "DEL", n + ":lru")
    redis_cli(redis, "SET", n + ":lru", "not a sorted set")
    r = perflow(["cache", "fetch", url(nginx, "f4.bin")], env)
    assert r.returncode == 0 and "WRONGTYPE" in r.stderr and "no cross-worker coordination" in r.stderr


def test_model_folder_fetched_in_parallel_then_opened_without_network(env, nginx, www):
    base = url(nginx, "tiny-sd15")
    r = perflow(["cache", "fetch", base], env)
    assert r.returncode == 0, r.stderr
    view = r.stdout.strip()
    src = os.path.join(www, "tiny-sd15")
    cmp = filecmp.dircmp(view, src)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        c = filecmp.dircmp(os.path.join(view, sub), os.path.join(src, sub))
        assert not c.left_only and not c.right_only and not c.diff_files, sub
        _, mismatch, errors = filecmp.cmpfiles(os.path.join(view, sub), os.path.join(src, sub), c.common_files,
                                               shallow=False)
        assert not mismatch and not errors, sub
    log = [l for l in nginx.access() if l.split()[1].startswith("/tiny-sd15/")]
    # the text encoder exists only as .fp16: the full-precision name answered 404 first
    assert any("/text_encoder/model.safetensors 404" in l for l in log)
    before = len(nginx.access())
    r = perflow(["cache", "fetch", base + "/"], env)
    assert r.returncode == 0 and r.stdout.strip() == view
    assert len(nginx.access()) == before  # a cached model needs no network at all
    # the engine loads from the view while it is pinned
    out = os.path.join(env["PERFLOW_CACHE_DIR"], "..", "p.safetensors")
    r = perflow(["cache", "fetch", base, "--", PERFLOW, "encode", "--model", "{}", "--prompt", "a cat", "--out", out],
                env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert perflow(["inspect", out], env).returncode == 0


def test_model_fp16_variant_preferred(env, nginx):
    r = perflow(["cache", "fetch", "--fp16", url(nginx, "tiny-sd15")], env)
    assert r.returncode == 0, r.stderr
    view = r.stdout.strip()
    assert os.path.exists(os.path.join(view, "text_encoder", "model.fp16.safetensors"))
    assert os.path.exists(os.path.join(view, "unet", "diffusion_pytorch_model.safetensors"))  # the fallback


@pytest.mark.parametrize("index,phrase", [
    ({"_class_name": "X", "unet": ["diffusers", "UNet2DConditionModel"], "../../etc": ["diffusers", "AutoencoderKL"]},
     "not a plain folder name"),
    ({"unet": ["diffusers", "EvilModel"]}, "which perflow does not load"),
    ({"unet": ["diffusers", "UNet2DConditionModel", "extra"]}, "must be [library, class]"),
    ({"unet": ["diffusers", "../x"]}, "must name a library and a class"),
    ({"feature_extractor": [None, None]}, "no components"),
    ("[1, 2, 3]", "not a JSON object"),
    ("{\"a\": ", "model_index.json:"),
    ("{\"x\": \"" + "y" * 300000 + "\"}", "more than 262144 bytes"),
], ids=["traversal", "class", "arity", "badclass", "none", "array", "truncated", "huge"])
def test_hostile_model_index(env, nginx, www, index, phrase, request):
    d = os.path.join(www, "hostile-" + request.node.callspec.id)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model_index.json"), "w") as f:
        f.write(index if isinstance(index, str) else json.dumps(index))
    r = perflow(["cache", "fetch", "--model", url(nginx, os.path.basename(d))], env)
    assert r.returncode == 1 and phrase in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not os.listdir(os.path.join(env["PERFLOW_CACHE_DIR"], "models"))
