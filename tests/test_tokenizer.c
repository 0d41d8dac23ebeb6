/* test_tokenizer.c - the CLIP tokenizer against transformers' CLIPTokenizer.
 *
 * Goldens: tests/data/tokenizer_corpus.json (tests/reference/make_tokenizer_corpus.py)
 * over the real CLIP vocabulary in tests/data/clip-tokenizer (tests/reference/clip_vocab.py).
 * Every corpus text is checked twice: the untruncated tokens (tokenization bugs)
 * and the 77 padded ids (truncation and padding bugs). */
#include <jansson.h>
#include <time.h>
#include <unistd.h>
#include <utf8proc.h>

#include "test_util.h"
#include "tokenizer.h"

#define CORPUS_VERSION "1"
#define HINT "re-run tests/reference/make_tokenizer_corpus.py with the reference venv"

static pf_tokenizer *clip_tok(void) {
    static pf_tokenizer *tok;
    if (!tok) {
        pf_error err = {0};
        if (pf_tokenizer_load(&tok, pf_test_path("tests/data/clip-tokenizer"), &err)) {
            print_error("loading tests/data/clip-tokenizer: %s\n", err.msg);
            fail();
        }
    }
    return tok;
}

static json_t *corpus(void) {
    static json_t *root;
    if (!root) root = pf_golden_json(pf_test_path("tests/data/tokenizer_corpus.json"), CORPUS_VERSION, HINT);
    return root;
}

/* Text with control and non-ASCII bytes escaped, for failure messages. */
static const char *show(const char *s) {
    static char buf[400];
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && o < sizeof buf - 8; p++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, *p < 0x20 || *p >= 0x7f ? "\\x%02x" : "%c", *p);
    if (o >= sizeof buf - 8) snprintf(buf + o, sizeof buf - o, "...");
    return buf;
}

/* Returns the first index where ids and the JSON array want differ, or -1. */
static long first_diff(const int32_t *ids, size_t n, json_t *want) {
    size_t m = json_array_size(want);
    for (size_t i = 0; i < n && i < m; i++)
        if (ids[i] != json_integer_value(json_array_get(want, i))) return (long)i;
    return n == m ? -1 : (long)(n < m ? n : m);
}

static void report(int bad, const char *what, const char *text, long at, const int32_t *ids, size_t n, json_t *want) {
    if (bad > 5) return;
    print_error("%s mismatch for \"%s\" at index %ld: got %d of %zu ids, want %d of %zu\n", what, show(text), at,
                at < (long)n ? (int)ids[at] : -1, n,
                at < (long)json_array_size(want) ? (int)json_integer_value(json_array_get(want, at)) : -1,
                json_array_size(want));
}

/* Checks every case of a JSON array against tok; returns the number of texts that differ. */
static int check_cases(pf_tokenizer *tok, json_t *cases, int max_length) {
    int bad = 0;
    int32_t *ids = malloc((size_t)max_length * sizeof *ids);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        pf_error err = {0};
        int32_t *tokens;
        size_t n;
        assert_non_null(text);
        if (pf_tokenizer_tokenize(tok, text, &tokens, &n, &err) ||
            pf_tokenizer_encode(tok, text, ids, max_length, &err)) {
            print_error("\"%s\": %s\n", show(text), err.msg);
            bad++;
            continue;
        }
        long at = first_diff(tokens, n, json_object_get(c, "tokens"));
        long at2 = first_diff(ids, (size_t)max_length, json_object_get(c, "ids"));
        if (at >= 0 || at2 >= 0) {
            bad++;
            if (at >= 0) report(bad, "tokens", text, at, tokens, n, json_object_get(c, "tokens"));
            else report(bad, "padded ids", text, at2, ids, (size_t)max_length, json_object_get(c, "ids"));
        }
        free(tokens);
    }
    free(ids);
    return bad;
}

static void test_corpus(void **state) {
    (void)state;
    json_t *cases = json_object_get(corpus(), "cases");
    int max_length = (int)json_integer_value(json_object_get(corpus(), "max_length"));
    assert_true(json_array_size(cases) >= 1000);
    assert_int_equal(max_length, 77);
    int bad = check_cases(clip_tok(), cases, max_length);
    if (bad) {
        print_error("%d of %zu corpus texts differ from CLIPTokenizer (corpus made with Unicode %s, "
                    "perflow follows Python 3.11's 14.0.0)\n",
                    bad, json_array_size(cases), json_string_value(json_object_get(corpus(), "python_unicode")));
        fail();
    }
}

