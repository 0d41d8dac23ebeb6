/* checkpoint.c - loading a model as users have it (checkpoint.h).
 *
 * Both kinds of model go through the same steps: find the configs, open each
 * component's weights under the engine's names (a diffusers folder as it is,
 * a single file through convert.h), attach the delta and the LoRAs, then let
 * each model's loader read its weights. Only the second step differs. */
#include "checkpoint.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "lora.h"
#include "model_dir.h"

#ifndef PF_CONFIGS_DIR
#define PF_CONFIGS_DIR "configs" /* set by the Makefile to the source tree's configs/ */
#endif

/* An installed program finds the configs beside it: BINDIR/../share/perflow/configs
 * (make install puts them there); a program run from the source tree, in it. */
const char *pf_configs_dir(void) {
    const char *e = getenv("PERFLOW_CONFIGS");
    if (e && *e) return e;
    static char installed[4096];
    char exe[4096];
    struct stat st;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            if (snprintf(installed, sizeof installed, "%s/../share/perflow/configs", exe) < (int)sizeof installed &&
                stat(installed, &st) == 0 && S_ISDIR(st.st_mode))
                return installed;
        }
    }
    return PF_CONFIGS_DIR;
}

void pf_model_parts_free(pf_model_parts *m) {
    pf_tokenizer_free(m->tok);
    pf_tokenizer_free(m->tok2);
    pf_clip_text_model_free(m->text_encoder);
    pf_clip_text_model_free(m->text_encoder2);
    pf_unet_free(m->unet);
    pf_vae_free(m->vae);
    if (m->vae_be) pf_backend_free(m->vae_be);
    memset(m, 0, sizeof *m);
}

