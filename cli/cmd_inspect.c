/* cmd_inspect.c - `perflow inspect FILE`: validates a safetensors file (or a
 * sharded set's index), says what it is - a diffusers component, an LDM
 * single-file checkpoint of which family, a LoRA of which format and, given
 * --model, how many of its tensors match that model - and lists its tensors,
 * one line each: "name dtype shape". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "commands.h"
#include "convert.h"
#include "lora.h"
#include "safetensors.h"
#include "unet.h"

static void usage(FILE *f) {
    fprintf(f, "usage: perflow inspect [--help] [--summary] [--model DIR|FILE [--model-config DIR]] FILE\n"
               "  Validates FILE (.safetensors, or a sharded set's *.safetensors.index.json) and says what it\n"
               "  is on lines starting '# ': a diffusers component (UNet, VAE, text encoder, ControlNet), a\n"
               "  single-file LDM checkpoint (its family, components and skipped keys), a LoRA (its format,\n"
               "  modules and, with --model, how many of its tensors match that model's weights) or an\n"
               "  IP-Adapter (plain or Plus, its widths and, with --model DIR, whether it fits). Then one\n"
               "  line per tensor, sorted by name: NAME DTYPE SHAPE (--summary: the '# ' lines only).\n"
               "  Exit status: 0 valid, 1 invalid or unreadable, 2 usage error.\n");
}

/* What a set of tensor names is, as a diffusers component; NULL when none. */
static const char *component_kind(int (*has)(const void *, const char *), const void *x) {
    if (has(x, "controlnet_cond_embedding.conv_in.weight"))
        return has(x, "add_embedding.linear_1.weight")
                   ? "diffusers ControlNetModel weights with SDXL's text_time embedding (an SDXL ControlNet)"
                   : "diffusers ControlNetModel weights (an SD-1.x/2.x ControlNet)";
    if (has(x, "conv_in.weight") && has(x, "time_embedding.linear_1.weight"))
        return has(x, "add_embedding.linear_1.weight")
                   ? "diffusers UNet2DConditionModel weights with SDXL's text_time embedding (or a PeRFlow delta)"
                   : "diffusers UNet2DConditionModel weights (or a PeRFlow delta of them)";
    if (has(x, "encoder.conv_in.weight") && has(x, "decoder.conv_in.weight")) return "diffusers AutoencoderKL weights";
    if (has(x, "text_model.embeddings.token_embedding.weight") || has(x, "embeddings.token_embedding.weight"))
        return has(x, "text_projection.weight") ? "transformers CLIPTextModelWithProjection weights"
                                                : "transformers CLIPTextModel weights";
    return NULL;
}

static int st_has(const void *x, const char *name) { return pf_st_find(x, name) != NULL; }
static int w_has(const void *x, const char *name) { return pf_weights_has(x, name); }

/* The '# ' lines of a LoRA, and with model its matches against that model. */
static int describe_lora(const char *path, const char *model, const char *model_config, pf_error *err) {
    pf_lora *l;
    if (pf_lora_open(&l, path, err)) return -1;
    int rc = 0;
    pf_checkpoint *c = NULL;
    if (model) { /* matched first, so that an error prints nothing on stdout */
        pf_model_spec spec = {.model = model, .model_config = model_config};
        rc = pf_checkpoint_open(&c, &spec, err);
        if (!rc && pf_checkpoint_attach_lora(c, l, 1.0f, err) < 0) rc = -1;
    }
    if (!rc) {
        int te2 = pf_lora_num_modules(l, PF_PART_TEXT_ENCODER_2);
        printf("# LoRA, %s format: %d tensors; modules: unet %d, text_encoder %d, text_encoder_2 %d%s\n",
               pf_lora_format_name(pf_lora_format_of(l)), pf_lora_num_tensors(l),
               pf_lora_num_modules(l, PF_PART_UNET), pf_lora_num_modules(l, PF_PART_TEXT_ENCODER), te2,
               te2 ? " (an SDXL LoRA: it changes a second text encoder)" : "");
    }
    if (!rc && model) {
        char keys[1024];
        int miss = pf_lora_unmatched(l, 0, keys, sizeof keys);
        printf("# against %s: %d of %d tensors match%s%s\n", model, pf_lora_matched(l, 0), pf_lora_num_tensors(l),
               miss ? "; not matched: " : "", miss ? keys : "");
    }
    pf_checkpoint_close(c);
    pf_lora_close(l);
    return rc;
}

