/* cache.c - the model cache: opening it, pins and references, and getting one
 * URL into a pinned blob with exactly one download per host (see cache.h for
 * the layout and the coordination protocol). Models are in cache_model.c,
 * eviction, verification and listing in cache_evict.c. */
#include "cache_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "backoff.h"
#include "credentials.h"
#include "fileio.h"

#define REF_MAX_BYTES 8192
#define REDIS_RETRY_MS 5000
#define STALE_PART_S (7 * 24 * 3600) /* an unlocked partial download this old is abandoned */
#define STALE_TMP_S 3600             /* a view or temp file left by a crash */

/* ---- configuration ---- */

void pf_cache_config_default(pf_cache_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->redis_timeout_ms = 1000;
    cfg->lock_ttl_ms = 30000;
    cfg->lock_poll_ms = 250;
    cfg->wait_timeout_ms = 2 * 3600 * 1000L;
    cfg->parallel = 4;
    pf_fetch_options_default(&cfg->fetch);
}

int pf_parse_size(const char *s, uint64_t *out, pf_error *err) {
    char *end;
    errno = 0;
    if (!s || !isdigit((unsigned char)*s)) return pf_fail(err, "'%s' is not a size (e.g. 512M, 20G)", s ? s : "");
    unsigned long long v = strtoull(s, &end, 10);
    int shift = 0;
    if (*end) {
        switch (toupper((unsigned char)*end)) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        default: return pf_fail(err, "'%s' is not a size (e.g. 512M, 20G)", s);
        }
        end++;
        if (*end == 'B' || *end == 'b') end++;
        if (*end == 'i' && (end[1] == 'B' || end[1] == 'b')) end += 2;
    }
    if (errno || *end || (shift && v > (UINT64_MAX >> shift)))
        return pf_fail(err, "'%s' is not a size (e.g. 512M, 20G)", s);
    *out = (uint64_t)v << shift;
    return 0;
}

static int env_long(const char *name, long lo, long hi, long *out, pf_error *err) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < lo || x > hi) return pf_fail(err, "%s must be an integer from %ld to %ld", name, lo, hi);
    *out = x;
    return 0;
}

static int env_flag(const char *name, int *out, pf_error *err) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes"))
        *out = 1;
    else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no"))
        *out = 0;
    else
        return pf_fail(err, "%s must be 1 or 0", name);
    return 0;
}

int pf_cache_config_from_env(pf_cache_config *cfg, pf_error *err) {
    static char home_cache[2048];
    pf_cache_config_default(cfg);
    const char *dir = getenv("PERFLOW_CACHE_DIR");
    if (!dir || !*dir) dir = getenv("CACHE_DIRECTORY"); /* systemd's CacheDirectory= */
    if (dir && *dir && strchr(dir, ':')) dir = NULL;    /* several directories: take none */
    if (!dir || !*dir) {
        const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (xdg && *xdg)
            snprintf(home_cache, sizeof home_cache, "%s/perflow", xdg);
        else if (home && *home)
            snprintf(home_cache, sizeof home_cache, "%s/.cache/perflow", home);
        else
            return pf_fail(err, "no cache directory: set PERFLOW_CACHE_DIR");
        dir = home_cache;
    }
    cfg->root = dir;
    const char *budget = getenv("PERFLOW_CACHE_BUDGET");
    if (budget && *budget && pf_parse_size(budget, &cfg->budget_bytes, err))
        return pf_error_prefix(err, "PERFLOW_CACHE_BUDGET");
    cfg->redis_addr = getenv("PERFLOW_REDIS");
    cfg->host_id = getenv("PERFLOW_CACHE_HOST_ID");
    long parallel = cfg->parallel, attempts = cfg->fetch.max_attempts;
    if (env_long("PERFLOW_LOCK_TTL_MS", 100, 3600 * 1000L, &cfg->lock_ttl_ms, err) ||
        env_long("PERFLOW_LOCK_POLL_MS", 10, 60000, &cfg->lock_poll_ms, err) ||
        env_long("PERFLOW_FETCH_PARALLEL", 1, 16, &parallel, err) ||
        env_long("PERFLOW_FETCH_ATTEMPTS", 1, 100, &attempts, err) ||
        env_long("PERFLOW_FETCH_RETRY_BASE_MS", 1, 600000, &cfg->fetch.retry_base_ms, err) ||
        env_long("PERFLOW_FETCH_LOW_SPEED_TIME", 1, 3600, &cfg->fetch.low_speed_time_s, err) ||
        env_long("PERFLOW_FETCH_MAX_SECONDS", 0, 30 * 86400L, &cfg->fetch.max_seconds, err) ||
        env_long("PERFLOW_FETCH_MIN_AVG_RATE", 0, 1L << 40, &cfg->fetch.min_avg_rate, err) ||
        env_long("PERFLOW_FETCH_MIN_RATE_GRACE_S", 1, 86400, &cfg->fetch.min_rate_grace_s, err) ||
        env_flag("PERFLOW_FETCH_ALLOW_HTTP", &cfg->fetch.policy.allow_http, err) ||
        env_flag("PERFLOW_FETCH_ALLOW_PRIVATE", &cfg->fetch.policy.allow_private, err))
        return -1;
    cfg->parallel = (int)parallel;
    cfg->fetch.max_attempts = (int)attempts;
    const char *max = getenv("PERFLOW_FETCH_MAX_BYTES");
    if (max && *max && pf_parse_size(max, &cfg->fetch.max_bytes, err))
        return pf_error_prefix(err, "PERFLOW_FETCH_MAX_BYTES");
    cfg->fetch.policy.allow_hosts = getenv("PERFLOW_FETCH_ALLOW_HOSTS");
    cfg->fetch.token_hosts = getenv("PERFLOW_HUB_TOKEN_HOSTS");
    const char *ca = getenv("PERFLOW_CA_BUNDLE");
    if (ca && *ca) cfg->fetch.ca_bundle = ca;
    return 0;
}

