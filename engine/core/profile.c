/* profile.c - time per backend op (profile.h). */
#include "profile.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_BUCKETS 64

static struct bucket {
    const char *op;
    double seconds;
    long calls;
} g_buckets[MAX_BUCKETS];
static int g_n;
static int g_enabled = -1; /* -1: not read yet */

int pf_profile_enabled(void) {
    if (g_enabled < 0) {
        const char *e = getenv("PERFLOW_PROFILE");
        g_enabled = e && !strcmp(e, "1");
    }
    return g_enabled;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double pf_profile_begin(pf_backend *be) {
    if (!pf_profile_enabled()) return 0;
    pf_synchronize(be);
    return now();
}

void pf_profile_end(pf_backend *be, const char *op, double t0) {
    if (t0 == 0) return;
    pf_synchronize(be);
    const double dt = now() - t0;
    int i = 0;
    while (i < g_n && strcmp(g_buckets[i].op, op)) i++;
    if (i == g_n) {
        if (g_n == MAX_BUCKETS) return; /* more op kinds than buckets: a bug in the callers' names */
        g_buckets[g_n++].op = op;
    }
    g_buckets[i].seconds += dt;
    g_buckets[i].calls++;
}

void pf_profile_reset(void) {
    memset(g_buckets, 0, sizeof g_buckets);
    g_n = 0;
}

static int by_time(const void *a, const void *b) {
    const double x = ((const struct bucket *)a)->seconds, y = ((const struct bucket *)b)->seconds;
    return (x < y) - (x > y);
}

void pf_profile_json(FILE *f) {
    struct bucket sorted[MAX_BUCKETS];
    memcpy(sorted, g_buckets, sizeof sorted);
    qsort(sorted, (size_t)g_n, sizeof *sorted, by_time);
    fputc('{', f);
    for (int i = 0; i < g_n; i++)
        fprintf(f, "%s\"%s\": {\"seconds\": %.6f, \"calls\": %ld}", i ? ", " : "", sorted[i].op, sorted[i].seconds,
                sorted[i].calls);
    fputc('}', f);
}
