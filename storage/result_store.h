/* result_store.h - the content-addressed result store: images named by the
 * SHA-256 of everything that made them, so that no image is computed twice.
 *
 * An image's identity (computed by the worker, worker/image_identity.c) is
 * a 64-hex SHA-256. The store keeps, per identity:
 *   - the image itself, an 8-bit RGB PNG without text chunks, at
 *     <url>/<id[0:2]>/<id>.png (url: "s3://bucket/prefix" or
 *     "file:///absolute/folder"): what a job of that identity computed;
 *   - a Redis index entry <prefix>:<id> = "<sha256 of the PNG> <size>",
 *     expiring after the retention (PX), refreshed by every hit.
 * A lookup reads the index first (one round trip for a miss) and then the
 * object, whose digest must match the entry: an object that vanished (a
 * bucket lifecycle rule, a cleaned folder) or changed is a miss, and the
 * stale entry is deleted. Objects are never deleted here: give the bucket or
 * folder a lifecycle longer than the retention.
 *
 * Every failure of the store (Redis away, the object store failing) is
 * reported as an error and the caller computes the image instead: the store
 * saves work, it never fails a job.
 *
 * Not thread-safe: one caller at a time (the worker's job thread owns it). */
#ifndef PF_RESULT_STORE_H
#define PF_RESULT_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "credentials.h"
#include "error.h"
#include "s3.h"

#define PF_RSTORE_MAX_OBJECT (64u << 20) /* bytes of one stored PNG */

typedef struct pf_rstore pf_rstore;

/* Opens a store (connects nothing yet): redis is an address as redis_client.h
 * takes it, prefix the Redis key prefix, url where objects go, retention_s
 * how long an entry lives without a hit. s3 and cred are borrowed and must
 * outlive the store; work_dir holds temporary files. Error for a malformed
 * address or url. */
int pf_rstore_open(pf_rstore **out, const char *redis, const char *prefix, const char *url, long retention_s,
                   const pf_s3_config *s3, const pf_credentials *cred, const char *work_dir, pf_error *err);
void pf_rstore_close(pf_rstore *rs);

/* Looks id up. On a hit, 0 with *png (malloc'd, caller frees) holding the
 * stored PNG's *len bytes, verified against the index. On a miss, 0 with
 * *png NULL. -1 with err when the store could not answer (treat as a miss). */
int pf_rstore_get(pf_rstore *rs, const char *id, uint8_t **png, size_t *len, pf_error *err);

/* Records the PNG (len bytes) as the image of id: the object first, then the
 * index entry, so that an entry never names a missing object. */
int pf_rstore_put(pf_rstore *rs, const char *id, const uint8_t *png, size_t len, pf_error *err);

/* The object URL of id (n bytes). */
int pf_rstore_object_url(char *out, size_t n, const pf_rstore *rs, const char *id, pf_error *err);

#endif
