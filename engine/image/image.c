/* image.c - 8-bit conversion, grids, PNG output through libpng, and input images:
 * PNG (libpng's low-level API) and JPEG (libjpeg-turbo) decoded to Pillow's RGB.
 *
 * The decoders never let libpng or libjpeg transform colours: they take the
 * samples as stored (libpng only unpacks sub-byte samples and de-interlaces) and
 * convert them here, one function per rule of Pillow's, so that each rule can be
 * read against Pillow's PngImagePlugin/JpegImagePlugin and libImaging/Convert.c.
 * (libpng's simplified png_image API would composite alpha and apply gamma.)
 *
 * Both libraries report errors by longjmp. Each decoder keeps everything it
 * allocates in a job struct owned by its caller and calls setjmp in a function of
 * its own (png_run, jpeg_run), so that after a longjmp the caller still sees every
 * pointer and frees it: no local of the function that called setjmp is needed
 * after the jump. */
#include "image.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h> /* after stdio.h, which it needs */

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

/* ------------------------------------------------------------------ input images */

/* Checks a declared size against the limits before anything of that size is
 * allocated; fills msg (of size n) and returns -1 when it is refused. */
static int check_size(char *msg, size_t n, unsigned long w, unsigned long h, long max_pixels) {
    if (w == 0 || h == 0) {
        snprintf(msg, n, "image is %lux%lu: empty", w, h);
        return -1;
    }
    if (w > PF_IMAGE_MAX_SIDE || h > PF_IMAGE_MAX_SIDE) {
        snprintf(msg, n, "image %lux%lu is larger than %d px a side", w, h, PF_IMAGE_MAX_SIDE);
        return -1;
    }
    /* w, h <= 2^14, so w * h * 3 < 2^30 cannot overflow */
    if ((long)(w * h) > PF_IMAGE_MAX_PIXELS) {
        snprintf(msg, n, "image %lux%lu has more than %ld pixels", w, h, PF_IMAGE_MAX_PIXELS);
        return -1;
    }
    if (max_pixels > 0 && (long)(w * h) > max_pixels) {
        snprintf(msg, n, "image %lux%lu has more than %ld pixels, the cap on input images here", w, h, max_pixels);
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------- PNG */

typedef struct png_job {
    const uint8_t *data; /* the whole file */
    size_t n, pos;       /* its size, and how much libpng has read */
    png_structp png;
    png_infop info;
    uint8_t *raw;   /* rows as libpng gives them: one row, or every row when interlaced */
    uint8_t **rows; /* row pointers into raw (interlaced only) */
    uint8_t *rgb;   /* the result, w x h x 3 */
    int w, h;
    long max_pixels; /* the caller's cap (0: PF_IMAGE_MAX_PIXELS only) */
    char msg[256]; /* why it failed */
} png_job;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_job *j = png_get_error_ptr(png);
    snprintf(j->msg, sizeof j->msg, "%s", msg);
    png_longjmp(png, 1);
}

/* Warnings (bad CRCs of ancillary chunks, extra compressed data) do not stop
 * Pillow either. */
static void png_on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static void png_read_mem(png_structp png, png_bytep out, size_t len) {
    png_job *j = png_get_io_ptr(png);
    if (len > j->n - j->pos) png_error(png, "file is truncated");
    memcpy(out, j->data + j->pos, len);
    j->pos += len;
}

/* One row of libpng's samples (after unpacking: one byte per sample below 8 bits,
 * two big-endian bytes per sample at 16) to RGB, by Pillow's rule for the PNG's
 * mode (PngImagePlugin's _MODES, then convert("RGB")):
 *   grey 1/2/4/8  "1"/"L;2"/"L;4"/"L"  v scaled to 0..255, R = G = B
 *   grey 16       "I;16"               min(v, 255): I16_RGB clamps, it does not shift
 *   grey+alpha 8  "LA"                 grey, alpha dropped
 *   grey+alpha 16 "RGBA" from "LA;16B" high byte of grey
 *   RGB 8/16      "RGB" / "RGB;16B"    the bytes / their high bytes
 *   RGBA 8/16     "RGBA" / "RGBA;16B"  the same, alpha dropped
 *   palette       "P"                  the PLTE colour; black past its entries */
static void png_row_to_rgb(uint8_t *dst, const uint8_t *src, int w, int color_type, int depth,
                           const uint8_t (*pal)[3]) {
    int scale = depth == 1 ? 255 : depth == 2 ? 85 : depth == 4 ? 17 : 1;
    int sample = depth == 16 ? 2 : 1;
    for (int x = 0; x < w; x++, dst += 3) {
        switch (color_type) {
        case PNG_COLOR_TYPE_GRAY:
            if (depth == 16) {
                const uint8_t *s = src + 2 * x;
                dst[0] = s[0] ? 255 : s[1];
            } else {
                dst[0] = (uint8_t)(src[x] * scale);
            }
            dst[1] = dst[2] = dst[0];
            break;
        case PNG_COLOR_TYPE_GRAY_ALPHA:
            dst[0] = dst[1] = dst[2] = src[2 * sample * x];
            break;
        case PNG_COLOR_TYPE_RGB:
        case PNG_COLOR_TYPE_RGB_ALPHA: {
            const uint8_t *s = src + (color_type == PNG_COLOR_TYPE_RGB ? 3 : 4) * sample * x;
            dst[0] = s[0];
            dst[1] = s[sample];
            dst[2] = s[2 * sample];
            break;
        }
        case PNG_COLOR_TYPE_PALETTE:
            memcpy(dst, pal[src[x]], 3);
            break;
        }
    }
}

/* The decoding proper, under libpng's setjmp: everything it allocates goes into
 * j, which the caller frees whatever happens. Returns 0, or -1 with j->msg. */
static int png_run(png_job *j) {
    if (setjmp(png_jmpbuf(j->png))) return -1;
    png_set_read_fn(j->png, j, png_read_mem);
    /* Our own size check below gives the message; libpng's default limit
     * (1,000,000 px) would otherwise answer first with its own. */
    png_set_user_limits(j->png, 0x7fffffff, 0x7fffffff);
    /* Chunks that cannot change Pillow's RGB pixels are skipped unread: less of
     * libpng meets hostile input, and none of them can fail the decode. */
    static const png_byte skip[] = "bKGD\0cHRM\0eXIf\0gAMA\0hIST\0iCCP\0iTXt\0oFFs\0pCAL\0pHYs\0"
                                   "sBIT\0sCAL\0sPLT\0sRGB\0tEXt\0tIME\0tRNS\0zTXt";
    png_set_keep_unknown_chunks(j->png, PNG_HANDLE_CHUNK_NEVER, NULL, 0);
    png_set_keep_unknown_chunks(j->png, PNG_HANDLE_CHUNK_NEVER, skip, (int)(sizeof skip / 5));
    png_read_info(j->png, j->info);

    png_uint_32 w, h;
    int depth, color_type, interlace;
    png_get_IHDR(j->png, j->info, &w, &h, &depth, &color_type, &interlace, NULL, NULL);
    if (check_size(j->msg, sizeof j->msg, w, h, j->max_pixels)) return -1;
    j->w = (int)w;
    j->h = (int)h;

    uint8_t pal[256][3];
    memset(pal, 0, sizeof pal);
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte;
        int nplte = 0;
        if (!png_get_PLTE(j->png, j->info, &plte, &nplte)) png_error(j->png, "palette image without a PLTE chunk");
        for (int i = 0; i < nplte && i < 256; i++) {
            pal[i][0] = plte[i].red;
            pal[i][1] = plte[i].green;
            pal[i][2] = plte[i].blue;
        }
    }

    if (depth < 8) png_set_packing(j->png);
    int passes = png_set_interlace_handling(j->png);
    png_read_update_info(j->png, j->info);
    size_t rowbytes = png_get_rowbytes(j->png, j->info);
    size_t channels = png_get_channels(j->png, j->info);
    if (rowbytes != (size_t)w * channels * (depth == 16 ? 2 : 1)) png_error(j->png, "unexpected row layout");

    j->rgb = malloc((size_t)w * h * 3);
    j->raw = malloc(rowbytes * (passes > 1 ? h : 1));
    if (passes > 1) j->rows = malloc(h * sizeof *j->rows);
    if (!j->rgb || !j->raw || (passes > 1 && !j->rows)) png_error(j->png, "out of memory");
    if (passes > 1) {
        /* Adam7: every pass writes into the whole image, so it is held whole. */
        for (png_uint_32 y = 0; y < h; y++) j->rows[y] = j->raw + y * rowbytes;
        png_read_image(j->png, j->rows);
        for (png_uint_32 y = 0; y < h; y++)
            png_row_to_rgb(j->rgb + (size_t)y * w * 3, j->rows[y], (int)w, color_type, depth, pal);
    } else {
        for (png_uint_32 y = 0; y < h; y++) {
            png_read_row(j->png, j->raw, NULL);
            png_row_to_rgb(j->rgb + (size_t)y * w * 3, j->raw, (int)w, color_type, depth, pal);
        }
    }
    /* No png_read_end: what follows the image data (and IEND itself, which Pillow
     * does not require) cannot change the pixels. */
    return 0;
}

