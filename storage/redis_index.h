/* redis_index.h - the Redis side of the model cache (hiredis): per host, entry
 * metadata, an LRU ordering of blobs, and download locks.
 *
 * Keys, under a namespace "pf:cache:<host id>":
 *   <ns>:entry:<url key>  hash   url, digest, size, path, state, last_use (ms since the epoch)
 *   <ns>:lru              zset   blob digest -> last use (ms since the epoch)
 *   <ns>:lock:<url key>   string the holder's token, SET NX PX, renewed while downloading
 * The url key is the SHA-256 of the URL (cache.c).
 *
 * Redis is an index, not the truth: the blobs on disk are. Everything read
 * back is validated (another process, an operator or an attacker may have
 * written anything there), and a bad record is reported as such so the cache
 * can drop it. Every call returns -1 with a message when Redis cannot be
 * reached; the cache then carries on without it. Calls are serialized by a
 * mutex, so one index may be shared by threads. */
#ifndef PF_REDIS_INDEX_H
#define PF_REDIS_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "error.h"
#include "url_policy.h"

typedef struct pf_redis_index pf_redis_index;

typedef struct pf_index_entry {
    char key[PF_SHA256_HEX];    /* url key */
    char url[PF_URL_MAX];
    char digest[PF_SHA256_HEX]; /* "" while downloading */
    uint64_t size;
    char path[1024];            /* informational: the cache recomputes paths from digests */
    char state[16];             /* "downloading" or "ready" */
    long long last_use_ms;
} pf_index_entry;

/* Connects to addr (redis_client.h: "host:port", "unix:/path", redis:// and
 * rediss:// with TLS and a user; the password from credentials), with a timeout for
 * the connection and for each command. ns is the key namespace. */
int pf_redis_index_open(pf_redis_index **out, const char *addr, const char *ns, long timeout_ms, pf_error *err);
void pf_redis_index_close(pf_redis_index *r);
/* Drops a broken connection and connects again. */
int pf_redis_index_reconnect(pf_redis_index *r, pf_error *err);
/* The address, for log lines. */
const char *pf_redis_index_addr(const pf_redis_index *r);

int pf_redis_entry_put(pf_redis_index *r, const pf_index_entry *e, pf_error *err);
/* *found: 1 entry read and valid, 0 absent, -1 present but malformed (the
 * caller should delete it). */
int pf_redis_entry_get(pf_redis_index *r, const char *key, pf_index_entry *e, int *found, pf_error *err);
int pf_redis_entry_touch(pf_redis_index *r, const char *key, long long when_ms, pf_error *err);
int pf_redis_entry_del(pf_redis_index *r, const char *key, pf_error *err);
/* All entry keys (url keys) of the namespace, at most max; keys that are not
 * 64 hex digits are deleted on the way, since nothing valid writes them. */
int pf_redis_entry_keys(pf_redis_index *r, char (**keys)[PF_SHA256_HEX], size_t *n, size_t max, pf_error *err);

int pf_redis_lru_touch(pf_redis_index *r, const char *digest, long long when_ms, pf_error *err);
int pf_redis_lru_remove(pf_redis_index *r, const char *digest, pf_error *err);
/* Last-use time of a blob: 1 and *when_ms when known, 0 when not. */
int pf_redis_lru_get(pf_redis_index *r, const char *digest, long long *when_ms, pf_error *err);

/* SET lock NX PX: *got = 1 when this token now holds the lock. */
int pf_redis_lock_try(pf_redis_index *r, const char *key, const char *token, long ttl_ms, int *got, pf_error *err);
/* Extends the lock if token still holds it; *held = 0 when it was lost
 * (expired and perhaps taken over). */
int pf_redis_lock_renew(pf_redis_index *r, const char *key, const char *token, long ttl_ms, int *held,
                        pf_error *err);
/* Deletes the lock if token holds it. */
int pf_redis_lock_release(pf_redis_index *r, const char *key, const char *token, pf_error *err);

#endif
