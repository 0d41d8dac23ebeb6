/* execute.h - running a batch of jobs on the job thread: the model from the
 * warm set (fetched through the cache when needed), the engine, the PNG files
 * and their upload, with the non-terminal status events on the way
 * (downloading, running step i of n of a stage, uploading).
 *
 * A batch is consecutive jobs of one model (base, configs, delta and LoRA
 * set: one loaded pipeline with its fused weights, so one family) and image
 * size, with one set of ControlNets: either none refines or all refine with
 * one ControlNet source, and all have the same text-to-image ControlNet
 * sources (pf_job_same_model). Once the model is loaded each job becomes one
 * engine request (request.h) whose unset fields (sizes, sampler settings) are
 * resolved as `perflow generate` resolves them; fields the family
 * does not take (pf_job_family_check) and sources that do not fit the model
 * (a LoRA that matches nothing) reject the job naming the field. Each job's
 * control images are fetched through the cache and decoded before anything
 * runs (a file that is not an image rejects the job naming
 * "control[i].image").
 * Jobs that also share steps, guidance and sampler settings
 * (pf_txt2img_batchable) share one engine call (pf_pipeline_txt2img_batch), up
 * to max_batch images, whatever their prompts, negative prompts, seeds and
 * image counts: each gets the images it would get alone (to float rounding,
 * so a job run again in another batch may differ by one 8-bit level in a few
 * pixels; see pf_pipeline_txt2img_batch). Jobs that ask for
 * exactly the same images (pf_job_same_images) are one item of that call and
 * cost nothing more. Jobs that differ in those settings run in calls of their
 * own, in arrival order.
 *
 * Refine jobs then go on as `perflow generate --refine` does: their images
 * are quantised to 8 bits (pf_image_to_u8, the predictor's PIL hand-over) and
 * refined (pf_pipeline_refine_batch) with the batch's ControlNet attached to
 * the model (pf_models_controlnet). Refine calls are formed like the
 * text-to-image ones, over the refine settings (pf_refine_batchable: output
 * size, steps, strength, guidance, ControlNet scale, sampler settings; prompts
 * and seeds may differ), so two refine jobs share a refine call whether or not
 * they shared the text-to-image call. Every refine setting is checked
 * (pf_refine_check) before anything runs; a job the engine refuses is
 * rejected naming the field (pf_job_refine_field). "running" events say the
 * stage ("generate", "refine") and its step; cancellation and deadlines are
 * seen before every step of either stage. The refined images are the job's
 * outputs (stage "refined"); with keep_base the text-to-image ones are
 * uploaded too (stage "base", after the refined ones, under the {stage}
 * expansion of the template).
 *
 * Transient steps (download, upload) are tried cfg->retries times with
 * backoff; what happens after that (re-enqueue, dead letter) is the main
 * loop's decision, as is everything that needs Kafka acknowledgements or
 * Redis. The job thread touches no Redis connection and no consumer. */
#ifndef PF_EXECUTE_H
#define PF_EXECUTE_H

#include <jansson.h>
#include <stdatomic.h>

#include "worker_config.h"
#include "credentials.h"
#include "digest.h"
#include "job.h"
#include "models.h"
#include "producer.h"
#include "request.h"
#include "s3.h"

typedef enum { PF_OUT_NONE, PF_OUT_SUCCEEDED, PF_OUT_FAILED, PF_OUT_REJECTED, PF_OUT_CANCELLED } pf_outcome;

