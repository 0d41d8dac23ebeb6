"""servers.py - the real servers the storage and worker tests run against, each
started on a free port of 127.0.0.1 in a temporary directory and stopped by the
caller: redis-server and nginx from Debian, moto's S3 server from PyPI, and
fault_server.py; and what both suites do with them (an S3 user and bucket,
redis-cli, failing PUTs, a clean environment for the programs under test).

Every pid also goes into $PERFLOW_TEST_PIDDIR when set, so that the shell wrappers
(tests/test_storage.sh, tests/test_worker.sh) can stop whatever a crashed run
left behind."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited at start (status %s)" % (what, proc.returncode))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on port %d within %.0f s" % (what, port, timeout))


class Server:
    """A child process in its own session, registered for the wrapper's trap."""

    def __init__(self, name, argv, port, cwd=None, env=None, log=None):
        self.name, self.port = name, port
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        piddir = os.environ.get("PERFLOW_TEST_PIDDIR")
        self.pidfile = None
        if piddir:
            self.pidfile = os.path.join(piddir, "%s.%d" % (name, self.proc.pid))
            with open(self.pidfile, "w") as f:
                f.write(str(self.proc.pid))
        try:
            wait_port(port, self.proc, name)
        except Exception:
            self.stop()
            raise

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.pidfile and os.path.exists(self.pidfile):
            os.unlink(self.pidfile)


def start_redis(tmp):
    port = free_port()
    d = os.path.join(tmp, "redis")
    os.makedirs(d, exist_ok=True)
    return Server("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                            "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
                  port, log=os.path.join(d, "log"))


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    map $http_authorization $has_auth {{ default 1; "" 0; }}
    log_format t '$request_method $uri $status range=$http_range auth=$has_auth bytes=$body_bytes_sent';
    access_log {d}/access.log t;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {www};
    }}
    {tls}
}}
"""

NGINX_TLS = """
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        root {www};
    }}
"""


class Nginx(Server):
    def access(self):
        with open(self.access_log) as f:
            return f.read().splitlines()


def start_nginx(tmp, www, tls=False):
    d = os.path.join(tmp, "nginx")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    port, tls_port = free_port(), free_port()
    tls_conf = ""
    if tls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", os.path.join(d, "key.pem"), "-out", os.path.join(d, "cert.pem")],
                       check=True, capture_output=True)
        tls_conf = NGINX_TLS.format(d=d, port=tls_port, www=www)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(d=d, port=port, www=www, tls=tls_conf))
    s = Nginx("nginx", ["nginx", "-c", conf, "-p", d], port, log=os.path.join(d, "stdout"))
    s.access_log = os.path.join(d, "access.log")
    s.tls_port = tls_port if tls else None
    s.cert = os.path.join(d, "cert.pem")
    return s


def start_fault_server(tmp, www=None, proxy=None):
    port = free_port()
    argv = [sys.executable, os.path.join(HERE, "fault_server.py"), "--port", str(port)]
    argv += ["--proxy", proxy] if proxy else ["--root", www]
    return Server("faults" if www else "s3proxy", argv, port,
                  log=os.path.join(tmp, "faults-%d.log" % port))


def start_moto(tmp):
    """moto's S3 (and IAM) server that checks signatures: the first 3 requests
    (create a user, its access key and its policy) go unchecked, then every
    request must be signed with that key."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3", MOTO_ALLOW_NONEXISTENT_REGION="true")
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    return Server("moto", [moto, "-H", "127.0.0.1", "-p", str(port)], port, env=env,
                  log=os.path.join(tmp, "moto.log"))


def start_s3(tmp, user, bucket):
    """start_moto with an IAM user allowed everything: the server also carries the
    endpoint, the user's key_id and secret, a boto3 S3 client signed with them
    (client), and bucket already made."""
    import boto3  # only the suites that start S3 need it
    s = start_moto(tmp)
    ep = "http://127.0.0.1:%d" % s.port
    anon = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    iam = boto3.client("iam", **anon)
    # the three requests moto lets through unsigned (INITIAL_NO_AUTH_ACTION_COUNT=3)
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    s.endpoint, s.key_id, s.secret = ep, key["AccessKeyId"], key["SecretAccessKey"]
    s.client = boto3.client("s3", endpoint_url=ep, region_name="us-east-1", aws_access_key_id=s.key_id,
                            aws_secret_access_key=s.secret)
    s.client.create_bucket(Bucket=bucket)
    return s


def fail_puts(proxy, n):
    """Makes the fault proxy (start_fault_server(proxy=...)) fail its next n PUTs with a 500."""
    req = urllib.request.Request("http://127.0.0.1:%d/_control/fail_puts/%d" % (proxy.port, n), method="POST", data=b"")
    urllib.request.urlopen(req, timeout=5).read()


def redis_cli(redis, *args):
    """redis-cli --raw ARGS against the redis of start_redis: its stdout; fails the test on an error."""
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(redis.port), "--raw", *args],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout


def clean_env():
    """The caller's environment without credentials (AWS_*, HF_TOKEN,
    CREDENTIALS_DIRECTORY) or perflow settings (PERFLOW_*): what a test adds
    to it is all that bin/perflow or the worker sees."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "PERFLOW_")) and k not in ("HF_TOKEN", "CREDENTIALS_DIRECTORY")}


# Session fixtures of both suites, which import them into their conftest.py
# (pytest finds fixtures there); each suite defines `work` (its scratch folder)
# and `moto` (start_s3 with its own user and bucket).

@pytest.fixture(scope="session")
def redis(work):
    s = start_redis(work)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def s3proxy(work, moto):
    """fault_server.py in front of moto: fail_puts(s3proxy, N) fails the next N PUTs with a 500."""
    s = start_fault_server(work, proxy=moto.endpoint)
    yield s
    s.stop()
