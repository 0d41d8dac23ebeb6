/* execute.c - model, engine, PNG files and uploads for a batch of jobs (execute.h). */
#include "execute.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "image.h"
#include "log.h"
#include "output_key.h"
#include "pipeline.h"
#include "status.h"

void pf_exec_post(pf_exec *x, const pf_job *job, const char *state, json_t *extra) {
    json_t *st = pf_status_new(state, job->job_id, job->attempt, x->cfg->worker_id);
    if (extra) {
        json_object_update(st, extra);
        json_decref(extra);
    }
    char *s = pf_status_dump(st);
    json_decref(st);
    pf_error e;
    if (pf_producer_send(x->producer, x->cfg->status_topic, job->job_id, s, strlen(s), NULL, 0, NULL, &e))
        pf_wlog(PF_LOG_WARN, "status.send_failed", job->job_id, NULL, "%s: %s", state, e.msg);
    free(s);
}

static void fail(pf_exec_job *j, const char *code, int retryable, int dead_letter, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void fail(pf_exec_job *j, const char *code, int retryable, int dead_letter, const char *fmt, ...) {
    j->outcome = PF_OUT_FAILED;
    j->retryable = retryable;
    j->dead_letter = dead_letter;
    snprintf(j->code, sizeof j->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err.msg, sizeof j->err.msg, fmt, ap);
    va_end(ap);
}

static int gone(pf_exec *x, pf_exec_job *j) {
    return atomic_load(x->abandon) || atomic_load(&j->cancel) ||
           (j->job.deadline_ms && pf_wall_ms() > j->job.deadline_ms);
}

/* Ends a job that was cancelled or ran out of time; returns 1 if it did. */
static int ended(pf_exec *x, pf_exec_job *j) {
    if (j->outcome != PF_OUT_NONE) return 1;
    if (atomic_load(x->abandon)) return 1;
    if (atomic_load(&j->cancel)) {
        j->outcome = PF_OUT_CANCELLED;
        return 1;
    }
    if (j->job.deadline_ms && pf_wall_ms() > j->job.deadline_ms) {
        fail(j, "deadline", 0, 0, "the job's deadline passed");
        return 1;
    }
    return 0;
}

/* Sleeps ms in short slices; returns early when the job is abandoned. */
static void backoff_sleep(pf_exec *x, long ms) {
    for (long left = ms; left > 0 && !atomic_load(x->abandon); left -= 100) pf_sleep_ms(left < 100 ? left : 100);
}

typedef struct group_ctx {
    pf_exec *x;
    pf_exec_job **jobs;
    int n;
    long long last_post;
} group_ctx;

static void on_step(void *user, int step, int total) {
    group_ctx *g = user;
    long long now = pf_now_ms();
    if (step != 1 && step != total && now - g->last_post < g->x->cfg->status_interval_ms) return;
    g->last_post = now;
    for (int i = 0; i < g->n; i++)
        if (g->jobs[i]->outcome == PF_OUT_NONE)
            pf_exec_post(g->x, &g->jobs[i]->job, PF_ST_RUNNING, json_pack("{s:i, s:i}", "step", step, "steps", total));
}

/* Stop the engine when nobody in the group still wants its images. */
static int on_cancel_check(void *user) {
    group_ctx *g = user;
    if (atomic_load(g->x->abandon)) return 1;
    for (int i = 0; i < g->n; i++)
        if (!gone(g->x, g->jobs[i])) return 0;
    return 1;
}

static void on_fetch(void *ctx) {
    group_ctx *g = ctx;
    for (int i = 0; i < g->n; i++) pf_exec_post(g->x, &g->jobs[i]->job, PF_ST_DOWNLOADING, NULL);
}

/* file:// outputs only under cfg->file_output_root: jobs are hostile and must
 * not write anywhere else on the host. */
static int dest_allowed(const pf_worker_config *cfg, const char *dest, pf_error *err) {
    if (strncmp(dest, "file://", 7)) return 0;
    const char *root = cfg->file_output_root;
    size_t rl = strlen(root);
    while (rl > 1 && root[rl - 1] == '/') rl--;
    if (!rl) return pf_fail(err, "file:// outputs are disabled on this worker (file_output_root is not set)");
    if (strncmp(dest + 7, root, rl) || dest[7 + rl] != '/')
        return pf_fail(err, "file:// outputs must be under %.*s", (int)rl, root);
    return 0;
}

/* Writes the job's images and uploads them; fills outputs or the failure. */
static void store_outputs(pf_exec *x, pf_exec_job *j, const uint8_t *rgb) {
    const pf_job *job = &j->job;
    const pf_worker_config *cfg = x->cfg;
    pf_exec_post(x, job, PF_ST_UPLOADING, NULL);
    long long t0 = pf_now_ms();
    j->outputs = json_array();
    const size_t px = (size_t)job->width * job->height * 3;
    for (int i = 0; i < job->num_images && !ended(x, j); i++) {
        char dest[2048], path[4096];
        pf_error e;
        if (pf_output_key(dest, sizeof dest, job->output_url, job->job_id, i, job->seed, &e) ||
            dest_allowed(cfg, dest, &e)) {
            j->outcome = PF_OUT_REJECTED;
            j->dead_letter = 1;
            snprintf(j->code, sizeof j->code, PF_ERR_INVALID);
            snprintf(j->field, sizeof j->field, "output.url");
            snprintf(j->err.msg, sizeof j->err.msg, "output.url: %s", e.msg);
            break;
        }
        snprintf(path, sizeof path, "%s/perflow-%d-%s-%d.png", cfg->work_dir, (int)getpid(), job->job_id, i);
        /* The PNG holds only what the job asked for, so that a job run twice
         * (a redelivery after a crash) writes identical bytes. */
        char seed[32], steps[16], guidance[32], size[32], index[16];
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)job->seed);
        snprintf(steps, sizeof steps, "%d", job->steps);
        snprintf(guidance, sizeof guidance, "%g", (double)job->guidance);
        snprintf(size, sizeof size, "%dx%d", job->width, job->height);
        snprintf(index, sizeof index, "%d", i);
        const char *text[] = {"Software", "perflow", "job_id", job->job_id, "prompt", job->prompt,
                              "negative_prompt", job->negative_prompt, "seed", seed, "steps", steps,
                              "guidance", guidance, "size", size, "index", index, NULL};
        if (pf_png_write(path, rgb + px * i, job->width, job->height, text, &e)) {
            fail(j, PF_ERR_INTERNAL, 1, 0, "writing the image: %s", e.msg);
            break;
        }
        pf_s3_result res;
        int ok = 0;
        for (int t = 1; t <= cfg->retries && !ended(x, j); t++) {
            if (!pf_s3_put_file(&res, x->s3, x->cred, dest, path, &e)) {
                ok = 1;
                break;
            }
            pf_wlog(PF_LOG_WARN, "job.upload_failed", job->job_id, json_pack("{s:i, s:i}", "try", t, "of", cfg->retries),
                    "%s", e.msg);
            if (t < cfg->retries) {
                j->retries++;
                backoff_sleep(x, pf_backoff_ms(t, cfg->retry_base_ms, cfg->retry_max_ms));
            }
        }
        unlink(path);
        if (!ok) {
            if (j->outcome == PF_OUT_NONE && !atomic_load(x->abandon))
                fail(j, PF_ERR_UPLOAD, 1, 0, "uploading %s: %s", dest, e.msg);
            break;
        }
        json_array_append_new(j->outputs, json_pack("{s:s, s:s, s:I, s:i, s:I}", "url", dest, "sha256", res.sha256,
                                                    "size", (json_int_t)res.size, "index", i, "seed",
                                                    (json_int_t)job->seed));
    }
    j->upload_ms = pf_now_ms() - t0;
    if (j->outcome == PF_OUT_NONE && !atomic_load(x->abandon)) j->outcome = PF_OUT_SUCCEEDED;
}

