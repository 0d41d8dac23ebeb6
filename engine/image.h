/* image.h - float images to 8-bit RGB, contact sheets, and PNG files (libpng). */
#ifndef PF_IMAGE_H
#define PF_IMAGE_H

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

/* Reads an 8-bit RGB or RGBA PNG (alpha dropped) into a malloc'd buffer; for tests
 * and img2img inputs. */
int pf_png_read(const char *path, uint8_t **rgb, int *w, int *h, pf_error *err);

#endif
