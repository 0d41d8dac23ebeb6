"""The fetcher through `perflow cache fetch`: nginx for plain transfers and TLS,
fault_server.py for cut transfers (resume), injected 500s, size caps, tokens and
redirects. Each test has a fresh cache; servers are shared by the run."""
import os
import stat

from conftest import HUB_TOKEN_MARK, blobs, fault_stats, perflow, servers, sha256


def url(srv, path, host="127.0.0.1"):
    return "http://%s:%d/%s" % (host, srv.port, path)


def requests_for(stats, path):
    return [s for s in stats if s["path"] == path]


def nginx_hits(nginx, path):
    return [l for l in nginx.access() if l.split()[1] == path]


def test_fetch_then_hit_without_network(env, nginx, www):
    r = perflow(["cache", "fetch", url(nginx, "small.bin")], env)
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    data = open(os.path.join(www, "small.bin"), "rb").read()
    assert open(path, "rb").read() == data
    assert os.path.basename(path) == sha256(data)  # content-addressed
    assert not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # read-only blob
    before = len(nginx_hits(nginx, "/small.bin"))
    r = perflow(["cache", "fetch", url(nginx, "small.bin")], env)
    assert r.returncode == 0 and r.stdout.strip() == path
    assert len(nginx_hits(nginx, "/small.bin")) == before  # a hit: no request
    assert os.listdir(os.path.join(env["PERFLOW_CACHE_DIR"], "tmp")) == []


def test_resume_after_transfer_cut_midway(env, faults, www):
    path = "/cut/500000/cut.bin"
    r = perflow(["cache", "-v", "fetch", url(faults, path[1:])], env)
    assert r.returncode == 0, r.stderr
    assert open(r.stdout.strip(), "rb").read() == open(os.path.join(www, "cut.bin"), "rb").read()
    seen = requests_for(fault_stats(faults), path)
    assert [s["range"] for s in seen] == [None, "bytes=500000-"], seen
    assert "1 resumed" in r.stderr


def test_retried_after_injected_500s(env, faults, www):
    path = "/fail/2/f0.bin"
    r = perflow(["cache", "-v", "fetch", url(faults, path[1:])], env)
    assert r.returncode == 0, r.stderr
    assert open(r.stdout.strip(), "rb").read() == open(os.path.join(www, "f0.bin"), "rb").read()
    assert len(requests_for(fault_stats(faults), path)) == 3
    assert r.stderr.count("HTTP 500") == 2 and "retrying" in r.stderr


def test_persistent_500s_give_up_and_cache_nothing(env, faults):
    env["PERFLOW_FETCH_ATTEMPTS"] = "3"
    r = perflow(["cache", "fetch", url(faults, "fail/100/f1.bin")], env)
    assert r.returncode == 1
    assert "HTTP 500" in r.stderr and "gave up" in r.stderr
    errors = [l for l in r.stderr.splitlines() if not l.startswith("perflow: warning: ")]
    assert len(errors) == 1, r.stderr  # retries are warnings; the error is one line
    assert blobs(env) == [] and os.listdir(os.path.join(env["PERFLOW_CACHE_DIR"], "tmp")) == []


def test_digest_mismatch_is_a_clear_error_and_nothing_is_cached(env, nginx, www):
    good = sha256(open(os.path.join(www, "f2.bin"), "rb").read())
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    r = perflow(["cache", "fetch", "--sha256", bad, url(nginx, "f2.bin")], env)
    assert r.returncode == 1
    assert "digest mismatch" in r.stderr and bad in r.stderr and good in r.stderr
    root = env["PERFLOW_CACHE_DIR"]
    assert blobs(env) == [] and os.listdir(os.path.join(root, "refs")) == []
    assert os.listdir(os.path.join(root, "tmp")) == []
    r = perflow(["cache", "fetch", "--sha256", good, url(nginx, "f2.bin")], env)
    assert r.returncode == 0 and os.path.basename(r.stdout.strip()) == good


def test_size_cap_with_and_without_content_length(env, faults):
    env["PERFLOW_FETCH_MAX_BYTES"] = "100000"
    for path in ("files/a.bin", "nolength/b.bin"):
        r = perflow(["cache", "fetch", url(faults, path)], env)
        assert r.returncode == 1, path
        assert "size cap of 100000 bytes" in r.stderr, r.stderr
    assert blobs(env) == []


