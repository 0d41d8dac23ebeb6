/* safetensors.c - validating reader and atomic writer for .safetensors files.
 *
 * The file is untrusted: a checkpoint downloaded from anywhere. pf_st_parse
 * checks everything the accessors later rely on (header bounds, JSON shape,
 * dtypes, shapes, overflow-free byte spans inside the data buffer, no overlap),
 * so that pf_st_read_f32 needs no checks of its own. Anything taken from the
 * file and put into an error message goes through quote() first, because the
 * CLI promises one line per error and a tensor name may hold "\n" or worse.
 *
 * Deliberate differences from the reference implementation: gaps between
 * tensors and unused bytes at the end of the data buffer are accepted (the
 * reference rejects them; they are harmless to a reader), and the header is
 * capped at PF_ST_MAX_HEADER (100 MiB rather than 100 MB). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [PF_ST_F32] = {"F32", 4},         [PF_ST_F16] = {"F16", 2},   [PF_ST_BF16] = {"BF16", 2},
    [PF_ST_F64] = {"F64", 8},         [PF_ST_I64] = {"I64", 8},   [PF_ST_I32] = {"I32", 4},
    [PF_ST_I16] = {"I16", 2},         [PF_ST_I8] = {"I8", 1},     [PF_ST_U8] = {"U8", 1},
    [PF_ST_BOOL] = {"BOOL", 1},       [PF_ST_U16] = {"U16", 2},   [PF_ST_U32] = {"U32", 4},
    [PF_ST_U64] = {"U64", 8},         [PF_ST_F8_E4M3] = {"F8_E4M3", 1},
    [PF_ST_F8_E5M2] = {"F8_E5M2", 1},
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

const char *pf_st_dtype_name(pf_st_dtype dt) {
    return (int)dt >= 0 && (int)dt < N_DTYPES ? dtypes[dt].name : "?";
}

int64_t pf_st_numel(const pf_st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* ---------------------------------------------------------------- messages */

/* Copies s into buf (n bytes) as a one-line printable string: control bytes
 * and DEL become \xNN; so do bytes >= 0x80 unless flags has KEEP_UTF8 (names
 * are valid UTF-8, jansson's error text may quote anything); with QUOTED,
 * quotes and backslashes are escaped for use between "". Long strings are cut
 * with "...": a 100 MB name must not become a 100 MB message. Returns buf. */
enum { KEEP_UTF8 = 1, QUOTED = 2 };
static const char *quote_bytes(char *buf, size_t n, const char *s, int flags) {
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (o + 8 >= n) {
            if (flags & KEEP_UTF8) { /* cut between characters */
                while (o > 0 && ((unsigned char)buf[o - 1] & 0xc0) == 0x80) o--;
                if (o > 0 && (unsigned char)buf[o - 1] >= 0xc0) o--;
            }
            memcpy(buf + o, "...", 4);
            return buf;
        }
        unsigned c = *p;
        if ((flags & QUOTED) && (c == '"' || c == '\\')) {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !(flags & KEEP_UTF8))) {
            o += (size_t)snprintf(buf + o, n - o, "\\x%02x", c);
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o] = '\0';
    return buf;
}

/* Quoted name for messages; a handful of rotating buffers so that one
 * pf_fail can quote two names. */
static const char *quote(const char *s) {
    static _Thread_local char bufs[4][160];
    static _Thread_local int which;
    return quote_bytes(bufs[which++ & 3], sizeof bufs[0], s, KEEP_UTF8 | QUOTED);
}

const char *pf_st_quote(const char *s) { return quote(s); }

/* --------------------------------------------------------------- parsing */

void pf_st_close(pf_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->count; i++) free(st->tensors[i].name);
    for (int i = 0; i < st->meta_count; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->tensors);
    free(st->meta_keys);
    free(st->meta_values);
    if (st->map) munmap((void *)st->map, st->map_size);
    free(st->path);
    free(st);
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const pf_st_tensor *)a)->name, ((const pf_st_tensor *)b)->name);
}

