/* pipeline.c - StableDiffusionPipeline.__call__ with the PeRFlow sampler.
 * The comments name the diffusers step each block mirrors
 * (diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py). */
#include "pipeline.h"

#include <string.h>

#include "clip.h"
#include "model_dir.h"
#include "rng.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"

#define TOKENS 77 /* tokenizer.model_max_length of every SD-1.x/2.x tokenizer */

struct pf_pipeline {
    pf_backend *be;
    pf_tokenizer *tok;
    pf_clip_text_model *text_encoder;
    pf_unet *unet;
    pf_vae *vae;
    pf_perflow_config sched; /* from scheduler/scheduler_config.json */
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
    pf_clip_text_model_free(p->text_encoder);
    pf_unet_free(p->unet);
    pf_vae_free(p->vae);
    free(p);
}

int pf_pipeline_load(pf_pipeline **out, pf_backend *be, const char *model_dir, const char *delta, pf_error *err) {
    *out = NULL;
    pf_pipeline *p = PF_CALLOC(1, sizeof *p);
    p->be = be;
    char path[4096];
    if (pf_model_dir_check(model_dir, err)) goto fail;
    /* The scheduler config is optional: a base model folder carries its original
     * scheduler's config, whose beta keys PeRFlow shares; PeRFlow keys take defaults. */
    pf_perflow_config_default(&p->sched);
    p->sched.prediction_type = PF_PRED_DIFF_EPS; /* the released SD-1.5 PeRFlow models */
    if (pf_model_file(path, sizeof path, model_dir, "scheduler", "scheduler_config.json", NULL) == 0 &&
        pf_perflow_config_load(&p->sched, path, err))
        goto fail;
    snprintf(path, sizeof path, "%s/tokenizer", model_dir);
    if (pf_tokenizer_load(&p->tok, path, err) || pf_clip_text_model_load_dir(&p->text_encoder, be, model_dir, err) ||
        pf_unet_load_dir(&p->unet, be, model_dir, delta, err) || pf_vae_load_dir(&p->vae, be, model_dir, err))
        goto fail;
    const pf_unet_config *uc = pf_unet_get_config(p->unet);
    int D = pf_clip_text_model_config(p->text_encoder)->hidden_size;
    if (uc->cross_attention_dim != D) {
        pf_fail(err, "%s: the UNet's cross_attention_dim %d differs from the text encoder's hidden_size %d",
                model_dir, uc->cross_attention_dim, D);
        goto fail;
    }
    if (uc->in_channels != pf_vae_config_of(p->vae)->latent_channels) {
        pf_fail(err, "%s: the UNet's in_channels %d differ from the VAE's latent_channels %d", model_dir,
                uc->in_channels, pf_vae_config_of(p->vae)->latent_channels);
        goto fail;
    }
    *out = p;
    return 0;
fail:
    pf_pipeline_free(p);
    return -1;
}

