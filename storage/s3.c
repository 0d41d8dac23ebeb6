/* s3.c - S3 PUT and multipart upload through libcurl's SigV4, with retries;
 * file:// destinations for local runs.
 *
 * Two quirks of libcurl's signer (7.88, Debian 12) shape the requests: it
 * signs the query string as given, so every query here is written already in
 * SigV4's canonical form (sorted, "key=value", percent-encoded); and it signs
 * every header we add, so none is added that libcurl might then drop or
 * rewrite (an empty "Expect:" is one). */
#include "s3.h"

#include "fileio.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backoff.h"
#include "fetch.h"

#define MIN_PART (5ull << 20)
#define MAX_PARTS 10000
#define MAX_RESPONSE (64 * 1024)

/* Marks the failure in err as one that trying again will not cure; returns -1. */
static int permanent(pf_error *err) { return pf_error_set_kind(err, PF_ERROR_PERMANENT, NULL); }

void pf_s3_config_default(pf_s3_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->region, sizeof cfg->region, "us-east-1");
    cfg->multipart_threshold = 16ull << 20;
    cfg->part_size = 8ull << 20;
    cfg->max_attempts = 6;
    cfg->retry_base_ms = 200;
    cfg->retry_max_ms = 20000;
    cfg->connect_timeout_s = 15;
    cfg->low_speed_time_s = 60;
}

static int env_num(const char *name, long long lo, long long hi, long long *out, pf_error *err) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || x < lo || x > hi)
        return pf_fail(err, "%s must be an integer from %lld to %lld", name, lo, hi);
    *out = x;
    return 0;
}

int pf_s3_config_from_env(pf_s3_config *cfg, pf_error *err) {
    pf_s3_config_default(cfg);
    const char *ep = getenv("AWS_ENDPOINT_URL_S3");
    if (!ep || !*ep) ep = getenv("AWS_ENDPOINT_URL");
    if (ep && *ep) {
        if (strlen(ep) >= sizeof cfg->endpoint) return pf_fail(err, "AWS_ENDPOINT_URL is too long");
        snprintf(cfg->endpoint, sizeof cfg->endpoint, "%s", ep);
    }
    const char *region = getenv("AWS_REGION");
    if (!region || !*region) region = getenv("AWS_DEFAULT_REGION");
    if (region && *region) {
        size_t n = strlen(region);
        for (size_t i = 0; i < n; i++)
            if (!isalnum((unsigned char)region[i]) && region[i] != '-')
                return pf_fail(err, "AWS_REGION must be letters, digits and '-'");
        if (n >= sizeof cfg->region) return pf_fail(err, "AWS_REGION is too long");
        snprintf(cfg->region, sizeof cfg->region, "%s", region);
    }
    cfg->path_style = cfg->endpoint[0] != '\0';
    const char *style = getenv("PERFLOW_S3_ADDRESSING");
    if (style && *style) {
        if (!strcmp(style, "path"))
            cfg->path_style = 1;
        else if (!strcmp(style, "virtual"))
            cfg->path_style = 0;
        else
            return pf_fail(err, "PERFLOW_S3_ADDRESSING must be 'path' or 'virtual'");
    }
    long long v;
    const char *ps = getenv("PERFLOW_S3_PART_SIZE");
    if (ps && *ps) {
        uint64_t size;
        char *end;
        errno = 0;
        unsigned long long x = strtoull(ps, &end, 10);
        size = x;
        if (*end == 'M' || *end == 'm') size = x << 20, end++;
        if (errno || *end || size < MIN_PART || size > (5ull << 30))
            return pf_fail(err, "PERFLOW_S3_PART_SIZE must be from 5M to 5120M");
        cfg->part_size = size;
    }
    v = cfg->max_attempts;
    if (env_num("PERFLOW_S3_ATTEMPTS", 1, 100, &v, err)) return -1;
    cfg->max_attempts = (int)v;
    v = cfg->retry_base_ms;
    if (env_num("PERFLOW_S3_RETRY_BASE_MS", 1, 600000, &v, err)) return -1;
    cfg->retry_base_ms = (long)v;
    const char *ca = getenv("PERFLOW_CA_BUNDLE");
    if (ca && *ca) snprintf(cfg->ca_bundle, sizeof cfg->ca_bundle, "%s", ca);
    return 0;
}

