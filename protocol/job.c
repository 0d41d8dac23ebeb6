/* job.c - parsing and validating jobs (job.h, schemas/job.v1.json). */
#include "job.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "model_source.h"
#include "output_key.h"
#include "pipeline.h"
#include "url_policy.h"

#define PF_JOB_MESSAGE_MAX (960 * 1024) /* under Kafka's default message.max.bytes (1,000,000) */

typedef struct ctx {
    char *field;
    size_t n;
    pf_error *err;
} ctx;

static int bad(ctx *c, const char *field, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(ctx *c, const char *field, const char *fmt, ...) {
    snprintf(c->field, c->n, "%s", field);
    char msg[sizeof c->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return pf_fail(c->err, "%s: %s", field[0] ? field : "message", msg);
}

static void path(char *out, size_t n, const char *prefix, const char *key) {
    snprintf(out, n, "%s%s%s", prefix, prefix[0] ? "." : "", key);
}

/* Every member of obj must be one of the NULL-terminated names. */
static int only_keys(ctx *c, json_t *obj, const char *prefix, const char *const *names) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int ok = 0;
        for (const char *const *k = names; *k && !ok; k++) ok = !strcmp(key, *k);
        if (!ok) {
            char f[PF_JOB_FIELD_MAX], safe[40];
            size_t i;
            for (i = 0; key[i] && i < sizeof safe - 1; i++) safe[i] = isprint((unsigned char)key[i]) ? key[i] : '?';
            safe[i] = '\0';
            path(f, sizeof f, prefix, safe);
            return bad(c, f, "unknown field (schema %s allows no other fields)", PF_JOB_SCHEMA);
        }
    }
    return 0;
}

/* A string member: NULL when absent and not required. */
static int get_str(ctx *c, json_t *obj, const char *prefix, const char *key, int required, size_t maxlen,
                   const char **out) {
    char f[PF_JOB_FIELD_MAX];
    path(f, sizeof f, prefix, key);
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v) return required ? bad(c, f, "required") : 0;
    if (!json_is_string(v)) return bad(c, f, "must be a string");
    if (json_string_length(v) > maxlen) return bad(c, f, "longer than %zu bytes", maxlen);
    *out = json_string_value(v);
    return 0;
}

static int get_int(ctx *c, json_t *obj, const char *prefix, const char *key, long long lo, long long hi,
                   long long def, long long *out) {
    char f[PF_JOB_FIELD_MAX];
    path(f, sizeof f, prefix, key);
    json_t *v = json_object_get(obj, key);
    *out = def;
    if (!v) return 0;
    if (!json_is_integer(v)) return bad(c, f, "must be an integer");
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return bad(c, f, "must be from %lld to %lld (got %lld)", lo, hi, x);
    *out = x;
    return 0;
}

static int get_num(ctx *c, json_t *obj, const char *prefix, const char *key, double lo, double hi, double def,
                   double *out) {
    char f[PF_JOB_FIELD_MAX];
    path(f, sizeof f, prefix, key);
    json_t *v = json_object_get(obj, key);
    *out = def;
    if (!v) return 0;
    if (!json_is_number(v)) return bad(c, f, "must be a number");
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi) return bad(c, f, "must be from %g to %g", lo, hi);
    *out = x;
    return 0;
}

static int get_obj(ctx *c, json_t *obj, const char *prefix, const char *key, int required, json_t **out) {
    char f[PF_JOB_FIELD_MAX];
    path(f, sizeof f, prefix, key);
    *out = json_object_get(obj, key);
    if (!*out) return required ? bad(c, f, "required") : 0;
    if (!json_is_object(*out)) return bad(c, f, "must be an object");
    return 0;
}

/* SRC_BASE: a diffusers base URL (no digest); SRC_MODEL: a diffusers base URL
 * or one .safetensors checkpoint (+ digest); SRC_FILE: one file (+ digest);
 * SRC_SCALED: a .safetensors file with a scale; SRC_FOLDER: one component
 * folder (+ its weights' digest), fetched with the weights variant of fp16;
 * SRC_ENCODER: an image encoder folder (+ its weights' digest), likewise. */
typedef enum { SRC_BASE, SRC_MODEL, SRC_FILE, SRC_SCALED, SRC_FOLDER, SRC_ENCODER } src_kind;

/* 1 when the URL's path (before any query string) ends in .safetensors. */
static int names_safetensors(const char *url) {
    pf_url u;
    pf_error e;
    if (pf_url_parse(&u, url, &e)) return 0;
    const char *q = strchr(u.path, '?');
    size_t pl = q ? (size_t)(q - u.path) : strlen(u.path);
    return pl >= 12 && !strncmp(u.path + pl - 12, ".safetensors", 12);
}

