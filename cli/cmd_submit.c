/* cmd_submit.c - `perflow submit`: generation jobs into Kafka for the worker
 * fleet, one from the flags of `perflow generate` or many from a prompt file
 * times a seed range (dataset synthesis), with idempotent job ids, a batch id,
 * a client-side rate limit, and with --wait the batch followed on the status
 * topic to a summary and a manifest.
 *
 * Idempotency. A job's id is "<batch_id>-<16 hex digits>", the digits those
 * of the SHA-256 of the job's canonical JSON (sorted keys, without its ids),
 * and the batch id is the user's or "b" + 12 hex digits of the SHA-256 of all
 * the batch's job digests. So the same submit gives the same ids again, and
 * no new work: with Redis, jobs whose result the workers recorded are not
 * sent again (their manifest lines come from the records); without it, or for
 * jobs still on their way, the workers answer a job id they finished from its
 * record ("replayed") without running it. Two rows asking for the same images
 * are one job.
 *
 * Everything is checked before anything is sent: every job goes through the
 * workers' own parser (protocol/job.c), so a job the fleet would reject fails
 * here, naming the prompt file's line and the field. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "cli_images.h"
#include "cli_util.h"
#include "commands.h"
#include "digest.h"
#include "job.h"
#include "model_route.h"
#include "output_key.h"
#include "redis_conn.h"
#include "status.h"
#include "submit_kafka.h"
#include "submit_manifest.h"
#include "submit_prompts.h"
#include "submit_redis.h"
#include "submit_shards.h"
#include "worker_config.h"

#define MAX_JOBS 5000000L /* jobs of one submit (about 200 bytes each while it runs) */
#define MAX_FILE (1024L * 1024 * 1024) /* bytes of a prompt file */
#define CONNECT_TIMEOUT_MS 15000

static void usage(FILE *f) {
    fprintf(f,
            "usage: perflow submit --model-url URL [--delta-url URL] --output URL-TEMPLATE\n"
            "                      (--prompt TEXT | --prompts FILE.jsonl|FILE.csv) [--seed N | --seeds A-B]\n"
            "                      [the image flags of perflow generate] [--refine --controlnet-url URL ...]\n"
            "                      [--batch-id ID] [--rate JOBS_PER_S] [--wait [--timeout S]] [--manifest FILE|s3://B/K]\n"
            "                      [--brokers HOSTS] [--topic T] [--status-topic T] [--redis ADDR | --no-redis]\n"
            "                      [--config FILE] [--dry-run]\n\n"
            "Sends PeRFlow generation jobs (schemas/job.v1.json) to the worker fleet's jobs topic:\n"
            "one from the flags, or one per prompt of a file times each seed of --seeds.\n\n"
            "Images (as perflow generate; the defaults are its defaults):\n"
            "  --prompt TEXT --negative-prompt TEXT --steps 4 --guidance 4.5 --seed 0 --width W\n"
            "  --height H --num-images 1 --prediction-type T --windows K --clip-skip 0\n"
            "  (a job carries only the flags given; the worker resolves sizes, prediction type and windows\n"
            "  from the model as perflow generate does: see perflow generate --help)\n"
            "  SDXL: --prompt-2 TEXT --negative-prompt-2 TEXT --original-size W,H --crop-coords X,Y\n"
            "  --target-size W,H\n"
            "  --lora-url URL[:SCALE] [--lora-sha256 HEX]   a LoRA .safetensors (repeatable, in order)\n"
            "  --controlnet-url URL[:SCALE] [--controlnet-sha256 HEX] --control-image-url URL\n"
            "  [--control-image-sha256 HEX]   a text-to-image ControlNet and its condition image (repeatable\n"
            "  as pairs; a --control-image-url and each -sha256 belong to the URL flag just before them;\n"
            "  a net's scale is its :SCALE, else --controlnet-scale; the scale is what follows the last ':'\n"
            "  when it is a number)\n"
            "  --ip-adapter-url URL[:SCALE] [--ip-adapter-sha256 HEX] --ip-image-url URL [--ip-image-sha256 HEX]\n"
            "  an IP-Adapter .safetensors and its image prompt (repeatable as pairs, as --ip-adapter and\n"
            "  --ip-image; scale default 1.0); --image-encoder-url URL [--image-encoder-sha256 HEX] the\n"
            "  CLIPVisionModelWithProjection folder (default: the --model-url's image_encoder)\n"
            "  --refine --controlnet-url URL[:SCALE] [--controlnet-sha256 HEX] --refine-size 1024 --refine-steps 4\n"
            "  --refine-prompt TEXT --refine-negative-prompt TEXT --refine-guidance 7.5\n"
            "  --refine-strength 1.0 --controlnet-scale 1.0 [--keep-base]\n"
            "Where the fleet finds the model and puts the images:\n"
            "  --model-url URL       diffusers-layout base model (https://)\n"
            "  --delta-url URL       PeRFlow delta weights, a .safetensors file [--delta-sha256 HEX] [--fp16]\n"
            "  --output TEMPLATE     s3://BUCKET/KEY or file:///PATH with {job_id}, {index}, {seed}, {stage}\n"
            "  --deadline RFC3339    jobs not done by then fail with code deadline\n"
            "Bulk:\n"
            "  --prompts FILE        JSONL ({\"prompt\", \"negative_prompt\", \"seed\"} per line) or CSV with a\n"
            "                        header row (prompt[,negative_prompt][,seed]); --prompts-format jsonl|csv\n"
            "                        when the extension does not say. A row's seed pins it to that seed.\n"
            "  --seeds A-B           every prompt with every seed from A to B (inclusive)\n"
            "  --shard-size N        a dataset: every N samples (prompt x seed) are one job writing one WebDataset\n"
            "                        tar at --output with {shard} (zero-padded: s3://b/p/{shard}.tar); --wait\n"
            "                        then writes manifest.jsonl beside the shards (one line per shard)\n"
            "  --batch-id ID         the batch's id (default: made from the jobs, so a re-run is the same batch)\n"
            "  --rate N              send at most N jobs per second\n"
            "  --wait                follow the status topic with a progress line (done, failed, running,\n"
            "                        images/s, ETA) until every job ends, then print a summary;\n"
            "                        --timeout S gives up after S seconds (exit 1); Ctrl-C stops waiting\n"
            "  --manifest DEST       one JSON line per job (ids, prompt, seed, settings, state, output URLs\n"
            "                        with sha256 and size) to a file or s3://BUCKET/KEY (S3 credentials and\n"
            "                        endpoint as perflow put); complete with --wait\n"
            "  --dry-run             print the jobs as JSON lines and send nothing\n"
            "Connection (the workers' settings, perflow-worker --help: defaults, then --config FILE or\n"
            "$PERFLOW_CONFIG, then PERFLOW_* and PERFLOW_KAFKA_* variables, then these options):\n"
            "  --brokers HOSTS       Kafka bootstrap servers\n"
            "  --topic T             jobs topic (default: the first of jobs_topics)\n"
            "  --status-topic T      the workers' status topic, for --wait\n"
            "  --redis ADDR          the workers' Redis (default $PERFLOW_REDIS): jobs it has a result for\n"
            "                        are not sent again, and the batch is indexed for perflow status --batch;\n"
            "                        --no-redis: neither\n"
            "  --route-spread N      a model's jobs go to N consecutive partitions in turn, starting where\n"
            "                        the model's digest says, so they meet the workers that have it loaded\n"
            "                        (default %d; ops/README.md, Warm-model routing)\n"
            "  --no-route-by-model   key each job by its id instead (the partitioner spreads them)\n"
            "Not here (the workers' settings): --model, --delta, --lora, --controlnet, --control-image,\n"
            "--ip-adapter, --ip-image, --image-encoder (use the -url forms), --out,\n"
            "--grid, --device, --threads, --vae-tiling.\n"
            "Exit status: 0 when every job was sent (and with --wait succeeded), 1 otherwise, 2 on usage\n"
            "errors.\n",
            PF_ROUTE_SPREAD_DEFAULT);
}