/* ---- paths and keys ---- */

void pf_cache_blob_path(char *out, size_t n, const pf_cache *c, const char *digest) {
    snprintf(out, n, "%s/blobs/sha256/%s", c->root, digest);
}

void pf_cache_ref_path(char *out, size_t n, const pf_cache *c, const char *key) {
    snprintf(out, n, "%s/refs/%s", c->root, key);
}

void pf_cache_key(char key[PF_SHA256_HEX], const char *kind, const char *text) {
    pf_sha256 *h = pf_sha256_new();
    pf_sha256_update(h, kind, strlen(kind));
    pf_sha256_update(h, "\n", 1);
    pf_sha256_update(h, text, strlen(text));
    pf_sha256_final_hex(h, key);
    pf_sha256_free(h);
}

static int mkdir_p(const char *path, pf_error *err) {
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0755) && errno != EEXIST) return pf_fail(err, "cache: creating %s: %s", buf, strerror(errno));
            *p = saved;
            if (!saved) break;
        }
    }
    struct stat st;
    if (stat(path, &st) || !S_ISDIR(st.st_mode)) return pf_fail(err, "cache: %s is not a directory", path);
    return 0;
}

static void fsync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* ---- Redis, degrading gracefully ---- */

pf_redis_index *pf_cache_redis(pf_cache *c) {
    if (!c->cfg.redis_addr) return NULL;
    pthread_mutex_lock(&c->lock);
    pf_redis_index *r = NULL;
    if (c->redis_up) {
        r = c->redis;
    } else if (pf_now_ms() >= c->redis_retry_at_ms) {
        pf_error e = {0};
        int ok = c->redis ? !pf_redis_index_reconnect(c->redis, &e)
                          : !pf_redis_index_open(&c->redis, c->cfg.redis_addr, c->ns, c->cfg.redis_timeout_ms, &e);
        if (ok) {
            c->redis_up = 1;
            r = c->redis;
            snprintf(c->redis_state, sizeof c->redis_state, "redis: connected to %s (namespace %s)",
                     c->cfg.redis_addr, c->ns);
            pf_slog(&c->cfg.log, PF_LOG_INFO, "%s", c->redis_state);
        } else {
            c->redis_retry_at_ms = pf_now_ms() + REDIS_RETRY_MS;
            snprintf(c->redis_state, sizeof c->redis_state,
                     "redis: unreachable at %s: %s; no cross-worker coordination", c->cfg.redis_addr, e.msg);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

void pf_cache_redis_failed(pf_cache *c, const pf_error *e) {
    pthread_mutex_lock(&c->lock);
    int was_up = c->redis_up;
    c->redis_up = 0;
    c->redis_retry_at_ms = pf_now_ms() + REDIS_RETRY_MS;
    snprintf(c->redis_state, sizeof c->redis_state, "redis: unreachable at %s: %s; no cross-worker coordination",
             c->cfg.redis_addr, e->msg);
    pthread_mutex_unlock(&c->lock);
    if (was_up) pf_slog(&c->cfg.log, PF_LOG_WARN, "%s (the cache goes on for this process)", c->redis_state);
}

int pf_cache_status(pf_cache *c, char *line, size_t n) {
    if (!c->cfg.redis_addr) {
        snprintf(line, n, "redis: not configured; no cross-worker coordination");
        return 0;
    }
    int up = pf_cache_redis(c) != NULL;
    pthread_mutex_lock(&c->lock);
    snprintf(line, n, "%s", c->redis_state);
    pthread_mutex_unlock(&c->lock);
    return up;
}

/* ---- references ---- */

int pf_cache_read_fd(char **out, size_t *len, int fd, size_t max, pf_error *err) {
    char *buf = PF_MALLOC(max + 1);
    size_t got = 0;
    for (;;) {
        ssize_t r = pread(fd, buf + got, max + 1 - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            free(buf);
            return pf_fail(err, "reading: %s", strerror(errno));
        }
        if (r == 0) break;
        got += (size_t)r;
        if (got > max) {
            free(buf);
            return pf_fail(err, "more than %zu bytes", max);
        }
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return 0;
}

int pf_cache_ref_read(pf_cache *c, const char *key, char digest[PF_SHA256_HEX], uint64_t *size, char *url,
                      size_t url_n) {
    char path[PF_CACHE_PATH];
    pf_cache_ref_path(path, sizeof path, c, key);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return 0;
    char *text;
    size_t len;
    int rc = pf_cache_read_fd(&text, &len, fd, REF_MAX_BYTES, NULL);
    close(fd);
    if (rc) return 0;
    /* "perflow-ref 1\nsha256 HEX\nsize N\nurl URL\n" */
    char d[80] = "";
    unsigned long long sz = 0;
    int off = 0, ok = 0;
    if (strlen(text) == len && sscanf(text, "perflow-ref 1\nsha256 %70s\nsize %llu\nurl %n", d, &sz, &off) == 2 && off > 0 &&
        pf_sha256_hex_valid(d)) {
        const char *u = text + off;
        const char *nl = strchr(u, '\n');
        size_t ul = nl ? (size_t)(nl - u) : 0;
        if (nl && !nl[1] && ul < url_n && ul > 0) {
            memcpy(url, u, ul);
            url[ul] = '\0';
            memcpy(digest, d, PF_SHA256_HEX);
            *size = sz;
            ok = 1;
        }
    }
    free(text);
    return ok;
}

/* Creates a temporary file in <root>/tmp (O_RDWR, 0600). */
static int tmp_file(pf_cache *c, char *path, size_t n, pf_error *err) {
    snprintf(path, n, "%s/tmp/.tmp.XXXXXX", c->root);
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) return pf_fail(err, "cache: creating a file in %s/tmp: %s", c->root, strerror(errno));
    return fd;
}

/* Writes the n bytes at data to fd, a new tmp_file at tmp, makes it read-only
 * like every file of the cache, and puts it at path (pf_fsync_rename). fd stays
 * open; on failure removing tmp is the caller's. */
static int put_readonly(int fd, const char *tmp, const char *path, const void *data, size_t n, pf_error *err) {
    if (pf_write_all(fd, data, n) || fchmod(fd, 0444)) return pf_fail(err, "%s", strerror(errno));
    return pf_fsync_rename(fd, tmp, path, err);
}

int pf_cache_ref_write(pf_cache *c, const char *key, const char *digest, uint64_t size, const char *url,
                       pf_error *err) {
    char tmp[PF_CACHE_PATH], path[PF_CACHE_PATH], text[PF_URL_MAX + 200];
    int len = snprintf(text, sizeof text, "perflow-ref 1\nsha256 %s\nsize %llu\nurl %s\n", digest,
                       (unsigned long long)size, url);
    PF_CHECK(len > 0 && (size_t)len < sizeof text);
    int fd = tmp_file(c, tmp, sizeof tmp, err);
    if (fd < 0) return -1;
    pf_cache_ref_path(path, sizeof path, c, key);
    int rc = put_readonly(fd, tmp, path, text, (size_t)len, err);
    close(fd);
    if (rc) {
        unlink(tmp);
        return pf_error_prefix(err, "cache: writing a reference");
    }
    return 0;
}

/* ---- pins ---- */

int pf_cache_pin(pf_cache *c, const char *digest, uint64_t expect_size, int *fd, pf_error *err) {
    char path[PF_CACHE_PATH];
    pf_cache_blob_path(path, sizeof path, c, digest);
    *fd = -1;
    /* An evictor may unlink the blob between our open and our lock: then the
     * lock is on an orphan, and the path names another inode or none. */
    for (int tries = 0; tries < 3; tries++) {
        int f = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (f < 0) {
            if (errno == ENOENT || errno == ELOOP) return 0;
            return pf_fail(err, "cache: %s: %s", path, strerror(errno));
        }
        while (flock(f, LOCK_SH) && errno == EINTR) {
        }
        struct stat a, b;
        if (fstat(f, &a) || stat(path, &b) || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
            close(f);
            continue;
        }
        if (!S_ISREG(a.st_mode) || (expect_size && (uint64_t)a.st_size != expect_size)) {
            close(f);
            return 0;
        }
        *fd = f;
        return 1;
    }
    return 0;
}

void pf_cache_touch(pf_cache *c, const char *digest, int fd) {
    long long now = pf_wall_ms();
    if (fd >= 0) {
        struct timespec ts[2] = {{now / 1000, (now % 1000) * 1000000L}, {0, UTIME_OMIT}};
        (void)futimens(fd, ts);
    }
    pf_redis_index *r = pf_cache_redis(c);
    pf_error e = {0};
    if (r && pf_redis_lru_touch(r, digest, now, &e)) pf_cache_redis_failed(c, &e);
}

/* ---- opening ---- */

/* Drops index entries that the disk contradicts, and old temporary files. */
static void reconcile(pf_cache *c) {
    pf_redis_index *r = pf_cache_redis(c);
    pf_error e = {0};
    if (r) {
        char(*keys)[PF_SHA256_HEX] = NULL;
        size_t n = 0;
        int dropped = 0;
        if (pf_redis_entry_keys(r, &keys, &n, 1000000, &e)) {
            pf_cache_redis_failed(c, &e);
        } else {
            for (size_t i = 0; i < n; i++) {
                pf_index_entry ent;
                int found, fd, drop = 0;
                if (pf_redis_entry_get(r, keys[i], &ent, &found, &e)) {
                    pf_cache_redis_failed(c, &e);
                    break;
                }
                if (found < 0) {
                    drop = 1;
                } else if (found && !strcmp(ent.state, "ready")) {
                    int pinned = pf_cache_pin(c, ent.digest, ent.size, &fd, NULL);
                    if (pinned == 1)
                        close(fd);
                    else
                        drop = 1;
                } else if (found) { /* downloading: alive only while its lock is */
                    int got = 0;
                    char probe[64];
                    snprintf(probe, sizeof probe, "reconcile:%d", (int)getpid());
                    if (!pf_redis_lock_try(r, keys[i], probe, 1000, &got, &e) && got) {
                        pf_redis_lock_release(r, keys[i], probe, NULL);
                        drop = 1;
                    }
                }
                if (drop && !pf_redis_entry_del(r, keys[i], &e)) dropped++;
            }
            if (dropped)
                pf_slog(&c->cfg.log, PF_LOG_INFO, "cache: dropped %d index entries whose files are missing or wrong",
                        dropped);
        }
        free(keys);
    }
    char dir[PF_CACHE_PATH];
    snprintf(dir, sizeof dir, "%s/tmp", c->root);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    time_t now = time(NULL);
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2]))) continue;
        char path[PF_CACHE_PATH];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (lstat(path, &st)) continue;
        size_t nl = strlen(de->d_name);
        int part = nl > 5 && !strcmp(de->d_name + nl - 5, ".part");
        if (now - st.st_mtime < (part ? STALE_PART_S : STALE_TMP_S)) continue;
        if (S_ISDIR(st.st_mode)) {
            pf_cache_remove_view(path); /* abandoned while being built */
        } else if (part) {
            int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (fd >= 0 && !flock(fd, LOCK_EX | LOCK_NB)) unlink(path);
            if (fd >= 0) close(fd);
        } else {
            unlink(path);
        }
    }
    closedir(d);
}

