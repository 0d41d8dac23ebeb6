/* fuzz_image.c - libFuzzer target for the input-image decoders (PNG and JPEG):
 * any byte string must either be refused with one line naming the input, or
 * decode to an image within the limits whose every byte can be read; never touch
 * memory outside the input, leak, or exit. Decoded images are also resized
 * (Lanczos) to a size taken from the input.
 *
 *   make build/fuzz/fuzz_image && mkdir -p /tmp/image_corpus &&
 *   UBSAN_OPTIONS=halt_on_error=1 build/fuzz/fuzz_image -max_total_time=60 \
 *       /tmp/image_corpus tests/fuzz/corpus_image
 * New inputs go to the first directory, which keeps them out of the repository.
 *
 * PNG chunks carry CRCs, which a mutation almost always breaks, so that libpng
 * would refuse nearly every input at the first changed chunk. The target
 * rewrites the CRCs of a PNG's chunks before decoding (on a copy), so mutations
 * reach the decoding itself; CRC checking is covered by tests/test_image.c. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "resize.h"

static uint32_t crc32_png(const uint8_t *p, size_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* Rewrites the CRC of every whole chunk after the PNG signature. */
static void fix_png_crcs(uint8_t *d, size_t n) {
    size_t pos = 8;
    while (n - pos >= 12) {
        uint32_t len = (uint32_t)d[pos] << 24 | d[pos + 1] << 16 | d[pos + 2] << 8 | d[pos + 3];
        if (len > n - pos - 12) break;
        uint32_t crc = crc32_png(d + pos + 4, 4 + (size_t)len);
        uint8_t *at = d + pos + 8 + len;
        at[0] = (uint8_t)(crc >> 24), at[1] = (uint8_t)(crc >> 16), at[2] = (uint8_t)(crc >> 8), at[3] = (uint8_t)crc;
        pos += 12 + (size_t)len;
    }
}

static volatile unsigned sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1);
    if (size) memcpy(copy, data, size);
    if (size > 8 && !memcmp(copy, "\x89PNG\r\n\x1a\n", 8)) fix_png_crcs(copy, size);

    uint8_t *rgb = (uint8_t *)"untouched";
    int w = -1, h = -1;
    pf_error err = {0};
    if (pf_image_decode(copy, size, "fuzz", &rgb, &w, &h, &err)) {
        if (rgb != NULL || strncmp(err.msg, "fuzz: ", 6) || strchr(err.msg, '\n')) abort();
        free(copy);
        return 0;
    }
    if (w < 1 || h < 1 || w > PF_IMAGE_MAX_SIDE || h > PF_IMAGE_MAX_SIDE || (long)w * h > PF_IMAGE_MAX_PIXELS) abort();
    /* Read the whole result: ASan checks that the allocation is as large as claimed. */
    unsigned sum = 0;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) sum += rgb[i];
    sink = sum; /* so that the reads stay */
    if ((long)w * h <= 1 << 16 && size >= 2) {
        int dw = 1 + data[size - 1] % 67, dh = 1 + data[size - 2] % 53;
        uint8_t *out = malloc((size_t)dw * dh * 3);
        if (pf_resize_lanczos(out, dw, dh, rgb, w, h, &err)) abort();
        free(out);
    }
    free(rgb);
    /* the caller's cap (pf_image_decode_max): refused from the header when over it */
    if (size >= 1) {
        long cap = 64L << (data[0] % 12);
        uint8_t *capped = NULL;
        int cw, ch;
        if (!pf_image_decode_max(copy, size, "fuzz", cap, &capped, &cw, &ch, &err)) {
            if ((long)cw * ch > cap || cw != w || ch != h) abort();
            free(capped);
        } else if (capped || (long)w * h <= cap) {
            abort(); /* it decoded without the cap, so only the cap may refuse it */
        }
    }
    free(copy);
    return 0;
}
