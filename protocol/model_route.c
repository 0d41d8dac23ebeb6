/* model_route.c - a job's model identity and its partition (model_route.h). */
#include "model_route.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *source_json(const pf_job_source *s) {
    return json_pack("[s, s?]", s->url ? s->url : "", s->sha256);
}

char *pf_route_model_text(const pf_job *job) {
    json_t *loras = json_array();
    for (int i = 0; i < job->n_loras; i++)
        json_array_append_new(loras, json_pack("[o, f]", source_json(&job->loras[i]), (double)job->loras[i].scale));
    json_t *k = json_pack("{s:o, s:o, s:o, s:b, s:o}", "base", source_json(&job->base), "config",
                          source_json(&job->config), "delta", source_json(&job->delta), "fp16", job->fp16, "loras",
                          loras);
    char *s = json_dumps(k, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(k);
    PF_CHECK(s);
    return s;
}

void pf_route_model_id(char out[PF_SHA256_HEX], const pf_job *job) {
    char *s = pf_route_model_text(job);
    pf_sha256_hex(out, s, strlen(s));
    free(s);
}

int pf_route_partition(char key[PF_ROUTE_KEY_MAX], const char *model_id, long n, int spread, int partitions) {
    /* the digest's first 32 bits: spread evenly over any partition count */
    unsigned long start = strtoul((char[9]){model_id[0], model_id[1], model_id[2], model_id[3], model_id[4],
                                            model_id[5], model_id[6], model_id[7], 0},
                                  NULL, 16);
    long i = n % spread;
    if (key) snprintf(key, PF_ROUTE_KEY_MAX, "%.64s/%ld", model_id, i);
    return (int)((start + (unsigned long)i) % (unsigned long)partitions);
}
