/* outputs.c - a job's images as files at its destination: each PNG with its
 * provenance text, uploaded with retries (outputs.h). */
#include "outputs.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "image.h"
#include "log.h"
#include "metrics.h"
#include "output_key.h"
#include "provenance.h"
#include "scratch.h"
#include "status.h"

/* The sources of a job's images as its PNG text names them (provenance.h):
 * "URL:SCALE, ..." of its LoRAs, "URL:SCALE=IMAGE URL, ..." of its
 * ControlNets (the CLI's "loras" and "controlnets" with URLs), and A1111's
 * model hash when the job pins a single-file checkpoint. The model's URL is
 * not written: a presigned URL carries a signature. */
typedef struct sources {
    char loras[2048], controls[4096], ips[4096], hash[11];
} sources;

static void describe_sources(sources *t, const pf_job *job) {
    size_t used = 0;
    t->loras[0] = t->controls[0] = t->hash[0] = '\0';
    for (int i = 0; i < job->n_loras && used < sizeof t->loras; i++)
        used += (size_t)snprintf(t->loras + used, sizeof t->loras - used, "%s%s:%g", i ? ", " : "", job->loras[i].url,
                                 (double)job->loras[i].scale);
    used = 0;
    for (int i = 0; i < job->n_controls && used < sizeof t->controls; i++)
        used += (size_t)snprintf(t->controls + used, sizeof t->controls - used, "%s%s:%g=%s", i ? ", " : "",
                                 job->control[i].controlnet.url, (double)job->control[i].scale,
                                 job->control[i].image.url);
    used = 0;
    t->ips[0] = '\0';
    for (int i = 0; i < job->n_ip && used < sizeof t->ips; i++)
        used += (size_t)snprintf(t->ips + used, sizeof t->ips - used, "%s%s:%g=%s", i ? ", " : "", job->ip[i].adapter.url,
                                 (double)job->ip[i].scale, job->ip[i].image.url);
    if (job->base_file && job->base.sha256) snprintf(t->hash, sizeof t->hash, "%.10s", job->base.sha256);
}

/* Writes one image and uploads it to dest with retries; appends its output or
 * sets the failure. Returns 0 when it was stored. */
static int store_one(pf_exec *x, pf_exec_job *j, const pf_image_set *set, int i, const char *dest) {
    const pf_job *job = &j->job;
    const pf_worker_config *cfg = x->cfg;
    char path[4096];
    pf_error e;
    if (pf_scratch_file(path, sizeof path, cfg->work_dir, job->job_id, ".png", &e)) {
        pf_exec_fail(j, PF_ERR_INTERNAL, 1, 0, "writing the image: %s", e.msg);
        return -1;
    }
    /* the same text whenever the job runs, so that a redelivery writes identical bytes */
    sources src;
    describe_sources(&src, job);
    const pf_provenance prov = {.rq = &j->rq, .sdxl = j->family && !strcmp(j->family, "sdxl"),
                                .job_id = job->job_id, .model_hash = src.hash, .loras = src.loras,
                                .controlnets = src.controls, .ip_adapters = src.ips,
                                .image_encoder = job->n_ip ? job->ip[0].image_encoder.url : NULL,
                                .refine_controlnet = job->refine.controlnet.url,
                                .stage = job->refine.on ? set->stage : NULL, .out_width = set->w,
                                .out_height = set->h};
    pf_provenance_text *text = PF_MALLOC(sizeof *text);
    char index[16];
    snprintf(index, sizeof index, "%d", i);
    pf_provenance_fill(text, &prov, index);
    int bad = pf_png_write(path, set->rgb + (size_t)set->w * set->h * 3 * i, set->w, set->h, text->kv, &e);
    free(text);
    if (bad) {
        pf_exec_fail(j, PF_ERR_INTERNAL, 1, 0, "writing the image: %s", e.msg);
        return -1;
    }
    pf_s3_result res;
    int ok = 0;
    for (int t = 1; t <= cfg->retries && !pf_exec_ended(x, j); t++) {
        if (!pf_s3_put_file(&res, x->s3, x->cred, dest, path, &e)) {
            ok = 1;
            break;
        }
        pf_wlog(PF_LOG_WARN, "job.upload_failed", job->job_id, json_pack("{s:i, s:i}", "try", t, "of", cfg->retries),
                "%s", e.msg);
        if (t < cfg->retries) {
            j->retries++;
            pf_exec_sleep(x, pf_backoff_ms(t, cfg->retry_base_ms, cfg->retry_max_ms));
        }
    }
    unlink(path);
    if (!ok) {
        if (j->outcome == PF_OUT_NONE && !atomic_load(x->abandon))
            pf_exec_fail(j, PF_ERR_UPLOAD, 1, 0, "uploading %s: %s", dest, e.msg);
        return -1;
    }
    json_array_append_new(j->outputs, json_pack("{s:s, s:s, s:I, s:i, s:I, s:s}", "url", dest, "sha256", res.sha256,
                                                "size", (json_int_t)res.size, "index", i, "seed",
                                                (json_int_t)job->seed, "stage", set->stage));
    return 0;
}

void pf_exec_store(pf_exec *x, pf_exec_job *j, const pf_image_set *sets, int nsets) {
    const pf_job *job = &j->job;
    pf_exec_post(x, job, PF_ST_UPLOADING, NULL);
    long long t0 = pf_now_ms();
    j->outputs = json_array();
    for (int s = 0; s < nsets && j->outcome == PF_OUT_NONE; s++)
        for (int i = 0; i < job->num_images && !pf_exec_ended(x, j); i++) {
            char dest[2048];
            pf_error e;
            if (pf_job_output_url(dest, sizeof dest, job, sets[s].stage, i, &e) || pf_exec_dest_allowed(x->cfg, dest, &e)) {
                j->outcome = PF_OUT_REJECTED;
                j->dead_letter = 1;
                snprintf(j->code, sizeof j->code, PF_ERR_INVALID);
                snprintf(j->field, sizeof j->field, "output.url");
                snprintf(j->err.msg, sizeof j->err.msg, "output.url: %s", e.msg);
                break;
            }
            if (store_one(x, j, &sets[s], i, dest)) break;
        }
    j->upload_ms = pf_now_ms() - t0;
    pf_metrics_stage("upload", j->upload_ms);
    if (j->outcome == PF_OUT_NONE && !atomic_load(x->abandon)) j->outcome = PF_OUT_SUCCEEDED;
}

