/* job.h - a generation job as it arrives from Kafka (schemas/job.v1.json):
 * parsing and validation of every field.
 *
 * Messages are hostile: any byte string may arrive. pf_job_parse accepts only
 * a JSON object that follows the schema exactly; unknown fields are errors
 * (a misspelt "negative_promt" silently ignored would give wrong images; new
 * fields come with a new schema version). On error it names the field, as a
 * path such as "model.delta.sha256" or "model.loras[1].scale", so that the
 * rejected status tells the client what to fix.
 *
 * Validation here is about the job alone. What depends on the model (sizes the
 * UNet can take, the prompt's token count) is checked by pf_txt2img_check
 * once the model is loaded, what depends on the base image's size and the
 * VAE (a refine size that rounds to 0 or past PF_REFINE_MAX_SIZE) by
 * pf_refine_check once the model is loaded (the worker names the field with
 * pf_job_refine_field), and what this worker cannot run yet
 * (LoRAs, a text-to-image ControlNet, the old "refiner" object) by
 * pf_job_supported. */
#ifndef PF_JOB_H
#define PF_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define PF_JOB_SCHEMA "perflow.job.v1"
#define PF_JOB_ID_MAX 128          /* bytes of a job id */
#define PF_JOB_BATCH_ID_MAX 64     /* bytes of a batch id */
#define PF_JOB_PROMPT_MAX 4096     /* bytes of a prompt or negative prompt */
#define PF_JOB_MAX_LORAS 8
#define PF_JOB_MAX_SIDE 2048       /* pixels */
#define PF_JOB_MAX_STEPS 100
#define PF_JOB_MAX_IMAGES 16
#define PF_JOB_MAX_ATTEMPT 1000
#define PF_JOB_FIELD_MAX 64

typedef struct pf_job_source {
    const char *url;    /* NULL when the source is absent */
    const char *sha256; /* 64 lower-case hex digits, or NULL */
    float scale;        /* LoRA and ControlNet strength (default 1) */
} pf_job_source;

/* The refiner after text-to-image (the job's "refine" object), as `perflow
 * generate --refine` runs it: the base images quantised to 8 bits, then
 * ControlNet-Tile img2img with the job's seed, prediction type, windows and
 * clip_skip. */
typedef struct pf_job_refine {
    int on;                      /* the job has a "refine" object */
    pf_job_source controlnet;    /* a diffusers ControlNetModel folder; sha256: its weights file's (scale unused) */
    int size;                    /* short side of the refined image (1024); 0: the base image's own size */
    int steps;                   /* 1..100 (4) */
    float strength;              /* (0, 1] (1) */
    float guidance;              /* 0..30 (7.5) */
    float controlnet_scale;      /* -10..10 (1) */
    const char *prompt;          /* never NULL once parsed: PF_REFINE_PROMPT when absent */
    const char *negative_prompt; /* never NULL: PF_REFINE_NEGATIVE_PROMPT when absent, "" when given as "" */
    int keep_base;               /* also upload the text-to-image images (stage "base") */
} pf_job_refine;

/* The {stage} values of output templates and the "stage" of outputs. */
#define PF_STAGE_BASE "base"       /* text-to-image images (every job that does not refine) */
#define PF_STAGE_REFINED "refined" /* the refiner's images */

typedef struct pf_job {
    char job_id[PF_JOB_ID_MAX + 1];
    const char *batch_id;             /* the client's batch (perflow submit), or NULL */
    int attempt;                      /* 1 for the first delivery; re-enqueues count up */
    pf_job_source base;               /* a diffusers base URL */
    pf_job_source delta;              /* PeRFlow delta weights, a .safetensors URL (optional) */
    pf_job_source loras[PF_JOB_MAX_LORAS];
    int n_loras;
    pf_job_source controlnet;         /* optional */
    const char *control_image;        /* the ControlNet conditioning image URL */
    int fp16;                         /* prefer the .fp16 weights variant of the base */
    const char *prompt;
    const char *negative_prompt;      /* "" when absent */
    int width, height, steps, num_images, clip_skip;
    float guidance;
    uint64_t seed;
    const char *prediction_type;      /* NULL: the model's own */
    int windows;                      /* 0: the model's own */
    int has_refiner;                  /* the old "refiner" object: rejected as unsupported (use refine) */
    pf_job_refine refine;
    const char *output_url;           /* destination template, s3://... or file:///... */
    const char *output_format;        /* "png" */
    long long deadline_ms;            /* ms since the epoch; 0 when none */
    int priority;                     /* 0..9, informational (priority is the topic) */
    void *json;                       /* the parsed document; the strings above point into it */
} pf_job;

/* Parses and validates data (len bytes, not NUL-terminated). On success *job
 * holds the job (release with pf_job_free). On error returns -1, err has one
 * line, and field (n bytes) names the offending field ("" when the message is
 * not a JSON object at all); job->job_id is filled whenever the message had a
 * valid job_id, so that the rejection can be addressed to it, else it is "".
 * Nothing needs freeing after an error. */
int pf_job_parse(pf_job *job, const char *data, size_t len, char *field, size_t n, pf_error *err);
void pf_job_free(pf_job *job);

/* Checks that this worker can run the job: error naming the field for the
 * features the worker does not run (LoRAs, a text-to-image ControlNet, the
 * old "refiner" object). */
int pf_job_supported(const pf_job *job, char *field, size_t n, pf_error *err);

/* The destination of image index of stage (PF_STAGE_BASE or PF_STAGE_REFINED):
 * the output template with {stage} replaced, then {job_id}, {index} and
 * {seed} (pf_output_key). On error returns -1 with err set and out unspecified. */
int pf_job_output_url(char *out, size_t n, const pf_job *job, const char *stage, int index, pf_error *err);

/* The job field of a pf_refine_params field that pf_refine_check refused (its
 * *param): "size" -> "refine.size", "windows" -> "sampler.windows", ...;
 * "refine" for NULL or a name it does not know. */
const char *pf_job_refine_field(const char *param);

/* The message to re-enqueue: the original job with "attempt" set to attempt,
 * as compact JSON in a malloc'd string (caller frees). data must parse. */
char *pf_job_with_attempt(const char *data, size_t len, int attempt);

/* 1 when both jobs can share one model load and one batch: same sources,
 * weights variant and image size, and either neither refines or both refine
 * with the same ControlNet source (so a batch attaches one ControlNet, and
 * jobs that refine and jobs that do not never share an engine call). */
int pf_job_same_model(const pf_job *a, const pf_job *b);
/* 1 when both jobs ask for exactly the same images (everything the engine
 * reads in both stages is equal), so that one item of an engine call serves
 * both (jobs that differ in prompt or seed still share the call, as items of
 * their own). keep_base and the output template do not count. */
int pf_job_same_images(const pf_job *a, const pf_job *b);

/* Parses an RFC 3339 timestamp ("2025-11-26T03:04:05Z", fraction and offset
 * optional) into ms since the epoch. */
int pf_rfc3339_parse(const char *s, long long *ms);

#endif
