"""Server-side request forgery: with the default policy (no private addresses)
every way of naming this machine is refused on the resolved address, before a
connection is made, and so are other schemes and redirects that leave the policy.
Only loopback is used: private and metadata ranges are covered by the C unit
test (tests/test_storage_units.c) without sending anything anywhere."""
import pytest

from conftest import perflow


@pytest.fixture
def strict(env):
    del env["PERFLOW_FETCH_ALLOW_PRIVATE"]  # http stays allowed: the address alone must refuse
    return env


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "127.0.0.2",
                                  "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_this_machine_refused_on_the_resolved_address(strict, nginx, host):
    before = len(nginx.access())
    r = perflow(["cache", "fetch", "--file", "http://%s:%d/small.bin" % (host, nginx.port)], strict)
    assert r.returncode == 1
    assert "refused" in r.stderr and "not a public address" in r.stderr, r.stderr
    assert len(nginx.access()) == before  # no request reached the server


@pytest.mark.parametrize("u", ["file:///etc/passwd", "gopher://127.0.0.1:70/x", "ftp://127.0.0.1/x",
                               "dict://127.0.0.1:11211/stat", "ldap://127.0.0.1/x"])
def test_other_schemes_refused(strict, u):
    r = perflow(["cache", "fetch", "--file", u], strict)
    assert r.returncode == 1 and "refused: scheme" in r.stderr, r.stderr


def test_plain_http_refused_by_default(env, nginx):
    del env["PERFLOW_FETCH_ALLOW_HTTP"]
    r = perflow(["cache", "fetch", "http://127.0.0.1:%d/small.bin" % nginx.port], env)
    assert r.returncode == 1 and "plain http:// is not allowed" in r.stderr


def test_redirect_to_file_scheme_refused(env, faults):
    r = perflow(["cache", "fetch", "--file", "http://127.0.0.1:%d/redirect?to=file:///etc/passwd" % faults.port], env)
    assert r.returncode == 1 and "refused: scheme 'file://'" in r.stderr, r.stderr


def test_redirect_outside_the_host_allowlist_refused(env, faults, nginx):
    env["PERFLOW_FETCH_ALLOW_HOSTS"] = "127.0.0.1,.example.org"
    before = len(nginx.access())
    target = "http://localhost:%d/small.bin" % nginx.port
    r = perflow(["cache", "fetch", "http://127.0.0.1:%d/redirect?to=%s" % (faults.port, target)], env)
    assert r.returncode == 1 and "host 'localhost' is not in the allowed hosts" in r.stderr, r.stderr
    assert len(nginx.access()) == before


def test_hostile_url_shapes_refused(strict):
    for u in ["http://127.0.0.1:99999/x", "http://[::1%25eth0]/x", "http://a b/x", "http://exa mple.com/",
              "http://example.com/a#frag", "http://" + "a" * 300 + "/x", "https://example.com/\x01"]:
        r = perflow(["cache", "fetch", "--file", u], strict)
        assert r.returncode == 1, u
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
