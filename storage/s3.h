/* s3.h - putting result files into S3-compatible object storage (AWS, MinIO,
 * Ceph RGW, R2) or, for local runs, a file:// destination.
 *
 * Requests are signed by libcurl's own SigV4 (CURLOPT_AWS_SIGV4) with the
 * payload's SHA-256 in x-amz-content-sha256 (so the signature covers the
 * bytes) and Content-MD5 as the integrity header that every S3 implementation
 * checks. Files above the multipart threshold (16 MiB) go up in parts.
 * Requests are retried with exponential backoff and full jitter on 5xx,
 * throttling (429, 503 SlowDown), request timeouts and transport errors;
 * a multipart upload that fails for good is aborted so no parts linger.
 * Re-uploading to the same key overwrites it, so a job that runs twice writes
 * the same keys (output_key.h makes them from the job). pf_s3_get reads an
 * object back whole (the result store's images). */
#ifndef PF_S3_H
#define PF_S3_H

#include <stddef.h>
#include <stdint.h>

#include "credentials.h"
#include "digest.h"
#include "error.h"
#include "storage_log.h"

typedef struct pf_s3_config {
    char endpoint[512];           /* "https://s3.eu-west-1.amazonaws.com", "http://127.0.0.1:9000";
                                     "" = https://s3.<region>.amazonaws.com */
    char region[64];              /* default "us-east-1" ("auto" for R2) */
    int path_style;               /* 1: <endpoint>/<bucket>/<key>; 0: <bucket>.<endpoint host>/<key> */
    uint64_t multipart_threshold; /* default 16 MiB */
    uint64_t part_size;           /* default 8 MiB, at least 5 MiB (S3's minimum) */
    int max_attempts;             /* per request (default 6) */
    long retry_base_ms;           /* default 200 */
    long retry_max_ms;            /* default 20000 */
    long connect_timeout_s;       /* default 15 */
    long low_speed_time_s;        /* a request below 1 KiB/s this long is retried (default 60) */
    char ca_bundle[1024];         /* "" = the system's CA certificates */
    pf_log_sink log;
} pf_s3_config;

void pf_s3_config_default(pf_s3_config *cfg);
/* The defaults, then the environment: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL,
 * AWS_REGION or AWS_DEFAULT_REGION, PERFLOW_S3_ADDRESSING=path|virtual
 * (default: path with a custom endpoint, virtual on AWS), PERFLOW_S3_PART_SIZE,
 * PERFLOW_S3_ATTEMPTS, PERFLOW_S3_RETRY_BASE_MS, PERFLOW_CA_BUNDLE. */
int pf_s3_config_from_env(pf_s3_config *cfg, pf_error *err);

typedef struct pf_s3_result {
    uint64_t size;
    char sha256[PF_SHA256_HEX]; /* of the file as uploaded */
    int parts;                  /* 0 for a single PUT or a file:// copy */
    int retries;                /* requests that were retried */
    char etag[160];             /* as the server gave it ("" for file://) */
} pf_s3_result;

/* Splits "s3://bucket/key" (bucket of 3-63 of [a-z0-9.-], key of 1-1024
 * bytes without control characters). */
int pf_s3_parse_dest(char *bucket, size_t bucket_n, char *key, size_t key_n, const char *dest, pf_error *err);

/* The request URL for bucket/key (key percent-encoded as SigV4 wants, '/'
 * kept) with an optional canonical query string. */
int pf_s3_object_url(char *out, size_t n, const pf_s3_config *cfg, const char *bucket, const char *key,
                     const char *query, pf_error *err);

/* Uploads the file at path to dest: "s3://bucket/key" (needs credentials'
 * access key pair) or "file:///absolute/path" (temp file, fsync, rename;
 * parent folders created). On error err has one line without any credential,
 * err->kind says whether trying later may help (error.h), and an
 * interrupted multipart upload has been aborted. */
int pf_s3_put_file(pf_s3_result *res, const pf_s3_config *cfg, const pf_credentials *cred, const char *dest,
                   const char *path, pf_error *err);

/* Reads the object at src ("s3://bucket/key" or "file:///absolute/path")
 * into *data (malloc'd, caller frees; *len bytes). An absent object is no
 * error: 0 with *found 0 and *data NULL. An object over max bytes is an
 * error. On error err has one line and err->kind says whether
 * trying later may help. */
int pf_s3_get(uint8_t **data, size_t *len, int *found, const pf_s3_config *cfg, const pf_credentials *cred,
              const char *src, size_t max, pf_error *err);

#endif
