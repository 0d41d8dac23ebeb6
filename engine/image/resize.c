/* resize.c - Lanczos and bicubic resizing of 8-bit RGB exactly as Pillow resizes (its
 * libImaging/Resample.c, written afresh here), and the refiner's size rule.
 *
 * Equality with Pillow is a matter of doing the same arithmetic in the same order,
 * so this checklist is what the code must keep (tests/test_image.c checks the
 * result against Pillow on every kind of case):
 *   - Each output sample o of an axis (in samples -> out samples) has its centre
 *     at (o + 0.5) * scale, scale = in / out in double (in passing through float,
 *     as Pillow's box does). Shrinking widens the filter: support = 3 * max(scale,
 *     1) source samples, and the filter is evaluated at distance / max(scale, 1).
 *   - Taps run from (int)(centre - support + 0.5) to (int)(centre + support + 0.5),
 *     both truncated toward zero and clipped to the image; weight i is
 *     lanczos((i + first - centre + 0.5) / max(scale, 1)) (the division done as a
 *     product with the reciprocal), lanczos(x) = sinc(x) sinc(x / 3) on [-3, 3),
 *     sinc(x) = sin(pi x) / (pi x) (bicubic: support 2, Pillow's bicubic_filter,
 *     a = -0.5, in place of lanczos); the weights are divided (not multiplied by
 *     the reciprocal) by their sum, in order.
 *   - Weights become fixed point with FIXED_BITS fractional bits, rounded half
 *     away from zero; a sample is 2^(FIXED_BITS - 1) + sum(pixel * weight) in
 *     32-bit integers, then >> FIXED_BITS, clamped to 0..255.
 *   - Two passes through an 8-bit image: horizontal then vertical, except when
 *     the height loses more than twice as many pixels as the width does, then
 *     vertical first. A pass is skipped when its axis keeps its size; with both
 *     the same, the image is copied. */
#include "resize.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

/* 8 bits of result and 2 of headroom, as weights can sum past 1 on the way (the
 * negative lobes) in a 32-bit sum: 32 - 8 - 2. */
#define FIXED_BITS 22

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return sin(x) / x;
}

static double lanczos3(double x) { return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0; }

/* Pillow's bicubic_filter: Keys' cubic with a = -0.5 on [-2, 2]. */
static double bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* A resampling filter and its support in source samples at scale 1. */
typedef struct filter {
    double (*fn)(double);
    double support;
} filter;

static const filter LANCZOS = {lanczos3, 3.0}, BICUBIC = {bicubic, 2.0};

/* The taps of one axis: output sample o reads count[o] source samples from
 * first[o], weighted by w[o * stride ...]. */
typedef struct taps {
    int *first, *count;
    int32_t *w;
    int stride;
} taps;

static void taps_free(taps *t) {
    free(t->first);
    free(t->count);
    free(t->w);
}

/* Taps for resizing an axis of in samples to out. Returns 0, or -1 with err
 * when memory runs out (t then needs no freeing). */