static int by_span(const void *a, const void *b) {
    const pf_st_tensor *x = *(const pf_st_tensor *const *)a, *y = *(const pf_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int parse_metadata(pf_safetensors *st, json_t *meta, pf_error *err) {
    if (!json_is_object(meta))
        return pf_fail(err, "%s: __metadata__ is not an object of string values", st->path);
    size_t n = json_object_size(meta);
    st->meta_keys = PF_CALLOC(n, sizeof *st->meta_keys);
    st->meta_values = PF_CALLOC(n, sizeof *st->meta_values);
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return pf_fail(err, "%s: __metadata__ \"%s\" is not a string", st->path, quote(key));
        st->meta_keys[st->meta_count] = PF_STRDUP(key);
        st->meta_values[st->meta_count] = PF_STRDUP(json_string_value(value));
        st->meta_count++;
    }
    return 0;
}

static int parse_dtype(pf_st_tensor *t, const char *path, json_t *v, pf_error *err) {
    if (!json_is_string(v))
        return pf_fail(err, "%s: tensor \"%s\": dtype is not a string", path, quote(t->name));
    const char *s = json_string_value(v);
    for (int i = 0; i < N_DTYPES; i++)
        if (!strcmp(s, dtypes[i].name)) {
            t->dtype = (pf_st_dtype)i;
            return 0;
        }
    return pf_fail(err, "%s: tensor \"%s\": unknown dtype \"%s\"", path, quote(t->name), quote(s));
}

static int parse_shape(pf_st_tensor *t, const char *path, json_t *v, pf_error *err) {
    if (!json_is_array(v))
        return pf_fail(err, "%s: tensor \"%s\": shape is not an array", path, quote(t->name));
    size_t ndim = json_array_size(v);
    if (ndim > PF_MAX_DIMS)
        return pf_fail(err, "%s: tensor \"%s\": shape has %zu dimensions, more than the %d supported",
                       path, quote(t->name), ndim, PF_MAX_DIMS);
    t->ndim = (int)ndim;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(v, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return pf_fail(err, "%s: tensor \"%s\": shape[%d] is not a non-negative integer", path,
                           quote(t->name), i);
        t->shape[i] = json_integer_value(d);
    }
    return 0;
}

static int parse_offsets(pf_st_tensor *t, const char *path, size_t data_size, json_t *v,
                         pf_error *err) {
    json_t *b = json_array_get(v, 0), *e = json_array_get(v, 1);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(b) || !json_is_integer(e) ||
        json_integer_value(b) < 0 || json_integer_value(e) < 0)
        return pf_fail(err, "%s: tensor \"%s\": data_offsets is not [begin, end] of non-negative integers",
                       path, quote(t->name));
    json_int_t begin = json_integer_value(b), end = json_integer_value(e);
    if (end < begin)
        return pf_fail(err, "%s: tensor \"%s\": data_offsets [%lld, %lld] end before begin", path,
                       quote(t->name), (long long)begin, (long long)end);
    if ((unsigned long long)end > data_size)
        return pf_fail(err, "%s: tensor \"%s\": data_offsets [%lld, %lld] past the end of the data buffer (%zu bytes)",
                       path, quote(t->name), (long long)begin, (long long)end, data_size);
    t->begin = (size_t)begin;
    t->end = (size_t)end;

    /* numel * dtype size must equal the span. Bounded by INT64_MAX, not
     * UINT64_MAX, so that pf_st_numel's int64 product cannot overflow either. */
    uint64_t bytes = dtypes[t->dtype].size;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d = (uint64_t)t->shape[i];
        if (d && bytes > (uint64_t)INT64_MAX / d) {
            char sh[128];
            return pf_fail(err, "%s: tensor \"%s\": shape %s x %s overflows the element count", path,
                           quote(t->name), pf_shape_str_raw(t->ndim, t->shape, sh, sizeof sh),
                           dtypes[t->dtype].name);
        }
        bytes *= d;
    }
    if (bytes != t->end - t->begin) {
        char sh[128];
        return pf_fail(err, "%s: tensor \"%s\": shape %s x %s is %llu bytes but data_offsets [%zu, %zu] span %zu bytes",
                       path, quote(t->name), pf_shape_str_raw(t->ndim, t->shape, sh, sizeof sh),
                       dtypes[t->dtype].name, (unsigned long long)bytes, t->begin, t->end,
                       t->end - t->begin);
    }
    return 0;
}