int pf_s3_parse_dest(char *bucket, size_t bucket_n, char *key, size_t key_n, const char *dest, pf_error *err) {
    if (strncmp(dest, "s3://", 5)) return pf_fail(err, "destination must be s3://BUCKET/KEY or file:///PATH");
    const char *b = dest + 5, *slash = strchr(b, '/');
    size_t bl = slash ? (size_t)(slash - b) : strlen(b);
    if (bl < 3 || bl > 63 || bl >= bucket_n) return pf_fail(err, "bucket name must be 3 to 63 characters");
    for (size_t i = 0; i < bl; i++)
        if (!(islower((unsigned char)b[i]) || isdigit((unsigned char)b[i]) || b[i] == '.' || b[i] == '-'))
            return pf_fail(err, "bucket name must be lower-case letters, digits, '.' and '-'");
    if (b[0] == '.' || b[0] == '-' || b[bl - 1] == '.' || b[bl - 1] == '-')
        return pf_fail(err, "bucket name must start and end with a letter or digit");
    const char *k = slash ? slash + 1 : "";
    size_t kl = strlen(k);
    if (kl == 0 || kl > 1024 || kl >= key_n) return pf_fail(err, "object key must be 1 to 1024 bytes");
    for (size_t i = 0; i < kl; i++)
        if ((unsigned char)k[i] < 0x20 || k[i] == 0x7f) return pf_fail(err, "object key has a control character");
    memcpy(bucket, b, bl);
    bucket[bl] = '\0';
    memcpy(key, k, kl + 1);
    return 0;
}

/* SigV4's URI encoding: every byte but A-Z a-z 0-9 - . _ ~ as %XX, and '/' too unless keep_slash. */
static int uri_encode(char *out, size_t n, const char *s, int keep_slash) {
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~' || (keep_slash && *p == '/')) {
            if (o + 1 >= n) return -1;
            out[o++] = (char)*p;
        } else {
            if (o + 3 >= n) return -1;
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return 0;
}

int pf_s3_object_url(char *out, size_t n, const pf_s3_config *cfg, const char *bucket, const char *key,
                     const char *query, pf_error *err) {
    char scheme[16] = "https", host[512], base_path[512] = "", ekey[3200];
    if (cfg->endpoint[0]) {
        const char *ep = cfg->endpoint, *sep = strstr(ep, "://");
        if (!sep || (size_t)(sep - ep) >= sizeof scheme) return pf_fail(err, "S3 endpoint '%s' must be a URL", ep);
        snprintf(scheme, sizeof scheme, "%.*s", (int)(sep - ep), ep);
        if (strcmp(scheme, "https") && strcmp(scheme, "http"))
            return pf_fail(err, "S3 endpoint must be https:// (or http:// for local servers)");
        const char *h = sep + 3, *slash = strchr(h, '/');
        size_t hl = slash ? (size_t)(slash - h) : strlen(h);
        if (hl == 0 || hl >= sizeof host || memchr(h, '@', hl)) return pf_fail(err, "S3 endpoint has a bad host");
        snprintf(host, sizeof host, "%.*s", (int)hl, h);
        if (slash) { /* a path prefix (some gateways), without the trailing '/' */
            snprintf(base_path, sizeof base_path, "%s", slash);
            size_t bl = strlen(base_path);
            while (bl && base_path[bl - 1] == '/') base_path[--bl] = '\0';
        }
    } else {
        snprintf(host, sizeof host, "s3.%s.amazonaws.com", cfg->region);
    }
    if (uri_encode(ekey, sizeof ekey, key, 1)) return pf_fail(err, "object key too long");
    int w;
    if (cfg->path_style)
        w = snprintf(out, n, "%s://%s%s/%s/%s%s%s", scheme, host, base_path, bucket, ekey, query ? "?" : "",
                     query ? query : "");
    else
        w = snprintf(out, n, "%s://%s.%s%s/%s%s%s", scheme, bucket, host, base_path, ekey, query ? "?" : "",
                     query ? query : "");
    if (w < 0 || (size_t)w >= n) return pf_fail(err, "S3 URL too long");
    return 0;
}