typedef struct pf_exec_job {
    /* set by the main loop */
    pf_job job;
    atomic_int cancel;              /* a cancel request was seen */
    long long t_received;           /* monotonic ms: the message taken up (before the Redis checks) */
    long long t_accepted;           /* monotonic ms: lease held, "accepted" sent */
    long long t_limit;              /* monotonic ms: max_job_seconds after t_accepted; 0: none */
    /* results */
    pf_outcome outcome;
    int retryable;                  /* FAILED: another attempt may succeed */
    int dead_letter;                /* FAILED or REJECTED: the message goes to the dead-letter topic */
    char code[32];                  /* FAILED, REJECTED: status.h error code */
    char field[PF_JOB_FIELD_MAX];   /* REJECTED: the field at fault, or "" */
    pf_error err;
    json_t *outputs;                /* SUCCEEDED: [{"url", "sha256", "size", "index", "seed", "stage"}] */
    long long download_ms, load_ms; /* the model's and the ControlNet's, together */
    long long engine_ms;            /* the text-to-image engine call */
    long long refine_ms;            /* the refine engine call (refine jobs) */
    long long upload_ms;
    long long t_engine_start, t_engine_end; /* monotonic ms, first engine call to last; 0 if the engine did not run */
    int retries;                    /* transient steps tried again */
    int batch_jobs;                 /* jobs that shared this job's text-to-image call (itself included) */
    int refine_batch_jobs;          /* jobs that shared this job's refine call (0: it does not refine) */
    int model_warm;
    const char *family;             /* the model's family (pf_family_name: "sd" or "sdxl") as soon as the model is
                                       loaded, for the status timings; NULL when no model was loaded (a static
                                       string: it outlives the model) */
    /* private to execute.c: a refine job's 8-bit text-to-image images between the stages, and the
     * text-to-image ControlNets' condition images (control[i], decoded) */
    uint8_t *base_rgb;
    uint8_t *control_rgb[PF_JOB_MAX_CONTROLS];
    pf_control controls[PF_JOB_MAX_CONTROLS];
    uint8_t *ip_rgb[PF_JOB_MAX_IP_ADAPTERS]; /* the image prompts, decoded (freed with the batch) */
    pf_ip_image ip_images[PF_JOB_MAX_IP_ADAPTERS];
    pf_request rq;                  /* the job as the engine runs it, resolved once the model is loaded */
    /* private to execute.c and result_replay.c: the result store's identities of the job's images
     * (NULL when the store is off or the job refines), and whether they were all found there */
    char (*store_ids)[PF_SHA256_HEX];
    int from_store;
    /* set by pf_exec_capture's caller (worker/shard.c): the job is one sample of parent, its images go to
     * capture (num_images x width x height x 3 bytes) instead of being uploaded, and it posts no events */
    uint8_t *capture;
    struct pf_exec_job *parent;
    int captured;                   /* capture holds the images (computed, or from the store) */
} pf_exec_job;

typedef struct pf_exec {
    const pf_worker_config *cfg;
    pf_models *models;
    pf_producer *producer;
    const pf_s3_config *s3;
    const pf_credentials *cred;
    atomic_int *abandon;            /* set: stop as soon as possible, report nothing */
    struct pf_rstore *rstore;       /* the result store (owned by the job thread), NULL: off */
    const char *numerics;           /* pf_image_numerics of the backend */
} pf_exec;

/* Runs jobs[0..n) (one model and size) and fills their results. Never fails
 * as a whole: each job ends with an outcome (or PF_OUT_NONE when abandoned). */
void pf_exec_batch(pf_exec *x, pf_exec_job *jobs, int n);

/* Runs the text-to-image stage of jobs[0..n), which share model (loaded by
 * the caller, in use) and the job they are samples of (their parent, whose
 * checks passed), in engine calls of up to max_batch images, and leaves each
 * job's 8-bit images in its capture buffer (captured 1) instead of uploading
 * them. Each job's request is resolved here. The result store serves and
 * records them as any job's. A job whose call failed ends FAILED as in
 * pf_exec_batch. */
void pf_exec_capture(pf_exec *x, pf_model *model, pf_exec_job *jobs, int n);
/* Fills j->rq from j's job and resolves it against the model (what
 * pf_exec_batch and pf_exec_capture do for each job first). */
void pf_exec_resolve(pf_exec_job *j, const pf_pipeline *p);

/* 0 when dest may be written: file:// only under cfg->file_output_root,
 * s3:// only under cfg->s3_output_prefixes (pf_output_allowed; jobs are
 * hostile and must not write anywhere else); else -1 with err saying why,
 * naming the setting. */
int pf_exec_dest_allowed(const pf_worker_config *cfg, const char *dest, pf_error *err);

/* For the job thread's modules (execute.c, outputs.c, shard.c): ends j as
 * failed with code and message (retryable: another attempt may succeed;
 * dead_letter: the message goes to the dead-letter topic). */
void pf_exec_fail(pf_exec_job *j, const char *code, int retryable, int dead_letter, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Ends a job that was cancelled or ran out of time (deadline, max_job_seconds);
 * returns 1 if it did, or if it had ended already or the batch is abandoned. */
int pf_exec_ended(pf_exec *x, pf_exec_job *j);
/* Sleeps ms in short slices; returns early when the batch is abandoned. */
void pf_exec_sleep(pf_exec *x, long ms);

/* Sends a non-terminal status event for job (fire and forget). */
void pf_exec_post(pf_exec *x, const pf_job *job, const char *state, json_t *extra);

#endif