static int usage_error(const char *fmt, const char *arg) { return pf_cli_usage_error("submit", fmt, arg); }

/* A URL[:SCALE] flag's URL (pf_cli_split_scale), its scale and its sha256 flag. */
typedef struct url_arg {
    char url[2048];
    double scale;
    int has_scale;
    const char *sha;                  /* NULL when not given */
} url_arg;

typedef struct options {
    const char *model_url, *delta_url, *delta_sha, *cn_url, *cn_sha, *output, *prompt, *negative, *prompts,
        *prompts_format, *seeds, *batch_id, *manifest, *config, *brokers, *topic, *status_topic, *redis, *deadline,
        *prediction_type, *refine_prompt, *refine_negative, *prompt_2, *negative_2;
    long orig[2], crop[2], target[2]; /* SDXL's time ids, as --original-size W,H and friends; 0: not given */
    int has_orig, has_crop, has_target;
    url_arg loras[PF_MAX_LORAS];      /* --lora-url URL[:SCALE] [--lora-sha256 HEX] */
    int n_loras;
    struct {                          /* --controlnet-url URL[:SCALE] [--controlnet-sha256 HEX] */
        url_arg net;                  /* [--control-image-url URL [--control-image-sha256 HEX]] */
        const char *image, *image_sha; /* image NULL: the refiner's tile */
    } nets[PF_MAX_CONTROLS];
    int n_nets;
    struct {                          /* --ip-adapter-url URL[:SCALE] [--ip-adapter-sha256 HEX] */
        url_arg adapter;              /* --ip-image-url URL [--ip-image-sha256 HEX] */
        const char *image, *image_sha;
    } ips[PF_MAX_IP_ADAPTERS];
    int n_ips;
    const char *enc_url, *enc_sha;    /* --image-encoder-url URL [--image-encoder-sha256 HEX] */
    char enc_default[2100];           /* the model URL's image_encoder/ (as perflow generate's default) */
    double cn_tile_scale;             /* the tile's :SCALE when it has one */
    int has_tile_scale;
    long steps, width, height, num_images, windows, clip_skip, refine_size, refine_steps, shard_size;
    double guidance, refine_guidance, refine_strength, cn_scale, rate, timeout;
    uint64_t seed;
    int has_seed, refine, keep_base, fp16, wait, dry_run, no_redis;
    int no_route;     /* --no-route-by-model */
    long route_spread; /* --route-spread N (PF_ROUTE_SPREAD_DEFAULT) */
    int has_rsize, has_rsteps, has_rguidance, has_rstrength, has_cnscale;
} options;

/* ---- the jobs --------------------------------------------------------------- */

enum { J_NEW, J_DUPLICATE, J_SENT, J_RUNNING, J_RETRYING, J_SUCCEEDED, J_FAILED, J_REJECTED, J_CANCELLED };
static const char *const state_names[] = {"new",       "duplicate", "submitted", "running", "retrying",
                                          "succeeded", "failed",    "rejected",  "cancelled"};

typedef struct sjob {
    char id[PF_JOB_ID_MAX + 1];
    char hash[17];
    long row;       /* index into the prompt rows */
    uint64_t seed;
    int state;
    int recorded;   /* finished before this submit: its result came from Redis */
    json_t *final;  /* the terminal status or record */
} sjob;

typedef struct batch {
    options o;
    pf_prompt_list rows;
    json_t *tmpl;         /* the job without prompt, negative_prompt, seed, ids */
    sjob *jobs;
    long n, cap, unique;  /* unique: jobs less duplicates */
    long *slots;          /* open addressing over jobs by id (or hash before the ids exist) */
    size_t nslots;
    char batch_id[PF_JOB_BATCH_ID_MAX + 1];
    const char *source;   /* the prompt file's name, or NULL */
} batch;

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The job with key (its id, or its hash while ids are not made), or -1. */
static long lookup(const batch *b, const char *key, int by_hash) {
    if (!b->nslots) return -1;
    for (size_t i = fnv1a(key) & (b->nslots - 1);; i = (i + 1) & (b->nslots - 1)) {
        long j = b->slots[i];
        if (j < 0) return -1;
        if (!strcmp(by_hash ? b->jobs[j].hash : b->jobs[j].id, key)) return j;
    }
}

static void index_jobs(batch *b, int by_hash) {
    size_t need = 16;
    while (need < 2 * (size_t)b->n) need *= 2;
    if (need != b->nslots) {
        free(b->slots);
        b->slots = PF_MALLOC(need * sizeof *b->slots);
        b->nslots = need;
    }
    for (size_t i = 0; i < need; i++) b->slots[i] = -1;
    for (long j = 0; j < b->n; j++) {
        if (b->jobs[j].state == J_DUPLICATE) continue;
        size_t i = fnv1a(by_hash ? b->jobs[j].hash : b->jobs[j].id) & (need - 1);
        while (b->slots[i] >= 0) i = (i + 1) & (need - 1);
        b->slots[i] = j;
    }
}

/* The job every row shares: the flags' settings. */
static json_t *template_job(const options *o) {
    json_t *model = json_pack("{s:{s:s}}", "base", "url", o->model_url);
    if (o->delta_url) {
        json_t *d = json_pack("{s:s}", "url", o->delta_url);
        if (o->delta_sha) json_object_set_new(d, "sha256", json_string(o->delta_sha));
        json_object_set_new(model, "delta", d);
    }
    if (o->fp16) json_object_set_new(model, "fp16", json_true());
    if (o->n_loras) {
        json_t *ls = json_array();
        for (int i = 0; i < o->n_loras; i++) {
            json_t *l = json_pack("{s:s}", "url", o->loras[i].url);
            if (o->loras[i].sha) json_object_set_new(l, "sha256", json_string(o->loras[i].sha));
            if (o->loras[i].has_scale) json_object_set_new(l, "scale", json_real(o->loras[i].scale));
            json_array_append_new(ls, l);
        }
        json_object_set_new(model, "loras", ls);
    }
    json_t *t = json_pack("{s:s, s:o, s:I, s:f, s:I, s:I, s:{s:s}}", "schema", PF_JOB_SCHEMA, "model", model,
                          "steps", (json_int_t)o->steps, "guidance", o->guidance, "num_images",
                          (json_int_t)o->num_images, "clip_skip", (json_int_t)o->clip_skip, "output", "url",
                          o->output);
    PF_CHECK(t);
    /* what the model decides (request.h) is left to the worker, which resolves
     * it as perflow generate does: a job carries only what its flags set */
    if (o->prompt_2) json_object_set_new(t, "prompt_2", json_string(o->prompt_2));
    if (o->negative_2) json_object_set_new(t, "negative_prompt_2", json_string(o->negative_2));
    if (o->has_orig) json_object_set_new(t, "original_size", json_pack("[I,I]", (json_int_t)o->orig[0], (json_int_t)o->orig[1]));
    if (o->has_crop) json_object_set_new(t, "crop_coords", json_pack("[I,I]", (json_int_t)o->crop[0], (json_int_t)o->crop[1]));
    if (o->has_target)
        json_object_set_new(t, "target_size", json_pack("[I,I]", (json_int_t)o->target[0], (json_int_t)o->target[1]));
    json_t *control = json_array();
    for (int i = 0; i < o->n_nets; i++) {
        if (!o->nets[i].image) continue; /* the tile: refine.controlnet */
        json_t *c = json_pack("{s:{s:s}, s:{s:s}}", "controlnet", "url", o->nets[i].net.url, "image", "url",
                              o->nets[i].image);
        if (o->nets[i].net.sha) json_object_set_new(json_object_get(c, "controlnet"), "sha256", json_string(o->nets[i].net.sha));
        if (o->nets[i].image_sha) json_object_set_new(json_object_get(c, "image"), "sha256", json_string(o->nets[i].image_sha));
        /* as perflow generate: the net's :SCALE, else --controlnet-scale */
        if (o->nets[i].net.has_scale || o->has_cnscale)
            json_object_set_new(c, "scale", json_real(o->nets[i].net.has_scale ? o->nets[i].net.scale : o->cn_scale));
        json_array_append_new(control, c);
    }
    if (json_array_size(control)) json_object_set_new(t, "control", control);
    else json_decref(control);
    if (o->n_ips) {
        json_t *ips = json_array();
        for (int i = 0; i < o->n_ips; i++) {
            json_t *a = json_pack("{s:{s:s}, s:{s:s}, s:{s:s}}", "adapter", "url", o->ips[i].adapter.url, "image", "url",
                                  o->ips[i].image, "image_encoder", "url", o->enc_url);
            if (o->ips[i].adapter.sha)
                json_object_set_new(json_object_get(a, "adapter"), "sha256", json_string(o->ips[i].adapter.sha));
            if (o->ips[i].image_sha)
                json_object_set_new(json_object_get(a, "image"), "sha256", json_string(o->ips[i].image_sha));
            if (o->enc_sha) json_object_set_new(json_object_get(a, "image_encoder"), "sha256", json_string(o->enc_sha));
            if (o->ips[i].adapter.has_scale) json_object_set_new(a, "scale", json_real(o->ips[i].adapter.scale));
            json_array_append_new(ips, a);
        }
        json_object_set_new(t, "ip_adapters", ips);
    }
    if (o->width) json_object_set_new(t, "width", json_integer(o->width));
    if (o->height) json_object_set_new(t, "height", json_integer(o->height));
    if (o->prediction_type || o->windows) {
        json_t *s = json_object();
        if (o->prediction_type) json_object_set_new(s, "prediction_type", json_string(o->prediction_type));
        if (o->windows) json_object_set_new(s, "windows", json_integer(o->windows));
        json_object_set_new(t, "sampler", s);
    }
    if (o->refine) {
        json_t *r = json_pack("{s:{s:s}}", "controlnet", "url", o->cn_url);
        if (o->cn_sha) json_object_set_new(json_object_get(r, "controlnet"), "sha256", json_string(o->cn_sha));
        if (o->has_rsize) json_object_set_new(r, "size", json_integer(o->refine_size));
        if (o->has_rsteps) json_object_set_new(r, "steps", json_integer(o->refine_steps));
        if (o->has_rguidance) json_object_set_new(r, "guidance", json_real(o->refine_guidance));
        if (o->has_rstrength) json_object_set_new(r, "strength", json_real(o->refine_strength));
        if (o->has_tile_scale || o->has_cnscale)
            json_object_set_new(r, "controlnet_scale", json_real(o->has_tile_scale ? o->cn_tile_scale : o->cn_scale));
        if (o->refine_prompt) json_object_set_new(r, "prompt", json_string(o->refine_prompt));
        if (o->refine_negative) json_object_set_new(r, "negative_prompt", json_string(o->refine_negative));
        if (o->keep_base) json_object_set_new(r, "keep_base", json_true());
        json_object_set_new(t, "refine", r);
    }
    if (o->deadline) json_object_set_new(t, "deadline", json_string(o->deadline));
    return t;
}

