/* status.c - status events (status.h, schemas/status.v1.json). */
#include "status.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "credentials.h"
#include "error.h"

json_t *pf_status_new(const char *state, const char *job_id, int attempt, const char *worker_id) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char base[32], when[48];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when, sizeof when, "%s.%03ldZ", base, ts.tv_nsec / 1000000);
    json_t *st = json_object();
    PF_CHECK(st);
    json_object_set_new(st, "schema", json_string(PF_STATUS_SCHEMA));
    json_object_set_new(st, "job_id", json_string(job_id));
    json_object_set_new(st, "state", json_string(state));
    json_object_set_new(st, "attempt", json_integer(attempt));
    json_object_set_new(st, "worker_id", json_string(worker_id));
    json_object_set_new(st, "ts", json_string(when));
    return st;
}

void pf_status_set_error(json_t *st, const char *code, const char *message, int retryable, const char *field) {
    json_t *e = json_object();
    json_object_set_new(e, "code", json_string(code));
    json_t *m = json_string(message);
    json_object_set_new(e, "message", m ? m : json_string("(message not valid UTF-8)"));
    json_object_set_new(e, "retryable", json_boolean(retryable));
    if (field && *field) json_object_set_new(e, "field", json_string(field));
    json_object_set_new(st, "error", e);
}

int pf_status_is_terminal(const json_t *st) {
    const char *s = json_string_value(json_object_get(st, "state"));
    if (!s) return 0;
    if (!strcmp(s, PF_ST_FAILED)) return !json_is_true(json_object_get(json_object_get(st, "error"), "retryable"));
    return !strcmp(s, PF_ST_SUCCEEDED) || !strcmp(s, PF_ST_REJECTED) || !strcmp(s, PF_ST_CANCELLED);
}

char *pf_status_dump(const json_t *st) {
    char *s = json_dumps(st, JSON_COMPACT);
    PF_CHECK(s);
    size_t cap = strlen(s) + 64;
    char *out = PF_MALLOC(cap);
    snprintf(out, cap, "%s", s);
    free(s);
    pf_secret_scrub(out, cap);
    return out;
}
