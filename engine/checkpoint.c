/* checkpoint.c - loading a model as users have it (checkpoint.h). */
#include "checkpoint.h"

#include <string.h>

#include "config.h"
#include "model_dir.h"

void pf_model_parts_free(pf_model_parts *m) {
    pf_tokenizer_free(m->tok);
    pf_tokenizer_free(m->tok2);
    pf_clip_text_model_free(m->text_encoder);
    pf_clip_text_model_free(m->text_encoder2);
    pf_unet_free(m->unet);
    pf_vae_free(m->vae);
    memset(m, 0, sizeof *m);
}

/* model_index.json's pipeline class and SDXL's force_zeros_for_empty_prompt. */
static int read_index(pf_model_parts *m, const char *dir, pf_error *err) {
    char path[4096], cls[128];
    pf_config *c;
    if (pf_model_file(path, sizeof path, dir, NULL, "model_index.json", err) || pf_config_load(&c, path, err))
        return -1;
    int rc = pf_config_str(c, "_class_name", "StableDiffusionPipeline", cls, sizeof cls, err) ||
                     pf_config_bool(c, "force_zeros_for_empty_prompt", 1, &m->force_zeros, err)
                 ? -1
                 : 0;
    pf_config_free(c);
    m->sdxl = rc == 0 && !strcmp(cls, "StableDiffusionXLPipeline");
    return rc;
}

/* The scheduler config: optional, as a base model folder carries its original
 * scheduler's config, whose beta keys PeRFlow shares; only a PeRFlowScheduler
 * config's prediction type is PeRFlow's (an SDXL base's "epsilon" is not). */
static int read_scheduler(pf_model_parts *m, const char *dir, pf_error *err) {
    char path[4096], cls[128];
    pf_config *c;
    if (pf_model_file(path, sizeof path, dir, "scheduler", "scheduler_config.json", NULL)) return 0;
    const pf_prediction family_default = m->sched.prediction_type;
    if (pf_perflow_config_load(&m->sched, path, err) || pf_config_load(&c, path, err)) return -1;
    int rc = pf_config_str(c, "_class_name", "", cls, sizeof cls, err);
    pf_config_free(c);
    if (!rc && m->sdxl && strcmp(cls, "PeRFlowScheduler")) m->sched.prediction_type = family_default;
    return rc;
}

/* A diffusers-layout folder. */
static int load_dir(pf_model_parts *m, pf_backend *be, const pf_model_spec *spec, pf_error *err) {
    const char *dir = spec->model;
    char path[4096];
    if (pf_model_dir_check(dir, err) || read_index(m, dir, err)) return -1;
    if (m->sdxl) m->sched.prediction_type = PF_PRED_DDIM_EPS; /* PeRFlow's SDXL models */
    if (read_scheduler(m, dir, err)) return -1;
    snprintf(path, sizeof path, "%s/tokenizer", dir);
    if (pf_tokenizer_load(&m->tok, path, err) || pf_clip_text_model_load_dir(&m->text_encoder, be, dir, err))
        return -1;
    if (m->sdxl) {
        snprintf(path, sizeof path, "%s/tokenizer_2", dir);
        if (pf_model_file(path, sizeof path, dir, "tokenizer_2", "vocab.json", NULL))
            return pf_fail(err, "%s: an SDXL model (model_index.json) without tokenizer_2/", dir);
        if (pf_model_file(path, sizeof path, dir, "text_encoder_2", "config.json", NULL))
            return pf_fail(err, "%s: an SDXL model (model_index.json) without text_encoder_2/", dir);
        snprintf(path, sizeof path, "%s/tokenizer_2", dir);
        if (pf_tokenizer_load(&m->tok2, path, err) ||
            pf_clip_text_model_load_component(&m->text_encoder2, be, dir, "text_encoder_2", err))
            return -1;
        if (!pf_clip_text_model_has_projection(m->text_encoder2))
            return pf_fail(err, "%s: text_encoder_2 has no text_projection (SDXL's is a "
                                "CLIPTextModelWithProjection)", dir);
    }
    return pf_unet_load_dir(&m->unet, be, dir, spec->delta, err) || pf_vae_load_dir(&m->vae, be, dir, err) ? -1 : 0;
}

int pf_model_load(pf_model_parts *out, pf_backend *be, const pf_model_spec *spec, pf_error *err) {
    memset(out, 0, sizeof *out);
    pf_perflow_config_default(&out->sched);
    out->sched.prediction_type = PF_PRED_DIFF_EPS; /* the released SD-1.5 PeRFlow models */
    if (spec->model_config || spec->n_loras)
        return pf_fail(err, "%s: %s not supported yet", spec->model, spec->n_loras ? "LoRAs are" : "--model-config is");
    if (load_dir(out, be, spec, err)) goto fail;
    const pf_unet_config *uc = pf_unet_get_config(out->unet);
    int D = pf_clip_text_model_config(out->text_encoder)->hidden_size +
            (out->sdxl ? pf_clip_text_model_config(out->text_encoder2)->hidden_size : 0);
    if (out->sdxl != uc->text_time) {
        pf_fail(err, "%s: %s", spec->model,
                out->sdxl ? "an SDXL pipeline whose UNet has no text_time embedding"
                          : "a UNet with SDXL's text_time embedding in a pipeline that is not SDXL");
        goto fail;
    }
    if (out->sdxl && uc->add_embed_in != pf_clip_text_model_config(out->text_encoder2)->projection_dim +
                                            6 * uc->addition_time_embed_dim) {
        pf_fail(err, "%s: the UNet's add_embedding takes %d features, text_encoder_2's projection_dim %d + 6 time "
                     "ids of %d give %d", spec->model, uc->add_embed_in,
                pf_clip_text_model_config(out->text_encoder2)->projection_dim, uc->addition_time_embed_dim,
                pf_clip_text_model_config(out->text_encoder2)->projection_dim + 6 * uc->addition_time_embed_dim);
        goto fail;
    }
    if (uc->cross_attention_dim != D) {
        pf_fail(err, "%s: the UNet's cross_attention_dim %d differs from the text encoders' hidden_size %d",
                spec->model, uc->cross_attention_dim, D);
        goto fail;
    }
    if (uc->in_channels != pf_vae_config_of(out->vae)->latent_channels) {
        pf_fail(err, "%s: the UNet's in_channels %d differ from the VAE's latent_channels %d", spec->model,
                uc->in_channels, pf_vae_config_of(out->vae)->latent_channels);
        goto fail;
    }
    return 0;
fail:
    pf_model_parts_free(out);
    return -1;
}