static int decode_png(const uint8_t *data, size_t n, const char *name, long max_pixels, uint8_t **rgb, int *w, int *h,
                      pf_error *err) {
    /* IHDR comes first, at a fixed place: a refused size is refused before libpng
     * reads (and allocates for) anything else. */
    if (n >= 24 && !memcmp(data + 12, "IHDR", 4)) {
        unsigned long dw = (unsigned long)data[16] << 24 | data[17] << 16 | data[18] << 8 | data[19];
        unsigned long dh = (unsigned long)data[20] << 24 | data[21] << 16 | data[22] << 8 | data[23];
        char msg[128];
        if (check_size(msg, sizeof msg, dw, dh, max_pixels)) return pf_fail(err, "%s: PNG: %s", name, msg);
    }
    png_job j = {.data = data, .n = n, .max_pixels = max_pixels};
    j.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &j, png_on_error, png_on_warning);
    j.info = j.png ? png_create_info_struct(j.png) : NULL;
    if (!j.info) {
        png_destroy_read_struct(&j.png, NULL, NULL);
        return pf_fail(err, "%s: out of memory", name);
    }
    int rc = png_run(&j);
    png_destroy_read_struct(&j.png, &j.info, NULL);
    free(j.raw);
    free(j.rows);
    if (rc) {
        free(j.rgb);
        return pf_fail(err, "%s: PNG: %s", name, j.msg);
    }
    *rgb = j.rgb;
    *w = j.w;
    *h = j.h;
    return 0;
}

