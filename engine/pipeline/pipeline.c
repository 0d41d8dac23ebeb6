/* pipeline.c - StableDiffusionPipeline.__call__ with the PeRFlow sampler.
 * The comments name the diffusers step each block mirrors
 * (diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py). */
#include "pipeline.h"

#include <string.h>

#include "checkpoint.h"
#include "clip.h"
#include "clip_vision.h"
#include "controlnet.h"
#include "ip_adapter.h"
#include "resize.h"
#include "rng.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"

#define TOKENS 77 /* tokenizer.model_max_length of every SD-1.x/2.x tokenizer */

struct pf_pipeline {
    pf_backend *be;
    pf_family family;
    int force_zeros;                 /* SDXL's force_zeros_for_empty_prompt (model_index.json) */
    pf_tokenizer *tok, *tok2;        /* tok2, text_encoder2: SDXL's second (OpenCLIP bigG) */
    pf_clip_text_model *text_encoder, *text_encoder2;
    pf_unet *unet;
    pf_vae *vae;
    pf_backend *vae_be;              /* owned: the VAE's float32 backend beside a float16 model, or NULL */
    pf_controlnet *nets[PF_MAX_CONTROLS]; /* attached ControlNets (pf_pipeline_set_controlnets) */
    int n_nets;
    pf_clip_vision *image_encoder;   /* IP-Adapter's, with the adapters (pf_pipeline_set_ip_adapters) */
    pf_ip_adapter *ips[PF_MAX_IP_ADAPTERS];
    int n_ips;
    pf_perflow_config sched;   /* from scheduler/scheduler_config.json */
};

void pf_txt2img_defaults(pf_txt2img_params *p) {
    memset(p, 0, sizeof *p);
    p->prompt = "";
    p->width = p->height = 512;
    p->steps = 4;
    p->guidance = 4.5f;
    p->num_images = 1;
}

void pf_pipeline_free(pf_pipeline *p) {
    if (!p) return;
    pf_tokenizer_free(p->tok);
    pf_tokenizer_free(p->tok2);
    pf_clip_text_model_free(p->text_encoder);
    pf_clip_text_model_free(p->text_encoder2);
    pf_unet_free(p->unet);
    pf_vae_free(p->vae);
    if (p->vae_be) pf_backend_free(p->vae_be);
    for (int i = 0; i < p->n_nets; i++) pf_controlnet_free(p->nets[i]);
    for (int i = 0; i < p->n_ips; i++) pf_ip_adapter_free(p->ips[i]);
    pf_clip_vision_free(p->image_encoder);
    free(p);
}

int pf_pipeline_load_model(pf_pipeline **out, pf_backend *be, const pf_model_spec *spec, pf_error *err) {
    *out = NULL;
    pf_model_parts parts;
    if (pf_model_load(&parts, be, spec, err)) return -1;
    pf_pipeline *p = PF_CALLOC(1, sizeof *p);
    p->be = be;
    p->family = parts.sdxl ? PF_FAMILY_SDXL : PF_FAMILY_SD;
    p->force_zeros = parts.force_zeros;
    p->tok = parts.tok;
    p->tok2 = parts.tok2;
    p->text_encoder = parts.text_encoder;
    p->text_encoder2 = parts.text_encoder2;
    p->unet = parts.unet;
    p->vae = parts.vae;
    p->vae_be = parts.vae_be;
    p->sched = parts.sched;
    *out = p;
    return 0;
}

int pf_pipeline_load(pf_pipeline **out, pf_backend *be, const char *model_dir, const char *delta, pf_error *err) {
    pf_model_spec spec = {.model = model_dir, .delta = delta};
    return pf_pipeline_load_model(out, be, &spec, err);
}

pf_family pf_pipeline_family(const pf_pipeline *p) { return p->family; }

const pf_vae *pf_pipeline_vae(const pf_pipeline *p) { return p->vae; }

const char *pf_family_name(pf_family f) { return f == PF_FAMILY_SDXL ? "sdxl" : "sd"; }

void pf_pipeline_defaults(const pf_pipeline *p, const char **prediction_type, int *windows, int *side) {
    if (prediction_type) *prediction_type = pf_perflow_prediction_name(p->sched.prediction_type);
    if (windows) *windows = p->sched.num_time_windows;
    if (side) *side = p->family == PF_FAMILY_SDXL ? 1024 : 512;
}

/* The sampler configuration one run uses: the model's, with the job's overrides. */
static int run_config(const pf_pipeline *p, const pf_txt2img_params *prm, pf_perflow_config *cfg, pf_error *err) {
    *cfg = p->sched;
    if (prm->prediction_type && pf_perflow_parse_prediction(&cfg->prediction_type, prm->prediction_type, err))
        return -1;
    if (prm->windows) cfg->num_time_windows = prm->windows;
    return pf_perflow_config_check(cfg, err);
}

/* The controls shared by every job of a batch agree in net and scale (the
 * residuals are scaled per net); their images may differ. */
static int controls_agree(const pf_control *a, int na, const pf_control *b, int nb) {
    if (na != nb) return 0;
    for (int c = 0; c < na; c++)
        if (a[c].net != b[c].net || a[c].scale != b[c].scale || !a[c].image != !b[c].image) return 0;
    return 1;
}

/* Checks a run's controls: nets within the attached ones (when attached_ok),
 * images present (unless may_be_null) and of a sane size, scales in [-10, 10]. */
static int controls_check(const pf_pipeline *p, const pf_control *ctl, int n, int may_be_null, int attached,
                          pf_error *err) {
    if (n < 0 || n > PF_MAX_CONTROLS) return pf_fail(err, "%d ControlNets (at most %d)", n, PF_MAX_CONTROLS);
    for (int c = 0; c < n; c++) {
        if (ctl[c].net < 0 || ctl[c].net >= PF_MAX_CONTROLS || (attached && ctl[c].net >= p->n_nets))
            return pf_fail(err, "control %d names ControlNet %d, but %d are attached", c, ctl[c].net, p->n_nets);
        if (!ctl[c].image && !may_be_null) return pf_fail(err, "control %d has no condition image", c);
        if (ctl[c].image && (ctl[c].image_width < 1 || ctl[c].image_height < 1 || ctl[c].image_width > 16384 ||
                             ctl[c].image_height > 16384))
            return pf_fail(err, "control %d: condition image of %d x %d pixels", c, ctl[c].image_width,
                           ctl[c].image_height);
        if (!(ctl[c].scale >= -10.0f && ctl[c].scale <= 10.0f))
            return pf_fail(err, "control %d: controlnet scale must be in [-10, 10] (got %g)", c, (double)ctl[c].scale);
    }
    return 0;
}

