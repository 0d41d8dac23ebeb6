/* redis_index.c - the cache's entries, LRU ordering and download locks in Redis. */
#include "redis_index.h"

#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "redis_client.h"

struct pf_redis_index {
    pthread_mutex_t lock;
    pf_rconn *c;     /* its connection; not connected while Redis is away */
    char addr[300];
    char ns[200];
};

/* Release and renewal must not touch a lock another worker took over after
 * ours expired, hence compare-and-act in one server-side step. */
static const char RENEW_LUA[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
static const char RELEASE_LUA[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

int pf_redis_index_open(pf_redis_index **out, const char *addr, const char *ns, long timeout_ms, pf_error *err) {
    *out = NULL;
    pf_redis_index *r = PF_CALLOC(1, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    snprintf(r->addr, sizeof r->addr, "%s", addr);
    snprintf(r->ns, sizeof r->ns, "%s", ns);
    if (pf_rconn_open(&r->c, addr, timeout_ms > 0 ? timeout_ms : 1000, err) || pf_rconn_connect(r->c, err)) {
        pf_rconn_close(r->c);
        pthread_mutex_destroy(&r->lock);
        free(r);
        return -1;
    }
    snprintf(r->addr, sizeof r->addr, "%s", pf_rconn_addr(r->c));
    *out = r;
    return 0;
}

void pf_redis_index_close(pf_redis_index *r) {
    if (!r) return;
    pf_rconn_close(r->c);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

int pf_redis_index_reconnect(pf_redis_index *r, pf_error *err) {
    pthread_mutex_lock(&r->lock);
    int rc = pf_rconn_connect(r->c, err);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

const char *pf_redis_index_addr(const pf_redis_index *r) { return r->addr; }

/* Runs one command; NULL (with err) when Redis is unreachable or answers with
 * an error. A broken connection is dropped until reconnect. */
static redisReply *run_argv(pf_redis_index *r, pf_error *err, int argc, const char **argv, const size_t *lens) {
    pthread_mutex_lock(&r->lock);
    if (!pf_rconn_connected(r->c)) {
        pthread_mutex_unlock(&r->lock);
        pf_fail(err, "redis %s: not connected", r->addr);
        return NULL;
    }
    redisReply *rep = pf_rconn_argv(r->c, NULL, err, argc, argv, lens);
    pthread_mutex_unlock(&r->lock);
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        pf_fail(err, "redis %s: %.200s", r->addr, rep->str ? rep->str : "error");
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

/* run(r, err, "CMD", "arg", ..., NULL): arguments are NUL-terminated strings. */
static redisReply *run(pf_redis_index *r, pf_error *err, ...) {
    const char *argv[24];
    size_t lens[24];
    int argc = 0;
    va_list ap;
    va_start(ap, err);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        PF_CHECK(argc < 24);
        argv[argc] = a;
        lens[argc] = strlen(a);
        argc++;
    }
    va_end(ap);
    return run_argv(r, err, argc, argv, lens);
}

static void key_of(char *out, size_t n, const pf_redis_index *r, const char *kind, const char *name) {
    if (name)
        snprintf(out, n, "%s:%s:%s", r->ns, kind, name);
    else
        snprintf(out, n, "%s:%s", r->ns, kind);
}

int pf_redis_entry_put(pf_redis_index *r, const pf_index_entry *e, pf_error *err) {
    char key[300], size[32], last[32];
    key_of(key, sizeof key, r, "entry", e->key);
    snprintf(size, sizeof size, "%llu", (unsigned long long)e->size);
    snprintf(last, sizeof last, "%lld", e->last_use_ms);
    redisReply *rep = run(r, err, "HSET", key, "url", e->url, "digest", e->digest, "size", size, "path", e->path,
                          "state", e->state, "last_use", last, NULL);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

static int parse_u64(const char *s, size_t n, uint64_t *out) {
    if (n == 0 || n > 20) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Copies a field value if it is printable and fits; else -1. */
static int copy_field(char *out, size_t n, const redisReply *v) {
    if (v->type != REDIS_REPLY_STRING || v->len >= n) return -1;
    for (size_t i = 0; i < v->len; i++)
        if ((unsigned char)v->str[i] < 0x20 || (unsigned char)v->str[i] >= 0x7f) return -1;
    memcpy(out, v->str, v->len);
    out[v->len] = '\0';
    return 0;
}

int pf_redis_entry_get(pf_redis_index *r, const char *key, pf_index_entry *e, int *found, pf_error *err) {
    char k[300];
    key_of(k, sizeof k, r, "entry", key);
    *found = 0;
    memset(e, 0, sizeof *e);
    redisReply *rep = run(r, err, "HGETALL", k, NULL);
    if (!rep) return -1;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements % 2) {
        *found = -1;
    } else if (rep->elements > 0) {
        int bad = 0, have_url = 0, have_state = 0;
        snprintf(e->key, sizeof e->key, "%s", key);
        for (size_t i = 0; i + 1 < rep->elements && !bad; i += 2) {
            const redisReply *f = rep->element[i], *v = rep->element[i + 1];
            if (f->type != REDIS_REPLY_STRING) {
                bad = 1;
            } else if (!strcmp(f->str, "url")) {
                pf_url u;
                bad = copy_field(e->url, sizeof e->url, v) || pf_url_parse(&u, e->url, NULL);
                have_url = 1;
            } else if (!strcmp(f->str, "digest")) {
                bad = copy_field(e->digest, sizeof e->digest, v) || (e->digest[0] && !pf_sha256_hex_valid(e->digest));
            } else if (!strcmp(f->str, "size")) {
                bad = v->type != REDIS_REPLY_STRING || parse_u64(v->str, v->len, &e->size);
            } else if (!strcmp(f->str, "path")) {
                bad = copy_field(e->path, sizeof e->path, v);
            } else if (!strcmp(f->str, "state")) {
                bad = copy_field(e->state, sizeof e->state, v) ||
                      (strcmp(e->state, "ready") && strcmp(e->state, "downloading"));
                have_state = 1;
            } else if (!strcmp(f->str, "last_use")) {
                uint64_t t = 0;
                bad = v->type != REDIS_REPLY_STRING || parse_u64(v->str, v->len, &t) || t > (1ull << 53);
                e->last_use_ms = (long long)t;
            } /* unknown fields: a newer version's; ignored */
        }
        bad |= !have_url || !have_state || (!strcmp(e->state, "ready") && !e->digest[0]);
        *found = bad ? -1 : 1;
    }
    freeReplyObject(rep);
    return 0;
}

int pf_redis_entry_touch(pf_redis_index *r, const char *key, long long when_ms, pf_error *err) {
    char k[300], last[32];
    key_of(k, sizeof k, r, "entry", key);
    snprintf(last, sizeof last, "%lld", when_ms);
    redisReply *rep = run(r, err, "HSET", k, "last_use", last, NULL);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int pf_redis_entry_del(pf_redis_index *r, const char *key, pf_error *err) {
    char k[300];
    key_of(k, sizeof k, r, "entry", key);
    redisReply *rep = run(r, err, "DEL", k, NULL);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int pf_redis_entry_keys(pf_redis_index *r, char (**keys)[PF_SHA256_HEX], size_t *n, size_t max, pf_error *err) {
    char pattern[300], prefix[300];
    key_of(prefix, sizeof prefix, r, "entry", "");
    snprintf(pattern, sizeof pattern, "%s*", prefix);
    size_t plen = strlen(prefix), cap = 64, count = 0;
    char(*out)[PF_SHA256_HEX] = PF_MALLOC(cap * sizeof *out);
    char cursor[32] = "0";
    do {
        redisReply *rep = run(r, err, "SCAN", cursor, "MATCH", pattern, "COUNT", "500", NULL);
        if (!rep) {
            free(out);
            return -1;
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[0]->type != REDIS_REPLY_STRING ||
            rep->element[1]->type != REDIS_REPLY_ARRAY || rep->element[0]->len >= sizeof cursor) {
            freeReplyObject(rep);
            free(out);
            return pf_fail(err, "redis %s: unexpected SCAN reply", r->addr);
        }
        memcpy(cursor, rep->element[0]->str, rep->element[0]->len + 1);
        const redisReply *list = rep->element[1];
        for (size_t i = 0; i < list->elements && count < max; i++) {
            const redisReply *k = list->element[i];
            if (k->type != REDIS_REPLY_STRING || k->len < plen) continue;
            const char *name = k->str + plen;
            if (!pf_sha256_hex_valid(name)) { /* junk under our prefix */
                redisReply *d = run(r, NULL, "DEL", k->str, NULL);
                if (d) freeReplyObject(d);
                continue;
            }
            if (count == cap) {
                out = realloc(out, (cap *= 2) * sizeof *out);
                PF_CHECK(out);
            }
            memcpy(out[count++], name, PF_SHA256_HEX);
        }
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") && count < max);
    *keys = out;
    *n = count;
    return 0;
}

int pf_redis_lru_touch(pf_redis_index *r, const char *digest, long long when_ms, pf_error *err) {
    char k[300], score[32];
    key_of(k, sizeof k, r, "lru", NULL);
    snprintf(score, sizeof score, "%lld", when_ms);
    redisReply *rep = run(r, err, "ZADD", k, score, digest, NULL);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int pf_redis_lru_remove(pf_redis_index *r, const char *digest, pf_error *err) {
    char k[300];
    key_of(k, sizeof k, r, "lru", NULL);
    redisReply *rep = run(r, err, "ZREM", k, digest, NULL);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int pf_redis_lru_get(pf_redis_index *r, const char *digest, long long *when_ms, pf_error *err) {
    char k[300];
    key_of(k, sizeof k, r, "lru", NULL);
    redisReply *rep = run(r, err, "ZSCORE", k, digest, NULL);
    if (!rep) return -1;
    int known = 0;
    if (rep->type == REDIS_REPLY_STRING) {
        char *end;
        double v = strtod(rep->str, &end);
        if (!*end && v >= 0 && v < 9e15) { /* a hostile score (inf, nan, -1) is as good as unknown */
            *when_ms = (long long)v;
            known = 1;
        }
    }
    freeReplyObject(rep);
    return known;
}

int pf_redis_lock_try(pf_redis_index *r, const char *key, const char *token, long ttl_ms, int *got, pf_error *err) {
    char k[300], ttl[32];
    key_of(k, sizeof k, r, "lock", key);
    snprintf(ttl, sizeof ttl, "%ld", ttl_ms);
    *got = 0;
    redisReply *rep = run(r, err, "SET", k, token, "NX", "PX", ttl, NULL);
    if (!rep) return -1;
    *got = rep->type == REDIS_REPLY_STATUS && rep->str && !strcmp(rep->str, "OK");
    freeReplyObject(rep);
    return 0;
}

int pf_redis_lock_renew(pf_redis_index *r, const char *key, const char *token, long ttl_ms, int *held,
                        pf_error *err) {
    char k[300], ttl[32];
    key_of(k, sizeof k, r, "lock", key);
    snprintf(ttl, sizeof ttl, "%ld", ttl_ms);
    *held = 1;
    redisReply *rep = run(r, err, "EVAL", RENEW_LUA, "1", k, token, ttl, NULL);
    if (!rep) return -1;
    *held = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    return 0;
}

int pf_redis_lock_release(pf_redis_index *r, const char *key, const char *token, pf_error *err) {
    char k[300];
    key_of(k, sizeof k, r, "lock", key);
    redisReply *rep = run(r, err, "EVAL", RELEASE_LUA, "1", k, token, NULL);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}
