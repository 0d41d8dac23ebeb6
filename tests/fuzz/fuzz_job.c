/* fuzz_job.c - libFuzzer target: arbitrary bytes as a Kafka job message through
 * pf_job_parse (JSON, every field's validation, URL and output-template checks),
 * then, for the jobs it accepts, the calls the worker makes on them: the support
 * check, the re-enqueue copy and the batching comparisons. A job that parses must
 * satisfy the invariants the worker relies on; anything else must be an error
 * naming a field, never a crash, leak or undefined behaviour. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pf_job job;
    char field[PF_JOB_FIELD_MAX];
    pf_error err;
    if (pf_job_parse(&job, (const char *)data, size, field, sizeof field, &err)) {
        if (strlen(err.msg) == 0 || strlen(job.job_id) > PF_JOB_ID_MAX) abort();
        return 0;
    }
    if (!job.job_id[0] || !job.base.url || !job.prompt || !job.negative_prompt || !job.output_url) abort();
    if (job.width % 8 || job.height % 8 || job.steps < 1 || job.num_images < 1 || job.attempt < 1) abort();
    pf_job_supported(&job, field, sizeof field, &err);
    if (!pf_job_same_images(&job, &job) || !pf_job_same_model(&job, &job)) abort();
    /* The re-enqueued copy parses to the same job with the next attempt. */
    char *again = pf_job_with_attempt((const char *)data, size, job.attempt + 1);
    pf_job copy;
    if (pf_job_parse(&copy, again, strlen(again), field, sizeof field, &err)) abort();
    if (copy.attempt != job.attempt + 1 || strcmp(copy.job_id, job.job_id) || !pf_job_same_images(&job, &copy)) abort();
    pf_job_free(&copy);
    free(again);
    pf_job_free(&job);
    return 0;
}