int pf_txt2img_check(const pf_pipeline *p, const pf_txt2img_params *prm, pf_error *err) {
    int f = pf_vae_scale_factor(p->vae);
    if (!prm->prompt) return pf_fail(err, "prompt is missing");
    if (prm->width < 8 || prm->height < 8 || prm->width % 8 || prm->height % 8)
        return pf_fail(err, "width and height must be positive multiples of 8 (got %d x %d)", prm->width,
                       prm->height);
    if (prm->width > 4096 || prm->height > 4096)
        return pf_fail(err, "width and height must be at most 4096 (got %d x %d)", prm->width, prm->height);
    if (prm->width % f || prm->height % f)
        return pf_fail(err, "width and height must be multiples of the VAE's scale factor %d", f);
    if (prm->steps < 1 || prm->steps > 1000) return pf_fail(err, "steps must be in [1, 1000] (got %d)", prm->steps);
    if (prm->num_images < 1 || prm->num_images > 64)
        return pf_fail(err, "num_images must be in [1, 64] (got %d)", prm->num_images);
    if (!(prm->guidance >= 0.0f && prm->guidance <= 100.0f))
        return pf_fail(err, "guidance must be in [0, 100] (got %g)", (double)prm->guidance);
    if (prm->windows < 0 || prm->windows > 1000) return pf_fail(err, "windows must be in [1, 1000]");
    if (prm->clip_skip < 0 || prm->clip_skip >= pf_clip_text_model_config(p->text_encoder)->num_hidden_layers)
        return pf_fail(err, "clip_skip must be in [0, %d)", pf_clip_text_model_config(p->text_encoder)->num_hidden_layers);
    if (controls_check(p, prm->controls, prm->n_controls, 0, 1, err)) return -1;
    if (prm->n_ip && prm->n_ip != p->n_ips)
        return pf_fail(err, "%d image prompts for %d attached IP-Adapters (one image each)", prm->n_ip, p->n_ips);
    for (int i = 0; i < prm->n_ip; i++) {
        const pf_ip_image *q = &prm->ip_images[i];
        if (q->adapter != i) return pf_fail(err, "image prompt %d names adapter %d (one per adapter, in order)", i, q->adapter);
        if (!q->image || q->image_width < 1 || q->image_height < 1)
            return pf_fail(err, "image prompt %d has no image", i);
        if (!(q->scale == q->scale) || q->scale < -100.0f || q->scale > 100.0f)
            return pf_fail(err, "image prompt %d: scale %g outside [-100, 100]", i, (double)q->scale);
    }
    for (int k = 0; k < 2; k++) /* SDXL's time ids: sizes positive when given, crops not negative */
        if (prm->original_size[k] < 0 || prm->original_size[k] > 16384 || prm->target_size[k] < 0 ||
            prm->target_size[k] > 16384 || prm->crop_coords[k] < 0 || prm->crop_coords[k] > 16384)
            return pf_fail(err, "original size, target size and crop coordinates must be in [0, 16384] (0 for a "
                                "size: the image's)");
    if (p->family != PF_FAMILY_SDXL && (prm->prompt_2 || prm->negative_prompt_2 || prm->original_size[0] ||
                                        prm->original_size[1] || prm->crop_coords[0] || prm->crop_coords[1] ||
                                        prm->target_size[0] || prm->target_size[1]))
        return pf_fail(err, "prompt_2, negative_prompt_2 and the size conditions are for SDXL models only");
    pf_perflow_config cfg;
    return run_config(p, prm, &cfg, err);
}

/* encode_prompt for one text: (1, 77, D) embeddings, repeated n times into
 * rows [row, row + n) of ctx (B, 77, D), as prompt_embeds.repeat(1, n, 1). */
static int encode_into(pf_pipeline *p, pf_tensor *ctx, int row, int n, const char *text, int clip_skip,
                       pf_error *err) {
    int32_t ids[TOKENS];
    if (pf_tokenizer_encode(p->tok, text, ids, TOKENS, err)) return -1;
    pf_tensor *first = pf_slice0(ctx, row, 1);                         /* (1, 77, D) */
    int rc = pf_clip_text_model_forward(p->text_encoder, first, ids, 1, TOKENS, clip_skip, err);
    for (int i = 1; rc == 0 && i < n; i++) {
        pf_tensor *dst = pf_slice0(ctx, row + i, 1);                   /* (1, 77, D) */
        pf_copy(dst, first);
        pf_free(dst);
    }
    pf_free(first);
    return rc;
}

/* Uploads zeros into t (force_zeros_for_empty_prompt's embeddings). */
static void zero_fill(pf_tensor *t) {
    float *z = PF_CALLOC((size_t)pf_numel(t), sizeof *z);
    pf_upload(t, z);
    free(z);
}

/* Copies rows [row, row + 1) of t into the n - 1 rows after it. */
static void repeat_row(pf_tensor *t, int row, int n) {
    pf_tensor *first = pf_slice0(t, row, 1);
    for (int i = 1; i < n; i++) {
        pf_tensor *dst = pf_slice0(t, row + i, 1);
        pf_copy(dst, first);
        pf_free(dst);
    }
    pf_free(first);
}

/* SDXL's encode_prompt for one prompt pair (text for the first tokenizer and
 * encoder, text2 for the second): cat(hidden_states[-(2 + skip)] of both),
 * (1, 77, D1 + D2), and the second encoder's projected pooled output (1, P),
 * each repeated n times into rows [row, row + n) of ctx and pooled. zeros:
 * force_zeros_for_empty_prompt's zero rows instead. */
static int encode_sdxl_into(pf_pipeline *p, pf_tensor *ctx, pf_tensor *pooled, int row, int n, const char *text,
                            const char *text2, int skip, int zeros, pf_error *err) {
    const int D1 = pf_clip_text_model_config(p->text_encoder)->hidden_size;
    const int D2 = pf_clip_text_model_config(p->text_encoder2)->hidden_size;
    pf_tensor *c0 = pf_slice0(ctx, row, 1), *p0 = pf_slice0(pooled, row, 1); /* (1, 77, D1 + D2), (1, P) */
    int rc = 0;
    if (zeros) {
        zero_fill(c0);
        zero_fill(p0);
    } else {
        int32_t ids1[TOKENS], ids2[TOKENS];
        pf_tensor *h1 = pf_new3(p->be, 1, TOKENS, D1), *h2 = pf_new3(p->be, 1, TOKENS, D2);
        rc = pf_tokenizer_encode(p->tok, text, ids1, TOKENS, err) ||
             pf_tokenizer_encode(p->tok2, text2, ids2, TOKENS, err) ||
             pf_clip_text_model_encode(p->text_encoder, ids1, 1, TOKENS,
                                       pf_clip_text_model_config(p->text_encoder)->num_hidden_layers - 1 - skip, 0,
                                       h1, NULL, err) ||
             pf_clip_text_model_encode(p->text_encoder2, ids2, 1, TOKENS,
                                       pf_clip_text_model_config(p->text_encoder2)->num_hidden_layers - 1 - skip, 0,
                                       h2, p0, err)
                 ? -1
                 : 0;
        if (rc == 0) pf_concat(c0, h1, h2, 2);
        pf_free(h1);
        pf_free(h2);
    }
    pf_free(c0);
    pf_free(p0);
    if (rc == 0) {
        repeat_row(ctx, row, n);
        repeat_row(pooled, row, n);
    }
    return rc;
}

