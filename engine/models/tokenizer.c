/* tokenizer.c - the CLIP byte-level BPE tokenizer (transformers' slow CLIPTokenizer, no ftfy).
 *
 * Every step mirrors a line of transformers 4.57.1: PreTrainedTokenizer.tokenize
 * (added-token split), BasicTokenizer(strip_accents=False, do_split_on_punc=False)
 * .tokenize (cleanup, CJK spacing, NFC, whitespace split, str.lower()),
 * CLIPTokenizer._tokenize (regex, bytes_to_unicode) and CLIPTokenizer.bpe.
 * tests/test_tokenizer.c checks all of it id for id against
 * tests/data/tokenizer_corpus.json.
 *
 * Unicode versions. The oracle mixes three Unicode databases: Python 3.11's
 * unicodedata (14.0: control/whitespace categories, NFC, lower()), the regex
 * module's (\p{L}, \p{N}) and, here, utf8proc 2.8's (15.0). They agree on every
 * character assigned in 14.0 (`make_tokenizer_corpus.py --unicode-check`
 * compares categories, L/N classes, lower-case mappings and the Cased and
 * Case_Ignorable properties behind final sigma over all code points), except
 * U+0130 and U+0345, handled below. The 4,489 characters new in 15.0 are
 * unassigned (Cn) to Python 3.11, so BasicTokenizer deletes them; the table
 * unicode15_new makes us delete them too. A utf8proc newer than 2.8 knows
 * further characters (15.1, 16.0) that we would keep while Python 3.11 drops
 * them; test_tokenizer checks the version so the table gets extended.
 *
 * Cost. The text is scanned once; BPE per piece uses a heap, O(n log n) in the
 * piece's length where CLIPTokenizer.bpe is quadratic, and gives the same
 * result (see bpe()). Encoding stops as soon as max_length - 2 tokens exist. */
#include "tokenizer.h"

#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>
#include <utf8proc.h>

#include "fileio.h"

/* CLIPTokenizer keeps merges.txt lines [1, 49152 - 256 - 2 + 1) after the
 * header; later lines are ignored, as OpenAI's CLIP does. */
#define MAX_MERGES (49152 - 256 - 2)
#define DEFAULT_MAX_LENGTH 77
#define NORM_OPTIONS ((utf8proc_option_t)(UTF8PROC_STABLE | UTF8PROC_COMPOSE))

static const char START_TOKEN[] = "<|startoftext|>";
static const char END_TOKEN[] = "<|endoftext|>";

/* ------------------------------------------------------------------ growable arrays */

typedef struct i32vec {
    int32_t *v;
    size_t n, cap;
} i32vec;

typedef struct bytevec {
    uint8_t *v;
    size_t n, cap;
} bytevec;

static void i32vec_reserve(i32vec *a, size_t need) {
    if (need <= a->cap) return;
    size_t cap = a->cap ? a->cap : 64;
    while (cap < need) cap *= 2;
    int32_t *v = realloc(a->v, cap * sizeof *v);
    PF_CHECK(v != NULL);
    a->v = v;
    a->cap = cap;
}

static void i32vec_push(i32vec *a, int32_t x) {
    i32vec_reserve(a, a->n + 1);
    a->v[a->n++] = x;
}

static void bytevec_append(bytevec *a, const void *p, size_t n) {
    if (a->n + n > a->cap) {
        size_t cap = a->cap ? a->cap : 256;
        while (cap < a->n + n) cap *= 2;
        uint8_t *v = realloc(a->v, cap);
        PF_CHECK(v != NULL);
        a->v = v;
        a->cap = cap;
    }
    memcpy(a->v + a->n, p, n);
    a->n += n;
}

/* ------------------------------------------------------------------ string table */

/* Interns byte strings: every symbol BPE can see (vocab tokens, both halves and
 * the result of every merge, the byte symbols) gets a dense index, so BPE works
 * on int32 symbols. val is the token's id (vocab.json, overridden by added
 * tokens as convert_tokens_to_ids does) or -1 when the string has none. */
typedef struct strtab {
    char *arena;
    size_t arena_n, arena_cap;
    size_t *off;
    uint32_t *len;
    int32_t *val;
    int32_t n, cap;
    int32_t *slots; /* -1 empty; size mask + 1, a power of two */
    size_t mask;
} strtab;

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static void strtab_rehash(strtab *t, size_t nslots) {
    free(t->slots);
    t->slots = PF_MALLOC(nslots * sizeof *t->slots);
    memset(t->slots, 0xff, nslots * sizeof *t->slots);
    t->mask = nslots - 1;
    for (int32_t i = 0; i < t->n; i++) {
        size_t h = hash_bytes(t->arena + t->off[i], t->len[i]) & t->mask;
        while (t->slots[h] >= 0) h = (h + 1) & t->mask;
        t->slots[h] = i;
    }
}