/* Fills t from one header entry {"dtype", "shape", "data_offsets"}. */
static int parse_tensor(pf_st_tensor *t, const char *path, size_t data_size, json_t *entry,
                        pf_error *err) {
    if (!json_is_object(entry))
        return pf_fail(err, "%s: tensor \"%s\": entry is not an object", path, quote(t->name));
    const char *key;
    json_t *value;
    json_object_foreach(entry, key, value) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return pf_fail(err, "%s: tensor \"%s\": unknown key \"%s\"", path, quote(t->name),
                           quote(key));
    }
    static const char *const required[] = {"dtype", "shape", "data_offsets"};
    for (int i = 0; i < 3; i++)
        if (!json_object_get(entry, required[i]))
            return pf_fail(err, "%s: tensor \"%s\": missing \"%s\"", path, quote(t->name), required[i]);
    /* Order matters: the span check in parse_offsets needs dtype and shape. */
    if (parse_dtype(t, path, json_object_get(entry, "dtype"), err)) return -1;
    if (parse_shape(t, path, json_object_get(entry, "shape"), err)) return -1;
    return parse_offsets(t, path, data_size, json_object_get(entry, "data_offsets"), err);
}

/* Validates the JSON header (root) against a data buffer of st->data_size bytes. */
static int parse_header(pf_safetensors *st, json_t *root, pf_error *err) {
    if (!json_is_object(root)) return pf_fail(err, "%s: header is not a JSON object", st->path);
    size_t n = json_object_size(root);
    st->tensors = PF_CALLOC(n, sizeof *st->tensors);
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (!strcmp(key, "__metadata__")) {
            if (parse_metadata(st, value, err)) return -1;
            continue;
        }
        if (!*key) return pf_fail(err, "%s: tensor with an empty name", st->path);
        pf_st_tensor *t = &st->tensors[st->count++];
        t->name = PF_STRDUP(key);
        if (parse_tensor(t, st->path, st->data_size, value, err)) return -1;
    }

    qsort(st->tensors, (size_t)st->count, sizeof *st->tensors, by_name);
    for (int i = 1; i < st->count; i++) /* JSON_REJECT_DUPLICATES makes this unreachable */
        PF_CHECK(strcmp(st->tensors[i - 1].name, st->tensors[i].name) != 0);

    /* Overlap: in order of begin, each span must start at or after the end of
     * the one before (which, spans being disjoint so far, is the furthest end). */
    int ok = 0;
    const pf_st_tensor **span = PF_CALLOC((size_t)st->count, sizeof *span);
    for (int i = 0; i < st->count; i++) span[i] = &st->tensors[i];
    qsort(span, (size_t)st->count, sizeof *span, by_span);
    for (int i = 1; i < st->count && ok == 0; i++)
        if (span[i]->begin < span[i - 1]->end)
            ok = pf_fail(err, "%s: tensors \"%s\" [%zu, %zu] and \"%s\" [%zu, %zu] overlap", st->path,
                         quote(span[i - 1]->name), span[i - 1]->begin, span[i - 1]->end,
                         quote(span[i]->name), span[i]->begin, span[i]->end);
    free(span);
    return ok;
}