/* The prompts of a text, SDXL's `prompt_2 or prompt`. */
static const char *or_else(const char *a, const char *b) { return a && *a ? a : b; }

/* SDXL's time ids of a job: original size, crop top-left, target size, (h, w) each. */
static void time_ids_of(const pf_txt2img_params *q, float ids[6]) {
    ids[0] = (float)(q->original_size[0] ? q->original_size[0] : q->height);
    ids[1] = (float)(q->original_size[1] ? q->original_size[1] : q->width);
    ids[2] = (float)q->crop_coords[0];
    ids[3] = (float)q->crop_coords[1];
    ids[4] = (float)(q->target_size[0] ? q->target_size[0] : q->height);
    ids[5] = (float)(q->target_size[1] ? q->target_size[1] : q->width);
}

int pf_txt2img_batchable(const pf_pipeline *p, const pf_txt2img_params *a, const pf_txt2img_params *b) {
    pf_perflow_config ca, cb;
    pf_error e;
    if (run_config(p, a, &ca, &e) || run_config(p, b, &cb, &e)) return 0;
    return a->width == b->width && a->height == b->height && a->steps == b->steps && a->guidance == b->guidance &&
           a->clip_skip == b->clip_skip && ca.prediction_type == cb.prediction_type &&
           ca.num_time_windows == cb.num_time_windows && a->vae_tiling == b->vae_tiling &&
           controls_agree(a->controls, a->n_controls, b->controls, b->n_controls) &&
           (a == b || (!a->n_ip && !b->n_ip)); /* image prompts run alone */
}

int pf_pipeline_txt2img(pf_pipeline *p, const pf_txt2img_params *prm, float *images, pf_error *err) {
    return pf_pipeline_txt2img_batch(p, &prm, 1, images, err);
}

/* ---- the pieces both pipelines share ---- */

/* One run of the denoising loop: the UNet batch is [uncond rows, cond rows] of B
 * images each with guidance on (BB = 2B rows), else the B cond rows. */
typedef struct denoise_run {
    pf_tensor *ctx;                  /* (BB, 77, D) prompt_embeds, uncond rows first */
    int n_ctrl;                      /* ControlNets (MultiControlNetModel: residuals summed) */
    pf_controlnet *nets[PF_MAX_CONTROLS];
    pf_tensor *conds[PF_MAX_CONTROLS]; /* (BB, 3, H, W) each net's condition in [0, 1] */
    float scales[PF_MAX_CONTROLS];   /* controlnet_conditioning_scale of each */
    pf_tensor *pooled;               /* SDXL: (BB, P) add_text_embeds, or NULL */
    float *time_ids;                 /* SDXL: BB x 6 add_time_ids (host) */
    pf_unet_ip ip[PF_MAX_IP_ADAPTERS]; /* image prompts: tokens (BB, N, X) owned by the run */
    int n_ip;
    float *latents;                  /* (B, C, h, w) host, updated in place */
    int B, C, h, w;
    int cfg_on;
    float guidance;
    const pf_perflow_sampler *sampler;
    int first;                       /* index of the first timestep to run (img2img), else 0 */
    void (*progress)(void *user, int step, int total);
    int (*cancelled)(void *user);
    void *user;
} denoise_run;

/* The fields of a run besides its ControlNets. */
static void fill_run(denoise_run *r, pf_tensor *ctx, float *latents, int B, int C, int h, int w, int cfg_on,
                     float guidance, const pf_perflow_sampler *sampler, int first,
                     void (*progress)(void *, int, int), int (*cancelled)(void *), void *user) {
    r->ctx = ctx;
    r->latents = latents;
    r->B = B, r->C = C, r->h = h, r->w = w;
    r->cfg_on = cfg_on;
    r->guidance = guidance;
    r->sampler = sampler;
    r->first = first;
    r->progress = progress;
    r->cancelled = cancelled;
    r->user = user;
}

/* MultiControlNetModel.forward: each net's residuals on its condition at its
 * scale, summed in net order (previous + current, as diffusers adds them) into
 * down[nres] and *mid (new tensors the caller frees). Returns 0 or -1 with err
 * set and nothing allocated. */
static int control_residuals(const denoise_run *r, pf_tensor **down, pf_tensor **mid, const pf_tensor *x,
                             const float *times, pf_error *err) {
    const int nres = pf_controlnet_num_residuals(r->nets[0]);
    pf_tensor *d[64], *m;
    PF_CHECK(nres <= 64);
    pf_unet_added added = {r->pooled, r->time_ids, NULL, 0}; /* SDXL's, as the UNet's (guess mode off) */
    for (int c = 0; c < r->n_ctrl; c++) {
        if (pf_controlnet_forward(r->nets[c], c ? d : down, c ? &m : mid, x, times, r->ctx,
                                  r->pooled ? &added : NULL, r->conds[c], r->scales[c], err)) {
            for (int k = 0; c && k < nres; k++) pf_free(down[k]);
            if (c) pf_free(*mid);
            return -1;
        }
        if (!c) continue;
        for (int k = 0; k < nres; k++) {
            pf_add(down[k], down[k], d[k]);
            pf_free(d[k]);
        }
        pf_add(*mid, *mid, m);
        pf_free(m);
    }
    return 0;
}

/* The loop of both pipelines: per timestep the UNet (with the ControlNets'
 * residuals when there are any), the guidance combine in float32 and the
 * sampler step. Returns 0, -1 with err set, or PF_CANCELLED. */