/* One model source object: {"url", "sha256", "scale"} as kind allows. */
static int get_source(ctx *c, json_t *o, const char *f, src_kind kind, int fp16, pf_job_source *s) {
    static const char *const plain[] = {"url", "sha256", NULL};
    static const char *const scaled[] = {"url", "sha256", "scale", NULL};
    if (only_keys(c, o, f, kind == SRC_SCALED ? scaled : plain)) return -1;
    if (get_str(c, o, f, "url", 1, PF_URL_MAX - 1, &s->url) || get_str(c, o, f, "sha256", 0, 64, &s->sha256))
        return -1;
    double scale = 1;
    if (kind == SRC_SCALED && get_num(c, o, f, "scale", -10, 10, 1, &scale)) return -1;
    s->scale = (float)scale;
    char uf[PF_JOB_FIELD_MAX];
    path(uf, sizeof uf, f, "url");
    pf_error e;
    pf_url u;
    if (pf_url_parse(&u, s->url, &e)) return bad(c, uf, "%s", e.msg);
    if (strcmp(u.scheme, "https") && strcmp(u.scheme, "http")) return bad(c, uf, "must be an https:// URL");
    if (s->sha256 && !pf_sha256_hex_valid(s->sha256)) {
        path(uf, sizeof uf, f, "sha256");
        return bad(c, uf, "must be 64 lower-case hex digits");
    }
    pf_model_source src;
    if (kind == SRC_BASE || kind == SRC_MODEL) {
        if (pf_model_source_init(&src, PF_SOURCE_AUTO, s->url, NULL, 0, &e)) return bad(c, uf, "%s", e.msg);
        if (kind == SRC_BASE && src.kind != PF_SOURCE_DIFFUSERS)
            return bad(c, uf, "must be the URL of a diffusers-layout model folder (holding model_index.json), not of "
                              "a file");
        if (src.kind == PF_SOURCE_FILE && !names_safetensors(s->url))
            return bad(c, uf, "must be the base URL of a diffusers-layout model or name a single-file .safetensors "
                              "checkpoint (.ckpt pickles are refused: they can run code when loaded)");
        if (s->sha256 && src.kind != PF_SOURCE_FILE) {
            path(uf, sizeof uf, f, "sha256");
            return bad(c, uf, "a diffusers base URL names many files and has no single digest");
        }
        if (src.kind == PF_SOURCE_FILE && pf_model_source_init(&src, PF_SOURCE_FILE, s->url, s->sha256, 0, &e))
            return bad(c, uf, "%s", e.msg);
    } else if (kind == SRC_FOLDER || kind == SRC_ENCODER) {
        if (pf_model_source_init(&src, PF_SOURCE_AUTO, s->url, NULL, 0, &e)) return bad(c, uf, "%s", e.msg);
        if (src.kind != PF_SOURCE_DIFFUSERS)
            return bad(c, uf, kind == SRC_FOLDER ? "must be the URL of a diffusers ControlNetModel folder (holding "
                                                   "config.json and diffusion_pytorch_model.safetensors), not of a file"
                                                 : "must be the URL of a CLIPVisionModelWithProjection folder "
                                                   "(holding config.json, model.safetensors and "
                                                   "preprocessor_config.json), not of a file");
        if (pf_model_source_init(&src, kind == SRC_FOLDER ? PF_SOURCE_COMPONENT : PF_SOURCE_IMAGE_ENCODER, s->url,
                                 s->sha256, fp16, &e))
            return bad(c, uf, "%s", e.msg);
    } else if (pf_model_source_init(&src, PF_SOURCE_FILE, s->url, s->sha256, 0, &e)) {
        return bad(c, uf, "%s", e.msg);
    } else if (kind == SRC_SCALED && !names_safetensors(s->url)) {
        return bad(c, uf, "must name a .safetensors LoRA file");
    }
    return 0;
}

static int parse_model(ctx *c, pf_job *job, json_t *m) {
    static const char *const keys[] = {"base", "config", "delta", "loras", "controlnet", "fp16", NULL};
    if (only_keys(c, m, "model", keys)) return -1;
    json_t *o;
    if (get_obj(c, m, "model", "base", 1, &o) || get_source(c, o, "model.base", SRC_MODEL, 0, &job->base)) return -1;
    pf_model_source src;
    pf_error e;
    job->base_file = !pf_model_source_init(&src, PF_SOURCE_AUTO, job->base.url, NULL, 0, &e) &&
                     src.kind == PF_SOURCE_FILE;
    if (get_obj(c, m, "model", "config", 0, &o) || (o && get_source(c, o, "model.config", SRC_BASE, 0, &job->config)))
        return -1;
    if (job->config.url && !job->base_file)
        return bad(c, "model.config", "is for a single-file base (model.base.url naming a .safetensors checkpoint); "
                                      "a diffusers base has configs of its own");
    if (get_obj(c, m, "model", "delta", 0, &o) || (o && get_source(c, o, "model.delta", SRC_FILE, 0, &job->delta)))
        return -1;
    if (job->delta.url && !names_safetensors(job->delta.url))
        return bad(c, "model.delta.url", "must name a .safetensors file of PeRFlow delta weights");
    json_t *loras = json_object_get(m, "loras");
    if (loras) {
        if (!json_is_array(loras)) return bad(c, "model.loras", "must be an array");
        if (json_array_size(loras) > PF_JOB_MAX_LORAS) return bad(c, "model.loras", "at most %d", PF_JOB_MAX_LORAS);
        size_t i;
        json_t *l;
        json_array_foreach(loras, i, l) {
            char f[PF_JOB_FIELD_MAX];
            snprintf(f, sizeof f, "model.loras[%zu]", i);
            if (!json_is_object(l)) return bad(c, f, "must be an object");
            if (get_source(c, l, f, SRC_SCALED, 0, &job->loras[i])) return -1;
        }
        job->n_loras = (int)json_array_size(loras);
    }
    /* The old text-to-image ControlNet object: still validated as before, then
     * refused by pf_job_supported in favour of "control". */
    if (get_obj(c, m, "model", "controlnet", 0, &o)) return -1;
    if (o) {
        static const char *const ckeys[] = {"url", "sha256", "scale", "image_url", NULL};
        if (only_keys(c, o, "model.controlnet", ckeys)) return -1;
        double scale;
        if (get_num(c, o, "model.controlnet", "scale", -10, 10, 1, &scale)) return -1;
        json_t *copy = json_deep_copy(o); /* get_source allows neither */
        json_object_del(copy, "image_url");
        json_object_del(copy, "scale");
        pf_job_source old;
        const char *image;
        int rc = get_source(c, copy, "model.controlnet", SRC_FILE, 0, &old);
        json_decref(copy);
        if (rc || get_str(c, o, "model.controlnet", "image_url", 1, PF_URL_MAX - 1, &image)) return -1;
        pf_url u;
        if (pf_url_parse(&u, image, &e)) return bad(c, "model.controlnet.image_url", "%s", e.msg);
        job->has_model_controlnet = 1;
    }
    json_t *fp16 = json_object_get(m, "fp16");
    if (fp16) {
        if (!json_is_boolean(fp16)) return bad(c, "model.fp16", "must be true or false");
        job->fp16 = json_is_true(fp16);
    }
    return 0;
}