/* --------------------------------------------------------- JPEG */

/* Progressive files of more scans than this are refused: each scan costs a pass
 * over the whole image, and real encoders write about ten (libjpeg-turbo's own
 * advice for untrusted input; Pillow has no such limit). */
#define JPEG_MAX_SCANS 500

typedef struct jpeg_job {
    struct jpeg_decompress_struct cinfo; /* first: callbacks get back to the job from it */
    struct jpeg_error_mgr jerr;
    struct jpeg_source_mgr src;
    struct jpeg_progress_mgr progress;
    jmp_buf jmp;
    const uint8_t *data; /* the whole file */
    size_t n;
    int rows_done; /* every scanline read: what is still to come cannot change them */
    uint8_t *row;  /* one scanline as libjpeg gives it */
    uint8_t *rgb;  /* the result, w x h x 3 */
    int w, h;
    long max_pixels;                 /* the caller's cap (0: PF_IMAGE_MAX_PIXELS only) */
    char msg[JMSG_LENGTH_MAX + 64]; /* why it failed */
} jpeg_job;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_job *j = (jpeg_job *)cinfo;
    char buf[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, buf);
    snprintf(j->msg, sizeof j->msg, "%s", buf);
    longjmp(j->jmp, 1);
}

/* Warnings ("Corrupt JPEG data: ...") do not stop Pillow, which decodes on. */
static void jpeg_on_message(j_common_ptr cinfo) { (void)cinfo; }

static void jpeg_fail(jpeg_job *j, const char *msg) {
    snprintf(j->msg, sizeof j->msg, "%s", msg);
    longjmp(j->jmp, 1);
}

static void jpeg_src_init(j_decompress_ptr cinfo) { (void)cinfo; }
static void jpeg_src_term(j_decompress_ptr cinfo) { (void)cinfo; }

/* The whole file is in the buffer from the start, so libjpeg asks for more only
 * past its end. Pillow then fails ("image file is truncated") unless every row
 * has been decoded already, when it only finishes reading markers: we give
 * libjpeg an EOI then, as Pillow's suspending reader ends the same way. */
