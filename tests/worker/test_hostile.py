"""test_hostile.py - bad inputs through the broker, each in a table with the end
it must get: a "rejected" status naming the field (or, for a message that is no
job at all, naming why, addressed to the job id its Kafka key carries), a
"failed" status with its code for what only shows at run time (a digest that
does not match, a download over the size cap, a model that is not one, an
address the fetch policy refuses), or only a dead letter when nothing names a
job. Every message's offset is committed, the worker stays up and runs a good
job after them, and nothing is written outside the output root."""
import json
import os
import uuid

import pytest

from conftest import BUCKET

HUGE = 961 * 1024  # over the parser's 960 KiB, under Kafka's default message.max.bytes


def raw(key, data):
    return ("raw", key, data)


# (id, message, expected end): message is a dict of changes to Rig.job(id), or
# raw(key, bytes); expected is ("rejected", field or None) | ("failed", code) | ("dlq",)
CASES = [
    # not a job at all, but the key names one: the submitter hears why
    ("h-notjson", raw("h-notjson", b"{not json"), ("rejected", None)),
    ("h-bignum", raw("h-bignum", b'{"job_id": "h-bignum", "seed": 1e99999}'), ("rejected", None)),
    ("h-utf8", raw("h-utf8", b'{"job_id": "h-utf8", "prompt": "\xff\xfe"}'), ("rejected", None)),
    ("h-dupkeys", raw("h-dupkeys", b'{"job_id": "h-dupkeys", "prompt": "a", "prompt": "b"}'), ("rejected", None)),
    ("h-huge", raw("h-huge", b'{"job_id": "h-huge", "prompt": "' + b"x" * HUGE + b'"}'), ("rejected", None)),
    ("h-deep", raw("h-deep", b"[" * 100000 + b"]" * 100000), ("rejected", None)),
    ("h-array", raw("h-array", b"[1, 2, 3]"), ("rejected", None)),
    ("h-empty", raw("h-empty", b""), ("rejected", None)),
    ("h-nul", raw("h-nul", b'{"job_id": "h-nul"\x00}'), ("rejected", None)),
    ("h-badid", raw("h-badid", b'{"job_id": "../../etc/passwd", "prompt": "x"}'), ("rejected", "job_id")),
    ("h-idtype", raw("h-idtype", b'{"job_id": 42}'), ("rejected", "job_id")),
    # nothing names a job: a dead letter only
    ("-noid-1", raw("../x", b'{"job_id": "../x"}'), ("dlq",)),
    ("-noid-2", raw(None, b"\x00\x01garbage"), ("dlq",)),
    # a job, breaking the schema: the field is named
    ("h-w-type", {"width": "64"}, ("rejected", "width")),
    ("h-w-8", {"width": 60}, ("rejected", "width")),
    ("h-w-big", {"width": 4096}, ("rejected", "width")),
    ("h-h-zero", {"height": 0}, ("rejected", "height")),
    ("h-steps-0", {"steps": 0}, ("rejected", "steps")),
    ("h-steps-big", {"steps": 100000}, ("rejected", "steps")),
    ("h-guid-neg", {"guidance": -1}, ("rejected", "guidance")),
    ("h-guid-big", {"guidance": 1e6}, ("rejected", "guidance")),
    ("h-images", {"num_images": 100000}, ("rejected", "num_images")),
    ("h-seed-neg", {"seed": -1}, ("rejected", "seed")),
    ("h-seed-frac", {"seed": 1.5}, ("rejected", "seed")),
    ("h-prompt-big", {"prompt": "a cat " * 2000}, ("rejected", "prompt")),
    ("h-prompt-ctl", {"prompt": "a cat\u0001"}, ("rejected", "prompt")),
    ("h-unknown", {"negative_promt": "blurry"}, ("rejected", "negative_promt")),
    ("h-attempt", {"attempt": -5}, ("rejected", "attempt")),
    ("h-schema", {"schema": "perflow.job.v9"}, ("rejected", "schema")),
    ("h-batch", {"batch_id": "../b"}, ("rejected", "batch_id")),
    ("h-deadline", {"deadline": "tomorrow"}, ("rejected", "deadline")),
    ("h-scheme-file", {"model": {"base": {"url": "file:///etc/passwd"}}}, ("rejected", "model.base.url")),
    ("h-scheme-js", {"model": {"base": {"url": "javascript:alert(1)"}}}, ("rejected", "model.base.url")),
    ("h-sha-form", {"model": {"base": {"url": "https://h/m"},
                              "delta": {"url": "https://h/d.safetensors", "sha256": "xyz"}}}, ("rejected",
                                                                                               "model.delta.sha256")),
    ("h-out-dotdot", {"output": {"url": "s3://%s/../../escape.png" % BUCKET}}, ("rejected", "output.url")),
    ("h-out-empty", {"output": {"url": "s3://%s//x.png" % BUCKET}}, ("rejected", "output.url")),
    ("h-out-field", {"output": {"url": "s3://%s/{nope}.png" % BUCKET}}, ("rejected", "output.url")),
    ("h-out-file", {"output": {"url": "file:///tmp/perflow-hostile-%s.png" % uuid.uuid4().hex}},
     ("rejected", "output.url")),
    # only the run shows it
    ("h-sha-wrong", "delta-sha", ("failed", "download")),
    ("h-oversize", "oversize", ("failed", "download")),
    ("h-notmodel", "notmodel", ("failed", None)),
    ("h-missing", "missing", ("failed", "download")),
]