/* The "control" array (pf_job_control), after "model" (the weights variant of
 * its ControlNets is model.fp16's). */
static int parse_control(ctx *c, pf_job *job, json_t *arr) {
    static const char *const keys[] = {"controlnet", "image", "scale", NULL};
    if (!json_is_array(arr)) return bad(c, "control", "must be an array");
    if (json_array_size(arr) > PF_JOB_MAX_CONTROLS) return bad(c, "control", "at most %d", PF_JOB_MAX_CONTROLS);
    size_t i;
    json_t *it, *o;
    json_array_foreach(arr, i, it) {
        pf_job_control *ctl = &job->control[i];
        char f[PF_JOB_FIELD_MAX], sub[PF_JOB_FIELD_MAX];
        snprintf(f, sizeof f, "control[%zu]", i);
        if (!json_is_object(it)) return bad(c, f, "must be an object");
        if (only_keys(c, it, f, keys)) return -1;
        path(sub, sizeof sub, f, "controlnet");
        if (get_obj(c, it, f, "controlnet", 1, &o) || get_source(c, o, sub, SRC_FOLDER, job->fp16, &ctl->controlnet))
            return -1;
        path(sub, sizeof sub, f, "image");
        if (get_obj(c, it, f, "image", 1, &o) || get_source(c, o, sub, SRC_FILE, 0, &ctl->image)) return -1;
        double scale;
        if (get_num(c, it, f, "scale", -10, 10, 1, &scale)) return -1;
        ctl->scale = (float)scale;
        ctl->controlnet.scale = ctl->image.scale = ctl->scale;
    }
    job->n_controls = (int)json_array_size(arr);
    return 0;
}

/* The "ip_adapters" array (pf_job_ip_adapter); every item names the same
 * image encoder (the pipeline holds one). */
static int parse_ip_adapters(ctx *c, pf_job *job, json_t *arr) {
    static const char *const keys[] = {"adapter", "image", "image_encoder", "scale", NULL};
    if (!json_is_array(arr)) return bad(c, "ip_adapters", "must be an array");
    if (json_array_size(arr) > PF_JOB_MAX_IP_ADAPTERS)
        return bad(c, "ip_adapters", "at most %d", PF_JOB_MAX_IP_ADAPTERS);
    size_t i;
    json_t *it, *o;
    json_array_foreach(arr, i, it) {
        pf_job_ip_adapter *ip = &job->ip[i];
        char f[PF_JOB_FIELD_MAX], sub[PF_JOB_FIELD_MAX];
        snprintf(f, sizeof f, "ip_adapters[%zu]", i);
        if (!json_is_object(it)) return bad(c, f, "must be an object");
        if (only_keys(c, it, f, keys)) return -1;
        path(sub, sizeof sub, f, "adapter");
        if (get_obj(c, it, f, "adapter", 1, &o) || get_source(c, o, sub, SRC_FILE, 0, &ip->adapter)) return -1;
        if (!names_safetensors(ip->adapter.url))
            return bad(c, sub, "must name a .safetensors IP-Adapter file (.bin pickles are refused)");
        path(sub, sizeof sub, f, "image");
        if (get_obj(c, it, f, "image", 1, &o) || get_source(c, o, sub, SRC_FILE, 0, &ip->image)) return -1;
        path(sub, sizeof sub, f, "image_encoder");
        if (get_obj(c, it, f, "image_encoder", 1, &o) || get_source(c, o, sub, SRC_ENCODER, job->fp16,
                                                                     &ip->image_encoder))
            return -1;
        if (i && (strcmp(ip->image_encoder.url, job->ip[0].image_encoder.url) ||
                  !!ip->image_encoder.sha256 != !!job->ip[0].image_encoder.sha256 ||
                  (ip->image_encoder.sha256 && strcmp(ip->image_encoder.sha256, job->ip[0].image_encoder.sha256))))
            return bad(c, sub, "must be ip_adapters[0]'s (one image encoder serves a job's adapters)");
        double scale;
        if (get_num(c, it, f, "scale", -10, 10, 1, &scale)) return -1;
        ip->scale = (float)scale;
    }
    job->n_ip = (int)json_array_size(arr);
    return 0;
}

