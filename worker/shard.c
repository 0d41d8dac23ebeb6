/* shard.c - a shard job's samples in engine batches, written as one WebDataset tar (shard.h). */
#include "shard.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "cache.h"
#include "image_identity.h"
#include "log.h"
#include "metrics.h"
#include "result_replay.h"
#include "scratch.h"
#include "status.h"

void pf_shard_key(char *out, size_t n, int shard, int index) { snprintf(out, n, "%06d%04d", shard, index); }

static void shard_fail(pf_exec_job *j, pf_outcome outcome, const char *code, int retryable, const char *field,
                       const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void shard_fail(pf_exec_job *j, pf_outcome outcome, const char *code, int retryable, const char *field,
                       const char *fmt, ...) {
    j->outcome = outcome;
    j->retryable = retryable;
    j->dead_letter = outcome == PF_OUT_REJECTED;
    snprintf(j->code, sizeof j->code, "%s", code);
    snprintf(j->field, sizeof j->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err.msg, sizeof j->err.msg, fmt, ap);
    va_end(ap);
}

/* ["url", "content digest"] of a source the model loaded, null when the job has none. */
static json_t *source(const pf_job_source *s, const pf_cache_lease *l) {
    if (!s->url || !l) return json_null();
    char hex[PF_SHA256_HEX];
    pf_cache_lease_digest(hex, l);
    return json_pack("{s:s, s:s}", "url", s->url, "digest", hex);
}

/* The model part of every sample's JSON: URLs with the content digests that shaped the images. */
static json_t *model_doc(const pf_job *job, const pf_model *model, const char *numerics) {
    json_t *loras = json_array();
    for (int i = 0; i < job->n_loras; i++) {
        json_t *s = source(&job->loras[i], model->loras[i]);
        json_object_set_new(s, "scale", json_real(job->loras[i].scale));
        json_array_append_new(loras, s);
    }
    return json_pack("{s:o, s:o, s:o, s:o, s:s, s:s}", "base", source(&job->base, model->base), "config",
                     source(&job->config, model->config), "delta", source(&job->delta, model->delta), "loras", loras,
                     "family", model->family, "numerics", numerics);
}

static json_t *text_or_null(const char *s) { return s ? json_string(s) : json_null(); }

/* One sample's {key}.json, compact, keys sorted. */
static char *sample_json(const pf_exec_job *parent, const pf_exec_job *s, int index, const char *key,
                         const json_t *model, const char *identity) {
    const pf_job *job = &parent->job;
    const pf_job_sample *smp = &job->samples[index];
    const pf_txt2img_params *g = &s->rq.gen;
    json_t *settings = json_pack("{s:i, s:i, s:i, s:f, s:s?, s:i, s:i}", "width", g->width, "height", g->height,
                                 "steps", g->steps, "guidance", (double)g->guidance, "prediction_type",
                                 g->prediction_type, "windows", g->windows, "clip_skip", g->clip_skip);
    json_t *doc = json_pack("{s:s, s:s, s:o, s:i, s:i, s:s, s:o, s:o, s:o, s:I, s:O, s:o, s:o, s:s, s:b}", "key", key,
                            "job_id", job->job_id, "batch_id", text_or_null(job->batch_id), "shard", job->shard,
                            "index", index, "prompt", smp->prompt, "negative_prompt",
                            text_or_null(smp->negative_prompt), "prompt_2", text_or_null(smp->prompt_2),
                            "negative_prompt_2", text_or_null(smp->negative_prompt_2), "seed", (json_int_t)smp->seed,
                            "meta", smp->meta ? (json_t *)smp->meta : json_null(), "settings", settings, "model",
                            model, "identity", identity, "from_store", s->from_store);
    json_object_set_new(doc, "timings", json_pack("{s:I}", "engine_ms", (json_int_t)(s->from_store ? 0 : s->engine_ms)));
    char *out = json_dumps(doc, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(doc);
    return out;
}

static int add_member(struct archive *a, const char *name, const void *data, size_t len, pf_error *err) {
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_size(e, (la_int64_t)len);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, 0, 0);
    int rc = archive_write_header(a, e) != ARCHIVE_OK ||
             (len && archive_write_data(a, data, len) != (la_ssize_t)len);
    archive_entry_free(e);
    if (rc) return pf_fail(err, "writing the tar member %s: %s", name, archive_error_string(a));
    return 0;
}

/* Posts the shard's progress as a "running" event. */
static void progress(pf_exec *x, const pf_exec_job *j, int done, int total) {
    pf_exec_post(x, &j->job, PF_ST_RUNNING,
                 json_pack("{s:s, s:i, s:i, s:i, s:i}", "stage", "generate", "step", j->job.steps, "steps",
                           j->job.steps, "samples_done", done, "samples_total", total));
}

/* Makes samples [from, from + k) into subs (their images into rgb) and
 * appends their members to the tar. Returns 0, or -1 with j's outcome set
 * (or j gone). */
static int run_chunk(pf_exec *x, pf_model *model, pf_exec_job *j, pf_exec_job *subs, int from, int k, uint8_t *rgb,
                     struct archive *a, const json_t *mdoc, int *hits) {
    const pf_job *job = &j->job;
    const size_t px = (size_t)job->width * job->height * 3;
    memset(subs, 0, sizeof *subs * (size_t)k);
    for (int i = 0; i < k; i++) {
        pf_exec_job *s = &subs[i];
        const pf_job_sample *smp = &job->samples[from + i];
        s->job = *job; /* a view: the strings and sources point into j's document */
        s->job.prompt = smp->prompt;
        s->job.negative_prompt = smp->negative_prompt;
        s->job.prompt_2 = smp->prompt_2;
        s->job.negative_prompt_2 = smp->negative_prompt_2;
        s->job.seed = smp->seed;
        s->job.num_images = 1;
        memcpy(s->controls, j->controls, sizeof s->controls);
        s->parent = j;
        s->capture = rgb + px * (size_t)i;
        s->t_received = j->t_received;
        s->t_accepted = j->t_accepted;
    }
    /* each sample against the model's family (SDXL's prompts) and the engine's checks before anything
     * of the chunk runs; the job's own checks saw only the first sample */
    const int sdxl = pf_pipeline_family(model->pipe) == PF_FAMILY_SDXL;
    for (int i = 0; i < k; i++) {
        pf_error e;
        char field[PF_JOB_FIELD_MAX], f[PF_JOB_FIELD_MAX + 16];
        pf_exec_resolve(&subs[i], model->pipe);
        const pf_job_sample *smp = &j->job.samples[from + i];
        int bad = pf_job_family_check(&subs[i].job, sdxl, field, sizeof field, &e);
        if (!bad && !sdxl && (smp->prompt_2 || smp->negative_prompt_2)) { /* the job's check reads its own fields */
            snprintf(field, sizeof field, "%s", smp->prompt_2 ? "prompt_2" : "negative_prompt_2");
            pf_fail(&e, "%s is for SDXL models only (this model has one text encoder)", field);
            bad = 1;
        }
        if (bad) {
            snprintf(f, sizeof f, "samples[%d].%s", from + i, field);
        } else if ((bad = pf_txt2img_check(model->pipe, &subs[i].rq.gen, &e) != 0)) {
            snprintf(f, sizeof f, "samples[%d]", from + i);
        }
        if (bad) {
            shard_fail(j, PF_OUT_REJECTED, PF_ERR_INVALID, 0, f, "%s: %s", f, e.msg);
            return -1;
        }
    }
    pf_exec_capture(x, model, subs, k);
    if (j->outcome != PF_OUT_NONE || atomic_load(x->abandon)) return -1;
    if (atomic_load(&j->cancel)) {
        j->outcome = PF_OUT_CANCELLED;
        return -1;
    }
    for (int i = 0; i < k; i++) {
        pf_exec_job *s = &subs[i];
        if (s->captured) continue;
        if (s->outcome == PF_OUT_NONE) { /* the deadline, seen by the sample */
            shard_fail(j, PF_OUT_FAILED, PF_ERR_DEADLINE, 0, NULL, "the job's deadline passed");
        } else {
            shard_fail(j, s->outcome, s->code[0] ? s->code : PF_ERR_INTERNAL, s->retryable, s->field,
                       "samples[%d]: %s", from + i, s->err.msg);
            j->dead_letter = s->dead_letter;
        }
        return -1;
    }
    for (int i = 0; i < k; i++) {
        pf_exec_job *s = &subs[i];
        char key[16], name[32], id[PF_SHA256_HEX];
        pf_error e;
        pf_shard_key(key, sizeof key, job->shard, from + i);
        if (s->store_ids) snprintf(id, sizeof id, "%s", s->store_ids[0]);
        else pf_replay_identity(id, x, model, s, 0);
        *hits += s->from_store;
        if (!s->from_store && s->engine_ms > j->engine_ms) j->engine_ms = s->engine_ms;
        if (!j->t_engine_start && s->t_engine_start) j->t_engine_start = s->t_engine_start;
        if (s->t_engine_end) j->t_engine_end = s->t_engine_end;
        uint8_t *png = NULL;
        size_t len = 0;
        char *js = sample_json(j, s, from + i, key, json_deep_copy(mdoc), id);
        int rc = pf_replay_png(x, s->capture, job->width, job->height, id, &png, &len, &e);
        if (!rc) {
            snprintf(name, sizeof name, "%s.json", key);
            rc = add_member(a, name, js, strlen(js), &e);
        }
        if (!rc) {
            snprintf(name, sizeof name, "%s.png", key);
            rc = add_member(a, name, png, len, &e);
        }
        if (!rc) {
            snprintf(name, sizeof name, "%s.txt", key);
            rc = add_member(a, name, job->samples[from + i].prompt, strlen(job->samples[from + i].prompt), &e);
        }
        free(js);
        free(png);
        pf_replay_clear(s);
        if (rc) {
            shard_fail(j, PF_OUT_FAILED, PF_ERR_INTERNAL, 1, NULL, "writing the shard: %s", e.msg);
            return -1;
        }
    }
    return 0;
}

/* Uploads the finished tar at path to dest with the worker's retries. */
static int upload(pf_exec *x, pf_exec_job *j, const char *path, const char *dest, pf_s3_result *res) {
    const pf_worker_config *cfg = x->cfg;
    pf_error e = {0};
    for (int t = 1; t <= cfg->retries && !atomic_load(x->abandon); t++) {
        if (!pf_s3_put_file(res, x->s3, x->cred, dest, path, &e)) return 0;
        pf_wlog(PF_LOG_WARN, "job.upload_failed", j->job.job_id,
                json_pack("{s:i, s:i}", "try", t, "of", cfg->retries), "%s", e.msg);
        if (t < cfg->retries) {
            j->retries++;
            for (long left = pf_backoff_ms(t, cfg->retry_base_ms, cfg->retry_max_ms); left > 0 && !atomic_load(x->abandon);
                 left -= 100)
                pf_sleep_ms(left < 100 ? left : 100);
        }
    }
    if (!atomic_load(x->abandon)) shard_fail(j, PF_OUT_FAILED, PF_ERR_UPLOAD, 1, NULL, "uploading %s: %s", dest, e.msg);
    return -1;
}

void pf_shard_run(pf_exec *x, pf_model *model, pf_exec_job *j) {
    const pf_job *job = &j->job;
    const pf_worker_config *cfg = x->cfg;
    char dest[2048], path[2048];
    pf_error e;
    if (pf_job_output_url(dest, sizeof dest, job, PF_STAGE_BASE, 0, &e) || pf_exec_dest_allowed(cfg, dest, &e)) {
        shard_fail(j, PF_OUT_REJECTED, PF_ERR_INVALID, 0, "output.url", "output.url: %s", e.msg);
        return;
    }
    if (pf_scratch_file(path, sizeof path, cfg->work_dir, job->job_id, ".tar", &e)) {
        shard_fail(j, PF_OUT_FAILED, PF_ERR_INTERNAL, 1, NULL, "%s", e.msg);
        return;
    }
    struct archive *a = archive_write_new();
    if (!a || archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        archive_write_open_filename(a, path) != ARCHIVE_OK) {
        shard_fail(j, PF_OUT_FAILED, PF_ERR_INTERNAL, 1, NULL, "creating %s: %s", path,
                   a ? archive_error_string(a) : "out of memory");
        if (a) archive_write_free(a);
        unlink(path);
        return;
    }
    const int total = job->n_samples, chunk = cfg->max_batch;
    const size_t px = (size_t)job->width * job->height * 3;
    pf_exec_job *subs = PF_CALLOC((size_t)chunk, sizeof *subs);
    uint8_t *rgb = PF_MALLOC(px * (size_t)chunk);
    json_t *mdoc = model_doc(job, model, x->numerics);
    int done = 0, hits = 0, rc = 0;
    long long t0 = pf_now_ms();
    progress(x, j, 0, total);
    while (done < total && !rc) {
        const int k = total - done < chunk ? total - done : chunk;
        rc = run_chunk(x, model, j, subs, done, k, rgb, a, mdoc, &hits);
        if (!rc) {
            done += k;
            progress(x, j, done, total);
        }
    }
    json_decref(mdoc);
    free(rgb);
    free(subs);
    if (archive_write_close(a) != ARCHIVE_OK && !rc) {
        shard_fail(j, PF_OUT_FAILED, PF_ERR_INTERNAL, 1, NULL, "writing %s: %s", path, archive_error_string(a));
        rc = -1;
    }
    archive_write_free(a);
    pf_wlog(PF_LOG_INFO, "shard.made", job->job_id,
            json_pack("{s:i, s:i, s:i, s:I}", "samples", done, "of", total, "from_store", hits, "ms",
                      (json_int_t)(pf_now_ms() - t0)),
            NULL);
    if (!rc && !atomic_load(x->abandon)) {
        pf_exec_post(x, job, PF_ST_UPLOADING, NULL);
        long long t1 = pf_now_ms();
        pf_s3_result res;
        if (!upload(x, j, path, dest, &res)) {
            j->outputs = json_pack("[{s:s, s:s, s:I, s:i, s:I, s:s, s:i, s:i, s:o}]", "url", dest, "sha256",
                                   res.sha256, "size", (json_int_t)res.size, "index", 0, "seed", (json_int_t)job->seed,
                                   "stage", PF_STAGE_BASE, "samples", total, "samples_from_store", hits, "model",
                                   model_doc(job, model, x->numerics));
            j->outcome = PF_OUT_SUCCEEDED;
            pf_metrics_images(PF_STAGE_BASE, total);
        }
        j->upload_ms = pf_now_ms() - t1;
        pf_metrics_stage("upload", j->upload_ms);
    }
    unlink(path);
}
