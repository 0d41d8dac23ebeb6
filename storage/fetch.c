/* fetch.c - one URL into one file with libcurl: redirects followed by hand so
 * that every hop passes the URL policy, every connection through the address
 * check, resume with Range after a broken transfer, a streaming SHA-256.
 *
 * Invariant of a call: the hash state covers exactly the first `have` bytes of
 * the file, so a resumed transfer ends with the digest of the whole file
 * without reading it again. */
#include "fetch.h"

#include <ctype.h>
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "backoff.h"
#include "credentials.h"

/* Where the resume validator (ETag or Last-Modified) of a partial file is
 * kept, so that another process taking over the download can send If-Range.
 * Best effort: without xattr support a takeover resumes unguarded, and the
 * digest (when the job gives one) still catches a spliced file. */
#define VALIDATOR_XATTR "user.perflow.validator"
/* Error bodies are read and thrown away; a server sending an endless one is cut off. */
#define MAX_DISCARD (1 << 20)
#define WRITEBACK_CHUNK (32u << 20)

void pf_fetch_options_default(pf_fetch_options *o) {
    memset(o, 0, sizeof *o);
    o->connect_timeout_s = 15;
    o->low_speed_bytes = 1024;
    o->low_speed_time_s = 30;
    o->max_redirects = 5;
    o->max_attempts = 5;
    o->retry_base_ms = 500;
    o->retry_max_ms = 15000;
    o->max_bytes = 32ull << 30;
    o->max_seconds = 21600;
    o->min_avg_rate = 262144;
    o->min_rate_grace_s = 60;
}

int pf_fetch_token_check(const pf_fetch_options *o, pf_error *err) {
    if (o->bearer_token && *o->bearer_token && !(o->token_hosts && *o->token_hosts))
        return pf_fail(err, "a hub token is set but hub_token_hosts (PERFLOW_HUB_TOKEN_HOSTS) is not: name the hosts "
                            "the token may be sent to");
    return 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int pf_curl_init(pf_error *err) {
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) return pf_fail(err, "libcurl: %s", curl_easy_strerror(curl_init_rc));
    return 0;
}

typedef enum { XFER_OK, XFER_RETRY, XFER_FAIL } xfer_outcome;

typedef struct xfer {
    const pf_fetch_options *o;
    int fd;
    uint64_t have;      /* bytes of the content in the file, all hashed */
    uint64_t flushed;   /* bytes handed to writeback */
    pf_sha256 *hash;
    /* per response */
    long status;
    int decided;        /* the first body byte of this response was seen */
    int keep_body;      /* this response's body is the content */
    uint64_t discarded;
    int has_range;      /* Content-Range seen */
    uint64_t range_start, range_total;
    char etag[256], last_modified[128];
    long retry_after_s;
    /* per transfer */
    int sent_range;
    char refused[256];  /* set by the socket hook */
    char fail[256];     /* set by the write callback */
    int local_error;    /* fail is about our disk, not the server */
    int stopped;
    /* per call (all tries): the total-time and average-rate limits */
    long long t0;       /* monotonic ms at the start of the call */
    uint64_t have0;     /* bytes in the file then */
    char slow[200];     /* set by the progress hook when a limit stopped the call */
} xfer;

/* The call's limits: nonzero (and x->slow says which) when the call has run
 * past max_seconds, or averaged under min_avg_rate after its grace time. A
 * trickling server otherwise held a worker for days (1 KB/s passes the
 * low-speed floor). */
static int too_slow(xfer *x) {
    const pf_fetch_options *o = x->o;
    long long ms = pf_now_ms() - x->t0;
    if (o->max_seconds > 0 && ms > o->max_seconds * 1000) {
        snprintf(x->slow, sizeof x->slow, "took longer than %ld s (PERFLOW_FETCH_MAX_SECONDS)", o->max_seconds);
        return 1;
    }
    if (o->min_avg_rate > 0 && ms > o->min_rate_grace_s * 1000 &&
        (double)(x->have - x->have0) * 1000.0 / (double)ms < (double)o->min_avg_rate) {
        snprintf(x->slow, sizeof x->slow, "averaged %.0f bytes/s, under %ld (PERFLOW_FETCH_MIN_AVG_RATE)",
                 (double)(x->have - x->have0) * 1000.0 / (double)ms, o->min_avg_rate);
        return 1;
    }
    return 0;
}

