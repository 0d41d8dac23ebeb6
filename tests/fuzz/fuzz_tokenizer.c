/* fuzz_tokenizer.c - libFuzzer target: arbitrary bytes as prompt text through the CLIP
 * tokenizer (cleanup, normalisation, pre-tokenizing, BPE, truncation, padding).
 * The tokenizer is loaded once from tests/data/models/tiny-sd15/tokenizer under
 * $PERFLOW_ROOT (default: the current directory). Invalid UTF-8 must give an error,
 * never a crash; valid text must give exactly max_length ids in the vocabulary. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static pf_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *root = getenv("PERFLOW_ROOT");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/models/tiny-sd15/tokenizer", root && *root ? root : ".");
    pf_error err;
    if (pf_tokenizer_load(&tok, dir, &err)) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0; /* the API takes C strings: bytes after a NUL are not part of the text */
    int32_t ids[77];
    pf_error err;
    if (pf_tokenizer_encode(tok, text, ids, 77, &err) == 0) {
        const pf_tokenizer_info *info = pf_tokenizer_get_info(tok);
        for (int i = 0; i < 77; i++)
            if (ids[i] < 0 || ids[i] >= info->vocab_size) abort();
    }
    free(text);
    return 0;
}
