/* fuzz_job.c - libFuzzer target: arbitrary bytes as a Kafka job message through
 * pf_job_parse (JSON, every field's validation, URL and output-template checks),
 * then, for the jobs it accepts, the calls the worker makes on them: the support
 * check, the family checks, the output keys of each stage it uploads, the
 * re-enqueue copy and the batching comparisons. A job that parses must
 * satisfy the invariants the worker relies on; anything else must be an error
 * naming a field, never a crash, leak or undefined behaviour. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "output_key.h"
#include "pipeline.h"

/* The output allow lists (pf_output_allowed) on the raw bytes as a
 * destination: a one-line error, or a destination under one of the lists. */
static void fuzz_output_allowed(const uint8_t *data, size_t size) {
    char dest[512];
    size_t n = size < sizeof dest - 1 ? size : sizeof dest - 1;
    memcpy(dest, data, n);
    dest[n] = '\0';
    pf_error err = {""};
    if (pf_output_allowed(dest, "/srv/out/", "renders, models/x", &err)) {
        if (!err.msg[0] || strchr(err.msg, '\n')) abort();
        return;
    }
    if (strncmp(dest, "file:///srv/out/", 16) && strncmp(dest, "s3://renders/", 13) && strncmp(dest, "s3://models/x/", 14))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_output_allowed(data, size);
    pf_job job;
    char field[PF_JOB_FIELD_MAX];
    pf_error err;
    if (pf_job_parse(&job, (const char *)data, size, field, sizeof field, &err)) {
        if (strlen(err.msg) == 0 || strlen(job.job_id) > PF_JOB_ID_MAX) abort();
        return 0;
    }
    if (!job.job_id[0] || !job.base.url || !job.prompt || !job.output_url) abort();
    if (job.width % 8 || job.height % 8 || job.width < 0 || job.height < 0 || job.steps < 1 || job.num_images < 1 ||
        job.attempt < 1)
        abort();
    /* the model: a single file alone takes configs; LoRAs are .safetensors files in range */
    if (job.config.url && !job.base_file) abort();
    if (job.n_loras < 0 || job.n_loras > PF_JOB_MAX_LORAS) abort();
    for (int i = 0; i < job.n_loras; i++)
        if (!job.loras[i].url || !strstr(job.loras[i].url, ".safetensors") ||
            !(job.loras[i].scale >= -10.0f && job.loras[i].scale <= 10.0f))
            abort();
    if (job.n_controls < 0 || job.n_controls > PF_JOB_MAX_CONTROLS - (job.refine.on ? 1 : 0)) abort();
    for (int i = 0; i < job.n_controls; i++)
        if (!job.control[i].controlnet.url || !job.control[i].image.url ||
            !(job.control[i].scale >= -10.0f && job.control[i].scale <= 10.0f))
            abort();
    for (int k = 0; k < 2; k++)
        if (job.original_size[k] < 0 || job.original_size[k] > PF_JOB_MAX_TIME_ID || job.crop_coords[k] < 0 ||
            job.crop_coords[k] > PF_JOB_MAX_TIME_ID || job.target_size[k] < 0 ||
            job.target_size[k] > PF_JOB_MAX_TIME_ID || !job.original_size[k] != !job.original_size[1 - k] ||
            !job.target_size[k] != !job.target_size[1 - k])
            abort();
    /* each family check either passes or names a field */
    for (int sdxl = 0; sdxl < 2; sdxl++)
        if (pf_job_family_check(&job, sdxl, field, sizeof field, &err) && (!field[0] || !err.msg[0])) abort();
    const pf_job_refine *r = &job.refine;
    if (r->on && (!r->controlnet.url || !r->prompt || !r->negative_prompt || r->size < 0 ||
                  r->size > PF_REFINE_MAX_SIZE || r->steps < 1 || r->steps > PF_JOB_MAX_STEPS ||
                  !(r->strength > 0.0f && r->strength <= 1.0f) || !(r->guidance >= 0.0f && r->guidance <= 30.0f) ||
                  !(r->controlnet_scale >= -10.0f && r->controlnet_scale <= 10.0f)))
        abort();
    if (!r->on && (r->keep_base || r->controlnet.url)) abort();
    /* every key the job will upload expands (the worker relies on it) */
    char url[2048];
    for (int i = 0; i < job.num_images; i++)
        if (pf_job_output_url(url, sizeof url, &job, r->on ? PF_STAGE_REFINED : PF_STAGE_BASE, i, &err) ||
            (r->keep_base && pf_job_output_url(url, sizeof url, &job, PF_STAGE_BASE, i, &err)))
            abort();
    pf_job_supported(&job, field, sizeof field, &err);
    /* batching: a job batches with itself, except a shard job, which always runs
     * alone (its samples are its batch) */
    if (job.samples ? pf_job_same_model(&job, &job)
                    : !pf_job_same_images(&job, &job) || !pf_job_same_model(&job, &job))
        abort();
    /* The re-enqueued copy parses to the same job with the next attempt. */
    char *again = pf_job_with_attempt((const char *)data, size, job.attempt + 1);
    pf_job copy;
    if (pf_job_parse(&copy, again, strlen(again), field, sizeof field, &err)) abort();
    if (copy.attempt != job.attempt + 1 || strcmp(copy.job_id, job.job_id) || !copy.samples != !job.samples ||
        (!job.samples && !pf_job_same_images(&job, &copy)))
        abort();
    pf_job_free(&copy);
    free(again);
    pf_job_free(&job);
    return 0;
}
