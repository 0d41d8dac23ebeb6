/* tensor.c - tensor headers, views, host transfer and float conversions.
 * Storage itself comes from the tensor's backend (backend.h). */
#include "tensor.h"

#include <math.h>
#include <string.h>

#include "backend.h"

size_t pf_dtype_size(pf_dtype dt) { return dt == PF_F32 ? 4 : 2; }

const char *pf_dtype_name(pf_dtype dt) {
    switch (dt) {
    case PF_F32: return "F32";
    case PF_F16: return "F16";
    case PF_BF16: return "BF16";
    }
    return "?";
}

int64_t pf_numel(const pf_tensor *t) { return pf_numel_from(t, 0); }

int64_t pf_numel_from(const pf_tensor *t, int from) {
    int64_t n = 1;
    for (int i = from; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t pf_nbytes(const pf_tensor *t) { return (size_t)pf_numel(t) * pf_dtype_size(t->dtype); }

int pf_same_shape(const pf_tensor *a, const pf_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

char *pf_shape_str_raw(int ndim, const int64_t *shape, char *buf, size_t n) {
    size_t used = 0;
    used += (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, ndim == 1 ? ",)" : ")");
    return buf;
}

char *pf_shape_str(const pf_tensor *t, char *buf, size_t n) {
    return pf_shape_str_raw(t->ndim, t->shape, buf, n);
}

static pf_tensor *header(pf_backend *be, pf_dtype dt, int ndim, const int64_t *shape) {
    PF_CHECK(ndim >= 1 && ndim <= PF_MAX_DIMS);
    pf_tensor *t = PF_CALLOC(1, sizeof *t);
    t->be = be;
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < PF_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    for (int i = 0; i < ndim; i++) PF_CHECK(shape[i] >= 0);
    return t;
}

pf_tensor *pf_new_dtype(pf_backend *be, pf_dtype dt, int ndim, const int64_t *shape) {
    pf_tensor *t = header(be, dt, ndim, shape);
    t->owns = 1;
    if (be->failed) return t;
    t->data = be->ops->alloc(be, pf_nbytes(t));
    if (!t->data) {
        char s[128];
        pf_backend_set_error(be, "%s backend: out of memory allocating a tensor %s (%zu bytes)",
                             be->name, pf_shape_str(t, s, sizeof s), pf_nbytes(t));
    }
    return t;
}

pf_tensor *pf_new(pf_backend *be, int ndim, const int64_t *shape) {
    return pf_new_dtype(be, be->compute_dtype, ndim, shape);
}
pf_tensor *pf_new1(pf_backend *be, int64_t d0) { return pf_new(be, 1, (int64_t[]){d0}); }
pf_tensor *pf_new2(pf_backend *be, int64_t d0, int64_t d1) {
    return pf_new(be, 2, (int64_t[]){d0, d1});
}
pf_tensor *pf_new3(pf_backend *be, int64_t d0, int64_t d1, int64_t d2) {
    return pf_new(be, 3, (int64_t[]){d0, d1, d2});
}
pf_tensor *pf_new4(pf_backend *be, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    return pf_new(be, 4, (int64_t[]){d0, d1, d2, d3});
}
pf_tensor *pf_new_like(const pf_tensor *t) { return pf_new_dtype(t->be, t->dtype, t->ndim, t->shape); }

pf_tensor *pf_view(const pf_tensor *t, int ndim, const int64_t *shape) {
    pf_tensor *v = header(t->be, t->dtype, ndim, shape);
    PF_CHECK(pf_numel(v) == pf_numel(t));
    v->data = t->data;
    v->owns = 0;
    return v;
}
pf_tensor *pf_view2(const pf_tensor *t, int64_t d0, int64_t d1) {
    return pf_view(t, 2, (int64_t[]){d0, d1});
}
pf_tensor *pf_view3(const pf_tensor *t, int64_t d0, int64_t d1, int64_t d2) {
    return pf_view(t, 3, (int64_t[]){d0, d1, d2});
}
pf_tensor *pf_view4(const pf_tensor *t, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    return pf_view(t, 4, (int64_t[]){d0, d1, d2, d3});
}

pf_tensor *pf_slice0(const pf_tensor *t, int64_t start, int64_t count) {
    PF_CHECK(start >= 0 && count >= 0 && start + count <= t->shape[0]);
    int64_t shape[PF_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = count;
    pf_tensor *v = header(t->be, t->dtype, t->ndim, shape);
    size_t row = (size_t)pf_numel_from(t, 1) * pf_dtype_size(t->dtype);
    v->data = t->data ? (char *)t->data + (size_t)start * row : NULL;
    v->owns = 0;
    return v;
}

void pf_free(pf_tensor *t) {
    if (!t) return;
    if (t->owns && t->data) t->be->ops->release(t->be, t->data);
    free(t);
}

pf_tensor *pf_from_host(pf_backend *be, int ndim, const int64_t *shape, const float *src) {
    pf_tensor *t = pf_new(be, ndim, shape);
    if (!be->failed) be->ops->upload(be, t, src);
    return t;
}

void pf_upload(pf_tensor *t, const float *src) {
    if (!t->be->failed) t->be->ops->upload(t->be, t, src);
}

void pf_to_host(float *dst, const pf_tensor *t) {
    if (t->be->failed) {
        memset(dst, 0, (size_t)pf_numel(t) * sizeof(float));
        return;
    }
    t->be->ops->download(t->be, dst, t);
}

/* IEEE half conversion, round to nearest even, with subnormals, inf and NaN. */
uint16_t pf_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t man = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0)); /* inf / NaN */
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    if (e <= 0) {                                     /* subnormal or zero */
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;
        int shift = 14 - e;
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++; /* may carry into exp: fine */
    return (uint16_t)half;
}

float pf_f16_to_f32(uint16_t h) {
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t x;
    if (exp == 0) {
        if (man == 0) {
            x = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            x = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        x = sign | 0x7f800000u | (man << 13);
    } else {
        x = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t pf_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float pf_bf16_to_f32(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

void pf_convert_to_f32(float *dst, const void *src, pf_dtype src_dt, size_t n) {
    const uint16_t *s16 = src;
    switch (src_dt) {
    case PF_F32: memcpy(dst, src, n * 4); break;
    case PF_F16:
        for (size_t i = 0; i < n; i++) dst[i] = pf_f16_to_f32(s16[i]);
        break;
    case PF_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = pf_bf16_to_f32(s16[i]);
        break;
    }
}

void pf_convert_from_f32(void *dst, pf_dtype dst_dt, const float *src, size_t n) {
    uint16_t *d16 = dst;
    switch (dst_dt) {
    case PF_F32: memcpy(dst, src, n * 4); break;
    case PF_F16:
        for (size_t i = 0; i < n; i++) d16[i] = pf_f32_to_f16(src[i]);
        break;
    case PF_BF16:
        for (size_t i = 0; i < n; i++) d16[i] = pf_f32_to_bf16(src[i]);
        break;
    }
}