/* The sampler configuration one run uses: the model's, with the job's overrides. */
static int run_config(const pf_pipeline *p, const pf_txt2img_params *prm, pf_perflow_config *cfg, pf_error *err) {
    *cfg = p->sched;
    if (prm->prediction_type && pf_perflow_parse_prediction(&cfg->prediction_type, prm->prediction_type, err))
        return -1;
    if (prm->windows) cfg->num_time_windows = prm->windows;
    return pf_perflow_config_check(cfg, err);
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

int pf_txt2img_batchable(const pf_pipeline *p, const pf_txt2img_params *a, const pf_txt2img_params *b) {
    pf_perflow_config ca, cb;
    pf_error e;
    if (run_config(p, a, &ca, &e) || run_config(p, b, &cb, &e)) return 0;
    return a->width == b->width && a->height == b->height && a->steps == b->steps && a->guidance == b->guidance &&
           a->clip_skip == b->clip_skip && ca.prediction_type == cb.prediction_type &&
           ca.num_time_windows == cb.num_time_windows;
}

int pf_pipeline_txt2img(pf_pipeline *p, const pf_txt2img_params *prm, float *images, pf_error *err) {
    return pf_pipeline_txt2img_batch(p, &prm, 1, images, err);
}

/* Batch layout. Job j owns the num_images images after those of jobs 0..j-1,
 * B in all; the UNet runs on BB = 2B rows, [uncond(0..B), cond(0..B)] as
 * diffusers stacks them, or on B rows without guidance. Everything per image
 * (the latents, the combine, the sampler step, the decode) is elementwise or
 * per sample, so stacking jobs changes no job's numbers. */
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
    const int D = pf_clip_text_model_config(p->text_encoder)->hidden_size;
    const int cfg_on = prm->guidance > 1.0f; /* do_classifier_free_guidance */
    const int BB = cfg_on ? 2 * B : B;       /* UNet batch: [uncond, cond] stacked */
    const size_t per = (size_t)C * h * w;    /* latent elements of one image */
    const size_t n = (size_t)B * per;        /* latent elements of the batch */
    int rc = -1;

    pf_perflow_config scfg;
    pf_perflow_sampler sampler;
    memset(&sampler, 0, sizeof sampler);
    float *latents = NULL, *eps = NULL, *times = NULL;
    pf_tensor *ctx = NULL, *x = NULL, *noise = NULL, *lat = NULL, *img = NULL;
    if (run_config(p, prm, &scfg, err) || pf_perflow_init(&sampler, &scfg, err) ||
        pf_perflow_set_timesteps(&sampler, prm->steps, err))
        goto done;

    /* 3. encode_prompt per job: negative (uncond) rows first, then the prompts'. */
    ctx = pf_new3(be, BB, TOKENS, D);                                  /* (BB, 77, D) */
    latents = PF_MALLOC(n * sizeof *latents);
    for (int j = 0, row = 0; j < njobs; row += jobs[j]->num_images, j++) {
        const pf_txt2img_params *q = jobs[j];
        if (cfg_on && encode_into(p, ctx, row, q->num_images, q->negative_prompt ? q->negative_prompt : "",
                                  q->clip_skip, err))
            goto done;
        if (encode_into(p, ctx, (cfg_on ? B : 0) + row, q->num_images, q->prompt, q->clip_skip, err)) goto done;
        /* 5. prepare_latents: randn((num_images, C, h, w), generator) * init_noise_sigma
         * (1.0), one generator per job as diffusers takes a list of generators. */
        pf_rng rng;
        pf_rng_seed(&rng, q->seed);
        pf_rng_randn(&rng, latents + (size_t)row * per, (size_t)q->num_images * per);
    }

    eps = PF_MALLOC((size_t)BB * per * sizeof *eps);
    times = PF_MALLOC((size_t)BB * sizeof *times);

    /* 7. denoising loop */
    x = pf_new4(be, BB, C, h, w);                                      /* (BB, C, h, w) UNet input */
    noise = pf_new4(be, BB, C, h, w);                                  /* (BB, C, h, w) UNet output */
    for (int i = 0; i < sampler.num_steps; i++) {
        if (prm->cancelled && prm->cancelled(prm->user)) {
            rc = PF_CANCELLED;
            pf_fail(err, "cancelled before step %d of %d", i + 1, sampler.num_steps);
            goto done;
        }
        int64_t t = sampler.timesteps[i];
        for (int b = 0; b < BB; b++) times[b] = (float)t;
        pf_tensor *xs = pf_slice0(x, 0, B);                            /* torch.cat([latents] * 2) */
        pf_upload(xs, latents);
        pf_free(xs);
        if (cfg_on) {
            xs = pf_slice0(x, B, B);
            pf_upload(xs, latents);
            pf_free(xs);
        }
        if (pf_unet_forward(p->unet, noise, x, times, ctx, NULL, NULL, err)) goto done;
        pf_to_host(eps, noise);
        if (cfg_on) { /* noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond), float32 */
            const float g = prm->guidance;
            for (size_t k = 0; k < n; k++) eps[k] = eps[k] + g * (eps[n + k] - eps[k]);
        }
        pf_perflow_step(&sampler, latents, eps, t, latents, n);
        if (prm->progress) prm->progress(prm->user, i + 1, sampler.num_steps);
    }

    /* 8. vae.decode(latents / scaling_factor) (pf_vae_decode divides), then
     * image_processor.postprocess: (image / 2 + 0.5).clamp(0, 1), NCHW -> NHWC. */
    lat = pf_from_host(be, 4, (int64_t[]){B, C, h, w}, latents);      /* (B, C, h, w) */
    img = pf_new4(be, B, 3, prm->height, prm->width);                  /* (B, 3, H, W) */
    if (pf_vae_decode(p->vae, img, lat, err)) goto done;
    {
        const size_t hw = (size_t)prm->height * prm->width;
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
    }
    rc = pf_backend_ok(be, err) ? -1 : 0;
done:
    pf_perflow_free(&sampler);
    free(latents);
    free(eps);
    free(times);
    pf_free(ctx);
    pf_free(x);
    pf_free(noise);
    pf_free(lat);
    pf_free(img);
    return rc;
}