/* tokenizer.c deletes the characters utf8proc 2.8 (Unicode 15.0) knows and
 * Python 3.11 (14.0) does not; a newer utf8proc knows more, which the table
 * there would have to list too. */
static void test_unicode_version(void **state) {
    (void)state;
    if (strcmp(utf8proc_unicode_version(), "15.0.0")) {
        print_error("utf8proc supports Unicode %s, engine/models/tokenizer.c's unicode15_new table is for 15.0.0: "
                    "extend it with the code points this version adds (Cn to Python 3.11's unicodedata)\n",
                    utf8proc_unicode_version());
        fail();
    }
}

static void test_photo_of_a_cat(void **state) {
    (void)state;
    const pf_tokenizer_info *info = pf_tokenizer_get_info(clip_tok());
    assert_int_equal(info->vocab_size, 49408);
    assert_int_equal(info->model_max_length, 77);
    assert_int_equal(info->bos_id, 49406);
    assert_int_equal(info->eos_id, 49407);
    assert_int_equal(info->pad_id, 49407);
    int32_t ids[77];
    pf_error err = {0};
    assert_int_equal(pf_tokenizer_encode(clip_tok(), "a photo of a cat", ids, 77, &err), 0);
    const int32_t want[7] = {49406, 320, 1125, 539, 320, 2368, 49407};
    for (int i = 0; i < 77; i++) assert_int_equal(ids[i], i < 7 ? want[i] : 49407);
    /* shorter max_length truncates: BOS, 2 tokens, EOS */
    assert_int_equal(pf_tokenizer_encode(clip_tok(), "a photo of a cat", ids, 4, &err), 0);
    assert_int_equal(ids[1], 320);
    assert_int_equal(ids[2], 1125);
    assert_int_equal(ids[3], 49407);
    assert_int_equal(pf_tokenizer_encode(clip_tok(), "a photo", ids, 1, &err), -1);
    assert_non_null(strstr(err.msg, "max_length"));
}

/* ------------------------------------------------------------------ temp tokenizer dirs */

static void write_str(const char *dir, const char *name, const char *text) {
    pf_temp_write(dir, name, text, strlen(text));
}

/* A directory with the real vocabulary (symlinked) and the given config files. */
static char *clip_dir_with(json_t *files) {
    char *d = pf_temp_dir();
    const char *real = realpath(pf_test_path("tests/data/clip-tokenizer"), NULL);
    assert_non_null(real);
    for (int k = 0; k < 2; k++) {
        const char *name = k ? "merges.txt" : "vocab.json";
        assert_int_equal(symlink(pf_pathf("%s/%s", real, name), pf_pathf("%s/%s", d, name)), 0);
    }
    free((void *)real);
    const char *name;
    json_t *text;
    json_object_foreach(files, name, text) write_str(d, name, json_string_value(text));
    return d;
}

static void test_pad_token_variants(void **state) {
    (void)state;
    json_t *variants = json_object_get(corpus(), "variants");
    assert_true(json_array_size(variants) >= 2);
    size_t i;
    json_t *v;
    json_array_foreach(variants, i, v) {
        char *d = clip_dir_with(json_object_get(v, "files"));
        pf_tokenizer *tok;
        pf_error err = {0};
        if (pf_tokenizer_load(&tok, d, &err)) {
            print_error("%s: %s\n", json_string_value(json_object_get(v, "name")), err.msg);
            fail();
        }
        assert_int_equal(pf_tokenizer_get_info(tok)->pad_id, 0); /* "!" */
        json_t *cases = json_object_get(v, "cases");
        int bad = check_cases(tok, cases, 77);
        if (bad) {
            print_error("%s: %d of %zu texts differ\n", json_string_value(json_object_get(v, "name")), bad,
                        json_array_size(cases));
            fail();
        }
        pf_tokenizer_free(tok);
        pf_temp_dir_remove(d);
    }
}

/* ------------------------------------------------------------------ hostile input */

/* Loads a tiny tokenizer from the given vocab.json and merges.txt text and
 * returns 0 or -1; err keeps the message. */
