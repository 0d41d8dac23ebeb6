/* test_worker_prefer.c - warm-model routing's pure parts: the pick among held
 * jobs (worker/prefer.c: warm first, never past an earlier message of the same
 * partition, the head passed over at most prefer_warm times in a row)
 * and submit's partition rule (protocol/model_route.c). The end-to-end half
 * (perflow submit into Kafka, a worker's order) is tests/worker/test_routing.py. */
#include "test_util.h"

#include <string.h>

#include "model_route.h"
#include "prefer.h"

#define MAX_PASS 8 /* the worker's default prefer_warm */

/* A queue of held messages: topic index, partition, warm. */
typedef struct held {
    int prio, part, warm;
    int id;
} held;

static int warm_of(int i, void *ctx) {
    return ((held *)ctx)[i].warm;
}

/* Takes every message of q (n of them) as the consumer would, writing the ids in order. */
static void drain(int *order, held *q, int n, int max_pass) {
    int passed = 0;
    for (int t = 0; n; t++) {
        pf_prefer_item it[64];
        for (int k = 0; k < n; k++) it[k] = (pf_prefer_item){q[k].prio, q[k].prio ? "low" : "jobs", q[k].part};
        int pass;
        int k = pf_prefer_pick(&pass, it, n, passed, max_pass, warm_of, q);
        passed = pass ? passed + 1 : 0;
        order[t] = q[k].id;
        memmove(q + k, q + k + 1, (size_t)(n - k - 1) * sizeof *q);
        n--;
    }
}

static int position(const int *order, int n, int id) {
    for (int i = 0; i < n; i++)
        if (order[i] == id) return i;
    return -1;
}

/* Warm jobs of another partition go first; a partition's own order holds. */
static void test_warm_first_partition_order(void **state) {
    (void)state;
    /* partition 0: cold 0, warm 1, cold 2; partition 1: warm 3, warm 4 */
    held q[] = {{0, 0, 0, 0}, {0, 0, 1, 1}, {0, 0, 0, 2}, {0, 1, 1, 3}, {0, 1, 1, 4}};
    int order[5];
    drain(order, q, 5, MAX_PASS);
    int want[] = {3, 4, 0, 1, 2}; /* 1 is warm but waits behind 0, its partition's head */
    assert_memory_equal(order, want, sizeof want);
}

/* The head goes after max_pass passes however many warm jobs wait. */
static void test_no_starvation(void **state) {
    (void)state;
    held q[40];
    int n = 0;
    q[n] = (held){0, 0, 0, n}; /* the cold head */
    n++;
    for (int p = 1; p < 40; p++, n++) q[n] = (held){0, p, 1, n}; /* 39 warm heads of their partitions */
    int order[40];
    drain(order, q, n, MAX_PASS);
    assert_int_equal(position(order, n, 0), MAX_PASS);
    /* every cold job among warm ones: each waits at most (place + 1) x (max_pass + 1) picks */
    held r[30];
    for (int i = 0; i < 30; i++) r[i] = (held){0, i % 7, i % 3 == 0 ? 0 : 1, i};
    int o2[30];
    drain(o2, r, 30, 3);
    for (int i = 0; i < 30; i++) assert_true(position(o2, 30, i) <= (i + 1) * 4);
    for (int i = 0; i < 30; i++) /* and within each partition, in order */
        for (int j = i + 7; j < 30; j += 7) assert_true(position(o2, 30, i) < position(o2, 30, j));
}

/* The topic's priority comes before warmth; no preference without match. */
static void test_priority_and_off(void **state) {
    (void)state;
    held q[] = {{1, 0, 1, 0}, {0, 1, 0, 1}, {0, 2, 1, 2}};
    int order[3];
    drain(order, q, 3, MAX_PASS);
    int want[] = {2, 1, 0};
    assert_memory_equal(order, want, sizeof want);
    pf_prefer_item it[] = {{0, "jobs", 0}, {0, "jobs", 1}};
    int pass = 9;
    assert_int_equal(pf_prefer_pick(&pass, it, 2, 0, MAX_PASS, NULL, NULL), 0);
    assert_int_equal(pass, 0);
    /* the same partition number in another topic is another partition */
    held s[] = {{0, 0, 0, 0}, {1, 1, 0, 1}, {0, 1, 1, 2}};
    drain(order, s, 3, MAX_PASS);
    int want2[] = {2, 0, 1};
    assert_memory_equal(order, want2, sizeof want2);
}