/* Returns the slot where s is or would go. */
static size_t strtab_slot(const strtab *t, const char *s, size_t n) {
    size_t h = hash_bytes(s, n) & t->mask;
    for (;;) {
        int32_t i = t->slots[h];
        if (i < 0 || (t->len[i] == n && !memcmp(t->arena + t->off[i], s, n))) return h;
        h = (h + 1) & t->mask;
    }
}

static int32_t strtab_find(const strtab *t, const char *s, size_t n) {
    return t->slots ? t->slots[strtab_slot(t, s, n)] : -1;
}

/* Returns the index of s, adding it with val -1 if new. */
static int32_t strtab_intern(strtab *t, const char *s, size_t n) {
    if (!t->slots) strtab_rehash(t, 1024);
    size_t h = strtab_slot(t, s, n);
    if (t->slots[h] >= 0) return t->slots[h];
    PF_CHECK(t->n < INT32_MAX / 2 && n <= UINT32_MAX);
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 1024;
        t->off = realloc(t->off, t->cap * sizeof *t->off);
        t->len = realloc(t->len, t->cap * sizeof *t->len);
        t->val = realloc(t->val, t->cap * sizeof *t->val);
        PF_CHECK(t->off && t->len && t->val);
    }
    if (t->arena_n + n > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 1 << 16;
        while (cap < t->arena_n + n) cap *= 2;
        t->arena = realloc(t->arena, cap);
        PF_CHECK(t->arena != NULL);
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_n, s, n);
    int32_t i = t->n++;
    t->off[i] = t->arena_n;
    t->len[i] = (uint32_t)n;
    t->val[i] = -1;
    t->arena_n += n;
    t->slots[h] = i;
    if ((size_t)t->n * 2 > t->mask + 1) strtab_rehash(t, 2 * (t->mask + 1));
    return i;
}

static void strtab_free(strtab *t) {
    free(t->arena);
    free(t->off);
    free(t->len);
    free(t->val);
    free(t->slots);
}

/* ------------------------------------------------------------------ merge table */

/* (left symbol, right symbol) -> (rank, merged symbol). */
typedef struct pairmap {
    uint64_t *keys; /* UINT64_MAX empty */
    int32_t *rank, *result;
    size_t mask, n;
} pairmap;

static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

static size_t pair_slot(const pairmap *m, uint64_t key) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h ^ (h >> 32)) & m->mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & m->mask;
    return i;
}

static void pairmap_init(pairmap *m, size_t expect) {
    size_t n = 1024;
    while (n < 2 * expect) n *= 2;
    m->keys = PF_MALLOC(n * sizeof *m->keys);
    memset(m->keys, 0xff, n * sizeof *m->keys);
    m->rank = PF_MALLOC(n * sizeof *m->rank);
    m->result = PF_MALLOC(n * sizeof *m->result);
    m->mask = n - 1;
    m->n = 0;
}

/* A repeated pair takes the later rank: bpe_ranks is dict(zip(merges, range(...))). */
static void pairmap_put(pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t result) {
    PF_CHECK(2 * (m->n + 1) <= m->mask + 1); /* sized by pairmap_init for every merge line */
    uint64_t key = pair_key(a, b);
    size_t i = pair_slot(m, key);
    if (m->keys[i] == UINT64_MAX) m->n++;
    m->keys[i] = key;
    m->rank[i] = rank;
    m->result[i] = result;
}

/* Returns the rank of (a, b) and sets *result, or -1 when the pair never merges. */
static int32_t pairmap_get(const pairmap *m, int32_t a, int32_t b, int32_t *result) {
    size_t i = pair_slot(m, pair_key(a, b));
    if (m->keys[i] == UINT64_MAX) return -1;
    *result = m->result[i];
    return m->rank[i];
}

static void pairmap_free(pairmap *m) {
    free(m->keys);
    free(m->rank);
    free(m->result);
}

/* ------------------------------------------------------------------ the tokenizer */

typedef struct added_token {
    char *text;
    size_t len;
    int32_t id;
} added_token;

struct pf_tokenizer {
    pf_tokenizer_info info;
    strtab syms;
    pairmap merges;
    int32_t byte_sym[256];     /* bytes_to_unicode(b) */
    int32_t byte_sym_end[256]; /* bytes_to_unicode(b) + "</w>" */
    added_token *added;        /* split out of the text before anything else */
    int n_added;
    uint8_t added_first[32]; /* bitset of the added tokens' first bytes */
};

const pf_tokenizer_info *pf_tokenizer_get_info(const pf_tokenizer *tok) { return &tok->info; }