static void reset_response(xfer *x) {
    x->status = 0;
    x->decided = x->keep_body = x->has_range = 0;
    x->discarded = x->range_start = x->range_total = 0;
    x->etag[0] = x->last_modified[0] = '\0';
    x->retry_after_s = -1;
}

/* Copies a header value (after "Name:"), trimmed, if it is short and printable. */
static void header_value(char *out, size_t n, const char *v, size_t len) {
    while (len && (*v == ' ' || *v == '\t')) v++, len--;
    while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' ')) len--;
    out[0] = '\0';
    if (len >= n) return;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] >= 0x7f) return;
    memcpy(out, v, len);
    out[len] = '\0';
}

static int header_is(const char *line, size_t len, const char *name) {
    size_t n = strlen(name);
    return len > n && !strncasecmp(line, name, n) && line[n] == ':';
}

static size_t on_header(char *line, size_t size, size_t nitems, void *ctx) {
    xfer *x = ctx;
    size_t len = size * nitems;
    if (len > 5 && !strncmp(line, "HTTP/", 5)) { /* a new response: redirects and 100s have their own */
        reset_response(x);
        const char *sp = memchr(line, ' ', len);
        if (sp && sp + 4 <= line + len && isdigit((unsigned char)sp[1]) && isdigit((unsigned char)sp[2]) &&
            isdigit((unsigned char)sp[3]))
            x->status = (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
    } else if (header_is(line, len, "ETag")) {
        header_value(x->etag, sizeof x->etag, line + 5, len - 5);
    } else if (header_is(line, len, "Last-Modified")) {
        header_value(x->last_modified, sizeof x->last_modified, line + 14, len - 14);
    } else if (header_is(line, len, "Content-Range")) {
        char v[128];
        header_value(v, sizeof v, line + 14, len - 14);
        unsigned long long s, e, t;
        char tail;
        if (sscanf(v, "bytes %llu-%llu/%llu%c", &s, &e, &t, &tail) == 3 && s <= e && e < t) {
            x->has_range = 1;
            x->range_start = s;
            x->range_total = t;
        } else if (sscanf(v, "bytes %llu-%llu/*%c", &s, &e, &tail) == 2 && s <= e) {
            x->has_range = 1;
            x->range_start = s;
            x->range_total = 0;
        }
    } else if (header_is(line, len, "Retry-After")) {
        char v[32];
        header_value(v, sizeof v, line + 12, len - 12);
        char *end;
        long s = strtol(v, &end, 10);
        if (*v && !*end && s >= 0 && s < 86400) x->retry_after_s = s;
    }
    return len;
}

/* Starts the file over (the server sent the whole content, not the range). */
static int restart_file(xfer *x) {
    if (ftruncate(x->fd, 0)) {
        snprintf(x->fail, sizeof x->fail, "truncating the partial file: %s", strerror(errno));
        x->local_error = 1;
        return -1;
    }
    x->have = x->flushed = 0;
    pf_sha256_reset(x->hash);
    return 0;
}

static void save_validator(xfer *x) {
    char v[300];
    if (x->etag[0] && strncmp(x->etag, "W/", 2)) /* weak ETags cannot guard a range */
        snprintf(v, sizeof v, "%s", x->etag);
    else if (x->last_modified[0])
        snprintf(v, sizeof v, "%s", x->last_modified);
    else
        return;
    (void)fsetxattr(x->fd, VALIDATOR_XATTR, v, strlen(v), 0);
}

static size_t on_body(char *data, size_t size, size_t nitems, void *ctx) {
    xfer *x = ctx;
    size_t n = size * nitems;
    if (!x->decided) {
        x->decided = 1;
        if (x->status == 200) {
            if (x->have > 0 && restart_file(x)) return 0;
            x->keep_body = 1;
            save_validator(x);
        } else if (x->status == 206) {
            if (!x->sent_range || !x->has_range || x->range_start != x->have) {
                snprintf(x->fail, sizeof x->fail, "server answered a range request with the wrong range");
                return 0;
            }
            x->keep_body = 1;
        }
    }
    if (!x->keep_body) { /* an error page or a redirect's body */
        x->discarded += n;
        return x->discarded > MAX_DISCARD ? 0 : n;
    }
    if (x->have + n > x->o->max_bytes || x->have + n < x->have) {
        snprintf(x->fail, sizeof x->fail, "larger than the size cap of %llu bytes",
                 (unsigned long long)x->o->max_bytes);
        return 0;
    }
    size_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(x->fd, data + done, n - done, (off_t)(x->have + done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            snprintf(x->fail, sizeof x->fail, "writing the file: %s", w < 0 ? strerror(errno) : "no progress");
            x->local_error = 1;
            return 0;
        }
        done += (size_t)w;
    }
    pf_sha256_update(x->hash, data, n);
    x->have += n;
    /* Start writeback as the file grows, so that the fsync before the rename
     * waits for the last few MiB rather than the whole file. */
    if (x->have - x->flushed >= WRITEBACK_CHUNK) {
        (void)sync_file_range(x->fd, (off_t)x->flushed, (off_t)(x->have - x->flushed), SYNC_FILE_RANGE_WRITE);
        x->flushed = x->have;
    }
    return n;
}

static int on_progress(void *ctx, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    xfer *x = ctx;
    if (too_slow(x)) return 1;
    uint64_t total = x->keep_body && dltotal > 0 && x->have >= (uint64_t)dlnow
                         ? x->have - (uint64_t)dlnow + (uint64_t)dltotal
                         : 0;
    if (x->o->progress && x->o->progress(x->o->progress_ctx, x->have, total)) {
        x->stopped = 1;
        return 1;
    }
    return 0;
}

/* The address check, on every address libcurl is about to connect to. */
static curl_socket_t on_open_socket(void *ctx, curlsocktype purpose, struct curl_sockaddr *a) {
    xfer *x = ctx;
    char why[200];
    if (!pf_url_addr_allowed(&a->addr, &x->o->policy, why, sizeof why)) {
        snprintf(x->refused, sizeof x->refused, "%s", why);
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

static int retryable_curl(CURLcode rc) {
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
        return 1;
    default:
        return 0;
    }
}

static int retryable_status(long s) { return s == 408 || s == 429 || s >= 500; }

/* One transfer: the request and the redirects it leads to. */
static xfer_outcome transfer(CURL *curl, xfer *x, const pf_url *origin, pf_fetch_result *res, char *msg,
                             size_t msgn, long *retry_after_ms) {
    const pf_fetch_options *o = x->o;
    pf_url u = *origin;
    char url[PF_URL_MAX], logurl[600], errbuf[CURL_ERROR_SIZE];
    pf_error e = {0};
    *retry_after_ms = 0;
    for (int hop = 0;; hop++) {
        pf_url_for_log(logurl, sizeof logurl, &u);
        if (pf_url_check(&u, &o->policy, &e) || pf_url_format(url, sizeof url, &u, &e)) {
            res->refused = 1;
            snprintf(msg, msgn, "GET %s: %s", logurl, e.msg);
            return XFER_FAIL;
        }
        curl_easy_reset(curl);
        struct curl_slist *headers = NULL;
        char range[48], ifrange[320], auth[PF_URL_MAX] = "";
        x->sent_range = x->have > 0;
        if (x->sent_range) {
            snprintf(range, sizeof range, "%llu-", (unsigned long long)x->have);
            curl_easy_setopt(curl, CURLOPT_RANGE, range);
            char v[300];
            ssize_t vn = fgetxattr(x->fd, VALIDATOR_XATTR, v, sizeof v - 1);
            if (vn > 0) {
                v[vn] = '\0';
                int ok = 1;
                for (ssize_t i = 0; i < vn; i++) ok &= (unsigned char)v[i] >= 0x20 && (unsigned char)v[i] < 0x7f;
                if (ok) {
                    snprintf(ifrange, sizeof ifrange, "If-Range: %s", v);
                    headers = curl_slist_append(headers, ifrange);
                }
            }
        }
        /* The token goes only to the hosts the operator named for it, on
         * every hop (a job names its URLs, so the origin asked for proves
         * nothing), and never in clear text unless plain http was allowed
         * for development. */
        if (o->bearer_token && o->token_hosts && pf_url_host_listed(u.host, o->token_hosts) &&
            (!strcmp(u.scheme, "https") || o->policy.allow_http)) {
            snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->bearer_token);
            headers = curl_slist_append(headers, auth);
        }
        errbuf[0] = '\0';
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, o->policy.allow_http ? "http,https" : "https");
        curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_PROXY, ""); /* no proxy from the environment: the address check must see the server */
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
        if (o->ca_bundle) curl_easy_setopt(curl, CURLOPT_CAINFO, o->ca_bundle);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, o->connect_timeout_s);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, o->low_speed_bytes);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, o->low_speed_time_s);
        curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)(o->max_bytes - x->have));
        curl_easy_setopt(curl, CURLOPT_BUFFERSIZE, 512L * 1024);
        curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(curl, CURLOPT_USERAGENT, "perflow/1");
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(curl, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
        curl_easy_setopt(curl, CURLOPT_OPENSOCKETDATA, x);
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, x);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(curl, CURLOPT_XFERINFODATA, x);
        reset_response(x);
        x->refused[0] = x->fail[0] = '\0';
        uint64_t start = x->have;
        CURLcode rc = curl_easy_perform(curl);
        OPENSSL_cleanse(auth, sizeof auth);
        curl_slist_free_all(headers);
        long status = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (status) res->http_status = status;
        if (x->sent_range && x->have > start && x->status == 206) res->resumed++;
        if (x->slow[0]) {
            res->too_slow = 1;
            snprintf(msg, msgn, "GET %s: stopped: %s; the partial file is kept for a resume", logurl, x->slow);
            return XFER_FAIL;
        }
        if (x->stopped) {
            res->stopped = 1;
            snprintf(msg, msgn, "GET %s: stopped", logurl);
            return XFER_FAIL;
        }
        if (x->refused[0] && rc != CURLE_OK) {
            res->refused = 1;
            snprintf(msg, msgn, "GET %s: refused: %s", logurl, x->refused);
            return XFER_FAIL;
        }
        if (x->fail[0]) {
            snprintf(msg, msgn, "GET %s: %s", logurl, x->fail);
            return strstr(x->fail, "size cap") || x->local_error ? XFER_FAIL : XFER_RETRY;
        }
        if (rc == CURLE_FILESIZE_EXCEEDED) {
            snprintf(msg, msgn, "GET %s: larger than the size cap of %llu bytes", logurl,
                     (unsigned long long)o->max_bytes);
            return XFER_FAIL;
        }
        if (rc != CURLE_OK) {
            snprintf(msg, msgn, "GET %s: %s", logurl, errbuf[0] ? errbuf : curl_easy_strerror(rc));
            return retryable_curl(rc) ? XFER_RETRY : XFER_FAIL;
        }
        if (status >= 300 && status < 400) {
            char *next = NULL;
            curl_easy_getinfo(curl, CURLINFO_REDIRECT_URL, &next);
            if (!next) {
                snprintf(msg, msgn, "GET %s: HTTP %ld without a Location", logurl, status);
                return XFER_FAIL;
            }
            if (hop + 1 > o->max_redirects) {
                snprintf(msg, msgn, "GET %s: more than %d redirects", logurl, o->max_redirects);
                return XFER_FAIL;
            }
            pf_url nu;
            if (pf_url_parse(&nu, next, &e)) {
                res->refused = 1;
                snprintf(msg, msgn, "GET %s: redirect to an unusable URL: %s", logurl, e.msg);
                return XFER_FAIL;
            }
            pf_slog(&o->log, PF_LOG_DEBUG, "GET %s: HTTP %ld redirect", logurl, status);
            u = nu;
            continue;
        }
        if (status == 200 || status == 206) {
            /* A body shorter than promised is an error libcurl reports; an
             * empty 200 to a range request means nothing was decided yet. */
            if (status == 200 && !x->decided && x->have > 0 && restart_file(x)) {
                snprintf(msg, msgn, "GET %s: %s", logurl, x->fail);
                return XFER_FAIL;
            }
            if (status == 206 && !x->decided && !(x->has_range && x->range_start == x->have)) {
                snprintf(msg, msgn, "GET %s: server answered a range request with the wrong range", logurl);
                return XFER_RETRY;
            }
            return XFER_OK;
        }
        if (status == 416 && x->have > 0) {
            /* The range starts at or past the end: the file changed or the
             * partial one is bad. Start over on the next try. */
            if (restart_file(x)) {
                snprintf(msg, msgn, "GET %s: %s", logurl, x->fail);
                return XFER_FAIL;
            }
            snprintf(msg, msgn, "GET %s: HTTP 416 on resume", logurl);
            return XFER_RETRY;
        }
        snprintf(msg, msgn, "GET %s: HTTP %ld", logurl, status);
        if (x->retry_after_s >= 0) *retry_after_ms = x->retry_after_s * 1000;
        return retryable_status(status) ? XFER_RETRY : XFER_FAIL;
    }
}

