/* fuzz_submit_prompts.c - libFuzzer target: arbitrary bytes as a prompt file of
 * `perflow submit` (cli/submit_prompts.c), JSONL when the first byte is even,
 * CSV when it is odd, and the rest also as a seed range. A file that parses
 * must give rows the job schema accepts (a prompt of 1 to PF_PROMPT_MAX bytes
 * of valid UTF-8 without control characters but tab and newline, a seed at
 * most PF_SEED_MAX, lines that count up from 1); anything else must be an
 * error that names the file and a line, never a crash, leak or undefined
 * behaviour. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "submit_prompts.h"

/* The text rules, checked independently of the parser: jansson accepts a
 * string only when it is valid UTF-8. */
static int text_ok(const char *s, int may_be_empty) {
    size_t n = strlen(s);
    if ((!n && !may_be_empty) || n > PF_PROMPT_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') return 0;
    }
    json_t *j = json_string(s);
    if (!j) return 0;
    json_decref(j);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    pf_prompts_format fmt = data[0] & 1 ? PF_PROMPTS_CSV : PF_PROMPTS_JSONL;
    pf_prompt_list l;
    pf_error err;
    if (pf_prompts_parse(&l, (const char *)data + 1, size - 1, fmt, "f", &err)) {
        if (strncmp(err.msg, "f:", 2) || l.n || l.rows) abort();
    } else {
        if (l.n < 1) abort();
        long last = 0;
        for (long i = 0; i < l.n; i++) {
            const pf_prompt_row *r = &l.rows[i];
            if (!text_ok(r->prompt, 0) || (r->negative_prompt && !text_ok(r->negative_prompt, 1))) abort();
            if ((r->has_seed && r->seed > PF_SEED_MAX) || (!r->has_seed && r->seed) || r->line <= last) abort();
            last = r->line;
        }
        pf_prompts_free(&l);
    }
    /* the same bytes as a seed range */
    char *s = malloc(size);
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    uint64_t lo, hi;
    if (!pf_seed_range_parse(s, &lo, &hi, &err) && (lo > hi || hi > PF_SEED_MAX)) abort();
    free(s);
    return 0;
}