/* convert_tokens_to_ids for one token string: added tokens, then vocab, then unk. */
static int32_t token_id(const pf_tokenizer *tok, int32_t sym) {
    int32_t v = tok->syms.val[sym];
    return v >= 0 ? v : tok->info.unk_id;
}

void pf_tokenizer_free(pf_tokenizer *tok) {
    if (!tok) return;
    strtab_free(&tok->syms);
    if (tok->merges.keys) pairmap_free(&tok->merges);
    for (int i = 0; i < tok->n_added; i++) free(tok->added[i].text);
    free(tok->added);
    free(tok);
}

/* ------------------------------------------------------------------ UTF-8 */

/* Decodes one strict UTF-8 sequence (no overlongs, surrogates or values past
 * U+10FFFF); returns its length, or 0 if s does not start with one. */
static size_t utf8_decode(const uint8_t *s, size_t n, int32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    int32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) len = 2, v = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, v = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, v = c & 0x07, min = 0x10000;
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

/* Returns the byte offset of the first invalid sequence, or n when s is valid. */
static size_t utf8_invalid_at(const uint8_t *s, size_t n) {
    size_t i = 0;
    int32_t cp;
    while (i < n) {
        size_t k = utf8_decode(s + i, n - i, &cp);
        if (!k) return i;
        i += k;
    }
    return n;
}

/* ------------------------------------------------------------------ Unicode properties */

/* Code points assigned in Unicode 15.0 (utf8proc 2.8) but not in 14.0 (Python
 * 3.11's unicodedata): Python calls them Cn, so BasicTokenizer deletes them. */
static const int32_t unicode15_new[][2] = {
    {0x0CF3, 0x0CF3},   {0x0ECE, 0x0ECE},   {0x10EFD, 0x10EFF}, {0x1123F, 0x11241}, {0x11B00, 0x11B09},
    {0x11F00, 0x11F10}, {0x11F12, 0x11F3A}, {0x11F3E, 0x11F59}, {0x1342F, 0x1342F}, {0x13439, 0x13455},
    {0x1B132, 0x1B132}, {0x1B155, 0x1B155}, {0x1D2C0, 0x1D2D3}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D},
    {0x1E08F, 0x1E08F}, {0x1E4D0, 0x1E4F9}, {0x1F6DC, 0x1F6DC}, {0x1F774, 0x1F776}, {0x1F77B, 0x1F77F},
    {0x1F7D9, 0x1F7D9}, {0x1FA75, 0x1FA77}, {0x1FA87, 0x1FA88}, {0x1FAAD, 0x1FAAF}, {0x1FABB, 0x1FABD},
    {0x1FABF, 0x1FABF}, {0x1FACE, 0x1FACF}, {0x1FADA, 0x1FADB}, {0x1FAE8, 0x1FAE8}, {0x1FAF7, 0x1FAF8},
    {0x2B739, 0x2B739}, {0x31350, 0x323AF},
};

static utf8proc_category_t category14(int32_t cp) {
    if (cp >= 0x0CF3) {
        size_t lo = 0, hi = sizeof unicode15_new / sizeof unicode15_new[0];
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (cp < unicode15_new[mid][0]) hi = mid;
            else if (cp > unicode15_new[mid][1]) lo = mid + 1;
            else return UTF8PROC_CATEGORY_CN;
        }
    }
    return utf8proc_category(cp);
}

static bool is_letter(int32_t cp) {
    utf8proc_category_t c = utf8proc_category(cp);
    return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
}

static bool is_number(int32_t cp) {
    utf8proc_category_t c = utf8proc_category(cp);
    return c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO;
}

/* transformers' _is_control: category C*, except \t \n \r. */
static bool is_control(int32_t cp) {
    if (cp == '\t' || cp == '\n' || cp == '\r') return false;
    utf8proc_category_t c = category14(cp);
    return c == UTF8PROC_CATEGORY_CN || c >= UTF8PROC_CATEGORY_CC;
}

/* BasicTokenizer._is_chinese_char: the CJK ideograph blocks, by code point. */
static bool is_cjk(int32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) ||
           (cp >= 0x2B820 && cp <= 0x2CEAF) || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Unicode Case_Ignorable, for str.lower()'s final sigma: Mn Me Cf Lm Sk and
 * the Word_Break MidLetter, MidNumLet and Single_Quote characters. */
static bool is_case_ignorable(int32_t cp) {
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
        return true;
    default:
        break;
    }
    switch (cp) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018:
    case 0x2019: case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07:
    case 0xFF0E: case 0xFF1A:
        return true;
    default:
        return false;
    }
}

/* Unicode Cased: Lu Ll Lt, anything with a case mapping, Other_Lowercase/Uppercase. */
static bool is_cased(int32_t cp) {
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
           utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp || utf8proc_totitle(cp) != cp ||
           utf8proc_islower(cp) || utf8proc_isupper(cp);
}