static int denoise(pf_pipeline *p, const denoise_run *r, pf_error *err) {
    pf_backend *be = p->be;
    const int B = r->B, BB = r->cfg_on ? 2 * B : B, total = r->sampler->num_steps - r->first;
    const size_t n = (size_t)B * r->C * r->h * r->w; /* latent elements of the batch */
    const int nres = r->n_ctrl ? pf_controlnet_num_residuals(r->nets[0]) : 0;
    float *eps = PF_MALLOC((size_t)(r->cfg_on ? 2 : 1) * n * sizeof *eps);
    float *times = PF_MALLOC((size_t)BB * sizeof *times);
    pf_tensor **down = nres ? PF_CALLOC((size_t)nres, sizeof *down) : NULL, *mid = NULL;
    pf_tensor *x = pf_new4(be, BB, r->C, r->h, r->w);                  /* (BB, C, h, w) UNet input */
    pf_tensor *noise = pf_new4(be, BB, r->C, r->h, r->w);              /* (BB, C, h, w) UNet output */
    int rc = 0;
    for (int i = r->first; i < r->sampler->num_steps; i++) {
        if (r->cancelled && r->cancelled(r->user)) {
            rc = PF_CANCELLED;
            pf_fail(err, "cancelled before step %d of %d", i - r->first + 1, total);
            break;
        }
        int64_t t = r->sampler->timesteps[i];
        for (int b = 0; b < BB; b++) times[b] = (float)t;
        pf_tensor *xs = pf_slice0(x, 0, B);                            /* torch.cat([latents] * 2) */
        pf_upload(xs, r->latents);
        pf_free(xs);
        if (r->cfg_on) {
            xs = pf_slice0(x, B, B);
            pf_upload(xs, r->latents);
            pf_free(xs);
        }
        if (r->n_ctrl && control_residuals(r, down, &mid, x, times, err)) {
            rc = -1;
            break;
        }
        pf_unet_added added = {r->pooled, r->time_ids, r->ip, r->n_ip};
        rc = pf_unet_forward_added(p->unet, noise, x, times, r->ctx, r->pooled || r->n_ip ? &added : NULL,
                                   (const pf_tensor *const *)(nres ? down : NULL), mid, err);
        for (int k = 0; k < nres; k++) {
            pf_free(down[k]);
            down[k] = NULL;
        }
        pf_free(mid);
        mid = NULL;
        if (rc) break;
        pf_to_host(eps, noise);
        if (r->cfg_on) { /* noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond), float32 */
            const float g = r->guidance;
            for (size_t k = 0; k < n; k++) eps[k] = eps[k] + g * (eps[n + k] - eps[k]);
        }
        pf_perflow_step(r->sampler, r->latents, eps, t, r->latents, n);
        if (r->progress) r->progress(r->user, i - r->first + 1, total);
    }
    free(eps);
    free(times);
    free(down);
    pf_free(x);
    pf_free(noise);
    return rc;
}

/* A condition image as diffusers' control image processor prepares it: resized
 * to W x H with Pillow's Lanczos (a copy when it has that size), v / 255 in
 * float32, planar; written n times into dst (n, 3, H, W). */
static int condition_image(float *dst, const uint8_t *rgb, int iw, int ih, int W, int H, int n, pf_error *err) {
    const size_t px = (size_t)W * H;
    uint8_t *sized = NULL;
    if (iw != W || ih != H) {
        sized = PF_MALLOC(px * 3);
        if (pf_resize_lanczos(sized, W, H, rgb, iw, ih, err)) {
            free(sized);
            return -1;
        }
        rgb = sized;
    }
    for (size_t k = 0; k < px; k++)
        for (int c = 0; c < 3; c++) dst[(size_t)c * px + k] = (float)rgb[k * 3 + c] / 255.0f;
    for (int i = 1; i < n; i++) memcpy(dst + (size_t)i * 3 * px, dst, 3 * px * sizeof *dst);
    free(sized);
    return 0;
}

/* Uploads host conditions (B, 3, H, W) into a new (BB, 3, H, W) tensor: the
 * rows twice when guidance is on (torch.cat([image] * 2)). */
static pf_tensor *condition_tensor(pf_backend *be, const float *host, int B, int cfg_on, int H, int W) {
    pf_tensor *t = pf_new4(be, cfg_on ? 2 * B : B, 3, H, W);          /* (BB, 3, H, W) */
    for (int half = 0; half < (cfg_on ? 2 : 1); half++) {
        pf_tensor *rows = pf_slice0(t, half * B, B);
        pf_upload(rows, host);
        pf_free(rows);
    }
    return t;
}


/* vae.decode(latents / scaling_factor) (pf_vae_decode divides), then
 * image_processor.postprocess: (image / 2 + 0.5).clamp(0, 1), NCHW -> NHWC into
 * images (B, H, W, 3). latents: (B, C, h, w) on the host. */
static int decode_images(pf_pipeline *p, float *images, const float *latents, int B, int C, int h, int w,
                         pf_vae_tiling tiling, pf_error *err) {
    pf_backend *be = pf_vae_backend(p->vae);
    const int f = pf_vae_scale_factor(p->vae), H = h * f, W = w * f;
    pf_tensor *lat = pf_from_host(be, 4, (int64_t[]){B, C, h, w}, latents); /* (B, C, h, w) */
    pf_tensor *img = pf_new4(be, B, 3, H, W);                               /* (B, 3, H, W) */
    int rc = pf_vae_decode(p->vae, img, lat, tiling, err);
    if (rc == 0) {
        const size_t hw = (size_t)H * W;
        float *chw = PF_MALLOC(hw * 3 * sizeof *chw);
        for (int b = 0; b < B; b++) {
            pf_tensor *one = pf_slice0(img, b, 1);
            pf_to_host(chw, one);
            pf_free(one);
            float *dst = images + (size_t)b * hw * 3;
            for (size_t px = 0; px < hw; px++)
                for (int c = 0; c < 3; c++) {
                    float v = chw[c * hw + px] / 2.0f + 0.5f;
                    dst[px * 3 + c] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
                }
        }
        free(chw);
        rc = pf_backend_ok(be, err) ? -1 : 0;
    }
    pf_free(lat);
    pf_free(img);
    return rc;
}

/* ---- text to image ---- */

/* Batch layout. Job j owns the num_images images after those of jobs 0..j-1,
 * B in all; the UNet runs on BB = 2B rows, [uncond(0..B), cond(0..B)] as
 * diffusers stacks them, or on B rows without guidance. Everything per image
 * (the latents, the combine, the sampler step, the decode) is elementwise or
 * per sample, so stacking jobs changes no job's numbers. */
/* encode_image for one adapter's image, rows as the UNet batch takes them: the
 * B conditional rows after the B unconditional ones when guidance is on.
 * Plain: image_embeds (BB, E), zeros unconditional. Plus: hidden_states[-2]
 * (BB, L, D), the unconditional rows the encoder's of zero pixel_values (a new
 * tensor; NULL with err set). */