static int fetch_to_fd(pf_fetch_result *res, const pf_fetch_options *o, const char *url, int fd,
                       const char *expect_sha256, pf_error *err);

int pf_fetch_to_fd(pf_fetch_result *res, const pf_fetch_options *o, const char *url, int fd,
                   const char *expect_sha256, pf_error *err) {
    pf_error_set_kind(err, PF_ERROR_NONE, NULL);
    int rc = fetch_to_fd(res, o, url, fd, expect_sha256, err);
    if (rc && pf_error_kind_of(err) == PF_ERROR_NONE) pf_error_set_kind(err, PF_ERROR_PERMANENT, NULL);
    return rc;
}

static int fetch_to_fd(pf_fetch_result *res, const pf_fetch_options *o, const char *url, int fd,
                       const char *expect_sha256, pf_error *err) {
    memset(res, 0, sizeof *res);
    if (pf_curl_init(err)) {
        pf_error_set_kind(err, PF_ERROR_TRANSIENT, NULL);
        return -1;
    }
    if (expect_sha256 && !pf_sha256_hex_valid(expect_sha256))
        return pf_fail(err, "expected digest must be 64 lower-case hex digits");
    pf_url origin;
    if (pf_url_parse(&origin, url, err)) return pf_error_prefix(err, "GET");
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) return pf_fail(err, "fetch: destination is not a regular file");
    /* from here on, failures of our own (disk, libcurl) are worth another try */
    xfer x = {.o = o, .fd = fd, .have = (uint64_t)st.st_size, .flushed = (uint64_t)st.st_size, .hash = pf_sha256_new(),
              .t0 = pf_now_ms(), .have0 = (uint64_t)st.st_size};
    char logurl[600];
    pf_url_for_log(logurl, sizeof logurl, &origin);
    if (x.have > o->max_bytes && restart_file(&x)) {
        pf_error_set_kind(err, PF_ERROR_TRANSIENT, NULL);
        pf_sha256_free(x.hash);
        return pf_fail(err, "GET %s: %s", logurl, x.fail);
    }
    if (x.have > 0) {
        if (pf_sha256_fd(x.hash, fd, x.have, err)) {
            pf_error_set_kind(err, PF_ERROR_TRANSIENT, NULL);
            pf_sha256_free(x.hash);
            return pf_error_prefix(err, "GET %s: hashing the partial file", logurl);
        }
        pf_slog(&o->log, PF_LOG_INFO, "GET %s: resuming at byte %llu", logurl, (unsigned long long)x.have);
    }
    CURL *curl = curl_easy_init();
    if (!curl) {
        pf_error_set_kind(err, PF_ERROR_TRANSIENT, NULL);
        pf_sha256_free(x.hash);
        return pf_fail(err, "GET %s: libcurl could not start a transfer", logurl);
    }
    char msg[900] = "";
    xfer_outcome out = XFER_FAIL;
    int max_attempts = o->max_attempts > 0 ? o->max_attempts : 1;
    for (int attempt = 1; attempt <= max_attempts; attempt++) {
        res->attempts = attempt;
        long retry_after = 0;
        out = transfer(curl, &x, &origin, res, msg, sizeof msg, &retry_after);
        if (out != XFER_RETRY || attempt == max_attempts) break;
        if (too_slow(&x)) {
            res->too_slow = 1;
            snprintf(msg, sizeof msg, "GET %s: stopped: %s; the partial file is kept for a resume", logurl, x.slow);
            out = XFER_FAIL;
            break;
        }
        long wait = pf_backoff_ms(attempt, o->retry_base_ms, o->retry_max_ms);
        if (retry_after > wait && retry_after <= o->retry_max_ms) wait = retry_after;
        pf_secret_scrub(msg, sizeof msg);
        pf_slog(&o->log, PF_LOG_WARN, "%s (attempt %d of %d); retrying in %.1f s at byte %llu", msg, attempt,
                max_attempts, wait / 1000.0, (unsigned long long)x.have);
        pf_sleep_ms(wait);
    }
    curl_easy_cleanup(curl);
    int rc = 0;
    if (out != XFER_OK) {
        rc = pf_fail(err, "%s%s", msg, out == XFER_RETRY ? " (gave up after retries)" : "");
        pf_error_set_kind(err, out == XFER_RETRY || res->stopped || x.local_error ? PF_ERROR_TRANSIENT
                                                                                  : PF_ERROR_PERMANENT, NULL);
    } else if (ftruncate(fd, (off_t)x.have) || fsync(fd)) {
        rc = pf_fail(err, "GET %s: syncing the file: %s", logurl, strerror(errno));
        pf_error_set_kind(err, PF_ERROR_TRANSIENT, NULL);
    } else {
        pf_sha256_final_hex(x.hash, res->sha256);
        res->size = x.have;
        if (expect_sha256 && strcmp(expect_sha256, res->sha256)) {
            res->digest_mismatch = 1;
            (void)ftruncate(fd, 0);
            (void)fremovexattr(fd, VALIDATOR_XATTR);
            rc = pf_fail(err, "GET %s: digest mismatch: expected sha256 %s, got %s (%llu bytes); nothing cached",
                         logurl, expect_sha256, res->sha256, (unsigned long long)x.have);
        }
    }
    if (rc) res->size = x.have;
    pf_sha256_free(x.hash);
    if (rc && err) pf_secret_scrub(err->msg, sizeof err->msg);
    return rc;
}

int pf_fetch_to_memory(char **out, size_t *len, pf_fetch_result *res, const pf_fetch_options *o, const char *url,
                       size_t max, pf_error *err) {
    *out = NULL;
    *len = 0;
    int fd = memfd_create("perflow-fetch", MFD_CLOEXEC);
    if (fd < 0) return pf_fail(err, "fetch: memfd_create: %s", strerror(errno));
    pf_fetch_options capped = *o;
    if (capped.max_bytes > max) capped.max_bytes = max;
    if (pf_fetch_to_fd(res, &capped, url, fd, NULL, err)) {
        close(fd);
        return -1;
    }
    char *buf = PF_MALLOC(res->size + 1);
    size_t got = 0;
    while (got < res->size) {
        ssize_t r = pread(fd, buf + got, res->size - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return pf_fail(err, "fetch: reading back the download: %s", r < 0 ? strerror(errno) : "short file");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return 0;
}
