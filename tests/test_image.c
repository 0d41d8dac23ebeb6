/* test_image.c - input images and Lanczos resizing against Pillow, byte for byte.
 *
 * tests/data/images/cases.json (written by tests/reference/goldens_images.py
 * from Pillow; re-run it to regenerate) lists:
 *   decode       PNGs of every colour type and bit depth and JPEGs of every kind,
 *                with the RGB bytes of Image.open(f).convert("RGB")
 *   truncated    cut points of a few of them, with Pillow's verdict (it fails, or
 *                it decodes the same pixels as the whole file)
 *   hostile      inputs that must be refused, with a piece of the message
 *   lanczos      (source, size) pairs with Image.resize(size, Image.LANCZOS)
 *   refine_size  (w, h, target) with the PeRFlow size rule as Python computes it
 * Every comparison is exact; a mismatch prints the first differing pixel. The
 * sweeps below (every prefix, every single-byte change of small files) check
 * that hostile input only ever gives an error line, never a crash or a leak (run
 * this binary under ASan to see leaks). */
#include "test_util.h"

#include "image.h"
#include "resize.h"

#define CASES_VERSION "1"
#define REGEN "re-run tests/reference/goldens_images.py with the reference venv"

static json_t *cases;

static int load_cases(void **state) {
    (void)state;
    cases = pf_golden_json(pf_test_path("tests/data/images/cases.json"), CASES_VERSION, REGEN);
    return 0;
}

static int free_cases(void **state) {
    (void)state;
    json_decref(cases);
    return 0;
}

static const json_t *list(const char *key) {
    const json_t *a = json_object_get(cases, key);
    if (!json_is_array(a) || json_array_size(a) == 0) fail_msg("cases.json has no %s: %s", key, REGEN);
    return a;
}

static const char *str(const json_t *c, const char *key) {
    const char *s = json_string_value(json_object_get(c, key));
    if (!s) fail_msg("a case in cases.json lacks \"%s\": %s", key, REGEN);
    return s;
}

static int num(const json_t *c, const char *key) {
    const json_t *v = json_object_get(c, key);
    if (!json_is_integer(v)) fail_msg("a case in cases.json lacks \"%s\": %s", key, REGEN);
    return (int)json_integer_value(v);
}

static const char *data_path(const char *rel) { return pf_test_path(pf_pathf("tests/data/images/%s", rel)); }

/* Number of differing bytes between got and want (w x h RGB); prints the first
 * differing pixel and the count. */
static size_t diff_rgb(const char *what, const uint8_t *got, const uint8_t *want, int w, int h) {
    size_t n = (size_t)w * h * 3, bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i] && !bad++) first = i;
    if (bad) {
        size_t p = first / 3 * 3;
        print_error("%s: first difference at pixel (x %zu, y %zu): got (%d, %d, %d) want (%d, %d, %d); "
                    "%zu of %zu bytes differ\n",
                    what, p / 3 % (size_t)w, p / 3 / (size_t)w, got[p], got[p + 1], got[p + 2], want[p], want[p + 1],
                    want[p + 2], bad, n);
    }
    return bad;
}

/* A pf_error message must be one line naming the input. */
static void assert_error_line(const pf_error *err, const char *name, const char *piece) {
    if (strncmp(err->msg, name, strlen(name)) || strchr(err->msg, '\n') || (piece && !strstr(err->msg, piece)))
        fail_msg("error message \"%s\" should start with \"%s\"%s%s and be one line", err->msg, name,
                 piece ? " and contain " : "", piece ? piece : "");
}

/* Decodes the first n bytes of data from a buffer of exactly that size (so that
 * ASan sees any read past it). */
static int decode_exact(const uint8_t *data, size_t n, const char *name, uint8_t **rgb, int *w, int *h, pf_error *err) {
    uint8_t *copy = malloc(n ? n : 1);
    if (n) memcpy(copy, data, n);
    int rc = pf_image_decode(copy, n, name, rgb, w, h, err);
    free(copy);
    return rc;
}

/* ------------------------------------------------------------------ decoding */

static void test_comparator_fails(void **state) {
    (void)state;
    /* The comparisons below can fail: one changed byte is found and placed. */
    uint8_t a[2 * 3 * 3] = {0}, b[sizeof a] = {0};
    b[3 * 4 + 2] = 1; /* pixel (1, 1), blue */
    assert_int_equal(diff_rgb("self-check (one difference expected)", a, b, 3, 2), 1);
    assert_int_equal(diff_rgb("self-check", a, a, 3, 2), 0);
}