/* The job of row at seed, without ids (NULL when a string is not UTF-8: only
 * command-line text can be, prompt files are checked). */
static json_t *row_job(const batch *b, long row, uint64_t seed) {
    const pf_prompt_row *r = &b->rows.rows[row];
    json_t *j = json_deep_copy(b->tmpl);
    const char *neg = r->negative_prompt ? r->negative_prompt : b->o.negative;
    json_t *p = json_string(r->prompt), *np = neg && *neg ? json_string(neg) : NULL;
    if (!p || (neg && *neg && !np)) {
        json_decref(p);
        json_decref(np);
        json_decref(j);
        return NULL;
    }
    json_object_set_new(j, "prompt", p);
    if (np) json_object_set_new(j, "negative_prompt", np);
    json_object_set_new(j, "seed", json_integer((json_int_t)seed));
    return j;
}

/* "FILE:LINE" or "job" for messages about a row. */
static void where(char *out, size_t n, const batch *b, long row) {
    if (b->source) snprintf(out, n, "%s:%ld", b->source, b->rows.rows[row].line);
    else snprintf(out, n, "job");
}

/* Makes, checks and hashes every job (nothing is sent yet). */
static int plan(batch *b, uint64_t seed_lo, uint64_t seed_hi, pf_error *err) {
    pf_sha256 *all = pf_sha256_new();
    int rc = 0;
    for (long row = 0; row < b->rows.n && !rc; row++) {
        const pf_prompt_row *r = &b->rows.rows[row];
        uint64_t lo = r->has_seed ? r->seed : seed_lo, hi = r->has_seed ? r->seed : seed_hi;
        for (uint64_t seed = lo;; seed++) {
            char at[300];
            where(at, sizeof at, b, row);
            if (b->n == MAX_JOBS) {
                rc = pf_fail(err, "%s: more than %ld jobs in one submit (split the batch)", at, MAX_JOBS);
                break;
            }
            json_t *j = row_job(b, row, seed);
            if (!j) {
                rc = pf_fail(err, "%s: the prompt or negative prompt is not valid UTF-8", at);
                break;
            }
            char *canon = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
            PF_CHECK(canon);
            char hex[PF_SHA256_HEX];
            pf_sha256_hex(hex, canon, strlen(canon));
            free(canon);
            /* The workers' own parser, with ids of the right form. */
            char vid[20], field[PF_JOB_FIELD_MAX];
            snprintf(vid, sizeof vid, "v%.16s", hex);
            json_object_set_new(j, "job_id", json_string(vid));
            json_object_set_new(j, "batch_id", json_string("b"));
            char *s = json_dumps(j, JSON_COMPACT);
            json_decref(j);
            PF_CHECK(s);
            pf_job job;
            pf_error e;
            if (pf_job_parse(&job, s, strlen(s), field, sizeof field, &e)) {
                free(s);
                rc = pf_fail(err, "%s: %s", at, e.msg);
                break;
            }
            pf_job_free(&job);
            free(s);
            if (b->n == b->cap) {
                b->cap = b->cap ? 2 * b->cap : 256;
                b->jobs = realloc(b->jobs, (size_t)b->cap * sizeof *b->jobs);
                PF_CHECK(b->jobs);
            }
            sjob *sj = &b->jobs[b->n++];
            memset(sj, 0, sizeof *sj);
            snprintf(sj->hash, sizeof sj->hash, "%.16s", hex);
            sj->row = row;
            sj->seed = seed;
            pf_sha256_update(all, sj->hash, 16);
            if (seed == hi) break;
        }
    }
    if (!rc) {
        /* Rows that ask for the same images are one job. */
        index_jobs(b, 1);
        b->unique = 0;
        for (long j = 0; j < b->n; j++) {
            if (lookup(b, b->jobs[j].hash, 1) != j) b->jobs[j].state = J_DUPLICATE;
            else b->unique++;
        }
        if (!b->o.batch_id) {
            char hex[PF_SHA256_HEX];
            pf_sha256_final_hex(all, hex);
            snprintf(b->batch_id, sizeof b->batch_id, "b%.12s", hex);
        }
        for (long j = 0; j < b->n; j++) snprintf(b->jobs[j].id, sizeof b->jobs[j].id, "%s-%s", b->batch_id, b->jobs[j].hash);
        index_jobs(b, 0);
    }
    pf_sha256_free(all);
    return rc;
}

/* The job as sent: with its ids. malloc'd JSON. */
static char *job_json(const batch *b, const sjob *j) {
    json_t *o = row_job(b, j->row, j->seed); /* checked by plan */
    PF_CHECK(o);
    json_object_set_new(o, "job_id", json_string(j->id));
    json_object_set_new(o, "batch_id", json_string(b->batch_id));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    PF_CHECK(s);
    return s;
}

/* ---- Redis: what is done already, and the batch index ---------------------- */