int pf_cache_open(pf_cache **out, const pf_cache_config *cfg, pf_error *err) {
    *out = NULL;
    if (pf_curl_init(err)) return -1;
    if (pf_fetch_token_check(&cfg->fetch, err)) return -1;
    if (!cfg->root || !*cfg->root) return pf_fail(err, "cache: no directory configured");
    if (strlen(cfg->root) > 1024) return pf_fail(err, "cache: directory path longer than 1024 bytes");
    pf_cache *c = PF_CALLOC(1, sizeof *c);
    c->cfg = *cfg;
    snprintf(c->root, sizeof c->root, "%s", cfg->root);
    size_t rl = strlen(c->root);
    while (rl > 1 && c->root[rl - 1] == '/') c->root[--rl] = '\0';
    c->cfg.root = c->root;
    /* The host id names Redis keys: keep it to a safe alphabet. */
    char host[128] = "";
    if (cfg->host_id && *cfg->host_id)
        snprintf(host, sizeof host, "%s", cfg->host_id);
    else if (gethostname(host, sizeof host - 1))
        snprintf(host, sizeof host, "localhost");
    for (char *p = host; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_') *p = '_';
    snprintf(c->host_id, sizeof c->host_id, "%s", host);
    c->cfg.host_id = c->host_id;
    snprintf(c->ns, sizeof c->ns, "pf:cache:%s", c->host_id);
    if (cfg->redis_addr && *cfg->redis_addr) {
        snprintf(c->redis_addr_buf, sizeof c->redis_addr_buf, "%s", cfg->redis_addr);
        c->cfg.redis_addr = c->redis_addr_buf;
    } else {
        c->cfg.redis_addr = NULL;
    }
    if (cfg->fetch.bearer_token) c->bearer_token = PF_STRDUP(cfg->fetch.bearer_token);
    c->cfg.fetch.bearer_token = c->bearer_token;
    if (cfg->fetch.ca_bundle) {
        snprintf(c->ca_bundle, sizeof c->ca_bundle, "%s", cfg->fetch.ca_bundle);
        c->cfg.fetch.ca_bundle = c->ca_bundle;
    }
    if (cfg->fetch.policy.allow_hosts) {
        snprintf(c->allow_hosts, sizeof c->allow_hosts, "%s", cfg->fetch.policy.allow_hosts);
        c->cfg.fetch.policy.allow_hosts = c->allow_hosts;
    }
    if (c->cfg.lock_ttl_ms < 100) c->cfg.lock_ttl_ms = 100;
    if (c->cfg.lock_poll_ms < 10) c->cfg.lock_poll_ms = 10;
    if (c->cfg.parallel < 1) c->cfg.parallel = 1;
    if (c->cfg.parallel > 16) c->cfg.parallel = 16;
    c->cfg.fetch.log = c->cfg.log;
    pthread_mutex_init(&c->lock, NULL);
    static const char *const subdirs[] = {"", "/blobs/sha256", "/refs", "/models", "/tmp"};
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        char path[PF_CACHE_PATH];
        snprintf(path, sizeof path, "%s%s", c->root, subdirs[i]);
        if (mkdir_p(path, err)) {
            pf_cache_close(c);
            return -1;
        }
    }
    char probe[PF_CACHE_PATH];
    int pfd = tmp_file(c, probe, sizeof probe, err);
    if (pfd < 0) {
        pf_cache_close(c);
        return -1;
    }
    close(pfd);
    unlink(probe);
    if (c->cfg.redis_addr) {
        snprintf(c->redis_state, sizeof c->redis_state, "redis: not yet connected to %s", c->cfg.redis_addr);
        if (!pf_cache_redis(c)) {
            pthread_mutex_lock(&c->lock);
            char line[sizeof c->redis_state];
            snprintf(line, sizeof line, "%s", c->redis_state);
            pthread_mutex_unlock(&c->lock);
            pf_slog(&c->cfg.log, PF_LOG_WARN, "%s (the cache goes on for this process)", line);
        }
    }
    reconcile(c);
    *out = c;
    return 0;
}