/* The cross-attentions a UNet config implies (every attn2, as unet.c numbers
 * them): the transformer layers of each CrossAttn down and up block's resnets
 * and of the mid block. */
static int config_cross_attentions(const pf_unet_config *c) {
    const int nb = c->num_blocks;
    int n = c->transformer_layers[nb - 1]; /* mid */
    for (int i = 0; i < nb; i++) {
        if (c->down_cross_attn[i]) n += c->layers_per_block[i] * c->transformer_layers[i];
        if (c->up_cross_attn[nb - 1 - i]) n += (c->layers_per_block[i] + 1) * c->transformer_layers[i];
    }
    return n;
}

/* The '# ' lines of an IP-Adapter file (image_proj.* and ip_adapter.N.*), and
 * with model (a diffusers folder) whether it fits that model's UNet. */
static int describe_ip_adapter(const pf_safetensors *st, const char *model, pf_error *err) {
    const pf_st_tensor *k1 = pf_st_find(st, "ip_adapter.1.to_k_ip.weight"), *lat = pf_st_find(st, "image_proj.latents");
    const pf_st_tensor *proj = pf_st_find(st, lat ? "image_proj.proj_in.weight" : "image_proj.proj.weight");
    if (!k1 || k1->ndim != 2 || !proj || proj->ndim != 2 || (lat && lat->ndim != 3))
        return pf_fail(err, "an IP-Adapter file without ip_adapter.1.to_k_ip and image_proj.%s matrices",
                       lat ? "proj_in" : "proj");
    int n = 0;
    for (int i = 0; i < st->count; i++) {
        int id, end = 0;
        if (sscanf(st->tensors[i].name, "ip_adapter.%d.to_k_ip.weight%n", &id, &end) == 1 && !st->tensors[i].name[end])
            n++;
    }
    const long long X = k1->shape[1], E = proj->shape[1], N = lat ? lat->shape[1] : proj->shape[0] / X;
    const char *fam = X == 2048 ? " (SDXL)" : X == 768 ? " (SD-1.5)" : X == 1024 ? " (SD-2)" : "";
    printf("# IP-Adapter%s: %d cross-attentions over %lld-wide image tokens%s, %lld tokens from %s of %lld "
           "(the image encoder's %s)\n", lat ? " Plus (Resampler)" : "", n, X, fam, N,
           lat ? "the penultimate hidden states" : "image_embeds", E, lat ? "hidden_size" : "projection_dim");
    if (!model) return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/unet/config.json", model);
    pf_unet_config c;
    if (pf_unet_config_read(&c, path, err)) return pf_error_prefix(err, "--model %s (a diffusers folder)", model);
    const int want = config_cross_attentions(&c);
    if (want == n && c.cross_attention_dim == X)
        printf("# against %s: fits its UNet (%d cross-attentions over %d)\n", model, want, c.cross_attention_dim);
    else
        printf("# against %s: does not fit: its UNet has %d cross-attentions over %d\n", model, want,
               c.cross_attention_dim);
    return 0;
}

/* The '# ' lines of an LDM checkpoint. */
static void describe_ldm(const pf_ldm_info *info, int count) {
    char found[512];
    pf_ldm_describe(found, sizeof found, info);
    printf("# LDM single-file checkpoint, family %s: %s\n", pf_ldm_family_name(info->family), found);
    printf("# %d tensors: unet %d, vae %d, text_encoder %d, text_encoder_2 %d; skipped on purpose %d (EMA copies "
           "%d, other %d); unknown %d%s%s\n",
           count, info->count[PF_PART_UNET], info->count[PF_PART_VAE], info->count[PF_PART_TEXT_ENCODER],
           info->count[PF_PART_TEXT_ENCODER_2], info->ema + info->skipped, info->ema, info->skipped, info->unknown, info->unknown ? ", first " : "",
           info->first_unknown);
    if (info->family == PF_LDM_UNKNOWN)
        printf("# not SD-1.x, SD-2.x or SDXL: load it with --model-config DIR (a diffusers folder of its configs)\n");
}

