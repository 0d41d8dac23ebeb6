/* fuzz_weights.c - libFuzzer target for the parsers of untrusted names that
 * weight formats bring (engine/formats/weights.c, engine/formats/convert.c): a sharded-weights
 * index (*.safetensors.index.json), LoRA key spellings (and kohya's SDXL block
 * numbering), and an LDM checkpoint's
 * names and shapes. Any input must be parsed or refused with one line, never
 * read outside itself or leak.
 *
 *   make fuzz && mkdir -p /tmp/w_corpus &&
 *   UBSAN_OPTIONS=halt_on_error=1 build/fuzz/fuzz_weights -max_total_time=60 /tmp/w_corpus tests/fuzz/corpus_weights
 * New inputs go to the first directory, which keeps them out of the repository. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "safetensors.h"
#include "weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pf_error err = {0};
    /* 1. the bytes as a sharded index */
    pf_shard_index idx;
    if (pf_shard_index_parse(&idx, (const char *)data, size, "fuzz", &err) == 0) {
        for (int i = 0; i < idx.count; i++)
            if (!*idx.names[i] || !*idx.shards[i] || strchr(idx.shards[i], '/') || !strcmp(idx.shards[i], ".."))
                abort();
    } else if (idx.count != 0 || strncmp(err.msg, "fuzz: ", 6) || strchr(err.msg, '\n')) {
        abort();
    }
    pf_shard_index_free(&idx);
    /* 2. each line as a LoRA key */
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        pf_lora_key k;
        if (pf_lora_key_parse(&k, line) == 0 &&
            (!k.module[0] || strlen(k.module) >= sizeof k.module || k.part < -1 || k.part >= PF_NUM_PARTS))
            abort();
        /* kohya's SDXL block numbering: a diffusers module in kohya's form, or nothing */
        char sgm[600];
        for (int lpb = 0; lpb < 4; lpb++)
            if (pf_lora_kohya_sgm(sgm, sizeof sgm, line, lpb) == 0 &&
                (lpb < 1 || strlen(sgm) >= sizeof sgm || strchr(sgm, '.') ||
                 (strncmp(sgm, "down_blocks_", 12) && strncmp(sgm, "mid_block_", 10) && strncmp(sgm, "up_blocks_", 10))))
                abort();
    }
    free(text);
    /* 3. the bytes as a checkpoint: its family from names and shapes */
    pf_safetensors *st;
    if (pf_st_parse(&st, data, size, "fuzz", &err) == 0) {
        pf_ldm_info info;
        char line[512];
        pf_ldm_probe(&info, st);
        pf_ldm_describe(line, sizeof line, &info);
        if (strchr(line, '\n')) abort();
        pf_st_close(st);
    }
    return 0;
}