/* One of SDXL's time ids: [a, b], two integers from lo to PF_JOB_MAX_TIME_ID,
 * stored as the engine takes them, (b, a): (height, width) from [width,
 * height], (top, left) from [x, y], as the CLI's --original-size W,H does. */
static int get_time_id(ctx *c, json_t *root, const char *key, long long lo, const char *names, int out[2]) {
    json_t *v = json_object_get(root, key);
    out[0] = out[1] = 0;
    if (!v) return 0;
    json_t *a = json_array_get(v, 0), *b = json_array_get(v, 1);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(a) || !json_is_integer(b) ||
        json_integer_value(a) < lo || json_integer_value(a) > PF_JOB_MAX_TIME_ID || json_integer_value(b) < lo ||
        json_integer_value(b) > PF_JOB_MAX_TIME_ID)
        return bad(c, key, "must be %s, two integers from %lld to %d", names, lo, PF_JOB_MAX_TIME_ID);
    out[0] = (int)json_integer_value(b);
    out[1] = (int)json_integer_value(a);
    return 0;
}

static int check_text(ctx *c, const char *f, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 && *p != '\n' && *p != '\t' && *p != '\r') return bad(c, f, "has a control character");
    return 0;
}

/* A shard job's "samples" (pf_job_sample), with its "shard" number. The job's
 * own prompt fields and seed must be absent (each sample has its own; they
 * then hold the first sample's, so that what checks a job checks a sample),
 * and num_images is 1: a sample is one image. */
static int parse_samples(ctx *c, pf_job *job, json_t *root, json_t *arr) {
    static const char *const keys[] = {"prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "seed", "meta",
                                       NULL};
    static const char *const own[] = {"prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "seed",
                                      "num_images"};
    for (size_t i = 0; i < sizeof own / sizeof *own; i++)
        if (json_object_get(root, own[i])) return bad(c, own[i], "not with samples (each sample has its own)");
    if (!json_is_array(arr)) return bad(c, "samples", "must be an array");
    size_t n = json_array_size(arr);
    if (n < 1 || n > PF_JOB_MAX_SAMPLES) return bad(c, "samples", "must have 1 to %d samples", PF_JOB_MAX_SAMPLES);
    long long v;
    if (get_int(c, root, "", "shard", 0, PF_JOB_MAX_SHARD, 0, &v)) return -1;
    job->shard = (int)v;
    job->samples = PF_CALLOC(n, sizeof *job->samples);
    size_t i;
    json_t *it;
    json_array_foreach(arr, i, it) {
        pf_job_sample *s = &job->samples[i];
        char f[PF_JOB_FIELD_MAX], sub[PF_JOB_FIELD_MAX];
        snprintf(f, sizeof f, "samples[%zu]", i);
        if (!json_is_object(it)) return bad(c, f, "must be an object");
        if (only_keys(c, it, f, keys)) return -1;
        const char **texts[] = {&s->prompt, &s->negative_prompt, &s->prompt_2, &s->negative_prompt_2};
        for (int k = 0; k < 4; k++) {
            path(sub, sizeof sub, f, keys[k]);
            if (get_str(c, it, f, keys[k], k == 0, PF_JOB_PROMPT_MAX, texts[k]) ||
                (*texts[k] && check_text(c, sub, *texts[k])))
                return -1;
        }
        if (get_int(c, it, f, "seed", 0, INT64_MAX, 0, &v)) return -1;
        s->seed = (uint64_t)v;
        json_t *meta;
        if (get_obj(c, it, f, "meta", 0, &meta)) return -1;
        s->meta = meta;
    }
    job->n_samples = (int)n;
    job->prompt = job->samples[0].prompt;
    job->negative_prompt = job->samples[0].negative_prompt;
    job->prompt_2 = job->samples[0].prompt_2;
    job->negative_prompt_2 = job->samples[0].negative_prompt_2;
    job->seed = job->samples[0].seed;
    return 0;
}

#define STAGE_TAG "{stage}"

int pf_job_output_url(char *out, size_t n, const pf_job *job, const char *stage, int index, pf_error *err) {
    char tmpl[2048];
    size_t o = 0, sl = strlen(stage), tl = strlen(STAGE_TAG);
    for (const char *p = job->output_url; *p;) {
        const char *add = p;
        size_t al = 1;
        if (!strncmp(p, STAGE_TAG, tl)) {
            add = stage;
            al = sl;
            p += tl;
        } else {
            p++;
        }
        if (o + al >= sizeof tmpl) return pf_fail(err, "output template longer than %zu bytes", sizeof tmpl - 1);
        memcpy(tmpl + o, add, al);
        o += al;
    }
    tmpl[o] = '\0';
    return pf_output_key(out, n, tmpl, job->job_id, index, job->seed, err);
}

/* Called after the refine object is parsed: the stages a job uploads decide
 * which expansions of the template must be valid keys. */