static boolean jpeg_src_fill(j_decompress_ptr cinfo) {
    static const JOCTET eoi[2] = {0xFF, JPEG_EOI};
    jpeg_job *j = (jpeg_job *)cinfo;
    if (!j->rows_done) jpeg_fail(j, "file is truncated");
    cinfo->src->next_input_byte = eoi;
    cinfo->src->bytes_in_buffer = sizeof eoi;
    return TRUE;
}

static void jpeg_src_skip(j_decompress_ptr cinfo, long count) {
    struct jpeg_source_mgr *src = cinfo->src;
    if (count <= 0) return;
    if ((unsigned long)count > src->bytes_in_buffer) {
        jpeg_job *j = (jpeg_job *)cinfo;
        if (!j->rows_done) jpeg_fail(j, "file is truncated");
        src->next_input_byte += src->bytes_in_buffer;
        src->bytes_in_buffer = 0;
        return;
    }
    src->next_input_byte += count;
    src->bytes_in_buffer -= (size_t)count;
}

static void jpeg_on_progress(j_common_ptr cinfo) {
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->is_decompressor && d->input_scan_number > JPEG_MAX_SCANS) {
        jpeg_job *j = (jpeg_job *)cinfo;
        snprintf(j->msg, sizeof j->msg, "more than %d scans", JPEG_MAX_SCANS);
        longjmp(j->jmp, 1);
    }
}

/* One scanline of libjpeg's output to RGB: grey to R = G = B; RGB as is; CMYK
 * as Pillow does it: the bytes are inverted ("CMYK;I", Adobe's convention), then
 * cmyk2rgb gives R = CLIP8(nk - MULDIV255(C, nk)) with nk = 255 - K. */
