/* result_store.c - the content-addressed result store: a Redis index over PNG objects (result_store.h). */
#include "result_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "digest.h"
#include "redis_client.h"

struct pf_rstore {
    pf_rconn *redis;
    char prefix[128];
    char url[1024];      /* without a trailing '/' */
    long retention_s;
    const pf_s3_config *s3;
    const pf_credentials *cred;
    char work_dir[1024];
};

int pf_rstore_open(pf_rstore **out, const char *redis, const char *prefix, const char *url, long retention_s,
                   const pf_s3_config *s3, const pf_credentials *cred, const char *work_dir, pf_error *err) {
    *out = NULL;
    size_t ul = strlen(url);
    while (ul > 0 && url[ul - 1] == '/') ul--;
    if (strncmp(url, "s3://", 5) && strncmp(url, "file:///", 8))
        return pf_fail(err, "result store: the url must be s3://bucket/prefix or file:///folder, not \"%.100s\"", url);
    if (ul >= sizeof((pf_rstore *)0)->url - 80 || strlen(prefix) >= sizeof((pf_rstore *)0)->prefix ||
        strlen(work_dir) >= sizeof((pf_rstore *)0)->work_dir)
        return pf_fail(err, "result store: url, prefix or work folder too long");
    if (retention_s < 1) return pf_fail(err, "result store: the retention must be at least 1 s");
    pf_rstore *rs = PF_CALLOC(1, sizeof *rs);
    if (pf_rconn_open(&rs->redis, redis, 2000, err)) {
        free(rs);
        return pf_error_prefix(err, "result store");
    }
    snprintf(rs->prefix, sizeof rs->prefix, "%s", prefix);
    memcpy(rs->url, url, ul);
    rs->url[ul] = '\0';
    rs->retention_s = retention_s;
    rs->s3 = s3;
    rs->cred = cred;
    snprintf(rs->work_dir, sizeof rs->work_dir, "%s", work_dir);
    *out = rs;
    return 0;
}

void pf_rstore_close(pf_rstore *rs) {
    if (!rs) return;
    pf_rconn_close(rs->redis);
    free(rs);
}

int pf_rstore_object_url(char *out, size_t n, const pf_rstore *rs, const char *id, pf_error *err) {
    if (!pf_sha256_hex_valid(id)) return pf_fail(err, "result store: not an identity: \"%.70s\"", id);
    int w = snprintf(out, n, "%s/%.2s/%s.png", rs->url, id, id);
    if (w < 0 || (size_t)w >= n) return pf_fail(err, "result store: object URL too long");
    return 0;
}

/* One command with one retry when a kept connection turned out broken (a Redis restart). */
static redisReply *command(pf_rstore *rs, pf_error *err, int argc, const char **argv) {
    int broken = 0;
    redisReply *r = pf_rconn_argv(rs->redis, &broken, err, argc, argv, NULL);
    if (!r && broken) r = pf_rconn_argv(rs->redis, NULL, err, argc, argv, NULL);
    if (r && r->type == REDIS_REPLY_ERROR) {
        pf_fail(err, "result store: Redis: %.200s", r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

int pf_rstore_get(pf_rstore *rs, const char *id, uint8_t **png, size_t *len, pf_error *err) {
    *png = NULL;
    *len = 0;
    char key[256], url[1200], ttl[32];
    if (pf_rstore_object_url(url, sizeof url, rs, id, err)) return -1;
    snprintf(key, sizeof key, "%s:%s", rs->prefix, id);
    /* GETEX refreshes the retention of an identity that is still asked for */
    snprintf(ttl, sizeof ttl, "%lld", (long long)rs->retention_s * 1000);
    redisReply *r = command(rs, err, 4, (const char *[]){"GETEX", key, "PX", ttl});
    if (!r) return -1;
    char want[PF_SHA256_HEX] = "";
    unsigned long long size = 0;
    int entry = r->type == REDIS_REPLY_STRING && r->len < 100 && sscanf(r->str, "%64s %llu", want, &size) == 2 &&
                pf_sha256_hex_valid(want);
    int present = r->type == REDIS_REPLY_STRING;
    freeReplyObject(r);
    if (!entry) {
        if (present) { /* not ours: drop it so that the next put writes a good one */
            r = command(rs, err, 2, (const char *[]){"DEL", key});
            if (r) freeReplyObject(r);
        }
        return 0;
    }
    uint8_t *data;
    size_t n;
    int found;
    if (pf_s3_get(&data, &n, &found, rs->s3, rs->cred, url, PF_RSTORE_MAX_OBJECT, err))
        return pf_error_prefix(err, "result store");
    char got[PF_SHA256_HEX];
    if (found) pf_sha256_hex(got, data, n);
    if (!found || n != size || strcmp(got, want)) { /* vanished or changed: a miss, and the entry goes */
        free(data);
        r = command(rs, err, 2, (const char *[]){"DEL", key});
        if (r) freeReplyObject(r);
        return 0;
    }
    *png = data;
    *len = n;
    return 0;
}

int pf_rstore_put(pf_rstore *rs, const char *id, const uint8_t *png, size_t len, pf_error *err) {
    char key[256], url[1200], path[1200], val[100], ttl[32], sha[PF_SHA256_HEX];
    if (pf_rstore_object_url(url, sizeof url, rs, id, err)) return -1;
    snprintf(path, sizeof path, "%s/perflow-rstore-%d-%s.png", rs->work_dir, (int)getpid(), id);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return pf_fail(err, "result store: %s: %s", path, strerror(errno));
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, png + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            close(fd);
            unlink(path);
            return pf_fail(err, "result store: writing %s: %s", path, strerror(errno));
        }
        done += (size_t)w;
    }
    close(fd);
    pf_s3_result res;
    int rc = pf_s3_put_file(&res, rs->s3, rs->cred, url, path, err);
    unlink(path);
    if (rc) return pf_error_prefix(err, "result store");
    pf_sha256_hex(sha, png, len);
    snprintf(key, sizeof key, "%s:%s", rs->prefix, id);
    snprintf(val, sizeof val, "%s %zu", sha, len);
    snprintf(ttl, sizeof ttl, "%lld", (long long)rs->retention_s * 1000);
    redisReply *r = command(rs, err, 5, (const char *[]){"SET", key, val, "PX", ttl});
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}
