/* main.c - perflow-worker: consumes generation jobs from Kafka, runs them on the
 * engine, posts status events; see worker.h for the loop and worker_config.h for the
 * settings. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "backend.h"
#include "cache.h"
#include "fetch.h"
#include "worker_config.h"
#include "credentials.h"
#include "log.h"
#include "metrics.h"
#include "s3.h"
#include "scratch.h"
#include "worker.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: perflow-worker [--config FILE] [--once] [--brokers HOSTS] [--group ID]\n"
            "                      [--topics T1,T2] [--instance-id ID] [--worker-id ID] [--max-batch N]\n"
            "                      [--device auto|cpu|cuda|cuda:N] [--threads N] [--log-level LEVEL]\n\n"
            "Consumes PeRFlow generation jobs (schemas/job.v1.json) from Kafka topics in priority\n"
            "order, runs them and posts status events (schemas/status.v1.json), at least once:\n"
            "a job's offset is stored only after its terminal status is acknowledged.\n\n"
            "  --config FILE   settings file of 'name = value' lines (also $PERFLOW_CONFIG)\n"
            "  --once          handle one job, then drain and exit\n"
            "  other options   override the setting of the same name\n\n"
            "Settings (defaults, then the config file, then the environment, then options):\n"
            "  %-20s %-28s %-16s %s\n",
            "name", "environment", "default", "meaning");
    pf_worker_config_help(f);
    fprintf(f,
            "\nThe model cache, fetch policy and S3 read their own environment (storage/cache.h,\n"
            "storage/s3.h: PERFLOW_CACHE_DIR, PERFLOW_CACHE_BUDGET, PERFLOW_FETCH_*, AWS_*);\n"
            "credentials come from the environment or $CREDENTIALS_DIRECTORY and are never logged.\n\n"
            "Signals: SIGTERM or SIGINT stop taking jobs and let the running one finish (up to\n"
            "drain_grace_s), store its offset and leave the group; a second signal abandons it\n"
            "(no status, no offset: it is delivered again). Under systemd it sends READY, STATUS\n"
            "and WATCHDOG notifications. Logs: one JSON object per line on stderr.\n"
            "Metrics and health (metrics_listen, off by default): GET /metrics (Prometheus text\n"
            "format), /healthz (alive), /readyz (broker, Redis and device usable; 503 and why if not).\n"
            "Exit status: 0 after a clean stop, 1 on a startup error or an abandoned job, 2 on\n"
            "usage or settings errors.\n");
}

static void on_signal(int sig) {
    (void)sig;
    pf_worker_signals++;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'},    {"once", no_argument, 0, '1'},
        {"brokers", required_argument, 0, 'b'},   {"group", required_argument, 0, 'g'},
        {"topics", required_argument, 0, 't'},    {"instance-id", required_argument, 0, 'i'},
        {"worker-id", required_argument, 0, 'w'}, {"max-batch", required_argument, 0, 'm'},
        {"device", required_argument, 0, 'd'},    {"threads", required_argument, 0, 'n'},
        {"log-level", required_argument, 0, 'l'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    static const struct { int opt; const char *name; } names[] = {
        {'b', "brokers"},   {'g', "group"},     {'t', "jobs_topics"}, {'i', "instance_id"}, {'w', "worker_id"},
        {'m', "max_batch"}, {'d', "device"},    {'n', "threads"},     {'l', "log_level"},
    };
    const char *config_file = getenv("PERFLOW_CONFIG");
    int once = 0, c;
    /* Options are applied after the file and the environment: remember them. */
    const char *given[sizeof names / sizeof names[0]] = {0};
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_file = optarg; break;
        case '1': once = 1; break;
        case 'h': usage(stdout); return 0;
        default: {
            size_t k;
            for (k = 0; k < sizeof names / sizeof names[0] && names[k].opt != c; k++) {}
            if (k == sizeof names / sizeof names[0]) {
                usage(stderr);
                return 2;
            }
            given[k] = optarg;
        }
        }
    }
    if (optind != argc) {
        fprintf(stderr, "perflow-worker: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    /* No core dump and no ptrace by other processes of the user: the process
     * holds the S3 secret, the hub token and the Kafka and Redis passwords
     * (the unit also sets LimitCORE=0). */
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    (void)setrlimit(RLIMIT_CORE, &(struct rlimit){0, 0});
    static pf_worker_config cfg;
    pf_error err = {0};
    pf_worker_config_defaults(&cfg);
    if ((config_file && *config_file && pf_worker_config_load_file(&cfg, config_file, &err)) ||
        pf_worker_config_from_env(&cfg, &err) || pf_worker_config_kafka_credentials(&cfg, &err)) {
        fprintf(stderr, "perflow-worker: %s\n", err.msg);
        return 2;
    }
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (given[k] && pf_worker_config_set(&cfg, names[k].name, given[k], &err)) {
            fprintf(stderr, "perflow-worker: --%s: %s\n", opts[k + 2].name, err.msg);
            return 2;
        }
    cfg.once = once;
    if (!cfg.worker_id[0]) {
        char host[200] = "worker";
        gethostname(host, sizeof host - 1);
        snprintf(cfg.worker_id, sizeof cfg.worker_id, "%s-%d", host, (int)getpid());
    }
    if (!cfg.work_dir[0]) {
        const char *rt = getenv("RUNTIME_DIRECTORY"); /* systemd: RuntimeDirectory= (may list several) */
        snprintf(cfg.work_dir, sizeof cfg.work_dir, "%s", rt && *rt ? rt : "/tmp");
        char *colon = strchr(cfg.work_dir, ':');
        if (colon) *colon = '\0';
    }
    pf_wlog_init(cfg.worker_id, cfg.log_level);
    /* Scratch files go to a directory of our own (scratch.h), never straight
     * into a shared /tmp. */
    static char scratch[sizeof cfg.work_dir];
    if (pf_scratch_dir_create(scratch, sizeof scratch, cfg.work_dir, &err)) {
        pf_wlog(PF_LOG_ERROR, "worker.config_error", NULL, NULL, "%s", err.msg);
        return 2;
    }
    snprintf(cfg.work_dir, sizeof cfg.work_dir, "%s", scratch);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    pf_credentials cred = {0};
    pf_cache_config cc;
    pf_s3_config s3;
    pf_backend *be = NULL;
    pf_cache *cache = NULL;
    pf_worker *w = NULL;
    int rc = 1;
    if (pf_credentials_load(&cred, &err) || pf_cache_config_from_env(&cc, &err) || pf_s3_config_from_env(&s3, &err)) {
        pf_wlog(PF_LOG_ERROR, "worker.config_error", NULL, NULL, "%s", err.msg);
        rc = 2;
        goto out;
    }
    if (!cc.redis_addr || !*cc.redis_addr) cc.redis_addr = cfg.redis; /* one Redis for both unless told */
    cc.fetch.bearer_token = cred.hub_token;
    if (cfg.hub_token_hosts[0]) cc.fetch.token_hosts = cfg.hub_token_hosts;
    cc.cancel = &pf_worker_download_stop; /* a running job's cancel, deadline and max_job_seconds */
    if (pf_fetch_token_check(&cc.fetch, &err)) {
        pf_wlog(PF_LOG_ERROR, "worker.config_error", NULL, NULL, "%s", err.msg);
        rc = 2;
        goto out;
    }
    cc.fetch.log = s3.log = pf_wlog_sink(cfg.log_level);
    cc.log = pf_metrics_storage_sink(cc.fetch.log); /* counts the disk cache's downloads and evictions */
    if (!(be = pf_backend_open(cfg.device[0] ? cfg.device : NULL, cfg.threads, &err)) ||
        pf_cache_open(&cache, &cc, &err) || pf_worker_open(&w, &cfg, cache, be, &s3, &cred, &err)) {
        pf_wlog(PF_LOG_ERROR, "worker.start_failed", NULL, NULL, "%s", err.msg);
        goto out;
    }
    rc = pf_worker_run(w);
out:
    pf_worker_close(w);
    pf_scratch_dir_remove(scratch);
    pf_cache_close(cache);
    pf_backend_free(be);
    pf_credentials_free(&cred);
    return rc;
}
