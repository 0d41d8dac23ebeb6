/* submit_manifest.c - batch manifests, local or in S3 (submit_manifest.h). */
#include "submit_manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"
#include "storage.h"

struct pf_manifest {
    char dest[2048];
    char tmp[4096];
    int fd;
    int s3;
    long lines;
};

int pf_manifest_open(pf_manifest **out, const char *dest, pf_error *err) {
    *out = NULL;
    pf_manifest *m = PF_CALLOC(1, sizeof *m);
    m->fd = -1;
    if (strlen(dest) >= sizeof m->dest) {
        free(m);
        return pf_fail(err, "manifest destination longer than %zu bytes", sizeof m->dest - 1);
    }
    snprintf(m->dest, sizeof m->dest, "%s", dest);
    m->s3 = !strncmp(dest, "s3://", 5);
    if (m->s3) {
        char bucket[64], key[1100];
        if (pf_s3_parse_dest(bucket, sizeof bucket, key, sizeof key, dest, err)) {
            free(m);
            return pf_error_prefix(err, "--manifest");
        }
        const char *t = getenv("TMPDIR");
        snprintf(m->tmp, sizeof m->tmp, "%s/perflow-manifest-XXXXXX", t && *t ? t : "/tmp");
    } else {
        snprintf(m->tmp, sizeof m->tmp, "%s.tmp-XXXXXX", dest);
    }
    m->fd = mkstemp(m->tmp);
    if (m->fd < 0) {
        int e = errno;
        free(m);
        return pf_fail(err, "manifest %s: cannot create a file beside it: %s", dest, strerror(e));
    }
    *out = m;
    return 0;
}

int pf_manifest_add(pf_manifest *m, const char *batch_id, const char *job_id, const char *prompt,
                    const char *negative_prompt, uint64_t seed, long line, const json_t *settings,
                    const json_t *status, const char *state, pf_error *err) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I}", "batch_id", batch_id, "job_id", job_id, "prompt",
                          prompt ? prompt : "", "negative_prompt", negative_prompt ? negative_prompt : "", "seed",
                          (json_int_t)seed);
    if (!o) /* Redis may hold anything (perflow status reads the batch index there) */
        return pf_fail(err, "manifest: job %.140s: its ids or prompts are not valid UTF-8", job_id);
    if (line > 0) json_object_set_new(o, "line", json_integer(line));
    if (settings) json_object_set(o, "settings", (json_t *)settings);
    const char *st = state ? state : json_string_value(json_object_get(status, "state"));
    json_object_set_new(o, "state", json_string(st ? st : "unknown"));
    json_t *outputs = json_object_get(status, "outputs"), *error = json_object_get(status, "error");
    json_object_set_new(o, "outputs", json_is_array(outputs) ? json_incref(outputs) : json_array());
    if (json_is_object(error)) json_object_set(o, "error", error);
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    PF_CHECK(s);
    size_t n = strlen(s);
    s[n] = '\n'; /* replaces the NUL: written with its length */
    int rc = pf_write_all(m->fd, s, n + 1);
    free(s);
    if (rc) return pf_fail(err, "manifest %s: write failed: %s", m->tmp, strerror(errno));
    m->lines++;
    return 0;
}

long pf_manifest_lines(const pf_manifest *m) {
    return m->lines;
}

int pf_manifest_close(pf_manifest *m, int commit, pf_error *err) {
    if (!m) return 0;
    int rc = 0;
    if (commit && !m->s3) {
        rc = pf_fsync_rename(m->fd, m->tmp, m->dest, err);
    } else if (commit) {
        pf_s3_config cfg;
        pf_credentials cred;
        pf_s3_result res;
        rc = pf_s3_config_from_env(&cfg, err) || pf_credentials_load(&cred, err) ? -1 : 0;
        if (!rc) {
            rc = pf_s3_put_file(&res, &cfg, &cred, m->dest, m->tmp, err);
            pf_credentials_free(&cred);
        }
        if (rc) pf_error_prefix(err, "uploading the manifest");
    }
    close(m->fd);
    if (!commit || rc || m->s3) unlink(m->tmp);
    free(m);
    return rc;
}