def build(r, www_url, job_id, change):
    """The message bytes and key of one case."""
    if isinstance(change, tuple):
        _, key, data = change
        return key, data
    j = r.job(job_id)
    if change == "delta-sha":
        j["model"]["delta"]["sha256"] = "0" * 64
    elif change == "oversize":
        j["model"]["delta"] = {"url": www_url + "/hostile/big.safetensors"}
    elif change == "notmodel":
        j["model"] = {"base": {"url": www_url + "/hostile/notamodel"}}
    elif change == "missing":
        j["model"] = {"base": {"url": www_url + "/hostile/nothing-here"}}
    else:
        j.update(change)
    return job_id, json.dumps(j).encode()


@pytest.fixture
def hostile_www(nginx, work):
    """Files nginx serves for the run-time cases: a 24 MiB file (over the cap
    the worker gets) and a folder whose model_index.json is not JSON."""
    d = os.path.join(work, "www", "hostile")
    os.makedirs(os.path.join(d, "notamodel"), exist_ok=True)
    with open(os.path.join(d, "big.safetensors"), "wb") as f:
        f.truncate(24 << 20)
    with open(os.path.join(d, "notamodel", "model_index.json"), "w") as f:
        f.write("this is not a model index {")
    return "http://127.0.0.1:%d" % nginx.port


