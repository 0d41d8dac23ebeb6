/* bench_clip.c - CPU time of the real-size CLIP ViT-L/14 text encoder (random
 * weights, batch 2, 77 tokens). Usage: bench_clip MODEL_DIR [REPEAT] [THREADS]
 * Prints one JSON line like tests/reference/bench_reference.py. */
#include "bench_util.h"
#include "clip.h"

enum { B = 2, L = 77 };

typedef struct clip_run {
    pf_clip_text_model *te;
    pf_tensor *out;        /* (B, L, D) */
    int32_t ids[B * L];
} clip_run;

static int forward(void *ctx, pf_error *err) {
    clip_run *r = ctx;
    return pf_clip_text_model_forward(r->te, r->out, r->ids, B, L, 0, err);
}

int main(int argc, char **argv) {
    pf_bench_args a;
    if (pf_bench_args_parse(&a, "clip", argc, argv)) return 2;
    pf_error err;
    pf_backend *be = pf_backend_cpu_new(a.threads);
    clip_run r;
    if (pf_clip_text_model_load_dir(&r.te, be, a.model_dir, &err)) return pf_bench_fail("clip", &err);
    const pf_clip_text_config *c = pf_clip_text_model_config(r.te);
    srand(0);
    for (int i = 0; i < B * L; i++) r.ids[i] = rand() % c->vocab_size;
    r.out = pf_new3(be, B, L, c->hidden_size);
    int rc = pf_bench_time("clip", be, a.repeat, forward, &r);
    pf_free(r.out);
    pf_clip_text_model_free(r.te);
    pf_backend_free(be);
    return rc;
}
