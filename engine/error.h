/* error.h - the two tiers of errors used everywhere in perflow.
 *
 * Tier 1, invariants: PF_CHECK(cond) aborts with file and line. It guards what
 * the program itself guarantees (shapes the model code computed, indices it
 * made), never anything a user, a file, a disk or a network can cause.
 *
 * Tier 2, input: functions that can fail because of input return an int
 * (0 on success, -1 on error) and fill a caller-provided pf_error with one
 * readable line. Library code never exits; only main() decides what to do. */
#ifndef PF_ERROR_H
#define PF_ERROR_H

#include <stdio.h>
#include <stdlib.h>

typedef struct pf_error {
    char msg[1024]; /* one line, no trailing newline; "" when no error */
} pf_error;

/* Formats msg into err (if err is not NULL) and returns -1, so that
 * `return pf_fail(err, "...", ...);` reads naturally. */
int pf_fail(pf_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes err->msg with a context string ("loading unet: ..."); returns -1. */
int pf_error_prefix(pf_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define PF_CHECK(cond)                                                                   \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* malloc/calloc that abort on failure: for small bookkeeping allocations only.
 * Large buffers (weights, activations) use checked allocation with pf_error. */
void *pf_xmalloc(size_t n, const char *file, int line);
void *pf_xcalloc(size_t n, size_t size, const char *file, int line);
char *pf_xstrdup(const char *s, const char *file, int line);
#define PF_MALLOC(n) pf_xmalloc((n), __FILE__, __LINE__)
#define PF_CALLOC(n, s) pf_xcalloc((n), (s), __FILE__, __LINE__)
#define PF_STRDUP(s) pf_xstrdup((s), __FILE__, __LINE__)

#endif
