/* model_source.c - model sources as jobs name them: a file URL, a diffusers base URL, a
 * component folder URL, or a diffusers folder's configs. */
#include "model_source.h"

#include <stdio.h>
#include <string.h>

#include "model_index.h"

int pf_model_source_init(pf_model_source *s, pf_source_kind kind, const char *url, const char *sha256,
                         int prefer_fp16, pf_error *err) {
    memset(s, 0, sizeof *s);
    pf_url u;
    if (pf_url_parse(&u, url, err)) return -1;
    if (sha256 && *sha256 && !pf_sha256_hex_valid(sha256))
        return pf_fail(err, "sha256 must be 64 lower-case hex digits");
    if (kind == PF_SOURCE_AUTO) {
        const char *q = strchr(u.path, '?');
        char path[PF_URL_MAX];
        snprintf(path, sizeof path, "%.*s", q ? (int)(q - u.path) : (int)strlen(u.path), u.path);
        const char *last = strrchr(path, '/');
        last = last ? last + 1 : path;
        /* a query string cannot be a base to append paths to: a file (a signed or redirecting URL) */
        kind = q || strchr(last + (*last == '.'), '.') ? PF_SOURCE_FILE : PF_SOURCE_DIFFUSERS;
    }
    if (kind != PF_SOURCE_FILE) { /* a folder: files go at <url>/<relpath> */
        if (strchr(u.path, '?')) return pf_fail(err, "a model's base URL must not have a query string");
        if (kind != PF_SOURCE_COMPONENT && kind != PF_SOURCE_IMAGE_ENCODER && sha256 && *sha256)
            return pf_fail(err, "a digest names one file; a diffusers model is checked file by file");
        size_t n = strlen(u.path);
        while (n > 1 && u.path[n - 1] == '/') u.path[--n] = '\0';
        if (n == 1) u.path[0] = '\0'; /* the server root: files go at /<relpath> */
    }
    if (pf_url_format(s->url, sizeof s->url, &u, err)) return -1;
    s->kind = kind;
    if (sha256 && *sha256) snprintf(s->sha256, sizeof s->sha256, "%s", sha256);
    s->prefer_fp16 = prefer_fp16;
    return 0;
}

int pf_model_source_file_url(char *out, size_t n, const pf_model_source *s, const char *relpath, pf_error *err) {
    PF_CHECK(s->kind != PF_SOURCE_FILE && pf_relpath_valid(relpath));
    int w = snprintf(out, n, "%s/%s", s->url, relpath);
    if (w < 0 || (size_t)w >= n) return pf_fail(err, "model URL too long for '%s'", relpath);
    return 0;
}
