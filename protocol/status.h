/* status.h - status events (schemas/status.v1.json): what the worker tells the
 * client about a job, one JSON message per event on the status topic, keyed
 * by job_id so that one job's events stay in order on one partition.
 *
 * States: accepted, downloading, running (step i of n of a stage: "generate",
 * then "refine" for refine jobs), uploading, and the
 * terminal ones: succeeded, failed, rejected, cancelled. A "failed" event with
 * "retryable": true is not terminal: the job was re-enqueued and another
 * attempt follows; every other failed event is final. Every event carries the
 * attempt number and the worker id. A terminal status re-posted from the
 * idempotency record for a redelivered job carries "replayed": true. */
#ifndef PF_STATUS_H
#define PF_STATUS_H

#include <jansson.h>

#define PF_STATUS_SCHEMA "perflow.status.v1"

#define PF_ST_ACCEPTED "accepted"
#define PF_ST_DOWNLOADING "downloading"
#define PF_ST_RUNNING "running"
#define PF_ST_UPLOADING "uploading"
#define PF_ST_SUCCEEDED "succeeded"
#define PF_ST_FAILED "failed"
#define PF_ST_REJECTED "rejected"
#define PF_ST_CANCELLED "cancelled"

/* Error codes of failed and rejected events. */
#define PF_ERR_INVALID "invalid_job"       /* rejected: a field breaks the schema */
#define PF_ERR_UNSUPPORTED "unsupported"   /* rejected: valid, but this worker cannot run it */
#define PF_ERR_DEADLINE "deadline"         /* failed: the deadline passed */
#define PF_ERR_DOWNLOAD "download"         /* failed: a model could not be fetched */
#define PF_ERR_MODEL "model"               /* failed: a model could not be loaded (permanent) */
#define PF_ERR_ENGINE "engine"             /* failed: the engine failed */
#define PF_ERR_UPLOAD "upload"             /* failed: a result could not be stored */
#define PF_ERR_INTERNAL "internal"         /* failed: the worker itself (disk, memory) */

/* A new event {"schema", "job_id", "state", "attempt", "worker_id", "ts"}; never NULL. */
json_t *pf_status_new(const char *state, const char *job_id, int attempt, const char *worker_id);
/* Adds "error": {"code", "message", "retryable"[, "field"]} (field may be NULL). */
void pf_status_set_error(json_t *st, const char *code, const char *message, int retryable, const char *field);
/* 1 when state ends the job (succeeded, failed not retryable, rejected, cancelled). */
int pf_status_is_terminal(const json_t *st);
/* Compact JSON of st, scrubbed of registered secrets; malloc'd (caller frees). */
char *pf_status_dump(const json_t *st);

#endif
