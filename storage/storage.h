/* storage.h - the storage layer in one include, for the worker and the CLI:
 *   credentials.h   secrets from the environment or $CREDENTIALS_DIRECTORY, scrubbed from all text
 *   url_policy.h    URL parsing, scheme/host allowlist, SSRF address check
 *   fetch.h         one URL into one file (libcurl): resume, retries, SHA-256, size cap
 *   model_source.h  a file URL or a diffusers base URL, as jobs name models
 *   model_index.h   model_index.json -> files to fetch; the per-model manifest
 *   cache.h         the shared model cache: blobs, pins, LRU budget, Redis index (redis_index.h)
 *   s3.h            uploads to S3-compatible storage or file://
 *   output_key.h    result keys from a template and the job
 * After a failure err->kind (error.h) says transient (retry the job later) or permanent.
 * Typical use by a worker:
 *   pf_credentials cred;  pf_credentials_load(&cred, &err);
 *   pf_cache_config cc;   pf_cache_config_from_env(&cc, &err); cc.fetch.bearer_token = cred.hub_token;
 *   pf_cache *cache;      pf_cache_open(&cache, &cc, &err);
 *   per job:  pf_model_source_init(&src, PF_SOURCE_AUTO, url, sha256, fp16, &err);
 *             pf_cache_acquire(&lease, cache, &src, &err);  ... load pf_cache_lease_path(lease) ...
 *             (on failure, err.kind says whether a retry may help)
 *             pf_output_key(key, sizeof key, template, job_id, i, seed, &err);
 *             pf_s3_put_file(&res, &s3cfg, &cred, key, png_path, &err);
 *             pf_cache_release(lease);
 */
#ifndef PF_STORAGE_H
#define PF_STORAGE_H

#include "cache.h"
#include "credentials.h"
#include "fetch.h"
#include "model_index.h"
#include "model_source.h"
#include "output_key.h"
#include "s3.h"
#include "url_policy.h"

#endif
