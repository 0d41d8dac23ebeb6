/* execute.c - model, ControlNet, engine stages, PNG files and uploads for a batch of jobs (execute.h). */
#include "execute.h"
#include "outputs.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "image.h"
#include "job_limits.h"
#include "log.h"
#include "metrics.h"
#include "output_key.h"
#include "pipeline.h"
#include "resize.h"
#include "result_replay.h"
#include "shard.h"
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

void pf_exec_fail(pf_exec_job *j, const char *code, int retryable, int dead_letter, const char *fmt, ...) {
    j->outcome = PF_OUT_FAILED;
    j->retryable = retryable;
    j->dead_letter = dead_letter;
    snprintf(j->code, sizeof j->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err.msg, sizeof j->err.msg, fmt, ap);
    va_end(ap);
}

/* 1 when nobody wants j's images any more: abandoned, cancelled, past its
 * deadline, or already ended (rejected while the batch was prepared). */
static int gone(pf_exec *x, pf_exec_job *j) {
    if (j->parent && gone(x, j->parent)) return 1;
    return j->outcome != PF_OUT_NONE || atomic_load(x->abandon) || atomic_load(&j->cancel) ||
           (j->job.deadline_ms && pf_wall_ms() > j->job.deadline_ms) || (j->t_limit && pf_now_ms() > j->t_limit);
}

int pf_exec_ended(pf_exec *x, pf_exec_job *j) {
    if (j->outcome != PF_OUT_NONE) return 1;
    if (atomic_load(x->abandon)) return 1;
    if (atomic_load(&j->cancel)) {
        j->outcome = PF_OUT_CANCELLED;
        return 1;
    }
    if (j->job.deadline_ms && pf_wall_ms() > j->job.deadline_ms) {
        pf_exec_fail(j, "deadline", 0, 0, "the job's deadline passed");
        return 1;
    }
    if (j->t_limit && pf_now_ms() > j->t_limit) {
        pf_exec_fail(j, PF_ERR_TIMEOUT, 0, 1, "the job ran longer than this worker's max_job_seconds (%ld s)",
             x->cfg->max_job_seconds);
        return 1;
    }
    return 0;
}

void pf_exec_sleep(pf_exec *x, long ms) {
    for (long left = ms; left > 0 && !atomic_load(x->abandon); left -= 100) pf_sleep_ms(left < 100 ? left : 100);
}

typedef struct group_ctx {
    pf_exec *x;
    pf_exec_job **jobs;
    int n;
    long long last_post;
    const char *stage;  /* of "running" events: "generate", "refine" */
    int said_download;  /* "downloading" was posted for this group */
    long long t_text;   /* monotonic ms: the first cancel check, before step 1 (prompts encoded); metrics */
    long long t_steps;  /* monotonic ms: the last step done (decoding follows); metrics */
} group_ctx;

static void on_step(void *user, int step, int total) {
    group_ctx *g = user;
    long long now = pf_now_ms();
    if (step == total) g->t_steps = now;
    if (step != 1 && step != total && now - g->last_post < g->x->cfg->status_interval_ms) return;
    g->last_post = now;
    for (int i = 0; i < g->n; i++)
        if (g->jobs[i]->outcome == PF_OUT_NONE && !g->jobs[i]->capture) /* samples: the shard reports progress */
            pf_exec_post(g->x, &g->jobs[i]->job, PF_ST_RUNNING,
                         json_pack("{s:s, s:i, s:i}", "stage", g->stage, "step", step, "steps", total));
}

/* Stop the engine when nobody in the group still wants its images. */
static int on_cancel_check(void *user) {
    group_ctx *g = user;
    if (!g->t_text) g->t_text = pf_now_ms();
    if (atomic_load(g->x->abandon)) return 1;
    for (int i = 0; i < g->n; i++)
        if (!gone(g->x, g->jobs[i])) return 0;
    return 1;
}

/* "downloading", once per batch however many sources it fetches. */
static void on_fetch(void *ctx) {
    group_ctx *g = ctx;
    if (g->said_download) return;
    g->said_download = 1;
    for (int i = 0; i < g->n; i++) pf_exec_post(g->x, &g->jobs[i]->job, PF_ST_DOWNLOADING, NULL);
}

