/* storage_log.h - where the storage layer's log lines go.
 *
 * Library code never prints: the cache, fetcher and uploader hand each line to
 * a sink the caller provides (the CLI writes them to stderr, the worker to its
 * log). Every line passes through pf_secret_scrub first, so a credential that
 * slipped into a server's error text is never written out. */
#ifndef PF_STORAGE_LOG_H
#define PF_STORAGE_LOG_H

enum { PF_LOG_ERROR = 0, PF_LOG_WARN = 1, PF_LOG_INFO = 2, PF_LOG_DEBUG = 3 };

typedef struct pf_log_sink {
    /* Called with one line (no newline); may be called from several threads at
     * once (parallel downloads), so it must be thread-safe. NULL: lines dropped. */
    void (*fn)(void *ctx, int level, const char *line);
    void *ctx;
    int level; /* lines above this level are dropped (default 0 = errors only) */
} pf_log_sink;

/* Formats, scrubs and sends one line to sink (which may be NULL). */
void pf_slog(const pf_log_sink *sink, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
