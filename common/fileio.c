/* fileio.c - writing files whole (fileio.h). */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int pf_write_all(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int pf_fsync_rename(int fd, const char *tmp, const char *path, pf_error *err) {
    if (fsync(fd) < 0) return pf_fail(err, "%s: write failed: %s", tmp, strerror(errno));
    if (rename(tmp, path) < 0) return pf_fail(err, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    return 0;
}

static size_t text_limit = PF_TEXT_LIMIT_DEFAULT;
static pthread_once_t text_limit_once = PTHREAD_ONCE_INIT;

static void text_limit_init(void) {
    const char *v = getenv("PERFLOW_MAX_JSON_BYTES");
    if (!v || !*v) return;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!errno && !*end && x >= 4096) text_limit = (size_t)x; /* a malformed value keeps the default */
}

size_t pf_text_limit(void) {
    pthread_once(&text_limit_once, text_limit_init);
    return text_limit;
}

int pf_read_whole_file(uint8_t **out, size_t *len, const char *path, size_t max, int *found, pf_error *err) {
    *out = NULL;
    *len = 0;
    if (found) *found = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (found && errno == ENOENT) return 0;
        return pf_fail(err, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        close(fd);
        pf_fail(err, "%s: not a regular file of at most %zu bytes", path, max);
        return pf_error_set_kind(err, PF_ERROR_PERMANENT, NULL);
    }
    const size_t n = (size_t)st.st_size;
    uint8_t *buf = PF_MALLOC(n + 1);
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return pf_fail(err, "%s: %s", path, r ? strerror(errno) : "shorter than its size");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *out = buf;
    *len = n;
    if (found) *found = 1;
    return 0;
}

int pf_read_text_file(char **out, size_t *len, const char *path, pf_error *err) {
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pf_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return pf_fail(err, "%s: not a regular file", path);
    }
    size_t cap = pf_text_limit();
    if ((uint64_t)st.st_size > cap) {
        close(fd);
        return pf_fail(err, "%s: %lld bytes, over the %zu-byte cap on JSON and text files (PERFLOW_MAX_JSON_BYTES)",
                       path, (long long)st.st_size, cap);
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *buf = PF_MALLOC(n + 1);
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        free(buf);
        return pf_fail(err, "%s: read error", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}
