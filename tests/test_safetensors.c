/* test_safetensors.c - the safetensors reader against files written by the
 * Python library, the writer by round trip, and the reader against every
 * malformed file of tests/data/safetensors/cases.tsv
 * (re-run tests/reference/make_safetensors_cases.py to regenerate them). */
#include "test_util.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include "safetensors.h"

#define CASES_VERSION "1"
#define REGEN "re-run tests/reference/make_safetensors_cases.py"

static const pf_st_tensor *find(const pf_safetensors *st, const char *name, pf_st_dtype dt, int ndim,
                                const int64_t *shape) {
    const pf_st_tensor *t = pf_st_find(st, name);
    if (!t) fail_msg("tensor %s not found", name);
    assert_string_equal(t->name, name);
    assert_int_equal(t->dtype, dt);
    assert_int_equal(t->ndim, ndim);
    for (int i = 0; i < ndim; i++) assert_int_equal(t->shape[i], shape[i]);
    return t;
}

static void expect_values(const pf_safetensors *st, const pf_st_tensor *t, const float *want, size_t n) {
    assert_int_equal(pf_st_numel(t), (int64_t)n);
    float got[8];
    pf_error err = {0};
    assert_int_equal(pf_st_read_f32(st, t, got, &err), 0);
    pf_assert_close(t->name, got, want, n, 0, 0);
}

static void test_valid_from_python(void **state) {
    (void)state;
    const char *rel = "tests/data/safetensors/valid.safetensors", *path = pf_test_path(rel);
    pf_safetensors *st = pf_golden_open_version(rel, CASES_VERSION, REGEN);
    pf_error err = {0};
    assert_string_equal(pf_st_meta(st, "format"), "perflow-cases");
    assert_null(pf_st_meta(st, "absent"));
    assert_int_equal(st->meta_count, 3);

    assert_int_equal(st->count, 6);
    for (int i = 1; i < st->count; i++) assert_true(strcmp(st->tensors[i - 1].name, st->tensors[i].name) < 0);
    assert_null(pf_st_find(st, "a"));
    assert_null(pf_st_find(st, "zzz"));

    const float a[] = {0.5f, -1.25f, 3.0f, 1e-3f, 65504.0f, -0.0f};
    expect_values(st, find(st, "a.weight", PF_ST_F32, 2, (int64_t[]){2, 3}), a, 6);
    const float b[] = {1.0f, -2.5f, 0.375f, 65504.0f};
    expect_values(st, find(st, "b.f16", PF_ST_F16, 1, (int64_t[]){4}), b, 4);
    const float c[] = {1.0f, -3.0f, 0.15625f, 256.0f};
    expect_values(st, find(st, "c.bf16", PF_ST_BF16, 2, (int64_t[]){2, 2}), c, 4);
    const float d[] = {7.25f};
    expect_values(st, find(st, "d.scalar", PF_ST_F32, 0, NULL), d, 1);
    expect_values(st, find(st, "f.empty", PF_ST_F32, 2, (int64_t[]){0, 3}), NULL, 0);

    /* Known but not a float dtype: opens fine, refuses conversion by name. */
    const pf_st_tensor *e = find(st, "e.ids", PF_ST_I64, 1, (int64_t[]){3});
    assert_int_equal(e->end - e->begin, 24);
    float got[3];
    assert_int_equal(pf_st_read_f32(st, e, got, &err), -1);
    assert_non_null(strstr(err.msg, "tensor \"e.ids\" has dtype I64"));
    assert_non_null(strstr(err.msg, path));
    int64_t ids[3];
    memcpy(ids, st->data + e->begin, sizeof ids);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], -2);
    assert_int_equal(ids[2], (int64_t)1 << 40);
    pf_st_close(st);
}

static void test_valid_unaligned(void **state) {
    (void)state;
    pf_safetensors *st =
        pf_golden_open_version("tests/data/safetensors/valid_unaligned.safetensors", CASES_VERSION, REGEN);
    pf_error err = {0};
    const pf_st_tensor *h = find(st, "h", PF_ST_F16, 1, (int64_t[]){3});
    assert_int_equal((uintptr_t)(st->data + h->begin) & 1, 1); /* the point of this file */
    expect_values(st, h, (const float[]){1.5f, -0.25f, 8.0f}, 3);
    expect_values(st, find(st, "b", PF_ST_BF16, 1, (int64_t[]){2}), (const float[]){-6.0f, 0.5f}, 2);
    const pf_st_tensor *u = find(st, "u", PF_ST_U8, 1, (int64_t[]){1});
    assert_int_equal(st->data[u->begin], 0x2a);
    assert_int_equal(pf_st_read_f32(st, u, (float[1]){0}, &err), -1);
    assert_non_null(strstr(err.msg, "has dtype U8"));
    pf_st_close(st);
}