static void test_decode_cases(void **state) {
    (void)state;
    const json_t *dec = list("decode");
    size_t i, png = 0, jpeg = 0;
    const json_t *c;
    json_array_foreach(dec, i, c) {
        const char *file = str(c, "file");
        size_t wn;
        uint8_t *want = (uint8_t *)pf_read_file(data_path(str(c, "rgb")), &wn);
        int ww = num(c, "width"), wh = num(c, "height");
        assert_int_equal(wn, (size_t)ww * wh * 3);

        uint8_t *got;
        int w, h;
        pf_error err = {0};
        if (pf_image_read(data_path(file), &got, &w, &h, &err)) fail_msg("%s: %s", file, err.msg);
        if (w != ww || h != wh) fail_msg("%s: got %dx%d, Pillow %dx%d", file, w, h, ww, wh);
        if (diff_rgb(file, got, want, w, h)) fail_msg("%s (%s) differs from Pillow", file, str(c, "what"));
        free(got);

        /* From memory, as the worker decodes: the same pixels. */
        size_t n;
        uint8_t *bytes = (uint8_t *)pf_read_file(data_path(file), &n);
        assert_int_equal(decode_exact(bytes, n, file, &got, &w, &h, &err), 0);
        assert_int_equal(diff_rgb(file, got, want, w, h), 0);
        free(got);
        free(bytes);

        /* The case is not trivial: its pixels are not all one value. */
        size_t k = 1;
        while (k < wn && want[k] == want[0]) k++;
        if (wn > 3 && k == wn) fail_msg("%s: Pillow's pixels are all %d: a useless case: %s", file, want[0], REGEN);
        free(want);
        png += strstr(file, ".png") != NULL;
        jpeg += strstr(file, ".jpg") != NULL;
    }
    assert_true(png >= 20 && jpeg >= 10);
}

static void test_decode_cases_differ(void **state) {
    (void)state;
    /* The same picture coded three ways decodes to three different sets of
     * pixels in Pillow, so equality above means the right decoder settings. */
    const char *names[] = {"jpeg/baseline_420.rgb", "jpeg/baseline_444.rgb", "jpeg/progressive_420.rgb"};
    char *px[3];
    size_t n[3];
    for (int i = 0; i < 3; i++) px[i] = pf_read_file(data_path(names[i]), &n[i]);
    assert_true(n[0] == n[1] && n[1] == n[2]);
    assert_true(memcmp(px[0], px[1], n[0]) && memcmp(px[0], px[2], n[0]) && memcmp(px[1], px[2], n[0]));
    for (int i = 0; i < 3; i++) free(px[i]);
}

static void test_png_read_wrapper(void **state) {
    (void)state;
    uint8_t *a, *b;
    int w, h, w2, h2;
    pf_error err = {0};
    const char *path = data_path("png/rgba8.png");
    assert_int_equal(pf_png_read(path, &a, &w, &h, &err), 0);
    assert_int_equal(pf_image_read(path, &b, &w2, &h2, &err), 0);
    assert_true(w == w2 && h == h2 && !memcmp(a, b, (size_t)w * h * 3));
    free(a);
    free(b);
}

/* ------------------------------------------------------------------ hostile input */

static void test_truncated(void **state) {
    (void)state;
    const json_t *tr = list("truncated");
    size_t i;
    const json_t *c;
    json_array_foreach(tr, i, c) {
        const char *file = str(c, "file"), *verdict = str(c, "pillow");
        int cut = num(c, "bytes");
        size_t n;
        uint8_t *bytes = (uint8_t *)pf_read_file(data_path(file), &n);
        assert_true((size_t)cut < n);
        uint8_t *got;
        int w, h;
        pf_error err = {0};
        const char *name = pf_pathf("%s[:%d]", file, cut);
        int rc = decode_exact(bytes, (size_t)cut, name, &got, &w, &h, &err);
        if (!strcmp(verdict, "error")) {
            if (rc == 0) fail_msg("%s: decoded, but Pillow fails on it", name);
            assert_null(got);
            assert_error_line(&err, name, NULL);
        } else {
            if (rc) fail_msg("%s: %s, but Pillow decodes it", name, err.msg);
            uint8_t *full;
            int fw, fh;
            assert_int_equal(decode_exact(bytes, n, file, &full, &fw, &fh, &err), 0);
            assert_true(w == fw && h == fh);
            assert_int_equal(diff_rgb(name, got, full, w, h), 0);
            free(full);
            free(got);
        }
        free(bytes);
    }
}

static void test_hostile_files(void **state) {
    (void)state;
    const json_t *ho = list("hostile");
    size_t i;
    const json_t *c;
    json_array_foreach(ho, i, c) {
        const char *path = data_path(str(c, "file"));
        uint8_t *got = (uint8_t *)"untouched";
        int w = -1, h = -1;
        pf_error err = {0};
        if (!pf_image_read(path, &got, &w, &h, &err)) fail_msg("%s: decoded as %dx%d, should be refused", path, w, h);
        assert_null(got);
        assert_error_line(&err, path, str(c, "error"));
    }
}

