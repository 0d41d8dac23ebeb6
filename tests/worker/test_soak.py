"""test_soak.py - one worker, many tiny jobs: its resident memory, open file
descriptors and Redis keys stay flat after warm-up (the series is printed);
then the ASan + UBSan + LeakSanitizer build of the worker runs jobs and stops
cleanly without a single report.

make test runs the short form (SOAK_JOBS=300, SOAK_ASAN_JOBS=100). The full
soak of the issue, with its series printed:

    SOAK_JOBS=2000 sh tests/test_worker.sh -k soak -s

Redis: every finished job leaves exactly its records (result, state, and the
answered set: 3 keys, kept result_ttl_s) and nothing else; no lease survives
its job. The soak shortens result_ttl_s to SOAK_RESULT_TTL_S (default 60, the
least allowed) so that a long run shows the key count level off once records
expire as fast as jobs arrive."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import ROOT, redis_cli

JOBS = int(os.environ.get("SOAK_JOBS", "300"))
ASAN_JOBS = int(os.environ.get("SOAK_ASAN_JOBS", "100"))
TTL = int(os.environ.get("SOAK_RESULT_TTL_S", "60"))
RSS_GROWTH_MIB = 4  # the bound on resident memory growth after warm-up (measured: see below)
ASAN_WORKER = os.path.join(os.path.dirname(os.environ.get("PERFLOW_ASAN") or
                                           os.path.join(ROOT, "build", "asan", "perflow")), "perflow-worker")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def job_keys(r, prefix):
    """Redis keys of this rig's jobs by kind (result, state, acked, lease, cancel)."""
    out = {}
    for k in redis_cli(r.redis, "--scan", "--pattern", "pf:job:%s-*" % prefix).split():
        kind = k.rsplit(":", 1)[1]
        out[kind] = out.get(kind, 0) + 1
    return out


def run_soak(r, w, prefix, n, samples=10):
    """Produces n jobs at a pace the worker keeps up with and samples as they end."""
    ids = ["%s-%05d" % (prefix, i) for i in range(n)]
    series = []
    step = max(1, n // samples)
    sent = 0
    for k in range(0, n, step):
        for i in ids[k:k + step]:
            r.producer.produce(r.jobs_topics[0], key=i, value=json.dumps(
                r.job(i, prompt="soak %s" % i, seed=int(i.rsplit("-", 1)[1]))))
            sent += 1
        r.producer.flush(30)
        r.events.wait_terminal(ids[k:k + step], timeout=300)
        time.sleep(0.3)  # the last job's records and commit
        keys = job_keys(r, prefix)
        total = int(redis_cli(r.redis, "DBSIZE"))
        series.append((sent, rss_kib(w.proc.pid), fds(w.proc.pid), total, keys))
    return ids, series


def print_series(title, series):
    print("\n%s" % title)
    print("%8s %10s %6s %11s  %s" % ("jobs", "RSS MiB", "fds", "redis keys", "job keys by kind"))
    for sent, rss, nfd, total, keys in series:
        print("%8d %10.1f %6d %11d  %s" % (sent, rss / 1024.0, nfd, total, keys))


def test_soak_memory_fds_redis_flat(rig):
    r = rig(partitions=1)
    prefix = "soak" + os.urandom(3).hex()
    w = r.start_worker(PERFLOW_RESULT_TTL_S=TTL)
    ids, series = run_soak(r, w, prefix, JOBS)
    print_series("soak: %d jobs, one worker (result_ttl_s %d)" % (JOBS, TTL), series)
    assert all(len(r.events.terminal(i)) == 1 and r.events.terminal(i)[0]["state"] == "succeeded" for i in ids)
    warm = series[1:]  # the first sample includes loading the model
    rss = [s[1] for s in warm]
    growth_mib = (max(rss) - rss[0]) / 1024.0
    # Measured (issue 24, the 2-core CI machine kind): 1.0 MiB of growth after warm-up over
    # 300 jobs (44.8 -> 45.8 MiB, one step at the end) and 0.3 MiB over 1000 jobs (44.3 ->
    # 44.6 MiB). 4 MiB is four times the larger; a leak of 4 KiB a job crosses it by 1000.
    assert growth_mib < RSS_GROWTH_MIB, "resident memory grew %.1f MiB after warm-up: %s" % (growth_mib, rss)
    nfd = [s[2] for s in warm]
    assert max(nfd) - min(nfd) <= 2, "open file descriptors moved: %s" % nfd
    for sent, _, _, _, keys in series:
        assert keys.get("lease", 0) == 0, "a lease outlived its job: %s" % keys
        assert set(keys) <= {"result", "state", "acked"}, keys
        # records expire after TTL, so at most 3 per job sent, and exactly 3 while none expired
        assert all(v <= sent for v in keys.values()), keys
    other = [total - sum(keys.values()) for _, _, _, total, keys in warm]
    assert max(other) - min(other) <= 2, "Redis keys other than job records moved: %s" % other
    assert w.proc.poll() is None


class Proc:
    """A worker process started here (the ASan build), stopped on the way out."""

    def __init__(self, argv, env, log):
        self.log_path = log
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                                     start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.skipif(not os.access(ASAN_WORKER, os.X_OK), reason="no ASan worker (make build/asan/perflow-worker)")
def test_asan_worker_runs_jobs_without_reports(rig):
    r = rig(partitions=1)
    prefix = "asan" + os.urandom(3).hex()
    # halt_on_error: any ASan or UBSan report is fatal; LeakSanitizer reports
    # at exit. tests/lsan.supp lists the leaks of libraries we do not own.
    env = r.env(PERFLOW_RESULT_TTL_S=TTL, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1",
                UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
                LSAN_OPTIONS="suppressions=%s:print_suppressions=0" % os.path.join(ROOT, "tests", "lsan.supp"))
    w = Proc([ASAN_WORKER], env, os.path.join(r.dir, "asan-worker.log"))
    try:
        ids, series = run_soak(r, w, prefix, ASAN_JOBS, samples=4)
        print_series("ASan worker: %d jobs" % ASAN_JOBS, series)
    finally:
        w.stop()
    text = open(w.log_path, errors="replace").read()
    reports = [line for line in text.splitlines() if not line.startswith("{")]
    assert w.proc.returncode == 0 and not reports, "exit %s, reports:\n%s" % (w.proc.returncode,
                                                                              "\n".join(reports[:80]))
    assert all(r.events.terminal(i)[0]["state"] == "succeeded" for i in ids)