static void test_malformed(void **state) {
    (void)state;
    const char *manifest = pf_test_path("tests/data/safetensors/cases.tsv");
    FILE *f = fopen(manifest, "r");
    if (!f) fail_msg("cannot open %s: %s", manifest, REGEN);
    char line[1024];
    if (!fgets(line, sizeof line, f) || !strstr(line, "cases version " CASES_VERSION ":"))
        fail_msg("%s: not version %s: %s", manifest, CASES_VERSION, REGEN);
    int cases = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *tab = strchr(line, '\t');
        assert_non_null(tab);
        *tab = '\0';
        const char *file = line, *phrase = tab + 1;
        char rel[512];
        snprintf(rel, sizeof rel, "tests/data/safetensors/%s", file);
        const char *path = pf_test_path(rel);

        pf_safetensors *st = (pf_safetensors *)1;
        pf_error err = {0};
        int rc = pf_st_open(&st, path, &err);
        /* Messages start with the file's name, hold the phrase and stay on one line. */
        int ok = rc == -1 && st == NULL && strncmp(err.msg, path, strlen(path)) == 0 &&
                 strstr(err.msg, phrase) && !strchr(err.msg, '\n');
        if (!ok) {
            print_error("%s: want an error containing '%s', got rc %d: %s\n", file, phrase, rc, err.msg);
            bad++;
        }

        /* The same image from memory names itself as told. */
        size_t n;
        char *buf = pf_read_file(path, &n);
        pf_error err2 = {0};
        rc = pf_st_parse(&st, (const uint8_t *)buf, n, "memory", &err2);
        if (rc != -1 || st != NULL || strncmp(err2.msg, "memory: ", 8) || !strstr(err2.msg, phrase)) {
            print_error("%s from memory: want '%s', got rc %d: %s\n", file, phrase, rc, err2.msg);
            bad++;
        }
        free(buf);
        cases++;
    }
    fclose(f);
    printf("%d malformed files checked\n", cases);
    assert_true(cases >= 12);
    assert_int_equal(bad, 0);
}

/* Every proper prefix of a valid file fails cleanly (its data ends the file). */
static void test_truncations(void **state) {
    (void)state;
    size_t n;
    char *buf = pf_read_file(pf_test_path("tests/data/safetensors/valid.safetensors"), &n);
    for (size_t len = 0; len < n; len++) {
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, buf, len);
        pf_safetensors *st;
        pf_error err = {0};
        assert_int_equal(pf_st_parse(&st, copy, len, "cut", &err), -1);
        assert_null(st);
        assert_true(strlen(err.msg) > 5);
        free(copy);
    }
    free(buf);
}

