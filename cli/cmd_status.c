/* cmd_status.c - `perflow status JOB_ID | --batch ID`: a job's or a batch's
 * latest state from the workers' Redis (the records of protocol/result.h and the
 * batch index of perflow submit, cli/submit_redis.h), and a batch's manifest
 * written from them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_util.h"
#include "commands.h"
#include "output_key.h"
#include "redis_conn.h"
#include "status.h"
#include "submit_manifest.h"
#include "submit_redis.h"
#include "worker_config.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: perflow status [--redis ADDR] [--config FILE] [--json] JOB_ID\n"
            "       perflow status [--redis ADDR] [--config FILE] [--json] [--jobs] [--manifest DEST] --batch ID\n\n"
            "Prints the latest state of a job, or of every job of a batch made by perflow submit, from\n"
            "the workers' Redis: succeeded, failed, cancelled (the result the workers recorded),\n"
            "rejected, retrying (the last state they noted), running (a worker holds the job's lease)\n"
            "or queued (no worker has it yet, or its records expired).\n"
            "  --redis ADDR      host:port or unix:/path (default: the workers' setting, $PERFLOW_REDIS)\n"
            "  --config FILE     the workers' settings file (also $PERFLOW_CONFIG), for redis and job_prefix\n"
            "  --json            one JSON object per job instead of text\n"
            "  --jobs            with --batch, a line per job too\n"
            "  --manifest DEST   with --batch, write the batch's manifest (as perflow submit --manifest) to a\n"
            "                    file or s3://BUCKET/KEY\n"
            "Exit status: 0 when the job or batch is known, 1 when not or on errors, 2 on usage errors.\n");
}

static int usage_error(const char *fmt, const char *arg) { return pf_cli_usage_error("status", fmt, arg); }

/* A job's state from its records; *final is the status that says it (result
 * or noted state; borrowed), or NULL. */
static const char *job_state(json_t *result, json_t *noted, const char *holder, json_t **final) {
    *final = NULL;
    if (json_is_object(result) && pf_status_is_terminal(result)) {
        *final = result;
        return json_string_value(json_object_get(result, "state"));
    }
    const char *st = json_string_value(json_object_get(noted, "state"));
    if (st && !strcmp(st, PF_ST_REJECTED)) {
        *final = noted;
        return PF_ST_REJECTED;
    }
    if (holder) return "running";
    if (st && !strcmp(st, PF_ST_FAILED)) {
        *final = noted;
        return "retrying";
    }
    return "queued";
}

typedef struct records {
    json_t **result, **noted, **lease;
    int *cancel;
} records;

static int read_records(records *rec, pf_wredis *r, const char *const *ids, long n, pf_error *err) {
    rec->result = PF_CALLOC((size_t)n + 1, sizeof *rec->result);
    rec->noted = PF_CALLOC((size_t)n + 1, sizeof *rec->noted);
    rec->lease = PF_CALLOC((size_t)n + 1, sizeof *rec->lease);
    rec->cancel = PF_CALLOC((size_t)n + 1, sizeof *rec->cancel);
    /* A lease's value is its holder's token, not JSON: exists is what counts. */
    int *leased = PF_CALLOC((size_t)n + 1, sizeof *leased);
    int rc = pf_sr_job_values(r, ids, n, "result", rec->result, err) ||
             pf_sr_job_values(r, ids, n, "state", rec->noted, err) ||
             pf_sr_job_exists(r, ids, n, "lease", leased, err) || pf_sr_job_exists(r, ids, n, "cancel", rec->cancel, err)
                 ? -1
                 : 0;
    for (long i = 0; i < n; i++) rec->lease[i] = leased[i] ? json_true() : NULL;
    free(leased);
    return rc;
}

static void free_records(records *rec, long n) {
    for (long i = 0; i < n && rec->result; i++) {
        json_decref(rec->result[i]);
        json_decref(rec->noted[i]);
        json_decref(rec->lease[i]);
    }
    free(rec->result);
    free(rec->noted);
    free(rec->lease);
    free(rec->cancel);
}

