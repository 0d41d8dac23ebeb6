/* scratch.c - private scratch files through mkdtemp and mkstemps (scratch.h). */
#include "scratch.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int pf_scratch_dir_create(char *out, size_t n, const char *parent, pf_error *err) {
    if ((size_t)snprintf(out, n, "%s/perflow-worker-XXXXXX", parent) >= n)
        return pf_fail(err, "work_dir %s: path too long", parent);
    if (!mkdtemp(out)) return pf_fail(err, "work_dir %s: making a private scratch directory: %s", parent, strerror(errno));
    return 0;
}

void pf_scratch_dir_remove(const char *dir) {
    if (!dir || !*dir) return;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[4096];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                unlink(path);
            }
        closedir(d);
    }
    rmdir(dir);
}

int pf_scratch_file(char *out, size_t n, const char *dir, const char *tag, const char *suffix, pf_error *err) {
    if ((size_t)snprintf(out, n, "%s/%.60s-XXXXXX%s", dir, tag, suffix) >= n)
        return pf_fail(err, "scratch file in %s: path too long", dir);
    int fd = mkstemps(out, (int)strlen(suffix));
    if (fd < 0) return pf_fail(err, "scratch file in %s: %s", dir, strerror(errno));
    close(fd);
    return 0;
}
