/* test_perflow_sampler.c - the PeRFlow sampler against the reference.
 *
 * shared/golden/perflow_scheduler.json was made by the reference
 * PeRFlowScheduler in float32 torch. Timesteps must match exactly. Noise table,
 * trajectories and add_noise are compared in float32 ulps with a tolerance of
 * 0: the sampler repeats the reference's float32 operations in its order, so
 * any difference means an operation or its order differs (a one-ulp slip in a
 * window coefficient shows up as several ulps a few steps later, so a loose
 * tolerance would hide exactly the mistakes this test exists to catch).
 * Config parsing is checked for defaults, aliases and clear errors. */
#include "test_util.h"

#include <jansson.h>

#include "perflow_sampler.h"

#define MAX_ULP 0 /* see the file comment */

static json_t *golden;
static float sample0[64], model_outputs[16][64];
static size_t numel;

static void floats_of(float *out, const json_t *arr, size_t n) {
    assert_int_equal(json_array_size(arr), n);
    for (size_t i = 0; i < n; i++) out[i] = (float)json_number_value(json_array_get(arr, i));
}

static int load_golden(void **state) {
    (void)state;
    const char *path = pf_shared_path("golden/perflow_scheduler.json");
    golden = pf_golden_json(path, NULL, NULL); /* shared/ is given, not regenerated */
    numel = 1;
    size_t i;
    const json_t *d;
    json_array_foreach(json_object_get(golden, "shape"), i, d) numel *= (size_t)json_integer_value(d);
    if (numel > 64 || json_array_size(json_object_get(golden, "model_outputs")) != 16) {
        print_error("%s: unexpected layout (numel %zu)\n", path, numel);
        return -1;
    }
    floats_of(sample0, json_object_get(golden, "sample0"), numel);
    for (int k = 0; k < 16; k++) floats_of(model_outputs[k], json_array_get(json_object_get(golden, "model_outputs"), k), numel);
    return 0;
}

static int free_golden(void **state) {
    (void)state;
    json_decref(golden);
    return 0;
}

/* Distance in units in the last place between two finite floats. */
static int64_t ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    int64_t la = ia < 0 ? (int64_t)INT32_MIN - ia : ia, lb = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return la > lb ? la - lb : lb - la;
}

/* Compares got with the golden numbers want; returns the largest ulp distance
 * and prints the first elements beyond max_ulp. */
static int64_t compare(const char *what, const float *got, const json_t *want, size_t n, int64_t max_ulp,
                       int *bad) {
    assert_int_equal(json_array_size(want), n);
    int64_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        float w = (float)json_number_value(json_array_get(want, i));
        int64_t u = ulps(got[i], w);
        if (u > worst) worst = u;
        if (u > max_ulp) {
            if (*bad < 8) print_error("%s[%zu]: got %.9g want %.9g (%lld ulp)\n", what, i, (double)got[i], (double)w, (long long)u);
            (*bad)++;
        }
    }
    return worst;
}

/* Initialises s for c (NULL: the default config); fails the test when init refuses. */
static void must_init(pf_perflow_sampler *s, const pf_perflow_config *c) {
    pf_perflow_config defaults;
    pf_perflow_config_default(&defaults);
    pf_error err = {0};
    if (!c) c = &defaults;
    if (pf_perflow_init(s, c, &err)) {
        print_error("pf_perflow_init: %s\n", err.msg);
        fail();
    }
}

static void test_alphas_cumprod(void **state) {
    (void)state;
    pf_perflow_sampler s;
    must_init(&s, NULL);
    int bad = 0;
    compare("alphas_cumprod_scaled_linear", s.alphas_cumprod, json_object_get(golden, "alphas_cumprod_scaled_linear"),
            (size_t)s.cfg.num_train_timesteps, MAX_ULP, &bad);
    assert_int_equal(bad, 0);
    pf_perflow_free(&s);
}

