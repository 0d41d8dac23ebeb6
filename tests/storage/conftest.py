"""conftest.py - fixtures of the storage tests: the servers (one of each per run),
test files, a fresh cache per test, and a helper to run bin/perflow."""
import hashlib
import json
import os
import shutil
import subprocess
import urllib.request

import pytest

import servers
from servers import fail_puts, redis, redis_cli, s3proxy  # noqa: F401 (fixtures; the tests import the rest from here)

ROOT = os.environ.get("PERFLOW_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PERFLOW = os.environ.get("PERFLOW") or os.path.join(ROOT, "bin", "perflow")
if not os.path.isabs(PERFLOW):
    PERFLOW = os.path.join(ROOT, PERFLOW)

# Distinctive credential values: test_secrets.py greps every output for them.
SECRET_KEY_MARK = "SeCrEtKeY0123456789abcdefMARK"
HUB_TOKEN_MARK = "hubTOKEN-9f8e7d6c5b4a-MARK"
BUCKET = "outputs"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return str(tmp_path_factory.mktemp("storage"))


@pytest.fixture(scope="session")
def www(work):
    """Files the servers serve: random blobs and the tiny diffusers model."""
    d = os.path.join(work, "www")
    os.makedirs(d)
    rnd = os.urandom(3 << 20)
    files = {"small.bin": rnd[:65536], "a.bin": rnd[:1 << 20], "b.bin": rnd[1 << 20:2 << 20],
             "c.bin": rnd[2 << 20:3 << 20], "d.bin": rnd[:1 << 20][::-1], "e.bin": rnd[(1 << 20) + 7:(2 << 20) + 7],
             "two.bin": rnd[:2 << 20], "slow.bin": rnd[:768 << 10], "cut.bin": rnd[:1536 << 10]}
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    for i in range(12):  # independent files for tests that must not share cache keys
        with open(os.path.join(d, "f%d.bin" % i), "wb") as f:
            f.write(os.urandom(200000))
    shutil.copytree(os.path.join(ROOT, "tests", "data", "models", "tiny-sd15"), os.path.join(d, "tiny-sd15"))
    return d


@pytest.fixture(scope="session")
def nginx(work, www):
    s = servers.start_nginx(work, www, tls=True)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def faults(work, www):
    s = servers.start_fault_server(work, www=www)
    yield s
    s.stop()


def fault_stats(faults):
    with urllib.request.urlopen("http://127.0.0.1:%d/_stats" % faults.port, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def env(tmp_path, redis, request):
    """bin/perflow's environment: a fresh cache, this run's Redis under a
    namespace of its own, development fetch policy (http and loopback), fast
    retries, and no credentials from the caller's environment."""
    e = servers.clean_env()
    e.update({
        "PERFLOW_CACHE_DIR": str(tmp_path / "cache"),
        "PERFLOW_REDIS": "127.0.0.1:%d" % redis.port,
        "PERFLOW_CACHE_HOST_ID": "t-" + request.node.name[:60].replace("[", "_").replace("]", "_"),
        "PERFLOW_FETCH_ALLOW_HTTP": "1",
        "PERFLOW_FETCH_ALLOW_PRIVATE": "1",
        "PERFLOW_FETCH_RETRY_BASE_MS": "50",
        "PERFLOW_S3_RETRY_BASE_MS": "50",
    })
    return e


def perflow(args, env, timeout=60, **kw):
    return subprocess.run([PERFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)


def blobs(env):
    d = os.path.join(env["PERFLOW_CACHE_DIR"], "blobs", "sha256")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.fixture(scope="session")
def moto(work):
    s = servers.start_s3(work, "perflow", BUCKET)
    yield s
    s.stop()


def proxy_puts(proxy, key):
    with urllib.request.urlopen("http://127.0.0.1:%d/_stats" % proxy.port, timeout=5) as r:
        return [s for s in json.loads(r.read()) if s["method"] == "PUT" and s["path"].split("?")[0] == "/%s/%s" % (BUCKET, key)]
