/* image.c - 8-bit conversion, grids and PNG I/O through libpng. */
#include "image.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pf_image_to_u8(uint8_t *dst, const float *src, long n) {
    for (long i = 0; i < n; i++) {
        float x = src[i];
        x = x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); /* NaN stays NaN: mapped to 0 below */
        float v = nearbyintf(x * 255.0f);             /* default rounding mode: half to even */
        dst[i] = v >= 0.0f && v <= 255.0f ? (uint8_t)v : 0;
    }
}

uint8_t *pf_image_grid(const uint8_t *images, int n, int w, int h, int *gw, int *gh) {
    int cols = 1;
    while (cols * cols < n) cols++;
    int rows = (n + cols - 1) / cols;
    *gw = cols * w;
    *gh = rows * h;
    uint8_t *g = PF_CALLOC((size_t)*gw * (size_t)*gh, 3);
    for (int i = 0; i < n; i++) {
        int ox = (i % cols) * w, oy = (i / cols) * h;
        for (int y = 0; y < h; y++)
            memcpy(g + ((size_t)(oy + y) * *gw + ox) * 3, images + ((size_t)i * h + y) * w * 3, (size_t)w * 3);
    }
    return g;
}

int pf_png_write(const char *path, const uint8_t *rgb, int w, int h, const char *const *text, pf_error *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return pf_fail(err, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return pf_fail(err, "%s: cannot create: %m", tmp);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_textp chunks = NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        fclose(f);
        remove(tmp);
        return pf_fail(err, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(chunks);
        fclose(f);
        remove(tmp);
        return pf_fail(err, "%s: libpng failed to write the image", path);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    int nt = 0;
    while (text && text[2 * nt]) nt++;
    if (nt) {
        chunks = PF_CALLOC((size_t)nt, sizeof *chunks);
        for (int i = 0; i < nt; i++) {
            /* tEXt is Latin-1: UTF-8 values (prompts) go into an iTXt chunk instead. */
            int ascii = 1;
            for (const unsigned char *c = (const unsigned char *)text[2 * i + 1]; *c; c++) ascii &= *c < 0x80;
            chunks[i].compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
            chunks[i].key = (png_charp)text[2 * i];
            chunks[i].text = (png_charp)text[2 * i + 1];
        }
        png_set_text(png, info, chunks, nt);
    }
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(chunks);
    if (fflush(f) || ferror(f)) {
        fclose(f);
        remove(tmp);
        return pf_fail(err, "%s: write failed: %m", tmp);
    }
    if (fclose(f)) {
        remove(tmp);
        return pf_fail(err, "%s: write failed: %m", tmp);
    }
    if (rename(tmp, path)) {
        remove(tmp);
        return pf_fail(err, "%s: cannot rename into place: %m", path);
    }
    return 0;
}

int pf_png_read(const char *path, uint8_t **rgb, int *w, int *h, pf_error *err) {
    *rgb = NULL;
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&img, path)) return pf_fail(err, "%s: %s", path, img.message);
    img.format = PNG_FORMAT_RGB;
    if (img.width > 16384 || img.height > 16384) {
        png_image_free(&img);
        return pf_fail(err, "%s: image %ux%u is larger than 16384 px a side", path, img.width, img.height);
    }
    uint8_t *buf = malloc(PNG_IMAGE_SIZE(img));
    if (!buf) {
        png_image_free(&img);
        return pf_fail(err, "%s: out of memory", path);
    }
    if (!png_image_finish_read(&img, NULL, buf, 0, NULL)) {
        free(buf);
        return pf_fail(err, "%s: %s", path, img.message);
    }
    *rgb = buf;
    *w = (int)img.width;
    *h = (int)img.height;
    return 0;
}