void pf_cache_close(pf_cache *c) {
    if (!c) return;
    pf_redis_index_close(c->redis);
    if (c->bearer_token) {
        OPENSSL_cleanse(c->bearer_token, strlen(c->bearer_token));
        free(c->bearer_token);
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- one URL into a pinned blob ---- */

typedef struct download_ctx {
    pf_cache *c;
    pf_redis_index *r; /* NULL: no Redis lock to renew */
    const char *key, *token;
    long long last_renew_ms;
    int lost;
    const volatile int *cancel;
} download_ctx;

/* Renews the download lock every third of its lifetime while bytes flow
 * (libcurl calls this at least once a second, stalled or not). */
static int on_download_progress(void *ctx, uint64_t have, uint64_t total) {
    download_ctx *d = ctx;
    if ((d->cancel && *d->cancel) || (d->c->cfg.cancel && *d->c->cfg.cancel)) return 1;
    long long now = pf_now_ms();
    if (d->r && now - d->last_renew_ms >= d->c->cfg.lock_ttl_ms / 3) {
        pf_error e = {0};
        int held = 1;
        if (pf_redis_lock_renew(d->r, d->key, d->token, d->c->cfg.lock_ttl_ms, &held, &e)) {
            pf_cache_redis_failed(d->c, &e);
            d->r = NULL; /* go on unlocked: the partial file's flock still keeps writers apart */
        } else if (!held) {
            d->lost = 1;
            return 1;
        }
        d->last_renew_ms = now;
    }
    return 0;
}

/* A hit: expect (when given) or the reference names a blob we could pin. */
static int lookup(pf_cache *c, const char *key, const char *url, const char *expect, pf_cache_got *got, pf_error *err) {
    char digest[PF_SHA256_HEX], ref_url[PF_URL_MAX];
    uint64_t size = 0;
    int fd, pinned;
    if (expect) {
        pinned = pf_cache_pin(c, expect, 0, &fd, err);
        if (pinned < 0) return -1;
        if (pinned) {
            struct stat st;
            fstat(fd, &st);
            memcpy(got->digest, expect, PF_SHA256_HEX);
            got->size = (uint64_t)st.st_size;
            got->fd = fd;
            if (!pf_cache_ref_read(c, key, digest, &size, ref_url, sizeof ref_url) || strcmp(digest, expect))
                (void)pf_cache_ref_write(c, key, expect, got->size, url, NULL);
            return 1;
        }
        return 0; /* a reference to other content does not count when the digest is given */
    }
    if (!pf_cache_ref_read(c, key, digest, &size, ref_url, sizeof ref_url) || strcmp(ref_url, url)) return 0;
    pinned = pf_cache_pin(c, digest, size, &fd, err);
    if (pinned <= 0) return pinned;
    memcpy(got->digest, digest, PF_SHA256_HEX);
    got->size = size;
    got->fd = fd;
    return 1;
}

static void index_hit(pf_cache *c, const char *key, const char *url, const pf_cache_got *got) {
    pf_redis_index *r = pf_cache_redis(c);
    if (!r) return;
    pf_index_entry ent;
    int found;
    pf_error e = {0};
    long long now = pf_wall_ms();
    if (pf_redis_entry_get(r, key, &ent, &found, &e)) {
        pf_cache_redis_failed(c, &e);
        return;
    }
    int rc;
    if (found == 1 && !strcmp(ent.state, "ready") && !strcmp(ent.digest, got->digest)) {
        rc = pf_redis_entry_touch(r, key, now, &e);
    } else { /* absent (written while Redis was down) or stale: write it anew */
        memset(&ent, 0, sizeof ent);
        snprintf(ent.key, sizeof ent.key, "%s", key);
        snprintf(ent.url, sizeof ent.url, "%s", url);
        memcpy(ent.digest, got->digest, PF_SHA256_HEX);
        ent.size = got->size;
        pf_cache_blob_path(ent.path, sizeof ent.path, c, got->digest);
        snprintf(ent.state, sizeof ent.state, "ready");
        ent.last_use_ms = now;
        rc = pf_redis_entry_put(r, &ent, &e);
    }
    if (rc || pf_redis_lru_touch(r, got->digest, now, &e)) pf_cache_redis_failed(c, &e);
}

/* Opens and locks the partial file of key: the fd, -2 when another process
 * holds it, -1 on error. */
static int open_part(pf_cache *c, const char *key, char *path, size_t n, pf_error *err) {
    snprintf(path, n, "%s/tmp/%s.part", c->root, key);
    for (int tries = 0; tries < 3; tries++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) return pf_fail(err, "cache: %s: %s", path, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB)) {
            int e = errno;
            close(fd);
            if (e == EWOULDBLOCK) return -2;
            return pf_fail(err, "cache: locking %s: %s", path, strerror(e));
        }
        struct stat a, b; /* the previous writer may have renamed it away meanwhile */
        if (!fstat(fd, &a) && !stat(path, &b) && a.st_ino == b.st_ino && a.st_dev == b.st_dev) return fd;
        close(fd);
    }
    return -2;
}

