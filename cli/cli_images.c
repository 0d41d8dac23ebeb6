/* cli_images.c - options, progress and PNG output of generate and refine (cli_images.h). */
#include "cli_images.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "image.h"

int pf_cli_int(const char *s, const char *name, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "perflow: %s must be an integer in [%ld, %ld] (got '%s')\n", name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int pf_cli_number(const char *s, const char *name, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v)) {
        fprintf(stderr, "perflow: %s must be a number (got '%s')\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

int pf_cli_number_in(const char *s, const char *name, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "perflow: %s must be a number in [%g, %g] (got '%s')\n", name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int pf_cli_seed(const char *s, const char *name, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s || s[0] == '-' || s[0] == '+' || s[0] == ' ') {
        fprintf(stderr, "perflow: %s must be an integer in [0, 2^64) (got '%s')\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

int pf_cli_vae_tiling(const char *s, pf_vae_tiling *out) {
    pf_error err;
    if (pf_vae_tiling_parse(out, s, &err) == 0) return 0;
    fprintf(stderr, "perflow: --vae-tiling must be auto, on or off (got '%s')\n", s);
    return -1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void pf_cli_progress_init(pf_cli_progress *p, const char *stage) {
    p->tty = isatty(2);
    p->start = now();
    p->stage = stage;
}

void pf_cli_on_progress(void *user, int step, int total) {
    pf_cli_progress *ps = user;
    double el = now() - ps->start;
    if (ps->tty) {
        int filled = step * 30 / total;
        fprintf(stderr, "\r%-8s [%.*s%*s] step %d/%d %.1fs", ps->stage, filled, "==============================",
                30 - filled, "", step, total, el);
        if (step == total) fputc('\n', stderr);
    } else {
        fprintf(stderr, "%s step %d/%d %.2fs\n", ps->stage, step, total, el);
    }
}

int pf_cli_is_png_path(const char *path) {
    size_t n = strlen(path);
    return n >= 5 && !strcmp(path + n - 4, ".png");
}

int pf_cli_write_pngs(const char *out, const uint8_t *rgb, int n, int w, int h, int grid, const char **text,
                      pf_error *err) {
    const size_t px = (size_t)w * h * 3, olen = strlen(out);
    char index[16];
    int last = 0;
    while (text[2 * last]) last++;
    PF_CHECK(last > 0 && !strcmp(text[2 * (last - 1)], "index"));
    text[2 * last - 1] = index;
    if (n == 1 || grid) {
        int gw = w, gh = h;
        uint8_t *sheet = n > 1 ? pf_image_grid(rgb, n, w, h, &gw, &gh) : NULL;
        snprintf(index, sizeof index, "%s", n > 1 ? "grid" : "0");
        int rc = pf_png_write(out, sheet ? sheet : rgb, gw, gh, (const char *const *)text, err);
        free(sheet);
        if (rc) return -1;
        printf("%s\n", out);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%.*s-%d.png", (int)(olen - 4), out, i);
        snprintf(index, sizeof index, "%d", i);
        if (pf_png_write(path, rgb + px * i, w, h, (const char *const *)text, err)) return -1;
        printf("%s\n", path);
    }
    return 0;
}
