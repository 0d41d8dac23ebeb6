/* fuzz_safetensors.c - libFuzzer target for the safetensors reader: any byte
 * string must either be rejected with a message or parse into tensors whose
 * float data can be read back, never touch memory outside the input.
 *
 *   make fuzz && mkdir -p /tmp/st_corpus &&
 *   UBSAN_OPTIONS=halt_on_error=1 build/fuzz/fuzz_safetensors -max_total_time=60 \
 *       /tmp/st_corpus tests/fuzz/corpus_safetensors
 * New inputs go to the first directory, which keeps them out of the repository;
 * halt_on_error because the fuzz build lets UBSan recover otherwise. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

/* Larger tensors are valid but would only cost time and memory; the reader's
 * bounds were checked at parse, whatever the size. */
#define MAX_NUMEL (1 << 16)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pf_safetensors *st;
    pf_error err = {0};
    if (pf_st_parse(&st, data, size, "fuzz", &err)) {
        if (st != NULL || strncmp(err.msg, "fuzz: ", 6) || strchr(err.msg, '\n')) abort();
        return 0;
    }
    float *buf = malloc(MAX_NUMEL * sizeof(float));
    for (int i = 0; i < st->count; i++) {
        const pf_st_tensor *t = &st->tensors[i];
        if (pf_st_find(st, t->name) != t) abort();
        int is_float = t->dtype == PF_ST_F32 || t->dtype == PF_ST_F16 || t->dtype == PF_ST_BF16;
        if (!is_float || pf_st_numel(t) <= MAX_NUMEL)
            if (pf_st_read_f32(st, t, buf, &err) != (is_float ? 0 : -1)) abort();
    }
    free(buf);
    pf_st_close(st);
    return 0;
}
