/* job_limits.c - a job against the worker's per-job limits (job_limits.h). */
#include "job_limits.h"

#include <stdio.h>

/* The rejection: the field, what it asks, the setting that bounds it. */
static int over(char *field, size_t n, pf_error *err, const char *name, long long got, const char *unit,
                const char *setting, long limit) {
    snprintf(field, n, "%s", name);
    return pf_fail(err, "%s: %lld %s is over this worker's %s of %ld", name, got, unit, setting, limit);
}

int pf_job_limits_check(const pf_job *job, const pf_worker_config *cfg, char *field, size_t n, pf_error *err) {
    field[0] = '\0';
    if (job->num_images > cfg->max_images)
        return over(field, n, err, "num_images", job->num_images, "images", "max_images", cfg->max_images);
    if (job->steps > cfg->max_steps) return over(field, n, err, "steps", job->steps, "steps", "max_steps", cfg->max_steps);
    if (job->refine.on && job->refine.steps > cfg->max_steps)
        return over(field, n, err, "refine.steps", job->refine.steps, "steps", "max_steps", cfg->max_steps);
    if (!job->width || !job->height) return 0;
    long long px = (long long)job->width * job->height;
    if (px > cfg->max_pixels)
        return over(field, n, err, job->width >= job->height ? "width" : "height", px, "pixels", "max_pixels",
                    cfg->max_pixels);
    if (job->refine.on && job->refine.size) {
        /* the refined image: the short side at refine.size, the aspect kept */
        long long lo = job->width < job->height ? job->width : job->height;
        long long hi = job->width < job->height ? job->height : job->width;
        long long rpx = (long long)job->refine.size * job->refine.size * hi / lo;
        if (rpx > cfg->max_pixels)
            return over(field, n, err, "refine.size", rpx, "pixels", "max_pixels", cfg->max_pixels);
    }
    return 0;
}
