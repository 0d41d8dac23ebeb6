/* cache.h - the model cache that several workers on one host share: blobs
 * fetched over HTTP(S), named by their SHA-256, a per-model folder view the
 * engine loads from, pins so that nothing a running job uses is evicted, an
 * LRU disk budget, and a Redis index that coordinates the workers.
 *
 * On disk (the truth; Redis is an index of it):
 *   <root>/blobs/sha256/<digest>   content, read-only, written as tmp + fsync + rename
 *   <root>/refs/<url key>          "this URL is that blob" (url key = SHA-256 of the URL)
 *   <root>/models/<view key>/      a diffusers folder of symlinks into blobs/
 *   <root>/tmp/<url key>.part      a download in progress, resumable by any process
 *
 * Coordination. A download holds a Redis lock (SET NX PX, renewed while bytes
 * flow) so that of N workers asking for one URL at once exactly one downloads
 * and the others wait and then find the blob; a lock left by a killed worker
 * expires and the next worker takes over, resuming the partial file. The
 * partial file is also flock'ed by its writer, so two processes never write it
 * at once even when a lock expired under a stalled but living holder, and so
 * that workers of one host still download once when Redis is down.
 * Pins are shared flocks on the blobs (released by the kernel if a worker
 * dies); eviction takes an exclusive flock and skips what it cannot get.
 *
 * When Redis is configured but unreachable the cache works for this process
 * (downloads, pins, budget) without the cross-worker index, says so in a WARN
 * log line and in pf_cache_status, and reconnects every few seconds.
 *
 * Thread-safety: one pf_cache may be used by several threads at once. */
#ifndef PF_CACHE_H
#define PF_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "fetch.h"
#include "model_source.h"
#include "storage_log.h"

typedef struct pf_cache pf_cache;
typedef struct pf_cache_lease pf_cache_lease;

typedef struct pf_cache_config {
    const char *root;         /* cache directory, created if missing */
    uint64_t budget_bytes;    /* disk budget for blobs; 0: none */
    const char *redis_addr;   /* "host:port" or "unix:/path"; NULL or "": no Redis */
    const char *host_id;      /* Redis namespace "pf:cache:<host_id>"; NULL: the host name */
    long redis_timeout_ms;    /* connect and command timeout (default 1000) */
    long lock_ttl_ms;         /* download lock expiry; renewed every third of it (default 30000) */
    long lock_poll_ms;        /* how often waiters look again (default 250) */
    long wait_timeout_ms;     /* longest wait for another worker's download (default 2 h) */
    int parallel;             /* concurrent downloads of one model's files (default 4) */
    pf_fetch_options fetch;   /* URL policy, timeouts, retries, size cap, bearer token */
    pf_log_sink log;
    /* When not NULL and set (a worker's signal handler sets its run flag), downloads
     * in progress and waits for other workers stop within a second, with an error. */
    const volatile int *cancel;
} pf_cache_config;

/* The defaults above, with fetch options from pf_fetch_options_default. */
void pf_cache_config_default(pf_cache_config *cfg);
/* The defaults, then the environment (strings point into it):
 *   PERFLOW_CACHE_DIR (else $CACHE_DIRECTORY from systemd, else ~/.cache/perflow),
 *   PERFLOW_CACHE_BUDGET (bytes, or with K/M/G/T suffix), PERFLOW_REDIS,
 *   PERFLOW_CACHE_HOST_ID, PERFLOW_LOCK_TTL_MS, PERFLOW_LOCK_POLL_MS,
 *   PERFLOW_FETCH_ALLOW_HTTP=1, PERFLOW_FETCH_ALLOW_PRIVATE=1 (development only),
 *   PERFLOW_FETCH_ALLOW_HOSTS, PERFLOW_FETCH_MAX_BYTES, PERFLOW_FETCH_ATTEMPTS,
 *   PERFLOW_FETCH_RETRY_BASE_MS, PERFLOW_FETCH_LOW_SPEED_TIME, PERFLOW_FETCH_PARALLEL,
 *   PERFLOW_FETCH_MAX_SECONDS, PERFLOW_FETCH_MIN_AVG_RATE, PERFLOW_FETCH_MIN_RATE_GRACE_S,
 *   PERFLOW_CA_BUNDLE, PERFLOW_HUB_TOKEN_HOSTS (the hosts the hub token may go to).
 * Error on a malformed value, naming the variable. The bearer token is not
 * read here: pass pf_credentials' hub_token in cfg->fetch.bearer_token;
 * pf_cache_open refuses a token without token hosts (pf_fetch_token_check). */