int pf_st_parse(pf_safetensors **out, const uint8_t *buf, size_t size, const char *name,
                pf_error *err) {
    *out = NULL;
    if (!name) name = "<memory>";
    if (size == 0) return pf_fail(err, "%s: empty file", name);
    if (size < 8)
        return pf_fail(err, "%s: file is %zu bytes, too short for the 8-byte header length", name, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    /* the spec's 100 MiB, or less: the cap on every JSON the engine reads */
    const uint64_t hmax = pf_text_limit() < PF_ST_MAX_HEADER ? pf_text_limit() : PF_ST_MAX_HEADER;
    if (hlen > hmax)
        return pf_fail(err, "%s: header length %llu exceeds the limit of %llu bytes (PERFLOW_MAX_JSON_BYTES)", name,
                       (unsigned long long)hlen, (unsigned long long)hmax);
    if (hlen > size - 8)
        return pf_fail(err, "%s: header length %llu runs past the end of the file (%zu bytes)", name,
                       (unsigned long long)hlen, size);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        char text[200];
        quote_bytes(text, sizeof text, jerr.text, 0);
        if (json_error_code(&jerr) == json_error_invalid_utf8)
            return pf_fail(err, "%s: header is not valid UTF-8 (%s, at byte %d)", name, text,
                           jerr.position);
        return pf_fail(err, "%s: header is not valid JSON (%s, at byte %d)", name, text, jerr.position);
    }

    pf_safetensors *st = PF_CALLOC(1, sizeof *st);
    st->path = PF_STRDUP(name);
    st->data = buf + 8 + hlen;
    st->data_size = size - 8 - (size_t)hlen;
    int rc = parse_header(st, root, err);
    json_decref(root);
    if (rc) {
        pf_st_close(st);
        return -1;
    }
    *out = st;
    return 0;
}

int pf_st_open(pf_safetensors **out, const char *path, pf_error *err) {
    *out = NULL;
    /* O_NONBLOCK so that a FIFO passed by mistake fails below instead of
     * blocking the open; it changes nothing for a regular file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return pf_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int e = errno;
        close(fd);
        return pf_fail(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return pf_fail(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size >= 8) { /* mmap of 0 bytes fails; short files fail in pf_st_parse */
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return pf_fail(err, "%s: cannot map %zu bytes: %s", path, size, strerror(e));
        }
    }
    close(fd); /* the mapping keeps the file */
    static const uint8_t none[1];
    if (pf_st_parse(out, map ? map : none, map ? size : (size_t)sb.st_size, path, err)) {
        if (map) munmap(map, size);
        return -1;
    }
    (*out)->map = map;
    (*out)->map_size = size;
    return 0;
}

/* ---------------------------------------------------------------- access */

const pf_st_tensor *pf_st_find(const pf_safetensors *st, const char *name) {
    pf_st_tensor key = {.name = (char *)name};
    return bsearch(&key, st->tensors, (size_t)st->count, sizeof key, by_name);
}

