/* test_util.h - shared helpers for the cmocka tests: paths, tolerances, golden
 * files and scratch folders.
 *
 * Tests find the repository root by the PERFLOW_ROOT environment variable
 * (tests/run_tests.sh sets it) or the current directory, and shared/ at
 * $PERFLOW_SHARED or ../shared from the root.
 *
 * Every helper that can meet a missing or malformed file fails the running test
 * with a message saying which file and how to regenerate it; none returns an
 * error, so a test reads as the list of what it checks. */
#ifndef PF_TEST_UTIL_H
#define PF_TEST_UTIL_H

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "backend.h"
#include "safetensors.h"

/* The goldens of tests/reference/make_goldens.py (safetensors and pipelines.json). */
#define PF_GOLDEN_VERSION "1"
#define PF_GOLDEN_HINT "re-run tests/reference/make_goldens.py"

/* ------------------------------------------------------------------ paths */

/* printf into the next of 8 static buffers, so that a few results (a model
 * path and its delta, say) can be alive at once. Longer results are cut. */
__attribute__((format(printf, 1, 2))) static inline const char *pf_pathf(const char *fmt, ...) {
    static char bufs[8][4096];
    static unsigned which;
    char *b = bufs[which++ & 7];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof bufs[0], fmt, ap);
    va_end(ap);
    return b;
}

/* Path under the repository root (a pf_pathf buffer). */
static inline const char *pf_test_path(const char *rel) {
    const char *root = getenv("PERFLOW_ROOT");
    return pf_pathf("%s/%s", root && *root ? root : ".", rel);
}

/* Path under shared/ (a pf_pathf buffer). */
static inline const char *pf_shared_path(const char *rel) {
    const char *shared = getenv("PERFLOW_SHARED");
    if (shared && *shared) return pf_pathf("%s/%s", shared, rel);
    return pf_test_path(pf_pathf("../shared/%s", rel));
}

/* ------------------------------------------------------------------ comparing */

/* Compares got against want elementwise with |got - want| <= atol + rtol |want|.
 * Prints the first mismatches and the max abs error; fails the test on mismatch. */
static inline void pf_assert_close(const char *what, const float *got, const float *want, size_t n,
                                   double atol, double rtol) {
    size_t bad = 0;
    double maxerr = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)want[i]);
        if (!(e <= maxerr)) maxerr = e; /* NaN-propagating */
        if (!(e <= atol + rtol * fabs((double)want[i]))) {
            if (bad < 5)
                print_error("%s: mismatch at %zu: got %.9g want %.9g (err %.3g)\n", what, i,
                            (double)got[i], (double)want[i], e);
            bad++;
        }
    }
    if (bad) {
        print_error("%s: %zu of %zu elements out of tolerance (atol %g rtol %g), max abs err %.3g\n",
                    what, bad, n, atol, rtol, maxerr);
        fail();
    }
}

/* pf_assert_close for two tensors of any backends, which must have the same shape. */
static inline void pf_assert_tensor_close(const char *what, const pf_tensor *got, const pf_tensor *want,
                                          double atol, double rtol) {
    assert_true(pf_same_shape(got, want));
    size_t n = (size_t)pf_numel(got);
    float *g = malloc(n * sizeof *g), *w = malloc(n * sizeof *w);
    pf_to_host(g, got);
    pf_to_host(w, want);
    pf_assert_close(what, g, w, n, atol, rtol);
    free(g);
    free(w);
}

/* ------------------------------------------------------------------ golden files */

/* Opens the safetensors file at rel (under the root) and checks that its
 * "version" metadata is version. Fails the test, naming hint (how to regenerate
 * the file), when the file is missing, malformed or of another version. Close
 * the result with pf_st_close. */
static inline pf_safetensors *pf_golden_open_version(const char *rel, const char *version, const char *hint) {
    pf_safetensors *st;
    pf_error err;
    if (pf_st_open(&st, pf_test_path(rel), &err)) fail_msg("%s (%s)", err.msg, hint);
    const char *v = pf_st_meta(st, "version");
    if (!v || strcmp(v, version))
        fail_msg("%s: golden version %s, tests expect %s: %s", rel, v ? v : "(none)", version, hint);
    return st;
}