int pf_cache_acquire_url(pf_cache *c, const char *url_in, const char *expect, const volatile int *cancel,
                         pf_cache_got *got, pf_error *err) {
    memset(got, 0, sizeof *got);
    got->fd = -1;
    pf_url u;
    char url[PF_URL_MAX], logurl[600], key[PF_SHA256_HEX];
    if (expect && !*expect) expect = NULL;
    if ((expect && !pf_sha256_hex_valid(expect)) || pf_url_parse(&u, url_in, err) ||
        pf_url_format(url, sizeof url, &u, err)) {
        if (expect && !pf_sha256_hex_valid(expect)) pf_fail(err, "expected sha256 must be 64 lower-case hex digits");
        pf_error_set_kind(err, PF_ERROR_PERMANENT, NULL);
        return -1;
    }
    pf_url_for_log(logurl, sizeof logurl, &u);
    pf_cache_key(key, "url", url);

    int rc = lookup(c, key, url, expect, got, err);
    if (rc) {
        if (rc > 0) index_hit(c, key, url, got);
        return rc > 0 ? 0 : -1;
    }
    char token[256];
    unsigned char rnd[8];
    FILE *ur = fopen("/dev/urandom", "rb");
    if (!ur || fread(rnd, 1, sizeof rnd, ur) != sizeof rnd) memset(rnd, 0, sizeof rnd);
    if (ur) fclose(ur);
    snprintf(token, sizeof token, "%s:%d:%02x%02x%02x%02x%02x%02x%02x%02x", c->host_id, (int)getpid(), rnd[0], rnd[1],
             rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    long long deadline = pf_now_ms() + c->cfg.wait_timeout_ms;
    int said_waiting = 0;
    for (;;) {
        if ((cancel && *cancel) || (c->cfg.cancel && *c->cfg.cancel)) return pf_fail(err, "GET %s: cancelled", logurl);
        pf_redis_index *r = pf_cache_redis(c);
        pf_error e = {0};
        int got_lock = 0;
        if (r && pf_redis_lock_try(r, key, token, c->cfg.lock_ttl_ms, &got_lock, &e)) {
            pf_cache_redis_failed(c, &e);
            r = NULL;
        }
        char part[PF_CACHE_PATH];
        int pfd = -2;
        if (!r || got_lock) {
            pfd = open_part(c, key, part, sizeof part, err);
            if (pfd == -1) {
                if (got_lock) pf_redis_lock_release(r, key, token, NULL);
                return -1;
            }
            if (pfd == -2 && got_lock) pf_redis_lock_release(r, key, token, NULL);
        }
        if (pfd < 0) { /* another worker downloads it: wait, then look again */
            if (!said_waiting) {
                pf_slog(&c->cfg.log, PF_LOG_INFO, "GET %s: waiting for another worker's download", logurl);
                said_waiting = 1;
            }
            if (pf_now_ms() > deadline)
                return pf_fail(err, "GET %s: gave up waiting for another worker's download after %ld s", logurl,
                               c->cfg.wait_timeout_ms / 1000);
            pf_sleep_ms(c->cfg.lock_poll_ms);
            rc = lookup(c, key, url, expect, got, err);
            if (rc) {
                if (rc > 0) index_hit(c, key, url, got);
                return rc > 0 ? 0 : -1;
            }
            continue;
        }
        /* We hold the lock (or Redis is away) and the partial file. */
        rc = lookup(c, key, url, expect, got, err);
        if (rc) {
            struct stat st;
            if (!fstat(pfd, &st) && st.st_size == 0) unlink(part);
            close(pfd);
            if (got_lock) pf_redis_lock_release(r, key, token, NULL);
            if (rc > 0) index_hit(c, key, url, got);
            return rc > 0 ? 0 : -1;
        }
        struct stat st;
        fstat(pfd, &st);
        if (st.st_size > 0)
            pf_slog(&c->cfg.log, PF_LOG_INFO, "GET %s: taking over a partial download at byte %llu", logurl,
                    (unsigned long long)st.st_size);
        if (r) {
            pf_index_entry ent = {0};
            snprintf(ent.key, sizeof ent.key, "%s", key);
            snprintf(ent.url, sizeof ent.url, "%s", url);
            snprintf(ent.state, sizeof ent.state, "downloading");
            snprintf(ent.path, sizeof ent.path, "%s", part);
            ent.last_use_ms = pf_wall_ms();
            if (pf_redis_entry_put(r, &ent, &e)) pf_cache_redis_failed(c, &e);
        }
        download_ctx dctx = {c, got_lock ? r : NULL, key, token, pf_now_ms(), 0, cancel};
        pf_fetch_options fo = c->cfg.fetch;
        fo.progress = on_download_progress;
        fo.progress_ctx = &dctx;
        pf_fetch_result res;
        rc = pf_fetch_to_fd(&res, &fo, url, pfd, expect, err);
        got->http_status = res.http_status;
        if (rc) {
            struct stat ps;
            if (res.digest_mismatch || (!fstat(pfd, &ps) && ps.st_size == 0))
                unlink(part); /* nothing of it is kept, or there is nothing to resume */
            if (dctx.lost) { /* our lock expired and another worker has it now: let it finish */
                close(pfd);
                pf_slog(&c->cfg.log, PF_LOG_WARN, "GET %s: lost the download lock; waiting for the new holder", logurl);
                continue;
            }
            close(pfd);
            if (r) {
                if (pf_redis_entry_del(r, key, &e)) pf_cache_redis_failed(c, &e);
                if (got_lock) pf_redis_lock_release(r, key, token, NULL);
            }
            return -1;
        }
        char blob[PF_CACHE_PATH], blobs_dir[PF_CACHE_PATH];
        pf_cache_blob_path(blob, sizeof blob, c, res.sha256);
        snprintf(blobs_dir, sizeof blobs_dir, "%s/blobs/sha256", c->root);
        /* rename over an existing blob of that name: the same content, or a
         * damaged copy that this one repairs */
        if (fchmod(pfd, 0444) || rename(part, blob)) {
            int en = errno;
            close(pfd);
            if (got_lock) pf_redis_lock_release(r, key, token, NULL);
            return pf_fail(err, "cache: storing %s: %s", blob, strerror(en));
        }
        fsync_dir(blobs_dir);
        (void)fremovexattr(pfd, "user.perflow.validator");
        /* The writer's lock becomes the pin: no window for an evictor. */
        flock(pfd, LOCK_SH);
        memcpy(got->digest, res.sha256, PF_SHA256_HEX);
        got->size = res.size;
        got->fd = pfd;
        if (pf_cache_ref_write(c, key, res.sha256, res.size, url, err)) {
            close(pfd);
            got->fd = -1;
            if (got_lock) pf_redis_lock_release(r, key, token, NULL);
            return -1;
        }
        pf_cache_touch(c, res.sha256, pfd);
        index_hit(c, key, url, got);
        if (got_lock) pf_redis_lock_release(r, key, token, NULL);
        pf_slog(&c->cfg.log, PF_LOG_INFO, "GET %s: cached %llu bytes as sha256 %s (%d attempt%s, %d resumed)", logurl,
                (unsigned long long)res.size, res.sha256, res.attempts, res.attempts == 1 ? "" : "s", res.resumed);
        pf_cache_enforce_budget(c);
        return 0;
    }
}

int pf_cache_store_bytes(pf_cache *c, const void *data, size_t n, pf_cache_got *got, pf_error *err) {
    memset(got, 0, sizeof *got);
    got->fd = -1;
    char tmp[PF_CACHE_PATH], blob[PF_CACHE_PATH], dir[PF_CACHE_PATH];
    int fd = tmp_file(c, tmp, sizeof tmp, err);
    if (fd < 0) return -1;
    pf_sha256_hex(got->digest, data, n);
    pf_cache_blob_path(blob, sizeof blob, c, got->digest);
    if (put_readonly(fd, tmp, blob, data, n, err)) {
        close(fd);
        unlink(tmp);
        return pf_error_prefix(err, "cache: storing a manifest");
    }
    snprintf(dir, sizeof dir, "%s/blobs/sha256", c->root);
    fsync_dir(dir);
    flock(fd, LOCK_SH);
    got->size = n;
    got->fd = fd;
    pf_cache_touch(c, got->digest, fd);
    return 0;
}

/* ---- leases ---- */

int pf_cache_acquire(pf_cache_lease **out, pf_cache *c, const pf_model_source *src, pf_error *err) {
    *out = NULL;
    pf_error_set_kind(err, PF_ERROR_NONE, NULL);
    pf_cache_lease *l = PF_CALLOC(1, sizeof *l);
    l->c = c;
    int rc;
    if (src->kind != PF_SOURCE_FILE) { /* a folder of files: a model, a component or a model's configs */
        rc = pf_cache_acquire_model(c, src, l, err);
    } else {
        pf_cache_got got;
        rc = pf_cache_acquire_url(c, src->url, src->sha256[0] ? src->sha256 : NULL, NULL, &got, err);
        if (!rc) {
            l->fds[0] = got.fd;
            memcpy(l->digests[0], got.digest, PF_SHA256_HEX);
            l->n = 1;
            pf_cache_blob_path(l->path, sizeof l->path, c, got.digest);
        }
    }
    if (rc) {
        pf_cache_release(l);
        if (err) pf_secret_scrub(err->msg, sizeof err->msg);
        /* what no step classified (the disk, a wait) may well work later */
        if (pf_error_kind_of(err) == PF_ERROR_NONE) pf_error_set_kind(err, PF_ERROR_TRANSIENT, NULL);
        return -1;
    }
    *out = l;
    return 0;
}

const char *pf_cache_lease_path(const pf_cache_lease *l) { return l->path; }

void pf_cache_lease_digest(char hex[PF_SHA256_HEX], const pf_cache_lease *l) {
    pf_sha256 *h = pf_sha256_new();
    for (int i = 0; i < l->n; i++) {
        pf_sha256_update(h, l->digests[i], strlen(l->digests[i]));
        pf_sha256_update(h, "\n", 1);
    }
    pf_sha256_final_hex(h, hex);
    pf_sha256_free(h);
}

void pf_cache_release(pf_cache_lease *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++) {
        pf_cache_touch(l->c, l->digests[i], l->fds[i]);
        close(l->fds[i]);
    }
    free(l);
}
