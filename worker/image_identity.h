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
 * same model served from two places is one identity. Settings are taken from
 * the resolved request (engine/pipeline/request.h), so a default is described by the
 * value that ran.
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

/* The identity document of image index of the text-to-image request g (as
 * pf_request_resolve left it for the job, its control images decoded) of
 * job (its LoRA scales and weights variant), run on model (as pf_models_get
 * and pf_models_controlnets left it for this job), as a new JSON object
 * (caller decrefs). The refine stage is not described: refine jobs do not
 * use the store. */
json_t *pf_image_identity_doc(const pf_txt2img_params *g, const pf_job *job, const pf_model *model,
                              const char *numerics, int index);

/* The identity (64 hex) of a document made by pf_image_identity_doc. */
void pf_image_identity(char hex[PF_SHA256_HEX], const json_t *doc);

#endif
