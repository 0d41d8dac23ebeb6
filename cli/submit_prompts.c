/* submit_prompts.c - JSONL and CSV prompt files and seed ranges (submit_prompts.h). */
#include "submit_prompts.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CSV_MAX_FIELDS 64

/* "NAME:LINE: msg" */
static int bad(pf_error *err, const char *name, long line, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int bad(pf_error *err, const char *name, long line, const char *fmt, ...) {
    char msg[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return pf_fail(err, "%s:%ld: %s", name, line, msg);
}

int pf_prompts_format_of(const char *path, pf_prompts_format *fmt, pf_error *err) {
    const char *dot = strrchr(path, '.');
    if (dot && (!strcasecmp(dot, ".jsonl") || !strcasecmp(dot, ".ndjson"))) *fmt = PF_PROMPTS_JSONL;
    else if (dot && !strcasecmp(dot, ".csv")) *fmt = PF_PROMPTS_CSV;
    else return pf_fail(err, "%s: a prompt file must end in .jsonl or .csv (or name its format)", path);
    return 0;
}

/* Offset of the first byte of s[0..n) that is not part of valid UTF-8
 * (overlong forms, surrogates and code points past U+10FFFF are invalid), or
 * -1 when all of it is valid. */
static long utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF; /* the second byte's range */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0) lo = 0xA0;      /* overlong */
            else if (c == 0xED) hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0) lo = 0x90;      /* overlong */
            else if (c == 0xF4) hi = 0x8F; /* past U+10FFFF */
        } else {
            return (long)i;
        }
        if (n - i <= k) return (long)i;
        if (s[i + 1] < lo || s[i + 1] > hi) return (long)i;
        for (size_t j = 2; j <= k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return (long)i;
        i += k + 1;
    }
    return -1;
}

/* The rules every prompt obeys (those of the job schema, and not empty);
 * what names it in messages ("prompt", "negative_prompt"). */
static int check_text(const char *s, size_t n, int may_be_empty, const char *what, const char *name, long line,
                      pf_error *err) {
    if (!n && !may_be_empty) return bad(err, name, line, "%s is empty", what);
    if (n > PF_PROMPT_MAX) return bad(err, name, line, "%s is longer than %d bytes (%zu)", what, PF_PROMPT_MAX, n);
    long at = utf8_invalid_at((const unsigned char *)s, n);
    if (at >= 0) return bad(err, name, line, "%s is not valid UTF-8 (byte %ld)", what, at + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            return bad(err, name, line, "%s has a control character (0x%02x at byte %zu)", what, c, i + 1);
    }
    return 0;
}

/* Appends a row that owns prompt and negative (malloc'd; freed here on error). */
static int push(pf_prompt_list *l, char *prompt, char *negative, int has_seed, uint64_t seed, long line,
                const char *name, pf_error *err) {
    if (l->n == PF_PROMPT_ROWS_MAX) {
        free(prompt);
        free(negative);
        return bad(err, name, line, "more than %d rows (split the file)", PF_PROMPT_ROWS_MAX);
    }
    if (l->n == l->cap) {
        long cap = l->cap ? 2 * l->cap : 64;
        pf_prompt_row *r = realloc(l->rows, (size_t)cap * sizeof *r);
        if (!r) {
            free(prompt);
            free(negative);
            return bad(err, name, line, "out of memory after %ld rows", l->n);
        }
        l->rows = r;
        l->cap = cap;
    }
    l->rows[l->n++] = (pf_prompt_row){prompt, negative, has_seed, seed, line};
    return 0;
}