/* One job as text: "ID: STATE (attempt N on WORKER at TS)", its outputs and its error. */
static void print_job(const char *id, const char *state, const json_t *final, const json_t *noted, int cancel) {
    const json_t *s = final ? final : noted;
    printf("%s: %s", id, state);
    if (json_is_object(s))
        printf(" (attempt %lld, %s, %s%s)", json_integer_value(json_object_get(s, "attempt")),
               json_string_value(json_object_get(s, "worker_id")) ? json_string_value(json_object_get(s, "worker_id"))
                                                                  : "?",
               json_string_value(json_object_get(s, "ts")) ? json_string_value(json_object_get(s, "ts")) : "?",
               json_is_true(json_object_get(s, "replayed")) ? ", replayed" : "");
    printf("%s\n", cancel ? " [cancel requested]" : "");
    json_t *e = json_object_get(final, "error");
    if (json_is_object(e)) {
        const char *field = json_string_value(json_object_get(e, "field"));
        printf("  error %s: %s%s%s%s\n", json_string_value(json_object_get(e, "code")),
               json_string_value(json_object_get(e, "message")), field ? " (field " : "", field ? field : "",
               field ? ")" : "");
    }
    size_t i;
    json_t *o;
    json_array_foreach(json_object_get(final, "outputs"), i, o)
        printf("  %s  %lld bytes  sha256 %s\n", json_string_value(json_object_get(o, "url")),
               json_integer_value(json_object_get(o, "size")), json_string_value(json_object_get(o, "sha256")));
}

static void print_json(const char *id, const char *state, const json_t *final, int leased, int cancel) {
    json_t *o = json_pack("{s:s, s:s, s:b, s:b}", "job_id", id, "state", state, "running", leased, "cancel_requested",
                          cancel);
    if (final) json_object_set(o, "status", (json_t *)final);
    char *s = json_dumps(o, JSON_COMPACT);
    printf("%s\n", s);
    free(s);
    json_decref(o);
}

static int one_job(pf_wredis *r, const char *id, int as_json, pf_error *err) {
    records rec = {0};
    const char *ids[] = {id};
    int rc = 1;
    if (read_records(&rec, r, ids, 1, err)) {
        rc = pf_cli_fail("status", err, 0);
        goto out;
    }
    json_t *final;
    const char *state = job_state(rec.result[0], rec.noted[0], rec.lease[0] ? "" : NULL, &final);
    if (!rec.result[0] && !rec.noted[0] && !rec.lease[0] && !rec.cancel[0]) {
        fprintf(stderr, "perflow: status: %s: no record (no worker took it yet, or its records expired)\n", id);
        goto out;
    }
    if (as_json) print_json(id, state, final, rec.lease[0] != NULL, rec.cancel[0]);
    else print_job(id, state, final, rec.noted[0], rec.cancel[0]);
    rc = pf_cli_flush_stdout("status");
out:
    free_records(&rec, 1);
    return rc;
}

typedef struct entry {
    const char *id;
    json_t *e;
    long i;
} entry;

static int by_position(const void *a, const void *b) {
    long x = ((const entry *)a)->i, y = ((const entry *)b)->i;
    return x < y ? -1 : x > y;
}