/* ---- one request ---- */

typedef struct body {
    int fd;            /* a file range ... */
    uint64_t offset, length, sent;
    const char *mem;   /* ... or memory (mem != NULL) */
} body;

typedef struct response {
    long status;
    char etag[160];
    char *text; /* at most cap (0: MAX_RESPONSE) bytes of the body */
    size_t len;
    size_t cap;    /* set before the request: a GET's largest body */
    int truncated; /* the body was longer than cap */
} response;

static size_t read_body(char *buf, size_t size, size_t nitems, void *ctx) {
    body *b = ctx;
    size_t want = size * nitems;
    if (want > b->length - b->sent) want = (size_t)(b->length - b->sent);
    if (want == 0) return 0;
    if (b->mem) {
        memcpy(buf, b->mem + b->sent, want);
    } else {
        ssize_t r;
        do r = pread(b->fd, buf, want, (off_t)(b->offset + b->sent));
        while (r < 0 && errno == EINTR);
        if (r <= 0) return CURL_READFUNC_ABORT;
        want = (size_t)r;
    }
    b->sent += want;
    return want;
}

/* libcurl rewinds the body when it must send it again (a redirect, an auth retry). */
static int seek_body(void *ctx, curl_off_t offset, int origin) {
    body *b = ctx;
    if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > b->length) return CURL_SEEKFUNC_FAIL;
    b->sent = (uint64_t)offset;
    return CURL_SEEKFUNC_OK;
}

static size_t on_response_body(char *data, size_t size, size_t nitems, void *ctx) {
    response *r = ctx;
    size_t n = size * nitems, cap = r->cap ? r->cap : MAX_RESPONSE;
    if (r->len < cap) {
        size_t take = n < cap - r->len ? n : cap - r->len;
        if (!r->text) r->text = PF_MALLOC(cap + 1);
        memcpy(r->text + r->len, data, take);
        r->len += take;
        r->text[r->len] = '\0';
    }
    if (n > 0 && r->len == cap) r->truncated = 1;
    return n;
}

static size_t on_response_header(char *line, size_t size, size_t nitems, void *ctx) {
    response *r = ctx;
    size_t n = size * nitems;
    if (n > 5 && !strncasecmp(line, "ETag:", 5)) {
        const char *v = line + 5;
        size_t len = n - 5;
        while (len && (*v == ' ' || *v == '\t')) v++, len--;
        while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' ')) len--;
        r->etag[0] = '\0';
        /* The ETag goes back into the completion XML: quotes, hex digits and '-' only. */
        int ok = len > 0 && len < sizeof r->etag;
        for (size_t i = 0; ok && i < len; i++) ok = isalnum((unsigned char)v[i]) || v[i] == '"' || v[i] == '-';
        if (ok) {
            memcpy(r->etag, v, len);
            r->etag[len] = '\0';
        }
    }
    return n;
}

/* The text of <tag>...</tag> in a (hostile) XML body, printable ASCII only,
 * truncated to n - 1 bytes; "" when absent. */