static pf_tensor *ip_image_embeds(pf_pipeline *p, const pf_ip_adapter *a, const pf_ip_image *q, int B, int cfg_on,
                                  pf_error *err) {
    const pf_clip_vision_config *vc = pf_clip_vision_get_config(p->image_encoder);
    const int BB = cfg_on ? 2 * B : B, S = vc->image_size;
    const size_t row = a->plus ? (size_t)((S / vc->patch_size) * (S / vc->patch_size) + 1) * vc->hidden_size
                               : (size_t)a->embed_dim;
    float *host = PF_CALLOC((size_t)BB * row, sizeof *host), *cond = host + (size_t)(cfg_on ? B : 0) * row;
    float *pix = PF_CALLOC((size_t)3 * S * S, sizeof *pix);
    int rc;
    if (a->plus) {
        const int layers = vc->num_hidden_layers - 1;
        rc = pf_clip_image_preprocess(pix, pf_clip_vision_image_config(p->image_encoder), q->image, q->image_width,
                                      q->image_height, err) ||
             pf_clip_vision_encode(p->image_encoder, pix, layers, cond, NULL, err);
        if (!rc && cfg_on) { /* image_encoder(torch.zeros_like(image)) */
            memset(pix, 0, (size_t)3 * S * S * sizeof *pix);
            rc = pf_clip_vision_encode(p->image_encoder, pix, layers, host, NULL, err);
            for (int b = 1; !rc && b < B; b++) memcpy(host + (size_t)b * row, host, row * sizeof *host);
        }
    } else {
        rc = pf_clip_vision_embed(p->image_encoder, cond, q->image, q->image_width, q->image_height, err);
    }
    for (int b = 1; !rc && b < B; b++) memcpy(cond + (size_t)b * row, cond, row * sizeof *host);
    free(pix);
    pf_tensor *t = NULL;
    if (!rc) {
        const int64_t L = (int64_t)(row / (size_t)(a->plus ? vc->hidden_size : a->embed_dim));
        t = a->plus ? pf_from_host(p->be, 3, (int64_t[]){BB, L, vc->hidden_size}, host)
                    : pf_from_host(p->be, 2, (int64_t[]){BB, a->embed_dim}, host);
    }
    free(host);
    return t;
}

int pf_pipeline_txt2img_batch(pf_pipeline *p, const pf_txt2img_params *const *jobs, int njobs, float *images,
                              pf_error *err) {
    PF_CHECK(njobs >= 1);
    const pf_txt2img_params *prm = jobs[0]; /* the settings every job shares, and the callbacks */
    int B = 0;
    for (int j = 0; j < njobs; j++) {
        if (pf_txt2img_check(p, jobs[j], err)) return njobs > 1 ? pf_error_prefix(err, "batch job %d", j) : -1;
        if (!pf_txt2img_batchable(p, prm, jobs[j]))
            return pf_fail(err, "batch job %d differs from job 0 in size, steps, guidance, clip_skip, "
                                "prediction type or windows", j);
        B += jobs[j]->num_images;
    }
    pf_backend *be = p->be;
    const pf_unet_config *uc = pf_unet_get_config(p->unet);
    const int f = pf_vae_scale_factor(p->vae);
    const int C = uc->in_channels, h = prm->height / f, w = prm->width / f;
    const int sdxl = p->family == PF_FAMILY_SDXL;
    const int D = pf_clip_text_model_config(p->text_encoder)->hidden_size +
                  (sdxl ? pf_clip_text_model_config(p->text_encoder2)->hidden_size : 0);
    const int cfg_on = prm->guidance > 1.0f; /* do_classifier_free_guidance */
    const int BB = cfg_on ? 2 * B : B;       /* UNet batch: [uncond, cond] stacked */
    const size_t per = (size_t)C * h * w;    /* latent elements of one image */
    int rc = -1;

    pf_perflow_config scfg;
    pf_perflow_sampler sampler;
    memset(&sampler, 0, sizeof sampler);
    denoise_run r; /* filled once the inputs are ready; conds freed at the end */
    memset(&r, 0, sizeof r);
    float *latents = NULL;
    pf_tensor *ctx = NULL;
    if (run_config(p, prm, &scfg, err) || pf_perflow_init(&sampler, &scfg, err) ||
        pf_perflow_set_timesteps(&sampler, prm->steps, err))
        goto done;

    /* 3. encode_prompt per job: negative (uncond) rows first, then the prompts'.
     * SDXL also: pooled embeddings and the time ids (_get_add_time_ids), one row each. */
    ctx = pf_new3(be, BB, TOKENS, D);                                  /* (BB, 77, D) */
    if (sdxl) {
        r.pooled = pf_new2(be, BB, pf_clip_text_model_config(p->text_encoder2)->projection_dim); /* (BB, P) */
        r.time_ids = PF_MALLOC((size_t)BB * 6 * sizeof *r.time_ids);
    }
    latents = PF_MALLOC((size_t)B * per * sizeof *latents);
    for (int j = 0, row = 0; j < njobs; row += jobs[j]->num_images, j++) {
        const pf_txt2img_params *q = jobs[j];
        const int cond_row = (cfg_on ? B : 0) + row;
        if (sdxl) {
            const char *neg = q->negative_prompt ? q->negative_prompt : "";
            /* diffusers encodes the negative prompts at hidden_states[-2] whatever clip_skip says */
            if ((cfg_on && encode_sdxl_into(p, ctx, r.pooled, row, q->num_images, neg,
                                            or_else(q->negative_prompt_2, neg), 0,
                                            !q->negative_prompt && p->force_zeros, err)) ||
                encode_sdxl_into(p, ctx, r.pooled, cond_row, q->num_images, q->prompt, or_else(q->prompt_2, q->prompt),
                                 q->clip_skip, 0, err))
                goto done;
            float ids[6];
            time_ids_of(q, ids);
            for (int i = 0; i < q->num_images; i++) {
                memcpy(r.time_ids + (size_t)(cond_row + i) * 6, ids, sizeof ids);
                if (cfg_on) memcpy(r.time_ids + (size_t)(row + i) * 6, ids, sizeof ids);
            }
        } else {
            if (cfg_on && encode_into(p, ctx, row, q->num_images, q->negative_prompt ? q->negative_prompt : "",
                                      q->clip_skip, err))
                goto done;
            if (encode_into(p, ctx, cond_row, q->num_images, q->prompt, q->clip_skip, err)) goto done;
        }
        /* 5. prepare_latents: randn((num_images, C, h, w), generator) * init_noise_sigma
         * (1.0), one generator per job as diffusers takes a list of generators. */
        pf_rng rng;
        pf_rng_seed(&rng, q->seed);
        pf_rng_randn(&rng, latents + (size_t)row * per, (size_t)q->num_images * per);
    }

    /* prepare_image per ControlNet: each job's condition for each of its images */
    fill_run(&r, ctx, latents, B, C, h, w, cfg_on, prm->guidance, &sampler, 0, prm->progress, prm->cancelled, prm->user);
    r.n_ctrl = prm->n_controls;
    if (prm->n_controls) {
        const size_t px = (size_t)prm->width * prm->height;
        float *host = PF_MALLOC((size_t)B * 3 * px * sizeof *host);
        for (int c = 0; c < prm->n_controls; c++) {
            r.nets[c] = p->nets[prm->controls[c].net];
            r.scales[c] = prm->controls[c].scale;
            for (int j = 0, row = 0; j < njobs; row += jobs[j]->num_images, j++) {
                const pf_control *q = &jobs[j]->controls[c];
                if (condition_image(host + (size_t)row * 3 * px, q->image, q->image_width, q->image_height,
                                    prm->width, prm->height, jobs[j]->num_images, err)) {
                    free(host);
                    goto done;
                }
            }
            r.conds[c] = condition_tensor(be, host, B, cfg_on, prm->height, prm->width);
        }
        free(host);
    }

    /* prepare_ip_adapter_image_embeds: each adapter's image_embeds for every
     * image, zeros for the unconditional rows; encoder_hid_proj makes the tokens */
    for (int i = 0; i < prm->n_ip; i++) {
        const pf_ip_adapter *a = p->ips[i];
        const pf_ip_image *q = &prm->ip_images[i];
        pf_tensor *emb = ip_image_embeds(p, a, q, B, cfg_on, err); /* (BB, E) or plus (BB, L, E) */
        if (!emb) goto done;
        r.ip[i].tokens = pf_ip_adapter_project(a, emb);                 /* (BB, N, X) */
        pf_free(emb);
        r.ip[i].to_k_ip = a->to_k_ip;
        r.ip[i].to_v_ip = a->to_v_ip;
        r.ip[i].scale = q->scale;
        r.n_ip = i + 1;
    }

    /* 7. denoising loop; 8. decode */
    rc = denoise(p, &r, err);
    if (rc == 0) rc = decode_images(p, images, latents, B, C, h, w, prm->vae_tiling, err);
done:
    for (int i = 0; i < r.n_ip; i++) pf_free((pf_tensor *)r.ip[i].tokens);
    for (int c = 0; c < PF_MAX_CONTROLS; c++) pf_free(r.conds[c]);
    pf_free(r.pooled);
    free(r.time_ids);
    pf_perflow_free(&sampler);
    free(latents);
    pf_free(ctx);
    return rc;
}