/* CPython's handle_capital_sigma: U+03A3 at index i of w lower-cases to final
 * sigma when a cased letter precedes it and none follows (case-ignorable
 * characters skipped both ways). */
static int32_t lower_sigma(const int32_t *w, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && is_case_ignorable(w[j - 1])) j--;
    if (j == 0 || !is_cased(w[j - 1])) return 0x3C3;
    j = i + 1;
    while (j < n && is_case_ignorable(w[j])) j++;
    return j == n || !is_cased(w[j]) ? 0x3C2 : 0x3C3;
}

/* ------------------------------------------------------------------ BPE */

/* Scratch space reused across words and pieces. */
typedef struct work {
    bytevec word;  /* one whitespace-delimited word after cleanup, UTF-8 */
    i32vec cps;    /* the word after NFC */
    i32vec low;    /* after str.lower() */
    bytevec piece; /* one regex match, UTF-8 */
    i32vec sym, next, prev, batch;
    uint64_t *heap;
    size_t heap_n, heap_cap;
    i32vec *out;
    size_t limit;
} work;

static void heap_push(work *w, uint64_t x) {
    if (w->heap_n == w->heap_cap) {
        w->heap_cap = w->heap_cap ? 2 * w->heap_cap : 256;
        w->heap = realloc(w->heap, w->heap_cap * sizeof *w->heap);
        PF_CHECK(w->heap != NULL);
    }
    size_t i = w->heap_n++;
    while (i > 0 && w->heap[(i - 1) / 2] > x) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = x;
}

static uint64_t heap_pop(work *w) {
    uint64_t top = w->heap[0], x = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && w->heap[c + 1] < w->heap[c]) c++;
        if (w->heap[c] >= x) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = x;
    return top;
}

static void push_pair(const pf_tokenizer *tok, work *w, int32_t pos) {
    int32_t q = w->next.v[pos], result;
    if (q < 0) return;
    int32_t r = pairmap_get(&tok->merges, w->sym.v[pos], w->sym.v[q], &result);
    if (r >= 0) heap_push(w, (uint64_t)r << 32 | (uint32_t)pos);
}

/* CLIPTokenizer.bpe on one piece of n >= 1 bytes, appending ids to w->out.
 *
 * bpe() repeatedly takes the lowest-ranked adjacent pair and merges all its
 * occurrences left to right in one pass. The heap holds (rank, position) of
 * adjacent pairs, stale entries skipped when popped. All entries of the lowest
 * rank are taken out as one batch before any is merged, so a lower-ranked pair
 * created by the batch waits until the pass is done, exactly as in bpe(); a
 * batch's merges cannot create its own pair again (the merged symbol is longer
 * than either half). */
static void bpe(const pf_tokenizer *tok, work *w, const uint8_t *b, size_t n) {
    if (n == 1) {
        i32vec_push(w->out, token_id(tok, tok->byte_sym_end[b[0]]));
        return;
    }
    i32vec_reserve(&w->sym, n);
    i32vec_reserve(&w->next, n);
    i32vec_reserve(&w->prev, n);
    int32_t *sym = w->sym.v, *next = w->next.v, *prev = w->prev.v;
    for (size_t i = 0; i < n; i++) {
        sym[i] = i + 1 < n ? tok->byte_sym[b[i]] : tok->byte_sym_end[b[i]];
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        prev[i] = (int32_t)i - 1;
    }
    w->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(tok, w, (int32_t)i);

    i32vec *batch = &w->batch;
    while (w->heap_n) {
        uint32_t rank = (uint32_t)(w->heap[0] >> 32);
        batch->n = 0;
        while (w->heap_n && (uint32_t)(w->heap[0] >> 32) == rank)
            i32vec_push(batch, (int32_t)(uint32_t)heap_pop(w));
        for (size_t k = 0; k < batch->n; k++) {
            int32_t p = batch->v[k], q = next[p], result = -1;
            if (sym[p] < 0 || q < 0) continue; /* p was merged into its left neighbour */
            if (pairmap_get(&tok->merges, sym[p], sym[q], &result) != (int32_t)rank) continue;
            sym[p] = result;
            sym[q] = -1;
            next[p] = next[q];
            if (next[q] >= 0) prev[next[q]] = p;
            if (prev[p] >= 0) push_pair(tok, w, prev[p]);
            push_pair(tok, w, p);
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i]) i32vec_push(w->out, token_id(tok, sym[i]));
}

/* ------------------------------------------------------------------ the CLIP regex */

/* IGNORECASE for the regex's literal letters, on text str.lower() already
 * lower-cased: only U+017F (long s) still folds to an ASCII letter. */