def test_bearer_token_sent_to_origin_only(env, faults, nginx, www, tmp_path):
    env["PERFLOW_HUB_TOKEN"] = HUB_TOKEN_MARK
    env["PERFLOW_HUB_TOKEN_HOSTS"] = "127.0.0.1"
    r = perflow(["cache", "fetch", url(faults, "auth/%s/f3.bin" % HUB_TOKEN_MARK)], env)
    assert r.returncode == 0, r.stderr
    assert open(r.stdout.strip(), "rb").read() == open(os.path.join(www, "f3.bin"), "rb").read()
    # the same token from a systemd credentials directory
    del env["PERFLOW_HUB_TOKEN"]
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hub_token").write_text(HUB_TOKEN_MARK + "\n")
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    r = perflow(["cache", "fetch", url(faults, "auth/%s/f4.bin" % HUB_TOKEN_MARK)], env)
    assert r.returncode == 0, r.stderr
    # no token: a clear 401
    del env["CREDENTIALS_DIRECTORY"]
    r = perflow(["cache", "fetch", url(faults, "auth/%s/f5.bin" % HUB_TOKEN_MARK)], env)
    assert r.returncode == 1 and "HTTP 401" in r.stderr
    # a redirect to another host: the token stays behind
    env["PERFLOW_HUB_TOKEN"] = HUB_TOKEN_MARK
    target = url(nginx, "f6.bin", host="localhost")
    r = perflow(["cache", "fetch", url(faults, "redirect?to=" + target)], env)
    assert r.returncode == 0, r.stderr
    hits = nginx_hits(nginx, "/f6.bin")
    assert hits and all("auth=0" in h for h in hits), hits
    assert any(s["auth"] for s in requests_for(fault_stats(faults), "/redirect?to=" + target))


def fresh_file(www, tag):
    """A file of its own under www (the nginx log is shared by the run, so each
    check reads the hits of a path no other test asks for)."""
    name = "tok-%s-%s.bin" % (tag, os.urandom(4).hex())
    with open(os.path.join(www, name), "wb") as f:
        f.write(os.urandom(5000))
    return name


def test_hub_token_only_to_named_hosts(env, faults, nginx, www):
    """The review's reproduction: a token and a job URL on any https host. The
    token goes only to hosts in hub_token_hosts, on every hop of a redirect;
    with a token and no such setting `cache fetch` refuses to start."""
    env["PERFLOW_HUB_TOKEN"] = HUB_TOKEN_MARK
    env["PERFLOW_CA_BUNDLE"] = nginx.cert

    def https(host, name):
        return "https://%s:%d/%s" % (host, nginx.tls_port, name)

    def auth_of(name):
        hits = nginx_hits(nginx, "/" + name)
        assert hits, name
        return {h.split("auth=")[1].split()[0] for h in hits}

    # a token without hub_token_hosts: refused before any request, one line naming the setting
    name = fresh_file(www, "unset")
    r = perflow(["cache", "fetch", https("127.0.0.1", name)], env)
    assert r.returncode != 0
    assert "hub_token_hosts" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert HUB_TOKEN_MARK not in r.stderr
    assert nginx_hits(nginx, "/" + name) == []
    # a stand-in for an attacker's host: not named, so no token
    env["PERFLOW_HUB_TOKEN_HOSTS"] = "hub.example.com,.cdn.example.com"
    name = fresh_file(www, "other")
    r = perflow(["cache", "fetch", https("127.0.0.1", name)], env)
    assert r.returncode == 0, r.stderr
    assert auth_of(name) == {"0"}
    # the named host gets it; another name for the same server does not
    env["PERFLOW_HUB_TOKEN_HOSTS"] = "127.0.0.1"
    name = fresh_file(www, "named")
    r = perflow(["cache", "fetch", https("127.0.0.1", name)], env)
    assert r.returncode == 0, r.stderr
    assert auth_of(name) == {"1"}
    name = fresh_file(www, "alias")
    r = perflow(["cache", "fetch", https("localhost", name)], env)
    assert r.returncode == 0, r.stderr
    assert auth_of(name) == {"0"}
    # redirects keep the rule: a named host's redirect to an unnamed one drops the
    # token, to a named one (the hub's CDN) keeps it
    for hosts, want in (("127.0.0.1", "0"), ("127.0.0.1,localhost", "1")):
        env["PERFLOW_HUB_TOKEN_HOSTS"] = hosts
        name = fresh_file(www, "redir")
        r = perflow(["cache", "fetch", url(faults, "redirect?to=" + https("localhost", name))], env)
        assert r.returncode == 0, r.stderr
        assert auth_of(name) == {want}, hosts


