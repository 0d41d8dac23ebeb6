/* submit_shards.c - `perflow submit --shard-size N`: a prompt file times seeds as WebDataset shard jobs (submit_shards.h). */
#include "submit_shards.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "cli_util.h"
#include "credentials.h"
#include "digest.h"
#include "job.h"
#include "s3.h"
#include "status.h"
#include "redis_conn.h"
#include "submit_kafka.h"
#include "submit_redis.h"

#define CONNECT_TIMEOUT_MS 15000

typedef struct shard {
    char id[PF_JOB_ID_MAX + 1];
    char *json;     /* the job as sent */
    long samples;
    long done;      /* samples_done of its last running event */
    int ended;
    json_t *final;  /* the terminal status */
} shard;

static volatile sig_atomic_t stop_waiting;
static void on_signal(int sig) {
    (void)sig;
    stop_waiting = 1;
}

/* The template with {shard} replaced by the number in width digits (n bytes). */
static int shard_url(char *out, size_t n, const char *tmpl, long number, int width, pf_error *err) {
    const char *at = strstr(tmpl, "{shard}");
    if (!at) return pf_fail(err, "--output must contain {shard} with --shard-size (each shard is one .tar)");
    int w = snprintf(out, n, "%.*s%0*ld%s", (int)(at - tmpl), tmpl, width, number, at + 7);
    if (w < 0 || (size_t)w >= n) return pf_fail(err, "--output is too long");
    if (strstr(out, "{shard}")) return pf_fail(err, "--output must contain {shard} once");
    return 0;
}

/* The samples of rows x seeds, in order. */
static json_t *all_samples(const pf_shard_plan_in *in, pf_error *err) {
    json_t *all = json_array();
    for (long r = 0; r < in->rows->n; r++) {
        const pf_prompt_row *row = &in->rows->rows[r];
        uint64_t lo = row->has_seed ? row->seed : in->seed_lo, hi = row->has_seed ? row->seed : in->seed_hi;
        for (uint64_t seed = lo;; seed++) {
            const char *neg = row->negative_prompt ? row->negative_prompt : in->negative;
            json_t *s = json_pack("{s:s, s:I, s:{s:I}}", "prompt", row->prompt, "seed", (json_int_t)seed, "meta",
                                  "line", (json_int_t)row->line);
            if (!s) {
                json_decref(all);
                pf_fail(err, "%s:%ld: the prompt is not valid UTF-8", in->source ? in->source : "prompt", row->line);
                return NULL;
            }
            if (neg && *neg) json_object_set_new(s, "negative_prompt", json_string(neg));
            json_array_append_new(all, s);
            if (seed == hi) break;
        }
    }
    return all;
}