/* ---- the refiner ---- */

void pf_refine_defaults(pf_refine_params *p) {
    memset(p, 0, sizeof *p);
    p->num_images = 1;
    p->size = 1024;
    p->steps = 4;
    p->guidance = 7.5f;
    p->strength = 1.0f;
    p->controlnet_scale = 1.0f;
}

int pf_pipeline_set_controlnets(pf_pipeline *p, const char *const *dirs, int n, pf_error *err) {
    if (n < 0 || n > PF_MAX_CONTROLS) return pf_fail(err, "%d ControlNets (at most %d)", n, PF_MAX_CONTROLS);
    pf_controlnet *nets[PF_MAX_CONTROLS] = {0};
    for (int i = 0; i < n; i++) {
        if (pf_controlnet_load_dir(&nets[i], p->be, dirs[i], err) ||
            (pf_controlnet_check_unet(nets[i], p->unet, pf_vae_scale_factor(p->vae), err) &&
             pf_error_prefix(err, "%s does not fit the model", dirs[i]))) {
            for (int k = 0; k <= i; k++) pf_controlnet_free(nets[k]);
            return -1;
        }
    }
    for (int i = 0; i < p->n_nets; i++) pf_controlnet_free(p->nets[i]);
    memcpy(p->nets, nets, sizeof nets);
    p->n_nets = n;
    return 0;
}

int pf_pipeline_set_controlnet(pf_pipeline *p, const char *controlnet_dir, pf_error *err) {
    return pf_pipeline_set_controlnets(p, &controlnet_dir, controlnet_dir ? 1 : 0, err);
}

int pf_pipeline_set_ip_adapters(pf_pipeline *p, const char *const *files, int n, const char *image_encoder_dir,
                                pf_error *err) {
    if (n < 0 || n > PF_MAX_IP_ADAPTERS) return pf_fail(err, "%d IP-Adapters: at most %d", n, PF_MAX_IP_ADAPTERS);
    pf_ip_adapter *ips[PF_MAX_IP_ADAPTERS] = {0};
    pf_clip_vision *enc = NULL;
    if (n) {
        if (!image_encoder_dir)
            return pf_fail(err, "IP-Adapter needs an image encoder (--image-encoder DIR, or the model's image_encoder/)");
        if (pf_clip_vision_load_dir(&enc, p->be, image_encoder_dir, err)) return -1;
    }
    for (int i = 0; i < n; i++) {
        if (pf_ip_adapter_load(&ips[i], p->be, files[i], p->unet, err)) goto fail;
        const pf_clip_vision_config *vc = pf_clip_vision_get_config(enc);
        const int E = ips[i]->plus ? vc->hidden_size : vc->projection_dim;
        if (ips[i]->embed_dim != E) {
            pf_fail(err, "ip-adapter %s takes %d-wide image %s but image encoder %s gives %d (%s)", files[i],
                    ips[i]->embed_dim, ips[i]->plus ? "features" : "embeddings", image_encoder_dir, E,
                    ips[i]->plus ? "hidden_size" : "projection_dim");
            goto fail;
        }
        if (ips[i]->plus && vc->num_hidden_layers < 2) {
            pf_fail(err, "ip-adapter %s (plus) takes the encoder's hidden_states[-2]; image encoder %s has %d layer",
                    files[i], image_encoder_dir, vc->num_hidden_layers);
            goto fail;
        }
    }
    for (int i = 0; i < p->n_ips; i++) pf_ip_adapter_free(p->ips[i]);
    pf_clip_vision_free(p->image_encoder);
    memcpy(p->ips, ips, sizeof ips);
    p->n_ips = n;
    p->image_encoder = enc;
    return 0;
fail:
    for (int i = 0; i < n; i++) pf_ip_adapter_free(ips[i]);
    pf_clip_vision_free(enc);
    return -1;
}

int pf_pipeline_num_ip_adapters(const pf_pipeline *p) { return p->n_ips; }

int pf_pipeline_num_controlnets(const pf_pipeline *p) { return p->n_nets; }

int pf_pipeline_has_controlnet(const pf_pipeline *p) { return p->n_nets > 0; }

void pf_refine_output_size(const pf_refine_params *prm, int *out_w, int *out_h) {
    if (prm->size > 0)
        pf_refine_size(out_w, out_h, prm->image_width, prm->image_height, prm->size);
    else
        *out_w = prm->image_width, *out_h = prm->image_height;
}

/* A refine run's controls: its own, or the refiner's one (net 0 on the refined
 * image at controlnet_scale). *one is the storage for the latter. */
static const pf_control *refine_controls(const pf_refine_params *prm, pf_control *one, int *n) {
    if (prm->n_controls) {
        *n = prm->n_controls;
        return prm->controls;
    }
    *one = (pf_control){0, NULL, 0, 0, prm->controlnet_scale};
    *n = 1;
    return one;
}

/* The sampler configuration of a refine run. */
static int refine_run_config(const pf_pipeline *p, const pf_refine_params *prm, pf_perflow_config *cfg,
                             pf_error *err) {
    pf_txt2img_params t;
    pf_txt2img_defaults(&t);
    t.prediction_type = prm->prediction_type;
    t.windows = prm->windows;
    return run_config(p, &t, cfg, err);
}

/* Fails naming param, the pf_refine_params field at fault. */
#define BAD(name, ...) (*param = (name), pf_fail(err, __VA_ARGS__))