/* Outputs only where the operator allows them (pf_output_allowed: file://
 * under file_output_root, s3:// under s3_output_prefixes): jobs are hostile
 * and must not write anywhere else. */
int pf_exec_dest_allowed(const pf_worker_config *cfg, const char *dest, pf_error *err) {
    return pf_output_allowed(dest, cfg->file_output_root, cfg->s3_output_prefixes, err);
}

/* Fills j->rq from the job, as `perflow generate [--refine]` fills it from the
 * same settings: only what the job sets, then pf_request_resolve with the
 * model decides the rest (the job's width and height too, which its outputs
 * use). The strings point into the job, the controls into j (their images
 * are NULL until fetched), the refine stage's images are set before it runs. */
static void job_request(pf_exec_job *j, const pf_pipeline *p) {
    pf_job *job = &j->job;
    pf_request *rq = &j->rq;
    pf_txt2img_params *g = &rq->gen;
    pf_refine_params *f = &rq->ref;
    pf_request_init(rq);
    g->prompt = job->prompt;
    g->negative_prompt = job->negative_prompt; /* NULL: none (SDXL's zero embeddings) */
    g->prompt_2 = job->prompt_2;
    g->negative_prompt_2 = job->negative_prompt_2;
    memcpy(g->original_size, job->original_size, sizeof g->original_size);
    memcpy(g->crop_coords, job->crop_coords, sizeof g->crop_coords);
    memcpy(g->target_size, job->target_size, sizeof g->target_size);
    g->controls = j->controls;
    g->n_controls = job->n_controls;
    g->ip_images = j->ip_images;
    g->n_ip = job->n_ip;
    g->width = job->width;
    g->height = job->height;
    g->steps = job->steps;
    g->guidance = job->guidance;
    g->seed = job->seed;
    g->num_images = job->num_images;
    g->prediction_type = job->prediction_type;
    g->windows = job->windows;
    g->clip_skip = job->clip_skip;
    const pf_job_refine *r = &job->refine;
    rq->refine = r->on;
    f->prompt = r->prompt;
    f->negative_prompt = r->negative_prompt;
    f->size = r->size;
    f->steps = r->steps;
    f->guidance = r->guidance;
    f->strength = r->strength;
    f->controlnet_scale = r->controlnet_scale;
    pf_request_resolve(p, rq);
    job->width = g->width;
    job->height = g->height;
}

/* Items of an engine call over jobs[0..n): jobs that ask for the same images
 * (pf_job_same_images) are one item; at[i] is job i's first value in the
 * call's output, for images of px values each. Returns the item count;
 * *count and *nimages are the values and images of the call. */
static int plan_items(pf_exec_job **jobs, int n, size_t px, int *item_of, size_t *at, size_t *count, int *nimages) {
    int nitems = 0;
    *count = 0;
    *nimages = 0;
    for (int i = 0; i < n; i++) {
        int same = 0;
        while (same < i && !pf_job_same_images(&jobs[same]->job, &jobs[i]->job)) same++;
        if (same < i) {
            item_of[i] = -1;
            at[i] = at[same];
            continue;
        }
        item_of[i] = nitems++;
        at[i] = *count;
        *count += px * (size_t)jobs[i]->job.num_images;
        *nimages += jobs[i]->job.num_images;
    }
    return nitems;
}

/* The end of an engine call of group g (nimages distinct images): timings
 * and metrics, and the failure of every job when it failed. */
static void call_ended(pf_exec_job **jobs, int n, int refine, long long t0, long long t1, int rc, const pf_error *e,
                       const group_ctx *g, int nimages) {
    pf_metrics_engine_result(rc == -1);
    if (rc == 0) {
        if (refine) pf_metrics_stage("refine", t1 - t0);
        else pf_metrics_engine_call(t0, g->t_text, g->t_steps, t1);
        pf_metrics_batch(refine ? "refine" : "generate", n, nimages);
    }
    for (int i = 0; i < n; i++) {
        jobs[i]->t_engine_end = t1;
        if (refine) {
            jobs[i]->refine_ms = t1 - t0;
            jobs[i]->refine_batch_jobs = n;
        } else {
            jobs[i]->t_engine_start = t0;
            jobs[i]->engine_ms = t1 - t0;
            jobs[i]->batch_jobs = n;
        }
        if (rc == -1)
            pf_exec_fail(jobs[i], PF_ERR_ENGINE, 1, 0, "engine%s: %s", refine ? " (refine)" : "", e->msg);
    }
}