/* A golden of tests/reference/make_goldens.py: pf_golden_open_version with its version and hint. */
static inline pf_safetensors *pf_golden_open(const char *rel) {
    return pf_golden_open_version(rel, PF_GOLDEN_VERSION, PF_GOLDEN_HINT);
}

/* Golden tensor `name` of st as new float32 host memory (free it); its element
 * count goes to *numel unless numel is NULL. Fails the test when st lacks name or
 * it is not a float tensor. */
static inline float *pf_golden_floats(const pf_safetensors *st, const char *name, int64_t *numel) {
    const pf_st_tensor *t = pf_st_find(st, name);
    if (!t) {
        const char *generator = pf_st_meta(st, "generator");
        fail_msg("golden %s lacks %s: re-run %s", st->path, name, generator ? generator : "its generator");
    }
    float *buf = malloc((size_t)pf_st_numel(t) * sizeof(float) + 1); /* + 1: never malloc(0) */
    pf_error err;
    if (pf_st_read_f32(st, t, buf, &err)) fail_msg("%s", err.msg);
    if (numel) *numel = pf_st_numel(t);
    return buf;
}

/* Golden tensor `name` of st as a new tensor on be, with its stored shape
 * (pf_free it). Fails the test like pf_golden_floats. */
static inline pf_tensor *pf_golden_tensor(pf_backend *be, const pf_safetensors *st, const char *name) {
    float *buf = pf_golden_floats(st, name, NULL);
    const pf_st_tensor *t = pf_st_find(st, name);
    pf_tensor *x = pf_from_host(be, t->ndim, t->shape, buf);
    free(buf);
    return x;
}

/* Loads the JSON file at path (json_decref it). When version is not NULL the
 * file's "version" (a string, or an integer compared as its decimal digits) must
 * equal it. Fails the test on an unreadable file or another version, naming
 * hint (how to regenerate the file; NULL when it cannot be). */
static inline json_t *pf_golden_json(const char *path, const char *version, const char *hint) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        char where[32] = "";
        if (je.line > 0) snprintf(where, sizeof where, ":%d", je.line);
        fail_msg("cannot read %s%s: %s%s%s", path, where, je.text, hint ? ": " : "", hint ? hint : "");
    }
    if (version) {
        const json_t *v = json_object_get(root, "version");
        char have[32] = "(none)";
        if (json_is_string(v)) snprintf(have, sizeof have, "%s", json_string_value(v));
        if (json_is_integer(v)) snprintf(have, sizeof have, "%lld", (long long)json_integer_value(v));
        if (strcmp(have, version))
            fail_msg("%s has version %s, this test expects %s: %s", path, have, version, hint ? hint : "");
    }
    return root;
}

/* ------------------------------------------------------------------ scratch files */

/* The whole file at path as new memory with a NUL appended (free it); its size
 * goes to *size unless size is NULL. Fails the test when it cannot be read. */
static inline char *pf_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n + 1);
    assert_int_equal(fread(buf, 1, n, f), n);
    fclose(f);
    buf[n] = 0;
    if (size) *size = n;
    return buf;
}

/* A new private folder /tmp/pf_<test binary>.XXXXXX; returns its path (free it
 * with pf_temp_dir_remove). Fails the test when it cannot be made. */
static inline char *pf_temp_dir(void) {
    char *dir = malloc(4096);
    snprintf(dir, 4096, "/tmp/pf_%s.XXXXXX", program_invocation_short_name);
    if (!mkdtemp(dir)) fail_msg("mkdtemp %s: %s", dir, strerror(errno));
    return dir;
}

static inline int pf_remove_entry_(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb, (void)type, (void)ftw;
    return remove(path);
}

/* Removes dir and everything in it (links are removed, not followed), then frees
 * dir; NULL is a no-op. A failure is printed, not fatal: it only leaves litter. */
static inline void pf_temp_dir_remove(char *dir) {
    if (!dir) return;
    if (nftw(dir, pf_remove_entry_, 16, FTW_DEPTH | FTW_PHYS)) print_error("could not remove %s\n", dir);
    free(dir);
}

/* Writes the n bytes at data to dir/name (replacing it) and returns that path
 * (a pf_pathf buffer). Fails the test when it cannot. */
static inline const char *pf_temp_write(const char *dir, const char *name, const void *data, size_t n) {
    const char *path = pf_pathf("%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot write %s: %s", path, strerror(errno));
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return path;
}

#endif
