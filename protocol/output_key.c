/* output_key.c - result keys from a template and the job. */
#include "output_key.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

int pf_job_id_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 128 || s[0] == '.') return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-') return 0;
    return 1;
}

int pf_output_key(char *out, size_t n, const char *tmpl, const char *job_id, int index, uint64_t seed, pf_error *err) {
    if (!pf_job_id_ok(job_id))
        return pf_fail(err, "job id must be 1 to 128 of [A-Za-z0-9._-], not starting with '.'");
    if (index < 0) return pf_fail(err, "output index must not be negative");
    size_t o = 0;
    for (const char *p = tmpl; *p;) {
        char piece[160];
        const char *add;
        if (*p == '{') {
            const char *close = strchr(p, '}');
            size_t len = close ? (size_t)(close - p + 1) : 0;
            if (close && len == 8 && !strncmp(p, "{job_id}", 8)) {
                add = job_id;
            } else if (close && len == 7 && !strncmp(p, "{index}", 7)) {
                snprintf(piece, sizeof piece, "%d", index);
                add = piece;
            } else if (close && len == 6 && !strncmp(p, "{seed}", 6)) {
                snprintf(piece, sizeof piece, "%llu", (unsigned long long)seed);
                add = piece;
            } else {
                return pf_fail(err, "output template: unknown placeholder at '%.20s' ({job_id}, {index}, {seed} are known)", p);
            }
            p = close + 1;
        } else if (*p == '}') {
            return pf_fail(err, "output template: '}' without '{'");
        } else if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            return pf_fail(err, "output template has a control character");
        } else {
            piece[0] = *p++;
            piece[1] = '\0';
            add = piece;
        }
        size_t al = strlen(add);
        if (o + al >= n) return pf_fail(err, "output key longer than %zu bytes", n - 1);
        memcpy(out + o, add, al);
        o += al;
    }
    if (o == 0) return pf_fail(err, "output template is empty");
    out[o] = '\0';
    return 0;
}

/* 1 when path is under the folder named by the n bytes at root (trailing
 * slashes ignored): root itself followed by '/'. */
static int under(const char *path, const char *root, size_t n) {
    while (n > 1 && root[n - 1] == '/') n--;
    return n && !strncmp(path, root, n) && path[n] == '/';
}

int pf_output_allowed(const char *dest, const char *file_root, const char *s3_prefixes, pf_error *err) {
    if (!strncmp(dest, "file://", 7)) {
        if (!file_root || !*file_root)
            return pf_fail(err, "file:// outputs are disabled on this worker (file_output_root is not set)");
        if (!under(dest + 7, file_root, strlen(file_root)))
            return pf_fail(err, "file:// outputs must be under %s (file_output_root)", file_root);
        return 0;
    }
    if (!strncmp(dest, "s3://", 5)) {
        if (!s3_prefixes || !*s3_prefixes)
            return pf_fail(err, "s3:// outputs are disabled on this worker (s3_output_prefixes is not set)");
        for (const char *p = s3_prefixes; *p;) {
            while (*p == ',' || *p == ' ') p++;
            const char *e = p;
            while (*e && *e != ',' && *e != ' ') e++;
            if (e > p && under(dest + 5, p, (size_t)(e - p))) return 0;
            p = e;
        }
        return pf_fail(err, "s3:// outputs must be under one of %s (s3_output_prefixes)", s3_prefixes);
    }
    return pf_fail(err, "outputs must be s3:// (s3_output_prefixes) or file:// (file_output_root) URLs");
}
