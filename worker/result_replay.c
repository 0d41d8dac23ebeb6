/* result_replay.c - images looked up in the result store before the engine and recorded after it (result_replay.h). */
#include "result_replay.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "image.h"
#include "image_identity.h"
#include "log.h"
#include "metrics.h"
#include "result_store.h"
#include "scratch.h"

void pf_replay_identity(char hex[PF_SHA256_HEX], const pf_exec *x, const pf_model *model, const pf_exec_job *j,
                        int index) {
    json_t *doc = pf_image_identity_doc(&j->rq.gen, &j->job, model, x->numerics, index);
    pf_image_identity(hex, doc);
    json_decref(doc);
}

int pf_replay_png(const pf_exec *x, const uint8_t *rgb, int w, int h, const char *tag, uint8_t **png, size_t *len,
                  pf_error *err) {
    char path[2048];
    *png = NULL;
    if (pf_scratch_file(path, sizeof path, x->cfg->work_dir, "replay", ".png", err)) return -1;
    if (pf_png_write(path, rgb, w, h, NULL, err)) return -1;
    int rc = pf_read_whole_file(png, len, path, SIZE_MAX, NULL, err);
    unlink(path);
    return rc;
}

int pf_replay_lookup(pf_exec *x, const pf_model *model, pf_exec_job *j, uint8_t **rgb) {
    const pf_job *job = &j->job;
    *rgb = NULL;
    if (!x->rstore || job->refine.on) return 0;
    const int n = job->num_images;
    const size_t px = (size_t)job->width * job->height * 3;
    if (!j->store_ids) j->store_ids = PF_CALLOC((size_t)n, sizeof *j->store_ids);
    for (int i = 0; i < n; i++) pf_replay_identity(j->store_ids[i], x, model, j, i);
    uint8_t *out = PF_MALLOC(px * (size_t)n);
    int hits = 0, errors = 0;
    for (int i = 0; i < n; i++) {
        uint8_t *png, *pix = NULL;
        size_t len;
        int w, h;
        pf_error e;
        if (pf_rstore_get(x->rstore, j->store_ids[i], &png, &len, &e)) {
            pf_wlog(PF_LOG_WARN, "result_store.failed", job->job_id, NULL, "looking up image %d: %s", i, e.msg);
            errors++;
            break;
        }
        if (!png) break;
        int ok = !pf_image_decode(png, len, "stored image", &pix, &w, &h, &e) && w == job->width && h == job->height;
        free(png);
        if (!ok) { /* the index named a file that is not this image: compute it */
            pf_wlog(PF_LOG_WARN, "result_store.bad_object", job->job_id, json_pack("{s:s}", "id", j->store_ids[i]),
                    "image %d: the stored object is not a %dx%d image", i, job->width, job->height);
            free(pix);
            errors++;
            break;
        }
        memcpy(out + px * (size_t)i, pix, px);
        free(pix);
        hits++;
    }
    if (hits == n) {
        pf_metrics_result_store(n, 0, 0);
        pf_wlog(PF_LOG_INFO, "result_store.hit", job->job_id, json_pack("{s:i}", "images", n), NULL);
        *rgb = out;
        return 1;
    }
    /* the job is computed whole: every image it asks for counts as a miss */
    pf_metrics_result_store(0, n, errors);
    free(out);
    return 0;
}

void pf_replay_record(pf_exec *x, const pf_exec_job *j, const uint8_t *rgb) {
    const pf_job *job = &j->job;
    if (!x->rstore || !j->store_ids) return;
    const size_t px = (size_t)job->width * job->height * 3;
    for (int i = 0; i < job->num_images; i++) {
        uint8_t *png;
        size_t len;
        pf_error e;
        if (pf_replay_png(x, rgb + px * (size_t)i, job->width, job->height, j->store_ids[i], &png, &len, &e) ||
            pf_rstore_put(x->rstore, j->store_ids[i], png, len, &e)) {
            pf_wlog(PF_LOG_WARN, "result_store.failed", job->job_id, NULL, "recording image %d: %s", i, e.msg);
            pf_metrics_result_store(0, 0, 1);
        }
        free(png);
    }
}

void pf_replay_clear(pf_exec_job *j) {
    free(j->store_ids);
    j->store_ids = NULL;
}
