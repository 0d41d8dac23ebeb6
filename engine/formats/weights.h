/* weights.h - named model weights, as model code asks for them, from one or
 * more safetensors files, with optional PeRFlow delta weights (W = W_base + dW)
 * and patches (the LoRAs of lora.h), delivered to a backend as tensors.
 *
 * A pf_weights is the set of tensors of one model component under the engine's
 * names (diffusers'). Each entry is a view of a tensor in a file: the whole
 * tensor, or a run of its rows (a slice of a fused in_proj), under a shape of
 * the same or smaller element count (a 1x1 convolution seen as a linear
 * layer). A plain diffusers file gives one entry per tensor; a sharded file
 * (*.safetensors.index.json) one per weight_map entry across its shards;
 * convert.h builds the entries of an LDM single file. Model code asks for
 * each parameter by name and the shape its config implies; a missing tensor
 * or a wrong shape is an input error naming the tensor (and both shapes). */
#ifndef PF_WEIGHTS_H
#define PF_WEIGHTS_H

#include "backend.h"
#include "safetensors.h"

typedef struct pf_weights pf_weights;

/* Opens a weight set: a .safetensors file, or a sharded set named by its
 * index (a path ending in ".json": {"weight_map": {tensor: shard file}}, the
 * shards beside it). Every file is validated at open; a missing, truncated or
 * invalid shard and an index entry whose shard lacks the tensor are errors
 * naming the index and the shard. On error returns -1 with *out NULL. */
int pf_weights_open(pf_weights **out, const char *path, pf_error *err);
/* Adds a delta (a path pf_weights_open takes): from now on every loaded tensor
 * is base + delta, summed in float32 before any patch and the conversion to the
 * backend dtype. The delta must have exactly the base's names (else the error
 * lists the first differing ones) and the same shape for each. */
int pf_weights_set_delta(pf_weights *w, const char *delta_path, pf_error *err);
/* NULL is a no-op. */
void pf_weights_close(pf_weights *w);

/* ---- building a set (weights_open, convert.c) ---- */

/* A new empty set; label names it in messages (usually the file's path). */
pf_weights *pf_weights_new(const char *label);
/* Hands st to w (closed with it) and returns it. */
const pf_safetensors *pf_weights_add_file(pf_weights *w, pf_safetensors *st);
/* Adds entry `name`: elements [first, first + numel(shape)) of t, a tensor of a
 * file added to w, seen with shape (ndim dims). The range must lie inside t
 * (an invariant: callers derive it from t's shape). */
void pf_weights_add(pf_weights *w, const char *name, const pf_safetensors *st, const pf_st_tensor *t, int64_t first,
                    int ndim, const int64_t *shape);
/* Adds entry `name`: the whole 2-D tensor t (R, C) seen transposed, (C, R);
 * read into a copy at each load. For LDM layouts that keep a matrix as x @ P
 * where diffusers keeps the Linear weight P^T (OpenCLIP's text_projection). */
void pf_weights_add_transposed(pf_weights *w, const char *name, const pf_safetensors *st, const pf_st_tensor *t);
/* Ends building: sorts the entries. Two entries with one name are an error
 * naming both sources (two tensors of a file that convert to the same name). */
int pf_weights_seal(pf_weights *w, pf_error *err);

/* ---- access ---- */

/* Loads tensor `name` with the expected shape onto be. Returns NULL and fills
 * err when the tensor is missing, has another shape or an unreadable dtype. */
pf_tensor *pf_weights_load(pf_weights *w, pf_backend *be, const char *name, int ndim,
                           const int64_t *shape, pf_error *err);
/* printf-style name: pf_weights_loadf(w, be, err, 2, (int64_t[]){768, 768}, "%s.q_proj.weight", p) */
pf_tensor *pf_weights_loadf(pf_weights *w, pf_backend *be, pf_error *err, int ndim,
                            const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Reads tensor `name` as pf_weights_load would deliver it (base + delta +
 * patches, float32) into dst (pf_weights_numel floats). -1 with err set when
 * it is missing or unreadable. */
int pf_weights_read(pf_weights *w, const char *name, float *dst, pf_error *err);
int pf_weights_has(const pf_weights *w, const char *name);
/* The number of entries, and entry i's name (sorted by name) and shape. */
int pf_weights_count(const pf_weights *w);
const char *pf_weights_name(const pf_weights *w, int i);
/* ndim of `name` with its shape in shape[PF_MAX_DIMS]; -1 when absent. */
int pf_weights_shape(const pf_weights *w, const char *name, int64_t *shape);
int64_t pf_weights_numel(const pf_weights *w, const char *name);
/* The file entry `name` is read from and that tensor's name there (for
 * messages and for LoRA names given in a file's own naming); NULL when absent. */
const pf_st_tensor *pf_weights_source(const pf_weights *w, const char *name, const pf_safetensors **file);
/* The label (a path) for messages. */
const char *pf_weights_label(const pf_weights *w);
/* The first file of the set (its path names the set in messages). */
const pf_safetensors *pf_weights_file(const pf_weights *w);

/* ---- patches ---- */

/* A change to one tensor's float32 host copy (ndim, shape: the entry's), made
 * after base + delta. Returns 0, or -1 with err set (the load then fails). */
typedef int (*pf_weights_patch_fn)(void *ctx, float *data, int ndim, const int64_t *shape, pf_error *err);
/* Adds a patch to entry `name` (which must exist: an invariant); patches run in
 * the order added, each time the tensor is loaded or read. ctx must outlive
 * every load. */
void pf_weights_add_patch(pf_weights *w, const char *name, pf_weights_patch_fn fn, void *ctx);
/* The number of entries with at least one patch: the weights the LoRAs change
 * (several LoRAs on one weight count it once). */
int pf_weights_patched(const pf_weights *w);

/* ---- sharded index files ---- */

/* The weight_map of a *.safetensors.index.json: count names, each with its
 * shard (file names only: a shard name holding '/' or naming "." or ".." is an
 * error, so an index cannot reach outside its folder). */
typedef struct pf_shard_index {
    int count;
    char **names, **shards; /* parallel arrays, in the file's order */
} pf_shard_index;
/* Parses the index text (len bytes, untrusted; label names it in messages).
 * On error returns -1 with err set and *out empty. */
int pf_shard_index_parse(pf_shard_index *out, const char *json, size_t len, const char *label, pf_error *err);
void pf_shard_index_free(pf_shard_index *idx);

/* Loads with a sticky failure, so that a model's loader reads as a list of its
 * weights: each tensor is prefix + the formatted name; after the first error
 * (its message in err) every further load is skipped and returns NULL, and
 * failed stays 1 for the loader to check once at the end. */
typedef struct pf_loader {
    pf_weights *w;
    pf_backend *be;
    const char *prefix;
    pf_error *err;
    int failed;
} pf_loader;
pf_tensor *pf_loader_get(pf_loader *l, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define PF_LD1(l, a, ...) pf_loader_get(l, 1, (int64_t[]){a}, __VA_ARGS__)
#define PF_LD2(l, a, b, ...) pf_loader_get(l, 2, (int64_t[]){a, b}, __VA_ARGS__)
#define PF_LD4(l, a, b, c, d, ...) pf_loader_get(l, 4, (int64_t[]){a, b, c, d}, __VA_ARGS__)

#endif
