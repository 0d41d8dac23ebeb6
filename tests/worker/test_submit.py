"""test_submit.py - `perflow submit` and `perflow status` against the real fleet of the
worker tests: bin/perflow-worker processes, the dev broker, Redis, nginx serving the
tiny model and moto's S3. The manifest is read back with boto3 and every URL in it
checked against the object's bytes; a second identical submit must add no work, with
Redis (nothing sent) and without it (the workers answer from their records)."""
import json
import os
import subprocess

import jsonschema

from conftest import BIN, BUCKET, ROOT, sha256
from test_worker import JOB_SCHEMA, check_statuses, png_size

PERFLOW = os.path.join(BIN, "perflow")


def submit(r, *args, env=None, timeout=300):
    """bin/perflow submit with the rig's settings (brokers, topics, Redis, S3) in its environment."""
    p = subprocess.run([PERFLOW, "submit", *args], env=env or r.env(), capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def status(r, *args):
    p = subprocess.run([PERFLOW, "status", *args], env=r.env(), capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def work_done(workers):
    """(engine calls, jobs accepted, redeliveries replayed) over the workers' logs."""
    return (sum(len(w.events("engine.start")) for w in workers), sum(len(w.events("job.accepted")) for w in workers),
            sum(len(w.events("job.replayed")) for w in workers))


def test_submit_prompts_times_seeds_through_two_workers(rig, tmp_path):
    r = rig(partitions=2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "prompt number %d, a cat" % i}) + "\n" for i in range(50)))
    workers = [r.start_worker(PERFLOW_MAX_BATCH=4, PERFLOW_BATCH_WAIT_MS=100) for _ in range(2)]
    for w in workers:
        w.wait_event("kafka.assigned", timeout=30)
    manifest = "s3://%s/manifests/fifty-by-two.jsonl" % BUCKET
    args = ["--model-url", r.model, "--delta-url", r.delta, "--prompts", str(prompts), "--seeds", "0-1",
            "--width", "64", "--height", "64", "--output", "s3://%s/{job_id}/{index}.png" % BUCKET,
            "--rate", "500", "--wait", "--timeout", "300", "--manifest", manifest]
    rc, out, err = submit(r, *args)
    assert rc == 0, out + err
    batch = out.split()[1].rstrip(":")
    assert "100 jobs (50 rows), 0 already done, 100 to send" in out, out
    assert "100 succeeded, 0 failed" in out and "done 100" in err, out + err
    # The manifest: one line per job, every output in S3 with the stated digest and size.
    lines = r.moto.client.get_object(Bucket=BUCKET, Key="manifests/fifty-by-two.jsonl")["Body"].read()
    entries = [json.loads(x) for x in lines.decode().splitlines()]
    assert len(entries) == 100 and len({e["job_id"] for e in entries}) == 100
    assert {(e["prompt"], e["seed"]) for e in entries} == {("prompt number %d, a cat" % i, s)
                                                           for i in range(50) for s in (0, 1)}
    digests = set()
    for e in entries:
        assert e["batch_id"] == batch and e["job_id"].startswith(batch + "-") and e["state"] == "succeeded", e
        assert e["settings"]["width"] == 64 and e["settings"]["model"]["base"]["url"] == r.model
        assert e["line"] == int(e["prompt"].split()[2].rstrip(",")) + 1
        (o,) = e["outputs"]
        key = "%s/0.png" % e["job_id"]
        assert o["url"] == "s3://%s/%s" % (BUCKET, key)
        data = r.object(key)
        assert sha256(data) == o["sha256"] and len(data) == o["size"] and png_size(data) == (64, 64)
        digests.add(o["sha256"])
    assert len(digests) == 100  # every prompt and seed its own image
    # Both workers took part, and each job ran once.
    calls, accepted, replayed = work_done(workers)
    assert accepted == 100 and replayed == 0
    assert all(w.events("job.accepted") for w in workers), [len(w.events("job.accepted")) for w in workers]
    r.events.wait_terminal([e["job_id"] for e in entries], timeout=30)
    check_statuses(r.events)
    # The jobs carried their batch id (and followed the schema).
    ev = workers[0].events("job.accepted")[0]
    assert ev["batch_id"] == batch

    # The same submit again: the same batch, nothing sent (the results are in Redis).
    before = {o["Key"]: o["ETag"] for o in r.moto.client.list_objects_v2(Bucket=BUCKET, Prefix=batch)["Contents"]}
    rc, out2, err2 = submit(r, *args)
    assert rc == 0, out2 + err2
    assert out2.split()[1].rstrip(":") == batch
    assert "100 already done, 0 to send" in out2 and "sent" not in out2, out2
    again = r.moto.client.get_object(Bucket=BUCKET, Key="manifests/fifty-by-two.jsonl")["Body"].read()
    assert again == lines
    # Without Redis the jobs are sent, and the workers answer each from its record.
    env = r.env()
    env.pop("PERFLOW_REDIS")
    rc, out3, err3 = submit(r, *args[:-2], "--no-redis", env=env)
    assert rc == 0 and "100 to send" in out3 and "100 succeeded" in out3 and "0 new images" in out3, out3 + err3
    r.events.wait(lambda: work_done(workers)[2] == 100, 30, "100 replayed redeliveries")
    assert work_done(workers)[:2] == (calls, accepted)  # no new engine call, no job run again
    after = {o["Key"]: o["ETag"] for o in r.moto.client.list_objects_v2(Bucket=BUCKET, Prefix=batch)["Contents"]}
    assert after == before

    # perflow status: the batch and one job, from Redis.
    rc, out, err = status(r, "--batch", batch)
    assert rc == 0 and "100 jobs" in out and "100 succeeded, 0 failed" in out, out + err
    rc, out, err = status(r, "--json", entries[0]["job_id"])
    st = json.loads(out)
    assert rc == 0 and st["state"] == "succeeded" and st["status"]["outputs"] == entries[0]["outputs"], out + err
    rc, out, err = status(r, "--batch", batch, "--manifest", str(tmp_path / "again.jsonl"))
    assert rc == 0, out + err
    from_status = [json.loads(x) for x in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [(e["job_id"], e["outputs"]) for e in from_status] == [(e["job_id"], e["outputs"]) for e in entries]


def test_submit_one_refine_job_follows_progress_and_status(rig, tmp_path):
    r = rig()
    r.start_worker()
    manifest = tmp_path / "one.jsonl"
    rc, out, err = submit(r, "--model-url", r.model, "--delta-url", r.delta, "--prompt", "a photo of a cat",
                          "--seed", "5", "--width", "64", "--height", "64", "--num-images", "2", "--refine",
                          "--controlnet-url", r.controlnet, "--refine-size", "128", "--batch-id", "demo-batch",
                          "--output", "s3://%s/{job_id}/{stage}-{index}.png" % BUCKET, "--keep-base",
                          "--wait", "--timeout", "120", "--manifest", str(manifest))
    assert rc == 0, out + err
    assert "running" in err and "refine" in err, err  # the progress line named the stage
    (e,) = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert e["batch_id"] == "demo-batch" and e["job_id"].startswith("demo-batch-") and e["seed"] == 5
    assert e["settings"]["refine"]["size"] == 128 and e["settings"]["refine"]["keep_base"] is True
    assert sorted((o["stage"], o["index"]) for o in e["outputs"]) == [("base", 0), ("base", 1), ("refined", 0),
                                                                      ("refined", 1)]
    for o in e["outputs"]:
        data = r.object(o["url"][len("s3://%s/" % BUCKET):])
        assert sha256(data) == o["sha256"] and png_size(data) == ((128, 128) if o["stage"] == "refined" else (64, 64))
    # A dry run of the same flags prints exactly the job that was sent.
    rc, dry, err = submit(r, "--model-url", r.model, "--delta-url", r.delta, "--prompt", "a photo of a cat", "--seed",
                          "5", "--width", "64", "--height", "64", "--num-images", "2", "--refine", "--controlnet-url",
                          r.controlnet, "--refine-size", "128", "--batch-id", "demo-batch", "--output",
                          "s3://%s/{job_id}/{stage}-{index}.png" % BUCKET, "--keep-base", "--dry-run")
    (job,) = [json.loads(x) for x in dry.splitlines()]
    jsonschema.validate(job, JOB_SCHEMA)
    assert job["job_id"] == e["job_id"] and job["batch_id"] == "demo-batch"
    rc, out, err = status(r, e["job_id"])
    assert rc == 0 and out.startswith(e["job_id"] + ": succeeded") and "refined-0.png" in out, out + err


def test_submit_rejections_and_status_states(rig, tmp_path):
    r = rig()
    w = r.start_worker()
    w.wait_event("kafka.assigned", timeout=30)
    # A job the worker rejects only once it loads the model (refine size past 4096 a side) ends rejected;
    # submit says so, exits 1, and status reports it from the state the worker noted.
    rc, out, err = submit(r, "--model-url", r.model, "--prompt", "x", "--width", "64", "--height", "2048",
                          "--refine", "--controlnet-url", r.controlnet, "--refine-size", "4096",
                          "--output", "s3://%s/{job_id}.png" % BUCKET, "--wait", "--timeout", "120")
    assert rc == 1 and "1 rejected" in out and "refine.size" in out, out + err
    job_id = [x for x in out.split() if x.startswith("b") and "-" in x][0].rstrip(":")
    rc, out, err = status(r, job_id)
    assert rc == 0 and out.startswith(job_id + ": rejected") and "refine.size" in out, out + err
    # An unknown job and an unknown batch.
    assert status(r, "no-such-job")[0] == 1
    assert status(r, "--batch", "no-such-batch")[0] == 1
    # --timeout bounds the wait: no worker reads this topic.
    env = r.env(PERFLOW_JOBS_TOPICS=r.jobs_topics[0] + "-unread")
    r.broker.topic(r.jobs_topics[0] + "-unread", 1)
    rc, out, err = submit(r, "--model-url", r.model, "--prompt", "nobody", "--output", "s3://%s/{job_id}.png" % BUCKET,
                          "--wait", "--timeout", "2", env=env, timeout=60)
    assert rc == 1 and "gave up waiting after 2 s: 1 job not finished" in err, out + err


def test_missing_topics_named_by_worker_and_submit(rig):
    """Kafka creates no topic on first use here (as most production clusters): a worker
    whose jobs, status or dead-letter topic is missing does not start and names the
    topic; perflow submit names a missing jobs or status topic."""
    r = rig()
    for var in ("PERFLOW_JOBS_TOPICS", "PERFLOW_STATUS_TOPIC", "PERFLOW_DEAD_LETTER_TOPIC"):
        w = r.start_worker(**{var: "no-such-topic-" + var[8:].lower().replace("_", "-")})
        assert w.wait(30) == 1, var
        msg = w.events("worker.start_failed")[0]["msg"]
        assert "topic 'no-such-topic-%s' does not exist" % var[8:].lower().replace("_", "-") in msg, msg
        assert "\n" not in msg
    args = ("--model-url", r.model, "--prompt", "x", "--output", "s3://%s/{job_id}.png" % BUCKET, "--no-redis")
    rc, out, err = submit(r, *args, env=r.env(PERFLOW_JOBS_TOPICS="no-such-jobs"), timeout=60)
    assert rc == 1 and "topic 'no-such-jobs' does not exist" in err, out + err
    rc, out, err = submit(r, *args, "--wait", "--timeout", "5", env=r.env(PERFLOW_STATUS_TOPIC="no-such-status"),
                          timeout=60)
    assert rc == 1 and "topic 'no-such-status' does not exist" in err, out + err


def test_submit_thousand_jobs_wait_and_status(rig, tmp_path):
    """A batch of 1,000 jobs (100 prompts x 10 seeds) through perflow submit --wait into
    three workers on Apache Kafka, then perflow status of the batch: every job once,
    every image its own. SUBMIT_JOBS_PROMPTS changes the prompt count (10 seeds each)."""
    n = int(os.environ.get("SUBMIT_JOBS_PROMPTS", "100"))
    r = rig(partitions=6)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\n" + "".join("thousand %d a cat\n" % i for i in range(n)))
    workers = [r.start_worker(PERFLOW_MAX_BATCH=8, PERFLOW_BATCH_WAIT_MS=50) for _ in range(3)]
    for w in workers:
        w.wait_event("kafka.assigned", timeout=60)
    manifest = tmp_path / "thousand.jsonl"
    rc, out, err = submit(r, "--model-url", r.model, "--prompts", str(prompts), "--seeds", "0-9", "--width", "64",
                          "--height", "64", "--steps", "2", "--output", "s3://%s/{job_id}/{index}.png" % BUCKET,
                          "--wait", "--timeout", "1200", "--manifest", str(manifest), timeout=1300)
    total = n * 10
    assert rc == 0, out[-2000:] + err[-2000:]
    assert "%d jobs (%d rows), 0 already done, %d to send" % (total, n, total) in out, out
    assert "%d succeeded, 0 failed" % total in out, out
    batch = out.split()[1].rstrip(":")
    entries = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert len({e["job_id"] for e in entries}) == total
    assert len({e["outputs"][0]["sha256"] for e in entries}) == total
    rc, out, err = status(r, "--batch", batch)
    assert rc == 0 and "%d jobs" % total in out and "%d succeeded, 0 failed" % total in out, out + err
    calls, accepted, replayed = work_done(workers)
    assert accepted == total and replayed == 0
