/* log.c - structured log lines of the worker (see log.h). */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "credentials.h"

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static char log_worker_id[256];
static int log_level = PF_LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void pf_wlog_init(const char *worker_id, int level) {
    snprintf(log_worker_id, sizeof log_worker_id, "%s", worker_id ? worker_id : "");
    log_level = level;
}

int pf_wlog_level(const char *s) {
    for (int i = 0; i < 4; i++)
        if (!strcasecmp(s, level_names[i])) return i;
    if (!strcasecmp(s, "warning")) return PF_LOG_WARN;
    return -1;
}

/* RFC 3339 UTC with milliseconds. */
static void timestamp(char *out, size_t n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, n, "%s.%03ldZ", base, ts.tv_nsec / 1000000);
}

void pf_wlog(int level, const char *event, const char *job_id, json_t *extra, const char *fmt, ...) {
    if (level > log_level) {
        json_decref(extra);
        return;
    }
    char ts[48], msg[2048] = "";
    timestamp(ts, sizeof ts);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        pf_secret_scrub(msg, sizeof msg); /* before JSON escaping can change a secret's spelling */
    }
    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(level_names[level < 0 ? 0 : level > 3 ? 3 : level]));
    json_object_set_new(o, "event", json_string(event));
    if (log_worker_id[0]) json_object_set_new(o, "worker_id", json_string(log_worker_id));
    if (job_id) json_object_set_new(o, "job_id", json_string(job_id));
    if (extra) {
        json_object_update(o, extra);
        json_decref(extra);
    }
    /* json_string refuses invalid UTF-8 (a server's error text may hold
     * anything): fall back to a marker rather than losing the line. */
    if (msg[0] && json_object_set_new(o, "msg", json_string(msg)))
        json_object_set_new(o, "msg", json_string("(message not valid UTF-8)"));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!s) return;
    size_t cap = strlen(s) + 64; /* room for "[redacted]" growing a short secret */
    char *line = malloc(cap);
    if (line) {
        snprintf(line, cap, "%s", s);
        pf_secret_scrub(line, cap);
        pthread_mutex_lock(&log_lock);
        fprintf(stderr, "%s\n", line);
        fflush(stderr);
        pthread_mutex_unlock(&log_lock);
        free(line);
    }
    free(s);
}

static void storage_line(void *ctx, int level, const char *line) {
    (void)ctx;
    pf_wlog(level, "storage", NULL, NULL, "%s", line);
}

pf_log_sink pf_wlog_sink(int level) {
    pf_log_sink s = {storage_line, NULL, level};
    return s;
}