/* Makes every shard's job, checked by the workers' parser. */
static int plan(const pf_shard_plan_in *in, shard **out, long *nout, char *batch_id, size_t bn, pf_error *err) {
    *out = NULL;
    *nout = 0;
    if (json_object_get(in->tmpl, "refine")) return pf_fail(err, "--shard-size makes text-to-image samples: not with --refine");
    json_t *all = all_samples(in, err);
    if (!all) return -1;
    long total = (long)json_array_size(all), n = (total + in->shard_size - 1) / in->shard_size;
    int width = 5;
    for (long m = n - 1; m >= 100000; m /= 10) width++;
    if (n - 1 > PF_JOB_MAX_SHARD) {
        json_decref(all);
        return pf_fail(err, "%ld shards: at most %d (raise --shard-size)", n, PF_JOB_MAX_SHARD + 1);
    }
    shard *sh = PF_CALLOC((size_t)(n ? n : 1), sizeof *sh);
    json_t **jobs = PF_CALLOC((size_t)(n ? n : 1), sizeof *jobs);
    pf_sha256 *h = pf_sha256_new();
    int rc = 0;
    for (long k = 0; k < n && !rc; k++) {
        char url[2048];
        if ((rc = shard_url(url, sizeof url, in->output, k, width, err))) break;
        json_t *j = json_deep_copy(in->tmpl);
        json_object_del(j, "num_images");
        json_object_set_new(json_object_get(j, "output"), "url", json_string(url));
        json_object_set_new(j, "shard", json_integer(k));
        json_t *samples = json_array();
        long from = k * in->shard_size, to = from + in->shard_size < total ? from + in->shard_size : total;
        for (long i = from; i < to; i++) json_array_append(samples, json_array_get(all, (size_t)i));
        json_object_set_new(j, "samples", samples);
        sh[k].samples = to - from;
        char *canon = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
        pf_sha256_update(h, canon, strlen(canon));
        free(canon);
        jobs[k] = j;
    }
    char hex[PF_SHA256_HEX];
    pf_sha256_final_hex(h, hex);
    pf_sha256_free(h);
    if (in->batch_id) snprintf(batch_id, bn, "%s", in->batch_id);
    else snprintf(batch_id, bn, "d%.12s", hex);
    for (long k = 0; k < n && !rc; k++) {
        snprintf(sh[k].id, sizeof sh[k].id, "%s-%0*ld", batch_id, width, k);
        json_object_set_new(jobs[k], "job_id", json_string(sh[k].id));
        json_object_set_new(jobs[k], "batch_id", json_string(batch_id));
        sh[k].json = json_dumps(jobs[k], JSON_COMPACT);
        PF_CHECK(sh[k].json);
        pf_job job;
        pf_error e;
        char field[PF_JOB_FIELD_MAX];
        if (pf_job_parse(&job, sh[k].json, strlen(sh[k].json), field, sizeof field, &e))
            rc = pf_fail(err, "shard %ld: %s%s", k, e.msg,
                         strstr(e.msg, "larger than") ? " (lower --shard-size)" : "");
        else
            pf_job_free(&job);
    }
    for (long k = 0; k < n; k++) json_decref(jobs[k]);
    free(jobs);
    json_decref(all);
    *out = sh;
    *nout = n;
    return rc;
}

/* The progress line: shards and samples done, samples/s, ETA. */
static void show(const shard *sh, long n, long total, long long t0, int final) {
    long done = 0, ended = 0;
    for (long k = 0; k < n; k++) {
        done += sh[k].ended ? sh[k].samples : sh[k].done;
        ended += sh[k].ended;
    }
    double secs = (double)(pf_now_ms() - t0) / 1000.0, rate = secs > 0 ? (double)done / secs : 0;
    char eta[32] = "--";
    if (done >= total) snprintf(eta, sizeof eta, "0:00");
    else if (rate > 0) {
        long s = (long)((double)(total - done) / rate);
        snprintf(eta, sizeof eta, "%ld:%02ld", s / 60, s % 60);
    }
    fprintf(stderr, "%sshards %ld/%ld  samples %ld/%ld  %.2f samples/s  ETA %s%s", isatty(2) ? "\r" : "", ended, n,
            done, total, rate, eta, isatty(2) && !final ? "\033[K" : "\n");
    fflush(stderr);
}

/* Follows the status topic until every shard ended (or the timeout, or a signal). */
static int follow(shard *sh, long n, long total, pf_submit_kafka *k, double timeout) {
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    long long t0 = pf_now_ms(), deadline = timeout > 0 ? t0 + (long long)(timeout * 1000) : 0, last = 0;
    long left = n;
    while (left > 0 && !stop_waiting && !(deadline && pf_now_ms() > deadline)) {
        json_t *ev = pf_submit_kafka_status(k, 200);
        if (ev) {
            const char *id = json_string_value(json_object_get(ev, "job_id"));
            for (long s = 0; s < n; s++) {
                if (strcmp(sh[s].id, id) || sh[s].ended) continue;
                json_t *d = json_object_get(ev, "samples_done");
                if (json_is_integer(d)) sh[s].done = (long)json_integer_value(d);
                if (pf_status_is_terminal(ev)) {
                    sh[s].ended = 1;
                    sh[s].final = json_incref(ev);
                    left--;
                }
                break;
            }
            json_decref(ev);
        }
        pf_submit_kafka_poll(k, 0);
        if (pf_now_ms() - last >= (isatty(2) ? 250 : 2000)) {
            last = pf_now_ms();
            show(sh, n, total, t0, 0);
        }
    }
    show(sh, n, total, t0, 1);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (left)
        fprintf(stderr, "perflow: submit: stopped waiting: %ld shard%s not finished\n", left, left == 1 ? "" : "s");
    return left ? -1 : 0;
}

