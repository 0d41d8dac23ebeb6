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
 * image encoder) and null entries are skipped; any other class is an error. */
#ifndef PF_MODEL_INDEX_H
#define PF_MODEL_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "error.h"

#define PF_MODEL_MAX_FILES 64
#define PF_MODEL_INDEX_MAX_BYTES (256 * 1024)
#define PF_RELPATH_MAX 256

typedef struct pf_model_file {
    char path[PF_RELPATH_MAX];     /* relative to the model's base URL, "unet/config.json" */
    char fallback[PF_RELPATH_MAX]; /* tried when path is absent (HTTP 404): the other weights variant; or "" */
    int optional;                  /* absent (404) is fine */
} pf_model_file;

/* Plans the files of the model whose model_index.json is json (len bytes):
 * model_index.json itself first, then each component's files, at most max.
 * prefer_fp16 asks for the .fp16 weights variant first. */
int pf_model_index_plan(pf_model_file *files, int *count, int max, const char *json, size_t len, int prefer_fp16,
                        pf_error *err);

/* Plans the files of a lone component folder (a PF_SOURCE_COMPONENT, such as a
 * ControlNetModel repository): config.json, then diffusion_pytorch_model.safetensors
 * with the .fp16 variant as fallback (or the other way round with prefer_fp16).
 * Fails only when max is too small. */
int pf_model_component_plan(pf_model_file *files, int *count, int max, int prefer_fp16, pf_error *err);

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