/* The engine's parameters for job (no callbacks). The strings point into job. */
static void job_params(pf_txt2img_params *prm, const pf_job *job) {
    pf_txt2img_defaults(prm);
    prm->prompt = job->prompt;
    prm->negative_prompt = job->negative_prompt;
    prm->width = job->width;
    prm->height = job->height;
    prm->steps = job->steps;
    prm->guidance = job->guidance;
    prm->seed = job->seed;
    prm->num_images = job->num_images;
    prm->prediction_type = job->prediction_type;
    prm->windows = job->windows;
    prm->clip_skip = job->clip_skip;
}

/* One engine call for jobs[0..n), which pf_txt2img_batchable admits together.
 * Jobs that ask for the same images (pf_job_same_images) are one item of the
 * engine's batch and get the same pixels; the others are an item each. */
static void run_call(pf_exec *x, pf_model *model, pf_exec_job **jobs, int n) {
    pf_txt2img_params *prm = PF_CALLOC((size_t)n, sizeof *prm);
    const pf_txt2img_params **items = PF_CALLOC((size_t)n, sizeof *items);
    size_t *at = PF_CALLOC((size_t)n, sizeof *at); /* job i's first value in images */
    const size_t px = (size_t)jobs[0]->job.width * jobs[0]->job.height * 3;
    size_t count = 0;
    int nitems = 0, nimages = 0;
    for (int i = 0; i < n; i++) {
        int same = 0;
        while (same < i && !pf_job_same_images(&jobs[same]->job, &jobs[i]->job)) same++;
        if (same < i) {
            at[i] = at[same];
            continue;
        }
        job_params(&prm[i], &jobs[i]->job);
        items[nitems++] = &prm[i];
        at[i] = count;
        count += px * (size_t)jobs[i]->job.num_images;
        nimages += jobs[i]->job.num_images;
    }
    group_ctx g = {x, jobs, n, 0};
    prm[0].progress = on_step; /* items[0] is jobs[0]'s, whose callbacks serve the batch */
    prm[0].cancelled = on_cancel_check;
    prm[0].user = &g;
    float *images = malloc(count * sizeof *images);
    uint8_t *rgb = malloc(count);
    if (!images || !rgb) {
        for (int i = 0; i < n; i++) fail(jobs[i], PF_ERR_INTERNAL, 1, 0, "out of memory for the images");
        goto done;
    }
    long long t0 = pf_now_ms();
    for (int i = 0; i < n; i++) jobs[i]->t_engine_start = t0;
    pf_wlog(PF_LOG_INFO, "engine.start", jobs[0]->job.job_id,
            json_pack("{s:i, s:i, s:i}", "jobs", n, "items", nitems, "images", nimages), NULL);
    pf_error e;
    int rc = pf_pipeline_txt2img_batch(model->pipe, items, nitems, images, &e);
    long long t1 = pf_now_ms();
    pf_wlog(PF_LOG_INFO, "engine.end", jobs[0]->job.job_id,
            json_pack("{s:i, s:I, s:i}", "jobs", n, "ms", (json_int_t)(t1 - t0), "rc", rc), NULL);
    for (int i = 0; i < n; i++) {
        jobs[i]->t_engine_end = t1;
        jobs[i]->engine_ms = t1 - t0;
        jobs[i]->batch_jobs = n;
    }
    if (rc == -1) {
        for (int i = 0; i < n; i++) fail(jobs[i], PF_ERR_ENGINE, 1, 0, "engine: %s", e.msg);
    } else {
        pf_image_to_u8(rgb, images, (long)count);
        for (int i = 0; i < n; i++)
            if (!ended(x, jobs[i])) store_outputs(x, jobs[i], rgb + at[i]);
    }
done:
    free(images);
    free(rgb);
    free(at);
    free(items);
    free(prm);
}