static void xml_text(char *out, size_t n, const char *xml, const char *tag) {
    char open[64], close[64];
    out[0] = '\0';
    if (!xml) return;
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    const char *a = strstr(xml, open);
    if (!a) return;
    a += strlen(open);
    const char *b = strstr(a, close);
    if (!b) return;
    size_t o = 0;
    for (const char *p = a; p < b && o + 1 < n; p++)
        out[o++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
    out[o] = '\0';
}

typedef struct s3_ctx {
    const pf_s3_config *cfg;
    const pf_credentials *cred;
    CURL *curl;
    char sigv4[128];
    int retries;
} s3_ctx;

static void base64(char *out, const unsigned char *d, int n) { EVP_EncodeBlock((unsigned char *)out, d, n); }

/* MD5 (base64, for Content-MD5) and SHA-256 (hex, for the signature) of a body. */
static int body_digests(const body *b, char md5_b64[32], char sha_hex[PF_SHA256_HEX], pf_error *err) {
    EVP_MD_CTX *md5 = EVP_MD_CTX_new();
    PF_CHECK(md5 && EVP_DigestInit_ex(md5, EVP_md5(), NULL) == 1);
    pf_sha256 *sha = pf_sha256_new();
    int rc = 0;
    if (b->mem) {
        EVP_DigestUpdate(md5, b->mem, b->length);
        pf_sha256_update(sha, b->mem, b->length);
    } else {
        enum { CHUNK = 1 << 20 };
        unsigned char *buf = PF_MALLOC(CHUNK);
        for (uint64_t off = 0; off < b->length && !rc;) {
            size_t want = b->length - off < CHUNK ? (size_t)(b->length - off) : CHUNK;
            ssize_t r = pread(b->fd, buf, want, (off_t)(b->offset + off));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                rc = pf_fail(err, "reading the file: %s", r < 0 ? strerror(errno) : "it shrank");
                break;
            }
            EVP_DigestUpdate(md5, buf, (size_t)r);
            pf_sha256_update(sha, buf, (size_t)r);
            off += (uint64_t)r;
        }
        free(buf);
    }
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dn = 0;
    EVP_DigestFinal_ex(md5, d, &dn);
    base64(md5_b64, d, (int)dn);
    pf_sha256_final_hex(sha, sha_hex);
    EVP_MD_CTX_free(md5);
    pf_sha256_free(sha);
    return rc;
}

static int retryable_curl(CURLcode rc) {
    return rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
           rc == CURLE_SEND_ERROR || rc == CURLE_RECV_ERROR || rc == CURLE_GOT_NOTHING || rc == CURLE_PARTIAL_FILE ||
           rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_HTTP2 || rc == CURLE_HTTP2_STREAM;
}

/* One S3 request with retries. what names it in messages ("PUT s3://b/k part 3").
 * A 200 whose body is an <Error> (CompleteMultipartUpload does that) counts
 * as that error. On success resp holds the last response (caller frees text). */