int pf_refine_check(const pf_pipeline *p, const pf_refine_params *prm, const char **param, pf_error *err) {
    const char *unused;
    if (!param) param = &unused;
    *param = NULL;
    if (p->family != PF_FAMILY_SD) return BAD("model", "the refiner runs SD-1.x/2.x models (this one is %s)", pf_family_name(p->family));
    const int f = pf_vae_scale_factor(p->vae);
    const int layers = pf_clip_text_model_config(p->text_encoder)->num_hidden_layers;
    if (prm->num_images < 1 || prm->num_images > 64)
        return BAD("num_images", "refine: num_images must be in [1, 64] (got %d)", prm->num_images);
    if (prm->image_width < 1 || prm->image_height < 1 || prm->image_width > 16384 || prm->image_height > 16384)
        return BAD("images", "refine: input image of %d x %d pixels", prm->image_width, prm->image_height);
    if (prm->size < 0 || prm->size > PF_REFINE_MAX_SIZE)
        return BAD("size", "size must be in [0, %d] (got %d)", PF_REFINE_MAX_SIZE, prm->size);
    int w, h;
    pf_refine_output_size(prm, &w, &h);
    if (w < 1 || h < 1)
        return BAD("size", "size %d rounds the %d x %d image to %d x %d", prm->size, prm->image_width,
                   prm->image_height, w, h);
    if (w > PF_REFINE_MAX_SIZE || h > PF_REFINE_MAX_SIZE)
        return BAD("size", "size %d makes the %d x %d image %d x %d, more than %d a side", prm->size,
                   prm->image_width, prm->image_height, w, h, PF_REFINE_MAX_SIZE);
    if (w % f || h % f)
        return BAD("size", "the refined image must be a multiple of %d a side (got %d x %d; the input is used as it "
                           "is when size is 0)", f, w, h);
    if (prm->steps < 1 || prm->steps > 1000) return BAD("steps", "steps must be in [1, 1000] (got %d)", prm->steps);
    if (!(prm->strength > 0.0f && prm->strength <= 1.0f))
        return BAD("strength", "strength must be in (0, 1] (got %g)", (double)prm->strength);
    if (!(prm->guidance >= 0.0f && prm->guidance <= 100.0f))
        return BAD("guidance", "guidance must be in [0, 100] (got %g)", (double)prm->guidance);
    if (!(prm->controlnet_scale >= -10.0f && prm->controlnet_scale <= 10.0f))
        return BAD("controlnet_scale", "controlnet scale must be in [-10, 10] (got %g)", (double)prm->controlnet_scale);
    if (prm->windows < 0 || prm->windows > 1000) return BAD("windows", "windows must be in [1, 1000]");
    if (prm->clip_skip < 0 || prm->clip_skip >= layers) return BAD("clip_skip", "clip_skip must be in [0, %d)", layers);
    if (prm->n_controls && controls_check(p, prm->controls, prm->n_controls, 1, 0, err)) return (*param = "controls", -1);
    pf_perflow_config cfg;
    pf_perflow_sampler s;
    int first;
    pf_prediction named;
    if (prm->prediction_type && pf_perflow_parse_prediction(&named, prm->prediction_type, err))
        return (*param = "prediction_type", -1);
    if (refine_run_config(p, prm, &cfg, err)) return (*param = "windows", -1);
    if (pf_perflow_init(&s, &cfg, err)) return -1;
    int rc = 0;
    if (pf_perflow_set_timesteps(&s, prm->steps, err))
        rc = (*param = "steps", -1);
    else if (pf_perflow_img2img_first(&s, &first, prm->steps, prm->strength, err))
        rc = (*param = "strength", -1);
    else if (first >= s.num_steps)
        rc = BAD("strength", "strength %g leaves no step of %d (int(steps * strength) is 0)", (double)prm->strength,
                 prm->steps);
    pf_perflow_free(&s);
    return rc;
}
#undef BAD

int pf_refine_batchable(const pf_pipeline *p, const pf_refine_params *a, const pf_refine_params *b) {
    pf_perflow_config ca, cb;
    pf_error e;
    int aw, ah, bw, bh;
    if (refine_run_config(p, a, &ca, &e) || refine_run_config(p, b, &cb, &e)) return 0;
    pf_refine_output_size(a, &aw, &ah);
    pf_refine_output_size(b, &bw, &bh);
    return aw == bw && ah == bh && a->steps == b->steps && a->guidance == b->guidance &&
           a->strength == b->strength && a->controlnet_scale == b->controlnet_scale && a->clip_skip == b->clip_skip &&
           a->vae_tiling == b->vae_tiling && ca.prediction_type == cb.prediction_type &&
           ca.num_time_windows == cb.num_time_windows &&
           controls_agree(a->controls, a->n_controls, b->controls, b->n_controls);
}

int pf_pipeline_refine(pf_pipeline *p, const pf_refine_params *prm, float *images_out, pf_error *err) {
    return pf_pipeline_refine_batch(p, &prm, 1, images_out, err);
}

/* The hand-over: each input image scaled to W x H with Pillow's Lanczos (a copy
 * when the size is already right), then as diffusers' image processors take a
 * PIL image: v / 255 in float32, normalised to 2 v - 1 for the img2img input
 * and kept in [0, 1] for the control image. Both (n, 3, H, W), planar. */
static int prepare_images(const pf_refine_params *q, int W, int H, float *init, float *cond, pf_error *err) {
    const size_t in_px = (size_t)q->image_width * q->image_height, px = (size_t)W * H;
    uint8_t *rgb = PF_MALLOC(px * 3);
    int rc = 0;
    for (int i = 0; rc == 0 && i < q->num_images; i++) {
        const uint8_t *src = q->images + (size_t)i * in_px * 3;
        if (W == q->image_width && H == q->image_height)
            memcpy(rgb, src, px * 3);
        else
            rc = pf_resize_lanczos(rgb, W, H, src, q->image_width, q->image_height, err);
        for (size_t k = 0; rc == 0 && k < px; k++)
            for (int c = 0; c < 3; c++) {
                float v = (float)rgb[k * 3 + c] / 255.0f;                /* pil_to_numpy */
                cond[((size_t)i * 3 + c) * px + k] = v;
                init[((size_t)i * 3 + c) * px + k] = 2.0f * v - 1.0f;    /* normalize */
            }
    }
    free(rgb);
    return rc;
}

/* Batch layout as in txt2img. Per job, in the generator order of
 * StableDiffusionControlNetImg2ImgPipeline.prepare_latents: its images' VAE
 * latent_dist.sample draws, then the add_noise draws, both (n, C, h, w) at once. */