static void test_hostile_buffers(void **state) {
    (void)state;
    static const struct {
        const char *what, *bytes;
        size_t n;
        const char *piece;
    } bufs[] = {
        {"empty", "", 0, "empty file"},
        {"one byte", "\x89", 1, "not a PNG or JPEG image"},
        {"PNG signature only", "\x89PNG\r\n\x1a\n", 8, "PNG: file is truncated"},
        {"PNG signature cut", "\x89PNG\r\n\x1a", 7, "not a PNG or JPEG image"},
        {"JPEG SOI only", "\xff\xd8", 2, "not a PNG or JPEG image"},
        {"JPEG SOI + marker byte", "\xff\xd8\xff", 3, "JPEG"},
        {"GIF", "GIF89a\x01\x00\x01\x00", 10, "not a PNG or JPEG image"},
        {"text", "hello, world\n", 13, "not a PNG or JPEG image"},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        uint8_t *got;
        int w, h;
        pf_error err = {0};
        if (!decode_exact((const uint8_t *)bufs[i].bytes, bufs[i].n, bufs[i].what, &got, &w, &h, &err))
            fail_msg("%s: decoded", bufs[i].what);
        assert_null(got);
        assert_error_line(&err, bufs[i].what, bufs[i].piece);
    }
    /* A text file named .png, and a file that is not there. */
    char *dir = pf_temp_dir();
    const char *txt = pf_temp_write(dir, "notes.png", "just some text\n", 15);
    uint8_t *got;
    int w, h;
    pf_error err = {0};
    assert_int_equal(pf_image_read(txt, &got, &w, &h, &err), -1);
    assert_error_line(&err, txt, "not a PNG or JPEG image");
    const char *missing = pf_pathf("%s/absent.jpg", dir);
    assert_int_equal(pf_image_read(missing, &got, &w, &h, &err), -1);
    assert_error_line(&err, missing, "cannot open");
    pf_temp_dir_remove(dir);
}

/* Every prefix of small files, and every file with one byte changed: each
 * decodes (a prefix: to the whole file's pixels, as only a missing IEND is
 * tolerated) or fails with one line, and never reads outside the buffer. */
static void test_sweeps(void **state) {
    (void)state;
    const char *files[] = {"png/rgb8_1x1.png",      "png/palette2.png",  "png/grey16_interlaced.png",
                           "jpeg/tiny_9x3_420.jpg", "jpeg/tiny_1x1.jpg", "jpeg/grey_progressive.jpg"};
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        size_t n;
        uint8_t *bytes = (uint8_t *)pf_read_file(data_path(files[f]), &n);
        uint8_t *full, *got;
        int fw, fh, w, h;
        pf_error err = {0};
        assert_int_equal(decode_exact(bytes, n, files[f], &full, &fw, &fh, &err), 0);
        int decoded_prefixes = 0;
        for (size_t cut = 0; cut < n; cut++) {
            if (decode_exact(bytes, cut, "prefix", &got, &w, &h, &err)) {
                assert_null(got);
                assert_error_line(&err, "prefix", NULL);
                continue;
            }
            if (w != fw || h != fh || diff_rgb(pf_pathf("%s[:%zu]", files[f], cut), got, full, w, h))
                fail_msg("%s cut at %zu bytes decodes to other pixels", files[f], cut);
            free(got);
            decoded_prefixes++;
        }
        /* Only PNGs cut in their last 12 bytes (IEND) decode. */
        assert_int_equal(decoded_prefixes, strstr(files[f], ".png") ? 12 : 0);
        size_t step = n > 2000 ? n / 1000 : 1; /* the larger files: a thousand positions */
        for (size_t pos = 0; pos < n; pos += step) {
            for (int flip = 1; flip < 256; flip <<= 3) {
                bytes[pos] ^= (uint8_t)flip;
                if (decode_exact(bytes, n, "changed", &got, &w, &h, &err) == 0) {
                    assert_true(w >= 1 && h >= 1 && w <= PF_IMAGE_MAX_SIDE && h <= PF_IMAGE_MAX_SIDE);
                    free(got);
                } else {
                    assert_null(got);
                    assert_error_line(&err, "changed", NULL);
                }
                bytes[pos] ^= (uint8_t)flip;
            }
        }
        free(full);
        free(bytes);
    }
}

/* ------------------------------------------------------------------ Lanczos */

