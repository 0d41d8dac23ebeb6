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
 * UNet can take, the prompt's token count, SDXL-only fields on another
 * family, a LoRA that matches nothing) is checked once the model is loaded
 * (worker/execute.c, pf_txt2img_check), what depends on the base image's size
 * and the VAE (a refine size that rounds to 0 or past PF_REFINE_MAX_SIZE) by
 * pf_refine_check once the model is loaded (the worker names the field with
 * pf_job_refine_field), and what this worker does not run (the old
 * "refiner" object, the old "model.controlnet" object) by pf_job_supported. */
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
#define PF_JOB_MAX_CONTROLS 8      /* PF_MAX_CONTROLS, the refiner's ControlNet included */
#define PF_JOB_MAX_IP_ADAPTERS 4   /* PF_MAX_IP_ADAPTERS */
#define PF_JOB_MAX_TIME_ID 16384   /* SDXL's original_size, crop_coords and target_size components */
#define PF_JOB_MAX_SIDE 2048       /* pixels */
#define PF_JOB_MAX_STEPS 100
#define PF_JOB_MAX_IMAGES 16
#define PF_JOB_MAX_ATTEMPT 1000
#define PF_JOB_FIELD_MAX 64
#define PF_JOB_MAX_SAMPLES 10000   /* samples of a shard job (all within the message's 960 KiB) */
#define PF_JOB_MAX_SHARD 999999    /* a shard job's "shard" number: keys are 6 digits of it, 4 of the sample */

/* One sample of a shard job (an item of its "samples" array): the prompts and
 * seed of one image; everything else is the job's. The strings and meta point
 * into the job's document. */
typedef struct pf_job_sample {
    const char *prompt;
    const char *negative_prompt;   /* NULL when absent (as the job's negative_prompt) */
    const char *prompt_2;          /* SDXL, NULL when absent */
    const char *negative_prompt_2; /* SDXL, NULL when absent */
    uint64_t seed;
    void *meta;                    /* the sample's free "meta" object (json_t), or NULL */
} pf_job_sample;

typedef struct pf_job_source {
    const char *url;    /* NULL when the source is absent */
    const char *sha256; /* 64 lower-case hex digits, or NULL */
    float scale;        /* LoRA and ControlNet strength (default 1) */
} pf_job_source;

/* One ControlNet of text-to-image (an item of the job's "control" array), as
 * `perflow generate --controlnet DIR:SCALE --control-image FILE` runs it:
 * diffusers' StableDiffusionControlNetPipeline, several summed as
 * MultiControlNetModel, in the order given. */
typedef struct pf_job_control {
    pf_job_source controlnet; /* a diffusers ControlNetModel folder (COMPONENT source; sha256: its weights') */
    pf_job_source image;      /* the condition image, a PNG or JPEG file (sha256: the file's) */
    float scale;              /* controlnet_conditioning_scale, -10..10 (1) */
} pf_job_control;

/* One image prompt (an item of the job's "ip_adapters" array), as `perflow
 * generate --ip-adapter FILE:SCALE --ip-image FILE --image-encoder DIR` runs it:
 * diffusers' load_ip_adapter + set_ip_adapter_scale, several in order. */