static void jpeg_row_to_rgb(uint8_t *dst, const uint8_t *src, int w, int components) {
    for (int x = 0; x < w; x++, dst += 3) {
        if (components == 1) {
            dst[0] = dst[1] = dst[2] = src[x];
        } else if (components == 3) {
            memcpy(dst, src + 3 * x, 3);
        } else {
            const uint8_t *s = src + 4 * x;
            int nk = s[3]; /* 255 - (255 - K) */
            for (int c = 0; c < 3; c++) {
                int t = (255 - s[c]) * nk + 128;
                int v = nk - (((t >> 8) + t) >> 8);
                dst[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    }
}

/* The decoding proper, under our setjmp: everything it allocates goes into j,
 * which the caller frees (jpeg_destroy_decompress included) whatever happens.
 * Returns 0, or -1 with j->msg. */
static int jpeg_run(jpeg_job *j) {
    struct jpeg_decompress_struct *ci = &j->cinfo;
    if (setjmp(j->jmp)) return -1;
    ci->err = jpeg_std_error(&j->jerr);
    j->jerr.error_exit = jpeg_on_error;
    j->jerr.output_message = jpeg_on_message;
    jpeg_create_decompress(ci);
    j->src.init_source = jpeg_src_init;
    j->src.fill_input_buffer = jpeg_src_fill;
    j->src.skip_input_data = jpeg_src_skip;
    j->src.resync_to_restart = jpeg_resync_to_restart;
    j->src.term_source = jpeg_src_term;
    j->src.next_input_byte = j->data;
    j->src.bytes_in_buffer = j->n;
    ci->src = &j->src;
    j->progress.progress_monitor = jpeg_on_progress;
    ci->progress = &j->progress;

    jpeg_read_header(ci, TRUE);
    /* Pillow's JpegImagePlugin maps 1, 3 and 4 components to L, RGB and CMYK
     * and refuses others; 12-bit samples are refused by this libjpeg, as by
     * Pillow ("cannot handle 12-bit layers"). */
    int comps = ci->num_components;
    if (comps != 1 && comps != 3 && comps != 4) {
        snprintf(j->msg, sizeof j->msg, "images of %d components are not supported", comps);
        return -1;
    }
    if (check_size(j->msg, sizeof j->msg, ci->image_width, ci->image_height, j->max_pixels)) return -1;
    /* libjpeg's own bound on what it allocates (a progressive JPEG keeps every
     * coefficient of the image: 2 bytes a sample), so a file that lies about
     * its scans cannot take more than a decode of its declared size needs. */
    ci->mem->max_memory_to_use = (long)ci->image_width * ci->image_height * comps * 4 + (16L << 20);
    /* Only the output colour space is set, as Pillow sets it; the file's own
     * (YCbCr, RGB, YCCK, ...) is libjpeg's guess from its markers, as in Pillow.
     * dct_method and do_fancy_upsampling keep libjpeg's defaults, JDCT_ISLOW and
     * TRUE, which Pillow keeps too (it changes them only in draft mode). */
    ci->out_color_space = comps == 1 ? JCS_GRAYSCALE : comps == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_start_decompress(ci);
    if (ci->output_width != ci->image_width || ci->output_height != ci->image_height || ci->output_components != comps)
        jpeg_fail(j, "unexpected output layout");
    j->w = (int)ci->output_width;
    j->h = (int)ci->output_height;
    j->rgb = malloc((size_t)j->w * j->h * 3);
    j->row = malloc((size_t)j->w * comps);
    if (!j->rgb || !j->row) jpeg_fail(j, "out of memory");
    while (ci->output_scanline < ci->output_height) {
        JSAMPROW row = j->row;
        size_t y = ci->output_scanline;
        if (jpeg_read_scanlines(ci, &row, 1) != 1) jpeg_fail(j, "file is truncated");
        jpeg_row_to_rgb(j->rgb + y * j->w * 3, j->row, j->w, comps);
    }
    /* Like Pillow: markers after the last scan are still read, and an error
     * there still fails the image, but running out of data does not. */
    j->rows_done = 1;
    jpeg_finish_decompress(ci);
    return 0;
}

static int decode_jpeg(const uint8_t *data, size_t n, const char *name, long max_pixels, uint8_t **rgb, int *w, int *h,
                       pf_error *err) {
    jpeg_job *j = calloc(1, sizeof *j); /* jmp_buf and cinfo: too large for some stacks */
    if (!j) return pf_fail(err, "%s: out of memory", name);
    j->max_pixels = max_pixels;
    j->data = data;
    j->n = n;
    int rc = jpeg_run(j);
    jpeg_destroy_decompress(&j->cinfo); /* also when jpeg_create_decompress never ran: mem is NULL */
    free(j->row);
    if (rc) {
        free(j->rgb);
        rc = pf_fail(err, "%s: JPEG: %s", name, j->msg);
        free(j);
        return rc;
    }
    *rgb = j->rgb;
    *w = j->w;
    *h = j->h;
    free(j);
    return 0;
}

/* --------------------------------------------------------- entry points */

int pf_image_decode(const uint8_t *data, size_t n, const char *name, uint8_t **rgb, int *w, int *h, pf_error *err) {
    return pf_image_decode_max(data, n, name, 0, rgb, w, h, err);
}

int pf_image_decode_max(const uint8_t *data, size_t n, const char *name, long max_pixels, uint8_t **rgb, int *w, int *h,
                        pf_error *err) {
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    *rgb = NULL;
    if (n >= 8 && !memcmp(data, png_sig, 8)) return decode_png(data, n, name, max_pixels, rgb, w, h, err);
    /* Pillow's test for a JPEG: SOI and the first byte of a marker. */
    if (n >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
        return decode_jpeg(data, n, name, max_pixels, rgb, w, h, err);
    if (n == 0) return pf_fail(err, "%s: empty file: not a PNG or JPEG image", name);
    return pf_fail(err, "%s: not a PNG or JPEG image", name);
}

/* Files larger than this cannot be an image within the limits at any sane
 * compression; refusing them early bounds what a hostile path can make us read. */
#define MAX_FILE_BYTES (1L << 30)

int pf_image_read(const char *path, uint8_t **rgb, int *w, int *h, pf_error *err) {
    return pf_image_read_max(path, 0, rgb, w, h, err);
}

int pf_image_read_max(const char *path, long max_pixels, uint8_t **rgb, int *w, int *h, pf_error *err) {
    *rgb = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return pf_fail(err, "%s: cannot open: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_FILE_BYTES) {
                free(buf);
                fclose(f);
                return pf_fail(err, "%s: larger than %ld bytes: not an input image", path, MAX_FILE_BYTES);
            }
            cap = cap ? 2 * cap : 1 << 16;
            uint8_t *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                fclose(f);
                return pf_fail(err, "%s: out of memory", path);
            }
            buf = grown;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        return pf_fail(err, "%s: read failed", path);
    }
    int rc = pf_image_decode_max(buf, n, path, max_pixels, rgb, w, h, err);
    free(buf);
    return rc;
}

int pf_png_read(const char *path, uint8_t **rgb, int *w, int *h, pf_error *err) {
    return pf_image_read(path, rgb, w, h, err);
}
