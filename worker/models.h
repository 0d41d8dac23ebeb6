/* models.h - loaded models kept warm: pipelines on the worker's backend, in an
 * LRU bounded by a memory budget, each pinning its files in the model cache.
 *
 * A job names its model by URLs; the cache (storage/cache.h) makes them local
 * files (downloading once per host) and this module loads them once per
 * process. Consecutive jobs of one model reuse the loaded pipeline; when a new
 * model does not fit the budget, the least recently used idle models are
 * unloaded (and their cache pins released) first. A model's size is the size
 * of its weight files, which is what its tensors take on the CPU backend (in
 * float32; float16 weights on disk are widened) to within the widening, and an
 * upper bound on a GPU in float16. One model is always allowed, even over
 * budget.
 *
 * A model may also hold the refiner's ControlNet of the last refine job that
 * used it (pf_models_controlnet): jobs with the same ControlNet source reuse
 * it, another one replaces it. Its files are pinned while it is attached and
 * its size counts in the model's.
 *
 * Used by the job thread only. */
#ifndef PF_MODELS_H
#define PF_MODELS_H

#include <stdint.h>

#include "backend.h"
#include "cache.h"
#include "job.h"
#include "pipeline.h"

typedef struct pf_models pf_models;

typedef struct pf_model {
    pf_pipeline *pipe;
    uint64_t bytes;       /* estimated memory of the loaded weights */
    /* private */
    char key[2 * PF_URL_MAX + 160];
    pf_cache_lease *base, *delta;
    char cn_key[PF_URL_MAX + 160];   /* the attached ControlNet's source, "" when none */
    pf_cache_lease *controlnet;
    uint64_t cn_bytes;
    long long last_use;
    int in_use;
} pf_model;

/* How a failure to get a model should be treated. */
typedef enum {
    PF_MODEL_OK = 0,
    PF_MODEL_TRANSIENT,   /* the download may succeed later (network, a server's 5xx, disk) */
    PF_MODEL_PERMANENT,   /* it never will (404, refused by the URL policy, digest mismatch, not a model) */
} pf_model_failure;

typedef struct pf_model_timing {
    long long download_ms, load_ms; /* 0 when the model was warm */
    int warm;
} pf_model_timing;

/* The cache and backend are borrowed and must outlive the models. */
void pf_models_open(pf_models **out, pf_cache *cache, pf_backend *be, uint64_t budget_bytes);
/* Unloads everything (no model may be in use). */
void pf_models_close(pf_models *m);

/* The job's model, loaded: from the warm set, or fetched through the cache
 * and loaded (on_fetch, if not NULL, is called first, so that the worker can
 * post "downloading"). On error *failure says whether to retry, err has one
 * line, and nothing is held. Release with pf_models_put. */
int pf_models_get(pf_models *m, const pf_job *job, pf_model **out, pf_model_timing *t, pf_model_failure *failure,
                  void (*on_fetch)(void *), void *ctx, pf_error *err);
/* Attaches the job's refine ControlNet (job->refine.controlnet, weights variant
 * of job->fp16) to model's pipeline, which pf_models_get gave and which is in
 * use: nothing to do when the model holds that source already (t->warm),
 * else fetched through the cache (on_fetch first, as for pf_models_get),
 * loaded and attached in place of the one it had. On error *failure says
 * whether to retry, err has one line ("refine.controlnet: ..."; "loading the
 * ControlNet" when the files were fetched but do not load or do not fit the
 * model), and the model keeps the ControlNet it had. */
int pf_models_controlnet(pf_models *m, pf_model *model, const pf_job *job, pf_model_timing *t,
                         pf_model_failure *failure, void (*on_fetch)(void *), void *ctx, pf_error *err);
/* Marks the model idle (it stays loaded until evicted). */
void pf_models_put(pf_models *m, pf_model *model);
/* Number of models loaded and their total estimated bytes. */
int pf_models_loaded(const pf_models *m, uint64_t *bytes);

#endif