typedef struct pf_job_ip_adapter {
    pf_job_source adapter;       /* an IP-Adapter .safetensors file (plain or plus; sha256: the file's) */
    pf_job_source image;         /* the image prompt, a PNG or JPEG file (sha256: the file's) */
    pf_job_source image_encoder; /* a CLIPVisionModelWithProjection folder (sha256: its weights'); the same
                                    for every item of a job */
    float scale;                 /* set_ip_adapter_scale, -10..10 (1) */
} pf_job_ip_adapter;

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
    pf_job_source base;               /* a diffusers base URL, or a single-file checkpoint (base_file) */
    int base_file;                    /* base.url names one .safetensors checkpoint (LDM layout); sha256 may pin it */
    pf_job_source config;             /* a single file's configs: a diffusers folder URL (configs fetched, not
                                         its weights), pf_model_spec's model_config; NULL url: none */
    pf_job_source delta;              /* PeRFlow delta weights, a .safetensors URL (optional) */
    pf_job_source loras[PF_JOB_MAX_LORAS]; /* .safetensors URLs with scale, fused in this order after the delta */
    int n_loras;
    pf_job_control control[PF_JOB_MAX_CONTROLS]; /* text-to-image ControlNets with their images */
    int n_controls;
    int has_model_controlnet;         /* the old "model.controlnet" object: rejected as unsupported (use control) */
    pf_job_ip_adapter ip[PF_JOB_MAX_IP_ADAPTERS]; /* image prompts (IP-Adapter) */
    int n_ip;
    int fp16;                         /* prefer the .fp16 weights variant of the base */
    const char *prompt;
    const char *negative_prompt;      /* NULL when absent (SDXL: no negative prompt at all, zero embeddings;
                                         SD-1.x/2.x: the empty prompt), "" when given as "" (encoded) */
    const char *prompt_2;             /* SDXL's second text encoder; NULL when absent (the prompt) */
    const char *negative_prompt_2;    /* NULL when absent (the negative prompt) */
    int original_size[2];             /* SDXL time ids as the engine takes them, (height, width), from the job's
                                         [width, height]; 0, 0 when absent (the image's size) */
    int crop_coords[2];               /* (top, left) from the job's [x, y]; 0, 0 when absent */
    int target_size[2];               /* (height, width) from [width, height]; 0, 0 when absent */
    int width, height;                /* multiples of 8; 0 when absent: the model family's side (512, SDXL 1024),
                                         which the worker fills in once the model is loaded */
    int steps, num_images, clip_skip;
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
    pf_job_sample *samples;           /* a shard job's samples (malloc'd), NULL for an ordinary job: its prompt
                                         fields then hold the first sample's, num_images is 1, and output.url
                                         names the one WebDataset tar of the job (worker/shard.h) */
    int n_samples;
    int shard;                        /* a shard job's "shard" number (0..PF_JOB_MAX_SHARD), the first digits
                                         of its keys */
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
 * features the worker does not run (the old "refiner" and "model.controlnet"
 * objects, whose messages name what replaces them). */
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

/* 1 when both jobs can share one model load and one batch: the same base
 * (and its digest), configs, delta, LoRA set (URLs, digests and scales, in
 * order: the fused weights), weights variant and image size, and the same
 * ControlNets attached: either neither refines or both refine with the same
 * ControlNet source, and the same text-to-image ControlNet sources in the
 * same order (their images and scales may differ). So a batch attaches one
 * set of ControlNets, jobs with different LoRAs never share a batch, and
 * neither do jobs of different models (of different families, then). */
int pf_job_same_model(const pf_job *a, const pf_job *b);
/* 1 when both jobs ask for exactly the same images (everything the engine
 * reads in both stages is equal), so that one item of an engine call serves
 * both (jobs that differ in prompt or seed still share the call, as items of
 * their own). keep_base and the output template do not count. */
int pf_job_same_images(const pf_job *a, const pf_job *b);

/* Checks the job against its model's family once the model is loaded (sdxl:
 * pf_pipeline_family is PF_FAMILY_SDXL): SD-1.x/2.x models take none of
 * SDXL's fields (prompt_2, negative_prompt_2, original_size, crop_coords,
 * target_size), and SDXL models neither text-to-image ControlNets nor the
 * refiner (ControlNet-Tile is an SD-1.5 model) yet. On error
 * -1 with field (n bytes) naming the first field at fault and err its
 * message. */
int pf_job_family_check(const pf_job *job, int sdxl, char *field, size_t n, pf_error *err);

/* Parses an RFC 3339 timestamp ("2025-11-26T03:04:05Z", fraction and offset
 * optional) into ms since the epoch. */
int pf_rfc3339_parse(const char *s, long long *ms);

#endif
