/* fileio.c - writing files whole (fileio.h). */
#include "fileio.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
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
