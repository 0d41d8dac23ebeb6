/* test_rng.c - pf_rng against torch.randn, bit for bit.
 *
 * tests/data/rng_goldens.json (written by tests/reference/make_rng_goldens.py)
 * holds raw random64 draws and sequences of torch.randn draws from seeded CPU
 * generators, for both of torch's float normal_ kernels, as float32 bit
 * patterns. Every value must be identical: a diffusers image is only
 * reproducible from its seed if the latents are. */
#include "test_util.h"

#include <inttypes.h>
#include <jansson.h>

#include "rng.h"

#define GOLDEN_VERSION "1"
#define HINT "re-run tests/reference/make_rng_goldens.py with the reference venv"

static json_t *golden;

static int load_golden(void **state) {
    (void)state;
    golden = pf_golden_json(pf_test_path("tests/data/rng_goldens.json"), GOLDEN_VERSION, HINT);
    return 0;
}

static int free_golden(void **state) {
    (void)state;
    json_decref(golden);
    return 0;
}

static uint64_t seed_of(const json_t *c) {
    const char *s = json_string_value(json_object_get(c, "seed"));
    assert_non_null(s);
    return strtoull(s, NULL, 10);
}

static uint64_t hex64(const json_t *v) {
    const char *s = json_string_value(v);
    assert_non_null(s);
    return strtoull(s, NULL, 16);
}

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Compares got[0..len) with the hex bit patterns in want; returns the number of
 * mismatches, printing the first few. */
static int compare_bits(const char *what, const float *got, const json_t *want, size_t offset) {
    int bad = 0;
    size_t len = json_array_size(want);
    for (size_t i = 0; i < len; i++) {
        uint32_t w = (uint32_t)hex64(json_array_get(want, i));
        if (f2u(got[i]) != w) {
            if (bad < 5) {
                float wf;
                memcpy(&wf, &w, sizeof wf);
                print_error("%s: element %zu: got %08" PRIx32 " (%.9g) want %08" PRIx32 " (%.9g)\n", what,
                            offset + i, f2u(got[i]), (double)got[i], w, (double)wf);
            }
            bad++;
        }
    }
    return bad;
}

static void test_raw_draws(void **state) {
    (void)state;
    const json_t *raw = json_object_get(golden, "raw");
    assert_true(json_array_size(raw) > 0);
    size_t i;
    const json_t *c;
    json_array_foreach(raw, i, c) {
        pf_rng g;
        pf_rng_seed(&g, seed_of(c));
        const json_t *want = json_object_get(c, "random64_mod_2_63");
        assert_true(json_array_size(want) > 312); /* crosses the first twist */
        for (size_t k = 0; k < json_array_size(want); k++) {
            uint64_t got = pf_rng_random64(&g) & INT64_MAX;
            if (got != hex64(json_array_get(want, k))) {
                print_error("seed %" PRIu64 ": random64 #%zu: got %016" PRIx64 " want %016" PRIx64 "\n",
                            seed_of(c), k, got, hex64(json_array_get(want, k)));
                fail();
            }
        }
    }
}

static void check_kernel(const char *name, pf_rng_kernel kernel) {
    const json_t *cases = json_object_get(json_object_get(json_object_get(golden, "kernels"), name), "cases");
    assert_true(json_array_size(cases) > 0);
    int bad = 0, values = 0;
    size_t ci;
    const json_t *c;
    json_array_foreach(cases, ci, c) {
        pf_rng g;
        pf_rng_seed(&g, seed_of(c));
        pf_rng_set_kernel(&g, kernel);
        size_t di;
        const json_t *d;
        json_array_foreach(json_object_get(c, "draws"), di, d) {
            size_t n = (size_t)json_integer_value(json_object_get(d, "numel"));
            float *out = malloc(n * sizeof *out);
            assert_non_null(out);
            pf_rng_randn(&g, out, n);
            char what[160];
            snprintf(what, sizeof what, "%s kernel, seed %" PRIu64 ", draw %zu (numel %zu)", name, seed_of(c), di, n);
            const json_t *all = json_object_get(d, "values");
            if (all) {
                assert_int_equal(json_array_size(all), n);
                bad += compare_bits(what, out, all, 0);
                values += (int)n;
            } else {
                const json_t *first = json_object_get(d, "first"), *last = json_object_get(d, "last");
                size_t nl = json_array_size(last);
                assert_true(json_array_size(first) <= n && nl <= n);
                bad += compare_bits(what, out, first, 0);
                bad += compare_bits(what, out + n - nl, last, n - nl);
                values += (int)(json_array_size(first) + nl);
            }
            free(out);
        }
    }
    if (bad) {
        print_error("%s kernel: %d of %d values differ from torch\n", name, bad, values);
        fail();
    }
}

static void test_randn_x86_kernel(void **state) {
    (void)state;
    check_kernel("x86", PF_RNG_TORCH_X86);
}

static void test_randn_generic_kernel(void **state) {
    (void)state;
    check_kernel("generic", PF_RNG_TORCH_GENERIC);
}

/* torch's engine takes only the low 32 bits of the seed; reseeding restarts the
 * stream and drops the cached normal. */
static void test_seeding(void **state) {
    (void)state;
    pf_rng a, b;
    pf_rng_seed(&a, 5);
    pf_rng_seed(&b, (UINT64_C(1) << 32) + 5);
    for (int i = 0; i < 1000; i++) assert_int_equal(pf_rng_random(&a), pf_rng_random(&b));
    assert_int_equal(b.seed, (UINT64_C(1) << 32) + 5);

    float x[3], y[3];
    pf_rng_seed(&a, 42);
    pf_rng_randn(&a, x, 3); /* leaves a cached normal behind */
    pf_rng_seed(&a, 42);
    pf_rng_randn(&a, y, 3);
    assert_memory_equal(x, y, sizeof x);

    /* MT19937 reference value: the 10000th output for init_genrand(5489) is 4123659995. */
    pf_rng_seed(&a, 5489);
    uint32_t r = 0;
    for (int i = 0; i < 10000; i++) r = pf_rng_random(&a);
    assert_int_equal(r, 4123659995u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_draws),
        cmocka_unit_test(test_randn_x86_kernel),
        cmocka_unit_test(test_randn_generic_kernel),
        cmocka_unit_test(test_seeding),
    };
    return cmocka_run_group_tests(tests, load_golden, free_golden);
}