/* The manifest's URL: the template's folder + "manifest.jsonl". */
static int manifest_url(char *out, size_t n, const char *tmpl, pf_error *err) {
    const char *slash = strrchr(tmpl, '/');
    if (!slash || (size_t)(slash - tmpl) + 16 >= n) return pf_fail(err, "--output: no folder for the manifest");
    snprintf(out, n, "%.*s/manifest.jsonl", (int)(slash - tmpl), tmpl);
    return 0;
}

static int write_manifest(const shard *sh, long n, const pf_shard_plan_in *in, const char *batch_id, char *dest,
                          size_t dn, pf_error *err) {
    if (manifest_url(dest, dn, in->output, err)) return -1;
    char path[] = "/tmp/perflow-manifest-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return pf_fail(err, "a temporary file: %s", strerror(errno));
    FILE *f = fdopen(fd, "w");
    json_t *settings = json_deep_copy(in->tmpl);
    json_object_del(settings, "schema");
    json_object_del(settings, "output");
    json_object_del(settings, "num_images");
    for (long k = 0; k < n; k++) {
        json_t *out = json_array_get(json_object_get(sh[k].final, "outputs"), 0);
        const char *state = sh[k].final ? json_string_value(json_object_get(sh[k].final, "state")) : "unfinished";
        json_t *line = json_pack("{s:I, s:s, s:s, s:s, s:I, s:O}", "shard", (json_int_t)k, "job_id", sh[k].id,
                                 "batch_id", batch_id, "state", state ? state : "unknown", "samples",
                                 (json_int_t)sh[k].samples, "settings", settings);
        if (out) {
            static const char *const keys[] = {"url", "sha256", "size", "samples_from_store", "model"};
            for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
                if (json_object_get(out, keys[i])) json_object_set(line, keys[i], json_object_get(out, keys[i]));
        }
        char *s = json_dumps(line, JSON_COMPACT | JSON_SORT_KEYS);
        fprintf(f, "%s\n", s);
        free(s);
        json_decref(line);
    }
    json_decref(settings);
    int bad = fclose(f) != 0;
    if (bad) {
        unlink(path);
        return pf_fail(err, "writing the manifest: %s", strerror(errno));
    }
    pf_s3_config s3;
    pf_credentials cred;
    pf_s3_result res;
    int rc = pf_s3_config_from_env(&s3, err) || pf_credentials_load(&cred, err);
    if (!rc) {
        rc = pf_s3_put_file(&res, &s3, &cred, dest, path, err);
        pf_credentials_free(&cred);
    }
    unlink(path);
    return rc ? pf_error_prefix(err, "the manifest") : 0;
}

/* The batch index of perflow status --batch: one entry per shard. */
static int index_shards(const shard *sh, long n, long total, const pf_shard_plan_in *in, const pf_worker_config *cfg,
                        const char *batch_id, pf_error *err) {
    pf_wredis *r;
    if (pf_wredis_open(&r, in->redis, cfg->job_prefix, 5000, err)) return -1;
    const char **ids = PF_CALLOC((size_t)n + 1, sizeof *ids);
    json_t **entries = PF_CALLOC((size_t)n + 1, sizeof *entries);
    for (long k = 0; k < n; k++) {
        ids[k] = sh[k].id;
        entries[k] = json_pack("{s:I, s:I, s:I}", "i", (json_int_t)k, "shard", (json_int_t)k, "samples",
                               (json_int_t)sh[k].samples);
    }
    json_t *meta = json_pack("{s:s, s:O, s:I, s:I, s:I, s:I}", "batch_id", batch_id, "settings", in->tmpl, "jobs",
                             (json_int_t)n, "shards", (json_int_t)n, "samples", (json_int_t)total, "submitted",
                             (json_int_t)(pf_wall_ms() / 1000));
    int rc = pf_sr_index_put(r, PF_BATCH_PREFIX, batch_id, ids, entries, n, meta, cfg->result_ttl_s, err);
    json_decref(meta);
    for (long k = 0; k < n; k++) json_decref(entries[k]);
    free(entries);
    free(ids);
    pf_wredis_close(r);
    return rc;
}