static int redis_step(batch *b, pf_wredis *r, const char *batch_prefix, long ttl_s, long *recorded, pf_error *err) {
    const char **ids = PF_CALLOC((size_t)b->n + 1, sizeof *ids);
    long *pos = PF_CALLOC((size_t)b->n + 1, sizeof *pos);
    long m = 0;
    for (long j = 0; j < b->n; j++)
        if (b->jobs[j].state != J_DUPLICATE) {
            pos[m] = j;
            ids[m++] = b->jobs[j].id;
        }
    json_t **rec = PF_CALLOC((size_t)m + 1, sizeof *rec);
    json_t **entries = PF_CALLOC((size_t)m + 1, sizeof *entries);
    int rc = pf_sr_job_values(r, ids, m, "result", rec, err);
    *recorded = 0;
    for (long i = 0; !rc && i < m; i++) {
        sjob *sj = &b->jobs[pos[i]];
        if (json_is_object(rec[i]) && pf_status_is_terminal(rec[i])) {
            const char *st = json_string_value(json_object_get(rec[i], "state"));
            sj->state = !strcmp(st, PF_ST_SUCCEEDED) ? J_SUCCEEDED : !strcmp(st, PF_ST_CANCELLED) ? J_CANCELLED
                                                                                                   : J_FAILED;
            sj->final = json_incref(rec[i]);
            sj->recorded = 1;
            ++*recorded;
        }
        const pf_prompt_row *row = &b->rows.rows[sj->row];
        const char *neg = row->negative_prompt ? row->negative_prompt : b->o.negative;
        entries[i] = json_pack("{s:I, s:s, s:s, s:I}", "i", (json_int_t)pos[i], "prompt", row->prompt,
                               "negative_prompt", neg ? neg : "", "seed", (json_int_t)sj->seed);
        PF_CHECK(entries[i]);
        if (b->source) json_object_set_new(entries[i], "line", json_integer(row->line));
    }
    if (!rc) {
        json_t *meta = json_pack("{s:s, s:O, s:I, s:I}", "batch_id", b->batch_id, "settings", b->tmpl, "jobs",
                                 (json_int_t)m, "submitted", (json_int_t)(pf_wall_ms() / 1000));
        rc = pf_sr_index_put(r, batch_prefix, b->batch_id, ids, entries, m, meta, ttl_s, err);
        json_decref(meta);
    }
    for (long i = 0; i < m; i++) {
        json_decref(rec[i]);
        json_decref(entries[i]);
    }
    free(rec);
    free(entries);
    free(ids);
    free(pos);
    return rc;
}

/* ---- following the batch ---------------------------------------------------- */

static volatile sig_atomic_t stop_waiting;
static void on_signal(int sig) {
    (void)sig;
    stop_waiting = 1;
}

typedef struct progress {
    long total, done, failed, running, images, replayed;
    long long t0, last_print;
    int tty;
    char last[160]; /* the latest event, for one job's detail */
    char shown[160]; /* the counts last printed (not a terminal: lines are printed when they change) */
} progress;

static int terminal_state(int s) { return s >= J_SUCCEEDED; }

static void count(const batch *b, progress *p) {
    p->done = p->failed = p->running = 0;
    for (long j = 0; j < b->n; j++) {
        int s = b->jobs[j].state;
        if (s == J_DUPLICATE) continue;
        if (s == J_SUCCEEDED) p->done++;
        else if (terminal_state(s)) p->failed++;
        else if (s == J_RUNNING || s == J_RETRYING) p->running++;
    }
}

/* The progress line: on a terminal redrawn in place 4 times a second; in a
 * log a new line when the counts or the latest event changed (or every 30
 * s), at most once a second, or at every event for a batch of a few jobs
 * (whose steps are worth seeing). */
static void show(const batch *b, progress *p, int final) {
    long long now = pf_now_ms();
    int every = p->tty ? 250 : p->total <= 10 ? 0 : 1000;
    if (!final && now - p->last_print < every) return;
    count(b, p);
    char key[sizeof p->shown];
    snprintf(key, sizeof key, "%ld %ld %ld %.120s", p->done, p->failed, p->running, p->last);
    if (!final && !p->tty && !strcmp(key, p->shown) && now - p->last_print < 30000) return;
    snprintf(p->shown, sizeof p->shown, "%s", key);
    p->last_print = now;
    double secs = (double)(now - p->t0) / 1000.0, rate = secs > 0 ? (double)p->images / secs : 0;
    long ended = p->done + p->failed, left = p->total - ended;
    char eta[32] = "--";
    if (ended > 0 && left > 0) {
        long s = (long)((double)left * secs / (double)ended);
        snprintf(eta, sizeof eta, "%ld:%02ld", s / 60, s % 60);
    } else if (!left) {
        snprintf(eta, sizeof eta, "0:00");
    }
    char bar[21];
    int filled = p->total ? (int)(20 * ended / p->total) : 20;
    for (int i = 0; i < 20; i++) bar[i] = i < filled ? '#' : '.';
    bar[20] = '\0';
    fprintf(stderr, "%s[%s] %ld/%ld  done %ld  failed %ld  running %ld  queued %ld  %.2f images/s  ETA %s%s%s%s",
            p->tty ? "\r" : "", bar, ended, p->total, p->done, p->failed, p->running,
            p->total - ended - p->running, rate, eta, p->last[0] ? "  (" : "", p->last, p->last[0] ? ")" : "");
    fprintf(stderr, p->tty && !final ? "\033[K" : "\n");
    fflush(stderr);
}

/* Applies one status event to its job; returns 1 when the job just ended. */
static int apply(batch *b, progress *p, json_t *ev) {
    const char *id = json_string_value(json_object_get(ev, "job_id"));
    long j = lookup(b, id, 0);
    if (j < 0) return 0;
    sjob *sj = &b->jobs[j];
    if (terminal_state(sj->state)) return 0; /* a replayed copy of an end already seen */
    const char *st = json_string_value(json_object_get(ev, "state"));
    if (!st) return 0;
    json_t *stage = json_object_get(ev, "stage"), *step = json_object_get(ev, "step"),
           *steps = json_object_get(ev, "steps");
    if (json_is_integer(step) && json_is_integer(steps))
        snprintf(p->last, sizeof p->last, "%.60s: %s %s %lld/%lld", id, st,
                 json_is_string(stage) ? json_string_value(stage) : "", json_integer_value(step),
                 json_integer_value(steps));
    else
        snprintf(p->last, sizeof p->last, "%.60s: %s", id, st);
    if (!pf_status_is_terminal(ev)) {
        sj->state = !strcmp(st, PF_ST_FAILED) ? J_RETRYING : J_RUNNING;
        return 0;
    }
    sj->state = !strcmp(st, PF_ST_SUCCEEDED)   ? J_SUCCEEDED
                : !strcmp(st, PF_ST_REJECTED)  ? J_REJECTED
                : !strcmp(st, PF_ST_CANCELLED) ? J_CANCELLED
                                               : J_FAILED;
    sj->final = json_incref(ev);
    if (json_is_true(json_object_get(ev, "replayed"))) p->replayed++; /* done before: no new images */
    else p->images += (long)json_array_size(json_object_get(ev, "outputs"));
    return 1;
}

/* Follows the status topic until every job ended, the timeout, or a signal. */
static int follow(batch *b, pf_submit_kafka *k, progress *p, long left) {
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    long long deadline = b->o.timeout > 0 ? pf_now_ms() + (long long)(b->o.timeout * 1000) : 0;
    int timed_out = 0;
    while (left > 0 && !stop_waiting) {
        if (deadline && pf_now_ms() > deadline) {
            timed_out = 1;
            break;
        }
        json_t *ev = pf_submit_kafka_status(k, 200);
        if (ev) {
            left -= apply(b, p, ev);
            json_decref(ev);
        }
        pf_submit_kafka_poll(k, 0);
        show(b, p, 0);
    }
    show(b, p, 1);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (timed_out)
        fprintf(stderr, "perflow: submit: gave up waiting after %g s: %ld job%s not finished\n", b->o.timeout, left,
                left == 1 ? "" : "s");
    else if (stop_waiting)
        fprintf(stderr, "perflow: submit: stopped waiting: %ld job%s not finished (they go on; see perflow status "
                        "--batch %s)\n", left, left == 1 ? "" : "s", b->batch_id);
    return left ? -1 : 0;
}