static int parse_output(ctx *c, pf_job *job, json_t *o) {
    static const char *const keys[] = {"url", "format", NULL};
    if (only_keys(c, o, "output", keys) || get_str(c, o, "output", "url", 1, 1024, &job->output_url) ||
        get_str(c, o, "output", "format", 0, 16, &job->output_format))
        return -1;
    if (!job->output_format) job->output_format = "png";
    if (strcmp(job->output_format, "png")) return bad(c, "output.format", "must be \"png\"");
    if (strncmp(job->output_url, "s3://", 5) && strncmp(job->output_url, "file:///", 8))
        return bad(c, "output.url", "must be an s3://BUCKET/KEY or file:///PATH template");
    if (job->num_images > 1 && !strstr(job->output_url, "{index}"))
        return bad(c, "output.url", "must contain {index} when num_images > 1 (the images would overwrite each other)");
    if (job->refine.keep_base && !strstr(job->output_url, STAGE_TAG))
        return bad(c, "output.url", "must contain {stage} when refine.keep_base is true (the base and refined images "
                                    "would overwrite each other)");
    const char *stages[2] = {job->refine.on ? PF_STAGE_REFINED : PF_STAGE_BASE,
                             job->refine.keep_base ? PF_STAGE_BASE : NULL};
    for (int i = 0; i < 2 && stages[i]; i++) {
        char key[2048];
        pf_error e;
        if (pf_job_output_url(key, sizeof key, job, stages[i], 0, &e)) return bad(c, "output.url", "%s", e.msg);
        const char *rest = strstr(key, "://") + 3; /* the template starts with s3:// or file:// */
        size_t kl = strlen(key);
        if (strstr(rest, "//") || strstr(rest, "/../") || strstr(rest, "/./") ||
            (kl >= 3 && !strcmp(key + kl - 3, "/..")) || (kl >= 2 && !strcmp(key + kl - 2, "/.")))
            return bad(c, "output.url", "must not contain empty, '.' or '..' path segments");
    }
    return 0;
}

/* The "refine" object (pf_job_refine). What depends on the base image and the
 * model (the refined size against PF_REFINE_MAX_SIZE and the VAE factor, a
 * strength that leaves no step) is pf_refine_check's, once the model is loaded. */
static int parse_refine(ctx *c, pf_job *job, json_t *o) {
    static const char *const keys[] = {"controlnet", "size", "steps", "strength", "guidance", "prompt",
                                       "negative_prompt", "controlnet_scale", "keep_base", NULL};
    pf_job_refine *r = &job->refine;
    json_t *cn;
    long long v;
    double d;
    if (only_keys(c, o, "refine", keys) || get_obj(c, o, "refine", "controlnet", 1, &cn) ||
        get_source(c, cn, "refine.controlnet", SRC_FOLDER, job->fp16, &r->controlnet))
        return -1;
    if (get_int(c, o, "refine", "size", 0, PF_REFINE_MAX_SIZE, 1024, &v)) return -1;
    r->size = (int)v;
    if (get_int(c, o, "refine", "steps", 1, PF_JOB_MAX_STEPS, 4, &v)) return -1;
    r->steps = (int)v;
    /* (0, 1]: get_num's closed range cannot say it, and a positive double may
     * still be 0 as the engine's float */
    json_t *sv = json_object_get(o, "strength");
    d = sv && json_is_number(sv) ? json_number_value(sv) : 1;
    if (sv && (!json_is_number(sv) || !(d > 0 && d <= 1) || !((float)d > 0)))
        return bad(c, "refine.strength", "must be a number more than 0 and at most 1");
    r->strength = (float)d;
    if (get_num(c, o, "refine", "guidance", 0, 30, 7.5, &d)) return -1;
    r->guidance = (float)d;
    if (get_num(c, o, "refine", "controlnet_scale", -10, 10, 1, &d)) return -1;
    r->controlnet_scale = (float)d;
    if (get_str(c, o, "refine", "prompt", 0, PF_JOB_PROMPT_MAX, &r->prompt) ||
        (r->prompt && check_text(c, "refine.prompt", r->prompt)) ||
        get_str(c, o, "refine", "negative_prompt", 0, PF_JOB_PROMPT_MAX, &r->negative_prompt) ||
        (r->negative_prompt && check_text(c, "refine.negative_prompt", r->negative_prompt)))
        return -1;
    if (!r->prompt) r->prompt = PF_REFINE_PROMPT;
    if (!r->negative_prompt) r->negative_prompt = PF_REFINE_NEGATIVE_PROMPT;
    json_t *kb = json_object_get(o, "keep_base");
    if (kb && !json_is_boolean(kb)) return bad(c, "refine.keep_base", "must be true or false");
    r->keep_base = json_is_true(kb);
    r->on = 1;
    return 0;
}

static int two(const char *s, int *v) {
    if (!isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1])) return -1;
    *v = (s[0] - '0') * 10 + (s[1] - '0');
    return 0;
}