static void test_golden_cases(void **state) {
    (void)state;
    const json_t *cases = json_object_get(golden, "cases");
    assert_true(json_array_size(cases) > 0);
    int bad = 0, steps = 0;
    int64_t worst = 0;
    size_t ci;
    const json_t *cs;
    json_array_foreach(cases, ci, cs) {
        pf_error err = {0};
        pf_perflow_config c;
        pf_perflow_config_default(&c);
        c.num_time_windows = (int)json_integer_value(json_object_get(cs, "num_time_windows"));
        if (pf_perflow_parse_beta_schedule(&c.beta_schedule, json_string_value(json_object_get(cs, "beta_schedule")), &err) ||
            pf_perflow_parse_prediction(&c.prediction_type, json_string_value(json_object_get(cs, "prediction_type")), &err)) {
            print_error("case %zu: %s\n", ci, err.msg);
            fail();
        }
        int n_req = (int)json_integer_value(json_object_get(cs, "num_inference_steps"));
        char what[200];
        snprintf(what, sizeof what, "case %zu (%s, K=%d, N=%d, %s)", ci, pf_perflow_beta_schedule_name(c.beta_schedule),
                 c.num_time_windows, n_req, pf_perflow_prediction_name(c.prediction_type));

        pf_perflow_sampler s;
        must_init(&s, &c);
        if (pf_perflow_set_timesteps(&s, n_req, &err)) {
            print_error("%s: %s\n", what, err.msg);
            fail();
        }
        const json_t *ts = json_object_get(cs, "timesteps");
        assert_int_equal(s.num_steps, json_array_size(ts));
        for (int i = 0; i < s.num_steps; i++)
            if (s.timesteps[i] != json_integer_value(json_array_get(ts, i))) {
                print_error("%s: timestep %d is %lld, want %lld\n", what, i, (long long)s.timesteps[i],
                            (long long)json_integer_value(json_array_get(ts, i)));
                fail();
            }

        const json_t *traj = json_object_get(cs, "trajectory");
        assert_int_equal(json_array_size(traj), s.num_steps);
        float x[64];
        memcpy(x, sample0, numel * sizeof *x);
        for (int i = 0; i < s.num_steps; i++) {
            pf_perflow_step(&s, x, model_outputs[i % 16], s.timesteps[i], x, numel);
            char w2[240];
            snprintf(w2, sizeof w2, "%s step %d", what, i);
            int64_t u = compare(w2, x, json_array_get(traj, i), numel, MAX_ULP, &bad);
            if (u > worst) worst = u;
            steps++;
        }
        pf_perflow_free(&s);
    }
    print_message("%zu cases, %d steps, worst %lld ulp\n", json_array_size(cases), steps, (long long)worst);
    assert_int_equal(bad, 0);
}

static void test_add_noise(void **state) {
    (void)state;
    pf_perflow_sampler s;
    must_init(&s, NULL);
    const json_t *cases = json_object_get(golden, "add_noise");
    assert_true(json_array_size(cases) > 0);
    int bad = 0;
    size_t i;
    const json_t *a;
    json_array_foreach(cases, i, a) {
        float noise[64], out[64];
        floats_of(noise, json_object_get(a, "noise"), numel);
        int64_t t = json_integer_value(json_object_get(a, "t"));
        pf_perflow_add_noise(&s, out, sample0, noise, t, numel);
        char what[64];
        snprintf(what, sizeof what, "add_noise t=%lld", (long long)t);
        compare(what, out, json_object_get(a, "result"), numel, MAX_ULP, &bad);
    }
    assert_int_equal(bad, 0);
    pf_perflow_free(&s);
}

static int parse(pf_perflow_config *c, const char *text, pf_error *err) {
    return pf_perflow_config_parse(c, text, strlen(text), "scheduler_config.json", err);
}

static void expect_parse_error(const char *text, const char *needle) {
    pf_perflow_config c;
    pf_perflow_config_default(&c);
    c.num_time_windows = 7; /* must survive a failed parse */
    pf_error err = {0};
    if (parse(&c, text, &err) == 0) {
        print_error("accepted %s\n", text);
        fail();
    }
    if (!strstr(err.msg, needle)) {
        print_error("error for %s is \"%s\", expected it to mention \"%s\"\n", text, err.msg, needle);
        fail();
    }
    assert_int_equal(c.num_time_windows, 7);
}

static int same_config(const pf_perflow_config *a, const pf_perflow_config *b) {
    return a->num_train_timesteps == b->num_train_timesteps && a->beta_start == b->beta_start &&
           a->beta_end == b->beta_end && a->beta_schedule == b->beta_schedule &&
           a->prediction_type == b->prediction_type && a->num_time_windows == b->num_time_windows &&
           a->t_noise == b->t_noise && a->t_clean == b->t_clean;
}

