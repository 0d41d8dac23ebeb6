/* cache_internal.h - what cache.c, cache_model.c and cache_evict.c share:
 * the cache object, leases, paths, pins and references. Not for other callers. */
#ifndef PF_CACHE_INTERNAL_H
#define PF_CACHE_INTERNAL_H

#include <limits.h>
#include <pthread.h>

#include "cache.h"
#include "model_index.h"
#include "redis_index.h"

#define PF_CACHE_PATH 3072 /* longest path under the cache root */

struct pf_cache {
    pf_cache_config cfg; /* strings below point at the copies */
    char root[2048];
    char host_id[128];
    char ns[200];        /* Redis key namespace, pf:cache:<host_id> */
    char redis_addr_buf[300];
    char *bearer_token;  /* owned copy, wiped at close */
    char ca_bundle[1024];
    char allow_hosts[2048];
    pthread_mutex_t lock; /* guards the fields below */
    pf_redis_index *redis;   /* NULL: not configured, or never connected */
    int redis_up;
    long long redis_retry_at_ms;
    char redis_state[400];
};

struct pf_cache_lease {
    pf_cache *c;
    char path[PF_CACHE_PATH];
    int n;                                      /* pinned blobs */
    int fds[PF_MODEL_MAX_FILES + 1];            /* shared flocks, one per blob */
    char digests[PF_MODEL_MAX_FILES + 1][PF_SHA256_HEX];
};

/* Paths. */
void pf_cache_blob_path(char *out, size_t n, const pf_cache *c, const char *digest);
void pf_cache_ref_path(char *out, size_t n, const pf_cache *c, const char *key);
/* key = SHA-256 of kind "\n" text: the url key of a URL ("url") or a model ("model"). */
void pf_cache_key(char key[PF_SHA256_HEX], const char *kind, const char *text);

/* The Redis index if usable now (reconnecting at most every few seconds),
 * else NULL. Every failed call must be reported through pf_cache_redis_failed. */
pf_redis_index *pf_cache_redis(pf_cache *c);
void pf_cache_redis_failed(pf_cache *c, const pf_error *e);

/* Pins the blob: 1 pinned (*fd holds the shared flock), 0 absent or not of
 * expect_size (0: any size), -1 error. */
int pf_cache_pin(pf_cache *c, const char *digest, uint64_t expect_size, int *fd, pf_error *err);
/* Records a use of the blob (atime and the Redis LRU). fd may be -1. */
void pf_cache_touch(pf_cache *c, const char *digest, int fd);

/* A reference: URL key -> blob. read: 1 found and valid, 0 absent or invalid. */
int pf_cache_ref_read(pf_cache *c, const char *key, char digest[PF_SHA256_HEX], uint64_t *size, char *url,
                      size_t url_n);
int pf_cache_ref_write(pf_cache *c, const char *key, const char *digest, uint64_t size, const char *url,
                       pf_error *err);

/* The result of pf_cache_acquire_url: the blob and the pin on it. */
typedef struct pf_cache_got {
    char digest[PF_SHA256_HEX];
    uint64_t size;
    int fd;            /* the pin; -1 on error */
    long http_status;  /* on error: the server's status, 404 for a missing file */
} pf_cache_got;

/* One URL into a pinned blob (the core of pf_cache_acquire). cancel, when not
 * NULL and set, stops a download in progress (another file of the same model failed). */
int pf_cache_acquire_url(pf_cache *c, const char *url, const char *expect_sha256, const volatile int *cancel,
                         pf_cache_got *got, pf_error *err);
/* Stores bytes as a blob and pins it (manifests). */
int pf_cache_store_bytes(pf_cache *c, const void *data, size_t n, pf_cache_got *got, pf_error *err);

/* cache_model.c: a DIFFUSERS, COMPONENT or CONFIGS source into lease (already allocated, empty). */
int pf_cache_acquire_model(pf_cache *c, const pf_model_source *src, pf_cache_lease *lease, pf_error *err);

/* Removes a model view folder (symlinks at most two levels deep). */
void pf_cache_remove_view(const char *path);

/* Enforces the budget after a download (logs, never fails the caller). */
void pf_cache_enforce_budget(pf_cache *c);

/* Reads a whole small file through an open fd (at most max bytes) into a
 * malloc'd NUL-terminated buffer. */
int pf_cache_read_fd(char **out, size_t *len, int fd, size_t max, pf_error *err);

#endif
