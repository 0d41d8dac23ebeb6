/* models.h - loaded models kept warm: pipelines on the worker's backend, in an
 * LRU bounded by a memory budget, each pinning its files in the model cache.
 *
 * A job names its model by URLs; the cache (storage/cache.h) makes them local
 * files (downloading once per host) and this module loads them once per
 * process. A loaded model is what pf_pipeline_load_model makes of a base (a
 * diffusers folder, or a single .safetensors checkpoint with the configs of
 * model.config or of the architecture it is recognised as), the PeRFlow delta
 * and the job's LoRAs, fused into the weights at load. So the LRU keys on all
 * of it (pf_model.key): the base and its digest, the configs, the delta and
 * its digest, the weights variant, and each LoRA's URL, digest and scale in
 * order. A job with another LoRA set (or the same LoRAs in another order or
 * at another scale) never reuses fused weights made for another: it loads a
 * model of its own (from the cache's files, without downloading them again).
 *
 * Consecutive jobs of one model reuse the loaded pipeline; when a new model
 * does not fit the budget, the least recently used idle models are unloaded
 * (and their cache pins released) first. A model's size is the size of its
 * weight files (LoRAs included), which is what its tensors take on the CPU
 * backend (in float32; float16 weights on disk are widened) to within the
 * widening, and an upper bound on a GPU in float16. One model is always
 * allowed, even over budget.
 *
 * A model also holds the ControlNets of the last job that used it
 * (pf_models_controlnets): the refiner's ControlNet-Tile first when the job
 * refines, then its text-to-image ControlNets in order. Jobs with the same
 * ControlNet sources reuse them, another set replaces them. Their files are
 * pinned while attached and their size counts in the model's.
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
    uint64_t bytes;       /* estimated memory of the loaded weights, ControlNets included */
    const char *family;   /* pf_family_name of the pipeline's family: "sd" or "sdxl" */
    /* private */
    char *key;            /* the model's identity: base, configs, delta, variant, LoRA set (JSON) */
    pf_cache_lease *base, *config, *delta;
    pf_cache_lease *loras[PF_JOB_MAX_LORAS];
    char *nets_key;       /* the attached ControlNets' sources (JSON), NULL when none */
    pf_cache_lease *nets[PF_MAX_CONTROLS];
    int n_nets;
    uint64_t nets_bytes;
    char *ips_key;        /* the attached IP-Adapters' and image encoder's sources (JSON), NULL when none */
    pf_cache_lease *ips[PF_JOB_MAX_IP_ADAPTERS + 1]; /* the adapters, then the image encoder */
    int n_ips;            /* leases held in ips */
    uint64_t ips_bytes;
    long long last_use;
    int in_use;
} pf_model;

/* A failure to get a model (or a ControlNet, or an image) says what to do in
 * err->kind (error.h) and the job field at fault in err->field
 * ("model.loras[1]", "model.delta", "control[0].image", ...):
 *   PF_ERROR_TRANSIENT  the download may succeed later (network, a server's 5xx, disk)
 *   PF_ERROR_PERMANENT  it never will (404, refused by the URL policy, digest mismatch)
 *   PF_ERROR_MODEL      the base or a ControlNet was fetched but does not load (permanent)
 *   PF_ERROR_INVALID    the job names something that does not fit the model (a LoRA that
 *                       matches nothing or does not fit, a delta of another shape, configs of
 *                       another architecture, a control image that is not an image): reject the
 *                       job naming the field */

typedef struct pf_model_timing {
    long long download_ms, load_ms; /* 0 when the model was warm */
    int warm;
} pf_model_timing;

/* The cache and backend are borrowed and must outlive the models. */
void pf_models_open(pf_models **out, pf_cache *cache, pf_backend *be, uint64_t budget_bytes);
/* Unloads everything (no model may be in use). */
void pf_models_close(pf_models *m);

/* The job's model, loaded: from the warm set, or fetched through the cache
 * (base, configs, delta, each LoRA) and loaded (on_fetch, if not NULL, is
 * called first, so that the worker can post "downloading"). On error
 * err's kind says what to do and its field names the job field at fault;
 * err has one line that names sources by their URLs (never by cache paths),
 * and nothing is held: a download failure starts with the field
 * ("model.loras[0]: ..."), a base that does not load is PF_ERROR_MODEL,
 * and a source that does not fit the model (PF_ERROR_INVALID) starts with
 * its field and then the engine's message. Each LoRA's matched tensor count
 * is logged, and keys that matched nothing are a warning. Release with
 * pf_models_put. */
int pf_models_get(pf_models *m, const pf_job *job, pf_model **out, pf_model_timing *t,
                  void (*on_fetch)(void *), void *ctx, pf_error *err);
/* Attaches the job's ControlNets to model's pipeline, which pf_models_get
 * gave and which is in use: the refiner's (job->refine.controlnet) as net 0
 * when the job refines, then each control[i].controlnet as the nets after it
 * (pf_models_control_net), all in the weights variant of job->fp16. Nothing
 * to do when the model holds those sources already (t->warm), else fetched
 * through the cache (on_fetch first, as for pf_models_get), loaded and
 * attached in place of the ones it had. A job without any ControlNet changes
 * nothing. On error err as for pf_models_get (err starts with the
 * field, "refine.controlnet: ..." or "control[1].controlnet: ..."; "loading
 * the ControlNet" when the files were fetched but do not load or do not fit
 * the model, PF_ERROR_MODEL), and the model keeps the ControlNets it had. */
int pf_models_controlnets(pf_models *m, pf_model *model, const pf_job *job, pf_model_timing *t,
                          void (*on_fetch)(void *), void *ctx, pf_error *err);
/* The pipeline's net index of the job's control[i] once pf_models_controlnets
 * attached the job's ControlNets: i, after the refiner's when the job refines. */
int pf_models_control_net(const pf_job *job, int i);
/* Attaches the job's IP-Adapters and image encoder (job->ip) to the model,
 * fetching them through the cache, unless the model holds that set already.
 * A job without image prompts changes nothing. On error err as for
 * pf_models_controlnets ("ip_adapters[1].adapter: ..."; an adapter or encoder
 * that does not fit the model is PF_ERROR_INVALID), and the model keeps what
 * it had. */
int pf_models_ip_adapters(pf_models *m, pf_model *model, const pf_job *job, pf_model_timing *t,
                          void (*on_fetch)(void *), void *ctx, pf_error *err);
/* Fetches an image through the cache (src: a URL and an optional digest) and
 * decodes it (PNG or JPEG, as Pillow's convert("RGB") reads it) into *rgb
 * (malloc'd, w x h x 3; the caller frees it). field names the source in
 * messages and err->field ("control[0].image"). On error *rgb is NULL; a file
 * that is not an image (or too large to be one) is PF_ERROR_INVALID. */
int pf_models_image(pf_models *m, const pf_job_source *src, const char *field, long max_pixels, uint8_t **rgb, int *w,
                    int *h, pf_error *err);
/* Marks the model idle (it stays loaded until evicted). */
void pf_models_put(pf_models *m, pf_model *model);
/* Number of models loaded and their total estimated bytes. */
int pf_models_loaded(const pf_models *m, uint64_t *bytes);
/* 1 when the model whose identity is key (pf_route_model_text) is loaded:
 * its jobs would not load anything. */
int pf_models_has(const pf_models *m, const char *key);

#endif
