/* bench_load.c - loading real-size SD-1.5 (random weights) from a single LDM
 * file (float16) with two LoRAs fused (kohya rank 32 at 0.8, PEFT rank 16 at
 * 0.5), onto the CPU backend in float32: the whole of pf_model_load, configs
 * from configs/sd15. Usage: bench_load MODEL_DIR [REPEAT] [THREADS], MODEL_DIR
 * holding sd15.safetensors, kohya.safetensors and peft.safetensors (made by
 * tests/reference/bench_reference.py load). Prints one JSON line like it. */
#include "bench_util.h"
#include "checkpoint.h"

typedef struct load_run {
    pf_backend *be;
    pf_model_spec spec;
} load_run;

static int load(void *ctx, pf_error *err) {
    load_run *r = ctx;
    pf_model_parts parts;
    if (pf_model_load(&parts, r->be, &r->spec, err)) return -1;
    pf_model_parts_free(&parts);
    return 0;
}

int main(int argc, char **argv) {
    pf_bench_args a;
    if (pf_bench_args_parse(&a, "load", argc, argv)) return 2;
    char ckpt[4096], kohya[4096], peft[4096];
    snprintf(ckpt, sizeof ckpt, "%s/sd15.safetensors", a.model_dir);
    snprintf(kohya, sizeof kohya, "%s/kohya.safetensors", a.model_dir);
    snprintf(peft, sizeof peft, "%s/peft.safetensors", a.model_dir);
    pf_lora_spec loras[2] = {{kohya, 0.8f}, {peft, 0.5f}};
    pf_lora_report reports[2];
    load_run r = {pf_backend_cpu_new(a.threads), {.model = ckpt, .loras = loras, .n_loras = 2, .lora_reports = reports}};
    int rc = pf_bench_time("load", r.be, a.repeat, load, &r);
    for (int i = 0; rc == 0 && i < 2; i++)
        if (reports[i].matched != reports[i].total)
            rc = fprintf(stderr, "bench_load: %s: %d of %d tensors matched\n", loras[i].path, reports[i].matched,
                         reports[i].total) > 0;
    pf_backend_free(r.be);
    return rc;
}
