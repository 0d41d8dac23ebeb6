/* tensor.h - the engine's tensor: a shape, a dtype and storage on a backend.
 *
 * Layout is always contiguous row-major (the last dimension varies fastest),
 * images are NCHW like PyTorch. A tensor either owns its storage or is a view
 * (pf_view) of another tensor's storage; views must not outlive their parent.
 *
 * Errors: tensor creation can fail (out of memory on a device). Model code
 * stays readable by using the backend's sticky error: a failed pf_new returns a
 * tensor with data == NULL and marks the backend failed; every op on a failed
 * backend does nothing; model code checks pf_backend_ok() once per forward. */
#ifndef PF_TENSOR_H
#define PF_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum pf_dtype { PF_F32 = 0, PF_F16 = 1, PF_BF16 = 2 } pf_dtype;

#define PF_MAX_DIMS 5

typedef struct pf_backend pf_backend;

typedef struct pf_tensor {
    pf_backend *be;              /* backend whose memory holds data */
    pf_dtype dtype;
    int ndim;                    /* 1..PF_MAX_DIMS */
    int64_t shape[PF_MAX_DIMS];  /* shape[ndim..] are 1 */
    void *data;                  /* backend memory (host pointer on the CPU backend) */
    int owns;                    /* 1: pf_free releases data; 0: a view */
} pf_tensor;

size_t pf_dtype_size(pf_dtype dt);
const char *pf_dtype_name(pf_dtype dt);

int64_t pf_numel(const pf_tensor *t);
size_t pf_nbytes(const pf_tensor *t);
/* Product of shape[from..ndim-1] (from may equal ndim, giving 1). */
int64_t pf_numel_from(const pf_tensor *t, int from);
int pf_same_shape(const pf_tensor *a, const pf_tensor *b);
/* Writes "(2, 77, 768)" into buf; returns buf. */
char *pf_shape_str(const pf_tensor *t, char *buf, size_t n);
char *pf_shape_str_raw(int ndim, const int64_t *shape, char *buf, size_t n);

/* New tensor with uninitialised storage in the backend's compute dtype. */
pf_tensor *pf_new(pf_backend *be, int ndim, const int64_t *shape);
pf_tensor *pf_new1(pf_backend *be, int64_t d0);
pf_tensor *pf_new2(pf_backend *be, int64_t d0, int64_t d1);
pf_tensor *pf_new3(pf_backend *be, int64_t d0, int64_t d1, int64_t d2);
pf_tensor *pf_new4(pf_backend *be, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* New tensor of an explicit dtype (storage types; ops only take the compute dtype). */
pf_tensor *pf_new_dtype(pf_backend *be, pf_dtype dt, int ndim, const int64_t *shape);
/* New tensor shaped like t. */
pf_tensor *pf_new_like(const pf_tensor *t);
/* View of t's storage with another shape of the same numel (no copy). */
pf_tensor *pf_view(const pf_tensor *t, int ndim, const int64_t *shape);
pf_tensor *pf_view2(const pf_tensor *t, int64_t d0, int64_t d1);
pf_tensor *pf_view3(const pf_tensor *t, int64_t d0, int64_t d1, int64_t d2);
pf_tensor *pf_view4(const pf_tensor *t, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* View of rows [start, start+count) along dimension 0 (no copy). */
pf_tensor *pf_slice0(const pf_tensor *t, int64_t start, int64_t count);
/* Releases t (and its storage when it owns it). NULL is a no-op. */
void pf_free(pf_tensor *t);

/* Host <-> backend transfer in float32 (the backend converts to/from its dtype).
 * n must equal pf_numel(t). */
pf_tensor *pf_from_host(pf_backend *be, int ndim, const int64_t *shape, const float *src);
void pf_to_host(float *dst, const pf_tensor *t);
/* Overwrites an existing tensor (or view) with n = pf_numel(t) host floats. */
void pf_upload(pf_tensor *t, const float *src);

/* float32 <-> f16/bf16 conversion on the host (round to nearest even). */
uint16_t pf_f32_to_f16(float f);
float pf_f16_to_f32(uint16_t h);
uint16_t pf_f32_to_bf16(float f);
float pf_bf16_to_f32(uint16_t h);
/* Converts n elements of src (dtype src_dt) into float32 dst. */
void pf_convert_to_f32(float *dst, const void *src, pf_dtype src_dt, size_t n);
void pf_convert_from_f32(void *dst, pf_dtype dst_dt, const float *src, size_t n);

#endif