int pf_rfc3339_parse(const char *s, long long *ms) {
    int y1, y2, mo, d, h, mi, sec;
    if (strlen(s) < 20 || two(s, &y1) || two(s + 2, &y2) || s[4] != '-' || two(s + 5, &mo) || s[7] != '-' ||
        two(s + 8, &d) || (s[10] != 'T' && s[10] != 't') || two(s + 11, &h) || s[13] != ':' || two(s + 14, &mi) ||
        s[16] != ':' || two(s + 17, &sec))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return -1;
    const char *p = s + 19;
    long frac_ms = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; isdigit((unsigned char)*p); p++, digits++)
            if (digits < 3) frac_ms = frac_ms * 10 + (*p - '0');
        if (digits == 0) return -1;
        for (; digits < 3; digits++) frac_ms *= 10;
    }
    long offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (two(p + 1, &oh) || p[3] != ':' || two(p + 4, &om) || oh > 23 || om > 59) return -1;
        offset_s = (oh * 3600L + om * 60L) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -1;
    }
    if (*p) return -1;
    struct tm tm = {0};
    tm.tm_year = y1 * 100 + y2 - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec > 59 ? 59 : sec;
    time_t t = timegm(&tm);
    struct tm back;
    if (!gmtime_r(&t, &back) || back.tm_mday != d) return -1; /* 31 February */
    *ms = ((long long)t - offset_s) * 1000 + frac_ms;
    return 0;
}