/* The engine call of a stage (refine or text-to-image) over the items of
 * jobs[0..n) (item_of: plan_items). Item 0 is jobs[0]'s request; a copy of it
 * carries the callbacks that serve the whole call (g). Returns as
 * pf_pipeline_txt2img_batch / pf_pipeline_refine_batch. */
static int engine_call(pf_model *model, int refine, pf_exec_job **jobs, int n, const int *item_of, int nitems,
                       group_ctx *g, float *images, pf_error *e) {
    const pf_txt2img_params **gen = PF_CALLOC((size_t)nitems, sizeof *gen);
    const pf_refine_params **ref = PF_CALLOC((size_t)nitems, sizeof *ref);
    for (int i = 0; i < n; i++) {
        jobs[i]->rq.ref.images = jobs[i]->base_rgb;
        if (item_of[i] >= 0) {
            gen[item_of[i]] = &jobs[i]->rq.gen;
            ref[item_of[i]] = &jobs[i]->rq.ref;
        }
    }
    pf_txt2img_params gen0 = jobs[0]->rq.gen;
    pf_refine_params ref0 = jobs[0]->rq.ref;
    gen0.progress = ref0.progress = on_step;
    gen0.cancelled = ref0.cancelled = on_cancel_check;
    gen0.user = ref0.user = g;
    gen[0] = &gen0;
    ref[0] = &ref0;
    int rc = refine ? pf_pipeline_refine_batch(model->pipe, ref, nitems, images, e)
                    : pf_pipeline_txt2img_batch(model->pipe, gen, nitems, images, e);
    free(gen);
    free(ref);
    return rc;
}

/* One engine call of a stage for jobs[0..n), which the stage's batchable
 * admits together: text-to-image, or refine for jobs with base_rgb. Jobs that
 * ask for the same images (pf_job_same_images) are one item of the engine's
 * batch and get the same pixels; the others are an item each. After
 * text-to-image, jobs that do not refine are stored at once and refine jobs
 * keep their 8-bit images in base_rgb for the refine stage; after refine each
 * job's refined images are stored, and its base images too with keep_base. */
static void run_stage(pf_exec *x, pf_model *model, pf_exec_job **jobs, int n, int refine) {
    const char *stage = refine ? "refine" : "generate";
    size_t *at = PF_CALLOC((size_t)n, sizeof *at); /* job i's first value in images */
    int *item_of = PF_CALLOC((size_t)n, sizeof *item_of);
    int W = jobs[0]->job.width, H = jobs[0]->job.height;
    if (refine) pf_refine_output_size(&jobs[0]->rq.ref, &W, &H); /* the same for all (pf_refine_batchable) */
    const size_t px = (size_t)W * H * 3;
    size_t count;
    int nimages;
    int nitems = plan_items(jobs, n, px, item_of, at, &count, &nimages);
    group_ctx g = {x, jobs, n, 0, stage, 1, 0, 0};
    float *images = malloc(count * sizeof *images);
    uint8_t *rgb = malloc(count);
    if (!images || !rgb) {
        for (int i = 0; i < n; i++)
            pf_exec_fail(jobs[i], PF_ERR_INTERNAL, 1, 0, "out of memory for the %simages", refine ? "refined " : "");
        goto done;
    }
    long long t0 = pf_now_ms();
    json_t *start = json_pack("{s:s, s:i, s:i, s:i}", "stage", stage, "jobs", n, "items", nitems, "images", nimages);
    if (refine) {
        json_object_set_new(start, "width", json_integer(W));
        json_object_set_new(start, "height", json_integer(H));
    }
    pf_wlog(PF_LOG_INFO, "engine.start", jobs[0]->job.job_id, start, NULL);
    pf_error e;
    int rc = engine_call(model, refine, jobs, n, item_of, nitems, &g, images, &e);
    long long t1 = pf_now_ms();
    pf_wlog(PF_LOG_INFO, "engine.end", jobs[0]->job.job_id,
            json_pack("{s:s, s:i, s:I, s:i}", "stage", stage, "jobs", n, "ms", (json_int_t)(t1 - t0), "rc", rc),
            NULL);
    call_ended(jobs, n, refine, t0, t1, rc, &e, &g, nimages);
    if (rc == -1) goto done;
    pf_image_to_u8(rgb, images, (long)count);
    for (int i = 0; i < n && !refine; i++) /* recorded whatever becomes of the job: the images were computed */
        pf_replay_record(x, jobs[i], rgb + at[i]);
    for (int i = 0; i < n; i++) {
        pf_exec_job *j = jobs[i];
        if (pf_exec_ended(x, j)) continue;
        const size_t bytes = px * (size_t)j->job.num_images;
        pf_image_set sets[2] = {{refine ? PF_STAGE_REFINED : PF_STAGE_BASE, rgb + at[i], W, H},
                             {PF_STAGE_BASE, j->base_rgb, j->job.width, j->job.height}};
        if (!refine && j->capture) { /* a shard's sample: the caller takes the pixels */
            memcpy(j->capture, rgb + at[i], bytes);
            j->captured = 1;
        } else if (refine || !j->job.refine.on)
            pf_exec_store(x, j, sets, refine && j->job.refine.keep_base ? 2 : 1);
        else if (!(j->base_rgb = malloc(bytes)))
            pf_exec_fail(j, PF_ERR_INTERNAL, 1, 0, "out of memory for the images");
        else
            memcpy(j->base_rgb, rgb + at[i], bytes);
    }
done:
    free(images);
    free(rgb);
    free(item_of);
    free(at);
}