static void test_open_errors(void **state) {
    (void)state;
    pf_safetensors *st;
    pf_error err = {0};
    assert_int_equal(pf_st_open(&st, "/nonexistent/x.safetensors", &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/x.safetensors: cannot open"));
    assert_int_equal(pf_st_open(&st, pf_test_path("tests"), &err), -1);
    assert_non_null(strstr(err.msg, "not a regular file"));
}

static void test_write_round_trip(void **state) {
    (void)state;
    enum { N32 = 5000, N16 = 10001, NB = 9000 }; /* past the writer's and reader's chunk sizes */
    float *w32 = malloc(N32 * sizeof(float)), *w16 = malloc(N16 * sizeof(float)),
          *wb = malloc(NB * sizeof(float)), *got = malloc(N16 * sizeof(float));
    for (int i = 0; i < N32; i++) w32[i] = (float)i * 0.001f - 1.0f;
    for (int i = 0; i < N16; i++) w16[i] = (float)(i % 2048) - 1024.0f; /* exact in f16 */
    for (int i = 0; i < NB; i++) wb[i] = ((float)(i % 256) - 128.0f) * 0.5f; /* exact in bf16 */
    const float scalar = 3.5f;
    const pf_st_entry entries[] = {
        {"z.f32", PF_F32, 2, (int64_t[]){50, 100}, w32},
        {"a.f16", PF_F16, 1, (int64_t[]){N16}, w16}, /* odd count: the next tensor must stay aligned */
        {"m.bf16", PF_BF16, 3, (int64_t[]){10, 30, 30}, wb},
        {"s", PF_F32, 0, NULL, &scalar},
        {"e", PF_F16, 2, (int64_t[]){0, 4}, NULL},
    };
    const char *meta[] = {"format", "pt", "note", "d\xc3\xa9j\xc3\xa0 vu", NULL};
    char *dir = pf_temp_dir(), path[4096];
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    pf_error err = {0};
    for (int pass = 0; pass < 2; pass++) /* the second pass replaces the file */
        if (pf_st_write(path, entries, 5, meta, &err)) fail_msg("%s", err.msg);
    assert_int_equal(access(pf_pathf("%s.tmp", path), F_OK), -1);

    pf_safetensors *st;
    if (pf_st_open(&st, path, &err)) fail_msg("%s", err.msg);
    assert_int_equal((st->data - st->map) % 8, 0);
    assert_string_equal(pf_st_meta(st, "note"), "d\xc3\xa9j\xc3\xa0 vu");
    assert_int_equal(st->count, 5);
    assert_int_equal(st->data_size, N32 * 4 + N16 * 2 + NB * 2 + 4);
    for (int i = 0; i < st->count; i++)
        assert_int_equal(st->tensors[i].begin % (st->tensors[i].dtype == PF_ST_F32 ? 4 : 2), 0);

    const pf_st_tensor *t = find(st, "z.f32", PF_ST_F32, 2, (int64_t[]){50, 100});
    assert_int_equal(pf_st_read_f32(st, t, got, &err), 0);
    pf_assert_close("z.f32", got, w32, N32, 0, 0);
    t = find(st, "a.f16", PF_ST_F16, 1, (int64_t[]){N16});
    assert_int_equal(pf_st_read_f32(st, t, got, &err), 0);
    pf_assert_close("a.f16", got, w16, N16, 0, 0);
    t = find(st, "m.bf16", PF_ST_BF16, 3, (int64_t[]){10, 30, 30});
    assert_int_equal(pf_st_read_f32(st, t, got, &err), 0);
    pf_assert_close("m.bf16", got, wb, NB, 0, 0);
    t = find(st, "s", PF_ST_F32, 0, NULL);
    assert_int_equal(pf_st_read_f32(st, t, got, &err), 0);
    assert_true(got[0] == scalar);
    t = find(st, "e", PF_ST_F16, 2, (int64_t[]){0, 4});
    assert_int_equal(t->end, t->begin);
    pf_st_close(st);

    /* f16 rounds to nearest even on the way out. */
    const float in[] = {0.1f, 1.0f / 3.0f};
    snprintf(path, sizeof path, "%s/round.safetensors", dir);
    if (pf_st_write(path, &(pf_st_entry){"r", PF_F16, 1, (int64_t[]){2}, in}, 1, NULL, &err))
        fail_msg("%s", err.msg);
    if (pf_st_open(&st, path, &err)) fail_msg("%s", err.msg);
    assert_int_equal(st->meta_count, 0);
    assert_int_equal(pf_st_read_f32(st, pf_st_find(st, "r"), got, &err), 0);
    assert_true(got[0] == pf_f16_to_f32(pf_f32_to_f16(0.1f)));
    assert_true(got[1] == pf_f16_to_f32(pf_f32_to_f16(1.0f / 3.0f)));
    pf_st_close(st);
    free(w32);
    free(w16);
    free(wb);
    free(got);
    pf_temp_dir_remove(dir);
}

static void test_write_errors(void **state) {
    (void)state;
    const float x[2] = {1, 2};
    pf_error err = {0};
    char *dir = pf_temp_dir(), path[4096];
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    const pf_st_entry dup[] = {{"a", PF_F32, 1, (int64_t[]){2}, x}, {"a", PF_F32, 1, (int64_t[]){2}, x}};
    assert_int_equal(pf_st_write(path, dup, 2, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "tensor \"a\" appears twice"));
    const pf_st_entry reserved = {"__metadata__", PF_F32, 1, (int64_t[]){2}, x};
    assert_int_equal(pf_st_write(path, &reserved, 1, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "reserved name"));
    const pf_st_entry badname = {"a\xff", PF_F32, 1, (int64_t[]){2}, x};
    assert_int_equal(pf_st_write(path, &badname, 1, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "tensor \"a\\xff\" has a name that is not valid UTF-8"));
    const pf_st_entry negative = {"n", PF_F32, 1, (int64_t[]){-2}, x};
    assert_int_equal(pf_st_write(path, &negative, 1, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "negative dimension"));
    const char *meta[] = {"k", "\xc3", NULL};
    assert_int_equal(pf_st_write(path, dup, 1, meta, &err), -1);
    assert_non_null(strstr(err.msg, "metadata \"k\""));
    assert_int_equal(access(path, F_OK), -1);

    assert_int_equal(pf_st_write("/nonexistent/dir/w.safetensors", dup, 1, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/dir/w.safetensors.tmp: cannot create"));
    /* A full disk: RLIMIT_FSIZE turns the write into EFBIG (SIGXFSZ ignored). */
    struct rlimit saved, small = {100, 100};
    getrlimit(RLIMIT_FSIZE, &saved);
    if (saved.rlim_max >= 100) {
        small.rlim_max = saved.rlim_max;
        void (*old)(int) = signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &small);
        const pf_st_entry big = {"big", PF_F32, 1, (int64_t[]){1000}, (float[1000]){0}};
        int rc = pf_st_write(path, &big, 1, NULL, &err);
        setrlimit(RLIMIT_FSIZE, &saved);
        signal(SIGXFSZ, old);
        assert_int_equal(rc, -1);
        assert_non_null(strstr(err.msg, "bad.safetensors.tmp: write failed: File too large"));
        assert_int_equal(access(pf_pathf("%s.tmp", path), F_OK), -1);
        assert_int_equal(access(path, F_OK), -1);
    }
    pf_temp_dir_remove(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_from_python),
        cmocka_unit_test(test_valid_unaligned),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_write_round_trip),
        cmocka_unit_test(test_write_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
