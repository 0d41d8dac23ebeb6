"""No credential value in any log line or error: every storage command, in
success and failure, verbose, with distinctive secrets; all output is grepped."""
import os

from conftest import BUCKET, HUB_TOKEN_MARK, SECRET_KEY_MARK, perflow, servers
from conftest import fail_puts

SESSION_MARK = "SessionTok-0f1e2d3c4b5a-MARK"


def test_no_credential_in_any_output(env, moto, s3proxy, faults, nginx, tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(os.urandom(4000))
    good = dict(env, AWS_ACCESS_KEY_ID=moto.key_id, AWS_SECRET_ACCESS_KEY=moto.secret, AWS_ENDPOINT_URL=moto.endpoint)
    proxied = dict(good, AWS_ENDPOINT_URL="http://127.0.0.1:%d" % s3proxy.port)
    wrong = dict(good, AWS_SECRET_ACCESS_KEY=SECRET_KEY_MARK)
    session = dict(good, AWS_SESSION_TOKEN=SESSION_MARK)
    closed = dict(good, AWS_ENDPOINT_URL="http://127.0.0.1:%d" % servers.free_port(), PERFLOW_S3_ATTEMPTS="2")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "aws_access_key_id").write_text(moto.key_id)
    (creds / "aws_secret_access_key").write_text(SECRET_KEY_MARK)
    (creds / "hub_token").write_text(HUB_TOKEN_MARK)
    from_dir = dict(env, CREDENTIALS_DIRECTORY=str(creds), AWS_ENDPOINT_URL=moto.endpoint,
                    PERFLOW_HUB_TOKEN_HOSTS="127.0.0.1")
    hub = dict(env, PERFLOW_HUB_TOKEN=HUB_TOKEN_MARK, PERFLOW_HUB_TOKEN_HOSTS="127.0.0.1")
    fp, np_ = faults.port, nginx.port
    runs = [
        (["put", "-v", str(f), "s3://%s/s/ok.png" % BUCKET], good, 0),
        (["put", "-v", str(f), "s3://%s/s/wrong.png" % BUCKET], wrong, 1),
        (["put", "-v", str(f), "s3://%s/s/session.png" % BUCKET], session, 1),
        (["put", "-v", str(f), "s3://%s/s/closed.png" % BUCKET], closed, 1),
        (["put", "-v", str(f), "s3://%s/s/dir.png" % BUCKET], from_dir, 1),
        (["cache", "-v", "fetch", "http://127.0.0.1:%d/auth/%s/f0.bin" % (fp, HUB_TOKEN_MARK)], hub, 0),
        (["cache", "-v", "fetch", "http://127.0.0.1:%d/auth/other-token/f1.bin" % fp], hub, 1),
        (["cache", "-v", "fetch", "http://127.0.0.1:%d/redirect?to=http://localhost:%d/f2.bin" % (fp, np_)], hub, 0),
        (["cache", "-v", "fetch", "http://127.0.0.1:%d/fail/100/%s.bin" % (fp, HUB_TOKEN_MARK)],
         dict(hub, PERFLOW_FETCH_ATTEMPTS="2"), 1),
        (["cache", "-v", "fetch", "http://127.0.0.1:%d/auth/%s/f3.bin" % (fp, HUB_TOKEN_MARK)], from_dir, 0),
        (["cache", "-v", "ls"], hub, 0),
    ]
    fail_puts(s3proxy, 2)
    runs.append((["put", "-v", str(f), "s3://%s/s/retried.png" % BUCKET], proxied, 0))
    secrets = [moto.secret, moto.key_id, SECRET_KEY_MARK, HUB_TOKEN_MARK, SESSION_MARK]
    lines = 0
    for args, e, want in runs:
        r = perflow(args, e)
        assert r.returncode == want, (args, r.stderr)
        text = r.stdout + r.stderr
        lines += len(text.splitlines())
        for s in secrets:
            assert s not in text, (args, text)
    assert lines > 20  # the runs did talk: retries, waits, errors