static int32_t fold(int32_t cp) {
    if (cp >= 'A' && cp <= 'Z') return cp + 32;
    return cp == 0x17F ? 's' : cp;
}

static size_t match_literal(const int32_t *s, size_t n, const char *lit) {
    size_t k = strlen(lit);
    if (n < k) return 0;
    for (size_t i = 0; i < k; i++)
        if (fold(s[i]) != lit[i]) return 0;
    return k;
}

/* U+0345 COMBINING GREEK YPOGEGRAMMENI is Mn, but under IGNORECASE the regex
 * module tests [^...\p{L}...] against its case variants too, and it folds to
 * the letter U+03B9: it is neither in [\p{L}] nor in [^\s\p{L}\p{N}], so
 * findall() skips it. The only such character (checked over all code points). */
#define YPOGEGRAMMENI 0x345

/* Length of the regex match at s[0] (n >= 1 code points, no whitespace), 0
 * when findall() finds none there and moves on:
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ */
static size_t match_piece(const int32_t *s, size_t n) {
    static const char *const literals[] = {START_TOKEN, END_TOKEN, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t i = 0; i < sizeof literals / sizeof literals[0]; i++) {
        size_t k = match_literal(s, n, literals[i]);
        if (k) return k;
    }
    if (s[0] == YPOGEGRAMMENI) return 0;
    size_t k = 1;
    if (is_letter(s[0])) {
        while (k < n && is_letter(s[k])) k++;
    } else if (!is_number(s[0])) {
        while (k < n && !is_letter(s[k]) && !is_number(s[k]) && s[k] != YPOGEGRAMMENI) k++;
    }
    return k;
}

/* One regex match: its UTF-8 through bytes_to_unicode and BPE, except the two
 * literal special tokens, which CLIPTokenizer's cache maps to themselves. */
static void emit_piece(const pf_tokenizer *tok, work *w, const int32_t *s, size_t n) {
    w->piece.n = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t buf[4];
        bytevec_append(&w->piece, buf, (size_t)utf8proc_encode_char(s[i], buf));
    }
    const char *p = (const char *)w->piece.v;
    if ((w->piece.n == strlen(START_TOKEN) && !memcmp(p, START_TOKEN, w->piece.n)) ||
        (w->piece.n == strlen(END_TOKEN) && !memcmp(p, END_TOKEN, w->piece.n))) {
        int32_t sym = strtab_find(&tok->syms, p, w->piece.n);
        i32vec_push(w->out, sym >= 0 ? token_id(tok, sym) : tok->info.unk_id);
        return;
    }
    bpe(tok, w, w->piece.v, w->piece.n);
}

/* ------------------------------------------------------------------ BasicTokenizer */

/* One word (whitespace-delimited, cleaned, UTF-8 in w->word): NFC, lower(),
 * regex, BPE. Returns true once w->limit ids exist. */
static bool flush_word(const pf_tokenizer *tok, work *w) {
    if (!w->word.n) return w->out->n >= w->limit;
    /* NFC never joins across a space (a space composes with nothing and is a
     * starter), so normalising word by word equals normalising the text. */
    utf8proc_ssize_t n;
    for (;;) {
        n = utf8proc_decompose(w->word.v, (utf8proc_ssize_t)w->word.n, w->cps.v, (utf8proc_ssize_t)w->cps.cap,
                               NORM_OPTIONS);
        PF_CHECK(n >= 0); /* the text was validated as UTF-8 */
        if ((size_t)n <= w->cps.cap) break;
        i32vec_reserve(&w->cps, (size_t)n);
    }
    n = utf8proc_normalize_utf32(w->cps.v, n, NORM_OPTIONS);
    PF_CHECK(n >= 0);
    w->word.n = 0;

    const int32_t *c = w->cps.v;
    w->low.n = 0;
    for (size_t i = 0; i < (size_t)n; i++) {
        if (c[i] == 0x130) { /* the one full lower-case mapping: SpecialCasing.txt */
            i32vec_push(&w->low, 'i');
            i32vec_push(&w->low, 0x307);
        } else if (c[i] == 0x3A3) {
            i32vec_push(&w->low, lower_sigma(c, (size_t)n, i));
        } else {
            i32vec_push(&w->low, utf8proc_tolower(c[i]));
        }
    }
    for (size_t i = 0; i < w->low.n;) {
        size_t k = match_piece(w->low.v + i, w->low.n - i);
        if (!k) {
            i++;
            continue;
        }
        emit_piece(tok, w, w->low.v + i, k);
        if (w->out->n >= w->limit) return true;
        i += k;
    }
    return false;
}

/* A stretch of text free of added tokens: _clean_text, _tokenize_chinese_chars
 * and the whitespace split, one code point at a time. */
