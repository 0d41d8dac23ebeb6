/* cache_evict.c - the disk budget (LRU eviction of unpinned blobs), re-hashing
 * blobs to find damaged ones, and listing what the cache holds.
 *
 * Eviction is serialized between processes by an exclusive flock on
 * <root>/evict.lock. A blob is evicted only while this process holds an
 * exclusive flock on it, which no pinned blob grants; the last-use order
 * comes from the Redis LRU where it knows the blob, else from the blob's
 * access time (which the cache sets on every use). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backoff.h"
#include "cache_internal.h"
#include "credentials.h"

typedef struct blob_info {
    char digest[PF_SHA256_HEX];
    uint64_t size;
    long long last_use_ms;
} blob_info;

void pf_cache_remove_view(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            char sub[PF_CACHE_PATH];
            snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
            struct stat st;
            if (lstat(sub, &st)) continue;
            if (S_ISDIR(st.st_mode)) {
                DIR *w = opendir(sub);
                struct dirent *we;
                while (w && (we = readdir(w)) != NULL) {
                    if (!strcmp(we->d_name, ".") || !strcmp(we->d_name, "..")) continue;
                    char f[PF_CACHE_PATH];
                    snprintf(f, sizeof f, "%s/%s", sub, we->d_name);
                    unlink(f); /* views never nest deeper: a directory here stays, and so does its parent */
                }
                if (w) closedir(w);
                rmdir(sub);
            } else {
                unlink(sub);
            }
        }
        closedir(d);
    }
    if (rmdir(path) && errno == ENOTDIR) unlink(path);
}

static int lock_evict(pf_cache *c, pf_error *err) {
    char path[PF_CACHE_PATH];
    snprintf(path, sizeof path, "%s/evict.lock", c->root);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return pf_fail(err, "cache: %s: %s", path, strerror(errno));
    while (flock(fd, LOCK_EX) && errno == EINTR) {
    }
    return fd;
}

/* The blobs on disk with their sizes and last use, least recent first. */
static int scan_blobs(pf_cache *c, blob_info **out, size_t *n, uint64_t *total, pf_error *err) {
    char dir[PF_CACHE_PATH];
    snprintf(dir, sizeof dir, "%s/blobs/sha256", c->root);
    DIR *d = opendir(dir);
    if (!d) return pf_fail(err, "cache: %s: %s", dir, strerror(errno));
    size_t cap = 64, count = 0;
    blob_info *b = PF_MALLOC(cap * sizeof *b);
    *total = 0;
    pf_redis_index *r = pf_cache_redis(c);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!pf_sha256_hex_valid(de->d_name)) continue;
        char path[PF_CACHE_PATH];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (lstat(path, &st) || !S_ISREG(st.st_mode)) continue;
        if (count == cap) {
            b = realloc(b, (cap *= 2) * sizeof *b);
            PF_CHECK(b);
        }
        blob_info *bi = &b[count++];
        memcpy(bi->digest, de->d_name, PF_SHA256_HEX);
        bi->size = (uint64_t)st.st_size;
        bi->last_use_ms = (long long)st.st_atim.tv_sec * 1000 + st.st_atim.tv_nsec / 1000000;
        long long when;
        pf_error e = {0};
        int known = r ? pf_redis_lru_get(r, bi->digest, &when, &e) : 0;
        if (known < 0) {
            pf_cache_redis_failed(c, &e);
            r = NULL;
        } else if (known) {
            bi->last_use_ms = when;
        }
        *total += bi->size;
    }
    closedir(d);
    /* insertion sort: a cache holds tens to hundreds of blobs */
    for (size_t i = 1; i < count; i++)
        for (size_t j = i; j > 0 && b[j - 1].last_use_ms > b[j].last_use_ms; j--) {
            blob_info t = b[j];
            b[j] = b[j - 1];
            b[j - 1] = t;
        }
    *out = b;
    *n = count;
    return 0;
}

/* Removes the blob if nobody pins it: 1 removed, 0 pinned or gone. */
static int remove_unpinned(pf_cache *c, const char *digest) {
    char path[PF_CACHE_PATH];
    pf_cache_blob_path(path, sizeof path, c, digest);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return 0;
    int removed = 0;
    struct stat a, b;
    if (!flock(fd, LOCK_EX | LOCK_NB) && !fstat(fd, &a) && !stat(path, &b) && a.st_ino == b.st_ino &&
        a.st_dev == b.st_dev)
        removed = !unlink(path);
    close(fd);
    if (removed) {
        pf_redis_index *r = pf_cache_redis(c);
        pf_error e = {0};
        if (r && pf_redis_lru_remove(r, digest, &e)) pf_cache_redis_failed(c, &e);
    }
    return removed;
}