int pf_submit_shards(const pf_shard_plan_in *in, const pf_worker_config *cfg, const char *jobs_topic) {
    shard *sh = NULL;
    long n = 0, total = 0;
    char batch_id[PF_JOB_BATCH_ID_MAX + 1];
    pf_error err = {0};
    pf_submit_kafka *k = NULL;
    int rc = 1;
    if (plan(in, &sh, &n, batch_id, sizeof batch_id, &err)) goto fail;
    for (long s = 0; s < n; s++) total += sh[s].samples;
    if (in->dry_run) {
        for (long s = 0; s < n; s++) printf("%s\n", sh[s].json);
        rc = pf_cli_flush_stdout("submit");
        goto out;
    }
    if (in->redis && index_shards(sh, n, total, in, cfg, batch_id, &err)) goto fail;
    printf("dataset %s: %ld sample%s in %ld shard%s of up to %ld, to %s\n", batch_id, total, total == 1 ? "" : "s", n,
           n == 1 ? "" : "s", in->shard_size, jobs_topic);
    fflush(stdout);
    if (pf_submit_kafka_open(&k, cfg, jobs_topic, in->wait ? cfg->status_topic : NULL, CONNECT_TIMEOUT_MS, &err))
        goto fail;
    for (long s = 0; s < n; s++) {
        if (pf_submit_kafka_send(k, sh[s].id, batch_id, sh[s].json, NULL, -1, &err)) goto fail; /* a shard runs alone: not routed */
        pf_submit_kafka_poll(k, 0);
    }
    if (pf_submit_kafka_flush(k, &err)) goto fail;
    printf("sent %ld shard job%s\n", n, n == 1 ? "" : "s");
    fflush(stdout);
    if (!in->wait) {
        rc = pf_cli_flush_stdout("submit");
        goto out;
    }
    long long t0 = pf_now_ms();
    int all = !follow(sh, n, total, k, in->timeout);
    double secs = (double)(pf_now_ms() - t0) / 1000.0;
    long ok = 0, from_store = 0;
    for (long s = 0; s < n; s++) {
        const char *st = sh[s].final ? json_string_value(json_object_get(sh[s].final, "state")) : NULL;
        if (st && !strcmp(st, PF_ST_SUCCEEDED)) {
            ok++;
            from_store += (long)json_integer_value(
                json_object_get(json_array_get(json_object_get(sh[s].final, "outputs"), 0), "samples_from_store"));
        } else if (sh[s].final) {
            const char *msg = json_string_value(json_object_get(json_object_get(sh[s].final, "error"), "message"));
            printf("  %s: %s: %s\n", sh[s].id, st ? st : "?", msg ? msg : "");
        }
    }
    printf("dataset %s: %ld/%ld shards succeeded; %ld samples (%ld from the result store) in %.1f s (%.2f samples/s)\n",
           batch_id, ok, n, total, from_store, secs, secs > 0 ? (double)total / secs : 0.0);
    char dest[2100];
    if (write_manifest(sh, n, in, batch_id, dest, sizeof dest, &err)) goto fail;
    printf("manifest: %s (%ld line%s)\n", dest, n, n == 1 ? "" : "s");
    rc = all && ok == n ? pf_cli_flush_stdout("submit") : 1;
    goto out;
fail:
    rc = pf_cli_fail("submit", &err, 0);
out:
    pf_submit_kafka_close(k, 5000);
    for (long s = 0; s < n; s++) {
        free(sh[s].json);
        json_decref(sh[s].final);
    }
    free(sh);
    return rc;
}
