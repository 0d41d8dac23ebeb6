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

/* What kind of failure an error is, for the caller that decides what to do
 * with it (the worker: retry, fail or reject a job; the CLI: say so), carried
 * with the message as hiredis keeps err beside errstr, so that no caller
 * classifies a failure by its text. A layer sets the kind where it knows it
 * (storage: whether trying again may help; the worker's model set: a source
 * that does not fit, a model that does not load); most engine errors have none
 * (the caller checked the input it passed). */
typedef enum pf_error_kind {
    PF_ERROR_NONE = 0,   /* not said */
    PF_ERROR_TRANSIENT,  /* may succeed if tried again later: the network, a server's 5xx or throttling, the
                            local disk, a wait that timed out, a cancelled call */
    PF_ERROR_PERMANENT,  /* the same request fails again: a refused URL, HTTP 4xx, a digest mismatch, the
                            size cap, a malformed model index, missing credentials */
    PF_ERROR_INVALID,    /* the input names something that does not fit (field says which) */
    PF_ERROR_MODEL,      /* a model that was fetched does not load (permanent) */
} pf_error_kind;

typedef struct pf_error {
    char msg[1024];      /* one line, no trailing newline; "" when no error */
    pf_error_kind kind;  /* PF_ERROR_NONE unless a layer said */
    char field[64];      /* the input field at fault ("model.loras[1]", "control[0].image"), or "" */
} pf_error;

/* Formats msg into err (if err is not NULL) and returns -1, so that
 * `return pf_fail(err, "...", ...);` reads naturally. */
int pf_fail(pf_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes err->msg with a context string ("loading unet: ..."); returns -1. */
int pf_error_prefix(pf_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Sets err's kind and field (NULL: "") when err is not NULL; the message is
 * kept. Returns -1. pf_fail and pf_error_prefix keep the kind and field. */
int pf_error_set_kind(pf_error *err, pf_error_kind kind, const char *field);
/* err's kind, PF_ERROR_NONE for NULL. */
pf_error_kind pf_error_kind_of(const pf_error *err);
/* "none", "transient", "permanent", "invalid", "model" */
const char *pf_error_kind_name(pf_error_kind kind);

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
