/* model_source.h - what a job names as a model: one file by URL (a
 * .safetensors checkpoint, delta or LoRA) with an optional expected digest,
 * the base URL of a diffusers-layout model whose files are found through
 * its model_index.json (model_index.h says which) at <base>/<relative path>,
 * the layout model hubs serve (https://host/org/repo/resolve/main/unet/config.json),
 * or the URL of one diffusers component folder served on its own (a
 * ControlNetModel repository: <url>/config.json and
 * <url>/diffusion_pytorch_model[.fp16].safetensors), or the configs alone of a
 * diffusers model (for a single-file checkpoint that needs them). */
#ifndef PF_MODEL_SOURCE_H
#define PF_MODEL_SOURCE_H

#include <stddef.h>

#include "digest.h"
#include "error.h"
#include "url_policy.h"

typedef enum {
    PF_SOURCE_AUTO,      /* a URL whose last segment has an extension (x.safetensors) or that has a
                            query string is a file, anything else (.../resolve/main) a diffusers base */
    PF_SOURCE_FILE,      /* any single file */
    PF_SOURCE_DIFFUSERS, /* a diffusers model folder */
    PF_SOURCE_COMPONENT, /* one diffusers component folder (config.json + diffusion_pytorch_model weights);
                            never chosen by AUTO, which cannot tell it from a DIFFUSERS base URL */
    PF_SOURCE_CONFIGS,   /* a diffusers model folder without its weights: model_index.json, each component's
                            config, tokenizer files and scheduler config (a single-file checkpoint's
                            model_config); never chosen by AUTO */
    PF_SOURCE_IMAGE_ENCODER, /* a transformers CLIPVisionModelWithProjection folder (IP-Adapter's image
                            encoder): config.json, preprocessor_config.json and model weights; its digest
                            is its weights file's, as a COMPONENT's; never chosen by AUTO */
} pf_source_kind;

typedef struct pf_model_source {
    pf_source_kind kind;        /* FILE, DIFFUSERS, COMPONENT or CONFIGS once initialized */
    char url[PF_URL_MAX];       /* canonical (pf_url_format); a base or folder URL has no trailing '/' */
    char sha256[PF_SHA256_HEX]; /* expected digest of a FILE source, or of a COMPONENT's weights file
                                   (whichever variant is fetched); "" when not given */
    int prefer_fp16;            /* DIFFUSERS, COMPONENT: fetch the .fp16 weights variant where the server has it */
} pf_model_source;

/* Fills s from a URL as a job gives it. sha256 may be NULL or "" (unknown);
 * giving one for a DIFFUSERS or CONFIGS source is an error, as is a base or
 * folder URL with a query string. The URL policy is not applied here but at
 * fetch time. */
int pf_model_source_init(pf_model_source *s, pf_source_kind kind, const char *url, const char *sha256,
                         int prefer_fp16, pf_error *err);
/* out = the URL of relpath (a pf_relpath_valid path) under a DIFFUSERS, COMPONENT or CONFIGS source. */
int pf_model_source_file_url(char *out, size_t n, const pf_model_source *s, const char *relpath, pf_error *err);

#endif