static int request(s3_ctx *s, response *resp, const char *method, const char *bucket, const char *key,
                   const char *query, body *b, const char *what, pf_error *err) {
    const pf_s3_config *cfg = s->cfg;
    char url[4096], md5[32], sha[PF_SHA256_HEX], h_sha[128], h_md5[64], h_token[4200], errbuf[CURL_ERROR_SIZE];
    if (pf_s3_object_url(url, sizeof url, cfg, bucket, key, query, err)) return -1;
    if (body_digests(b, md5, sha, err)) return pf_error_prefix(err, "%s", what);
    snprintf(h_sha, sizeof h_sha, "x-amz-content-sha256: %s", sha);
    snprintf(h_md5, sizeof h_md5, "Content-MD5: %s", md5);
    int attempts = cfg->max_attempts > 0 ? cfg->max_attempts : 1;
    char msg[700] = "";
    const size_t cap = resp->cap;
    memset(resp, 0, sizeof *resp);
    for (int attempt = 1; attempt <= attempts; attempt++) {
        free(resp->text);
        memset(resp, 0, sizeof *resp);
        resp->cap = cap;
        b->sent = 0;
        CURL *curl = s->curl;
        curl_easy_reset(curl);
        struct curl_slist *h = NULL;
        h = curl_slist_append(h, h_sha);
        if (b->length || !strcmp(method, "PUT")) h = curl_slist_append(h, h_md5);
        if (s->cred->session_token) {
            snprintf(h_token, sizeof h_token, "x-amz-security-token: %s", s->cred->session_token);
            h = curl_slist_append(h, h_token);
        }
        if (!strcmp(method, "PUT")) h = curl_slist_append(h, "Content-Type: application/octet-stream");
        /* not libcurl's default form type, which some servers (moto) parse as a form and lose */
        if (!strcmp(method, "POST")) h = curl_slist_append(h, "Content-Type: application/xml");
        errbuf[0] = '\0';
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_PATH_AS_IS, 1L); /* keys like a/../b are keys, not paths to tidy */
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, s->sigv4);
        curl_easy_setopt(curl, CURLOPT_USERNAME, s->cred->access_key_id);
        curl_easy_setopt(curl, CURLOPT_PASSWORD, s->cred->secret_access_key);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, cfg->connect_timeout_s);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, cfg->low_speed_time_s);
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(curl, CURLOPT_USERAGENT, "perflow/1");
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
        if (cfg->ca_bundle[0]) curl_easy_setopt(curl, CURLOPT_CAINFO, cfg->ca_bundle);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_response_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, resp);
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_response_header);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, resp);
        if (!strcmp(method, "PUT")) {
            curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(curl, CURLOPT_READFUNCTION, read_body);
            curl_easy_setopt(curl, CURLOPT_READDATA, b);
            curl_easy_setopt(curl, CURLOPT_SEEKFUNCTION, seek_body);
            curl_easy_setopt(curl, CURLOPT_SEEKDATA, b);
            curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)b->length);
        } else if (!strcmp(method, "POST")) {
            curl_easy_setopt(curl, CURLOPT_POST, 1L);
            curl_easy_setopt(curl, CURLOPT_POSTFIELDS, b->mem ? b->mem : "");
            curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)b->length);
        } else {
            curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
        }
        CURLcode rc = curl_easy_perform(curl);
        curl_slist_free_all(h);
        memset(h_token, 0, sizeof h_token);
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
        int retry;
        if (rc != CURLE_OK) {
            snprintf(msg, sizeof msg, "%s: %s", what, errbuf[0] ? errbuf : curl_easy_strerror(rc));
            retry = retryable_curl(rc);
        } else {
            char code[64], text[256];
            xml_text(code, sizeof code, resp->text, "Code");
            int error_body = resp->text && strstr(resp->text, "<Error>") != NULL;
            if (resp->status >= 200 && resp->status < 300 && !error_body) return 0;
            xml_text(text, sizeof text, resp->text, "Message");
            snprintf(msg, sizeof msg, "%s: HTTP %ld%s%s%s%s", what, resp->status, code[0] ? " " : "", code,
                     text[0] ? ": " : "", text);
            retry = resp->status >= 500 || resp->status == 429 || resp->status == 408 || !strcmp(code, "RequestTimeout") ||
                    !strcmp(code, "SlowDown") || !strcmp(code, "InternalError");
        }
        pf_secret_scrub(msg, sizeof msg);
        pf_error_set_kind(err, retry ? PF_ERROR_TRANSIENT : PF_ERROR_PERMANENT, NULL);
        if (!retry || attempt == attempts) break;
        long wait = pf_backoff_ms(attempt, cfg->retry_base_ms, cfg->retry_max_ms);
        s->retries++;
        pf_slog(&cfg->log, PF_LOG_WARN, "%s (attempt %d of %d); retrying in %.1f s", msg, attempt, attempts,
                wait / 1000.0);
        pf_sleep_ms(wait);
    }
    free(resp->text);
    resp->text = NULL;
    return pf_fail(err, "%s", msg);
}

/* ---- uploads ---- */

