/* fetch.h - downloading one URL into a file with libcurl: https with
 * verification, redirects checked hop by hop against the URL policy, the
 * address check at connect time, connect and low-speed timeouts, retries with
 * backoff that resume with Range, a size cap, an optional bearer token for
 * private model hubs, and a streaming SHA-256 checked against the expected
 * digest.
 *
 * The fetcher writes into a file descriptor the caller opened: naming,
 * locking and renaming into place belong to the cache (cache.c), which keeps
 * the partial file under a name that a later process can resume from. */
#ifndef PF_FETCH_H
#define PF_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "error.h"
#include "storage_log.h"
#include "url_policy.h"

typedef struct pf_fetch_options {
    pf_url_policy policy;
    long connect_timeout_s;   /* default 15 */
    long low_speed_bytes;     /* a transfer slower than this many bytes/s ... (default 1024) */
    long low_speed_time_s;    /* ... for this many seconds is dropped and retried (default 30) */
    int max_redirects;        /* default 5 */
    int max_attempts;         /* tries per call, resuming after the first (default 5) */
    long retry_base_ms;       /* first backoff (default 500), doubling, with full jitter ... */
    long retry_max_ms;        /* ... up to this (default 15000) */
    uint64_t max_bytes;       /* size cap (default 32 GiB) */
    long max_seconds;         /* a call (all its tries) taking longer is stopped (default 21600; 0: none) */
    long min_avg_rate;        /* bytes/s: a call averaging less after its first min_rate_grace_s is stopped
                                 (default 262144; 0: none). Both keep what arrived, for a later resume */
    long min_rate_grace_s;    /* default 60 */
    const char *bearer_token; /* NULL: none. Sent only to hosts in token_hosts, over https
                                 (or http when allowed), on every hop of a redirect chain */
    const char *token_hosts;  /* hosts the token may go to (pf_url_host_listed's list, the
                                 hub_token_hosts setting); NULL or "": the token goes nowhere */
    const char *ca_bundle;    /* NULL: the system's CA certificates */
    /* Called about once a second and at every chunk; nonzero stops the transfer
     * (the cache renews its download lock here). NULL: none. */
    int (*progress)(void *ctx, uint64_t have, uint64_t total);
    void *progress_ctx;
    pf_log_sink log;
} pf_fetch_options;

typedef struct pf_fetch_result {
    char sha256[PF_SHA256_HEX]; /* digest of the whole file (on success) */
    uint64_t size;              /* bytes in the file */
    long http_status;           /* last HTTP status seen (0: none); 404 lets callers try alternatives */
    int attempts;               /* transfers started */
    int resumed;                /* transfers that continued with Range from a byte > 0 */
    int digest_mismatch;        /* the content did not match expect_sha256 */
    int refused;                /* the policy refused a URL, redirect or address (never retried) */
    int stopped;                /* the progress callback stopped it */
    int too_slow;               /* max_seconds or min_avg_rate stopped it (not retried) */
} pf_fetch_result;

/* Sets the defaults above (https only, public addresses only, no token). */
void pf_fetch_options_default(pf_fetch_options *o);

/* Error naming the hub_token_hosts setting when o has a bearer token but no
 * hosts to send it to: such a configuration would either send the token
 * nowhere (a private hub fails obscurely) or, as before this check, to any
 * host a job names; the worker and `perflow cache fetch` refuse to start. */
int pf_fetch_token_check(const pf_fetch_options *o, pf_error *err);

/* Initializes libcurl once per process (thread-safe; called by every entry
 * point of the storage layer, so callers need not). */
int pf_curl_init(pf_error *err);

/* Downloads url into fd, a regular file open for reading and writing. Bytes
 * already in the file are taken as the start of the content and the transfer
 * resumes after them (If-Range guards against a changed file when the server
 * gave a validator); a server that ignores Range starts the file over.
 * expect_sha256 (64 hex digits) may be NULL.
 * On success the file holds exactly the content, fsync'd, and res has its
 * digest and size. On a digest mismatch the file is truncated to 0 and
 * res->digest_mismatch set. On other errors the file keeps what arrived, so a
 * later call resumes. res is filled in every case; err has one line naming the
 * URL (query string elided), never the token. */
int pf_fetch_to_fd(pf_fetch_result *res, const pf_fetch_options *o, const char *url, int fd,
                   const char *expect_sha256, pf_error *err);

/* Downloads url into a malloc'd, NUL-terminated buffer of at most max bytes
 * (*len excludes the NUL). For small documents such as model_index.json. */
int pf_fetch_to_memory(char **out, size_t *len, pf_fetch_result *res, const pf_fetch_options *o, const char *url,
                       size_t max, pf_error *err);

#endif