static bool tokenize_chunk(const pf_tokenizer *tok, work *w, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int32_t cp;
        size_t k = utf8_decode(s + i, n - i, &cp);
        PF_CHECK(k > 0);
        if (cp == 0 || cp == 0xFFFD || is_control(cp)) {
            /* dropped */
        } else if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r' ||
                   utf8proc_category(cp) == UTF8PROC_CATEGORY_ZS || cp == 0x2028 || cp == 0x2029) {
            /* Zs and \t\n\r became spaces; str.split() also splits at U+2028/9 */
            if (flush_word(tok, w)) return true;
        } else if (is_cjk(cp)) {
            if (flush_word(tok, w)) return true;
            bytevec_append(&w->word, s + i, k);
            if (flush_word(tok, w)) return true;
        } else {
            bytevec_append(&w->word, s + i, k);
        }
        i += k;
    }
    return flush_word(tok, w);
}

/* Tokenizes text, stopping once out holds limit ids (SIZE_MAX: never). */
static int tokenize_limited(const pf_tokenizer *tok, const char *text, i32vec *out, size_t limit, pf_error *err) {
    const uint8_t *s = (const uint8_t *)text;
    size_t n = strlen(text);
    size_t bad = utf8_invalid_at(s, n);
    if (bad < n) return pf_fail(err, "text is not valid UTF-8 (byte 0x%02x at offset %zu)", s[bad], bad);
    if (n > INT32_MAX / 2) return pf_fail(err, "text too long (%zu bytes)", n);

    work w = {.out = out, .limit = limit};
    bool done = false;
    size_t start = 0;
    for (size_t i = 0; i < n && !done;) {
        /* PreTrainedTokenizer.tokenize: the earliest, then longest, added token */
        const added_token *best = NULL;
        if (tok->added_first[s[i] >> 3] & (1u << (s[i] & 7)))
            for (int a = 0; a < tok->n_added; a++) {
                const added_token *t = &tok->added[a];
                if (t->len <= n - i && (!best || t->len > best->len) && !memcmp(s + i, t->text, t->len)) best = t;
            }
        if (!best) {
            i++;
            continue;
        }
        done = tokenize_chunk(tok, &w, s + start, i - start);
        if (!done) {
            i32vec_push(out, best->id);
            done = out->n >= limit;
        }
        i += best->len;
        start = i;
    }
    if (!done) tokenize_chunk(tok, &w, s + start, n - start);
    free(w.word.v);
    free(w.cps.v);
    free(w.low.v);
    free(w.piece.v);
    free(w.sym.v);
    free(w.next.v);
    free(w.prev.v);
    free(w.batch.v);
    free(w.heap);
    return 0;
}

int pf_tokenizer_tokenize(const pf_tokenizer *tok, const char *text, int32_t **ids_out, size_t *n_out,
                          pf_error *err) {
    i32vec out = {0};
    *ids_out = NULL;
    *n_out = 0;
    if (tokenize_limited(tok, text, &out, SIZE_MAX, err)) {
        free(out.v);
        return -1;
    }
    i32vec_reserve(&out, 1);
    *ids_out = out.v;
    *n_out = out.n;
    return 0;
}

int pf_tokenizer_encode(const pf_tokenizer *tok, const char *text, int32_t *ids, int max_length, pf_error *err) {
    if (max_length < 2) return pf_fail(err, "max_length %d leaves no room for the start and end tokens", max_length);
    i32vec out = {0};
    size_t keep = (size_t)max_length - 2;
    if (tokenize_limited(tok, text, &out, keep, err)) {
        free(out.v);
        return -1;
    }
    if (out.n > keep) out.n = keep;
    ids[0] = tok->info.bos_id;
    for (size_t i = 0; i < out.n; i++) ids[1 + i] = out.v[i];
    ids[1 + out.n] = tok->info.eos_id;
    for (size_t i = out.n + 2; i < (size_t)max_length; i++) ids[i] = tok->info.pad_id;
    free(out.v);
    return 0;
}

/* ------------------------------------------------------------------ loading */

static char *read_file(const char *path, size_t *n_out, pf_error *err) {
    char *text;
    return pf_read_text_file(&text, n_out, path, err) ? NULL : text; /* capped: pf_text_limit */
}

static int load_vocab(pf_tokenizer *tok, const char *path, pf_error *err) {
    size_t n;
    char *text = read_file(path, &n, err);
    if (!text) return -1;
    json_error_t je;
    json_t *root = json_loadb(text, n, 0, &je);
    free(text);
    if (!root) return pf_fail(err, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return pf_fail(err, "%s: expected a JSON object of token -> id", path);
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id > INT32_MAX / 2) {
            pf_fail(err, "%s: token \"%.80s\": id must be an integer in [0, %d]", path, key, INT32_MAX / 2);
            json_decref(root);
            return -1;
        }
        int32_t s = strtab_intern(&tok->syms, key, strlen(key));
        tok->syms.val[s] = (int32_t)id;
    }
    tok->info.vocab_size = (int)json_object_size(root);
    json_decref(root);
    if (!tok->info.vocab_size) return pf_fail(err, "%s: empty vocabulary", path);
    return 0;
}