void pf_exec_batch(pf_exec *x, pf_exec_job *jobs, int n) {
    const pf_worker_config *cfg = x->cfg;
    pf_exec_job **group = PF_CALLOC((size_t)n, sizeof *group);
    for (int i = 0; i < n; i++) {
        ended(x, &jobs[i]);
        group[i] = &jobs[i];
    }
    group_ctx all = {x, group, n, 0};
    pf_model *model = NULL;
    pf_model_timing t;
    pf_model_failure failure = PF_MODEL_OK;
    pf_error e;
    for (int tr = 1; tr <= cfg->retries; tr++) {
        if (on_cancel_check(&all)) break;
        if (!pf_models_get(x->models, &jobs[0].job, &model, &t, &failure, on_fetch, &all, &e)) break;
        pf_wlog(PF_LOG_WARN, "job.download_failed", jobs[0].job.job_id,
                json_pack("{s:i, s:i, s:b}", "try", tr, "of", cfg->retries, "transient",
                          failure == PF_MODEL_TRANSIENT),
                "%s", e.msg);
        if (failure != PF_MODEL_TRANSIENT) break;
        if (tr < cfg->retries) {
            for (int i = 0; i < n; i++) jobs[i].retries++;
            backoff_sleep(x, pf_backoff_ms(tr, cfg->retry_base_ms, cfg->retry_max_ms));
        }
    }
    if (!model) {
        for (int i = 0; i < n; i++) {
            if (ended(x, &jobs[i]) || failure == PF_MODEL_OK) continue;
            int permanent = failure == PF_MODEL_PERMANENT;
            fail(&jobs[i], strstr(e.msg, "loading the model") ? PF_ERR_MODEL : PF_ERR_DOWNLOAD, !permanent, permanent,
                 "%s", e.msg);
        }
        free(group);
        return;
    }
    for (int i = 0; i < n; i++) {
        jobs[i].download_ms = t.download_ms;
        jobs[i].load_ms = t.load_ms;
        jobs[i].model_warm = t.warm;
    }
    /* Jobs the engine would refuse are rejected one by one, before any batching. */
    for (int i = 0; i < n; i++) {
        pf_txt2img_params prm;
        job_params(&prm, &jobs[i].job);
        if (ended(x, &jobs[i]) || !pf_txt2img_check(model->pipe, &prm, &e)) continue;
        jobs[i].outcome = PF_OUT_REJECTED;
        jobs[i].dead_letter = 1;
        snprintf(jobs[i].code, sizeof jobs[i].code, PF_ERR_INVALID);
        snprintf(jobs[i].err.msg, sizeof jobs[i].err.msg, "%s", e.msg);
    }
    /* Calls in arrival order: each takes the first job not yet run and every
     * later one the engine can batch with it (same steps, guidance, sampler
     * settings; model and size are the batch's), up to max_batch distinct
     * images; a job that alone asks for more runs alone. */
    int *done = PF_CALLOC((size_t)n, sizeof *done);
    for (int i = 0; i < n && !atomic_load(x->abandon); i++) {
        if (done[i] || ended(x, &jobs[i])) continue;
        pf_txt2img_params head, prm;
        job_params(&head, &jobs[i].job);
        group[0] = &jobs[i];
        int k = 1, images = jobs[i].job.num_images;
        for (int j = i + 1; j < n; j++) {
            job_params(&prm, &jobs[j].job);
            if (done[j] || ended(x, &jobs[j]) || !pf_txt2img_batchable(model->pipe, &head, &prm)) continue;
            int m = 0;
            while (m < k && !pf_job_same_images(&group[m]->job, &jobs[j].job)) m++;
            int more = m < k ? 0 : jobs[j].job.num_images; /* the same images cost nothing more */
            if (images + more > cfg->max_batch) continue;
            done[j] = 1;
            group[k++] = &jobs[j];
            images += more;
        }
        run_call(x, model, group, k);
    }
    free(done);
    free(group);
    pf_models_put(x->models, model);
}