static int put_local(pf_s3_result *res, const char *dest, const char *src, pf_error *err) {
    const char *path = dest + 7; /* file:// */
    if (path[0] != '/') {
        pf_fail(err, "file:// destination must be an absolute path (file:///...)");
        return permanent(err);
    }
    if (strstr(path, "/../") || strstr(path, "/./") || strchr(path, '%') || strchr(path, '?'))
        return pf_fail(err, "file:// destination must be a plain absolute path"), permanent(err);
    char dir[4096], tmp[4200];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash[1]) return pf_fail(err, "file:// destination names a folder, not a file"), permanent(err);
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) { /* mkdir -p */
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(dir, 0755) && errno != EEXIST) return pf_fail(err, "creating %s: %s", dir, strerror(errno));
        *p = '/';
    }
    if (dir[0] && mkdir(dir, 0755) && errno != EEXIST) return pf_fail(err, "creating %s: %s", dir, strerror(errno));
    snprintf(tmp, sizeof tmp, "%s/.perflow-put.XXXXXX", dir[0] ? dir : "/");
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return pf_fail(err, "%s: %s", src, strerror(errno)), permanent(err);
    int out = mkostemp(tmp, O_CLOEXEC);
    if (out < 0) {
        close(in);
        return pf_fail(err, "creating a file in %s: %s", dir, strerror(errno));
    }
    pf_sha256 *h = pf_sha256_new();
    char *buf = PF_MALLOC(1 << 20);
    uint64_t total = 0;
    int rc = 0;
    for (;;) {
        ssize_t r = read(in, buf, 1 << 20);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = pf_fail(err, "%s: %s", src, strerror(errno));
            break;
        }
        if (r == 0) break;
        for (ssize_t o = 0; o < r;) {
            ssize_t w = write(out, buf + o, (size_t)(r - o));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                rc = pf_fail(err, "writing %s: %s", path, strerror(errno));
                break;
            }
            o += w;
        }
        if (rc) break;
        pf_sha256_update(h, buf, (size_t)r);
        total += (uint64_t)r;
    }
    free(buf);
    close(in);
    if (!rc && (fchmod(out, 0644) || fsync(out))) rc = pf_fail(err, "writing %s: %s", path, strerror(errno));
    close(out);
    if (!rc && rename(tmp, path)) rc = pf_fail(err, "%s: %s", path, strerror(errno));
    if (rc) {
        unlink(tmp);
        pf_sha256_free(h);
        return -1;
    }
    int dfd = open(dir[0] ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    pf_sha256_final_hex(h, res->sha256);
    pf_sha256_free(h);
    res->size = total;
    return 0;
}

static void abort_multipart(s3_ctx *s, const char *bucket, const char *key, const char *query, const char *what) {
    response r;
    body none = {.mem = ""};
    pf_error e = {0};
    char w[1200];
    snprintf(w, sizeof w, "%s (abort)", what);
    if (!request(s, &r, "DELETE", bucket, key, query, &none, w, &e))
        free(r.text);
    else
        pf_slog(&s->cfg->log, PF_LOG_WARN, "%s", e.msg);
}