static void test_config(void **state) {
    (void)state;
    pf_error err = {0};
    pf_perflow_config c, d;
    pf_perflow_config_default(&d);

    memset(&c, 0, sizeof c);
    assert_int_equal(parse(&c, "{}", &err), 0);
    assert_true(same_config(&c, &d));

    /* A released PeRFlow SD-1.5 scheduler config, with keys the sampler ignores. */
    const char *real = "{\"_class_name\": \"PeRFlowScheduler\", \"_diffusers_version\": \"0.25.0\","
                       " \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
                       " \"num_time_windows\": 4, \"num_train_timesteps\": 1000, \"prediction_type\": \"diff_eps\","
                       " \"set_alpha_to_one\": false, \"t_clean\": 0, \"t_noise\": 1, \"trained_betas\": null}";
    assert_int_equal(parse(&c, real, &err), 0);
    assert_int_equal(c.prediction_type, PF_PRED_DIFF_EPS);
    assert_int_equal(c.num_time_windows, 4);
    assert_int_equal(c.num_train_timesteps, 1000);

    assert_int_equal(parse(&c, "{\"prediction_type\": \"epsilon\", \"num_time_windows\": 2.0}", &err), 0);
    assert_int_equal(c.prediction_type, PF_PRED_DIFF_EPS);
    assert_int_equal(c.num_time_windows, 2);
    assert_int_equal(parse(&c, "{\"beta_schedule\": \"squaredcos_cap_v2\", \"prediction_type\": \"velocity\"}", &err), 0);
    assert_int_equal(c.beta_schedule, PF_BETA_SQUAREDCOS_CAP_V2);
    assert_int_equal(c.prediction_type, PF_PRED_VELOCITY);

    expect_parse_error("{\"num_time_windows\": 0}", "num_time_windows 0");
    expect_parse_error("{\"num_time_windows\": -3}", "num_time_windows");
    expect_parse_error("{\"num_time_windows\": 1001}", "num_time_windows 1001");
    expect_parse_error("{\"num_time_windows\": 2.5}", "num_time_windows must be an integer");
    expect_parse_error("{\"num_train_timesteps\": 0}", "num_train_timesteps 0");
    expect_parse_error("{\"beta_schedule\": \"cosine\"}", "unknown beta_schedule \"cosine\"");
    expect_parse_error("{\"beta_schedule\": 3}", "beta_schedule must be a string");
    expect_parse_error("{\"prediction_type\": \"v_prediction\"}", "unknown prediction_type \"v_prediction\"");
    expect_parse_error("{\"beta_end\": 1.5}", "beta_end");
    expect_parse_error("{\"beta_start\": \"small\"}", "beta_start must be a number");
    expect_parse_error("{\"t_clean\": 0.5}", "t_clean");
    expect_parse_error("{\"t_noise\": 0}", "t_noise");
    expect_parse_error("{\"trained_betas\": [0.1, 0.2]}", "trained_betas");
    expect_parse_error("[1, 2]", "JSON object");
    expect_parse_error("{\"num_time_windows\": 4,", "not valid JSON");

    /* from a file, and a missing file */
    char *dir = pf_temp_dir();
    const char *path = pf_temp_write(dir, "scheduler_config.json", real, strlen(real));
    pf_perflow_config_default(&c);
    assert_int_equal(pf_perflow_config_load(&c, path, &err), 0);
    assert_int_equal(c.prediction_type, PF_PRED_DIFF_EPS);
    pf_temp_dir_remove(dir);
    assert_int_equal(pf_perflow_config_load(&c, "/nonexistent/scheduler_config.json", &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/scheduler_config.json"));

    /* a struct filled by hand is checked by init too */
    pf_perflow_sampler s;
    c = d;
    c.num_time_windows = 0;
    assert_int_equal(pf_perflow_init(&s, &c, &err), -1);
    assert_null(s.alphas_cumprod);
    pf_perflow_free(&s);
}

static void test_timesteps(void **state) {
    (void)state;
    pf_error err = {0};
    pf_perflow_sampler s;
    must_init(&s, NULL);
    assert_int_equal(pf_perflow_set_timesteps(&s, 0, &err), -1);
    assert_non_null(strstr(err.msg, "num_inference_steps 0"));
    assert_null(s.timesteps);
    assert_int_equal(pf_perflow_set_timesteps(&s, 6, &err), 0);
    const int64_t want6[] = {1000, 875, 750, 625, 500, 250};
    assert_int_equal(s.num_steps, 6);
    assert_memory_equal(s.timesteps, want6, sizeof want6);
    /* the old timesteps survive a failed call */
    assert_int_equal(pf_perflow_set_timesteps(&s, -1, &err), -1);
    assert_int_equal(s.num_steps, 6);
    /* so many steps that a timestep truncates to 0 or repeats: refused */
    assert_int_equal(pf_perflow_set_timesteps(&s, 5000, &err), -1);
    assert_non_null(strstr(err.msg, "too many"));
    assert_int_equal(pf_perflow_set_timesteps(&s, 200, &err), 0);

    /* img2img: diffusers' get_timesteps on the requested count */
    int first = -1;
    assert_int_equal(pf_perflow_set_timesteps(&s, 4, &err), 0);
    assert_int_equal(pf_perflow_img2img_first(&s, &first, 4, 1.0, &err), 0);
    assert_int_equal(first, 0);
    assert_int_equal(pf_perflow_img2img_first(&s, &first, 4, 0.5, &err), 0);
    assert_int_equal(first, 2);
    assert_int_equal(pf_perflow_img2img_first(&s, &first, 4, 0.2, &err), 0);
    assert_int_equal(first, 4); /* nothing left to run */
    assert_int_equal(pf_perflow_set_timesteps(&s, 2, &err), 0); /* raised to K = 4 */
    assert_int_equal(s.num_steps, 4);
    assert_int_equal(pf_perflow_img2img_first(&s, &first, 2, 0.5, &err), 0);
    assert_int_equal(first, 1);
    assert_int_equal(pf_perflow_img2img_first(&s, &first, 4, 0.0, &err), -1);
    assert_int_equal(pf_perflow_img2img_first(&s, &first, 4, 1.5, &err), -1);
    pf_perflow_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alphas_cumprod), cmocka_unit_test(test_golden_cases), cmocka_unit_test(test_add_noise),
        cmocka_unit_test(test_config),         cmocka_unit_test(test_timesteps),
    };
    return cmocka_run_group_tests(tests, load_golden, free_golden);
}
