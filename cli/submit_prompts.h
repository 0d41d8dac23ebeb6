/* submit_prompts.h - the prompt files and seed ranges of `perflow submit`:
 * what a user hands in for bulk rendering and dataset synthesis.
 *
 * Two formats, picked by the file's extension (.jsonl, .csv) or named:
 *   JSONL  one JSON object per line: {"prompt": "...", "negative_prompt": "...",
 *          "seed": 42}; only "prompt" is required; blank lines are skipped;
 *          any other member is an error (a misspelt "negative_promt" silently
 *          ignored would give wrong images, as in the job schema).
 *   CSV    RFC 4180: a header row naming the columns (prompt, and optionally
 *          negative_prompt and seed), then one record per row; fields may be
 *          quoted ("" is a quote inside quotes, and quoted fields may span
 *          lines); an empty negative_prompt or seed cell means "not given".
 *          A UTF-8 byte order mark at the start is skipped.
 * A row's seed pins it to that seed; rows without one take the command's
 * seed range.
 *
 * Files are hostile input: every rule breaks with one line naming the file's
 * line ("prompts.csv:17: ..."): invalid UTF-8, a NUL byte, a control
 * character other than tab and newline in a prompt, a prompt over
 * PF_PROMPT_MAX bytes or empty, a seed that is not an integer from 0 to
 * 2^63-1, a line over PF_PROMPT_LINE_MAX bytes, more than PF_PROMPT_ROWS_MAX
 * rows, a CSV record with a field count other than the header's, a stray
 * quote, an unterminated quoted field. */
#ifndef PF_SUBMIT_PROMPTS_H
#define PF_SUBMIT_PROMPTS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define PF_PROMPT_MAX 4096             /* bytes of a prompt (the job schema's limit) */
#define PF_PROMPT_LINE_MAX (64 * 1024) /* bytes of one JSONL line or CSV record */
#define PF_PROMPT_ROWS_MAX 10000000    /* rows of one file */
#define PF_SEED_MAX 9223372036854775807ULL /* the job schema's largest seed */

typedef enum { PF_PROMPTS_JSONL, PF_PROMPTS_CSV } pf_prompts_format;

typedef struct pf_prompt_row {
    char *prompt;          /* NUL-terminated, valid UTF-8 */
    char *negative_prompt; /* NULL: not given (the command line's applies) */
    int has_seed;
    uint64_t seed;
    long line;             /* the file line where the row starts (1-based) */
} pf_prompt_row;

typedef struct pf_prompt_list {
    pf_prompt_row *rows;
    long n, cap;
} pf_prompt_list;

/* The format of path from its extension (.jsonl, .ndjson, .csv, any case).
 * Error naming the path when it has neither. */
int pf_prompts_format_of(const char *path, pf_prompts_format *fmt, pf_error *err);

/* Parses data (len bytes, not NUL-terminated; may hold any bytes) in format
 * fmt; name is the file name put in front of error messages. On success *out
 * holds at least one row (release with pf_prompts_free). On error returns -1,
 * err says "NAME:LINE: what", and *out is empty (nothing to free). */
int pf_prompts_parse(pf_prompt_list *out, const char *data, size_t len, pf_prompts_format fmt, const char *name,
                     pf_error *err);
void pf_prompts_free(pf_prompt_list *l);

/* A seed range: "N" or "A-B" (inclusive, A <= B), decimal, at most
 * PF_SEED_MAX. Error naming s when malformed. */
int pf_seed_range_parse(const char *s, uint64_t *lo, uint64_t *hi, pf_error *err);

#endif
