/* result.c - terminal results in Redis (result.h). */
#include "result.h"

#include <stdlib.h>
#include <string.h>

/* A reply element as a malloc'd string, NULL when it is not one. */
static char *reply_string(const redisReply *rep) {
    if (rep->type != REDIS_REPLY_STRING) return NULL;
    char *s = PF_MALLOC(rep->len + 1);
    memcpy(s, rep->str, rep->len);
    s[rep->len] = '\0';
    return s;
}

int pf_result_get(pf_wredis *r, const char *job_id, char **json, char **dead_letter, pf_error *err) {
    char key[512], dkey[512];
    pf_wredis_key(key, sizeof key, r, job_id, "result");
    pf_wredis_key(dkey, sizeof dkey, r, job_id, "dead_letter");
    *json = NULL;
    if (dead_letter) *dead_letter = NULL;
    /* one round trip, so that the pair read is the pair one put wrote */
    redisReply *rep = pf_wredis_cmd(r, err, "MGET %s %s", key, dkey);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2) {
        *json = reply_string(rep->element[0]);
        if (dead_letter && *json) *dead_letter = reply_string(rep->element[1]);
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

/* Both keys in one script: a reader never sees the result without the dead
 * letter that belongs to it, nor an older run's dead letter beside it. */
static const char result_lua[] =
    "redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[3]) "
    "if ARGV[2] == '' then redis.call('del', KEYS[2]) else redis.call('set', KEYS[2], ARGV[2], 'EX', ARGV[3]) end "
    "return 1";

int pf_result_put(pf_wredis *r, const char *job_id, const char *json, const char *dead_letter, long ttl_s,
                  pf_error *err) {
    char key[512], dkey[512];
    pf_wredis_key(key, sizeof key, r, job_id, "result");
    pf_wredis_key(dkey, sizeof dkey, r, job_id, "dead_letter");
    redisReply *rep = pf_wredis_cmd(r, err, "EVAL %s 2 %s %s %s %s %ld", result_lua, key, dkey, json,
                                    dead_letter ? dead_letter : "", ttl_s);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
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