/* Drops references to blobs that are gone (with their index entries) and
 * model folders with a dangling link. Called with the evict lock held. */
static void drop_dangling(pf_cache *c) {
    char dir[PF_CACHE_PATH];
    snprintf(dir, sizeof dir, "%s/refs", c->root);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (!pf_sha256_hex_valid(de->d_name)) continue;
        char digest[PF_SHA256_HEX], url[PF_URL_MAX + 16], blob[PF_CACHE_PATH], path[PF_CACHE_PATH];
        uint64_t size;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        int ok = pf_cache_ref_read(c, de->d_name, digest, &size, url, sizeof url);
        struct stat st;
        if (ok) {
            pf_cache_blob_path(blob, sizeof blob, c, digest);
            ok = !stat(blob, &st);
        }
        if (!ok) {
            unlink(path);
            pf_redis_index *r = pf_cache_redis(c);
            pf_error e = {0};
            if (r && pf_redis_entry_del(r, de->d_name, &e)) pf_cache_redis_failed(c, &e);
        }
    }
    if (d) closedir(d);
    snprintf(dir, sizeof dir, "%s/models", c->root);
    d = opendir(dir);
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char view[PF_CACHE_PATH];
        snprintf(view, sizeof view, "%s/%s", dir, de->d_name);
        int dangling = 0;
        DIR *v = opendir(view);
        struct dirent *ve;
        while (v && !dangling && (ve = readdir(v)) != NULL) {
            if (!strcmp(ve->d_name, ".") || !strcmp(ve->d_name, "..")) continue;
            char p[PF_CACHE_PATH];
            snprintf(p, sizeof p, "%s/%s", view, ve->d_name);
            struct stat st;
            if (lstat(p, &st)) continue;
            if (S_ISDIR(st.st_mode)) {
                DIR *w = opendir(p);
                struct dirent *we;
                while (w && !dangling && (we = readdir(w)) != NULL) {
                    if (!strcmp(we->d_name, ".") || !strcmp(we->d_name, "..")) continue;
                    char f[PF_CACHE_PATH];
                    snprintf(f, sizeof f, "%s/%s", p, we->d_name);
                    dangling = stat(f, &st) != 0;
                }
                if (w) closedir(w);
            } else {
                dangling = stat(p, &st) != 0;
            }
        }
        if (v) closedir(v);
        if (dangling) pf_cache_remove_view(view);
    }
    if (d) closedir(d);
}

static int evict_to(pf_cache *c, uint64_t target, int *evicted, uint64_t *freed, uint64_t *remaining, pf_error *err) {
    int lock = lock_evict(c, err);
    if (lock < 0) return -1;
    blob_info *b;
    size_t n;
    uint64_t total;
    if (scan_blobs(c, &b, &n, &total, err)) {
        close(lock);
        return -1;
    }
    int count = 0;
    uint64_t gone = 0;
    for (size_t i = 0; i < n && total > target; i++) {
        if (!remove_unpinned(c, b[i].digest)) continue;
        total -= b[i].size;
        gone += b[i].size;
        count++;
        pf_slog(&c->cfg.log, PF_LOG_INFO, "cache: evicted sha256 %s (%llu bytes)", b[i].digest,
                (unsigned long long)b[i].size);
    }
    if (count) drop_dangling(c);
    free(b);
    close(lock);
    if (evicted) *evicted = count;
    if (freed) *freed = gone;
    if (remaining) *remaining = total;
    return 0;
}

int pf_cache_evict(pf_cache *c, uint64_t target_bytes, int *evicted, uint64_t *freed, pf_error *err) {
    int rc = evict_to(c, target_bytes, evicted, freed, NULL, err);
    if (rc && err) pf_secret_scrub(err->msg, sizeof err->msg);
    return rc;
}

void pf_cache_enforce_budget(pf_cache *c) {
    if (!c->cfg.budget_bytes) return;
    uint64_t remaining = 0;
    pf_error e = {0};
    if (evict_to(c, c->cfg.budget_bytes, NULL, NULL, &remaining, &e)) {
        pf_slog(&c->cfg.log, PF_LOG_WARN, "cache: enforcing the budget: %s", e.msg);
    } else if (remaining > c->cfg.budget_bytes) {
        pf_slog(&c->cfg.log, PF_LOG_WARN,
                "cache: %llu bytes cached, over the budget of %llu: the rest is pinned by running jobs",
                (unsigned long long)remaining, (unsigned long long)c->cfg.budget_bytes);
    }
}