def test_redirect_loop_is_bounded(env, faults):
    r = perflow(["cache", "fetch", "--file", url(faults, "loop")], env)
    assert r.returncode == 1 and "more than 5 redirects" in r.stderr


def test_https_verification(env, nginx, www):
    u = "https://127.0.0.1:%d/small.bin" % nginx.tls_port
    r = perflow(["cache", "fetch", u], env)
    assert r.returncode == 1 and "certificate" in r.stderr  # self-signed: refused
    env["PERFLOW_CA_BUNDLE"] = nginx.cert
    r = perflow(["cache", "fetch", u], env)
    assert r.returncode == 0, r.stderr
    assert open(r.stdout.strip(), "rb").read() == open(os.path.join(www, "small.bin"), "rb").read()


def test_url_with_password_refused_without_echoing_it(env, nginx):
    r = perflow(["cache", "fetch", "http://user:pw-0123456789@127.0.0.1:%d/small.bin" % nginx.port], env)
    assert r.returncode == 1 and "user name or password" in r.stderr
    assert "pw-0123456789" not in r.stderr + r.stdout


def test_failures_are_classed_for_the_worker(env, faults, nginx, www):
    """The worker retries transient failures and fails permanent ones (pf_error.kind, common/error.h)."""
    env["PERFLOW_FETCH_ATTEMPTS"] = "2"
    good = sha256(open(os.path.join(www, "f5.bin"), "rb").read())
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    cases = [
        (["--file", url(faults, "fail/100/f5.bin")], "transient"),
        (["--file", url(nginx, "no-such-file.bin")], "permanent"),
        (["--sha256", bad, url(nginx, "f5.bin")], "permanent"),
        (["--file", "ftp://127.0.0.1/x"], "permanent"),
        (["--file", "http://127.0.0.1:%d/x.bin" % servers.free_port()], "transient"),  # nothing listens
    ]
    for args, want in cases:
        r = perflow(["cache", "-v", "fetch", *args], env)
        assert r.returncode == 1 and ("this failure is " + want) in r.stderr, (args, r.stderr)


def test_download_time_and_average_rate_limits(env, faults, www):
    """The review: a server trickling at 1 KB/s passed the low-speed floor and held
    a worker for days. A call now stops after PERFLOW_FETCH_MAX_SECONDS, or when it
    averages under PERFLOW_FETCH_MIN_AVG_RATE after its grace time, keeping the
    partial file for a resume."""
    name = fresh_file(www, "trickle")
    with open(os.path.join(www, name), "wb") as f:
        f.write(os.urandom(200000))
    u = url(faults, "slow/20000/" + name)  # about 10 s
    env["PERFLOW_FETCH_MAX_SECONDS"] = "2"
    r = perflow(["cache", "fetch", u], env, timeout=30)
    assert r.returncode == 1 and "PERFLOW_FETCH_MAX_SECONDS" in r.stderr, r.stderr
    parts = os.listdir(os.path.join(env["PERFLOW_CACHE_DIR"], "tmp"))
    assert len(parts) == 1 and parts[0].endswith(".part"), parts
    assert 0 < os.path.getsize(os.path.join(env["PERFLOW_CACHE_DIR"], "tmp", parts[0])) < 200000
    assert blobs(env) == []
    del env["PERFLOW_FETCH_MAX_SECONDS"]
    env["PERFLOW_FETCH_MIN_AVG_RATE"] = "50000"
    env["PERFLOW_FETCH_MIN_RATE_GRACE_S"] = "1"
    r = perflow(["cache", "fetch", u], env, timeout=30)
    assert r.returncode == 1 and "PERFLOW_FETCH_MIN_AVG_RATE" in r.stderr, r.stderr
    # without the limits the kept part resumes
    env["PERFLOW_FETCH_MIN_AVG_RATE"] = "0"
    r = perflow(["cache", "-v", "fetch", u], env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "resuming at byte" in r.stderr, r.stderr
    assert open(r.stdout.strip(), "rb").read() == open(os.path.join(www, name), "rb").read()