static bool is_ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\v' || c == '\f' || (c >= 0x1c && c <= 0x1f);
}

/* merges.txt as CLIPTokenizer reads it: text.strip().split("\n")[1:MAX_MERGES + 1],
 * the first line (the "#version" header) skipped whatever it says, each line
 * two symbols. \r\n and \r end lines too (Python's universal newlines). */
static int load_merges(pf_tokenizer *tok, const char *path, pf_error *err) {
    size_t n;
    char *text = read_file(path, &n, err);
    if (!text) return -1;
    size_t bad = utf8_invalid_at((const uint8_t *)text, n);
    if (bad < n) {
        int line = 1;
        for (size_t i = 0; i < bad; i++) line += text[i] == '\n' || (text[i] == '\r' && text[i + 1] != '\n');
        free(text);
        return pf_fail(err, "%s:%d: not valid UTF-8", path, line);
    }
    size_t end = n, i = 0;
    while (end > 0 && (is_ascii_space(text[end - 1]) || text[end - 1] == '\n' || text[end - 1] == '\r')) end--;
    int line = 1;
    while (i < end && (is_ascii_space(text[i]) || text[i] == '\n' || text[i] == '\r')) {
        if (text[i] == '\n' || (text[i] == '\r' && text[i + 1] != '\n')) line++;
        i++;
    }
    pairmap_init(&tok->merges, MAX_MERGES);
    bytevec joined = {0};
    int rank = -1; /* the first line is the header */
    while (i < end && rank < MAX_MERGES) {
        size_t eol = i;
        while (eol < end && text[eol] != '\n' && text[eol] != '\r') eol++;
        if (rank >= 0) {
            const char *f[3];
            size_t flen[3];
            int nf = 0;
            for (size_t j = i; j < eol;) {
                while (j < eol && is_ascii_space(text[j])) j++;
                if (j == eol) break;
                size_t k = j;
                while (k < eol && !is_ascii_space(text[k])) k++;
                if (nf < 3) f[nf] = text + j, flen[nf] = k - j;
                nf++;
                j = k;
            }
            if (nf != 2) {
                free(joined.v);
                free(text);
                return pf_fail(err, "%s:%d: expected two space-separated symbols, found %d", path, line, nf);
            }
            joined.n = 0;
            bytevec_append(&joined, f[0], flen[0]);
            bytevec_append(&joined, f[1], flen[1]);
            int32_t a = strtab_intern(&tok->syms, f[0], flen[0]);
            int32_t b = strtab_intern(&tok->syms, f[1], flen[1]);
            int32_t ab = strtab_intern(&tok->syms, (const char *)joined.v, joined.n);
            pairmap_put(&tok->merges, a, b, rank, ab);
        }
        rank++;
        i = eol;
        if (i < end && text[i] == '\r' && text[i + 1] == '\n') i++;
        if (i < end) i++;
        line++;
    }
    free(joined.v);
    free(text);
    if (rank <= 0) return pf_fail(err, "%s: no merges", path);
    return 0;
}

/* A special token in a config file: "text" or {"content": "text", ...}. */
static int token_text(const char **out, json_t *v, const char *key, const char *path, pf_error *err) {
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v) || !json_string_length(v))
        return pf_fail(err, "%s: %s must be a non-empty string or an object with \"content\"", path, key);
    *out = json_string_value(v);
    return 0;
}

/* Reads an optional JSON object file; *out NULL when it does not exist. */
static int load_optional_json(json_t **out, const char *path, pf_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    json_error_t je;
    char *text;
    size_t len;
    if (pf_read_text_file(&text, &len, path, err)) return -1; /* capped: pf_text_limit */
    /* INT_AS_REAL: transformers writes model_max_length 1e30 as an integer too big for jansson */
    json_t *root = json_loadb(text, len, JSON_DECODE_INT_AS_REAL, &je);
    free(text);
    if (!root) return pf_fail(err, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return pf_fail(err, "%s: expected a JSON object", path);
    }
    *out = root;
    return 0;
}

static void add_token(pf_tokenizer *tok, const char *text, int32_t id) {
    size_t len = strlen(text);
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == len && !memcmp(tok->added[i].text, text, len)) return; /* first id wins */
    tok->added = realloc(tok->added, (size_t)(tok->n_added + 1) * sizeof *tok->added);
    PF_CHECK(tok->added != NULL);
    tok->added[tok->n_added++] = (added_token){PF_STRDUP(text), len, id};
    tok->added_first[(uint8_t)text[0] >> 3] |= (uint8_t)(1u << ((uint8_t)text[0] & 7));
    /* convert_tokens_to_ids looks in the added tokens before the vocabulary */
    tok->syms.val[strtab_intern(&tok->syms, text, len)] = id;
}