void pf_checkpoint_close(pf_checkpoint *c) {
    if (!c) return;
    for (int i = 0; i < PF_NUM_PARTS; i++) pf_weights_close(c->w[i]);
    for (int i = 0; i < c->n_loras; i++) pf_lora_close(c->loras[i]); /* after the weights that patch from them */
    free(c);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* The three components' configs under root (a diffusers folder, or a folder of configs). */
static int read_configs(pf_checkpoint *c, const char *root, pf_error *err) {
    char path[4096];
    snprintf(c->config_root, sizeof c->config_root, "%s", root);
    return pf_model_file(path, sizeof path, root, "unet", "config.json", err) ||
                   pf_unet_config_read(&c->unet_cfg, path, err) ||
                   pf_model_file(path, sizeof path, root, "vae", "config.json", err) ||
                   pf_vae_config_read(&c->vae_cfg, path, err) ||
                   pf_model_file(path, sizeof path, root, "text_encoder", "config.json", err) ||
                   pf_clip_text_config_read(&c->text_cfg, path, err)
               ? -1
               : 0;
}

/* model_index.json's pipeline class and SDXL's force_zeros_for_empty_prompt. */
static int read_index(pf_checkpoint *c, const char *dir, pf_error *err) {
    char path[4096], cls[128];
    pf_config *cfg;
    if (pf_model_file(path, sizeof path, dir, NULL, "model_index.json", err) || pf_config_load(&cfg, path, err))
        return -1;
    int rc = pf_config_str(cfg, "_class_name", "StableDiffusionPipeline", cls, sizeof cls, err) ||
                     pf_config_bool(cfg, "force_zeros_for_empty_prompt", 1, &c->force_zeros, err)
                 ? -1
                 : 0;
    pf_config_free(cfg);
    c->sdxl = rc == 0 && !strcmp(cls, "StableDiffusionXLPipeline");
    return rc;
}

/* A diffusers folder: each component's (possibly sharded) weights as they are. */
static int open_folder(pf_checkpoint *c, const pf_model_spec *spec, pf_error *err) {
    const char *dir = spec->model;
    char path[4096];
    if (spec->model_config)
        return pf_fail(err, "%s: --model-config describes a single-file checkpoint; a model folder has its own configs",
                       dir);
    if (pf_model_dir_check(dir, err) || read_index(c, dir, err) || read_configs(c, dir, err)) return -1;
    if (c->sdxl) {
        if (pf_model_file(path, sizeof path, dir, "tokenizer_2", "vocab.json", NULL))
            return pf_fail(err, "%s: an SDXL model (model_index.json) without tokenizer_2/", dir);
        if (pf_model_file(path, sizeof path, dir, "text_encoder_2", "config.json", NULL))
            return pf_fail(err, "%s: an SDXL model (model_index.json) without text_encoder_2/", dir);
        if (pf_clip_text_config_read(&c->text2_cfg, path, err)) return -1;
    }
    for (int p = 0; p < (c->sdxl ? PF_NUM_PARTS : PF_LDM_PARTS); p++)
        if (pf_model_weights(path, sizeof path, dir, pf_part_name((pf_part)p), 0, err) ||
            pf_weights_open(&c->w[p], path, err))
            return -1;
    return 0;
}

/* The first bytes of a PyTorch pickle: a zip archive (torch.save since 1.6) or
 * a bare pickle stream (protocol 2+). */
static int looks_pickled(const char *path) {
    unsigned char b[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(b, 1, sizeof b, f);
    fclose(f);
    return (n == 4 && !memcmp(b, "PK\x03\x04", 4)) || (n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5);
}

/* A single LDM file: recognise it, take the configs, view each component. */
static int open_single_file(pf_checkpoint *c, const pf_model_spec *spec, pf_error *err) {
    const char *path = spec->model;
    if (has_suffix(path, ".ckpt") || has_suffix(path, ".pt") || has_suffix(path, ".pth") || has_suffix(path, ".bin") ||
        looks_pickled(path))
        return pf_fail(err, "%s: a PyTorch pickle checkpoint; perflow reads safetensors only (convert it to "
                            ".safetensors first: pickles can run code when loaded)", path);
    pf_safetensors *st;
    if (pf_st_open(&st, path, err)) return -1;
    int ldm = pf_ldm_probe(&c->ldm, st);
    pf_st_close(st);
    c->single_file = 1;
    char found[512];
    pf_ldm_describe(found, sizeof found, &c->ldm);
    if (!ldm)
        return pf_fail(err, "%s: not a single-file checkpoint (no model.diffusion_model.*, first_stage_model.* or "
                            "cond_stage_model.* keys; perflow inspect tells what it is)", path);
    const int xl = c->ldm.family == PF_LDM_SDXL, parts = xl ? PF_NUM_PARTS : PF_LDM_PARTS;
    static const char *const what[] = {"UNet (model.diffusion_model.*)", "VAE (first_stage_model.*)",
                                       "text encoder (cond_stage_model.*)",
                                       "second text encoder (conditioner.embedders.1.model.*)"};
    char missing[256] = "";
    for (int p = 0; p < parts; p++)
        if (!c->ldm.count[p])
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%sno %s", *missing ? " and " : "",
                     xl && p == PF_PART_TEXT_ENCODER ? "text encoder (conditioner.embedders.0.transformer.*)" : what[p]);
    if (*missing)
        return pf_fail(err, "%s: the checkpoint has %s%s", path, missing,
                       !c->ldm.count[PF_PART_UNET] && c->ldm.ema ? " (only model_ema.* copies)" : "");
    if (c->ldm.openclip < 0)
        return pf_fail(err, "%s: the checkpoint holds both CLIP (cond_stage_model.transformer.*) and OpenCLIP "
                            "(cond_stage_model.model.*) text encoder keys", path);
    char root[4096];
    if (spec->model_config) {
        if (pf_model_dir_check(spec->model_config, err)) return pf_error_prefix(err, "--model-config");
        snprintf(root, sizeof root, "%s", spec->model_config);
    } else if (c->ldm.family != PF_LDM_UNKNOWN) {
        snprintf(root, sizeof root, "%s/%s", pf_configs_dir(),
                 c->ldm.family == PF_LDM_SD1 ? "sd15" : c->ldm.family == PF_LDM_SD2 ? "sd21" : "sdxl");
    } else {
        return pf_fail(err, "%s: unknown architecture (%s); perflow recognises SD-1.x (CLIP, cross-attention 768), "
                            "SD-2.x (OpenCLIP, 1024) and SDXL (conditioner.* keys): give --model-config DIR, a "
                            "diffusers folder with this model's configs", path, found);
    }
    /* the pipeline the configs describe must be the file's family */
    if (read_index(c, root, err) || read_configs(c, root, err)) return -1;
    if (c->sdxl != xl)
        return pf_fail(err, "%s: %s checkpoint, but the configs of %s are for %s pipeline", path,
                       xl ? "an SDXL" : "an SD-1.x/2.x", root, c->sdxl ? "an SDXL" : "an SD-1.x/2.x");
    if (xl) {
        char p2[4096];
        if (pf_model_file(p2, sizeof p2, root, "text_encoder_2", "config.json", err) ||
            pf_clip_text_config_read(&c->text2_cfg, p2, err))
            return -1;
    }
    const pf_unet_config *uc = &c->unet_cfg;
    for (int i = 1; i < uc->num_blocks; i++)
        if (uc->layers_per_block[i] != uc->layers_per_block[0])
            return pf_fail(err, "%s/unet/config.json: layers_per_block differs between blocks, which the LDM layout "
                                "cannot number", root);
    for (int p = 0; p < parts; p++)
        if (pf_ldm_open(&c->w[p], path, (pf_part)p, uc->layers_per_block[0], c->vae_cfg.num_blocks, err)) return -1;
    return 0;
}

/* The delta: a file, an index, or a unet/ folder holding one. */
static int attach_delta(pf_checkpoint *c, const char *delta, pf_error *err) {
    char path[4096];
    if (is_dir(delta)) {
        if (pf_model_weights(path, sizeof path, delta, NULL, 0, err)) return -1;
    } else {
        snprintf(path, sizeof path, "%s", delta);
    }
    return pf_weights_set_delta(c->w[PF_PART_UNET], path, err) ? pf_error_prefix(err, "loading unet") : 0;
}

int pf_checkpoint_attach_lora(pf_checkpoint *c, pf_lora *l, float scale, pf_error *err) {
    static const pf_part order[] = {PF_PART_UNET, PF_PART_TEXT_ENCODER, PF_PART_TEXT_ENCODER_2};
    int matched = 0;
    for (int k = 0; k < 3; k++) {
        int n = c->w[order[k]] ? pf_lora_attach(l, c->w[order[k]], order[k], scale, c->unet_cfg.layers_per_block[0],
                                                err)
                               : 0;
        if (n < 0) {
            /* a second text encoder is what tells SDXL LoRAs from SD-1.x/2.x ones by their keys */
            int xl = pf_lora_num_modules(l, PF_PART_TEXT_ENCODER_2) > 0;
            if (xl != c->sdxl)
                pf_error_prefix(err, "%s LoRA on %s model", xl ? "an SDXL" : "an SD-1.x/2.x",
                                c->sdxl ? "an SDXL" : "an SD-1.x/2.x");
            return -1;
        }
        matched += n;
    }
    return matched;
}

static int attach_loras(pf_checkpoint *c, const pf_model_spec *spec, pf_error *err) {
    if (spec->n_loras < 0 || spec->n_loras > PF_MAX_LORAS)
        return pf_fail(err, "%d LoRAs (at most %d)", spec->n_loras, PF_MAX_LORAS);
    for (int i = 0; i < spec->n_loras; i++) {
        const pf_lora_spec *ls = &spec->loras[i];
        if (pf_lora_open(&c->loras[c->n_loras], ls->path, err)) return -1;
        pf_lora *l = c->loras[c->n_loras++];
        if (pf_checkpoint_attach_lora(c, l, ls->scale, err) < 0) return -1;
        if (pf_lora_matched(l, 0) == 0) {
            char keys[300];
            pf_lora_unmatched(l, 0, keys, sizeof keys);
            int xl = pf_lora_num_modules(l, PF_PART_TEXT_ENCODER_2) > 0;
            return pf_fail(err, "lora %s: none of its %d tensors matches a weight of %s (%s): %s", ls->path,
                           pf_lora_num_tensors(l), spec->model,
                           xl == c->sdxl ? "a LoRA for another model?"
                           : xl          ? "an SDXL LoRA on an SD-1.x/2.x model"
                                         : "an SD-1.x/2.x LoRA on an SDXL model?",
                           keys);
        }
    }
    return 0;
}

int pf_checkpoint_open(pf_checkpoint **out, const pf_model_spec *spec, pf_error *err) {
    *out = NULL;
    pf_checkpoint *c = PF_CALLOC(1, sizeof *c);
    struct stat st;
    int rc;
    if (stat(spec->model, &st) != 0)
        rc = pf_fail(err, "%s: not a model folder or single-file checkpoint (no such directory or file)", spec->model);
    else
        rc = S_ISDIR(st.st_mode) ? open_folder(c, spec, err) : open_single_file(c, spec, err);
    if (!rc && spec->delta) rc = attach_delta(c, spec->delta, err);
    if (!rc) rc = attach_loras(c, spec, err);
    if (rc) {
        pf_checkpoint_close(c);
        return -1;
    }
    *out = c;
    return 0;
}

/* Fills each LoRA's report once the models have read their weights. */
static void report_loras(const pf_checkpoint *c, const pf_model_spec *spec) {
    for (int i = 0; spec->lora_reports && i < c->n_loras; i++) {
        pf_lora_report *r = &spec->lora_reports[i];
        const struct pf_lora *l = c->loras[i];
        r->format = pf_lora_format_of(l);
        r->total = pf_lora_num_tensors(l);
        r->matched = pf_lora_matched(l, 1);
        r->unmatched = pf_lora_unmatched(l, 1, r->unmatched_keys, sizeof r->unmatched_keys);
    }
}

/* The scheduler config: optional. A base model folder carries its own
 * scheduler's config (PNDMScheduler, DDIMScheduler, ...), whose noise schedule
 * PeRFlow shares; its prediction type ("epsilon", "v_prediction" or none at
 * all) is not PeRFlow's, so only a PeRFlowScheduler config sets the sampler's
 * prediction type and windows; otherwise m->sched keeps the family's (pf_request.h). */
static int read_scheduler(pf_model_parts *m, const char *dir, pf_error *err) {
    char path[4096], cls[128];
    pf_config *c;
    if (pf_model_file(path, sizeof path, dir, "scheduler", "scheduler_config.json", NULL)) return 0;
    if (pf_config_load(&c, path, err)) return -1;
    int rc = pf_config_str(c, "_class_name", "", cls, sizeof cls, err);
    pf_config_free(c);
    if (rc) return -1;
    return strcmp(cls, "PeRFlowScheduler") ? pf_perflow_config_load_betas(&m->sched, path, err)
                                           : pf_perflow_config_load(&m->sched, path, err);
}

/* The checks that the loaded modules fit together. */
static int check_parts(const pf_model_parts *m, const char *model, pf_error *err) {
    const pf_unet_config *uc = pf_unet_get_config(m->unet);
    const pf_clip_text_config *t2 = m->sdxl ? pf_clip_text_model_config(m->text_encoder2) : NULL;
    int D = pf_clip_text_model_config(m->text_encoder)->hidden_size + (t2 ? t2->hidden_size : 0);
    if (m->sdxl != uc->text_time)
        return pf_fail(err, "%s: %s", model,
                       m->sdxl ? "an SDXL pipeline whose UNet has no text_time embedding"
                               : "a UNet with SDXL's text_time embedding in a pipeline that is not SDXL");
    if (t2 && uc->add_embed_in != t2->projection_dim + 6 * uc->addition_time_embed_dim)
        return pf_fail(err, "%s: the UNet's add_embedding takes %d features, text_encoder_2's projection_dim %d + 6 "
                            "time ids of %d give %d", model, uc->add_embed_in, t2->projection_dim,
                       uc->addition_time_embed_dim, t2->projection_dim + 6 * uc->addition_time_embed_dim);
    if (uc->cross_attention_dim != D)
        return pf_fail(err, "%s: the UNet's cross_attention_dim %d differs from the text encoders' hidden_size %d",
                       model, uc->cross_attention_dim, D);
    if (uc->in_channels != pf_vae_config_of(m->vae)->latent_channels)
        return pf_fail(err, "%s: the UNet's in_channels %d differ from the VAE's latent_channels %d", model,
                       uc->in_channels, pf_vae_config_of(m->vae)->latent_channels);
    return 0;
}

int pf_model_load(pf_model_parts *out, pf_backend *be, const pf_model_spec *spec, pf_error *err) {
    memset(out, 0, sizeof *out);
    pf_perflow_config_default(&out->sched);
    pf_checkpoint *c;
    if (pf_checkpoint_open(&c, spec, err)) return -1;
    out->sdxl = c->sdxl;
    out->force_zeros = c->force_zeros;
    /* the released PeRFlow models: SD-1.5 diff_eps, SDXL ddim_eps */
    out->sched.prediction_type = c->sdxl ? PF_PRED_DDIM_EPS : PF_PRED_DIFF_EPS;
    char path[4096];
    int rc = -1;
    if (read_scheduler(out, c->config_root, err)) goto done;
    snprintf(path, sizeof path, "%s/tokenizer", c->config_root);
    pf_weights *te = c->w[PF_PART_TEXT_ENCODER], *te2 = c->w[PF_PART_TEXT_ENCODER_2];
    if (pf_tokenizer_load(&out->tok, path, err) ||
        pf_clip_text_model_load(&out->text_encoder, be, &c->text_cfg, te, pf_text_encoder_prefix(te), err))
        goto done;
    if (c->sdxl) {
        snprintf(path, sizeof path, "%s/tokenizer_2", c->config_root);
        if (pf_tokenizer_load(&out->tok2, path, err) ||
            pf_clip_text_model_load(&out->text_encoder2, be, &c->text2_cfg, te2, pf_text_encoder_prefix(te2), err))
            goto done;
        if (!pf_clip_text_model_has_projection(out->text_encoder2)) {
            pf_fail(err, "%s: text_encoder_2 has no text_projection (SDXL's is a CLIPTextModelWithProjection)",
                    spec->model);
            goto done;
        }
    }
    if (pf_unet_load(&out->unet, be, &c->unet_cfg, c->w[PF_PART_UNET], "", err)) {
        pf_error_prefix(err, "loading unet");
        goto done;
    }
    /* StableDiffusionXLPipeline: needs_upcasting = vae.dtype == float16 and force_upcast */
    pf_backend *vae_be = be;
    if (c->sdxl && c->vae_cfg.force_upcast) {
        int owned;
        if (!(vae_be = pf_backend_f32_twin(be, &owned, err))) goto done;
        if (owned) out->vae_be = vae_be;
    }
    if (pf_vae_load(&out->vae, vae_be, &c->vae_cfg, c->w[PF_PART_VAE], "", err)) goto done;
    report_loras(c, spec);
    rc = check_parts(out, spec->model, err);
done:
    pf_checkpoint_close(c);
    if (rc) pf_model_parts_free(out);
    return rc;
}