int pf_cache_verify(pf_cache *c, void (*each)(void *ctx, const char *digest, uint64_t size, const char *status),
                    void *ctx, int *bad, pf_error *err) {
    *bad = 0;
    blob_info *b;
    size_t n;
    uint64_t total;
    if (scan_blobs(c, &b, &n, &total, err)) return -1;
    int removed = 0;
    for (size_t i = 0; i < n; i++) {
        char path[PF_CACHE_PATH], hex[PF_SHA256_HEX];
        uint64_t size;
        pf_cache_blob_path(path, sizeof path, c, b[i].digest);
        pf_error e = {0};
        const char *status = "ok";
        if (pf_sha256_file(hex, &size, path, &e)) {
            struct stat st;
            if (lstat(path, &st)) continue; /* evicted meanwhile */
            status = "unreadable";
            (*bad)++;
        } else if (strcmp(hex, b[i].digest)) {
            (*bad)++;
            int lock = lock_evict(c, NULL);
            if (remove_unpinned(c, b[i].digest)) {
                status = "corrupt, removed";
                removed++;
            } else {
                status = "corrupt, in use";
            }
            if (lock >= 0) close(lock);
            pf_slog(&c->cfg.log, PF_LOG_WARN, "cache: blob sha256 %s has content %s: %s", b[i].digest, hex, status);
        }
        if (each) each(ctx, b[i].digest, b[i].size, status);
    }
    free(b);
    if (removed) {
        int lock = lock_evict(c, NULL);
        drop_dangling(c);
        if (lock >= 0) close(lock);
    }
    return 0;
}

/* 1 when some process holds a flock on path (a pin, or a writer). */
static int locked_by_other(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return 0;
    int held = flock(fd, LOCK_EX | LOCK_NB) != 0;
    close(fd);
    return held;
}

int pf_cache_list(pf_cache *c, void (*each)(void *ctx, const pf_cache_entry *e), void *ctx, pf_error *err) {
    char dir[PF_CACHE_PATH];
    snprintf(dir, sizeof dir, "%s/refs", c->root);
    DIR *d = opendir(dir);
    if (!d) return pf_fail(err, "cache: %s: %s", dir, strerror(errno));
    pf_redis_index *r = pf_cache_redis(c);
    pf_cache_entry *e = PF_MALLOC(sizeof *e);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!pf_sha256_hex_valid(de->d_name)) continue;
        memset(e, 0, sizeof *e);
        if (!pf_cache_ref_read(c, de->d_name, e->digest, &e->size, e->url, sizeof e->url)) continue;
        char blob[PF_CACHE_PATH];
        pf_cache_blob_path(blob, sizeof blob, c, e->digest);
        struct stat st;
        int present = !lstat(blob, &st) && S_ISREG(st.st_mode) && (uint64_t)st.st_size == e->size;
        e->state = present ? "ready" : "missing";
        if (present) {
            e->last_use_ms = (long long)st.st_atim.tv_sec * 1000 + st.st_atim.tv_nsec / 1000000;
            long long when;
            pf_error re = {0};
            int known = r ? pf_redis_lru_get(r, e->digest, &when, &re) : 0;
            if (known < 0) {
                pf_cache_redis_failed(c, &re);
                r = NULL;
            } else if (known) {
                e->last_use_ms = when;
            }
            e->pinned = locked_by_other(blob);
        }
        each(ctx, e);
    }
    closedir(d);
    /* downloads in progress, or partial ones waiting to be resumed */
    snprintf(dir, sizeof dir, "%s/tmp", c->root);
    d = opendir(dir);
    while (d && (de = readdir(d)) != NULL) {
        size_t nl = strlen(de->d_name);
        if (nl != 64 + 5 || strcmp(de->d_name + 64, ".part")) continue;
        char key[PF_SHA256_HEX], path[PF_CACHE_PATH];
        memcpy(key, de->d_name, 64);
        key[64] = '\0';
        if (!pf_sha256_hex_valid(key)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (lstat(path, &st) || !S_ISREG(st.st_mode)) continue;
        memset(e, 0, sizeof *e);
        snprintf(e->url, sizeof e->url, "(url key %s)", key);
        pf_index_entry ent;
        int found = 0;
        pf_error re = {0};
        if (r && pf_redis_entry_get(r, key, &ent, &found, &re)) {
            pf_cache_redis_failed(c, &re);
            r = NULL;
        } else if (found == 1) {
            snprintf(e->url, sizeof e->url, "%s", ent.url);
        }
        e->size = (uint64_t)st.st_size;
        e->last_use_ms = (long long)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
        e->pinned = locked_by_other(path);
        e->state = e->pinned ? "downloading" : "partial";
        each(ctx, e);
    }
    if (d) closedir(d);
    free(e);
    return 0;
}
