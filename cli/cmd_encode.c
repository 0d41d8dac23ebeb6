/* cmd_encode.c - `perflow encode`: a prompt through a model's tokenizer and CLIP
 * text encoder, written as a safetensors file. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "clip.h"
#include "commands.h"
#include "model_dir.h"
#include "safetensors.h"
#include "tokenizer.h"

static void encode_usage(FILE *f) {
    fprintf(f,
            "usage: perflow encode --model DIR --prompt TEXT --out FILE.safetensors\n"
            "                      [--clip-skip N] [--threads N] [--device auto|cpu|cuda|cuda:N]\n\n"
            "Tokenizes TEXT with DIR/tokenizer (77 tokens, truncated and padded) and runs\n"
            "DIR/text_encoder on it. Writes \"prompt_embeds\" (1, 77, hidden) float32 and\n"
            "\"input_ids\" (1, 77) as float32 to FILE, with the prompt in the metadata.\n"
            "--clip-skip N uses the hidden state N layers before the last (diffusers' clip_skip).\n"
            "--device: as for perflow generate (auto: $PERFLOW_DEVICE, else a CUDA GPU when\n"
            "present, else the CPU; on a GPU the encoder runs in float16).\n");
}

int cmd_encode(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"out", required_argument, 0, 'o'},     {"clip-skip", required_argument, 0, 's'},
        {"threads", required_argument, 0, 't'}, {"device", required_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0},
    };
    const char *model = NULL, *prompt = NULL, *out = NULL, *device = NULL;
    int clip_skip = 0, threads = 0, c;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'o': out = optarg; break;
        case 'v': device = optarg; break;
        case 's':
            clip_skip = (int)strtol(optarg, &end, 10);
            if (*end || clip_skip < 0) {
                fprintf(stderr, "perflow: --clip-skip must be a non-negative integer\n");
                return 2;
            }
            break;
        case 't':
            threads = (int)strtol(optarg, &end, 10);
            if (*end || threads < 0) {
                fprintf(stderr, "perflow: --threads must be a non-negative integer\n");
                return 2;
            }
            break;
        case 'h': encode_usage(stdout); return 0;
        default: encode_usage(stderr); return 2;
        }
    }
    if (!model || !prompt || !out || optind != argc) {
        encode_usage(stderr);
        return 2;
    }

    pf_error err = {0};
    pf_backend *be = pf_backend_open(device, threads, &err);
    pf_tokenizer *tok = NULL;
    pf_clip_text_model *te = NULL;
    pf_tensor *emb = NULL;
    float *host = NULL, *ids_f = NULL;
    int rc = 1;
    char tok_dir[4096];
    snprintf(tok_dir, sizeof tok_dir, "%s/tokenizer", model);
    if (!be || pf_model_dir_check(model, &err) || pf_tokenizer_load(&tok, tok_dir, &err) ||
        pf_clip_text_model_load_dir(&te, be, model, &err))
        goto done;
    const int L = 77;
    const int D = pf_clip_text_model_config(te)->hidden_size;
    int32_t ids[77];
    if (pf_tokenizer_encode(tok, prompt, ids, L, &err)) goto done;
    emb = pf_new3(be, 1, L, D);
    if (pf_clip_text_model_forward(te, emb, ids, 1, L, clip_skip, &err)) goto done;
    host = PF_MALLOC((size_t)L * D * sizeof *host);
    ids_f = PF_MALLOC((size_t)L * sizeof *ids_f);
    pf_to_host(host, emb);
    for (int i = 0; i < L; i++) ids_f[i] = (float)ids[i];
    const pf_st_entry entries[] = {
        {"prompt_embeds", PF_F32, 3, (int64_t[]){1, L, D}, host},
        {"input_ids", PF_F32, 2, (int64_t[]){1, L}, ids_f},
    };
    char skip[16];
    snprintf(skip, sizeof skip, "%d", clip_skip);
    const char *meta[] = {"prompt", prompt, "model", model, "clip_skip", skip, NULL};
    if (pf_st_write(out, entries, 2, meta, &err)) goto done;
    rc = 0;
done:
    if (rc) fprintf(stderr, "perflow: %s\n", err.msg);
    free(host);
    free(ids_f);
    pf_free(emb);
    pf_clip_text_model_free(te);
    pf_tokenizer_free(tok);
    pf_backend_free(be);
    return rc;
}
