/* redis_conn.c - the worker's Redis connection (redis_conn.h). */
#include "redis_conn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pf_wredis {
    redisContext *ctx; /* NULL while disconnected */
    char host[256];
    int port;          /* 0: unix socket at host */
    char prefix[64];
    struct timeval timeout;
};

static int connect_now(pf_wredis *r, pf_error *err) {
    if (r->ctx) redisFree(r->ctx);
    r->ctx = r->port ? redisConnectWithTimeout(r->host, r->port, r->timeout)
                     : redisConnectUnixWithTimeout(r->host, r->timeout);
    if (!r->ctx || r->ctx->err) {
        pf_fail(err, "redis %s%s%d: %s", r->host, r->port ? ":" : "", r->port,
                r->ctx ? r->ctx->errstr : "out of memory");
        if (r->ctx) redisFree(r->ctx);
        r->ctx = NULL;
        return -1;
    }
    redisSetTimeout(r->ctx, r->timeout);
    return 0;
}

int pf_wredis_open(pf_wredis **out, const char *addr, const char *prefix, long timeout_ms, pf_error *err) {
    *out = NULL;
    pf_wredis *r = PF_CALLOC(1, sizeof *r);
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    r->timeout.tv_sec = timeout_ms / 1000;
    r->timeout.tv_usec = (timeout_ms % 1000) * 1000;
    if (!strncmp(addr, "unix:", 5)) {
        if (!addr[5] || strlen(addr + 5) >= sizeof r->host) {
            free(r);
            return pf_fail(err, "redis address '%s': bad socket path", addr);
        }
        snprintf(r->host, sizeof r->host, "%s", addr + 5);
    } else {
        const char *colon = strrchr(addr, ':');
        char *end;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof r->host || *end || port < 1 || port > 65535) {
            free(r);
            return pf_fail(err, "redis address '%s' must be host:port or unix:/path", addr);
        }
        snprintf(r->host, sizeof r->host, "%.*s", (int)(colon - addr), addr);
        r->port = (int)port;
    }
    pf_error ignored;
    connect_now(r, &ignored);
    *out = r;
    return 0;
}

void pf_wredis_close(pf_wredis *r) {
    if (!r) return;
    if (r->ctx) redisFree(r->ctx);
    free(r);
}

/* One try's reply: NULL with err set when the connection broke (*again = 1:
 * it was dropped, and the next try reconnects) or Redis answered an error. */
static redisReply *take_reply(pf_wredis *r, redisReply *rep, int *again, pf_error *err) {
    *again = 0;
    if (!rep) { /* the connection broke: it cannot be reused */
        pf_fail(err, "redis: %s", r->ctx->errstr[0] ? r->ctx->errstr : "connection lost");
        redisFree(r->ctx);
        r->ctx = NULL;
        *again = 1;
        return NULL;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        pf_fail(err, "redis: %.200s", rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

redisReply *pf_wredis_cmd(pf_wredis *r, pf_error *err, const char *fmt, ...) {
    int again = 1;
    redisReply *rep = NULL;
    for (int pass = 0; pass < 2 && again; pass++) {
        if (!r->ctx && connect_now(r, err)) return NULL;
        va_list ap;
        va_start(ap, fmt);
        rep = take_reply(r, redisvCommand(r->ctx, fmt, ap), &again, err);
        va_end(ap);
    }
    return rep;
}

redisReply *pf_wredis_cmd_argv(pf_wredis *r, pf_error *err, int argc, const char **argv, const size_t *lens) {
    int again = 1;
    redisReply *rep = NULL;
    for (int pass = 0; pass < 2 && again; pass++) {
        if (!r->ctx && connect_now(r, err)) return NULL;
        rep = take_reply(r, redisCommandArgv(r->ctx, argc, argv, lens), &again, err);
    }
    return rep;
}

void pf_wredis_key(char *out, size_t n, const pf_wredis *r, const char *job_id, const char *what) {
    snprintf(out, n, "%s:%s:%s", r->prefix, job_id, what);
}