static uint8_t *read_rgb(const char *rel, int *w, int *h) {
    uint8_t *rgb;
    pf_error err = {0};
    if (pf_image_read(data_path(rel), &rgb, w, h, &err)) fail_msg("%s", err.msg);
    return rgb;
}

static uint8_t *resize(const uint8_t *src, int sw, int sh, int dw, int dh) {
    uint8_t *dst = malloc((size_t)dw * dh * 3);
    pf_error err = {0};
    if (pf_resize_lanczos(dst, dw, dh, src, sw, sh, &err)) fail_msg("%s", err.msg);
    return dst;
}

static void test_lanczos_cases(void **state) {
    (void)state;
    const json_t *lz = list("lanczos");
    size_t i;
    const json_t *c;
    int order_mattered = 0;
    json_array_foreach(lz, i, c) {
        int sw, sh, ew, eh, dw = num(c, "width"), dh = num(c, "height");
        uint8_t *src = read_rgb(str(c, "src"), &sw, &sh);
        uint8_t *want = read_rgb(str(c, "expected"), &ew, &eh);
        assert_true(ew == dw && eh == dh);
        const char *what = pf_pathf("%dx%d -> %dx%d (%s)", sw, sh, dw, dh, str(c, "what"));
        uint8_t *got = resize(src, sw, sh, dw, dh);
        if (diff_rgb(what, got, want, dw, dh)) fail_msg("Lanczos %s differs from Pillow", what);

        /* The result is the two one-axis resizes in Pillow's order; where the
         * other order gives other pixels, the cases tell the two apart. */
        if (dw != sw && dh != sh) {
            int horizontal_first = !(sh - dh > 0 && sh - dh > (sw - dw) * 2);
            uint8_t *hx = resize(src, sw, sh, dw, sh), *hv = resize(hx, dw, sh, dw, dh);
            uint8_t *vy = resize(src, sw, sh, sw, dh), *vh = resize(vy, sw, dh, dw, dh);
            size_t n = (size_t)dw * dh * 3;
            assert_memory_equal(got, horizontal_first ? hv : vh, n);
            order_mattered += memcmp(hv, vh, n) != 0;
            free(hx), free(hv), free(vy), free(vh);
        }
        free(src), free(want), free(got);
    }
    assert_true(json_array_size(lz) >= 12);
    assert_true(order_mattered >= 5);
}

static void test_lanczos_errors(void **state) {
    (void)state;
    uint8_t px[3 * 4] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, out[3 * 4];
    pf_error err = {0};
    assert_int_equal(pf_resize_lanczos(out, 0, 2, px, 2, 2, &err), -1);
    assert_non_null(strstr(err.msg, "sizes must be 1 to 16384"));
    assert_int_equal(pf_resize_lanczos(out, 2, 2, px, 2, PF_IMAGE_MAX_SIDE + 1, &err), -1);
    assert_int_equal(pf_resize_lanczos(out, 2, 2, px, 2, 2, &err), 0);
    assert_memory_equal(out, px, sizeof px);
}

/* ------------------------------------------------------------------ refine size */

static void test_refine_size(void **state) {
    (void)state;
    const json_t *rs = list("refine_size");
    size_t i;
    const json_t *c;
    int ties = 0;
    json_array_foreach(rs, i, c) {
        int w = num(c, "w"), h = num(c, "h"), t = num(c, "target"), ow, oh;
        pf_refine_size(&ow, &oh, w, h, t);
        if (ow != num(c, "width") || oh != num(c, "height"))
            fail_msg("refine size of %dx%d for %d: got %dx%d, Python %dx%d", w, h, t, ow, oh, num(c, "width"),
                     num(c, "height"));
        double k = (double)t / (w < h ? w : h), v = w * k / 64.0;
        ties += v - floor(v) == 0.5;
    }
    assert_true(ties >= 10); /* halves to even are really checked */
    int ow, oh;
    pf_refine_size(&ow, &oh, 96, 96, 1024);
    assert_true(ow == 1024 && oh == 1024);
    pf_refine_size(&ow, &oh, 34, 32, 512); /* 34 * 16 / 64 = 8.5: to 8, not 9 */
    assert_true(ow == 512 && oh == 512);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_comparator_fails),    cmocka_unit_test(test_decode_cases),
        cmocka_unit_test(test_decode_cases_differ), cmocka_unit_test(test_png_read_wrapper),
        cmocka_unit_test(test_truncated),           cmocka_unit_test(test_hostile_files),
        cmocka_unit_test(test_hostile_buffers),     cmocka_unit_test(test_sweeps),
        cmocka_unit_test(test_lanczos_cases),       cmocka_unit_test(test_lanczos_errors),
        cmocka_unit_test(test_refine_size),
    };
    return cmocka_run_group_tests(tests, load_cases, free_cases);
}
