/* job.c - parsing and validating jobs (job.h, schemas/job.v1.json). */
#include "job.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "model_source.h"
#include "output_key.h"
#include "pipeline.h"
#include "url_policy.h"

#define PF_JOB_MESSAGE_MAX (64 * 1024)

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

/* SRC_BASE: a diffusers base URL (no digest); SRC_FILE: one file (+ digest);
 * SRC_SCALED: a file with a scale; SRC_FOLDER: one component folder (+ its
 * weights' digest), fetched with the weights variant of fp16. */
typedef enum { SRC_BASE, SRC_FILE, SRC_SCALED, SRC_FOLDER } src_kind;

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
    if (kind == SRC_BASE) {
        if (s->sha256) {
            path(uf, sizeof uf, f, "sha256");
            return bad(c, uf, "a diffusers base URL names many files and has no single digest");
        }
        if (pf_model_source_init(&src, PF_SOURCE_AUTO, s->url, NULL, 0, &e)) return bad(c, uf, "%s", e.msg);
        if (src.kind != PF_SOURCE_DIFFUSERS)
            return bad(c, uf, "must be the base URL of a diffusers-layout model (single-file checkpoints are "
                              "not supported)");
    } else if (kind == SRC_FOLDER) {
        if (pf_model_source_init(&src, PF_SOURCE_AUTO, s->url, NULL, 0, &e)) return bad(c, uf, "%s", e.msg);
        if (src.kind != PF_SOURCE_DIFFUSERS)
            return bad(c, uf, "must be the URL of a diffusers ControlNetModel folder (holding config.json and "
                              "diffusion_pytorch_model.safetensors), not of a file");
        if (pf_model_source_init(&src, PF_SOURCE_COMPONENT, s->url, s->sha256, fp16, &e))
            return bad(c, uf, "%s", e.msg);
    } else if (pf_model_source_init(&src, PF_SOURCE_FILE, s->url, s->sha256, 0, &e)) {
        return bad(c, uf, "%s", e.msg);
    }
    return 0;
}

static int parse_model(ctx *c, pf_job *job, json_t *m) {
    static const char *const keys[] = {"base", "delta", "loras", "controlnet", "fp16", NULL};
    if (only_keys(c, m, "model", keys)) return -1;
    json_t *o;
    if (get_obj(c, m, "model", "base", 1, &o) || get_source(c, o, "model.base", SRC_BASE, 0, &job->base)) return -1;
    if (get_obj(c, m, "model", "delta", 0, &o) || (o && get_source(c, o, "model.delta", SRC_FILE, 0, &job->delta)))
        return -1;
    if (job->delta.url) {
        pf_url u;
        pf_error e;
        pf_url_parse(&u, job->delta.url, &e);
        const char *q = strchr(u.path, '?');
        size_t pl = q ? (size_t)(q - u.path) : strlen(u.path);
        if (pl < 12 || strncmp(u.path + pl - 12, ".safetensors", 12))
            return bad(c, "model.delta.url", "must name a .safetensors file of PeRFlow delta weights");
    }
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
    if (get_obj(c, m, "model", "controlnet", 0, &o)) return -1;
    if (o) {
        static const char *const ckeys[] = {"url", "sha256", "scale", "image_url", NULL};
        if (only_keys(c, o, "model.controlnet", ckeys)) return -1;
        json_t *copy = json_deep_copy(o); /* get_source allows no image_url */
        json_object_del(copy, "image_url");
        int rc = get_source(c, copy, "model.controlnet", SRC_SCALED, 0, &job->controlnet);
        /* the strings must outlive the copy: point them into o instead */
        if (!rc) {
            job->controlnet.url = json_string_value(json_object_get(o, "url"));
            job->controlnet.sha256 = json_string_value(json_object_get(o, "sha256"));
        }
        json_decref(copy);
        if (rc || get_str(c, o, "model.controlnet", "image_url", 1, PF_URL_MAX - 1, &job->control_image)) return -1;
        pf_url u;
        pf_error e;
        if (pf_url_parse(&u, job->control_image, &e)) return bad(c, "model.controlnet.image_url", "%s", e.msg);
    }
    json_t *fp16 = json_object_get(m, "fp16");
    if (fp16) {
        if (!json_is_boolean(fp16)) return bad(c, "model.fp16", "must be true or false");
        job->fp16 = json_is_true(fp16);
    }
    return 0;
}