int pf_job_parse(pf_job *job, const char *data, size_t len, char *field, size_t n, pf_error *err) {
    memset(job, 0, sizeof *job);
    ctx c = {field, n, err};
    field[0] = '\0';
    if (len > PF_JOB_MESSAGE_MAX) return bad(&c, "", "larger than %d bytes", PF_JOB_MESSAGE_MAX);
    json_error_t je;
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return bad(&c, "", "not JSON: %s (at byte %d)", je.text, je.position);
    if (!json_is_object(root)) {
        json_decref(root);
        return bad(&c, "", "not a JSON object");
    }
    job->json = root;
    /* job_id first, so that every later rejection can be addressed. */
    const char *id;
    if (get_str(&c, root, "", "job_id", 1, PF_JOB_ID_MAX, &id)) goto fail;
    if (!pf_job_id_ok(id)) {
        bad(&c, "job_id", "must be 1 to %d of [A-Za-z0-9._-], not starting with '.'", PF_JOB_ID_MAX);
        goto fail;
    }
    snprintf(job->job_id, sizeof job->job_id, "%s", id);

    static const char *const keys[] = {"schema", "job_id", "attempt", "model", "prompt", "negative_prompt", "width",
                                       "height", "steps", "guidance", "seed", "num_images", "sampler", "clip_skip",
                                       "refiner", "refine", "output", "deadline", "priority", "batch_id",
                                       "prompt_2", "negative_prompt_2", "original_size", "crop_coords",
                                       "target_size", "control", "samples", "shard", "ip_adapters", NULL};
    if (only_keys(&c, root, "", keys)) goto fail;
    const char *schema;
    if (get_str(&c, root, "", "schema", 0, 64, &schema)) goto fail;
    if (schema && strcmp(schema, PF_JOB_SCHEMA)) {
        bad(&c, "schema", "must be \"%s\" (this worker reads no other version)", PF_JOB_SCHEMA);
        goto fail;
    }
    if (get_str(&c, root, "", "batch_id", 0, PF_JOB_BATCH_ID_MAX, &job->batch_id)) goto fail;
    if (job->batch_id && !pf_job_id_ok(job->batch_id)) {
        bad(&c, "batch_id", "must be 1 to %d of [A-Za-z0-9._-], not starting with '.'", PF_JOB_BATCH_ID_MAX);
        goto fail;
    }
    long long v;
    if (get_int(&c, root, "", "attempt", 1, PF_JOB_MAX_ATTEMPT, 1, &v)) goto fail;
    job->attempt = (int)v;
    if (get_int(&c, root, "", "seed", 0, INT64_MAX, 0, &v)) goto fail;
    job->seed = (uint64_t)v;
    if (get_int(&c, root, "", "num_images", 1, PF_JOB_MAX_IMAGES, 1, &v)) goto fail;
    job->num_images = (int)v;

    json_t *o;
    if (get_obj(&c, root, "", "model", 1, &o) || parse_model(&c, job, o)) goto fail;
    json_t *samples = json_object_get(root, "samples");
    if (samples && parse_samples(&c, job, root, samples)) goto fail;
    if (!samples && json_object_get(root, "shard")) {
        bad(&c, "shard", "only with samples (a shard job)");
        goto fail;
    }
    if (!samples &&
        (get_str(&c, root, "", "prompt", 1, PF_JOB_PROMPT_MAX, &job->prompt) || check_text(&c, "prompt", job->prompt)))
        goto fail;
    /* absent stays NULL: SDXL's "no negative prompt" (zero embeddings) differs from "" */
    static const struct { const char *key; size_t off; } texts[] = {
        {"negative_prompt", offsetof(pf_job, negative_prompt)},
        {"prompt_2", offsetof(pf_job, prompt_2)},
        {"negative_prompt_2", offsetof(pf_job, negative_prompt_2)},
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts && !samples; i++) {
        const char **t = (const char **)((char *)job + texts[i].off);
        if (get_str(&c, root, "", texts[i].key, 0, PF_JOB_PROMPT_MAX, t) || (*t && check_text(&c, texts[i].key, *t)))
            goto fail;
    }
    if (get_time_id(&c, root, "original_size", 1, "[width, height]", job->original_size) ||
        get_time_id(&c, root, "crop_coords", 0, "[x, y]", job->crop_coords) ||
        get_time_id(&c, root, "target_size", 1, "[width, height]", job->target_size))
        goto fail;
    json_t *ctl = json_object_get(root, "control");
    if (ctl && parse_control(&c, job, ctl)) goto fail;
    json_t *ipa = json_object_get(root, "ip_adapters");
    if (ipa && parse_ip_adapters(&c, job, ipa)) goto fail;
    static const char *const sides[] = {"width", "height"};
    for (int i = 0; i < 2; i++) {
        /* absent: 0, the family's side once the model is known (SDXL 1024, else 512) */
        if (get_int(&c, root, "", sides[i], 8, PF_JOB_MAX_SIDE, 0, &v)) goto fail;
        if (v % 8) {
            bad(&c, sides[i], "must be a multiple of 8 (got %lld)", v);
            goto fail;
        }
        *(i ? &job->height : &job->width) = (int)v;
    }
    if (get_int(&c, root, "", "steps", 1, PF_JOB_MAX_STEPS, 4, &v)) goto fail;
    job->steps = (int)v;
    double g;
    if (get_num(&c, root, "", "guidance", 0, 30, 4.5, &g)) goto fail;
    job->guidance = (float)g;
    if (get_int(&c, root, "", "clip_skip", 0, 11, 0, &v)) goto fail;
    job->clip_skip = (int)v;
    if (get_obj(&c, root, "", "sampler", 0, &o)) goto fail;
    if (o) {
        static const char *const skeys[] = {"prediction_type", "windows", NULL};
        if (only_keys(&c, o, "sampler", skeys) ||
            get_str(&c, o, "sampler", "prediction_type", 0, 16, &job->prediction_type) ||
            get_int(&c, o, "sampler", "windows", 1, 16, 0, &v))
            goto fail;
        job->windows = (int)v;
        if (job->prediction_type && strcmp(job->prediction_type, "diff_eps") &&
            strcmp(job->prediction_type, "ddim_eps") && strcmp(job->prediction_type, "velocity")) {
            bad(&c, "sampler.prediction_type", "must be diff_eps, ddim_eps or velocity");
            goto fail;
        }
    }
    if (get_obj(&c, root, "", "refiner", 0, &o)) goto fail;
    if (o) {
        static const char *const rkeys[] = {"model", "steps", "strength", NULL};
        json_t *rm;
        pf_job_source rs = {0};
        double strength;
        if (only_keys(&c, o, "refiner", rkeys) || get_obj(&c, o, "refiner", "model", 1, &rm) ||
            get_source(&c, rm, "refiner.model", SRC_BASE, 0, &rs) ||
            get_int(&c, o, "refiner", "steps", 1, PF_JOB_MAX_STEPS, 4, &v) ||
            get_num(&c, o, "refiner", "strength", 0, 1, 0.3, &strength))
            goto fail;
        job->has_refiner = 1;
    }
    if (get_obj(&c, root, "", "refine", 0, &o) || (o && parse_refine(&c, job, o))) goto fail;
    if (samples && (o || job->has_refiner)) {
        bad(&c, o ? "refine" : "refiner", "not with samples (a shard job makes text-to-image samples only)");
        goto fail;
    }
    if (job->refine.on && job->n_controls > PF_JOB_MAX_CONTROLS - 1) {
        bad(&c, "control", "at most %d with refine (the refiner's ControlNet is one of the %d a job may attach)",
            PF_JOB_MAX_CONTROLS - 1, PF_JOB_MAX_CONTROLS);
        goto fail;
    }
    if (get_obj(&c, root, "", "output", 1, &o) || parse_output(&c, job, o)) goto fail;
    const char *deadline;
    if (get_str(&c, root, "", "deadline", 0, 40, &deadline)) goto fail;
    if (deadline && pf_rfc3339_parse(deadline, &job->deadline_ms)) {
        bad(&c, "deadline", "must be an RFC 3339 time such as 2025-11-26T03:04:05Z");
        goto fail;
    }
    if (get_int(&c, root, "", "priority", 0, 9, 0, &v)) goto fail;
    job->priority = (int)v;
    if (samples) {
        size_t ul = strlen(job->output_url);
        if (ul < 4 || strcmp(job->output_url + ul - 4, ".tar")) {
            bad(&c, "output.url", "a shard job's output must name a .tar file (its WebDataset shard)");
            goto fail;
        }
    }
    return 0;
fail:;
    free(job->samples);
    char keep[PF_JOB_ID_MAX + 1];
    memcpy(keep, job->job_id, sizeof keep);
    json_decref(root);
    memset(job, 0, sizeof *job);
    memcpy(job->job_id, keep, sizeof keep);
    return -1;
}

void pf_job_free(pf_job *job) {
    if (!job) return;
    free(job->samples);
    json_decref(job->json);
    memset(job, 0, sizeof *job);
}

int pf_job_supported(const pf_job *job, char *field, size_t n, pf_error *err) {
    ctx c = {field, n, err};
    if (job->has_model_controlnet)
        return bad(&c, "model.controlnet", "the \"model.controlnet\" object is not supported: use \"control\": "
                                           "[{\"controlnet\": {\"url\"}, \"image\": {\"url\"}, \"scale\"}] "
                                           "(schemas/job.v1.json)");
    if (job->has_refiner)
        return bad(&c, "refiner", "the \"refiner\" object is not supported: use \"refine\" (the ControlNet-Tile "
                                  "refiner after text-to-image, schemas/job.v1.json)");
    return 0;
}