/* ---- the manifest ------------------------------------------------------------ */

static int write_manifest(const batch *b, const char *dest, pf_error *err) {
    pf_manifest *m;
    if (pf_manifest_open(&m, dest, err)) return -1;
    json_t *settings = json_deep_copy(b->tmpl);
    json_object_del(settings, "schema");
    int rc = 0;
    for (long j = 0; j < b->n && !rc; j++) {
        const sjob *sj = &b->jobs[j];
        if (sj->state == J_DUPLICATE) continue;
        const pf_prompt_row *row = &b->rows.rows[sj->row];
        const char *neg = row->negative_prompt ? row->negative_prompt : b->o.negative;
        rc = pf_manifest_add(m, b->batch_id, sj->id, row->prompt, neg, sj->seed, b->source ? row->line : 0, settings,
                             sj->final, terminal_state(sj->state) ? NULL : state_names[sj->state], err);
    }
    json_decref(settings);
    long lines = pf_manifest_lines(m);
    if (pf_manifest_close(m, !rc, err) || rc) return -1;
    printf("manifest: %s (%ld line%s)\n", dest, lines, lines == 1 ? "" : "s");
    return 0;
}

/* ---- options ------------------------------------------------------------------ */

static int read_file(const char *path, char **data, size_t *len, pf_error *err) {
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return pf_fail(err, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode) || st.st_size > MAX_FILE) {
        fclose(f);
        return pf_fail(err, "%s: not a regular file of at most %ld bytes", path, MAX_FILE);
    }
    *data = PF_MALLOC((size_t)st.st_size + 1);
    *len = fread(*data, 1, (size_t)st.st_size, f);
    int bad = ferror(f) || *len != (size_t)st.st_size;
    fclose(f);
    if (bad) {
        free(*data);
        *data = NULL;
        return pf_fail(err, "%s: read error", path);
    }
    return 0;
}

/* Fills a from a URL[:SCALE] argument (the scale as perflow generate's
 * PATH[:SCALE], in [-10, 10]); prints the usage error and returns -1 when the
 * URL is too long or the scale out of range. */
static int url_arg_set(url_arg *a, const char *arg, const char *flag) {
    char *url;
    pf_cli_split_scale(arg, &url, &a->scale, &a->has_scale);
    int long_url = strlen(url) >= sizeof a->url;
    snprintf(a->url, sizeof a->url, "%s", url);
    free(url);
    if (long_url) return pf_cli_usage_error("submit", "%s: the URL is longer than 2047 bytes", flag);
    if (a->has_scale && !(a->scale >= -10 && a->scale <= 10))
        return pf_cli_usage_error("submit", "%s: the scale must be in [-10, 10]", flag);
    return 0;
}