int pf_pipeline_refine_batch(pf_pipeline *p, const pf_refine_params *const *jobs, int njobs, float *images_out,
                             pf_error *err) {
    PF_CHECK(njobs >= 1);
    const pf_refine_params *prm = jobs[0];
    pf_control one;
    int nctl;
    const pf_control *ctl = refine_controls(prm, &one, &nctl);
    if (!p->n_nets) return pf_fail(err, "refine needs a ControlNet (none is loaded: pf_pipeline_set_controlnet)");
    if (controls_check(p, ctl, nctl, 1, 1, err)) return -1;
    int B = 0;
    for (int j = 0; j < njobs; j++) {
        if (pf_refine_check(p, jobs[j], NULL, err)) return njobs > 1 ? pf_error_prefix(err, "batch job %d", j) : -1;
        PF_CHECK(jobs[j]->images);
        if (!pf_refine_batchable(p, prm, jobs[j]))
            return pf_fail(err, "batch job %d differs from job 0 in its refine settings or size", j);
        B += jobs[j]->num_images;
    }
    pf_backend *be = p->be;
    const pf_unet_config *uc = pf_unet_get_config(p->unet);
    const pf_vae_config *vc = pf_vae_config_of(p->vae);
    const int f = pf_vae_scale_factor(p->vae), C = uc->in_channels;
    const int D = pf_clip_text_model_config(p->text_encoder)->hidden_size;
    int W, H;
    pf_refine_output_size(prm, &W, &H);
    const int h = H / f, w = W / f;
    const int cfg_on = prm->guidance > 1.0f, BB = cfg_on ? 2 * B : B;
    const size_t per = (size_t)C * h * w, px = (size_t)W * H;
    int rc = -1, first;

    pf_perflow_config scfg;
    pf_perflow_sampler sampler;
    memset(&sampler, 0, sizeof sampler);
    denoise_run r; /* filled once the inputs are ready; conds freed at the end */
    memset(&r, 0, sizeof r);
    float *latents = NULL, *init = NULL, *cond = NULL, *moments = NULL, *noise = NULL;
    pf_tensor *ctx = NULL, *img = NULL, *mom = NULL;
    if (refine_run_config(p, prm, &scfg, err) || pf_perflow_init(&sampler, &scfg, err) ||
        pf_perflow_set_timesteps(&sampler, prm->steps, err) ||
        pf_perflow_img2img_first(&sampler, &first, prm->steps, prm->strength, err))
        goto done;

    /* encode_prompt, then the images: preprocess and prepare_control_image */
    ctx = pf_new3(be, BB, TOKENS, D);                                  /* (BB, 77, D) */
    init = PF_MALLOC((size_t)B * 3 * px * sizeof *init);
    cond = PF_MALLOC((size_t)B * 3 * px * sizeof *cond);
    for (int j = 0, row = 0; j < njobs; row += jobs[j]->num_images, j++) {
        const pf_refine_params *q = jobs[j];
        const char *pos = q->prompt ? q->prompt : PF_REFINE_PROMPT;
        const char *neg = q->negative_prompt ? q->negative_prompt : PF_REFINE_NEGATIVE_PROMPT;
        if ((cfg_on && encode_into(p, ctx, row, q->num_images, neg, q->clip_skip, err)) ||
            encode_into(p, ctx, (cfg_on ? B : 0) + row, q->num_images, pos, q->clip_skip, err) ||
            prepare_images(q, W, H, init + (size_t)row * 3 * px, cond + (size_t)row * 3 * px, err))
            goto done;
    }
    /* prepare_control_image per ControlNet: the refined image itself (the tile
     * hand-over), or the job's own condition image */
    fill_run(&r, ctx, NULL, B, C, h, w, cfg_on, prm->guidance, &sampler, first, prm->progress, prm->cancelled,
             prm->user);
    r.n_ctrl = nctl;
    for (int c = 0; c < nctl; c++) {
        r.nets[c] = p->nets[ctl[c].net];
        r.scales[c] = ctl[c].scale;
        if (!ctl[c].image) { /* every job's hand-over images (controls_agree: NULL for all of them) */
            r.conds[c] = condition_tensor(be, cond, B, cfg_on, H, W);
            continue;
        }
        float *host = PF_MALLOC((size_t)B * 3 * px * sizeof *host);
        for (int j = 0, row = 0; j < njobs; row += jobs[j]->num_images, j++) {
            pf_control one_j;
            int n_j;
            const pf_control *q = &refine_controls(jobs[j], &one_j, &n_j)[c];
            if (condition_image(host + (size_t)row * 3 * px, q->image, q->image_width, q->image_height, W, H,
                                jobs[j]->num_images, err)) {
                free(host);
                goto done;
            }
        }
        r.conds[c] = condition_tensor(be, host, B, cfg_on, H, W);
        free(host);
    }
    free(cond);
    cond = NULL;

    /* prepare_latents: vae.encode -> latent_dist.sample(generator) * scaling_factor
     * -> add_noise(latents, randn(generator), timesteps[first]) */
    img = pf_from_host(pf_vae_backend(p->vae), 4, (int64_t[]){B, 3, H, W}, init); /* (B, 3, H, W) in [-1, 1] */
    free(init);
    init = NULL;
    mom = pf_new4(pf_vae_backend(p->vae), B, 2 * C, h, w);                /* (B, 2C, h, w) mean, logvar */
    if (pf_vae_encode(p->vae, mom, img, prm->vae_tiling, err)) goto done;
    pf_free(img);
    img = NULL;
    moments = PF_MALLOC((size_t)B * 2 * per * sizeof *moments);
    pf_to_host(moments, mom);
    pf_free(mom);
    mom = NULL;
    latents = PF_MALLOC((size_t)B * per * sizeof *latents);
    noise = PF_MALLOC((size_t)B * per * sizeof *noise);
    for (int j = 0, row = 0; j < njobs; row += jobs[j]->num_images, j++) {
        const int n = jobs[j]->num_images;
        float *lat = latents + (size_t)row * per, *nz = noise + (size_t)row * per;
        pf_rng rng;
        pf_rng_seed(&rng, jobs[j]->seed);
        pf_rng_randn(&rng, nz, (size_t)n * per);
        pf_vae_sample_latents(lat, moments + (size_t)row * 2 * per, nz, n, C, h, w, vc->scaling_factor);
        pf_rng_randn(&rng, nz, (size_t)n * per);
        pf_perflow_add_noise(&sampler, lat, lat, nz, sampler.timesteps[first], (size_t)n * per);
    }

    r.latents = latents;
    rc = denoise(p, &r, err);
    if (rc == 0) rc = decode_images(p, images_out, latents, B, C, h, w, prm->vae_tiling, err);
done:
    pf_perflow_free(&sampler);
    free(latents);
    free(init);
    free(cond);
    free(moments);
    free(noise);
    pf_free(ctx);
    pf_free(img);
    pf_free(mom);
    for (int c = 0; c < PF_MAX_CONTROLS; c++) pf_free(r.conds[c]);
    return rc;
}
