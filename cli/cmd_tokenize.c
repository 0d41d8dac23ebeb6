/* cmd_tokenize.c - `perflow tokenize --tokenizer DIR [--max-length N] TEXT...`:
 * prints each TEXT's CLIP token ids as one JSON array per line, padded and
 * truncated as a Stable Diffusion pipeline feeds its text encoder. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f, "usage: perflow tokenize [--help] --tokenizer DIR [--max-length N] [--raw] [--] TEXT...\n"
               "  Prints each TEXT's token ids as a JSON array, one line per TEXT: BOS, the tokens\n"
               "  truncated to N - 2, EOS, then padding to N ids, like the diffusers pipelines'\n"
               "  tokenizer(text, padding=\"max_length\", max_length=N, truncation=True).\n"
               "  DIR holds vocab.json and merges.txt (+ tokenizer_config.json, special_tokens_map.json).\n"
               "  --max-length N  ids per text (default: the tokenizer's model_max_length, 77 for SD)\n"
               "  --raw           all tokens, without BOS, EOS, truncation or padding\n"
               "  Exit status: 0 ok, 1 unreadable tokenizer or text that is not UTF-8, 2 usage error.\n");
}

/* Usage errors are one line, like every other error of the CLI. */
static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "perflow: tokenize: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see perflow tokenize --help)\n");
    return 2;
}

static void print_ids(const int32_t *ids, size_t n) {
    putchar('[');
    for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", (int)ids[i]);
    puts("]");
}

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL;
    long max_length = 0; /* 0: the tokenizer's */
    int raw = 0, first_text = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--tokenizer")) {
            if (++i == argc) return usage_error("%s needs a directory", a);
            dir = argv[i];
        } else if (!strcmp(a, "--max-length")) {
            if (++i == argc) return usage_error("%s needs a number", a);
            char *end;
            errno = 0;
            max_length = strtol(argv[i], &end, 10);
            if (errno || !*argv[i] || *end || max_length < 2 || max_length > 1 << 20)
                return usage_error("--max-length must be an integer from 2 to 1048576, not '%s'", argv[i]);
        } else if (!strcmp(a, "--raw")) {
            raw = 1;
        } else if (!strcmp(a, "--")) {
            first_text = i + 1;
            break;
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option '%s'", a);
        } else {
            first_text = i;
            break;
        }
    }
    if (!dir) return usage_error("%s", "missing --tokenizer DIR");
    if (first_text >= argc) return usage_error("%s", "missing TEXT");

    pf_error err = {0};
    pf_tokenizer *tok;
    if (pf_tokenizer_load(&tok, dir, &err)) {
        fprintf(stderr, "perflow: %s\n", err.msg);
        return 1;
    }
    int n = max_length ? (int)max_length : pf_tokenizer_get_info(tok)->model_max_length;
    int32_t *ids = raw ? NULL : PF_MALLOC((size_t)n * sizeof *ids);
    int rc = 0;
    for (int i = first_text; i < argc && !rc; i++) {
        size_t count = (size_t)n;
        if (raw) {
            free(ids);
            ids = NULL;
            rc = pf_tokenizer_tokenize(tok, argv[i], &ids, &count, &err);
        } else {
            rc = pf_tokenizer_encode(tok, argv[i], ids, n, &err);
        }
        if (rc) {
            fprintf(stderr, "perflow: TEXT %d: %s\n", i - first_text + 1, err.msg);
            rc = 1;
        } else {
            print_ids(ids, count);
        }
    }
    free(ids);
    pf_tokenizer_free(tok);
    if (!rc && (fflush(stdout) || ferror(stdout))) {
        fprintf(stderr, "perflow: error writing to stdout\n");
        rc = 1;
    }
    return rc;
}
