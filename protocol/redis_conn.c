/* redis_conn.c - the worker's Redis connection (redis_conn.h). */
#include "redis_conn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pf_wredis {
    pf_rconn *c;
    char prefix[64];
};

int pf_wredis_open(pf_wredis **out, const char *addr, const char *prefix, long timeout_ms, pf_error *err) {
    *out = NULL;
    pf_wredis *r = PF_CALLOC(1, sizeof *r);
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    if (pf_rconn_open(&r->c, addr, timeout_ms, err)) {
        free(r);
        return -1;
    }
    /* Redis away is a transient state the loop waits out; a certificate or a
     * password that Redis refuses will not heal, and a worker that went on
     * could take no job: refuse to start, saying why. */
    pf_error e;
    if (pf_rconn_connect(r->c, &e) && pf_rconn_config_error(r->c)) {
        *err = e;
        pf_wredis_close(r);
        return -1;
    }
    *out = r;
    return 0;
}

void pf_wredis_close(pf_wredis *r) {
    if (!r) return;
    pf_rconn_close(r->c);
    free(r);
}

/* An error reply becomes NULL with err set. */
static redisReply *take_reply(pf_wredis *r, redisReply *rep, pf_error *err) {
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        pf_fail(err, "redis %s: %.200s", pf_rconn_addr(r->c), rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

redisReply *pf_wredis_cmd(pf_wredis *r, pf_error *err, const char *fmt, ...) {
    int broken = 1;
    redisReply *rep = NULL;
    /* A connection that broke (Redis restarted) is tried once more at once. */
    for (int pass = 0; pass < 2 && broken && !rep; pass++) {
        va_list ap;
        va_start(ap, fmt);
        rep = pf_rconn_vcommand(r->c, &broken, err, fmt, ap);
        va_end(ap);
    }
    return take_reply(r, rep, err);
}

redisReply *pf_wredis_cmd_argv(pf_wredis *r, pf_error *err, int argc, const char **argv, const size_t *lens) {
    int broken = 1;
    redisReply *rep = NULL;
    for (int pass = 0; pass < 2 && broken && !rep; pass++) rep = pf_rconn_argv(r->c, &broken, err, argc, argv, lens);
    return take_reply(r, rep, err);
}

void pf_wredis_key(char *out, size_t n, const pf_wredis *r, const char *job_id, const char *what) {
    snprintf(out, n, "%s:%s:%s", r->prefix, job_id, what);
}