int pf_cache_config_from_env(pf_cache_config *cfg, pf_error *err);
/* Parses "123", "10K", "512M", "20G", "1T" (powers of 1024) into *out. */
int pf_parse_size(const char *s, uint64_t *out, pf_error *err);

/* Opens (creating) the cache at cfg->root and, if configured, connects to
 * Redis and reconciles the index with the disk: entries whose blob is
 * missing or has the wrong size are dropped. An unreachable Redis is not an
 * error (see above); an unusable directory is. cfg is copied. */
int pf_cache_open(pf_cache **out, const pf_cache_config *cfg, pf_error *err);
/* Closes the cache. Leases must have been released. */
void pf_cache_close(pf_cache *c);
/* One line on the index: "redis: connected to ADDR (namespace NS)", "redis:
 * unreachable at ADDR: REASON; no cross-worker coordination", or "redis: not
 * configured". Returns 1 when the index is connected, else 0. */
int pf_cache_status(pf_cache *c, char *line, size_t n);

/* Makes src available locally and pins it: downloads what is missing (or
 * waits for another worker's download), checks the digest when given, and
 * returns a lease whose path stays valid until pf_cache_release:
 *   FILE sources: the blob itself;
 *   DIFFUSERS sources: a folder in diffusers layout (pf_model_dir_check passes),
 *     sharded weights with their index and shards;
 *   COMPONENT sources: a folder holding config.json and the weights (or their index and shards);
 *   CONFIGS sources: a diffusers folder without weights (model_index.json, configs, tokenizers, scheduler).
 * A cached model opens without any network access. Afterwards the disk budget
 * is enforced, evicting least recently used unpinned blobs.
 * On error *out is NULL, nothing is pinned, err has one line (no secrets), and
 * err->kind says whether trying later may help (PF_ERROR_TRANSIENT or
 * PF_ERROR_PERMANENT, error.h); a
 * digest mismatch leaves nothing in the cache. Blocks while downloading or
 * waiting for another worker's download; cfg->cancel stops it. */
int pf_cache_acquire(pf_cache_lease **out, pf_cache *c, const pf_model_source *src, pf_error *err);
/* The pinned path (a file or a folder). */
const char *pf_cache_lease_path(const pf_cache_lease *l);
/* The content digest of what the lease pins: the SHA-256 of its blobs'
 * digests, one a line, in the model's file order (a single file: the digest
 * of that one line). The same files give the same digest on every host,
 * whatever URL they came from (the result store's weight identities). */
void pf_cache_lease_digest(char hex[PF_SHA256_HEX], const pf_cache_lease *l);
/* Unpins and records the time of last use. NULL is fine. */
void pf_cache_release(pf_cache_lease *l);

/* Evicts least recently used unpinned blobs until they take at most
 * target_bytes, then drops references and model folders left dangling.
 * *evicted and *freed (either may be NULL) count what went. Pinned blobs are
 * never evicted; staying over target because of them is not an error. */
int pf_cache_evict(pf_cache *c, uint64_t target_bytes, int *evicted, uint64_t *freed, pf_error *err);

/* Re-hashes every blob. A blob whose content does not match its name is
 * removed (with its index entries) unless pinned, so the next acquire fetches
 * it again. each (may be NULL) is called per blob with status "ok",
 * "corrupt, removed" or "corrupt, in use". *bad counts corrupt blobs. */
int pf_cache_verify(pf_cache *c, void (*each)(void *ctx, const char *digest, uint64_t size, const char *status),
                    void *ctx, int *bad, pf_error *err);

typedef struct pf_cache_entry {
    char url[PF_URL_MAX];       /* the URL, or "model:<base URL>" ("component:", "configs:<folder URL>") for a manifest */
    char digest[PF_SHA256_HEX]; /* "" while downloading */
    uint64_t size;              /* bytes on disk (so far, while downloading) */
    long long last_use_ms;      /* ms since the epoch; 0 unknown */
    const char *state;          /* "ready", "missing" (the blob was evicted), "downloading" */
    int pinned;                 /* a process holds it now */
} pf_cache_entry;

/* Calls each for every URL the cache knows, in no particular order. */
int pf_cache_list(pf_cache *c, void (*each)(void *ctx, const pf_cache_entry *e), void *ctx, pf_error *err);

#endif