/* Names are valid UTF-8 but may hold control characters ("\n" is a legal
 * JSON escape); they are written as \xNN, as in the reader's messages, to
 * keep one tensor per line. */
static void print_name(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", stdout);
        else if (*p < 0x20 || *p == 0x7f)
            printf("\\x%02x", *p);
        else
            putchar(*p);
    }
}

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL, *model = NULL, *model_config = NULL;
    int summary = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--summary")) {
            summary = 1;
            continue;
        }
        if ((!strcmp(argv[i], "--model") || !strcmp(argv[i], "--model-config")) && i + 1 < argc) {
            *(argv[i][7] ? &model_config : &model) = argv[i + 1];
            i++;
            continue;
        }
        if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "perflow: inspect: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
        if (path) {
            fprintf(stderr, "perflow: inspect: expected one file, got '%s' and '%s'\n", path, argv[i]);
            usage(stderr);
            return 2;
        }
        path = argv[i];
    }
    if (!path) {
        fprintf(stderr, "perflow: inspect: missing FILE\n");
        usage(stderr);
        return 2;
    }

    pf_error err = {0};
    size_t len = strlen(path);
    if (len >= 5 && !strcmp(path + len - 5, ".json")) { /* a sharded set: its entries across the shards */
        pf_weights *w;
        if (pf_weights_open(&w, path, &err)) {
            fprintf(stderr, "perflow: %s\n", err.msg);
            return 1;
        }
        const char *kind = component_kind(w_has, w);
        printf("# sharded weights: %d tensors%s%s\n", pf_weights_count(w), kind ? ", " : "", kind ? kind : "");
        for (int i = 0; !summary && i < pf_weights_count(w); i++) {
            const char *name = pf_weights_name(w, i);
            int64_t shape[PF_MAX_DIMS];
            int nd = pf_weights_shape(w, name, shape);
            char sh[160];
            print_name(name);
            printf(" %s %s\n", pf_st_dtype_name(pf_weights_source(w, name, NULL)->dtype),
                   pf_shape_str_raw(nd, shape, sh, sizeof sh));
        }
        pf_weights_close(w);
        return fflush(stdout) || ferror(stdout) ? 1 : 0;
    }
    pf_safetensors *st;
    if (pf_st_open(&st, path, &err)) {
        fprintf(stderr, "perflow: %s\n", err.msg);
        return 1;
    }
    /* what it is: a LoRA (every key a LoRA spelling), an LDM checkpoint, a diffusers component */
    int lora_keys = 0;
    for (int i = 0; i < st->count; i++) {
        pf_lora_key k;
        lora_keys += pf_lora_key_parse(&k, st->tensors[i].name) == 0;
    }
    pf_ldm_info info;
    const char *kind = component_kind(st_has, st);
    int rc = 0;
    if (pf_st_find(st, "ip_adapter.1.to_k_ip.weight")) {
        rc = describe_ip_adapter(st, model, &err);
    } else if (st->count && lora_keys * 2 > st->count) {
        rc = describe_lora(path, model, model_config, &err);
    } else if (pf_ldm_probe(&info, st)) {
        describe_ldm(&info, st->count);
    } else if (kind) {
        printf("# %s\n", kind);
    }
    if (rc) {
        fprintf(stderr, "perflow: %s\n", err.msg);
        pf_st_close(st);
        return 1;
    }
    for (int i = 0; !summary && i < st->count; i++) {
        const pf_st_tensor *t = &st->tensors[i];
        char shape[160];
        print_name(t->name);
        printf(" %s %s\n", pf_st_dtype_name(t->dtype), pf_shape_str_raw(t->ndim, t->shape, shape, sizeof shape));
    }
    pf_st_close(st);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "perflow: %s: error writing the listing to stdout\n", path);
        return 1;
    }
    return 0;
}