def test_hostile_jobs_table(rig, hostile_www):
    assert len([c for c in CASES if c[2][0] != "dlq"]) >= 30
    r = rig(partitions=1)
    msgs = [build(r, hostile_www, job_id, change) for job_id, change, _ in CASES]
    for key, data in msgs:
        r.produce(data, key=key)
    r.produce(r.job("h-good-after"))
    w = r.start_worker(PERFLOW_FETCH_MAX_BYTES=str(16 << 20))
    named = [c for c in CASES if c[2][0] != "dlq"]
    r.events.wait_terminal([c[0] for c in named] + ["h-good-after"], timeout=120)
    problems = []
    for job_id, _, want in named:
        evs = r.events.terminal(job_id)
        if len(evs) != 1:
            problems.append("%s: %d terminal events" % (job_id, len(evs)))
            continue
        ev = evs[0]
        err = ev.get("error", {})
        if ev["state"] != want[0]:
            problems.append("%s: %s (%s), want %s" % (job_id, ev["state"], err.get("message"), want[0]))
        elif want[0] == "rejected" and (err.get("code") != "invalid_job" or err.get("field") != want[1]):
            problems.append("%s: code %s field %s (%s), want field %s" % (
                job_id, err.get("code"), err.get("field"), err.get("message", "")[:120], want[1]))
        elif want[0] == "failed" and (err.get("retryable") or (want[1] and err.get("code") != want[1])):
            problems.append("%s: %s" % (job_id, err))
        if not err.get("message"):
            problems.append("%s: no message" % job_id)
        if r.events.of(job_id, "succeeded"):
            problems.append("%s: succeeded" % job_id)
    assert not problems, "\n".join(problems)
    # the messages that are no job say why, in words a submitter can act on
    assert "not JSON" in r.events.terminal("h-notjson")[0]["error"]["message"]
    assert "larger than" in r.events.terminal("h-huge")[0]["error"]["message"]
    assert "size cap" in r.events.terminal("h-oversize")[0]["error"]["message"]
    assert r.events.terminal("h-good-after")[0]["state"] == "succeeded"
    # every message's offset is committed, and each went to the dead-letter topic once
    total = len(msgs) + 1
    r.events.wait(lambda: r.committed(partitions=1)[0] == total, 20, "all %d offsets committed" % total)
    r.events.wait(lambda: len(r.events.dead) == len(CASES), 20, "%d dead letters" % len(CASES))
    codes = {}
    for _, h in r.events.dead:
        codes[h["perflow-error-code"]] = codes.get(h["perflow-error-code"], 0) + 1
    assert codes.get("invalid_message") == 13, codes  # the 11 keyed ones and the 2 without an id
    # nothing outside the output root, nothing with '..' in the bucket
    assert not any(os.path.exists(c[1]["output"]["url"][7:]) for c in CASES
                   if isinstance(c[1], dict) and "output" in c[1] and c[1]["output"]["url"].startswith("file://"))
    keys = [o["Key"] for o in r.moto.client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert not [k for k in keys if ".." in k or k.startswith("/")], keys
    assert w.proc.poll() is None
    assert not w.events("worker.thread_failed")


PRIVATE = ["http://127.0.0.1:9/m", "http://10.0.0.1/m", "http://169.254.169.254/latest", "http://[::1]/m",
           "http://0.0.0.0/m", "http://192.168.1.1/m"]


def test_private_addresses_refused_without_traffic(rig):
    """The fetch policy refuses private and loopback addresses before any
    connection (only IP literals here: no name is looked up)."""
    r = rig(partitions=1)
    ids = []
    for i, url in enumerate(PRIVATE):
        ids.append("priv-%d" % i)
        r.produce(r.job(ids[-1], model={"base": {"url": url}}))
    w = r.start_worker(PERFLOW_FETCH_ALLOW_PRIVATE="0")
    r.events.wait_terminal(ids, timeout=60)
    for i in ids:
        (ev,) = r.events.terminal(i)
        assert ev["state"] in ("failed", "rejected") and not ev["error"]["retryable"], ev
        assert "private" in ev["error"]["message"] or "loopback" in ev["error"]["message"] or \
            "refused" in ev["error"]["message"] or "not allowed" in ev["error"]["message"], ev
    assert w.proc.poll() is None


def test_file_outputs_only_under_the_root(rig):
    """file:// outputs land under file_output_root and nowhere else, not even in
    a folder whose name merely starts with the root's (ROOT-evil/)."""
    r = rig(partitions=1)
    root = os.path.join(r.dir, "out")
    os.makedirs(root)
    os.makedirs(root + "-evil")
    r.produce(r.job("root-in", output={"url": "file://%s/{job_id}-{index}.png" % root}))
    r.produce(r.job("root-sibling", output={"url": "file://%s-evil/{job_id}-{index}.png" % root}))
    w = r.start_worker(PERFLOW_FILE_OUTPUT_ROOT=root)
    r.events.wait_terminal(["root-in", "root-sibling"], timeout=60)
    assert r.events.terminal("root-in")[0]["state"] == "succeeded", r.events.terminal("root-in")
    (bad,) = r.events.terminal("root-sibling")
    assert bad["state"] == "rejected" and bad["error"]["field"] == "output.url", bad
    assert os.listdir(root) == ["root-in-0.png"]
    assert not os.listdir(root + "-evil")
    assert w.proc.poll() is None
