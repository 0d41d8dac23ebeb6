/* submit_redis.c - job records and the batch index in Redis, for submit and status (submit_redis.h). */
#include "submit_redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int job_values(pf_wredis *r, const char *const *ids, long n, const char *what, json_t **vals, int *exists,
                      pf_error *err) {
    char **keys = PF_CALLOC(PF_SR_CHUNK + 1, sizeof *keys);
    const char **argv = PF_CALLOC(PF_SR_CHUNK + 1, sizeof *argv);
    int rc = 0;
    for (long at = 0; at < n && !rc; at += PF_SR_CHUNK) {
        long m = n - at < PF_SR_CHUNK ? n - at : PF_SR_CHUNK;
        argv[0] = "MGET";
        for (long i = 0; i < m; i++) {
            keys[i] = PF_MALLOC(512);
            pf_wredis_key(keys[i], 512, r, ids[at + i], what);
            argv[i + 1] = keys[i];
        }
        redisReply *rep = pf_wredis_cmd_argv(r, err, (int)m + 1, argv, NULL);
        if (!rep) rc = -1;
        else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != (size_t)m)
            rc = pf_fail(err, "redis: MGET gave an unexpected answer");
        for (long i = 0; !rc && i < m; i++) {
            const redisReply *e = rep->element[i];
            int has = e->type == REDIS_REPLY_STRING;
            if (exists) exists[at + i] = has;
            if (vals) vals[at + i] = has ? json_loadb(e->str, e->len, 0, NULL) : NULL;
        }
        if (rep) freeReplyObject(rep);
        for (long i = 0; i < m; i++) free(keys[i]);
    }
    free(keys);
    free(argv);
    return rc;
}

int pf_sr_job_values(pf_wredis *r, const char *const *ids, long n, const char *what, json_t **out, pf_error *err) {
    memset(out, 0, (size_t)n * sizeof *out);
    if (!job_values(r, ids, n, what, out, NULL, err)) return 0;
    for (long i = 0; i < n; i++) json_decref(out[i]);
    memset(out, 0, (size_t)n * sizeof *out);
    return -1;
}

int pf_sr_job_exists(pf_wredis *r, const char *const *ids, long n, const char *what, int *exists, pf_error *err) {
    return job_values(r, ids, n, what, NULL, exists, err);
}

static void batch_key(char *out, size_t n, const char *prefix, const char *batch, const char *what) {
    snprintf(out, n, "%s:%s:%s", prefix, batch, what);
}

/* Runs a command that answers anything but an error; frees the reply. */
static int run(pf_wredis *r, pf_error *err, int argc, const char **argv) {
    redisReply *rep = pf_wredis_cmd_argv(r, err, argc, argv, NULL);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int pf_sr_index_put(pf_wredis *r, const char *batch_prefix, const char *batch_id, const char *const *ids,
                    json_t *const *entries, long n, const json_t *meta, long ttl_s, pf_error *err) {
    char jobs[512], mkey[512], ttl[32];
    batch_key(jobs, sizeof jobs, batch_prefix, batch_id, "jobs");
    batch_key(mkey, sizeof mkey, batch_prefix, batch_id, "meta");
    snprintf(ttl, sizeof ttl, "%ld", ttl_s);
    const char **argv = PF_CALLOC(2 * PF_SR_CHUNK + 2, sizeof *argv);
    char **vals = PF_CALLOC(PF_SR_CHUNK, sizeof *vals);
    int rc = 0;
    for (long at = 0; at < n && !rc; at += PF_SR_CHUNK) {
        long m = n - at < PF_SR_CHUNK ? n - at : PF_SR_CHUNK;
        argv[0] = "HSET";
        argv[1] = jobs;
        for (long i = 0; i < m; i++) {
            vals[i] = json_dumps(entries[at + i], JSON_COMPACT);
            PF_CHECK(vals[i]);
            argv[2 + 2 * i] = ids[at + i];
            argv[3 + 2 * i] = vals[i];
        }
        rc = run(r, err, (int)(2 + 2 * m), argv);
        for (long i = 0; i < m; i++) free(vals[i]);
    }
    char *ms = json_dumps(meta, JSON_COMPACT);
    PF_CHECK(ms);
    const char *set[] = {"SET", mkey, ms, "EX", ttl};
    const char *expire[] = {"EXPIRE", jobs, ttl};
    if (!rc) rc = run(r, err, 5, set);
    if (!rc) rc = run(r, err, 3, expire);
    free(ms);
    free(vals);
    free(argv);
    return rc;
}

int pf_sr_index_get(pf_wredis *r, const char *batch_prefix, const char *batch_id, json_t **meta, json_t **entries,
                    pf_error *err) {
    char jobs[512], mkey[512];
    batch_key(jobs, sizeof jobs, batch_prefix, batch_id, "jobs");
    batch_key(mkey, sizeof mkey, batch_prefix, batch_id, "meta");
    *meta = NULL;
    *entries = NULL;
    const char *get[] = {"GET", mkey};
    redisReply *rep = pf_wredis_cmd_argv(r, err, 2, get, NULL);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_STRING) *meta = json_loadb(rep->str, rep->len, 0, NULL);
    freeReplyObject(rep);
    if (!json_is_object(*meta)) {
        json_decref(*meta);
        *meta = NULL;
        return 0;
    }
    /* HSCAN rather than HGETALL: a batch of a million jobs comes in pieces. */
    json_t *all = json_object();
    char cursor[32] = "0";
    do {
        const char *scan[] = {"HSCAN", jobs, cursor, "COUNT", "1000"};
        rep = pf_wredis_cmd_argv(r, err, 5, scan, NULL);
        if (!rep) goto fail;
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[0]->type != REDIS_REPLY_STRING ||
            rep->element[1]->type != REDIS_REPLY_ARRAY || rep->element[1]->elements % 2) {
            freeReplyObject(rep);
            pf_fail(err, "redis: HSCAN %s gave an unexpected answer", jobs);
            goto fail;
        }
        snprintf(cursor, sizeof cursor, "%.*s", (int)rep->element[0]->len, rep->element[0]->str);
        const redisReply *kv = rep->element[1];
        for (size_t i = 0; i + 1 < kv->elements; i += 2) {
            if (kv->element[i]->type != REDIS_REPLY_STRING || kv->element[i + 1]->type != REDIS_REPLY_STRING) continue;
            char id[256];
            snprintf(id, sizeof id, "%.*s", (int)kv->element[i]->len, kv->element[i]->str);
            json_t *e = json_loadb(kv->element[i + 1]->str, kv->element[i + 1]->len, 0, NULL);
            if (json_is_object(e)) json_object_set_new(all, id, e);
            else json_decref(e);
        }
        freeReplyObject(rep);
    } while (strcmp(cursor, "0"));
    *entries = all;
    return 0;
fail:
    json_decref(all);
    json_decref(*meta);
    *meta = NULL;
    return -1;
}