static int check_text(ctx *c, const char *f, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 && *p != '\n' && *p != '\t' && *p != '\r') return bad(c, f, "has a control character");
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
    char tmp[8];
    pf_error e;
    if (pf_output_key(tmp, sizeof tmp, "x", id, 0, 0, &e)) {
        bad(&c, "job_id", "must be 1 to %d of [A-Za-z0-9._-], not starting with '.'", PF_JOB_ID_MAX);
        goto fail;
    }
    snprintf(job->job_id, sizeof job->job_id, "%s", id);

    static const char *const keys[] = {"schema", "job_id", "attempt", "model", "prompt", "negative_prompt", "width",
                                       "height", "steps", "guidance", "seed", "num_images", "sampler", "clip_skip",
                                       "refiner", "refine", "output", "deadline", "priority", "batch_id", NULL};
    if (only_keys(&c, root, "", keys)) goto fail;
    const char *schema;
    if (get_str(&c, root, "", "schema", 0, 64, &schema)) goto fail;
    if (schema && strcmp(schema, PF_JOB_SCHEMA)) {
        bad(&c, "schema", "must be \"%s\" (this worker reads no other version)", PF_JOB_SCHEMA);
        goto fail;
    }
    if (get_str(&c, root, "", "batch_id", 0, PF_JOB_BATCH_ID_MAX, &job->batch_id)) goto fail;
    if (job->batch_id && pf_output_key(tmp, sizeof tmp, "x", job->batch_id, 0, 0, &e)) {
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
    if (get_str(&c, root, "", "prompt", 1, PF_JOB_PROMPT_MAX, &job->prompt) || check_text(&c, "prompt", job->prompt))
        goto fail;
    if (get_str(&c, root, "", "negative_prompt", 0, PF_JOB_PROMPT_MAX, &job->negative_prompt)) goto fail;
    if (!job->negative_prompt) job->negative_prompt = "";
    if (check_text(&c, "negative_prompt", job->negative_prompt)) goto fail;
    static const char *const sides[] = {"width", "height"};
    for (int i = 0; i < 2; i++) {
        if (get_int(&c, root, "", sides[i], 8, PF_JOB_MAX_SIDE, 512, &v)) goto fail;
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
    if (get_obj(&c, root, "", "output", 1, &o) || parse_output(&c, job, o)) goto fail;
    const char *deadline;
    if (get_str(&c, root, "", "deadline", 0, 40, &deadline)) goto fail;
    if (deadline && pf_rfc3339_parse(deadline, &job->deadline_ms)) {
        bad(&c, "deadline", "must be an RFC 3339 time such as 2025-11-26T03:04:05Z");
        goto fail;
    }
    if (get_int(&c, root, "", "priority", 0, 9, 0, &v)) goto fail;
    job->priority = (int)v;
    return 0;
fail:;
    char keep[PF_JOB_ID_MAX + 1];
    memcpy(keep, job->job_id, sizeof keep);
    json_decref(root);
    memset(job, 0, sizeof *job);
    memcpy(job->job_id, keep, sizeof keep);
    return -1;
}

void pf_job_free(pf_job *job) {
    if (!job) return;
    json_decref(job->json);
    memset(job, 0, sizeof *job);
}

int pf_job_supported(const pf_job *job, char *field, size_t n, pf_error *err) {
    ctx c = {field, n, err};
    if (job->n_loras) return bad(&c, "model.loras", "LoRAs are not supported by this worker yet");
    if (job->controlnet.url) return bad(&c, "model.controlnet", "ControlNet is not supported by this worker yet");
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

int pf_job_same_model(const pf_job *a, const pf_job *b) {
    return str_eq(a->base.url, b->base.url) && str_eq(a->delta.url, b->delta.url) &&
           str_eq(a->delta.sha256, b->delta.sha256) && a->fp16 == b->fp16 && a->width == b->width &&
           a->height == b->height && a->refine.on == b->refine.on &&
           str_eq(a->refine.controlnet.url, b->refine.controlnet.url) &&
           str_eq(a->refine.controlnet.sha256, b->refine.controlnet.sha256);
}

int pf_job_same_images(const pf_job *a, const pf_job *b) {
    const pf_job_refine *p = &a->refine, *q = &b->refine;
    return pf_job_same_model(a, b) && !strcmp(a->prompt, b->prompt) &&
           !strcmp(a->negative_prompt, b->negative_prompt) && a->steps == b->steps && a->guidance == b->guidance &&
           a->seed == b->seed && a->num_images == b->num_images && a->clip_skip == b->clip_skip &&
           str_eq(a->prediction_type, b->prediction_type) && a->windows == b->windows &&
           (!p->on || (p->size == q->size && p->steps == q->steps && p->strength == q->strength &&
                       p->guidance == q->guidance && p->controlnet_scale == q->controlnet_scale &&
                       !strcmp(p->prompt, q->prompt) && !strcmp(p->negative_prompt, q->negative_prompt)));
}