static int one_batch(pf_wredis *r, const char *batch, int as_json, int list, const char *manifest, pf_error *err) {
    json_t *meta = NULL, *all = NULL;
    records rec = {0};
    entry *es = NULL;
    const char **ids = NULL;
    long n = 0;
    int rc = 1;
    if (pf_sr_index_get(r, PF_BATCH_PREFIX, batch, &meta, &all, err)) goto fail;
    if (!meta) {
        fprintf(stderr, "perflow: status: batch %s is not in Redis (sent without Redis, or expired)\n", batch);
        goto out;
    }
    n = (long)json_object_size(all);
    es = PF_CALLOC((size_t)n + 1, sizeof *es);
    ids = PF_CALLOC((size_t)n + 1, sizeof *ids);
    const char *key;
    json_t *v;
    long k = 0;
    json_object_foreach(all, key, v) es[k++] = (entry){key, v, (long)json_integer_value(json_object_get(v, "i"))};
    qsort(es, (size_t)n, sizeof *es, by_position);
    for (long i = 0; i < n; i++) ids[i] = es[i].id;
    if (read_records(&rec, r, ids, n, err)) goto fail;
    static const char *const names[] = {"succeeded", "failed", "rejected", "cancelled", "running", "retrying", "queued"};
    long counts[7] = {0};
    pf_manifest *m = NULL;
    json_t *settings = json_deep_copy(json_object_get(meta, "settings"));
    json_object_del(settings, "schema");
    if (manifest && json_object_get(meta, "shards")) {
        json_decref(settings);
        pf_fail(err, "batch %s is a dataset: its manifest (a line per shard) is written by perflow submit --wait "
                     "beside the shards", batch);
        goto fail;
    }
    if (manifest && pf_manifest_open(&m, manifest, err)) {
        json_decref(settings);
        goto fail;
    }
    int bad = 0;
    long samples = 0, samples_done = 0; /* a dataset's (perflow submit --shard-size): its jobs are shards */
    for (long i = 0; i < n; i++) {
        json_t *final;
        const char *state = job_state(rec.result[i], rec.noted[i], rec.lease[i] ? "" : NULL, &final);
        for (int s = 0; s < 7; s++) counts[s] += !strcmp(state, names[s]);
        long ns = (long)json_integer_value(json_object_get(es[i].e, "samples"));
        samples += ns;
        if (!strcmp(state, "succeeded")) samples_done += ns;
        if (list && as_json) print_json(es[i].id, state, final, rec.lease[i] != NULL, rec.cancel[i]);
        else if (list) print_job(es[i].id, state, final, rec.noted[i], rec.cancel[i]);
        if (m && !bad)
            bad = pf_manifest_add(m, batch, es[i].id, json_string_value(json_object_get(es[i].e, "prompt")),
                                  json_string_value(json_object_get(es[i].e, "negative_prompt")),
                                  (uint64_t)json_integer_value(json_object_get(es[i].e, "seed")),
                                  (long)json_integer_value(json_object_get(es[i].e, "line")), settings, final,
                                  final ? NULL : state, err);
    }
    json_decref(settings);
    long lines = m ? pf_manifest_lines(m) : 0;
    if (pf_manifest_close(m, !bad, err) || bad) goto fail;
    if (as_json && !list) {
        json_t *o = json_pack("{s:s, s:I}", "batch_id", batch, "jobs", (json_int_t)n);
        for (int s = 0; s < 7; s++) json_object_set_new(o, names[s], json_integer(counts[s]));
        if (json_object_get(meta, "shards")) {
            json_object_set_new(o, "shards", json_integer(n));
            json_object_set_new(o, "samples", json_integer(samples));
            json_object_set_new(o, "samples_done", json_integer(samples_done));
        }
        char *s = json_dumps(o, JSON_COMPACT);
        printf("%s\n", s);
        free(s);
        json_decref(o);
    } else if (!as_json) {
        time_t t = (time_t)json_integer_value(json_object_get(meta, "submitted"));
        struct tm tm;
        char when[32] = "?";
        if (gmtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        printf("batch %s: %ld job%s (submitted %s): %ld succeeded, %ld failed, %ld rejected, %ld cancelled, "
               "%ld running, %ld retrying, %ld queued\n",
               batch, n, n == 1 ? "" : "s", when, counts[0], counts[1], counts[2], counts[3], counts[4], counts[5],
               counts[6]);
        if (json_object_get(meta, "shards"))
            printf("dataset %s: %ld shard%s, %ld of %ld samples done (%ld of %ld shards succeeded)\n", batch, n,
                   n == 1 ? "" : "s", samples_done, samples, counts[0], n);
    }
    if (manifest) printf("manifest: %s (%ld line%s)\n", manifest, lines, lines == 1 ? "" : "s");
    rc = pf_cli_flush_stdout("status");
    goto out;
fail:
    rc = pf_cli_fail("status", err, 0);
out:
    free_records(&rec, n);
    free(es);
    free(ids);
    json_decref(all);
    json_decref(meta);
    return rc;
}

int cmd_status(int argc, char **argv) {
    const char *redis = NULL, *config = NULL, *batch = NULL, *job = NULL, *manifest = NULL;
    int as_json = 0, list = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            as_json = 1;
        } else if (!strcmp(a, "--jobs")) {
            list = 1;
        } else if (!strcmp(a, "--redis") || !strcmp(a, "--config") || !strcmp(a, "--batch") ||
                   !strcmp(a, "--manifest")) {
            if (++i == argc) return usage_error("%s needs a value", a);
            *(a[2] == 'r' ? &redis : a[2] == 'c' ? &config : a[2] == 'b' ? &batch : &manifest) = argv[i];
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option '%s'", a);
        } else if (!job) {
            job = a;
        } else {
            return usage_error("unexpected argument '%s'", a);
        }
    }
    if (!job == !batch) return usage_error("%s", "needs JOB_ID or --batch ID (one of them)");
    char tmp[8];
    pf_error e;
    const char *id = job ? job : batch;
    if (pf_output_key(tmp, sizeof tmp, "x", id, 0, 0, &e))
        return usage_error("'%s' is not a job or batch id (1 to 128 of [A-Za-z0-9._-], not starting with '.')", id);
    if ((list || manifest) && !batch) return usage_error("%s", "--jobs and --manifest go with --batch");
    static pf_worker_config cfg;
    pf_error err = {0};
    pf_worker_config_defaults(&cfg);
    const char *file = config ? config : getenv("PERFLOW_CONFIG");
    if ((file && *file && pf_worker_config_load_file(&cfg, file, &err)) || pf_worker_config_from_env(&cfg, &err) ||
        (redis && pf_worker_config_set(&cfg, "redis", redis, &err)))
        return pf_cli_fail("status", &err, 0);
    pf_wredis *r;
    if (pf_wredis_open(&r, cfg.redis, cfg.job_prefix, 5000, &err)) return pf_cli_fail("status", &err, 0);
    int rc = job ? one_job(r, job, as_json, &err) : one_batch(r, batch, as_json, list, manifest, &err);
    pf_wredis_close(r);
    return rc;
}
