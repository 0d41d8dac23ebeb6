/* model_dir.h - model folders in diffusers layout:
 *
 *   model_index.json
 *   text_encoder/config.json + model[.fp16].safetensors
 *   tokenizer/vocab.json + merges.txt (+ tokenizer_config.json, special_tokens_map.json)
 *   unet/config.json + diffusion_pytorch_model[.fp16].safetensors
 *   vae/config.json  + diffusion_pytorch_model[.fp16].safetensors
 *   scheduler/scheduler_config.json
 *
 * Any component's weights may be sharded: STEM.safetensors.index.json (its
 * weight_map names the shards beside it), and for the fp16 variant
 * STEM.safetensors.index.fp16.json, as diffusers and transformers write them. */
#ifndef PF_MODEL_DIR_H
#define PF_MODEL_DIR_H

#include <stddef.h>

#include "error.h"

/* Checks that root is a directory holding a readable model_index.json object. */
int pf_model_dir_check(const char *root, pf_error *err);
/* out = root/component/file (component may be NULL: root/file); error when it is
 * not a readable regular file. */
int pf_model_file(char *out, size_t n, const char *root, const char *component, const char *file, pf_error *err);
/* Finds the weights of a component: for the text encoder model.safetensors, else
 * diffusion_pytorch_model.safetensors, or the sharded set's index beside it
 * (STEM.safetensors.index.json); the fp16 variant (STEM.fp16.safetensors,
 * STEM.safetensors.index.fp16.json) when the full-precision one is absent, or
 * first when prefer_fp16. out is a path pf_weights_open takes. component may be
 * NULL (a component folder given directly, e.g. a delta's unet/). */
int pf_model_weights(char *out, size_t n, const char *root, const char *component, int prefer_fp16,
                     pf_error *err);

#endif
