/* crash_count.c - per-job crash counts in Redis (crash_count.h). */
#include "crash_count.h"

#include <stdio.h>

static const char begin_lua[] =
    "local c = tonumber(redis.call('get', KEYS[2]) or '0') "
    "if redis.call('exists', KEYS[1]) == 1 then c = redis.call('incr', KEYS[2]) "
    "redis.call('expire', KEYS[2], ARGV[1]) end "
    "redis.call('set', KEYS[1], '1', 'EX', ARGV[1]) return c";

int pf_crash_begin(pf_wredis *r, const char *job_id, long ttl_s, long long *crashes, pf_error *err) {
    char running[512], count[512];
    pf_wredis_key(running, sizeof running, r, job_id, "running");
    pf_wredis_key(count, sizeof count, r, job_id, "crashes");
    *crashes = 0;
    redisReply *rep = pf_wredis_cmd(r, err, "EVAL %s 2 %s %s %ld", begin_lua, running, count, ttl_s);
    if (!rep) return -1;
    int ok = rep->type == REDIS_REPLY_INTEGER;
    if (ok) *crashes = rep->integer;
    freeReplyObject(rep);
    return ok ? 0 : pf_fail(err, "redis: unexpected reply to the crash count script");
}

int pf_crash_end(pf_wredis *r, const char *job_id, pf_error *err) {
    char running[512];
    pf_wredis_key(running, sizeof running, r, job_id, "running");
    redisReply *rep = pf_wredis_cmd(r, err, "DEL %s", running);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}
