/* image_identity.h - what makes an image: the SHA-256 identity under which the
 * result store (storage/result_store.h) keeps it.
 *
 * The identity is the SHA-256 of a canonical JSON document (sorted keys,
 * compact, floats as %.9g strings) holding:
 *   - the content digest of every weight that shaped the image: the base's
 *     files, the single file's configs, the PeRFlow delta, each LoRA with its
 *     scale (in order: they are fused in order), each ControlNet with the
 *     digest of its decoded condition image and its scale;
 *   - the engine's numerics class ("cpu-fp32", "cuda-fp16": the two backends
 *     give different pixels for the same job);
 *   - every sampling setting the engine reads (size, steps, guidance,
 *     prediction type, windows, clip_skip, SDXL's time ids), the prompts
 *     (absent and "" differ for a negative prompt), the seed and the image's
 *     index within the job.
 * Weights are named by content (pf_cache_lease_digest), never by URL, so the
 * same model served from two places is one identity. Settings the job does
 * not give take the model's own defaults at run time, and the document holds
 * the job's values (0 / null for "the model's own") together with the model's
 * digests, so that two jobs resolve alike exactly when their documents match.
 * Bump PF_IMAGE_IDENTITY_VERSION whenever what the engine computes for the
 * same document changes (a numerics fix): old entries then never match. */
#ifndef PF_IMAGE_IDENTITY_H
#define PF_IMAGE_IDENTITY_H

#include <jansson.h>
#include <stdint.h>

#include "digest.h"
#include "job.h"
#include "models.h"

#define PF_IMAGE_IDENTITY_VERSION 1

/* The numerics class of a backend by its name ("cpu", "cuda"). */
const char *pf_image_numerics(const char *backend_name);

/* The identity document of image index of job, run on model (as
 * pf_models_get and pf_models_controlnets left it for this job) with the
 * job's decoded control images control_rgb[i] (control_w[i] x control_h[i]),
 * as a new JSON object (caller decrefs). The refine stage is not described:
 * refine jobs do not use the store. */
json_t *pf_image_identity_doc(const pf_job *job, const pf_model *model, const char *numerics,
                              uint8_t *const *control_rgb, const int *control_w, const int *control_h, int index);

/* The identity (64 hex) of a document made by pf_image_identity_doc. */
void pf_image_identity(char hex[PF_SHA256_HEX], const json_t *doc);

#endif