static int put_multipart(s3_ctx *s, pf_s3_result *res, const char *bucket, const char *key, int fd, uint64_t size,
                         const char *what, pf_error *err) {
    uint64_t part = s->cfg->part_size < MIN_PART ? MIN_PART : s->cfg->part_size;
    while ((size + part - 1) / part > MAX_PARTS) part *= 2;
    int nparts = (int)((size + part - 1) / part);
    response r;
    body none = {.mem = ""};
    char w[1200];
    snprintf(w, sizeof w, "%s (initiate multipart)", what);
    if (request(s, &r, "POST", bucket, key, "uploads=", &none, w, err)) return -1;
    char upload_id[1100], eid[3400], query[3500];
    xml_text(upload_id, sizeof upload_id, r.text, "UploadId");
    free(r.text);
    int ok = upload_id[0] != '\0' && strlen(upload_id) < 1024;
    for (const char *p = upload_id; ok && *p; p++) ok = isalnum((unsigned char)*p) || strchr("._-~+/=", *p);
    if (!ok) return pf_fail(err, "%s: the server's multipart UploadId is missing or malformed", what);
    uri_encode(eid, sizeof eid, upload_id, 0);
    snprintf(query, sizeof query, "uploadId=%s", eid);
    size_t xml_cap = 128 + (size_t)nparts * 256, xl = 0;
    char *xml = PF_MALLOC(xml_cap);
    xl += (size_t)snprintf(xml + xl, xml_cap - xl, "<CompleteMultipartUpload>");
    for (int i = 0; i < nparts; i++) {
        uint64_t off = (uint64_t)i * part, len = size - off < part ? size - off : part;
        body b = {.fd = fd, .offset = off, .length = len};
        char pq[3600];
        snprintf(pq, sizeof pq, "partNumber=%d&%s", i + 1, query); /* canonical: sorted by name */
        snprintf(w, sizeof w, "%s part %d of %d", what, i + 1, nparts);
        if (request(s, &r, "PUT", bucket, key, pq, &b, w, err)) {
            free(xml);
            abort_multipart(s, bucket, key, query, what);
            return -1;
        }
        free(r.text);
        if (!r.etag[0]) {
            free(xml);
            abort_multipart(s, bucket, key, query, what);
            return pf_fail(err, "%s: the server gave no usable ETag", w);
        }
        xl += (size_t)snprintf(xml + xl, xml_cap - xl, "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>", i + 1,
                               r.etag);
    }
    xl += (size_t)snprintf(xml + xl, xml_cap - xl, "</CompleteMultipartUpload>");
    PF_CHECK(xl < xml_cap);
    body cb = {.mem = xml, .length = xl};
    snprintf(w, sizeof w, "%s (complete multipart)", what);
    int rc = request(s, &r, "POST", bucket, key, query, &cb, w, err);
    free(xml);
    if (rc) {
        abort_multipart(s, bucket, key, query, what);
        return -1;
    }
    xml_text(res->etag, sizeof res->etag, r.text, "ETag");
    free(r.text);
    /* &quot; in the XML: keep the ETag plain */
    char *q;
    while ((q = strstr(res->etag, "&quot;")) != NULL) {
        *q = '"';
        memmove(q + 1, q + 6, strlen(q + 6) + 1);
    }
    res->parts = nparts;
    return 0;
}

static int put_file(pf_s3_result *res, const pf_s3_config *cfg, const pf_credentials *cred, const char *dest,
                    const char *path, pf_error *err);

int pf_s3_put_file(pf_s3_result *res, const pf_s3_config *cfg, const pf_credentials *cred, const char *dest,
                   const char *path, pf_error *err) {
    pf_error_set_kind(err, PF_ERROR_NONE, NULL);
    int rc = put_file(res, cfg, cred, dest, path, err);
    /* what no step classified (the local disk, libcurl itself) may well work later */
    if (rc && pf_error_kind_of(err) == PF_ERROR_NONE) pf_error_set_kind(err, PF_ERROR_TRANSIENT, NULL);
    if (rc && err) pf_secret_scrub(err->msg, sizeof err->msg);
    return rc;
}

static int put_file(pf_s3_result *res, const pf_s3_config *cfg, const pf_credentials *cred, const char *dest,
                    const char *path, pf_error *err) {
    memset(res, 0, sizeof *res);
    if (!strncmp(dest, "file://", 7)) return put_local(res, dest, path, err);
    char bucket[64], key[1100], what[1200];
    if (pf_s3_parse_dest(bucket, sizeof bucket, key, sizeof key, dest, err)) return permanent(err);
    snprintf(what, sizeof what, "PUT s3://%s/%.200s", bucket, key);
    if (!cred->access_key_id || !cred->secret_access_key) {
        pf_fail(err, "%s: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put "
                     "aws_access_key_id and aws_secret_access_key in $CREDENTIALS_DIRECTORY", what);
        return permanent(err);
    }
    if (pf_curl_init(err)) return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        pf_fail(err, "%s: %s", path, strerror(errno));
        return permanent(err);
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        pf_fail(err, "%s: not a regular file", path);
        return permanent(err);
    }
    uint64_t size = (uint64_t)st.st_size;
    s3_ctx s = {.cfg = cfg, .cred = cred, .curl = curl_easy_init()};
    if (!s.curl) {
        close(fd);
        return pf_fail(err, "%s: libcurl could not start a transfer", what);
    }
    snprintf(s.sigv4, sizeof s.sigv4, "aws:amz:%s:s3", cfg->region);
    int rc;
    if (size > cfg->multipart_threshold) {
        rc = put_multipart(&s, res, bucket, key, fd, size, what, err);
    } else {
        response r;
        body b = {.fd = fd, .offset = 0, .length = size};
        rc = request(&s, &r, "PUT", bucket, key, NULL, &b, what, err);
        if (!rc) {
            snprintf(res->etag, sizeof res->etag, "%s", r.etag);
            free(r.text);
        }
    }
    if (!rc) {
        pf_error e = {0};
        if (pf_sha256_file(res->sha256, &res->size, path, &e)) res->sha256[0] = '\0';
        res->size = size;
    }
    res->retries = s.retries;
    curl_easy_cleanup(s.curl);
    close(fd);
    return rc;
}

