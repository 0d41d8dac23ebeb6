/* error.c - error formatting and checked bookkeeping allocation. */
#include "error.h"

#include <stdarg.h>
#include <string.h>

int pf_fail(pf_error *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int pf_error_prefix(pf_error *err, const char *fmt, ...) {
    if (!err) return -1;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %s", prefix, old);
    return -1;
}

int pf_error_set_kind(pf_error *err, pf_error_kind kind, const char *field) {
    if (err) {
        err->kind = kind;
        snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    }
    return -1;
}

pf_error_kind pf_error_kind_of(const pf_error *err) { return err ? err->kind : PF_ERROR_NONE; }

const char *pf_error_kind_name(pf_error_kind kind) {
    static const char *const names[] = {"none", "transient", "permanent", "invalid", "model"};
    return (unsigned)kind < sizeof names / sizeof *names ? names[kind] : "none";
}

void *pf_xmalloc(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "%s:%d: out of memory allocating %zu bytes\n", file, line, n);
        abort();
    }
    return p;
}

void *pf_xcalloc(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "%s:%d: out of memory allocating %zu x %zu bytes\n", file, line, n, size);
        abort();
    }
    return p;
}

char *pf_xstrdup(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *p = pf_xmalloc(n, file, line);
    memcpy(p, s, n);
    return p;
}