static char *dup_n(const char *s, size_t n) {
    char *d = PF_MALLOC(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* A seed written as decimal digits, at most PF_SEED_MAX. */
static int parse_seed(const char *s, size_t n, uint64_t *out) {
    if (!n || n > 19) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return -1;
        v = v * 10 + (uint64_t)(s[i] - '0'); /* 19 digits cannot overflow 64 bits */
    }
    if (v > PF_SEED_MAX) return -1;
    *out = v;
    return 0;
}

/* ---- JSONL ---------------------------------------------------------------- */

static int jsonl_row(pf_prompt_list *l, const char *s, size_t n, long line, const char *name, pf_error *err) {
    json_error_t je;
    json_t *o = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
    if (!o) return bad(err, name, line, "not valid JSON: %s (column %d)", je.text, je.column);
    int rc = -1;
    const char *key;
    json_t *v;
    if (!json_is_object(o)) {
        bad(err, name, line, "each line must be a JSON object such as {\"prompt\": \"...\"}");
        goto done;
    }
    json_object_foreach(o, key, v) {
        if (strcmp(key, "prompt") && strcmp(key, "negative_prompt") && strcmp(key, "seed")) {
            char safe[41];
            size_t i;
            for (i = 0; key[i] && i < sizeof safe - 1; i++) safe[i] = isprint((unsigned char)key[i]) ? key[i] : '?';
            safe[i] = '\0';
            bad(err, name, line, "unknown member \"%s\" (the members are prompt, negative_prompt and seed)", safe);
            goto done;
        }
    }
    json_t *p = json_object_get(o, "prompt"), *neg = json_object_get(o, "negative_prompt"),
           *seed = json_object_get(o, "seed");
    if (!p) {
        bad(err, name, line, "\"prompt\" is missing");
        goto done;
    }
    if (!json_is_string(p) || (neg && !json_is_string(neg))) {
        bad(err, name, line, "\"%s\" must be a string", json_is_string(p) ? "negative_prompt" : "prompt");
        goto done;
    }
    uint64_t sv = 0;
    if (seed) {
        if (!json_is_integer(seed) || json_integer_value(seed) < 0) {
            bad(err, name, line, "\"seed\" must be an integer from 0 to %llu", (unsigned long long)PF_SEED_MAX);
            goto done;
        }
        sv = (uint64_t)json_integer_value(seed);
    }
    if (check_text(json_string_value(p), json_string_length(p), 0, "prompt", name, line, err) ||
        (neg && check_text(json_string_value(neg), json_string_length(neg), 1, "negative_prompt", name, line, err)))
        goto done;
    rc = push(l, dup_n(json_string_value(p), json_string_length(p)),
              neg ? dup_n(json_string_value(neg), json_string_length(neg)) : NULL, seed != NULL, sv, line, name, err);
done:
    json_decref(o);
    return rc;
}

static int parse_jsonl(pf_prompt_list *l, const char *data, size_t len, const char *name, pf_error *err) {
    long line = 0;
    for (size_t at = 0; at < len;) {
        line++;
        const char *s = data + at;
        const char *nl = memchr(s, '\n', len - at);
        size_t n = nl ? (size_t)(nl - s) : len - at;
        at += n + (nl != NULL);
        if (n > PF_PROMPT_LINE_MAX) return bad(err, name, line, "line longer than %d bytes", PF_PROMPT_LINE_MAX);
        if (memchr(s, '\0', n)) return bad(err, name, line, "NUL byte (is this a text file?)");
        size_t k = 0;
        while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r')) k++;
        if (k == n) continue; /* blank line */
        if (jsonl_row(l, s, n, line, name, err)) return -1;
    }
    return 0;
}

/* ---- CSV (RFC 4180) -------------------------------------------------------- */

typedef struct csv {
    const char *p, *end;
    long line;                /* of p */
    const char *name;
    char *buf;                /* the record's fields, unescaped, each NUL-terminated */
    size_t len, cap;
    size_t off[CSV_MAX_FIELDS], flen[CSV_MAX_FIELDS];
    int n;                    /* fields */
} csv;

static void csv_put(csv *c, char ch) {
    if (c->len + 1 >= c->cap) {
        c->cap = c->cap ? 2 * c->cap : 256;
        c->buf = realloc(c->buf, c->cap);
        PF_CHECK(c->buf); /* at most PF_PROMPT_LINE_MAX + fields bytes */
    }
    c->buf[c->len++] = ch;
}

/* Reads one record; returns 1, 0 at the end of the data, -1 on error. *start
 * is the line the record starts on; a blank line is a record of one empty field. */
static int csv_record(csv *c, long *start, pf_error *err) {
    if (c->p == c->end) return 0;
    *start = c->line;
    const char *rec = c->p;
    c->len = 0;
    c->n = 0;
    for (;;) { /* one field */
        if (c->n == CSV_MAX_FIELDS) return bad(err, c->name, *start, "more than %d fields", CSV_MAX_FIELDS);
        c->off[c->n] = c->len;
        if (c->p < c->end && *c->p == '"') {
            long opened = c->line;
            c->p++;
            for (;;) {
                if (c->p == c->end)
                    return bad(err, c->name, opened, "a quoted field is never closed (it opens on this line)");
                char ch = *c->p++;
                if (ch == '"') {
                    if (c->p < c->end && *c->p == '"') {
                        c->p++;
                        csv_put(c, '"');
                        continue;
                    }
                    break;
                }
                if (ch == '\n') c->line++;
                csv_put(c, ch);
                if ((size_t)(c->p - rec) > PF_PROMPT_LINE_MAX)
                    return bad(err, c->name, *start, "record longer than %d bytes", PF_PROMPT_LINE_MAX);
            }
            if (c->p < c->end && *c->p != ',' && *c->p != '\n' && !(*c->p == '\r' && c->p + 1 < c->end && c->p[1] == '\n'))
                return bad(err, c->name, c->line, "text after a closing quote (write \"\" for a quote inside quotes)");
        } else {
            while (c->p < c->end && *c->p != ',' && *c->p != '\n' && !(*c->p == '\r' && c->p + 1 < c->end && c->p[1] == '\n')) {
                if (*c->p == '"')
                    return bad(err, c->name, c->line, "a quote inside an unquoted field (quote the whole field)");
                csv_put(c, *c->p++);
                if ((size_t)(c->p - rec) > PF_PROMPT_LINE_MAX)
                    return bad(err, c->name, *start, "record longer than %d bytes", PF_PROMPT_LINE_MAX);
            }
        }
        c->flen[c->n] = c->len - c->off[c->n];
        csv_put(c, '\0');
        c->n++;
        if (c->p == c->end) return 1;
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        c->p += *c->p == '\r' ? 2 : 1; /* the record's end: \n or \r\n */
        c->line++;
        return 1;
    }
}

enum { COL_PROMPT, COL_NEGATIVE, COL_SEED, NCOLS };
static const char *const col_names[NCOLS] = {"prompt", "negative_prompt", "seed"};

static int parse_csv(pf_prompt_list *l, const char *data, size_t len, const char *name, pf_error *err) {
    csv c = {data, data + len, 1, name, NULL, 0, 0, {0}, {0}, 0};
    if (len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)) c.p += 3; /* a byte order mark, as spreadsheets write */
    const char *nul = memchr(data, '\0', len);
    if (nul) {
        long line = 1;
        for (const char *q = data; q < nul; q++) line += *q == '\n';
        return bad(err, name, line, "NUL byte (is this a text file?)");
    }
    int col[CSV_MAX_FIELDS]; /* the column of each field, -1: none */
    int ncol = 0, rc = 0, r;
    long start;
    while ((r = csv_record(&c, &start, err)) == 1) {
        if (c.n == 1 && c.flen[0] == 0) continue; /* blank line */
        if (!ncol) {                               /* the header */
            int seen[NCOLS] = {0};
            for (int i = 0; i < c.n; i++) {
                const char *h = c.buf + c.off[i];
                int k = 0;
                while (k < NCOLS && strcmp(h, col_names[k])) k++;
                if (k == NCOLS) {
                    char safe[41];
                    size_t j;
                    for (j = 0; h[j] && j < sizeof safe - 1; j++) safe[j] = isprint((unsigned char)h[j]) ? h[j] : '?';
                    safe[j] = '\0';
                    rc = bad(err, name, start,
                             "unknown column \"%s\" in the header (the columns are prompt, negative_prompt and seed)",
                             safe);
                    goto done;
                }
                if (seen[k]++) {
                    rc = bad(err, name, start, "column \"%s\" appears twice in the header", col_names[k]);
                    goto done;
                }
                col[i] = k;
            }
            if (!seen[COL_PROMPT]) {
                rc = bad(err, name, start, "the header row must name a \"prompt\" column");
                goto done;
            }
            ncol = c.n;
            continue;
        }
        if (c.n != ncol) {
            rc = bad(err, name, start, "%d field%s, but the header has %d", c.n, c.n == 1 ? "" : "s", ncol);
            goto done;
        }
        const char *prompt = NULL, *neg = NULL;
        size_t plen = 0, nlen = 0;
        int has_seed = 0;
        uint64_t seed = 0;
        for (int i = 0; i < c.n; i++) {
            const char *v = c.buf + c.off[i];
            size_t vl = c.flen[i];
            if (col[i] == COL_PROMPT) {
                prompt = v;
                plen = vl;
            } else if (col[i] == COL_NEGATIVE && vl) {
                neg = v;
                nlen = vl;
            } else if (col[i] == COL_SEED && vl) {
                if (parse_seed(v, vl, &seed)) {
                    rc = bad(err, name, start, "seed must be an integer from 0 to %llu",
                             (unsigned long long)PF_SEED_MAX);
                    goto done;
                }
                has_seed = 1;
            }
        }
        if (check_text(prompt, plen, 0, "prompt", name, start, err) ||
            (neg && check_text(neg, nlen, 1, "negative_prompt", name, start, err)) ||
            push(l, dup_n(prompt, plen), neg ? dup_n(neg, nlen) : NULL, has_seed, seed, start, name, err)) {
            rc = -1;
            goto done;
        }
    }
    if (r < 0) rc = -1;
    else if (!ncol) rc = bad(err, name, 1, "no header row (the first line names the columns: prompt, ...)");
done:
    free(c.buf);
    return rc;
}

