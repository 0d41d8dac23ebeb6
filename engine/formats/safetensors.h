/* safetensors.h - reader and writer for the safetensors format
 * (https://huggingface.co/docs/safetensors): 8-byte little-endian header
 * length N, N bytes of JSON header, then the data buffer.
 *
 * The reader maps the file read-only and trusts nothing in it: every offset,
 * shape, dtype and name is validated at open, so that pf_st_read_* can never
 * read outside the mapping. Tensor data is accessed lazily, one tensor at a
 * time, and converted to float32 on request. */
#ifndef PF_SAFETENSORS_H
#define PF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tensor.h"

/* Largest header we accept (the format's own reference limit is 100 MB). */
#define PF_ST_MAX_HEADER (100u * 1024u * 1024u)

typedef enum pf_st_dtype {
    PF_ST_F32, PF_ST_F16, PF_ST_BF16,           /* readable as float */
    PF_ST_F64, PF_ST_I64, PF_ST_I32, PF_ST_I16, PF_ST_I8, PF_ST_U8, PF_ST_BOOL,
    PF_ST_U16, PF_ST_U32, PF_ST_U64, PF_ST_F8_E4M3, PF_ST_F8_E5M2, /* known, not readable */
} pf_st_dtype;

typedef struct pf_st_tensor {
    char *name;                  /* valid UTF-8, unique in the file */
    pf_st_dtype dtype;
    int ndim;                    /* 0..PF_MAX_DIMS (0: a scalar) */
    int64_t shape[PF_MAX_DIMS];
    size_t begin, end;           /* byte span within the data buffer */
} pf_st_tensor;

typedef struct pf_safetensors {
    char *path;                  /* for error messages */
    const uint8_t *map;          /* whole file (NULL when parsed from memory by the fuzzer) */
    size_t map_size;
    const uint8_t *data;         /* start of the data buffer */
    size_t data_size;
    int count;
    pf_st_tensor *tensors;       /* sorted by name */
    int meta_count;
    char **meta_keys, **meta_values; /* "__metadata__" string pairs */
} pf_safetensors;

/* Opens and validates path. On error returns -1, *out is NULL, and err names the
 * file and the problem (one line). */
int pf_st_open(pf_safetensors **out, const char *path, pf_error *err);
/* Validates a complete file image held in memory (buf is not copied and must
 * outlive the result). Used by pf_st_open and the fuzz target. */
int pf_st_parse(pf_safetensors **out, const uint8_t *buf, size_t size, const char *name, pf_error *err);
void pf_st_close(pf_safetensors *st);

/* Lookup by exact name; NULL when absent. */
const pf_st_tensor *pf_st_find(const pf_safetensors *st, const char *name);
/* Value of a __metadata__ key, or NULL. */
const char *pf_st_meta(const pf_safetensors *st, const char *key);
const char *pf_st_dtype_name(pf_st_dtype dt);
/* s as a one-line printable string for an error message (control bytes as
 * \xNN, quotes escaped, cut with "..." past ~150 bytes), in one of a few
 * rotating thread-local buffers: a message may quote up to four names. Names
 * come from untrusted files; everything taken from one goes through this. */
const char *pf_st_quote(const char *s);
int64_t pf_st_numel(const pf_st_tensor *t);

/* Converts tensor t to float32 into dst (pf_st_numel(t) floats). Fails with a
 * clear error for dtypes other than F32/F16/BF16. */
int pf_st_read_f32(const pf_safetensors *st, const pf_st_tensor *t, float *dst, pf_error *err);
/* Converts elements [first, first + n) of t (in row-major order) to float32
 * into dst: a slice of a fused tensor without reading the rest. The range must
 * lie inside t (an invariant: callers compute it from t's shape). Fails as
 * pf_st_read_f32 does. */
int pf_st_read_f32_range(const pf_safetensors *st, const pf_st_tensor *t, int64_t first, int64_t n, float *dst,
                         pf_error *err);

/* One tensor to write: float32 data converted to dtype on write. */
typedef struct pf_st_entry {
    const char *name;
    pf_dtype dtype;
    int ndim;
    const int64_t *shape;
    const float *data;
} pf_st_entry;

/* Writes a safetensors file (to path.tmp, then renamed). meta is NULL or a
 * NULL-terminated list of key, value strings for __metadata__. */
int pf_st_write(const char *path, const pf_st_entry *entries, int count, const char *const *meta,
                pf_error *err);

#endif