/* Gets something for jobs of the batch (all: their group) with cfg->retries
 * tries while the failure is transient, backing off between them:
 * get(arg, err) is pf_models_get, pf_models_controlnets or a control image.
 * Returns 0, or -1 with err, its kind and field (models.h; PF_ERROR_NONE when
 * everyone in the group left meanwhile). */
static int get_retrying(pf_exec *x, group_ctx *all, const char *what, int (*get)(void *arg, pf_error *err),
                        void *arg, pf_error *err) {
    const pf_worker_config *cfg = x->cfg;
    memset(err, 0, sizeof *err);
    for (int tr = 1; tr <= cfg->retries; tr++) {
        if (on_cancel_check(all)) {
            pf_error_set_kind(err, PF_ERROR_NONE, NULL);
            break;
        }
        if (!get(arg, err)) return 0;
        /* a source that was fetched but does not fit is the job's fault, not the network's */
        pf_wlog(PF_LOG_WARN, err->kind == PF_ERROR_INVALID ? "job.source_invalid" : "job.download_failed",
                all->jobs[0]->job.job_id,
                json_pack("{s:s, s:s, s:i, s:i, s:b}", "what", what, "field", err->field, "try", tr, "of",
                          cfg->retries, "transient", err->kind == PF_ERROR_TRANSIENT),
                "%s", err->msg);
        if (err->kind != PF_ERROR_TRANSIENT) break;
        if (tr < cfg->retries) {
            for (int i = 0; i < all->n; i++) all->jobs[i]->retries++;
            pf_exec_sleep(x, pf_backoff_ms(tr, cfg->retry_base_ms, cfg->retry_max_ms));
        }
    }
    return -1;
}