int pf_prompts_parse(pf_prompt_list *out, const char *data, size_t len, pf_prompts_format fmt, const char *name,
                     pf_error *err) {
    memset(out, 0, sizeof *out);
    int rc = fmt == PF_PROMPTS_CSV ? parse_csv(out, data, len, name, err) : parse_jsonl(out, data, len, name, err);
    if (!rc && !out->n) rc = pf_fail(err, "%s: no prompts in the file", name);
    if (rc) pf_prompts_free(out);
    return rc;
}

void pf_prompts_free(pf_prompt_list *l) {
    for (long i = 0; i < l->n; i++) {
        free(l->rows[i].prompt);
        free(l->rows[i].negative_prompt);
    }
    free(l->rows);
    memset(l, 0, sizeof *l);
}

int pf_seed_range_parse(const char *s, uint64_t *lo, uint64_t *hi, pf_error *err) {
    const char *dash = strchr(s, '-');
    size_t n1 = dash ? (size_t)(dash - s) : strlen(s);
    if (parse_seed(s, n1, lo) || (dash && parse_seed(dash + 1, strlen(dash + 1), hi)))
        return pf_fail(err, "seed range '%.60s' must be N or A-B with integers from 0 to %llu", s,
                       (unsigned long long)PF_SEED_MAX);
    if (!dash) *hi = *lo;
    if (*lo > *hi) return pf_fail(err, "seed range '%.60s' runs backwards (A must not exceed B)", s);
    return 0;
}