static int load_tiny(const char *vocab, const char *merges, size_t merges_len, const char *config, pf_error *err) {
    char *d = pf_temp_dir();
    write_str(d, "vocab.json", vocab);
    pf_temp_write(d, "merges.txt", merges, merges_len);
    if (config) write_str(d, "tokenizer_config.json", config);
    pf_tokenizer *tok;
    int rc = pf_tokenizer_load(&tok, d, err);
    pf_tokenizer_free(tok);
    pf_temp_dir_remove(d);
    return rc;
}

#define TINY_VOCAB "{\"a\": 0, \"b\": 1, \"ab</w>\": 2, \"<|startoftext|>\": 3, \"<|endoftext|>\": 4, \"zz\": 5}"
#define TINY_MERGES "#version: 0.2\na b</w>\n"

static void expect_error(int rc, const pf_error *err, const char *fragment) {
    if (rc != -1) {
        print_error("expected an error mentioning \"%s\", got success\n", fragment);
        fail();
    }
    if (!strstr(err->msg, fragment)) {
        print_error("error \"%s\" does not mention \"%s\"\n", err->msg, fragment);
        fail();
    }
}

static void test_malformed_files(void **state) {
    (void)state;
    pf_error err = {0};
    assert_int_equal(load_tiny(TINY_VOCAB, TINY_MERGES, strlen(TINY_MERGES), NULL, &err), 0);

    pf_tokenizer *tok = (pf_tokenizer *)1;
    expect_error(pf_tokenizer_load(&tok, "/nonexistent/tokenizer", &err), &err, "/nonexistent/tokenizer/vocab.json");
    assert_null(tok);
    expect_error(load_tiny("{\n\"a\": 0,\n\"b\" 1}", TINY_MERGES, strlen(TINY_MERGES), NULL, &err), &err,
                 "vocab.json:3:");
    expect_error(load_tiny("[1, 2]", TINY_MERGES, strlen(TINY_MERGES), NULL, &err), &err, "vocab.json");
    expect_error(load_tiny("{\"a\": \"zero\"}", TINY_MERGES, strlen(TINY_MERGES), NULL, &err), &err, "\"a\"");
    expect_error(load_tiny("{\"a\": -1}", TINY_MERGES, strlen(TINY_MERGES), NULL, &err), &err, "vocab.json");
    expect_error(load_tiny("{}", TINY_MERGES, strlen(TINY_MERGES), NULL, &err), &err, "empty");

    const char three[] = "#version: 0.2\na b</w>\nb a\na b c\n";
    expect_error(load_tiny(TINY_VOCAB, three, strlen(three), NULL, &err), &err, "merges.txt:4:");
    const char one[] = "#version: 0.2\r\na b</w>\r\nab\r\n";
    expect_error(load_tiny(TINY_VOCAB, one, strlen(one), NULL, &err), &err, "merges.txt:3:");
    const char blank[] = "#version: 0.2\na b</w>\n\nb a\n";
    expect_error(load_tiny(TINY_VOCAB, blank, strlen(blank), NULL, &err), &err, "merges.txt:3:");
    const char latin1[] = "#version: 0.2\na b</w>\n\xe9 a\n";
    expect_error(load_tiny(TINY_VOCAB, latin1, strlen(latin1), NULL, &err), &err, "merges.txt:3: not valid UTF-8");
    const char nul[] = "#version: 0.2\na\0b\n";
    expect_error(load_tiny(TINY_VOCAB, nul, sizeof nul - 1, NULL, &err), &err, "merges.txt:2:");
    expect_error(load_tiny(TINY_VOCAB, "#version: 0.2\n", 14, NULL, &err), &err, "no merges");

    expect_error(load_tiny(TINY_VOCAB, TINY_MERGES, strlen(TINY_MERGES), "{\"pad_token\": ", &err), &err,
                 "tokenizer_config.json:1:");
    expect_error(load_tiny(TINY_VOCAB, TINY_MERGES, strlen(TINY_MERGES), "{\"pad_token\": \"yy\"}", &err), &err,
                 "pad_token \"yy\" is not in the vocabulary");
    expect_error(load_tiny(TINY_VOCAB, TINY_MERGES, strlen(TINY_MERGES), "{\"pad_token\": 7}", &err), &err,
                 "pad_token");
    expect_error(load_tiny(TINY_VOCAB, TINY_MERGES, strlen(TINY_MERGES), "{\"added_tokens_decoder\": {\"x\": {}}}",
                           &err),
                 &err, "added_tokens_decoder");
}