const char *pf_st_meta(const pf_safetensors *st, const char *key) {
    for (int i = 0; i < st->meta_count; i++)
        if (!strcmp(st->meta_keys[i], key)) return st->meta_values[i];
    return NULL;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* float16 to float32 with the F16C instruction, 8 values at a time, the chunks
 * spread over the OpenMP threads: a checkpoint's worth of float16 weights
 * (a billion values for SD-1.5) is the bulk of a single-file load. Exact, as
 * every float16 is a float32; src may have any alignment (loadu). */
__attribute__((target("f16c,avx"))) static void f16c_run(float *dst, const uint8_t *src, size_t i, size_t end) {
    for (; i + 8 <= end; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    for (; i < end; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        pf_convert_to_f32(dst + i, &h, PF_F16, 1);
    }
}

/* The OpenMP region stays outside the target("f16c") function: an outlined
 * parallel body would not inherit the attribute. */
static void f16_to_f32_f16c(float *dst, const uint8_t *src, size_t n) {
    const size_t chunk = 1 << 16;
#pragma omp parallel for schedule(static) if (n > 4 * chunk)
    for (size_t c = 0; c < (n + chunk - 1) / chunk; c++)
        f16c_run(dst, src, c * chunk, c * chunk + chunk < n ? c * chunk + chunk : n);
}
#endif

static int read_f32_range(const pf_safetensors *st, const pf_st_tensor *t, int64_t first, int64_t count, float *dst,
                          pf_error *err);

/* After a read of bytes [at, at + len) of a mapped file: the whole pages inside
 * go back to the page cache (out of this process's resident set). A model's
 * weights are copied into tensors once; without this, the mapping kept every
 * page it had read until the file was closed, and loading peaked at twice the
 * weights' size. A later read of the same bytes faults them in again. Memory
 * that is not a file mapping (pf_st_parse of a buffer) is left alone. */
static void release_pages(const pf_safetensors *st, const uint8_t *at, size_t len) {
    if (!st->map || len == 0) return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)at + page - 1) & ~(page - 1), hi = ((uintptr_t)at + len) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

int pf_st_read_f32_range(const pf_safetensors *st, const pf_st_tensor *t, int64_t first, int64_t count, float *dst,
                         pf_error *err) {
    int rc = read_f32_range(st, t, first, count, dst, err);
    if (rc == 0) {
        size_t es = t->dtype == PF_ST_F32 ? 4 : 2;
        release_pages(st, st->data + t->begin + es * (size_t)first, es * (size_t)count);
    }
    return rc;
}

static int read_f32_range(const pf_safetensors *st, const pf_st_tensor *t, int64_t first, int64_t count, float *dst,
                          pf_error *err) {
    PF_CHECK(t >= st->tensors && t < st->tensors + st->count);
    PF_CHECK(first >= 0 && count >= 0 && first + count <= pf_st_numel(t));
    size_t n = (size_t)count;
    switch (t->dtype) {
    case PF_ST_F32: memcpy(dst, st->data + t->begin + 4 * (size_t)first, n * 4); return 0;
    case PF_ST_F16:
#if defined(__x86_64__) && defined(__GNUC__)
        /* every x86 CPU with AVX2 has F16C (clang's builtin knows no "f16c") */
        if (__builtin_cpu_supports("avx2")) {
            f16_to_f32_f16c(dst, st->data + t->begin + 2 * (size_t)first, n);
            return 0;
        }
#endif
        /* fall through */
    case PF_ST_BF16: {
        /* The span may start at any byte (the header length is the file's
         * choice), so 16-bit values go through an aligned bounce buffer. */
        const uint8_t *src = st->data + t->begin + 2 * (size_t)first;
        pf_dtype dt = t->dtype == PF_ST_F16 ? PF_F16 : PF_BF16;
        uint16_t tmp[2048];
        for (size_t i = 0; i < n; i += 2048) {
            size_t k = n - i < 2048 ? n - i : 2048;
            memcpy(tmp, src + 2 * i, 2 * k);
            pf_convert_to_f32(dst + i, tmp, dt, k);
        }
        return 0;
    }
    default:
        return pf_fail(err, "%s: tensor \"%s\" has dtype %s, which cannot be read as float32 (only F32, F16, BF16)",
                       st->path, quote(t->name), dtypes[t->dtype].name);
    }
}

int pf_st_read_f32(const pf_safetensors *st, const pf_st_tensor *t, float *dst, pf_error *err) {
    return pf_st_read_f32_range(st, t, 0, pf_st_numel(t), dst, err);
}

/* --------------------------------------------------------------- writing */

/* Data order: wider dtypes first, then by name, as the reference writer does,
 * so that every tensor starts aligned to its element size. */
static int by_layout(const void *a, const void *b) {
    const pf_st_entry *x = *(const pf_st_entry *const *)a, *y = *(const pf_st_entry *const *)b;
    size_t sx = pf_dtype_size(x->dtype), sy = pf_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Builds the header JSON for entries in data order; fills bytes[i] for each.
 * Entries come from the program, but a bad name or shape is still reported
 * as an error rather than an abort: it may have come from a file's keys. */
static json_t *make_header(const char *path, const pf_st_entry *const *order, int count,
                           const char *const *meta, size_t *bytes, pf_error *err) {
    char q[160];
    json_t *root = json_object();
    if (meta) {
        json_t *m = json_object();
        json_object_set_new(root, "__metadata__", m);
        for (int i = 0; meta[i]; i += 2) {
            json_t *v = meta[i + 1] ? json_string(meta[i + 1]) : NULL;
            if (!v || json_object_set_new(m, meta[i], v)) {
                json_decref(root);
                pf_fail(err, "%s: metadata \"%s\" is not a valid UTF-8 key/value pair", path,
                        quote_bytes(q, sizeof q, meta[i], QUOTED));
                return NULL;
            }
        }
    }
    size_t offset = 0;
    for (int i = 0; i < count; i++) {
        const pf_st_entry *e = order[i];
        const char *problem = NULL;
        uint64_t n = pf_dtype_size(e->dtype);
        if (!e->name || !*e->name) problem = "has an empty name";
        else if (!strcmp(e->name, "__metadata__")) problem = "uses the reserved name __metadata__";
        else if (json_object_get(root, e->name)) problem = "appears twice";
        else if (e->ndim < 0 || e->ndim > PF_MAX_DIMS) problem = "has an unsupported number of dimensions";
        for (int d = 0; !problem && d < e->ndim; d++) {
            if (e->shape[d] < 0) problem = "has a negative dimension";
            else if (e->shape[d] && n > (uint64_t)INT64_MAX / (uint64_t)e->shape[d]) problem = "is too large";
            else n *= (uint64_t)e->shape[d];
        }
        if (!problem) {
            PF_CHECK(e->data || n == 0);
            json_t *shape = json_array();
            for (int d = 0; d < e->ndim; d++) json_array_append_new(shape, json_integer(e->shape[d]));
            json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", pf_dtype_name(e->dtype), "shape",
                                      shape, "data_offsets", (json_int_t)offset, (json_int_t)(offset + n));
            PF_CHECK(entry != NULL); /* only fails on allocation */
            if (json_object_set_new(root, e->name, entry)) problem = "has a name that is not valid UTF-8";
        }
        if (problem) {
            json_decref(root);
            pf_fail(err, "%s: tensor \"%s\" %s", path, quote_bytes(q, sizeof q, e->name ? e->name : "", QUOTED),
                    problem);
            return NULL;
        }
        bytes[i] = (size_t)n;
        offset += (size_t)n;
    }
    return root;
}

int pf_st_write(const char *path, const pf_st_entry *entries, int count, const char *const *meta,
                pf_error *err) {
    PF_CHECK(count >= 0);
    const pf_st_entry **order = PF_CALLOC((size_t)count, sizeof *order);
    for (int i = 0; i < count; i++) order[i] = &entries[i];
    qsort(order, (size_t)count, sizeof *order, by_layout);
    size_t *bytes = PF_CALLOC((size_t)count, sizeof *bytes);
    char *header = NULL, *tmp = NULL;
    int fd = -1, rc = -1;

    json_t *root = make_header(path, order, count, meta, bytes, err);
    if (!root) goto out;
    header = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    PF_CHECK(header != NULL); /* only fails on allocation */
    /* Padded with spaces to a multiple of 8 so that the data buffer starts
     * aligned, like the reference writer. */
    size_t hlen = strlen(header), padded = (hlen + 7) / 8 * 8;
    if (padded > PF_ST_MAX_HEADER) {
        pf_fail(err, "%s: header of %zu bytes exceeds the limit of %u bytes", path, padded, PF_ST_MAX_HEADER);
        goto out;
    }
    uint8_t prefix[8 + 8];
    for (int i = 0; i < 8; i++) prefix[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memset(prefix + 8, ' ', 8);

    size_t plen = strlen(path);
    tmp = PF_MALLOC(plen + 5);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        pf_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    int bad = pf_write_all(fd, prefix, 8) || pf_write_all(fd, header, hlen) ||
              pf_write_all(fd, prefix + 8, padded - hlen);
    /* Converted in chunks so that writing a model needs no second copy of it. */
    union {
        float f[4096];
        uint16_t h[8192];
    } chunk;
    for (int i = 0; i < count && !bad; i++) {
        size_t esize = pf_dtype_size(order[i]->dtype), n = bytes[i] / esize, per = sizeof chunk / esize;
        for (size_t j = 0; j < n && !bad; j += per) {
            size_t k = n - j < per ? n - j : per;
            pf_convert_from_f32(esize == 4 ? (void *)chunk.f : (void *)chunk.h, order[i]->dtype,
                                order[i]->data + j, k);
            bad = pf_write_all(fd, &chunk, k * esize);
        }
    }
    if (bad) {
        pf_fail(err, "%s: write failed: %s", tmp, strerror(errno));
        goto out;
    }
    rc = pf_fsync_rename(fd, tmp, path, err);
out:
    if (fd >= 0) close(fd);
    if (rc && tmp) unlink(tmp);
    free(tmp);
    free(header);
    free(bytes);
    free(order);
    return rc;
}