static void reject(pf_exec_job *j, const char *field, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void reject(pf_exec_job *j, const char *field, const char *fmt, ...) {
    j->outcome = PF_OUT_REJECTED;
    j->dead_letter = 1;
    snprintf(j->code, sizeof j->code, PF_ERR_INVALID);
    snprintf(j->field, sizeof j->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err.msg, sizeof j->err.msg, fmt, ap);
    va_end(ap);
}

/* Ends every job of group still running after get_retrying failed, by e's
 * kind: a source that does not fit the model rejects them naming its field;
 * a model that does not load fails them (permanent, code model); a download
 * fails them (retryable when transient). */
static void fail_fetch(pf_exec *x, pf_exec_job **jobs, int n, const pf_error *e) {
    for (int i = 0; i < n; i++) {
        if (pf_exec_ended(x, jobs[i]) || e->kind == PF_ERROR_NONE) continue;
        if (e->kind == PF_ERROR_INVALID) {
            reject(jobs[i], e->field, "%s", e->msg);
            continue;
        }
        const int permanent = e->kind != PF_ERROR_TRANSIENT;
        pf_exec_fail(jobs[i], e->kind == PF_ERROR_MODEL ? PF_ERR_MODEL : PF_ERR_DOWNLOAD, !permanent, permanent, "%s", e->msg);
    }
}

typedef struct get_args {
    pf_exec *x;
    pf_exec_job *j;     /* the job whose sources are fetched (the batch's first for the model) */
    group_ctx *all;
    pf_model *model;
    pf_model_timing t;
    int control;        /* get_image: which of j's controls */
} get_args;

static int get_model(void *arg, pf_error *err) {
    get_args *a = arg;
    return pf_models_get(a->x->models, &a->j->job, &a->model, &a->t, on_fetch, a->all, err);
}

static int get_ip_adapters(void *arg, pf_error *err) {
    get_args *a = arg;
    return pf_models_ip_adapters(a->x->models, a->model, &a->j->job, &a->t, on_fetch, a->all, err);
}

/* The image of ip_adapters[a->control] of job a->j, decoded into its pf_ip_image
 * (capped at max_input_pixels: the image encoder takes a 224 px crop of it). */
static int get_ip_image(void *arg, pf_error *err) {
    get_args *a = arg;
    const pf_job *job = &a->j->job;
    const int i = a->control;
    char field[PF_JOB_FIELD_MAX];
    snprintf(field, sizeof field, "ip_adapters[%d].image", i);
    pf_ip_image *q = &a->j->ip_images[i];
    if (pf_models_image(a->x->models, &job->ip[i].image, field, a->x->cfg->max_input_pixels, &a->j->ip_rgb[i],
                        &q->image_width, &q->image_height, err))
        return -1;
    q->adapter = i;
    q->image = a->j->ip_rgb[i];
    q->scale = job->ip[i].scale;
    return 0;
}

static int get_controlnets(void *arg, pf_error *err) {
    get_args *a = arg;
    return pf_models_controlnets(a->x->models, a->model, &a->j->job, &a->t, on_fetch, a->all, err);
}

/* The condition image of control[a->control] of job a->j, decoded into its pf_control. */
#define PF_CONTROL_PIXEL_FACTOR 16
static int get_image(void *arg, pf_error *err) {
    get_args *a = arg;
    const pf_job *job = &a->j->job;
    const int i = a->control;
    char field[PF_JOB_FIELD_MAX];
    snprintf(field, sizeof field, "control[%d].image", i);
    pf_control *c = &a->j->controls[i];
    /* No condition image needs more than PF_CONTROL_PIXEL_FACTOR times the
     * output's pixels (nor max_input_pixels): a larger one is refused from
     * its header, and the decoded one is scaled to the job's size at once
     * (the engine would scale it the same way, pf_resize_lanczos), so a batch
     * holds no more than its outputs' worth of condition images. */
    long cap = (long)PF_CONTROL_PIXEL_FACTOR * job->width * job->height;
    if (cap > a->x->cfg->max_input_pixels) cap = a->x->cfg->max_input_pixels;
    if (pf_models_image(a->x->models, &job->control[i].image, field, cap, &a->j->control_rgb[i], &c->image_width,
                        &c->image_height, err)) {
        if (strstr(err->msg, "the cap on input images"))
            pf_error_prefix(err, "over max_input_pixels or %d x the output's pixels", PF_CONTROL_PIXEL_FACTOR);
        return -1;
    }
    if (c->image_width != job->width || c->image_height != job->height) {
        uint8_t *sized = PF_MALLOC((size_t)job->width * job->height * 3);
        if (pf_resize_lanczos(sized, job->width, job->height, a->j->control_rgb[i], c->image_width, c->image_height,
                              err)) {
            free(sized);
            return -1;
        }
        free(a->j->control_rgb[i]);
        a->j->control_rgb[i] = sized;
        c->image_width = job->width;
        c->image_height = job->height;
    }
    c->net = pf_models_control_net(job, i);
    c->image = a->j->control_rgb[i];
    c->scale = job->control[i].scale;
    return 0;
}

/* Fetches and decodes the condition images of each job still running; a job
 * whose image cannot be had ends alone (the others go on). */
static void get_control_images(pf_exec *x, pf_exec_job *jobs, int n) {
    for (int i = 0; i < n; i++) {
        pf_exec_job *j = &jobs[i], *one[1] = {j};
        group_ctx g = {x, one, 1, 0, NULL, 1, 0, 0}; /* "downloading" was said for the batch */
        for (int k = 0; k < j->job.n_controls && !pf_exec_ended(x, j); k++) {
            get_args a = {x, j, &g, NULL, {0}, k};
            pf_error e;
            if (get_retrying(x, &g, "control image", get_image, &a, &e))
                fail_fetch(x, one, 1, &e);
        }
        for (int k = 0; k < j->job.n_ip && !pf_exec_ended(x, j); k++) {
            get_args a = {x, j, &g, NULL, {0}, k};
            pf_error e;
            if (get_retrying(x, &g, "ip-adapter image", get_ip_image, &a, &e))
                fail_fetch(x, one, 1, &e);
        }
    }
}

/* 1 when a and b can share an engine call of the stage: their engine
 * requests (request.h, as resolved) admit one batch. */
static int batchable(const pf_pipeline *p, int refine, const pf_exec_job *a, const pf_exec_job *b) {
    return refine ? pf_refine_batchable(p, &a->rq.ref, &b->rq.ref) : pf_txt2img_batchable(p, &a->rq.gen, &b->rq.gen);
}

/* Forms the engine calls of a stage in arrival order: each takes the first
 * job not yet run (not served from the result store; in the refine stage: with
 * base images) and every later one
 * that batchable admits with it, up to max_batch distinct images (a job that
 * alone asks for more runs alone), and runs them (run_stage). */
static void form_calls(pf_exec *x, pf_model *model, pf_exec_job *jobs, int n, pf_exec_job **group, int refine) {
    int *done = PF_CALLOC((size_t)n, sizeof *done);
    for (int i = 0; i < n; i++) done[i] = refine ? !jobs[i].base_rgb : jobs[i].from_store;
    for (int i = 0; i < n && !atomic_load(x->abandon); i++) {
        if (done[i] || pf_exec_ended(x, &jobs[i])) continue;
        group[0] = &jobs[i];
        int k = 1, images = jobs[i].job.num_images;
        for (int j = i + 1; j < n; j++) {
            if (done[j] || pf_exec_ended(x, &jobs[j]) || !batchable(model->pipe, refine, &jobs[i], &jobs[j])) continue;
            int m = 0;
            while (m < k && !pf_job_same_images(&group[m]->job, &jobs[j].job)) m++;
            int more = m < k ? 0 : jobs[j].job.num_images; /* the same images cost nothing more */
            if (images + more > x->cfg->max_batch) continue;
            done[j] = 1;
            group[k++] = &jobs[j];
            images += more;
        }
        run_stage(x, model, group, k, refine);
    }
    free(done);
}

void pf_exec_resolve(pf_exec_job *j, const pf_pipeline *p) { job_request(j, p); }

void pf_exec_capture(pf_exec *x, pf_model *model, pf_exec_job *jobs, int n) {
    pf_exec_job **group = PF_CALLOC((size_t)n, sizeof *group);
    for (int i = 0; i < n; i++) {
        job_request(&jobs[i], model->pipe);
        uint8_t *stored;
        if (pf_exec_ended(x, &jobs[i]) || !pf_replay_lookup(x, model, &jobs[i], &stored)) continue;
        memcpy(jobs[i].capture, stored, (size_t)jobs[i].job.width * jobs[i].job.height * 3 * jobs[i].job.num_images);
        free(stored);
        jobs[i].from_store = jobs[i].captured = 1;
    }
    form_calls(x, model, jobs, n, group, 0);
    free(group);
}

void pf_exec_batch(pf_exec *x, pf_exec_job *jobs, int n) {
    pf_exec_job **group = PF_CALLOC((size_t)n, sizeof *group);
    for (int i = 0; i < n; i++) {
        pf_exec_ended(x, &jobs[i]);
        group[i] = &jobs[i];
    }
    group_ctx all = {x, group, n, 0, NULL, 0, 0, 0};
    get_args a = {x, &jobs[0], &all, NULL, {0}, 0};
    pf_error e;
    if (get_retrying(x, &all, "model", get_model, &a, &e)) {
        fail_fetch(x, group, n, &e);
        free(group);
        return;
    }
    pf_model *model = a.model;
    for (int i = 0; i < n; i++) {
        jobs[i].download_ms = a.t.download_ms;
        jobs[i].load_ms = a.t.load_ms;
        jobs[i].model_warm = a.t.warm;
        jobs[i].family = model->family;
        job_request(&jobs[i], model->pipe);
    }
    /* Fields the family does not take are the job's fault, named before
     * anything is fetched for it; so are sizes (the family's, now known) over
     * the worker's limits. */
    for (int i = 0; i < n; i++) {
        char field[PF_JOB_FIELD_MAX];
        if (!pf_exec_ended(x, &jobs[i]) &&
            pf_job_family_check(&jobs[i].job, pf_pipeline_family(model->pipe) == PF_FAMILY_SDXL, field, sizeof field,
                                &e))
            reject(&jobs[i], field, "%s", e.msg);
        else if (!pf_exec_ended(x, &jobs[i]) && pf_job_limits_check(&jobs[i].job, x->cfg, field, sizeof field, &e))
            reject(&jobs[i], field, "%s", e.msg);
    }
    /* A batch attaches one set of ControlNets, or none (pf_job_same_model). */
    const int refine = jobs[0].job.refine.on;
    if (refine || jobs[0].job.n_controls) {
        if (get_retrying(x, &all, "controlnet", get_controlnets, &a, &e)) {
            fail_fetch(x, group, n, &e);
            goto done;
        }
        for (int i = 0; i < n; i++) {
            jobs[i].download_ms += a.t.download_ms;
            jobs[i].load_ms += a.t.load_ms;
        }
    }
    if (jobs[0].job.n_ip) { /* a job with image prompts runs alone (pf_job_same_model) */
        if (get_retrying(x, &all, "ip-adapter", get_ip_adapters, &a, &e)) {
            fail_fetch(x, group, n, &e);
            goto done;
        }
        for (int i = 0; i < n; i++) {
            jobs[i].download_ms += a.t.download_ms;
            jobs[i].load_ms += a.t.load_ms;
        }
    }
    get_control_images(x, jobs, n);
    /* Jobs the engine would refuse, in either stage, are rejected one by one
     * before anything runs. */
    for (int i = 0; i < n; i++) {
        if (pf_exec_ended(x, &jobs[i])) continue;
        if (pf_txt2img_check(model->pipe, &jobs[i].rq.gen, &e)) {
            reject(&jobs[i], NULL, "%s", e.msg);
            continue;
        }
        const char *param;
        if (refine && pf_refine_check(model->pipe, &jobs[i].rq.ref, &param, &e)) {
            const char *field = pf_job_refine_field(param);
            reject(&jobs[i], field, "%s: %s", field, e.msg);
        }
    }
    if (jobs[0].job.samples) { /* a shard job runs alone (pf_job_same_model) */
        if (!pf_exec_ended(x, &jobs[0])) pf_shard_run(x, model, &jobs[0]);
        goto done;
    }
    /* Jobs whose every image is in the result store are copied from it and leave the engine calls. */
    for (int i = 0; i < n; i++) {
        uint8_t *stored;
        if (pf_exec_ended(x, &jobs[i]) || !pf_replay_lookup(x, model, &jobs[i], &stored)) continue;
        jobs[i].from_store = 1;
        pf_image_set set = {PF_STAGE_BASE, stored, jobs[i].job.width, jobs[i].job.height};
        pf_exec_store(x, &jobs[i], &set, 1);
        free(stored);
    }
    form_calls(x, model, jobs, n, group, 0);
    if (refine) form_calls(x, model, jobs, n, group, 1);
done:
    for (int i = 0; i < n; i++) {
        free(jobs[i].base_rgb);
        jobs[i].base_rgb = NULL;
        pf_replay_clear(&jobs[i]);
        for (int k = 0; k < PF_JOB_MAX_CONTROLS; k++) {
            free(jobs[i].control_rgb[k]);
            jobs[i].control_rgb[k] = NULL;
        }
        for (int k = 0; k < PF_JOB_MAX_IP_ADAPTERS; k++) {
            free(jobs[i].ip_rgb[k]);
            jobs[i].ip_rgb[k] = NULL;
        }
    }
    free(group);
    pf_models_put(x->models, model);
}
