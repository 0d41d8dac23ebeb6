"""test_security.py - the worker's side of the security review (issue 19): the hub
token's hosts, the output allow lists, the per-job limits, hostile images, crash
counts and the metrics endpoint's limits. Each test reproduces a finding."""
import json
import os
import subprocess

from conftest import WORKER, servers


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
