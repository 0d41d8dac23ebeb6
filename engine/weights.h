/* weights.h - named model weights from safetensors files, with optional PeRFlow
 * delta weights (W = W_base + dW), delivered to a backend as tensors.
 *
 * A pf_weights is the set of tensors of one model component (one or more
 * .safetensors files). Model code asks for each parameter by its checkpoint
 * name and the shape its config implies; a missing tensor or a wrong shape is
 * an input error naming the tensor (and both shapes). */
#ifndef PF_WEIGHTS_H
#define PF_WEIGHTS_H

#include "backend.h"
#include "safetensors.h"

typedef struct pf_weights pf_weights;

/* Opens one safetensors file as a weight set. */
int pf_weights_open(pf_weights **out, const char *path, pf_error *err);
/* Adds a delta: from now on every loaded tensor is base + delta, summed in
 * float32 before conversion to the backend dtype. The delta must have exactly
 * the base's key set (else the error lists the first differing keys) and the
 * same shape for every key. */
int pf_weights_set_delta(pf_weights *w, const char *delta_path, pf_error *err);
void pf_weights_close(pf_weights *w);

/* Loads tensor `name` with the expected shape onto be. Returns NULL and fills
 * err when the tensor is missing, has another shape or an unreadable dtype. */
pf_tensor *pf_weights_load(pf_weights *w, pf_backend *be, const char *name, int ndim,
                           const int64_t *shape, pf_error *err);
/* printf-style name: pf_weights_loadf(w, be, err, 2, (int64_t[]){768, 768}, "%s.q_proj.weight", p) */
pf_tensor *pf_weights_loadf(pf_weights *w, pf_backend *be, pf_error *err, int ndim,
                            const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
int pf_weights_has(const pf_weights *w, const char *name);

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
const pf_safetensors *pf_weights_file(const pf_weights *w);

#endif