static int parse_options(options *o, int argc, char **argv) {
    enum { O_MODEL_URL = 256, O_DELTA_URL, O_DELTA_SHA, O_CN_URL, O_CN_SHA, O_OUTPUT, O_PROMPTS, O_PFORMAT, O_SEEDS,
           O_BATCH, O_RATE, O_WAIT, O_TIMEOUT, O_MANIFEST, O_CONFIG, O_BROKERS, O_TOPIC, O_STATUS_TOPIC, O_REDIS,
           O_NO_REDIS, O_NO_ROUTE, O_SPREAD, O_DRY, O_DEADLINE, O_REFINE, O_RSIZE, O_RSTEPS, O_RPROMPT, O_RNEG, O_RGUIDANCE, O_RSTRENGTH,
           O_CNSCALE, O_KEEP_BASE, O_FP16, O_SHARD_SIZE, O_NOT_HERE, O_PROMPT2, O_NEG2, O_ORIG, O_CROP, O_TARGET,
           O_LORA_URL, O_LORA_SHA, O_CIMG_URL, O_CIMG_SHA, O_IPA_URL, O_IPA_SHA, O_IPI_URL, O_IPI_SHA, O_ENC_URL,
           O_ENC_SHA };
    static const struct option opts[] = {
        {"model-url", required_argument, 0, O_MODEL_URL},     {"delta-url", required_argument, 0, O_DELTA_URL},
        {"delta-sha256", required_argument, 0, O_DELTA_SHA},  {"controlnet-url", required_argument, 0, O_CN_URL},
        {"controlnet-sha256", required_argument, 0, O_CN_SHA}, {"output", required_argument, 0, O_OUTPUT},
        {"prompt", required_argument, 0, 'p'},                {"negative-prompt", required_argument, 0, 'n'},
        {"steps", required_argument, 0, 's'},                 {"guidance", required_argument, 0, 'g'},
        {"seed", required_argument, 0, 'S'},                  {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},                {"num-images", required_argument, 0, 'N'},
        {"prediction-type", required_argument, 0, 'P'},      {"windows", required_argument, 0, 'K'},
        {"clip-skip", required_argument, 0, 'c'},             {"prompts", required_argument, 0, O_PROMPTS},
        {"prompts-format", required_argument, 0, O_PFORMAT},  {"seeds", required_argument, 0, O_SEEDS},
        {"batch-id", required_argument, 0, O_BATCH},          {"rate", required_argument, 0, O_RATE},
        {"wait", no_argument, 0, O_WAIT},                     {"timeout", required_argument, 0, O_TIMEOUT},
        {"manifest", required_argument, 0, O_MANIFEST},       {"config", required_argument, 0, O_CONFIG},
        {"brokers", required_argument, 0, O_BROKERS},         {"topic", required_argument, 0, O_TOPIC},
        {"status-topic", required_argument, 0, O_STATUS_TOPIC}, {"redis", required_argument, 0, O_REDIS},
        {"no-redis", no_argument, 0, O_NO_REDIS},             {"dry-run", no_argument, 0, O_DRY},
        {"no-route-by-model", no_argument, 0, O_NO_ROUTE},    {"route-spread", required_argument, 0, O_SPREAD},
        {"deadline", required_argument, 0, O_DEADLINE},       {"refine", no_argument, 0, O_REFINE},
        {"refine-size", required_argument, 0, O_RSIZE},       {"refine-steps", required_argument, 0, O_RSTEPS},
        {"refine-prompt", required_argument, 0, O_RPROMPT},   {"refine-negative-prompt", required_argument, 0, O_RNEG},
        {"refine-guidance", required_argument, 0, O_RGUIDANCE}, {"refine-strength", required_argument, 0, O_RSTRENGTH},
        {"controlnet-scale", required_argument, 0, O_CNSCALE}, {"keep-base", no_argument, 0, O_KEEP_BASE},
        {"fp16", no_argument, 0, O_FP16},                     {"help", no_argument, 0, 'h'},
        {"model", required_argument, 0, O_NOT_HERE},          {"delta", required_argument, 0, O_NOT_HERE},
        {"controlnet", required_argument, 0, O_NOT_HERE},     {"out", required_argument, 0, O_NOT_HERE},
        {"grid", no_argument, 0, O_NOT_HERE},                 {"device", required_argument, 0, O_NOT_HERE},
        {"threads", required_argument, 0, O_NOT_HERE},        {"vae-tiling", required_argument, 0, O_NOT_HERE},
        {"shard-size", required_argument, 0, O_SHARD_SIZE},
        {"prompt-2", required_argument, 0, O_PROMPT2},        {"negative-prompt-2", required_argument, 0, O_NEG2},
        {"original-size", required_argument, 0, O_ORIG},      {"crop-coords", required_argument, 0, O_CROP},
        {"target-size", required_argument, 0, O_TARGET},      {"lora-url", required_argument, 0, O_LORA_URL},
        {"lora-sha256", required_argument, 0, O_LORA_SHA},    {"control-image-url", required_argument, 0, O_CIMG_URL},
        {"control-image-sha256", required_argument, 0, O_CIMG_SHA},
        {"lora", required_argument, 0, O_NOT_HERE},           {"control-image", required_argument, 0, O_NOT_HERE},
        {"ip-adapter-url", required_argument, 0, O_IPA_URL},  {"ip-adapter-sha256", required_argument, 0, O_IPA_SHA},
        {"ip-image-url", required_argument, 0, O_IPI_URL},    {"ip-image-sha256", required_argument, 0, O_IPI_SHA},
        {"image-encoder-url", required_argument, 0, O_ENC_URL},
        {"image-encoder-sha256", required_argument, 0, O_ENC_SHA},
        {"ip-adapter", required_argument, 0, O_NOT_HERE},     {"ip-image", required_argument, 0, O_NOT_HERE},
        {"image-encoder", required_argument, 0, O_NOT_HERE},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->steps = 4;
    o->guidance = 4.5;
    o->num_images = 1;
    o->negative = "";
    o->route_spread = PF_ROUTE_SPREAD_DEFAULT;
    int c, idx;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, &idx)) != -1) {
        switch (c) {
        case O_MODEL_URL: o->model_url = optarg; break;
        case O_DELTA_URL: o->delta_url = optarg; break;
        case O_DELTA_SHA: o->delta_sha = optarg; break;
        case O_CN_URL:
            if (o->n_nets == PF_MAX_CONTROLS) return usage_error("at most %s --controlnet-url", "8");
            if (url_arg_set(&o->nets[o->n_nets].net, optarg, "--controlnet-url")) return 2;
            o->n_nets++;
            break;
        case O_CN_SHA: /* belongs to the --controlnet-url just before it */
            if (!o->n_nets || o->nets[o->n_nets - 1].net.sha)
                return usage_error("%s", "--controlnet-sha256 follows the --controlnet-url it pins (one each)");
            o->nets[o->n_nets - 1].net.sha = optarg;
            break;
        case O_CIMG_URL: /* as perflow generate's --control-image: the --controlnet-url just before it */
            if (!o->n_nets || o->nets[o->n_nets - 1].image)
                return usage_error("%s", "--control-image-url follows the --controlnet-url it conditions (one each)");
            o->nets[o->n_nets - 1].image = optarg;
            break;
        case O_CIMG_SHA:
            if (!o->n_nets || !o->nets[o->n_nets - 1].image || o->nets[o->n_nets - 1].image_sha)
                return usage_error("%s", "--control-image-sha256 follows the --control-image-url it pins (one each)");
            o->nets[o->n_nets - 1].image_sha = optarg;
            break;
        case O_IPA_URL:
            if (o->n_ips == PF_MAX_IP_ADAPTERS) return usage_error("at most %s --ip-adapter-url", "4");
            if (url_arg_set(&o->ips[o->n_ips].adapter, optarg, "--ip-adapter-url")) return 2;
            o->n_ips++;
            break;
        case O_IPA_SHA: /* belongs to the --ip-adapter-url just before it */
            if (!o->n_ips || o->ips[o->n_ips - 1].adapter.sha || o->ips[o->n_ips - 1].image)
                return usage_error("%s", "--ip-adapter-sha256 follows the --ip-adapter-url it pins (one each)");
            o->ips[o->n_ips - 1].adapter.sha = optarg;
            break;
        case O_IPI_URL: /* as perflow generate's --ip-image: the --ip-adapter-url just before it */
            if (!o->n_ips || o->ips[o->n_ips - 1].image)
                return usage_error("%s", "--ip-image-url follows the --ip-adapter-url it prompts (one each)");
            o->ips[o->n_ips - 1].image = optarg;
            break;
        case O_IPI_SHA:
            if (!o->n_ips || !o->ips[o->n_ips - 1].image || o->ips[o->n_ips - 1].image_sha)
                return usage_error("%s", "--ip-image-sha256 follows the --ip-image-url it pins (one each)");
            o->ips[o->n_ips - 1].image_sha = optarg;
            break;
        case O_ENC_URL: o->enc_url = optarg; break;
        case O_ENC_SHA: o->enc_sha = optarg; break;
        case O_LORA_URL:
            if (o->n_loras == PF_MAX_LORAS) return usage_error("at most %s --lora-url", "8");
            if (url_arg_set(&o->loras[o->n_loras], optarg, "--lora-url")) return 2;
            o->n_loras++;
            break;
        case O_LORA_SHA:
            if (!o->n_loras || o->loras[o->n_loras - 1].sha)
                return usage_error("%s", "--lora-sha256 follows the --lora-url it pins (one each)");
            o->loras[o->n_loras - 1].sha = optarg;
            break;
        case O_PROMPT2: o->prompt_2 = optarg; break;
        case O_NEG2: o->negative_2 = optarg; break;
        case O_ORIG:
            if (pf_cli_pair(optarg, "--original-size", 1, 16384, o->orig)) return 2;
            o->has_orig = 1;
            break;
        case O_CROP:
            if (pf_cli_pair(optarg, "--crop-coords", 0, 16384, o->crop)) return 2;
            o->has_crop = 1;
            break;
        case O_TARGET:
            if (pf_cli_pair(optarg, "--target-size", 1, 16384, o->target)) return 2;
            o->has_target = 1;
            break;
        case O_OUTPUT: o->output = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'n': o->negative = optarg; break;
        case 'P': o->prediction_type = optarg; break;
        case 's': if (pf_cli_int(optarg, "--steps", 1, 100, &o->steps)) return 2; break;
        case 'W': if (pf_cli_int(optarg, "--width", 8, 2048, &o->width)) return 2; break;
        case 'H': if (pf_cli_int(optarg, "--height", 8, 2048, &o->height)) return 2; break;
        case 'N': if (pf_cli_int(optarg, "--num-images", 1, 16, &o->num_images)) return 2; break;
        case 'K': if (pf_cli_int(optarg, "--windows", 1, 16, &o->windows)) return 2; break;
        case 'c': if (pf_cli_int(optarg, "--clip-skip", 0, 11, &o->clip_skip)) return 2; break;
        case 'S':
            if (pf_cli_seed(optarg, "--seed", &o->seed)) return 2;
            o->has_seed = 1;
            break;
        case 'g': if (pf_cli_number_in(optarg, "--guidance", 0, 30, &o->guidance)) return 2; break;
        case O_PROMPTS: o->prompts = optarg; break;
        case O_PFORMAT: o->prompts_format = optarg; break;
        case O_SEEDS: o->seeds = optarg; break;
        case O_SHARD_SIZE:
            if (pf_cli_int(optarg, "--shard-size", 1, PF_JOB_MAX_SAMPLES, &o->shard_size)) return 2;
            break;
        case O_BATCH: o->batch_id = optarg; break;
        case O_RATE: if (pf_cli_number_in(optarg, "--rate", 0.001, 1e6, &o->rate)) return 2; break;
        case O_WAIT: o->wait = 1; break;
        case O_TIMEOUT: if (pf_cli_number_in(optarg, "--timeout", 0, 1e9, &o->timeout)) return 2; break;
        case O_MANIFEST: o->manifest = optarg; break;
        case O_CONFIG: o->config = optarg; break;
        case O_BROKERS: o->brokers = optarg; break;
        case O_TOPIC: o->topic = optarg; break;
        case O_STATUS_TOPIC: o->status_topic = optarg; break;
        case O_REDIS: o->redis = optarg; break;
        case O_NO_REDIS: o->no_redis = 1; break;
        case O_NO_ROUTE: o->no_route = 1; break;
        case O_SPREAD:
            if (pf_cli_int(optarg, "--route-spread", 1, PF_ROUTE_SPREAD_MAX, &o->route_spread)) return 2;
            break;
        case O_DRY: o->dry_run = 1; break;
        case O_DEADLINE: o->deadline = optarg; break;
        case O_REFINE: o->refine = 1; break;
        case O_RSIZE:
            if (pf_cli_int(optarg, "--refine-size", 0, 4096, &o->refine_size)) return 2;
            o->has_rsize = 1;
            break;
        case O_RSTEPS:
            if (pf_cli_int(optarg, "--refine-steps", 1, 100, &o->refine_steps)) return 2;
            o->has_rsteps = 1;
            break;
        case O_RPROMPT: o->refine_prompt = optarg; break;
        case O_RNEG: o->refine_negative = optarg; break;
        case O_RGUIDANCE:
            if (pf_cli_number_in(optarg, "--refine-guidance", 0, 30, &o->refine_guidance)) return 2;
            o->has_rguidance = 1;
            break;
        case O_RSTRENGTH:
            if (pf_cli_number_in(optarg, "--refine-strength", 0, 1, &o->refine_strength)) return 2;
            o->has_rstrength = 1;
            break;
        case O_CNSCALE:
            if (pf_cli_number_in(optarg, "--controlnet-scale", -10, 10, &o->cn_scale)) return 2;
            o->has_cnscale = 1;
            break;
        case O_KEEP_BASE: o->keep_base = 1; break;
        case O_FP16: o->fp16 = 1; break;
        case O_NOT_HERE: {
            const char *name = opts[idx].name;
            if (!strcmp(name, "model") || !strcmp(name, "delta") || !strcmp(name, "controlnet") ||
                !strcmp(name, "lora") || !strcmp(name, "control-image") || !strcmp(name, "ip-adapter") ||
                !strcmp(name, "ip-image") || !strcmp(name, "image-encoder")) {
                char msg[160];
                int file = !strcmp(name, "lora") || !strcmp(name, "control-image") || !strcmp(name, "ip-adapter") ||
                           !strcmp(name, "ip-image");
                snprintf(msg, sizeof msg, "--%s names a local %s; the fleet fetches models: use --%s-url", name,
                         file ? "file" : "folder", name);
                return usage_error("%s", msg);
            }
            if (!strcmp(name, "out")) return usage_error("%s", "--out is for local runs: use --output URL-TEMPLATE");
            if (!strcmp(name, "grid")) return usage_error("%s", "--grid is for local runs: jobs upload each image");
            return usage_error("--%s is the workers' setting, not a job's", name);
        }
        case 'h': usage(stdout); return 0;
        default:
            return usage_error("unknown option or missing value '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc) return usage_error("unexpected argument '%s'", argv[optind]);
    if (!o->model_url) return usage_error("%s", "needs --model-url URL");
    if (!o->output) return usage_error("%s", "needs --output URL-TEMPLATE (s3://BUCKET/{job_id}-{index}.png, ...)");
    if (!o->prompt == !o->prompts) return usage_error("%s", "needs --prompt TEXT or --prompts FILE (one of them)");
    if (o->has_seed && o->seeds) return usage_error("%s", "--seed and --seeds: give one of them");
    /* as perflow generate: a --controlnet-url without a --control-image-url is the refiner's tile */
    int tiles = 0;
    for (int i = 0; i < o->n_nets; i++)
        if (!o->nets[i].image) {
            tiles++;
            o->cn_url = o->nets[i].net.url;
            o->cn_sha = o->nets[i].net.sha;
            o->has_tile_scale = o->nets[i].net.has_scale;
            o->cn_tile_scale = o->nets[i].net.scale;
        }
    if (tiles > 1) return usage_error("%s", "one --controlnet-url without a --control-image-url (the refiner's tile)");
    if (o->refine != (tiles == 1))
        return usage_error("%s", o->refine ? "--refine needs --controlnet-url URL (the ControlNet-Tile folder)"
                                           : "a --controlnet-url without --control-image-url is the refiner's tile: "
                                             "give --refine, or the net's --control-image-url");
    for (int i = 0; i < o->n_ips; i++)
        if (!o->ips[i].image)
            return usage_error("--ip-adapter-url %s needs its --ip-image-url after it", o->ips[i].adapter.url);
    if ((o->enc_url || o->enc_sha) && !o->n_ips)
        return usage_error("%s", "--image-encoder-url is for --ip-adapter-url");
    if (o->enc_sha && !o->enc_url) return usage_error("%s", "--image-encoder-sha256 pins an --image-encoder-url");
    if (o->n_ips && !o->enc_url) { /* as perflow generate: the model folder's image_encoder/ */
        size_t n = strlen(o->model_url);
        while (n && o->model_url[n - 1] == '/') n--;
        if (n >= 12 && !strncmp(o->model_url + n - 12, ".safetensors", 12))
            return usage_error("%s", "--ip-adapter-url with a single-file --model-url needs --image-encoder-url URL");
        snprintf(o->enc_default, sizeof o->enc_default, "%.*s/image_encoder", (int)n, o->model_url);
        o->enc_url = o->enc_default;
    }
    if (o->timeout && !o->wait) return usage_error("%s", "--timeout is for --wait");
    if (o->redis && o->no_redis) return usage_error("%s", "--redis and --no-redis: give one of them");
    if (o->prompts_format && strcmp(o->prompts_format, "jsonl") && strcmp(o->prompts_format, "csv"))
        return usage_error("--prompts-format must be jsonl or csv (got '%s')", o->prompts_format);
    if (o->batch_id) {
        char tmp[8];
        pf_error e;
        if (strlen(o->batch_id) > PF_JOB_BATCH_ID_MAX || pf_output_key(tmp, sizeof tmp, "x", o->batch_id, 0, 0, &e))
            return usage_error("--batch-id '%s' must be 1 to 64 of [A-Za-z0-9._-], not starting with '.'",
                               o->batch_id);
    }
    return -1; /* go on */
}

/* The connection settings: the workers' (file, environment), then the options. */
static int connection(pf_worker_config *cfg, const options *o, const char **jobs_topic, const char **redis,
                      char *topics_buf, size_t topics_n, pf_error *err) {
    pf_worker_config_defaults(cfg);
    const char *file = o->config ? o->config : getenv("PERFLOW_CONFIG");
    if ((file && *file && pf_worker_config_load_file(cfg, file, err)) || pf_worker_config_from_env(cfg, err))
        return -1;
    if (o->brokers && pf_worker_config_set(cfg, "brokers", o->brokers, err)) return pf_error_prefix(err, "--brokers");
    if (o->status_topic && pf_worker_config_set(cfg, "status_topic", o->status_topic, err))
        return pf_error_prefix(err, "--status-topic");
    const char *topics[PF_WORKER_MAX_TOPICS];
    int nt;
    if (pf_worker_config_topics(cfg, topics_buf, topics_n, topics, PF_WORKER_MAX_TOPICS, &nt, err)) return -1;
    *jobs_topic = o->topic ? o->topic : topics[0];
    /* Redis only when asked: a default address that happens to be empty must
     * not turn every submit into an error. */
    const char *env = getenv("PERFLOW_REDIS");
    *redis = o->no_redis ? NULL : o->redis ? o->redis : env && *env ? cfg->redis : NULL;
    return 0;
}

/* --dry-run: a warning when the workers' allow lists, as far as this host's
 * settings know them (file_output_root, s3_output_prefixes from --config or
 * the environment), would reject the output template. Placeholders are
 * expanded to "x" (job ids hold no '/', so this decides the folder). Nothing
 * is said when neither list is set here: the workers' own may differ. */
static void warn_output_outside(const pf_worker_config *cfg, const char *tmpl) {
    if (!cfg->file_output_root[0] && !cfg->s3_output_prefixes[0]) return;
    char dest[2048];
    size_t n = 0;
    for (const char *p = tmpl; *p && n + 2 < sizeof dest; p++) {
        const char *close = *p == '{' ? strchr(p, '}') : NULL;
        if (close) {
            dest[n++] = 'x';
            p = close;
        } else {
            dest[n++] = *p;
        }
    }
    dest[n] = '\0';
    pf_error e;
    if (pf_output_allowed(dest, cfg->file_output_root, cfg->s3_output_prefixes, &e))
        fprintf(stderr, "perflow: submit: warning: --output: %s; workers with these settings reject the jobs\n",
                e.msg);
}

int cmd_submit(int argc, char **argv) {
    batch b;
    memset(&b, 0, sizeof b);
    int rc = parse_options(&b.o, argc, argv);
    if (rc >= 0) return rc;
    const options *o = &b.o;
    pf_error err = {0};
    static pf_worker_config cfg;
    char topics_buf[1024];
    const char *jobs_topic = NULL, *redis_addr = NULL;
    pf_wredis *redis = NULL;
    pf_submit_kafka *k = NULL;
    char *data = NULL;
    uint64_t seed_lo = o->has_seed ? o->seed : 0, seed_hi = seed_lo;
    rc = 1;
    if (o->seeds && pf_seed_range_parse(o->seeds, &seed_lo, &seed_hi, &err)) {
        rc = usage_error("%s", err.msg);
        goto out;
    }
    if (connection(&cfg, o, &jobs_topic, &redis_addr, topics_buf, sizeof topics_buf, &err)) goto fail;
    if (o->prompts) {
        size_t len = 0;
        pf_prompts_format fmt = PF_PROMPTS_JSONL;
        if (o->prompts_format) fmt = !strcmp(o->prompts_format, "csv") ? PF_PROMPTS_CSV : PF_PROMPTS_JSONL;
        else if (pf_prompts_format_of(o->prompts, &fmt, &err)) goto fail;
        if (read_file(o->prompts, &data, &len, &err) || pf_prompts_parse(&b.rows, data, len, fmt, o->prompts, &err))
            goto fail;
        b.source = o->prompts;
    } else {
        b.rows.rows = PF_CALLOC(1, sizeof *b.rows.rows);
        b.rows.rows[0].prompt = PF_STRDUP(o->prompt);
        b.rows.n = b.rows.cap = 1;
    }
    if (o->batch_id) snprintf(b.batch_id, sizeof b.batch_id, "%s", o->batch_id);
    b.tmpl = template_job(o);
    if (o->shard_size) { /* a dataset: shard jobs written as WebDataset tars (submit_shards.h) */
        pf_shard_plan_in in = {&b.rows, o->negative, b.source, b.tmpl, seed_lo, seed_hi, o->shard_size, o->output,
                               o->batch_id, o->wait, o->dry_run, o->timeout, redis_addr};
        rc = pf_submit_shards(&in, &cfg, jobs_topic);
        goto out;
    }
    if (plan(&b, seed_lo, seed_hi, &err)) goto fail;
    if (o->dry_run) {
        warn_output_outside(&cfg, o->output);
        for (long j = 0; j < b.n; j++) {
            if (b.jobs[j].state == J_DUPLICATE) continue;
            char *s = job_json(&b, &b.jobs[j]);
            printf("%s\n", s);
            free(s);
        }
        rc = pf_cli_flush_stdout("submit");
        goto out;
    }

    long recorded = 0;
    if (redis_addr && (pf_wredis_open(&redis, redis_addr, cfg.job_prefix, 5000, &err) ||
                       redis_step(&b, redis, PF_BATCH_PREFIX, cfg.result_ttl_s, &recorded, &err)))
        goto fail;
    long to_send = b.unique - recorded;
    printf("batch %s: %ld job%s (%ld row%s%s%s), %ld already done, %ld to send to %s\n", b.batch_id, b.unique,
           b.unique == 1 ? "" : "s", b.rows.n, b.rows.n == 1 ? "" : "s", b.n > b.unique ? ", duplicates merged" : "",
           redis_addr ? "" : "; no Redis: finished jobs are answered by the workers", recorded, to_send, jobs_topic);
    fflush(stdout);
    progress p = {b.unique, 0, 0, 0, 0, 0, pf_now_ms(), 0, isatty(2), "", ""};
    for (long j = 0; j < b.n; j++)
        if (b.jobs[j].recorded) p.images += (long)json_array_size(json_object_get(b.jobs[j].final, "outputs"));
    if (to_send > 0) {
        if (pf_submit_kafka_open(&k, &cfg, jobs_topic, o->wait && to_send ? cfg.status_topic : NULL,
                                 CONNECT_TIMEOUT_MS, &err))
            goto fail;
        long long t_next = pf_now_ms();
        long nsent = 0;
        char model_id[PF_SHA256_HEX] = "";
        for (long j = 0; j < b.n; j++) {
            sjob *sj = &b.jobs[j];
            if (sj->state != J_NEW) continue;
            if (o->rate > 0) { /* the client-side rate limit: one job every 1/rate s */
                while (pf_now_ms() < t_next) pf_submit_kafka_poll(k, (int)(t_next - pf_now_ms()));
                t_next += (long long)(1000.0 / o->rate);
                if (t_next < pf_now_ms() - 1000) t_next = pf_now_ms(); /* no burst after a stall */
            }
            char *s = job_json(&b, sj);
            /* Warm-model routing (model_route.h): the batch has one model, its identity from the first job. */
            char key[PF_ROUTE_KEY_MAX];
            int partition = -1;
            if (!o->no_route) {
                if (!model_id[0]) {
                    pf_job pj;
                    PF_CHECK(!pf_job_parse(&pj, s, strlen(s), (char[PF_JOB_FIELD_MAX]){0}, PF_JOB_FIELD_MAX,
                                           &(pf_error){0})); /* plan() parsed every job already */
                    pf_route_model_id(model_id, &pj);
                    pf_job_free(&pj);
                }
                partition = pf_route_partition(key, model_id, nsent, (int)o->route_spread, pf_submit_kafka_partitions(k));
            }
            int bad = pf_submit_kafka_send(k, sj->id, b.batch_id, s, partition >= 0 ? key : NULL, partition, &err);
            nsent++;
            free(s);
            if (bad) goto fail;
            sj->state = J_SENT;
            pf_submit_kafka_poll(k, 0);
        }
        if (pf_submit_kafka_flush(k, &err)) goto fail;
        printf("sent %ld job%s\n", pf_submit_kafka_delivered(k), pf_submit_kafka_delivered(k) == 1 ? "" : "s");
        fflush(stdout);
    }
    int waited_ok = 1;
    if (o->wait) {
        p.t0 = pf_now_ms();
        p.images = 0; /* images/s counts this run's images */
        waited_ok = to_send ? !follow(&b, k, &p, to_send) : 1;
        count(&b, &p);
        long n[9] = {0};
        for (long j = 0; j < b.n; j++) n[b.jobs[j].state]++;
        double secs = (double)(pf_now_ms() - p.t0) / 1000.0;
        printf("batch %s: %ld succeeded, %ld failed, %ld rejected, %ld cancelled, %ld unfinished; %ld new image%s in "
               "%.1f s (%.2f images/s)%s\n",
               b.batch_id, n[J_SUCCEEDED], n[J_FAILED], n[J_REJECTED], n[J_CANCELLED],
               n[J_SENT] + n[J_RUNNING] + n[J_RETRYING], p.images, p.images == 1 ? "" : "s", secs,
               secs > 0 ? (double)p.images / secs : 0.0, p.replayed ? "; some were done before (answered from the "
                                                                      "workers' records)" : "");
        for (long j = 0, shown = 0; j < b.n && shown < 10; j++) {
            const sjob *sj = &b.jobs[j];
            json_t *e = json_object_get(sj->final, "error");
            if (sj->state == J_SUCCEEDED || !json_is_object(e)) continue;
            const char *msg = json_string_value(json_object_get(e, "message"));
            const char *field = json_string_value(json_object_get(e, "field"));
            printf("  %s: %s: %s%s%s%s\n", sj->id, state_names[sj->state], msg ? msg : "", field ? " (field " : "",
                   field ? field : "", field ? ")" : "");
            shown++;
        }
        fflush(stdout);
        waited_ok = waited_ok && n[J_SUCCEEDED] == b.unique;
    }
    if (o->manifest && write_manifest(&b, o->manifest, &err)) goto fail;
    rc = waited_ok ? pf_cli_flush_stdout("submit") : 1;
    goto out;
fail:
    rc = pf_cli_fail("submit", &err, 0);
out:
    pf_submit_kafka_close(k, 5000);
    pf_wredis_close(redis);
    for (long j = 0; j < b.n; j++) json_decref(b.jobs[j].final);
    free(b.jobs);
    free(b.slots);
    json_decref(b.tmpl);
    pf_prompts_free(&b.rows);
    free(data);
    return rc;
}
