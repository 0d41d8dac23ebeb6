/* model_index.h - from a diffusers model_index.json to the list of files a
 * model source needs, and the manifest the cache keeps for each model.
 *
 * model_index.json comes from a server and is treated as hostile: component
 * names must be plain path segments, classes must be ones the engine loads,
 * sizes and counts are capped. The files per component follow the layout that
 * diffusers writes and model hubs serve (<base>/<component>/<file>):
 *   CLIPTokenizer[Fast]      vocab.json, merges.txt (+ tokenizer_config.json,
 *                            special_tokens_map.json when present)
 *   CLIPTextModel*           config.json, model[.fp16].safetensors
 *   UNet2DConditionModel, AutoencoderKL, ControlNetModel
 *                            config.json, diffusion_pytorch_model[.fp16].safetensors
 *   *Scheduler               scheduler_config.json
 * Components the engine does not run (safety checker, feature extractor,
 * image encoder) and null entries are skipped; any other class is an error.
 *
 * Sharded weights. Where a component's weights file is absent, its sharded
 * form is tried in its place, as the engine looks for it (engine/formats/model_dir.c):
 * <stem>.safetensors.index.json for <stem>.safetensors and
 * <stem>.safetensors.index.fp16.json for <stem>.fp16.safetensors. An index
 * that is found brings the shards its weight_map names (pf_model_shard_plan),
 * which sit beside it. */
#ifndef PF_MODEL_INDEX_H
#define PF_MODEL_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "error.h"

#define PF_MODEL_MAX_FILES 64
#define PF_MODEL_INDEX_MAX_BYTES (256 * 1024)
#define PF_RELPATH_MAX 256

#define PF_SHARD_INDEX_MAX_BYTES (4 * 1024 * 1024) /* a weights index: SDXL's UNet's is ~170 KB */

typedef struct pf_model_file {
    char path[PF_RELPATH_MAX];     /* relative to the model's base URL, "unet/config.json" */
    char fallback[PF_RELPATH_MAX]; /* tried when path is absent (HTTP 404): the other weights variant; or "" */
    int optional;                  /* absent (404) is fine */
    int weights;                   /* path and fallback are weights files: when one is absent, its sharded form
                                      (pf_model_shard_index_name) is tried right after it */
} pf_model_file;

/* Plans the files of the model whose model_index.json is json (len bytes):
 * model_index.json itself first, then each component's files, at most max.
 * prefer_fp16 asks for the .fp16 weights variant first. */
int pf_model_index_plan(pf_model_file *files, int *count, int max, const char *json, size_t len, int prefer_fp16,
                        pf_error *err);

/* pf_model_index_plan without any weights: model_index.json and each
 * component's configs, tokenizer files and scheduler config (what a
 * single-file checkpoint takes from a diffusers folder, pf_model_spec's
 * model_config). */
int pf_model_index_plan_configs(pf_model_file *files, int *count, int max, const char *json, size_t len,
                                pf_error *err);

/* The sharded form of a weights file as diffusers names it:
 * "unet/diffusion_pytorch_model.safetensors" -> "unet/diffusion_pytorch_model.safetensors.index.json",
 * "text_encoder/model.fp16.safetensors" -> "text_encoder/model.safetensors.index.fp16.json".
 * Returns 0, or -1 (err may be NULL) when weights_path does not end in
 * .safetensors or the name would not be a valid relative path. */
int pf_model_shard_index_name(char *out, size_t n, const char *weights_path, pf_error *err);
/* 1 when path names a weights index (*.safetensors.index.json or *.safetensors.index.fp16.json). */
int pf_model_is_shard_index(const char *path);

/* Appends to files[*count..max) the shards that the weights index at
 * index_path (a relative path as planned, "unet/x.safetensors.index.json")
 * names: each distinct file of its "weight_map", as a required file beside
 * the index. json (len bytes, at most PF_SHARD_INDEX_MAX_BYTES) comes from a
 * server: shard names must be plain file names ending in .safetensors, and at
 * least one must be named. On error *count is unchanged and err names the
 * index. */
int pf_model_shard_plan(pf_model_file *files, int *count, int max, const char *index_path, const char *json,
                        size_t len, pf_error *err);

/* Plans the files of a lone component folder (a PF_SOURCE_COMPONENT, such as a
 * ControlNetModel repository): config.json, then diffusion_pytorch_model.safetensors
 * with the .fp16 variant as fallback (or the other way round with prefer_fp16).
 * Fails only when max is too small. */
int pf_model_component_plan(pf_model_file *files, int *count, int max, int prefer_fp16, pf_error *err);

/* The same for an image encoder folder (PF_SOURCE_IMAGE_ENCODER): config.json,
 * model.safetensors (the .fp16 variant as fallback, or first with prefer_fp16)
 * and preprocessor_config.json. */
int pf_model_image_encoder_plan(pf_model_file *files, int *count, int max, int prefer_fp16, pf_error *err);

/* 1 when p is a relative path of at most two segments of [A-Za-z0-9._-],
 * none empty, "." or "..", at most PF_RELPATH_MAX - 1 bytes; else 0. */
int pf_relpath_valid(const char *p);

/* One file of a model as cached: where it sits in the model folder and the blob it is. */
typedef struct pf_manifest_file {
    char path[PF_RELPATH_MAX];
    char sha256[PF_SHA256_HEX];
    uint64_t size;
} pf_manifest_file;

/* The manifest as JSON, {"version": 1, "source": URL, "files": [{"path", "sha256", "size"}]},
 * malloc'd. */
char *pf_manifest_format(const pf_manifest_file *files, int count, const char *source_url);
/* Parses a manifest (read back from the cache, so validated like any input):
 * at most max files into files. */
int pf_manifest_parse(pf_manifest_file *files, int *count, int max, const char *json, size_t len, pf_error *err);

#endif
