/* log.h - the worker's log: one JSON object per line on stderr (journald keeps
 * each as one entry), one line per event, with the job id whenever there is one.
 *
 *   {"ts":"2025-11-26T03:04:05.123Z","level":"info","event":"job.accepted",
 *    "worker_id":"gpu3-1234","job_id":"j-42","attempt":1,"msg":"..."}
 *
 * Every line passes through pf_secret_scrub before it is written, so a
 * credential that reached an error message (a server echoing a header, a
 * Kafka SASL error) is never logged. Thread-safe: lines from the job thread
 * and the main loop never interleave. */
#ifndef PF_WORKER_LOG_H
#define PF_WORKER_LOG_H

#include <jansson.h>

#include "storage_log.h"

/* Sets the worker id put on every line and the most verbose level written
 * (PF_LOG_ERROR .. PF_LOG_DEBUG, storage_log.h). */
void pf_wlog_init(const char *worker_id, int level);

/* Writes one line: event (a dotted name, "job.accepted"), job_id (NULL when
 * the event concerns no job), extra fields (a JSON object whose members are
 * added to the line, or NULL; the reference is stolen) and a message formatted
 * from fmt (NULL: none). Never fails; a line that cannot be built is dropped. */
void pf_wlog(int level, const char *event, const char *job_id, json_t *extra, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* A pf_log_sink for the storage layer: its lines become "storage" events. */
pf_log_sink pf_wlog_sink(int level);

/* The level named by s ("error", "warn", "info", "debug"), or -1. */
int pf_wlog_level(const char *s);

#endif
