/* test_worker_security.c - the pure parts of the security review's fixes
 * (issue 19): the output allow lists, the worker's per-job limits, the size
 * caps of the files the engine reads, image pixel caps. The end-to-end halves
 * (a worker, real servers) are tests/worker/test_security.py and
 * tests/storage/test_fetch.py. */
#include "test_util.h"

#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "fileio.h"
#include "image.h"
#include "job.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "job_limits.h"
#include "output_key.h"
#include "worker_config.h"

/* s3_output_prefixes: folders of a bucket; with the list unset, s3:// is refused
 * naming the setting (the review: a job could overwrite the model bucket). */
static void test_output_allow_lists(void **state) {
    (void)state;
    pf_error err = {0};
    assert_int_equal(pf_output_allowed("s3://models/unet.safetensors", "", "", &err), -1);
    assert_non_null(strstr(err.msg, "s3_output_prefixes"));
    assert_int_equal(pf_output_allowed("s3://models/unet.safetensors", "", "renders", &err), -1);
    assert_non_null(strstr(err.msg, "s3_output_prefixes"));
    assert_int_equal(pf_output_allowed("s3://renders/j/0.png", "", "renders", &err), 0);
    assert_int_equal(pf_output_allowed("s3://renders/j/0.png", NULL, "models/x, renders/", &err), 0);
    assert_int_equal(pf_output_allowed("s3://renders-b/j/0.png", "", "renders", &err), -1);
    assert_int_equal(pf_output_allowed("s3://renders/out/j.png", "", "renders/out", &err), 0);
    assert_int_equal(pf_output_allowed("s3://renders/outside/j.png", "", "renders/out", &err), -1);
    assert_int_equal(pf_output_allowed("s3://renders", "", "renders", &err), -1);
    /* file:// keeps file_output_root's rule; other schemes are refused */
    assert_int_equal(pf_output_allowed("file:///srv/out/a.png", "/srv/out/", "", &err), 0);
    assert_int_equal(pf_output_allowed("file:///srv/outx/a.png", "/srv/out", "", &err), -1);
    assert_int_equal(pf_output_allowed("file:///srv/out/a.png", "", "renders", &err), -1);
    assert_non_null(strstr(err.msg, "file_output_root"));
    assert_int_equal(pf_output_allowed("gs://renders/a.png", "/srv", "renders", &err), -1);
}

/* Parses a job made of the minimal one and extra fields (a JSON fragment). */
static void parse_job(pf_job *job, const char *extra) {
    char doc[1024], field[PF_JOB_FIELD_MAX];
    pf_error err = {0};
    snprintf(doc, sizeof doc,
             "{\"job_id\": \"j-1\", \"model\": {\"base\": {\"url\": \"https://hub/m\"}}, \"prompt\": \"a cat\", "
             "\"output\": {\"url\": \"s3://b/{job_id}/{index}.png\"}%s}",
             extra);
    if (pf_job_parse(job, doc, strlen(doc), field, sizeof field, &err)) fail_msg("%s: %s", field, err.msg);
}