/* A tiny vocabulary: merges apply, symbols missing from vocab.json become unk.
 * Expected values from CLIPTokenizer on the same files. */
static void test_tiny_vocabulary(void **state) {
    (void)state;
    char *d = pf_temp_dir();
    write_str(d, "vocab.json", TINY_VOCAB);
    write_str(d, "merges.txt", TINY_MERGES);
    write_str(d, "tokenizer_config.json",
              "{\"model_max_length\": 1000000000000000019884624838656, \"unk_token\": \"zz\"}");
    pf_tokenizer *tok;
    pf_error err = {0};
    assert_int_equal(pf_tokenizer_load(&tok, d, &err), 0);
    const pf_tokenizer_info *info = pf_tokenizer_get_info(tok);
    assert_int_equal(info->model_max_length, 77); /* transformers' VERY_LARGE_INTEGER: unset */
    assert_int_equal(info->unk_id, 5);
    int32_t *ids;
    size_t n;
    /* ['ab</w>', 'ab</w>', 'a</w>'] -> [2, 2, 5]: "a</w>" is not in the vocabulary */
    assert_int_equal(pf_tokenizer_tokenize(tok, "AB ab a", &ids, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 5);
    free(ids);
    int32_t six[6];
    assert_int_equal(pf_tokenizer_encode(tok, "AB ab a", six, 6, &err), 0);
    const int32_t want[6] = {3, 2, 2, 5, 4, 4};
    for (int i = 0; i < 6; i++) assert_int_equal(six[i], want[i]);
    pf_tokenizer_free(tok);
    pf_temp_dir_remove(d);
}

static void test_invalid_utf8(void **state) {
    (void)state;
    static const char *const bad[] = {
        "caf\xe9",           /* Latin-1 */
        "\xc0\xaf",          /* overlong "/" */
        "a \xed\xa0\x80 b",  /* surrogate U+D800 */
        "\xf4\x90\x80\x80",  /* U+110000 */
        "euro \xe2\x82",     /* truncated */
        "\x80 continuation", /* stray continuation byte */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t ids[77], *all = (int32_t *)1;
        size_t n;
        pf_error err = {0};
        expect_error(pf_tokenizer_encode(clip_tok(), bad[i], ids, 77, &err), &err, "not valid UTF-8");
        expect_error(pf_tokenizer_tokenize(clip_tok(), bad[i], &all, &n, &err), &err, "offset");
        assert_null(all);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Huge texts: linear-ish time, and encode equals the head of tokenize. */
static void test_huge_text(void **state) {
    (void)state;
    size_t n = 4u << 20;
    char *text = malloc(n + 1);
    for (size_t i = 0; i < n; i++) text[i] = "a photo of a cat, "[i % 18];
    text[n] = 0;
    char *word = malloc((1u << 20) + 1); /* one 1 MiB word: CLIPTokenizer.bpe is quadratic on it */
    for (size_t i = 0; i < 1u << 20; i++) word[i] = "abcdefghij"[i * 7 % 10];
    word[1u << 20] = 0;

    pf_error err = {0};
    int32_t ids[77], *all;
    size_t count;
    double t0 = now();
    assert_int_equal(pf_tokenizer_encode(clip_tok(), text, ids, 77, &err), 0);
    double t_encode = now() - t0;
    assert_int_equal(pf_tokenizer_tokenize(clip_tok(), text, &all, &count, &err), 0);
    assert_true(count > 1000000);
    for (int i = 0; i < 75; i++) assert_int_equal(ids[1 + i], all[i]);
    assert_int_equal(ids[76], 49407);
    free(all);
    t0 = now();
    assert_int_equal(pf_tokenizer_tokenize(clip_tok(), word, &all, &count, &err), 0);
    double t_word = now() - t0;
    assert_true(count > 1000);
    free(all);
    print_message("4 MiB text: encode %.3f ms; 1 MiB word: tokenize %.2f s\n", 1e3 * t_encode, t_word);
    assert_true(t_encode < 0.1);
    assert_true(t_word < 20);
    free(text);
    free(word);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unicode_version),
        cmocka_unit_test(test_photo_of_a_cat),
        cmocka_unit_test(test_corpus),
        cmocka_unit_test(test_pad_token_variants),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_tiny_vocabulary),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_huge_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
