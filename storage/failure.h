/* failure.h - whether a failed storage call may succeed if tried again later.
 *
 * The worker decides to retry a job, fail it or dead-letter it; the message in
 * pf_error is for people, this is for that decision. Like errno, it is per
 * thread and describes the last failing call of the storage layer on that
 * thread: pf_cache_acquire, pf_s3_put_file and pf_fetch_to_fd set it on every
 * failure, and reset it to PF_STORAGE_OK when they start.
 *   TRANSIENT  the network or a server failed past the retries (timeouts,
 *              5xx, throttling), a local disk step failed, a wait timed out,
 *              the call was cancelled: later may work.
 *   PERMANENT  the request itself is wrong: a refused URL or address, HTTP
 *              4xx (404, 401, 403 including a bad signature), a digest
 *              mismatch, the size cap, a malformed model index, missing
 *              credentials: the same request will fail again. */
#ifndef PF_FAILURE_H
#define PF_FAILURE_H

typedef enum { PF_STORAGE_OK = 0, PF_STORAGE_TRANSIENT, PF_STORAGE_PERMANENT } pf_storage_failure_class;

pf_storage_failure_class pf_storage_failure(void);
void pf_storage_set_failure(pf_storage_failure_class c);
/* "ok", "transient", "permanent" */
const char *pf_storage_failure_name(pf_storage_failure_class c);

#endif
