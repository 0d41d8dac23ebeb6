/* result.c - terminal results in Redis (result.h). */
#include "result.h"

#include <stdlib.h>
#include <string.h>

int pf_result_get(pf_wredis *r, const char *job_id, char **json, pf_error *err) {
    char key[512];
    pf_wredis_key(key, sizeof key, r, job_id, "result");
    *json = NULL;
    redisReply *rep = pf_wredis_cmd(r, err, "GET %s", key);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_STRING) {
        *json = PF_MALLOC(rep->len + 1);
        memcpy(*json, rep->str, rep->len);
        (*json)[rep->len] = '\0';
    }
    freeReplyObject(rep);
    return 0;
}

/* SET <prefix>:<job_id>:<kind> json EX ttl_s. */
static int put_json(pf_wredis *r, const char *job_id, const char *kind, const char *json, long ttl_s, pf_error *err) {
    char key[512];
    pf_wredis_key(key, sizeof key, r, job_id, kind);
    redisReply *rep = pf_wredis_cmd(r, err, "SET %s %s EX %ld", key, json, ttl_s);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int pf_result_put(pf_wredis *r, const char *job_id, const char *json, long ttl_s, pf_error *err) {
    return put_json(r, job_id, "result", json, ttl_s, err);
}

int pf_state_put(pf_wredis *r, const char *job_id, const char *json, long ttl_s, pf_error *err) {
    return put_json(r, job_id, "state", json, ttl_s, err);
}

/* One round trip: the member and the key's expiry together. */
static const char answered_lua[] = "redis.call('sadd', KEYS[1], ARGV[1]) return redis.call('expire', KEYS[1], ARGV[2])";

int pf_answered_add(pf_wredis *r, const char *job_id, const char *where, long ttl_s, pf_error *err) {
    char key[512];
    pf_wredis_key(key, sizeof key, r, job_id, "acked");
    redisReply *rep = pf_wredis_cmd(r, err, "EVAL %s 1 %s %s %ld", answered_lua, key, where, ttl_s);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int pf_answered_has(pf_wredis *r, const char *job_id, const char *where, int *yes, pf_error *err) {
    char key[512];
    pf_wredis_key(key, sizeof key, r, job_id, "acked");
    *yes = 0;
    redisReply *rep = pf_wredis_cmd(r, err, "SISMEMBER %s %s", key, where);
    if (!rep) return -1;
    *yes = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    return 0;
}
