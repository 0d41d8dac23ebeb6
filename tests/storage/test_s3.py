"""Uploads with `perflow put` to moto's S3 server, which checks SigV4 signatures
(a wrong secret key is refused), read back with boto3 as an independent client.
fault_server.py in proxy mode injects 500s in front of moto."""
import json
import os
import urllib.request

import boto3
import botocore.exceptions
import pytest

from conftest import BUCKET, fail_puts, perflow, proxy_puts, sha256


@pytest.fixture
def s3env(env, moto):
    env.update({"AWS_ACCESS_KEY_ID": moto.key_id, "AWS_SECRET_ACCESS_KEY": moto.secret,
                "AWS_ENDPOINT_URL": moto.endpoint, "AWS_REGION": "us-east-1"})
    return env


def make_file(tmp_path, name, size):
    p = tmp_path / name
    p.write_bytes(os.urandom(size))
    return str(p)


def get(moto, key):
    return moto.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_put_then_read_back_with_boto3(s3env, moto, tmp_path):
    f = make_file(tmp_path, "img.png", 70000)
    key = "jobs/j-1/0-42.png"
    r = perflow(["put", f, "s3://%s/%s" % (BUCKET, key)], s3env)
    assert r.returncode == 0, r.stderr
    data = open(f, "rb").read()
    assert get(moto, key) == data
    assert ("sha256 %s, 0 parts" % sha256(data)) in r.stdout


def test_key_with_unusual_characters(s3env, moto, tmp_path):
    f = make_file(tmp_path, "x", 1000)
    key = "odd keys/a+b=c&d/é (1)!.png"
    r = perflow(["put", f, "s3://%s/%s" % (BUCKET, key)], s3env)
    assert r.returncode == 0, r.stderr
    assert get(moto, key) == open(f, "rb").read()