const char *pf_job_refine_field(const char *param) {
    static const struct { const char *param, *field; } map[] = {
        {"size", "refine.size"},         {"images", "refine.size"},
        {"steps", "refine.steps"},       {"strength", "refine.strength"},
        {"guidance", "refine.guidance"}, {"controlnet_scale", "refine.controlnet_scale"},
        {"windows", "sampler.windows"},  {"prediction_type", "sampler.prediction_type"},
        {"clip_skip", "clip_skip"},      {"num_images", "num_images"},
    };
    for (size_t i = 0; param && i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(param, map[i].param)) return map[i].field;
    return "refine";
}

char *pf_job_with_attempt(const char *data, size_t len, int attempt) {
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    PF_CHECK(root && json_is_object(root));
    json_object_set_new(root, "attempt", json_integer(attempt));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    PF_CHECK(s);
    return s;
}

static int str_eq(const char *a, const char *b) {
    if (!a || !b) return a == b;
    return !strcmp(a, b);
}

static int source_eq(const pf_job_source *a, const pf_job_source *b) {
    return str_eq(a->url, b->url) && str_eq(a->sha256, b->sha256);
}

int pf_job_same_model(const pf_job *a, const pf_job *b) {
    if (a->samples || b->samples) return 0; /* a shard job runs alone: its samples are its batch */
    if (!source_eq(&a->base, &b->base) || !source_eq(&a->config, &b->config) || !source_eq(&a->delta, &b->delta) ||
        a->n_loras != b->n_loras || a->fp16 != b->fp16 || a->width != b->width || a->height != b->height ||
        a->refine.on != b->refine.on || !source_eq(&a->refine.controlnet, &b->refine.controlnet) ||
        a->n_controls != b->n_controls || a->n_ip != b->n_ip)
        return 0;
    /* the fused weights: each LoRA and its scale, in order */
    for (int i = 0; i < a->n_loras; i++)
        if (!source_eq(&a->loras[i], &b->loras[i]) || a->loras[i].scale != b->loras[i].scale) return 0;
    for (int i = 0; i < a->n_controls; i++)
        if (!source_eq(&a->control[i].controlnet, &b->control[i].controlnet)) return 0;
    /* one set of IP-Adapters and image encoder attached (each job still runs
     * in an engine call of its own: pf_txt2img_batchable) */
    for (int i = 0; i < a->n_ip; i++)
        if (!source_eq(&a->ip[i].adapter, &b->ip[i].adapter) ||
            !source_eq(&a->ip[i].image_encoder, &b->ip[i].image_encoder))
            return 0;
    return 1;
}

int pf_job_same_images(const pf_job *a, const pf_job *b) {
    const pf_job_refine *p = &a->refine, *q = &b->refine;
    if (!pf_job_same_model(a, b)) return 0;
    for (int i = 0; i < a->n_controls; i++)
        if (!source_eq(&a->control[i].image, &b->control[i].image) || a->control[i].scale != b->control[i].scale)
            return 0;
    for (int i = 0; i < a->n_ip; i++)
        if (!source_eq(&a->ip[i].image, &b->ip[i].image) || a->ip[i].scale != b->ip[i].scale) return 0;
    for (int k = 0; k < 2; k++)
        if (a->original_size[k] != b->original_size[k] || a->crop_coords[k] != b->crop_coords[k] ||
            a->target_size[k] != b->target_size[k])
            return 0;
    return !strcmp(a->prompt, b->prompt) && str_eq(a->negative_prompt, b->negative_prompt) &&
           str_eq(a->prompt_2, b->prompt_2) && str_eq(a->negative_prompt_2, b->negative_prompt_2) &&
           a->steps == b->steps && a->guidance == b->guidance && a->seed == b->seed &&
           a->num_images == b->num_images && a->clip_skip == b->clip_skip &&
           str_eq(a->prediction_type, b->prediction_type) && a->windows == b->windows &&
           (!p->on || (p->size == q->size && p->steps == q->steps && p->strength == q->strength &&
                       p->guidance == q->guidance && p->controlnet_scale == q->controlnet_scale &&
                       !strcmp(p->prompt, q->prompt) && !strcmp(p->negative_prompt, q->negative_prompt)));
}

int pf_job_family_check(const pf_job *job, int sdxl, char *field, size_t n, pf_error *err) {
    ctx c = {field, n, err};
    if (sdxl) {
        if (job->refine.on) return bad(&c, "refine", "the refiner runs SD-1.x/2.x models (this model is SDXL)");
        return 0;
    }
    /* SD-1.x/2.x have one text encoder and no time ids: these would be ignored, so they are refused */
    static const char *const sdxl_only[] = {"prompt_2", "negative_prompt_2", "original_size", "crop_coords",
                                            "target_size"};
    for (size_t i = 0; i < sizeof sdxl_only / sizeof *sdxl_only; i++)
        if (json_object_get(job->json, sdxl_only[i]))
            return bad(&c, sdxl_only[i], "is for SDXL models only (this model is SD-1.x/2.x)");
    return 0;
}
