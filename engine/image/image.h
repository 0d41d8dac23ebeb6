/* image.h - float images to 8-bit RGB, contact sheets, PNG output (libpng), and
 * input images (PNG through libpng, JPEG through libjpeg-turbo) decoded exactly as
 * Pillow's Image.open(path).convert("RGB") decodes them. */
#ifndef PF_IMAGE_H
#define PF_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* x (n floats, clamped to [0, 1]) -> round(x * 255) with numpy's rounding (half to
 * even, in float32), exactly as diffusers' numpy_to_pil does. */
void pf_image_to_u8(uint8_t *dst, const float *src, long n);

/* Tiles n images (h x w x 3, 8-bit) into a grid of ceil(sqrt(n)) columns;
 * *gw, *gh receive the grid size. Returns a malloc'd buffer (caller frees). */
uint8_t *pf_image_grid(const uint8_t *images, int n, int w, int h, int *gw, int *gh);

/* Writes an 8-bit RGB PNG (rows top to bottom, pixels RGB interleaved) through
 * path.tmp + rename. text is NULL or a NULL-terminated list of key, value pairs
 * stored as tEXt chunks, or iTXt for values that are not ASCII (PNG keeps tEXt
 * Latin-1); keys are 1-79 printable ASCII characters. */
int pf_png_write(const char *path, const uint8_t *rgb, int w, int h, const char *const *text, pf_error *err);

/* Input images larger than this on a side are refused. */
#define PF_IMAGE_MAX_SIDE 16384
/* ... and so are those of more pixels than this, Pillow's own limit (twice
 * Image.MAX_IMAGE_PIXELS, above which Image.open raises DecompressionBombError). */
#define PF_IMAGE_MAX_PIXELS 178956970L

/* Decodes the n bytes at data, a PNG or a JPEG (told apart by their first bytes,
 * whatever the name), into *rgb: w x h pixels, 8-bit RGB interleaved, rows top to
 * bottom, malloc'd (the caller frees it). The pixels are those of Pillow's (the
 * version pinned in tests/reference/requirements.txt)
 * Image.open(...).convert("RGB"), byte for byte:
 *   - PNG, every colour type and bit depth. Alpha and tRNS are dropped, not
 *     composited; grey becomes R = G = B; 1/2/4-bit grey is scaled to 0..255;
 *     palette indices past the PLTE entries are black; gAMA, cHRM, sRGB, iCCP and
 *     sBIT are ignored. 16-bit samples keep their high byte, except 16-bit grey
 *     without alpha, which Pillow opens as mode I;16 and converts by clamping:
 *     min(value, 255) (so most 16-bit grey images come out nearly white there
 *     too). Adam7 interlacing is supported; a missing IEND is tolerated.
 *   - JPEG, baseline or progressive, with libjpeg-turbo's default decoding
 *     (JDCT_ISLOW, fancy upsampling) as Pillow uses it: greyscale (R = G = B),
 *     YCbCr or RGB with 3 components, CMYK or YCCK with 4 (taken in Adobe's
 *     inverted convention, then Pillow's CMYK to RGB; from libjpeg's bytes C, K
 *     that is R = K - (255 - C) K / 255, rounded as Pillow rounds). EXIF
 *     orientation is not applied (Image.open does not either); libjpeg's
 *     warnings about corrupt data are ignored, as Pillow ignores them.
 * name is what error messages call the input ("upload.png"). Returns 0, or -1
 * with err set to one line "NAME: ..." ("NAME: PNG: ...", "NAME: JPEG: ...")
 * and *rgb NULL: not a PNG or JPEG image, truncated (as Pillow fails on it: a
 * JPEG must be whole, a PNG may lack its IEND), corrupt (as
 * libpng or libjpeg judge it: also a bad CRC, or a palette PNG without PLTE,
 * which Pillow would open), of a kind refused as Pillow refuses it (12-bit JPEG,
 * 2 components), a JPEG of more than 500 scans, or larger than PF_IMAGE_MAX_SIDE
 * a side or PF_IMAGE_MAX_PIXELS in all. Never exits; releases everything it
 * allocated on every path. */
int pf_image_decode(const uint8_t *data, size_t n, const char *name, uint8_t **rgb, int *w, int *h, pf_error *err);

/* pf_image_decode with a caller's cap: an image of more than max_pixels
 * pixels (0: only the limits above) is refused from its header (a PNG's IHDR,
 * a JPEG's SOF) before anything of its size is allocated; libjpeg's own
 * allocations are bounded by what the declared size needs. Callers size the
 * cap from the job (a condition image needs no more than a small multiple of
 * the output's pixels): a 521 KB PNG of 16384 x 10922 decoded to 514 MiB. */
int pf_image_decode_max(const uint8_t *data, size_t n, const char *name, long max_pixels, uint8_t **rgb, int *w, int *h,
                        pf_error *err);
/* pf_image_read with pf_image_decode_max's cap. */
int pf_image_read_max(const char *path, long max_pixels, uint8_t **rgb, int *w, int *h, pf_error *err);

/* pf_image_decode of the file at path (messages name path). Also fails, with
 * *rgb NULL, when the file cannot be read. */
int pf_image_read(const char *path, uint8_t **rgb, int *w, int *h, pf_error *err);

/* The same as pf_image_read; kept for its callers, which read PNG goldens. */
int pf_png_read(const char *path, uint8_t **rgb, int *w, int *h, pf_error *err);

#endif
