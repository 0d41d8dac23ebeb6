/* checkpoint.c - loading a model as users have it (checkpoint.h). */
#include "checkpoint.h"

#include <string.h>

#include "model_dir.h"

void pf_model_parts_free(pf_model_parts *m) {
    pf_tokenizer_free(m->tok);
    pf_clip_text_model_free(m->text_encoder);
    pf_unet_free(m->unet);
    pf_vae_free(m->vae);
    memset(m, 0, sizeof *m);
}

/* A diffusers-layout folder. */
static int load_dir(pf_model_parts *m, pf_backend *be, const pf_model_spec *spec, pf_error *err) {
    const char *dir = spec->model;
    char path[4096];
    if (pf_model_dir_check(dir, err)) return -1;
    /* The scheduler config is optional: a base model folder carries its original
     * scheduler's config, whose beta keys PeRFlow shares; PeRFlow keys take defaults. */
    if (pf_model_file(path, sizeof path, dir, "scheduler", "scheduler_config.json", NULL) == 0 &&
        pf_perflow_config_load(&m->sched, path, err))
        return -1;
    snprintf(path, sizeof path, "%s/tokenizer", dir);
    return pf_tokenizer_load(&m->tok, path, err) || pf_clip_text_model_load_dir(&m->text_encoder, be, dir, err) ||
                   pf_unet_load_dir(&m->unet, be, dir, spec->delta, err) || pf_vae_load_dir(&m->vae, be, dir, err)
               ? -1
               : 0;
}

int pf_model_load(pf_model_parts *out, pf_backend *be, const pf_model_spec *spec, pf_error *err) {
    memset(out, 0, sizeof *out);
    pf_perflow_config_default(&out->sched);
    out->sched.prediction_type = PF_PRED_DIFF_EPS; /* the released SD-1.5 PeRFlow models */
    if (spec->model_config || spec->n_loras)
        return pf_fail(err, "%s: %s not supported yet", spec->model, spec->n_loras ? "LoRAs are" : "--model-config is");
    if (load_dir(out, be, spec, err)) goto fail;
    const pf_unet_config *uc = pf_unet_get_config(out->unet);
    int D = pf_clip_text_model_config(out->text_encoder)->hidden_size;
    if (uc->cross_attention_dim != D) {
        pf_fail(err, "%s: the UNet's cross_attention_dim %d differs from the text encoder's hidden_size %d",
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