/* ---- downloads ---- */

static int get_local(uint8_t **data, size_t *len, int *found, const char *src, size_t max, pf_error *err) {
    const char *path = src + 7; /* file:// */
    if (path[0] != '/' || strstr(path, "/../") || strstr(path, "/./") || strchr(path, '%') || strchr(path, '?'))
        return pf_fail(err, "file:// source must be a plain absolute path (file:///...)"), permanent(err);
    return pf_read_whole_file(data, len, path, max, found, err); /* a missing file: *found stays 0 */
}

static int get_object(uint8_t **data, size_t *len, int *found, const pf_s3_config *cfg, const pf_credentials *cred,
                      const char *src, size_t max, pf_error *err) {
    if (!strncmp(src, "file://", 7)) return get_local(data, len, found, src, max, err);
    char bucket[64], key[1100], what[1200];
    if (pf_s3_parse_dest(bucket, sizeof bucket, key, sizeof key, src, err)) return permanent(err);
    snprintf(what, sizeof what, "GET s3://%s/%.200s", bucket, key);
    if (!cred->access_key_id || !cred->secret_access_key) {
        pf_fail(err, "%s: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put "
                     "aws_access_key_id and aws_secret_access_key in $CREDENTIALS_DIRECTORY", what);
        return permanent(err);
    }
    if (pf_curl_init(err)) return -1;
    s3_ctx s = {.cfg = cfg, .cred = cred, .curl = curl_easy_init()};
    if (!s.curl) return pf_fail(err, "%s: libcurl could not start a transfer", what);
    snprintf(s.sigv4, sizeof s.sigv4, "aws:amz:%s:s3", cfg->region);
    response r = {.cap = max + 1};
    body b = {.fd = -1, .mem = ""};
    int rc = request(&s, &r, "GET", bucket, key, NULL, &b, what, err);
    curl_easy_cleanup(s.curl);
    if (rc) {
        if (r.status == 404) { /* NoSuchKey: not an error, just absent */
            pf_error_set_kind(err, PF_ERROR_NONE, NULL);
            return 0;
        }
        return -1;
    }
    if (r.len > max) {
        free(r.text);
        return pf_fail(err, "%s: larger than %zu bytes", what, max), permanent(err);
    }
    *data = (uint8_t *)(r.text ? r.text : PF_MALLOC(1));
    *len = r.len;
    *found = 1;
    return 0;
}

int pf_s3_get(uint8_t **data, size_t *len, int *found, const pf_s3_config *cfg, const pf_credentials *cred,
              const char *src, size_t max, pf_error *err) {
    *data = NULL;
    *len = 0;
    *found = 0;
    pf_error_set_kind(err, PF_ERROR_NONE, NULL);
    int rc = get_object(data, len, found, cfg, cred, src, max, err);
    if (rc && pf_error_kind_of(err) == PF_ERROR_NONE) pf_error_set_kind(err, PF_ERROR_TRANSIENT, NULL);
    if (rc && err) pf_secret_scrub(err->msg, sizeof err->msg);
    return rc;
}