static int taps_make(taps *t, int in, int out, const filter *f, pf_error *err) {
    double scale = (double)(float)in / out;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = f->support * fscale, inv = 1.0 / fscale;
    int stride = (int)ceil(support) * 2 + 1;
    t->stride = stride;
    t->first = malloc((size_t)out * sizeof *t->first);
    t->count = malloc((size_t)out * sizeof *t->count);
    t->w = malloc((size_t)out * stride * sizeof *t->w);
    double *k = malloc((size_t)stride * sizeof *k);
    if (!t->first || !t->count || !t->w || !k) {
        taps_free(t);
        free(k);
        return pf_fail(err, "resize: out of memory for %d x %d weights", out, stride);
    }
    for (int o = 0; o < out; o++) {
        double centre = (o + 0.5) * scale;
        int lo = (int)(centre - support + 0.5), hi = (int)(centre + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        int n = hi - lo;
        PF_CHECK(n >= 1 && n <= stride);
        double sum = 0.0;
        for (int i = 0; i < n; i++) {
            k[i] = f->fn((i + lo - centre + 0.5) * inv);
            sum += k[i];
        }
        int32_t *w = t->w + (size_t)o * stride;
        for (int i = 0; i < n; i++) {
            double v = (sum != 0.0 ? k[i] / sum : k[i]) * (1 << FIXED_BITS);
            w[i] = (int32_t)(v < 0 ? v - 0.5 : v + 0.5);
        }
        t->first[o] = lo;
        t->count[o] = n;
    }
    free(k);
    return 0;
}

static uint8_t clip8(int32_t acc) {
    if (acc < 0) return 0;
    acc >>= FIXED_BITS;
    return (uint8_t)(acc > 255 ? 255 : acc);
}

/* dst (dw x h) = src (sw x h) resized along x. The sums fit in 32 bits: the
 * weights of a sample add to 1 (2^22) and their negative part is small, so a sum
 * stays well within 255 * 1.2 * 2^22 < 2^31. */
static void pass_horizontal(uint8_t *dst, int dw, const uint8_t *src, int sw, int h, const taps *t) {
#pragma omp parallel for schedule(static) if ((long)dw * h > 65536)
    for (int y = 0; y < h; y++) {
        const uint8_t *row = src + (size_t)y * sw * 3;
        uint8_t *out = dst + (size_t)y * dw * 3;
        for (int x = 0; x < dw; x++) {
            const int32_t *w = t->w + (size_t)x * t->stride;
            const uint8_t *p = row + (size_t)t->first[x] * 3;
            int32_t r = 1 << (FIXED_BITS - 1), g = r, b = r;
            for (int i = 0; i < t->count[x]; i++, p += 3) {
                r += p[0] * w[i];
                g += p[1] * w[i];
                b += p[2] * w[i];
            }
            out[3 * x + 0] = clip8(r);
            out[3 * x + 1] = clip8(g);
            out[3 * x + 2] = clip8(b);
        }
    }
}

/* dst (w x dh) = src (w x sh) resized along y. */
static void pass_vertical(uint8_t *dst, int dh, const uint8_t *src, int w, const taps *t) {
#pragma omp parallel for schedule(static) if ((long)w * dh > 65536)
    for (int y = 0; y < dh; y++) {
        const int32_t *k = t->w + (size_t)y * t->stride;
        const uint8_t *col = src + (size_t)t->first[y] * w * 3;
        uint8_t *out = dst + (size_t)y * w * 3;
        for (int x = 0; x < 3 * w; x++) {
            int32_t acc = 1 << (FIXED_BITS - 1);
            for (int i = 0; i < t->count[y]; i++) acc += col[(size_t)i * w * 3 + x] * k[i];
            out[x] = clip8(acc);
        }
    }
}

/* Both filters' resize: Pillow's ImagingResample for an RGB image. */
static int resize_with(uint8_t *dst, int dw, int dh, const uint8_t *src, int sw, int sh, const filter *f,
                       pf_error *err) {
    if (sw < 1 || sh < 1 || dw < 1 || dh < 1 || sw > PF_IMAGE_MAX_SIDE || sh > PF_IMAGE_MAX_SIDE ||
        dw > PF_IMAGE_MAX_SIDE || dh > PF_IMAGE_MAX_SIDE)
        return pf_fail(err, "resize: %dx%d to %dx%d: sizes must be 1 to %d", sw, sh, dw, dh, PF_IMAGE_MAX_SIDE);
    int need_h = dw != sw, need_v = dh != sh;
    if (!need_h && !need_v) {
        memcpy(dst, src, (size_t)sw * sh * 3);
        return 0;
    }
    taps th = {0}, tv = {0};
    if (need_h && taps_make(&th, sw, dw, f, err)) return -1;
    if (need_v && taps_make(&tv, sh, dh, f, err)) {
        taps_free(&th);
        return -1;
    }
    int rc = 0;
    if (need_h && need_v) {
        int horizontal_first = !(sh - dh > 0 && sh - dh > (sw - dw) * 2);
        size_t mid_n = horizontal_first ? (size_t)dw * sh * 3 : (size_t)sw * dh * 3;
        uint8_t *mid = malloc(mid_n);
        if (!mid) {
            rc = pf_fail(err, "resize: out of memory for a %zu-byte intermediate image", mid_n);
        } else if (horizontal_first) {
            pass_horizontal(mid, dw, src, sw, sh, &th);
            pass_vertical(dst, dh, mid, dw, &tv);
        } else {
            pass_vertical(mid, dh, src, sw, &tv);
            pass_horizontal(dst, dw, mid, sw, dh, &th);
        }
        free(mid);
    } else if (need_h) {
        pass_horizontal(dst, dw, src, sw, sh, &th);
    } else {
        pass_vertical(dst, dh, src, sw, &tv);
    }
    taps_free(&th);
    taps_free(&tv);
    return rc;
}

int pf_resize_lanczos(uint8_t *dst, int dw, int dh, const uint8_t *src, int sw, int sh, pf_error *err) {
    return resize_with(dst, dw, dh, src, sw, sh, &LANCZOS, err);
}

int pf_resize_bicubic(uint8_t *dst, int dw, int dh, const uint8_t *src, int sw, int sh, pf_error *err) {
    return resize_with(dst, dw, dh, src, sw, sh, &BICUBIC, err);
}

/* One side: int(round(side * k / 64.0)) * 64. nearbyint in the default rounding
 * mode rounds halves to even, as Python's round() does for floats; the double
 * operations are Python's, in its order. */
static int refine_side(int side, double k) {
    double r = nearbyint(side * k / 64.0);
    return r > INT32_MAX / 64 ? INT32_MAX / 64 * 64 : (int)r * 64;
}

void pf_refine_size(int *ow, int *oh, int w, int h, int target) {
    PF_CHECK(w > 0 && h > 0 && target > 0);
    double k = (double)target / (w < h ? w : h); /* Python's int / int: the correctly rounded quotient */
    *ow = refine_side(w, k);
    *oh = refine_side(h, k);
}