def test_wrong_secret_key_refused(s3env, moto, tmp_path):
    s3env["AWS_SECRET_ACCESS_KEY"] = "wrong" + moto.secret[5:]
    f = make_file(tmp_path, "x", 1000)
    r = perflow(["put", f, "s3://%s/refused.png" % BUCKET], s3env)
    assert r.returncode == 1
    assert "HTTP 403 SignatureDoesNotMatch" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # the server really checks: boto3 with the wrong key is refused too, and nothing was stored
    bad = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id=moto.key_id,
                       aws_secret_access_key=s3env["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
        bad.put_object(Bucket=BUCKET, Key="refused.png", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError):
        moto.client.head_object(Bucket=BUCKET, Key="refused.png")


def test_multipart_object_intact(s3env, moto, tmp_path):
    f = make_file(tmp_path, "big.bin", (20 << 20) + 12345)  # above 16 MiB: 3 parts of 8 MiB
    r = perflow(["put", f, "s3://%s/big/one.bin" % BUCKET], s3env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 parts" in r.stdout
    assert sha256(get(moto, "big/one.bin")) == sha256(open(f, "rb").read())
    etag = moto.client.head_object(Bucket=BUCKET, Key="big/one.bin")["ETag"]
    assert etag.strip('"').endswith("-3")
    assert not moto.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_retried_after_injected_500s(s3env, moto, s3proxy, tmp_path):
    s3env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:%d" % s3proxy.port
    f = make_file(tmp_path, "r.png", 5000)
    fail_puts(s3proxy, 2)
    r = perflow(["put", "-v", f, "s3://%s/retry/r.png" % BUCKET], s3env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("HTTP 500 InternalError") == 2 and "retrying" in r.stderr
    assert len(proxy_puts(s3proxy, "retry/r.png")) == 3
    assert get(moto, "retry/r.png") == open(f, "rb").read()  # read straight from moto


def test_multipart_parts_retried_after_500s(s3env, moto, s3proxy, tmp_path):
    s3env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:%d" % s3proxy.port
    f = make_file(tmp_path, "mp.bin", (17 << 20) + 1)
    fail_puts(s3proxy, 2)
    r = perflow(["put", f, "s3://%s/retry/mp.bin" % BUCKET], s3env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 parts, 2 retries" in r.stdout
    assert sha256(get(moto, "retry/mp.bin")) == sha256(open(f, "rb").read())


def test_retries_exhausted_abort_the_multipart_upload(s3env, moto, s3proxy, tmp_path):
    s3env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:%d" % s3proxy.port
    s3env["PERFLOW_S3_ATTEMPTS"] = "3"
    f = make_file(tmp_path, "mp.bin", (17 << 20) + 1)
    fail_puts(s3proxy, 100)
    try:
        r = perflow(["put", f, "s3://%s/retry/never.bin" % BUCKET], s3env, timeout=120)
    finally:
        fail_puts(s3proxy, 0)
    assert r.returncode == 1 and "part 1 of 3: HTTP 500 InternalError" in r.stderr, r.stderr
    assert not moto.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")  # aborted


def test_same_job_same_key_overwrites(s3env, moto, tmp_path):
    f = make_file(tmp_path, "v.png", 3000)
    for _ in range(2):
        r = perflow(["put", f, "s3://%s/idem/job-7/0.png" % BUCKET], s3env)
        assert r.returncode == 0, r.stderr
    keys = [o["Key"] for o in moto.client.list_objects_v2(Bucket=BUCKET, Prefix="idem/")["Contents"]]
    assert keys == ["idem/job-7/0.png"]
    assert get(moto, "idem/job-7/0.png") == open(f, "rb").read()


def test_credentials_from_credentials_directory(env, moto, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "aws_access_key_id").write_text(moto.key_id + "\n")
    (creds / "aws_secret_access_key").write_text(moto.secret + "\n")
    env.update({"CREDENTIALS_DIRECTORY": str(creds), "AWS_ENDPOINT_URL": moto.endpoint})
    f = make_file(tmp_path, "c.png", 100)
    r = perflow(["put", f, "s3://%s/creds/c.png" % BUCKET], env)
    assert r.returncode == 0, r.stderr
    assert get(moto, "creds/c.png") == open(f, "rb").read()


def test_missing_credentials_and_bad_destinations(env, moto, tmp_path):
    env["AWS_ENDPOINT_URL"] = moto.endpoint
    f = make_file(tmp_path, "c.png", 100)
    r = perflow(["put", f, "s3://%s/x.png" % BUCKET], env)
    assert r.returncode == 1 and "no credentials" in r.stderr
    for dest, phrase in (("s3://UPPER/x", "bucket name"), ("s3://ok-bucket/", "object key"),
                         ("file://relative/x", "absolute path"), ("file:///tmp/../etc/x", "plain absolute path")):
        r = perflow(["put", f, dest], env)
        assert r.returncode == 1 and phrase in r.stderr, (dest, r.stderr)
    assert perflow(["put", f, "http://x/y"], env).returncode == 2


def test_file_destination(env, tmp_path):
    f = make_file(tmp_path, "l.png", 5000)
    dest = tmp_path / "out" / "job-1" / "0.png"
    r = perflow(["put", f, "file://" + str(dest)], env)
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == open(f, "rb").read()
    assert sorted(os.listdir(dest.parent)) == ["0.png"]  # no temporary file left


def test_failures_are_classed_for_the_worker(s3env, moto, s3proxy, tmp_path):
    f = make_file(tmp_path, "k.png", 100)
    wrong = dict(s3env, AWS_SECRET_ACCESS_KEY="wrong-secret-key-123")
    r = perflow(["put", "-v", f, "s3://%s/k/1.png" % BUCKET], wrong)
    assert r.returncode == 1 and "this failure is permanent" in r.stderr, r.stderr
    flaky = dict(s3env, AWS_ENDPOINT_URL="http://127.0.0.1:%d" % s3proxy.port, PERFLOW_S3_ATTEMPTS="2")
    fail_puts(s3proxy, 100)
    try:
        r = perflow(["put", "-v", f, "s3://%s/k/2.png" % BUCKET], flaky)
    finally:
        fail_puts(s3proxy, 0)
    assert r.returncode == 1 and "this failure is transient" in r.stderr, r.stderr