/* Special and added tokens, as PreTrainedTokenizerBase.from_pretrained resolves
 * them: tokenizer_config.json's added_tokens_decoder when present; otherwise
 * (the legacy layout of SD-1.x/2.x repos) special_tokens_map.json overrides
 * the config's special tokens. A special token not yet added gets its
 * vocabulary id. rstrip/lstrip/single_word flags are not supported (CLIP's
 * tokens have them all false). */
static int load_config(pf_tokenizer *tok, const char *dir, pf_error *err) {
    static const char *const keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    const char *special[4] = {START_TOKEN, END_TOKEN, END_TOKEN, END_TOKEN};
    char cfg_path[4096], map_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/tokenizer_config.json", dir);
    snprintf(map_path, sizeof map_path, "%s/special_tokens_map.json", dir);
    json_t *cfg, *map = NULL;
    if (load_optional_json(&cfg, cfg_path, err)) return -1;
    int rc = -1;
    json_t *decoder = cfg ? json_object_get(cfg, "added_tokens_decoder") : NULL;
    if (!decoder && load_optional_json(&map, map_path, err)) goto out;

    tok->info.model_max_length = DEFAULT_MAX_LENGTH;
    json_t *mml = cfg ? json_object_get(cfg, "model_max_length") : NULL;
    /* transformers' VERY_LARGE_INTEGER (1e30) means "unset" */
    if (json_is_number(mml) && json_number_value(mml) >= 2 && json_number_value(mml) <= 1 << 20)
        tok->info.model_max_length = (int)json_number_value(mml);

    for (int k = 0; k < 4; k++) {
        json_t *v = cfg ? json_object_get(cfg, keys[k]) : NULL;
        const char *where = cfg_path;
        json_t *mv = map ? json_object_get(map, keys[k]) : NULL;
        if (mv) v = mv, where = map_path;
        if (v && token_text(&special[k], v, keys[k], where, err)) goto out;
    }
    if (decoder) {
        if (!json_is_object(decoder)) {
            pf_fail(err, "%s: added_tokens_decoder must be an object", cfg_path);
            goto out;
        }
        const char *key;
        json_t *val;
        json_object_foreach(decoder, key, val) {
            char *endp;
            long id = strtol(key, &endp, 10);
            const char *text;
            if (!*key || *endp || id < 0 || id > INT32_MAX / 2) {
                pf_fail(err, "%s: added_tokens_decoder key \"%.40s\" is not a token id", cfg_path, key);
                goto out;
            }
            if (token_text(&text, val, "added_tokens_decoder entry", cfg_path, err)) goto out;
            add_token(tok, text, (int32_t)id);
        }
    }
    int32_t ids[4];
    for (int k = 0; k < 4; k++) {
        int32_t s = strtab_find(&tok->syms, special[k], strlen(special[k]));
        if (s < 0 || tok->syms.val[s] < 0) {
            pf_fail(err, "%s/vocab.json: %s \"%.80s\" is not in the vocabulary", dir, keys[k], special[k]);
            goto out;
        }
        ids[k] = tok->syms.val[s];
        add_token(tok, special[k], ids[k]);
    }
    tok->info.bos_id = ids[0];
    tok->info.eos_id = ids[1];
    tok->info.unk_id = ids[2];
    tok->info.pad_id = ids[3];
    rc = 0;
out:
    json_decref(cfg);
    json_decref(map);
    return rc;
}

/* bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other
 * 68 bytes for U+0100 onwards in byte order. */
static void load_byte_symbols(pf_tokenizer *tok) {
    int next = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int32_t cp = printable ? b : 256 + next++;
        char s[16];
        size_t k = (size_t)utf8proc_encode_char(cp, (uint8_t *)s);
        tok->byte_sym[b] = strtab_intern(&tok->syms, s, k);
        memcpy(s + k, "</w>", 4);
        tok->byte_sym_end[b] = strtab_intern(&tok->syms, s, k + 4);
    }
}

int pf_tokenizer_load(pf_tokenizer **out, const char *dir, pf_error *err) {
    *out = NULL;
    pf_tokenizer *tok = PF_CALLOC(1, sizeof *tok);
    char path[4096];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if (load_vocab(tok, path, err)) goto fail;
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (load_merges(tok, path, err)) goto fail;
    load_byte_symbols(tok);
    if (load_config(tok, dir, err)) goto fail;
    *out = tok;
    return 0;
fail:
    pf_tokenizer_free(tok);
    return -1;
}
