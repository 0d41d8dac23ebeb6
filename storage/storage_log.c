/* storage_log.c - log lines of the storage layer, scrubbed of secrets. */
#include "storage_log.h"

#include <stdarg.h>
#include <stdio.h>

#include "credentials.h"

void pf_slog(const pf_log_sink *sink, int level, const char *fmt, ...) {
    if (!sink || !sink->fn || level > sink->level) return;
    char line[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pf_secret_scrub(line, sizeof line);
    sink->fn(sink->ctx, level, line);
}