/* The review: per-job cost was bounded only by compile-time constants. */
static void test_job_limits(void **state) {
    (void)state;
    pf_worker_config cfg;
    pf_worker_config_defaults(&cfg);
    assert_int_equal(cfg.max_pixels, 2048 * 2048);
    assert_int_equal(cfg.max_steps, 100);
    assert_int_equal(cfg.max_images, 16);
    assert_int_equal(cfg.max_job_seconds, 3600);
    pf_error err = {0};
    assert_int_equal(pf_worker_config_set(&cfg, "max_pixels", "262144", &err), 0); /* 512 x 512 */
    assert_int_equal(pf_worker_config_set(&cfg, "max_steps", "8", &err), 0);
    assert_int_equal(pf_worker_config_set(&cfg, "max_images", "2", &err), 0);
    static const struct { const char *extra, *field, *limit; } cases[] = {
        {"", NULL, NULL},
        {", \"width\": 512, \"height\": 512, \"steps\": 8, \"num_images\": 2", NULL, NULL},
        {", \"width\": 1024, \"height\": 512", "width", "max_pixels of 262144"},
        {", \"width\": 512, \"height\": 1024", "height", "max_pixels of 262144"},
        {", \"steps\": 9", "steps", "max_steps of 8"},
        {", \"num_images\": 3", "num_images", "max_images of 2"},
        {", \"width\": 256, \"height\": 512, \"refine\": {\"controlnet\": {\"url\": \"https://hub/c\"}, "
         "\"size\": 512}", "refine.size", "max_pixels"},
        {", \"refine\": {\"controlnet\": {\"url\": \"https://hub/c\"}, \"steps\": 20}", "refine.steps", "max_steps"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pf_job job;
        char field[PF_JOB_FIELD_MAX];
        parse_job(&job, cases[i].extra);
        int rc = pf_job_limits_check(&job, &cfg, field, sizeof field, &err);
        if (!cases[i].field) {
            if (rc) fail_msg("case %zu: %s", i, err.msg);
        } else {
            assert_int_equal(rc, -1);
            assert_string_equal(field, cases[i].field);
            if (!strstr(err.msg, cases[i].limit)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, cases[i].limit);
        }
        pf_job_free(&job);
    }
}

/* The review: JSON and text files were read whole with no cap (a 50 MB
 * vocab.json took 1 GB, a 100 MiB safetensors header 2 GB). main sets
 * PERFLOW_MAX_JSON_BYTES to 64 KiB before anything reads it. */
static void test_text_file_cap(void **state) {
    (void)state;
    assert_int_equal(pf_text_limit(), 65536);
    char path[] = "/tmp/perflow-test-json-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"a\": \"", f);
    for (int i = 0; i < 70000; i++) fputc('x', f);
    fputs("\"}", f);
    fclose(f);
    pf_error err = {0};
    char *text;
    size_t len;
    assert_int_equal(pf_read_text_file(&text, &len, path, &err), -1);
    assert_non_null(strstr(err.msg, "PERFLOW_MAX_JSON_BYTES"));
    pf_config *cfg;
    assert_int_equal(pf_config_load(&cfg, path, &err), -1);
    assert_non_null(strstr(err.msg, "PERFLOW_MAX_JSON_BYTES"));
    unlink(path);
    /* CLIP's real vocab.json (1 MB) is over this test's 64 KiB cap: refused from its size */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tests/data/clip-tokenizer", getenv("PERFLOW_ROOT") ? getenv("PERFLOW_ROOT") : ".");
    pf_tokenizer *tok;
    assert_int_equal(pf_tokenizer_load(&tok, dir, &err), -1);
    if (!strstr(err.msg, "PERFLOW_MAX_JSON_BYTES")) fail_msg("%s", err.msg);
    /* a safetensors header over the cap, refused before it is parsed */
    size_t n = 8 + 100000;
    uint8_t *buf = calloc(1, n);
    uint64_t hlen = 100000;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hlen >> (8 * i));
    memset(buf + 8, ' ', hlen);
    buf[8] = '{';
    buf[n - 1] = '}';
    pf_safetensors *st;
    assert_int_equal(pf_st_parse(&st, buf, n, "big-header", &err), -1);
    if (!strstr(err.msg, "PERFLOW_MAX_JSON_BYTES")) fail_msg("%s", err.msg);
    free(buf);
}

/* The review: a 521 KB PNG of 16384 x 10922 decoded to 514 MiB; the cap was a
 * fixed 179 MP. A caller's cap refuses from the header (PNG and JPEG). */
static void test_image_pixel_cap(void **state) {
    (void)state;
    char path[] = "/tmp/perflow-test-png-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    uint8_t rgb[64 * 48 * 3];
    memset(rgb, 90, sizeof rgb);
    pf_error err = {0};
    assert_int_equal(pf_png_write(path, rgb, 64, 48, NULL, &err), 0);
    uint8_t *out;
    int w, h;
    assert_int_equal(pf_image_read_max(path, 64 * 48, &out, &w, &h, &err), 0);
    assert_int_equal(w * h, 64 * 48);
    free(out);
    assert_int_equal(pf_image_read_max(path, 64 * 48 - 1, &out, &w, &h, &err), -1);
    assert_null(out);
    if (!strstr(err.msg, "64x48 has more than 3071 pixels")) fail_msg("%s", err.msg);
    unlink(path);
    /* a JPEG: refused from its SOF */
    char jpg[512];
    snprintf(jpg, sizeof jpg, "%s/tests/data/images/jpeg/baseline_420.jpg",
             getenv("PERFLOW_ROOT") ? getenv("PERFLOW_ROOT") : ".");
    assert_int_equal(pf_image_read_max(jpg, 0, &out, &w, &h, &err), 0);
    free(out);
    assert_int_equal(pf_image_read_max(jpg, (long)w * h - 1, &out, &w, &h, &err), -1);
    if (!strstr(err.msg, "JPEG") || !strstr(err.msg, "cap on input images")) fail_msg("%s", err.msg);
}

int main(void) {
    setenv("PERFLOW_MAX_JSON_BYTES", "65536", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output_allow_lists),
        cmocka_unit_test(test_job_limits),
        cmocka_unit_test(test_text_file_cap),
        cmocka_unit_test(test_image_pixel_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
