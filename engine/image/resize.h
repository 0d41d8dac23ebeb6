/* resize.h - Lanczos and bicubic resizing of 8-bit RGB images, equal byte for byte to
 * Pillow's Image.resize(size, Image.LANCZOS / Image.BICUBIC), and the refiner's choice of output size. */
#ifndef PF_RESIZE_H
#define PF_RESIZE_H

#include <stdint.h>

#include "error.h"

/* Resizes src (sw x sh pixels, 8-bit RGB interleaved, rows top to bottom) to dst
 * (dw x dh, the same layout; the caller allocates dw * dh * 3 bytes, which must
 * not overlap src). The result is Pillow's (the version pinned in
 * tests/reference/requirements.txt) img.resize((dw, dh), Image.LANCZOS) for an
 * RGB image, byte for byte, up or down, at any ratio, each axis on its own: the
 * same Lanczos-3 weights computed in double (support widened by the ratio when
 * shrinking), rounded to the same fixed point, the same two separable passes
 * through an 8-bit intermediate in the same order (horizontal first unless the
 * height shrinks by more than twice as many pixels as the width), a pass skipped
 * where that side keeps its size, and a plain copy when neither changes. Like
 * resize() with its default reducing_gap=None, it never uses reduce().
 * Returns 0, or -1 with err set when a size is not 1..PF_IMAGE_MAX_SIDE or memory
 * runs out (dst is then unspecified). */
int pf_resize_lanczos(uint8_t *dst, int dw, int dh, const uint8_t *src, int sw, int sh, pf_error *err);

/* The same with Pillow's Image.BICUBIC (support 2, a = -0.5, the rest as for
 * Lanczos): what transformers' CLIPImageProcessor resizes with (resample=3). */
int pf_resize_bicubic(uint8_t *dst, int dw, int dh, const uint8_t *src, int sw, int sh, pf_error *err);

/* The size the refiner works at for a w x h input, by the original PeRFlow rule:
 * k = target / min(w, h), then each side becomes int(round(side * k / 64.0)) * 64,
 * computed in double exactly as Python computes it, ties rounded to even as
 * Python's round() does. w, h and target must be positive; a side can come out 0
 * (target below 32) or far larger than target for a very long image: callers
 * check the result against their own limits. */
void pf_refine_size(int *ow, int *oh, int w, int h, int target);

#endif
