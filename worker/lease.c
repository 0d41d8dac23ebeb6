/* lease.c - job leases in Redis (lease.h). */
#include "lease.h"

#include <stdio.h>
#include <string.h>

static const char renew_lua[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0";
static const char release_lua[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0";

int pf_lease_try(pf_wredis *r, const char *job_id, const char *token, long ttl_ms, int *got, char *holder, size_t n,
                 pf_error *err) {
    char key[512];
    pf_wredis_key(key, sizeof key, r, job_id, "lease");
    *got = 0;
    holder[0] = '\0';
    redisReply *rep = pf_wredis_cmd(r, err, "SET %s %s NX PX %ld", key, token, ttl_ms);
    if (!rep) return -1;
    *got = rep->type == REDIS_REPLY_STATUS;
    freeReplyObject(rep);
    if (*got) return 0;
    rep = pf_wredis_cmd(r, err, "GET %s", key);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_STRING) snprintf(holder, n, "%.*s", (int)rep->len, rep->str);
    freeReplyObject(rep);
    return 0;
}

int pf_lease_renew(pf_wredis *r, const char *job_id, const char *token, long ttl_ms, int *held, pf_error *err) {
    char key[512];
    pf_wredis_key(key, sizeof key, r, job_id, "lease");
    redisReply *rep = pf_wredis_cmd(r, err, "EVAL %s 1 %s %s %ld", renew_lua, key, token, ttl_ms);
    if (!rep) return -1;
    *held = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    return 0;
}

int pf_lease_release(pf_wredis *r, const char *job_id, const char *token, pf_error *err) {
    char key[512];
    pf_wredis_key(key, sizeof key, r, job_id, "lease");
    redisReply *rep = pf_wredis_cmd(r, err, "EVAL %s 1 %s %s", release_lua, key, token);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}