/* The n-th job of a model: partition (first 32 bits of the id + n mod spread) mod partitions. */
static void test_route_rule(void **state) {
    (void)state;
    const char *id = "0000000aff00000000000000000000000000000000000000000000000000000f";
    char key[PF_ROUTE_KEY_MAX];
    assert_int_equal(pf_route_partition(key, id, 0, 2, 6), 10 % 6);
    assert_string_equal(key, "0000000aff00000000000000000000000000000000000000000000000000000f/0");
    assert_int_equal(pf_route_partition(key, id, 5, 2, 6), 11 % 6);
    assert_string_equal(key + 64, "/1");
    assert_int_equal(pf_route_partition(NULL, id, 7, 3, 2), (10 + 1) % 2);
    const char *big = "ffffffff00000000000000000000000000000000000000000000000000000000";
    assert_int_equal(pf_route_partition(NULL, big, 1, 4, 7), (int)((0xffffffffUL + 1) % 7));
    for (long n = 0; n < 100; n++) assert_int_equal(pf_route_partition(NULL, id, n, 1, 6), 10 % 6);
}

/* The identity: the worker's cache key; a LoRA's scale or a digest makes another model. */
static void test_model_identity(void **state) {
    (void)state;
    const char *a = "{\"job_id\":\"a\",\"model\":{\"base\":{\"url\":\"https://m.example/tiny\"},"
                    "\"loras\":[{\"url\":\"https://m.example/l.safetensors\",\"scale\":0.5}]},"
                    "\"prompt\":\"x\",\"output\":{\"url\":\"file:///tmp/o/{job_id}/{index}.png\"}}";
    const char *b = "{\"job_id\":\"b\",\"model\":{\"base\":{\"url\":\"https://m.example/tiny\"},"
                    "\"loras\":[{\"url\":\"https://m.example/l.safetensors\",\"scale\":0.75}]},"
                    "\"prompt\":\"y\",\"seed\":3,\"output\":{\"url\":\"file:///tmp/o/{job_id}/{index}.png\"}}";
    pf_job ja, jb;
    char field[PF_JOB_FIELD_MAX];
    pf_error e = {0};
    assert_int_equal(pf_job_parse(&ja, a, strlen(a), field, sizeof field, &e), 0);
    assert_int_equal(pf_job_parse(&jb, b, strlen(b), field, sizeof field, &e), 0);
    char *t = pf_route_model_text(&ja);
    assert_string_equal(t, "{\"base\":[\"https://m.example/tiny\",null],\"config\":[\"\",null],\"delta\":[\"\",null],"
                           "\"fp16\":false,\"loras\":[[[\"https://m.example/l.safetensors\",null],0.5]]}");
    char ida[PF_SHA256_HEX], idb[PF_SHA256_HEX], want[PF_SHA256_HEX];
    pf_sha256_hex(want, t, strlen(t));
    pf_route_model_id(ida, &ja);
    pf_route_model_id(idb, &jb);
    assert_string_equal(ida, want);
    assert_string_not_equal(ida, idb); /* another scale: another model */
    jb.loras[0].scale = ja.loras[0].scale;
    pf_route_model_id(idb, &jb);
    assert_string_equal(ida, idb); /* prompt and seed are not the model */
    free(t);
    pf_job_free(&ja);
    pf_job_free(&jb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_warm_first_partition_order),
        cmocka_unit_test(test_no_starvation),
        cmocka_unit_test(test_priority_and_off),
        cmocka_unit_test(test_route_rule),
        cmocka_unit_test(test_model_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
