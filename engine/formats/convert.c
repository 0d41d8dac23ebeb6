/* convert.c - weight namings to the engine's (convert.h).
 *
 * LDM keys are renamed one by one, as diffusers' single_file_utils.py does
 * with string replacements, but parsed strictly (block numbers are digits,
 * every part of a name is recognised) so that a key of an unknown layout is
 * counted as unknown instead of turning into a plausible wrong name. */
#include "convert.h"

#include <ctype.h>
#include <stdarg.h>
#include <string.h>

const char *pf_part_name(pf_part p) {
    static const char *const names[] = {"unet", "vae", "text_encoder", "text_encoder_2"};
    return p >= 0 && p < PF_NUM_PARTS ? names[p] : "?";
}

const char *pf_ldm_family_name(pf_ldm_family f) {
    switch (f) {
    case PF_LDM_SD1: return "SD-1.x";
    case PF_LDM_SD2: return "SD-2.x";
    case PF_LDM_SDXL: return "SDXL";
    default: return "unknown";
    }
}

/* ------------------------------------------------------------ LDM layout */

#define UNET_PREFIX "model.diffusion_model."
#define VAE_PREFIX "first_stage_model."
#define CLIP_PREFIX "cond_stage_model.transformer."
#define OPENCLIP_PREFIX "cond_stage_model.model."
#define XL_CLIP_PREFIX "conditioner.embedders.0.transformer."  /* SDXL's CLIP ViT-L */
#define XL_OPENCLIP_PREFIX "conditioner.embedders.1.model."    /* SDXL's OpenCLIP ViT-bigG */

/* Keys an LDM checkpoint holds that the engine deliberately does not read.
 * An entry ending in "." is a prefix, any other an exact key. */
static const char *const ldm_skipped[] = {
    "model_ema.",                 /* EMA copies of the UNet ("pruned" files): like diffusers' from_single_file
                                     (extract_ema=False), the non-EMA model.diffusion_model.* weights are used */
    "first_stage_model.loss.",    /* the VAE's training loss (LPIPS network, discriminator) */
    "cond_stage_model.transformer.text_model.embeddings.position_ids", /* a buffer: 0..76 */
    "cond_stage_model.transformer.embeddings.position_ids",
    "cond_stage_model.model.logit_scale",     /* OpenCLIP's contrastive head: not used for conditioning */
    "cond_stage_model.model.text_projection",
    "cond_stage_model.model.attn_mask",       /* the causal mask, rebuilt by the model */
    XL_CLIP_PREFIX "text_model.embeddings.position_ids", /* SDXL: the same buffer and heads */
    XL_OPENCLIP_PREFIX "logit_scale", XL_OPENCLIP_PREFIX "attn_mask",
    /* the training noise schedule (LatentDiffusion.register_schedule): the scheduler config holds it */
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights", "model.diffusion_model.logvar",
};

static int is_skipped(const char *key) {
    for (size_t i = 0; i < sizeof ldm_skipped / sizeof *ldm_skipped; i++) {
        size_t n = strlen(ldm_skipped[i]);
        if (ldm_skipped[i][n - 1] == '.' ? !strncmp(key, ldm_skipped[i], n) : !strcmp(key, ldm_skipped[i]))
            return 1;
    }
    return 0;
}

static int starts(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

/* Reads an unsigned decimal number (< 100000) and the `sep` after it at *p; advances *p. */
static int read_number(const char **p, int *out, char sep) {
    const char *s = *p;
    long v = 0;
    if (!isdigit((unsigned char)*s)) return 0;
    while (isdigit((unsigned char)*s) && v < 100000) v = v * 10 + (*s++ - '0');
    if (*s != sep || v >= 100000) return 0;
    *out = (int)v;
    *p = s + 1;
    return 1;
}

static int read_index(const char **p, int *out) { return read_number(p, out, '.'); }

/* Reads `lit` at *p; advances *p. */
static int read_lit(const char **p, const char *lit) {
    size_t n = strlen(lit);
    if (strncmp(*p, lit, n)) return 0;
    *p += n;
    return 1;
}

/* Appends to out (n bytes) with a printf format; returns 0, -1 when cut. */
__attribute__((format(printf, 3, 4))) static int put(char *out, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    return len >= 0 && (size_t)len < n ? 0 : -1;
}

/* A pair of (LDM, diffusers) name parts, matched as prefixes. */
typedef struct name_map {
    const char *from, *to;
} name_map;

/* Replaces the prefix of s found in table (the first match); -1 when none. */
static int renamed(char *out, size_t n, const char *head, const char *s, const name_map *table, size_t count) {
    for (size_t i = 0; i < count; i++)
        if (starts(s, table[i].from)) return put(out, n, "%s%s%s", head, table[i].to, s + strlen(table[i].from));
    return -1;
}

/* ResnetBlock2D of the LDM UNet: in_layers.0/.2, out_layers.0/.3, emb_layers.1, skip_connection. */
static int unet_resnet(char *out, size_t n, const char *head, const char *rest) {
    static const name_map t[] = {{"in_layers.0.", "norm1."},  {"in_layers.2.", "conv1."},
                               {"out_layers.0.", "norm2."}, {"out_layers.3.", "conv2."},
                               {"emb_layers.1.", "time_emb_proj."}, {"skip_connection.", "conv_shortcut."}};
    return renamed(out, n, head, rest, t, sizeof t / sizeof *t);
}

/* convert_ldm_unet_checkpoint: k without "model.diffusion_model.". input_blocks
 * i >= 1 is layer (i-1) % (L+1) of down block (i-1) / (L+1), L layers per block
 * (the last of each block's L+1 is its downsampler); output_blocks i is layer
 * i % (L+1) of up block i / (L+1); the SpatialTransformer keeps its names. */
static int unet_key(char *out, size_t n, const char *k, int lpb) {
    static const name_map fixed[] = {{"time_embed.0.", "time_embedding.linear_1."},
                                   {"time_embed.2.", "time_embedding.linear_2."},
                                   {"input_blocks.0.0.", "conv_in."},
                                   {"out.0.", "conv_norm_out."},
                                   {"out.2.", "conv_out."},
                                   {"label_emb.0.0.", "add_embedding.linear_1."}, /* SDXL's text_time embedding */
                                   {"label_emb.0.2.", "add_embedding.linear_2."}};
    if (renamed(out, n, "", k, fixed, sizeof fixed / sizeof *fixed) == 0) return 0;
    const char *p = k;
    int i, j;
    char head[128];
    if (read_lit(&p, "input_blocks.") && read_index(&p, &i) && read_index(&p, &j) && i >= 1) {
        int b = (i - 1) / (lpb + 1), l = (i - 1) % (lpb + 1);
        if (j == 0 && read_lit(&p, "op.")) return put(out, n, "down_blocks.%d.downsamplers.0.conv.%s", b, p);
        snprintf(head, sizeof head, "down_blocks.%d.%s.%d.", b, j == 0 ? "resnets" : "attentions", l);
        if (j == 0) return unet_resnet(out, n, head, p);
        return j == 1 ? put(out, n, "%s%s", head, p) : -1;
    }
    p = k;
    if (read_lit(&p, "middle_block.") && read_index(&p, &i)) {
        if (i == 0 || i == 2) return unet_resnet(out, n, i ? "mid_block.resnets.1." : "mid_block.resnets.0.", p);
        return i == 1 ? put(out, n, "mid_block.attentions.0.%s", p) : -1;
    }
    p = k;
    if (read_lit(&p, "output_blocks.") && read_index(&p, &i) && read_index(&p, &j)) {
        int b = i / (lpb + 1), l = i % (lpb + 1);
        if (j >= 1 && read_lit(&p, "conv.")) return put(out, n, "up_blocks.%d.upsamplers.0.conv.%s", b, p);
        if (j == 0) {
            snprintf(head, sizeof head, "up_blocks.%d.resnets.%d.", b, l);
            return unet_resnet(out, n, head, p);
        }
        return j == 1 ? put(out, n, "up_blocks.%d.attentions.%d.%s", b, l, p) : -1;
    }
    return -1;
}

/* The VAE's ResnetBlock: names as diffusers' but nin_shortcut. */
static int vae_resnet(char *out, size_t n, const char *head, const char *rest) {
    if (starts(rest, "nin_shortcut.")) return put(out, n, "%sconv_shortcut.%s", head, rest + strlen("nin_shortcut."));
    static const char *const same[] = {"norm1.", "conv1.", "norm2.", "conv2."};
    for (size_t i = 0; i < 4; i++)
        if (starts(rest, same[i])) return put(out, n, "%s%s", head, rest);
    return -1;
}

/* convert_ldm_vae_checkpoint: k without "first_stage_model.". The decoder's
 * up.N is diffusers' up_blocks.(nb-1-N). *attn is set for the mid attention's
 * q/k/v/proj_out, 1x1 convolutions in LDM and Linear layers in diffusers. */
static int vae_key(char *out, size_t n, const char *k, int nb, int *attn) {
    static const name_map fixed[] = {
        {"encoder.conv_in.", "encoder.conv_in."},       {"encoder.conv_out.", "encoder.conv_out."},
        {"decoder.conv_in.", "decoder.conv_in."},       {"decoder.conv_out.", "decoder.conv_out."},
        {"encoder.norm_out.", "encoder.conv_norm_out."}, {"decoder.norm_out.", "decoder.conv_norm_out."},
        {"quant_conv.", "quant_conv."},                 {"post_quant_conv.", "post_quant_conv."}};
    *attn = 0;
    if (renamed(out, n, "", k, fixed, sizeof fixed / sizeof *fixed) == 0) return 0;
    const char *p = k, *coder = starts(k, "encoder.") ? "encoder" : starts(k, "decoder.") ? "decoder" : NULL;
    if (!coder) return -1;
    p += 8;
    int i, j;
    char head[128];
    if (read_lit(&p, "mid.block_") && (*p == '1' || *p == '2') && p[1] == '.') {
        snprintf(head, sizeof head, "%s.mid_block.resnets.%d.", coder, *p - '1');
        return vae_resnet(out, n, head, p + 2);
    }
    p = k + 8;
    if (read_lit(&p, "mid.attn_1.")) {
        static const name_map t[] = {{"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."},
                                   {"proj_out.", "to_out.0."}};
        snprintf(head, sizeof head, "%s.mid_block.attentions.0.", coder);
        *attn = !starts(p, "norm.");
        return renamed(out, n, head, p, t, sizeof t / sizeof *t);
    }
    p = k + 8;
    int enc = coder[0] == 'e';
    if (read_lit(&p, enc ? "down." : "up.") && read_index(&p, &i)) {
        int b = enc ? i : nb - 1 - i;
        if (b < 0) return -1;
        if (read_lit(&p, enc ? "downsample.conv." : "upsample.conv."))
            return put(out, n, "%s.%s_blocks.%d.%s.0.conv.%s", coder, enc ? "down" : "up", b,
                       enc ? "downsamplers" : "upsamplers", p);
        if (read_lit(&p, "block.") && read_index(&p, &j)) {
            snprintf(head, sizeof head, "%s.%s_blocks.%d.resnets.%d.", coder, enc ? "down" : "up", b, j);
            return vae_resnet(out, n, head, p);
        }
    }
    return -1;
}

/* convert_open_clip_checkpoint: k without "cond_stage_model.model." (or SDXL's
 * "conditioner.embedders.1.model."). *fused is set for attn.in_proj_weight /
 * in_proj_bias (1, 2), which out names without its q/k/v part ("...self_attn.";
 * the caller adds q_proj.weight and so on), and for SDXL's text_projection (3),
 * which diffusers holds transposed (SD-2.x's is skipped: its model has none). */
static int openclip_key(char *out, size_t n, const char *k, int *fused) {
    static const name_map fixed[] = {{"token_embedding.weight", "text_model.embeddings.token_embedding.weight"},
                                   {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
                                   {"ln_final.", "text_model.final_layer_norm."}};
    *fused = 0;
    if (!strcmp(k, "text_projection")) {
        *fused = 3;
        return put(out, n, "text_projection.weight");
    }
    if (!strcmp(k, "token_embedding.weight") || !strcmp(k, "positional_embedding") || starts(k, "ln_final."))
        return renamed(out, n, "", k, fixed, sizeof fixed / sizeof *fixed);
    const char *p = k;
    int i;
    if (!read_lit(&p, "transformer.resblocks.") || !read_index(&p, &i)) return -1;
    char head[128];
    snprintf(head, sizeof head, "text_model.encoder.layers.%d.", i);
    if (!strcmp(p, "attn.in_proj_weight") || !strcmp(p, "attn.in_proj_bias")) {
        *fused = p[strlen("attn.in_proj_")] == 'w' ? 1 : 2;
        return put(out, n, "%sself_attn.", head);
    }
    static const name_map t[] = {{"ln_1.", "layer_norm1."},  {"ln_2.", "layer_norm2."},
                               {"attn.out_proj.", "self_attn.out_proj."}, {"mlp.c_fc.", "mlp.fc1."},
                               {"mlp.c_proj.", "mlp.fc2."}};
    return renamed(out, n, head, p, t, sizeof t / sizeof *t);
}

/* The component of an LDM key, with *rest the key after the component's
 * prefix; -1 for keys of no component (skipped or unknown). */
static int ldm_part(const char *key, const char **rest, int *openclip) {
    static const struct {
        const char *prefix;
        pf_part part;
        int openclip;
    } parts[] = {{UNET_PREFIX, PF_PART_UNET, 0},
                 {VAE_PREFIX, PF_PART_VAE, 0},
                 {CLIP_PREFIX, PF_PART_TEXT_ENCODER, 0},
                 {OPENCLIP_PREFIX, PF_PART_TEXT_ENCODER, 1},
                 {XL_CLIP_PREFIX, PF_PART_TEXT_ENCODER, 0},
                 {XL_OPENCLIP_PREFIX, PF_PART_TEXT_ENCODER_2, 1}};
    if (is_skipped(key)) return -1;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (starts(key, parts[i].prefix)) {
            *rest = key + strlen(parts[i].prefix);
            *openclip = parts[i].openclip;
            return parts[i].part;
        }
    return -1;
}

int pf_ldm_probe(pf_ldm_info *info, const pf_safetensors *st) {
    memset(info, 0, sizeof *info);
    int ldm = 0, sdxl = 0, te_clip = 0;
    for (int i = 0; i < st->count; i++) {
        const pf_st_tensor *t = &st->tensors[i];
        const char *rest;
        int openclip, part = ldm_part(t->name, &rest, &openclip);
        if (starts(t->name, "conditioner.") || !strcmp(t->name, UNET_PREFIX "label_emb.0.0.weight")) sdxl = ldm = 1;
        if (part >= 0) {
            ldm = 1;
            info->count[part]++;
            if (part == PF_PART_TEXT_ENCODER) (openclip ? &info->openclip : &te_clip)[0] = 1;
        } else if (is_skipped(t->name)) {
            ldm |= starts(t->name, "model_ema.");
            if (starts(t->name, "model_ema.")) info->ema++;
            else info->skipped++;
        } else {
            if (!info->unknown++) snprintf(info->first_unknown, sizeof info->first_unknown, "%s", pf_st_quote(t->name));
        }
        size_t len = strlen(t->name), tail = strlen(".attn2.to_k.weight");
        if (part == PF_PART_UNET && !info->context_dim && len > tail && !strcmp(t->name + len - tail, ".attn2.to_k.weight") &&
            t->ndim == 2)
            info->context_dim = (int)t->shape[1];
        if (!strcmp(t->name, UNET_PREFIX "input_blocks.0.0.weight") && t->ndim == 4)
            info->in_channels = (int)t->shape[1];
        if ((!strcmp(t->name, CLIP_PREFIX "text_model.embeddings.token_embedding.weight") ||
             !strcmp(t->name, CLIP_PREFIX "embeddings.token_embedding.weight") ||
             !strcmp(t->name, OPENCLIP_PREFIX "token_embedding.weight") ||
             !strcmp(t->name, XL_CLIP_PREFIX "text_model.embeddings.token_embedding.weight")) &&
            t->ndim == 2)
            info->text_width = (int)t->shape[1];
        if (!strcmp(t->name, XL_OPENCLIP_PREFIX "token_embedding.weight") && t->ndim == 2)
            info->text2_width = (int)t->shape[1];
    }
    if (te_clip && info->openclip) info->openclip = -1; /* both layouts: neither family */
    int te_ok1 = !info->count[PF_PART_TEXT_ENCODER] || (info->openclip == 0 && info->text_width == 768);
    int te_ok2 = !info->count[PF_PART_TEXT_ENCODER] || (info->openclip == 1 && info->text_width == 1024);
    if (sdxl)
        info->family = PF_LDM_SDXL;
    else if (info->in_channels == 4 && info->context_dim == 768 && te_ok1)
        info->family = PF_LDM_SD1;
    else if (info->in_channels == 4 && info->context_dim == 1024 && te_ok2)
        info->family = PF_LDM_SD2;
    return ldm;
}

void pf_ldm_describe(char *buf, size_t n, const pf_ldm_info *info) {
    char unet[128] = "none", te[128] = "none", te2[128] = "", vae[64] = "none";
    if (info->count[PF_PART_UNET])
        snprintf(unet, sizeof unet, "cross-attention width %d, %d input channels", info->context_dim,
                 info->in_channels);
    if (info->count[PF_PART_TEXT_ENCODER])
        snprintf(te, sizeof te, "%s, width %d",
                 info->openclip < 0 ? "both CLIP and OpenCLIP keys" : info->openclip ? "OpenCLIP" : "CLIP",
                 info->text_width);
    if (info->count[PF_PART_VAE]) snprintf(vae, sizeof vae, "%d tensors", info->count[PF_PART_VAE]);
    if (info->family == PF_LDM_SDXL)
        snprintf(te2, sizeof te2, "; second text encoder: %s", info->count[PF_PART_TEXT_ENCODER_2] ? "" : "none");
    if (info->count[PF_PART_TEXT_ENCODER_2])
        snprintf(te2 + strlen(te2), sizeof te2 - strlen(te2), "OpenCLIP, width %d", info->text2_width);
    snprintf(buf, n, "%sUNet: %s; text encoder: %s%s; VAE: %s", info->family == PF_LDM_SDXL ? "SDXL keys; " : "",
             unet, te, te2, vae);
}

int pf_ldm_open(pf_weights **out, const char *path, pf_part part, int layers_per_block, int vae_blocks,
                pf_error *err) {
    *out = NULL;
    pf_safetensors *st;
    if (pf_st_open(&st, path, err)) return -1;
    pf_weights *w = pf_weights_new(path);
    pf_weights_add_file(w, st);
    int found = 0, ema = 0;
    for (int i = 0; i < st->count; i++) {
        const pf_st_tensor *t = &st->tensors[i];
        const char *rest;
        char name[512];
        int openclip, attn = 0, fused = 0;
        ema += starts(t->name, "model_ema.");
        if (ldm_part(t->name, &rest, &openclip) != (int)part) continue;
        found++;
        int rc = part == PF_PART_UNET ? unet_key(name, sizeof name, rest, layers_per_block)
                 : part == PF_PART_VAE ? vae_key(name, sizeof name, rest, vae_blocks, &attn)
                 : openclip            ? openclip_key(name, sizeof name, rest, &fused)
                 : starts(rest, "text_model.") ? put(name, sizeof name, "%s", rest)
                                               : put(name, sizeof name, "text_model.%s", rest);
        if (rc) continue; /* a key of no known layout: never asked for */
        if (attn && t->ndim >= 2) {
            /* (C, C, 1, 1) or (C, C, 1) convolution weights seen as Linear (C, C), as conv_attn_to_linear */
            int ones = 1;
            for (int d = 2; d < t->ndim; d++) ones &= t->shape[d] == 1;
            pf_weights_add(w, name, st, t, 0, ones ? 2 : t->ndim, t->shape);
        } else if (fused && t->ndim == (fused == 1 ? 2 : 1) && t->shape[0] % 3 == 0) {
            /* OpenCLIP's in_proj: q, k and v stacked along dim 0 (3D rows) */
            static const char *const qkv[] = {"q_proj", "k_proj", "v_proj"};
            int64_t D = t->shape[0] / 3, inner = fused == 1 ? t->shape[1] : 1;
            for (int k = 0; k < 3; k++) {
                char full[600];
                snprintf(full, sizeof full, "%s%s.%s", name, qkv[k], fused == 1 ? "weight" : "bias");
                pf_weights_add(w, full, st, t, k * D * inner, t->ndim, (int64_t[]){D, inner});
            }
        } else if (fused == 3 && t->ndim == 2) {
            pf_weights_add_transposed(w, name, st, t);
        } else if (!fused) {
            pf_weights_add(w, name, st, t, 0, t->ndim, t->shape);
        }
    }
    static const char *const prefixes[] = {UNET_PREFIX "*", VAE_PREFIX "*",
                                           CLIP_PREFIX "*, " OPENCLIP_PREFIX "* or " XL_CLIP_PREFIX "*",
                                           XL_OPENCLIP_PREFIX "*"};
    static const char *const what[] = {"UNet", "VAE", "text encoder", "second text encoder"};
    if (!found) {
        pf_fail(err, "%s: the checkpoint holds no %s (no %s keys)%s", path, what[part], prefixes[part],
                part == PF_PART_UNET && ema ? "; its model_ema.* copies alone cannot be loaded" : "");
        pf_weights_close(w);
        return -1;
    }
    if (pf_weights_seal(w, err)) {
        pf_weights_close(w);
        return -1;
    }
    *out = w;
    return 0;
}

const char *pf_text_encoder_prefix(const pf_weights *w) {
    return pf_weights_has(w, "text_model.embeddings.token_embedding.weight") ||
                   !pf_weights_has(w, "embeddings.token_embedding.weight")
               ? "text_model."
               : "";
}

/* ------------------------------------------------------------ LoRA keys */

const char *pf_lora_format_name(pf_lora_format f) {
    return f == PF_LORA_KOHYA ? "kohya" : f == PF_LORA_PEFT ? "PEFT" : "diffusers";
}

static int ends(const char *s, size_t len, const char *suffix) {
    size_t n = strlen(suffix);
    return len >= n && !memcmp(s + len - n, suffix, n);
}

/* Spellings of the diffusers and PEFT formats, longest first where one ends another. */
static const struct {
    const char *suffix;
    pf_lora_role role;
    pf_lora_format format;
    int attn_proc; /* the attention-processor spelling: MODULE is to_q/to_k/to_v/to_out */
} dotted[] = {
    {".lora_A.weight", PF_LORA_DOWN, PF_LORA_PEFT, 0},
    {".lora_B.weight", PF_LORA_UP, PF_LORA_PEFT, 0},
    {".lora_B.bias", PF_LORA_BIAS, PF_LORA_PEFT, 0},
    {".lora_magnitude_vector.weight", PF_LORA_DORA, PF_LORA_PEFT, 0},
    {".lora_magnitude_vector", PF_LORA_DORA, PF_LORA_PEFT, 0},
    {".lora_linear_layer.down.weight", PF_LORA_DOWN, PF_LORA_DIFFUSERS, 0},
    {".lora_linear_layer.up.weight", PF_LORA_UP, PF_LORA_DIFFUSERS, 0},
    {"_lora.down.weight", PF_LORA_DOWN, PF_LORA_DIFFUSERS, 1},
    {"_lora.up.weight", PF_LORA_UP, PF_LORA_DIFFUSERS, 1},
    {".lora.down.weight", PF_LORA_DOWN, PF_LORA_DIFFUSERS, 0},
    {".lora.up.weight", PF_LORA_UP, PF_LORA_DIFFUSERS, 0},
    {".alpha", PF_LORA_ALPHA, PF_LORA_DIFFUSERS, 0},
};

/* Removes every ".processor" part (the attention-processor spelling). */
static void drop_processor(char *s) {
    for (char *p; (p = strstr(s, ".processor"));) {
        if (p[10] != '.' && p[10] != '\0') break;
        memmove(p, p + 10, strlen(p + 10) + 1);
    }
}

int pf_lora_key_parse(pf_lora_key *out, const char *key) {
    memset(out, 0, sizeof *out);
    static const struct {
        const char *prefix;
        int part;
    } kohya[] = {{"lora_unet_", PF_PART_UNET},
                 {"lora_te_", PF_PART_TEXT_ENCODER},
                 {"lora_te1_", PF_PART_TEXT_ENCODER},
                 {"lora_te2_", PF_PART_TEXT_ENCODER_2}};
    for (size_t i = 0; i < sizeof kohya / sizeof *kohya; i++) {
        if (!starts(key, kohya[i].prefix)) continue;
        const char *name = key + strlen(kohya[i].prefix), *dot = strchr(name, '.');
        static const struct {
            const char *suffix;
            pf_lora_role role;
        } roles[] = {{"lora_down.weight", PF_LORA_DOWN}, {"lora_up.weight", PF_LORA_UP}, {"alpha", PF_LORA_ALPHA},
                     {"lora_mid.weight", PF_LORA_MID},   {"dora_scale", PF_LORA_DORA}};
        if (!dot || dot == name || (size_t)(dot - name) >= sizeof out->module) return -1;
        for (size_t r = 0; r < sizeof roles / sizeof *roles; r++)
            if (!strcmp(dot + 1, roles[r].suffix)) {
                out->part = kohya[i].part;
                out->format = PF_LORA_KOHYA;
                out->role = roles[r].role;
                out->kohya = 1;
                memcpy(out->module, name, (size_t)(dot - name));
                return 0;
            }
        return -1;
    }
    const char *name = key;
    out->part = -1;
    if (starts(key, "unet.")) out->part = PF_PART_UNET, name += 5;
    else if (starts(key, "text_encoder.")) out->part = PF_PART_TEXT_ENCODER, name += 13;
    else if (starts(key, "text_encoder_2.")) out->part = PF_PART_TEXT_ENCODER_2, name += 15;
    size_t len = strlen(name);
    for (size_t i = 0; i < sizeof dotted / sizeof *dotted; i++) {
        if (!ends(name, len, dotted[i].suffix)) continue;
        size_t m = len - strlen(dotted[i].suffix);
        if (m == 0 || m + 16 >= sizeof out->module) return -1;
        memcpy(out->module, name, m);
        out->module[m] = '\0';
        out->role = dotted[i].role;
        out->format = dotted[i].format;
        drop_processor(out->module);
        if (!out->module[0]) return -1; /* "x..processor.lora_A.weight" names no module */
        if (dotted[i].attn_proc) {
            /* to_q_lora / to_out_lora of diffusers' old attention processors: the
             * UNet's to_q ... to_out.0, the text encoder's q_proj ... out_proj */
            char *last = strrchr(out->module, '.');
            last = last ? last + 1 : out->module;
            static const char *const te[][2] = {{"to_q", "q_proj"}, {"to_k", "k_proj"}, {"to_v", "v_proj"},
                                                 {"to_out", "out_proj"}};
            int is_te = out->part == PF_PART_TEXT_ENCODER || out->part == PF_PART_TEXT_ENCODER_2 ||
                        starts(out->module, "text_model.");
            if (!strcmp(last, "to_out") && !is_te) strcat(out->module, ".0");
            for (int k = 0; is_te && k < 4; k++)
                if (!strcmp(last, te[k][0])) strcpy(last, te[k][1]);
        }
        return 0;
    }
    return -1;
}

/* 1 when a (alen bytes) read with "." as "_" is b. */
static int kohya_eq(const char *a, size_t alen, const char *b) {
    for (size_t i = 0; i < alen; i++, b++)
        if (*b != (a[i] == '.' ? '_' : a[i])) return 0;
    return *b == '\0';
}

/* convert.h; through the single-file renaming (unet_key), as diffusers'
 * _maybe_map_sgm_blocks_to_diffusers + _convert_unet_lora_key rename them. */
int pf_lora_kohya_sgm(char *out, size_t n, const char *module, int lpb) {
    /* a resnet's, downsampler's or upsampler's module, underscored -> its LDM key part */
    static const name_map parts[] = {{"in_layers_0", "in_layers.0."},   {"in_layers_2", "in_layers.2."},
                                     {"out_layers_0", "out_layers.0."}, {"out_layers_3", "out_layers.3."},
                                     {"emb_layers_1", "emb_layers.1."}, {"skip_connection", "skip_connection."},
                                     {"op", "op."},                     {"conv", "conv."}};
    const char *p = module;
    int i, j;
    char head[64], ldm[600], name[600];
    if (lpb < 1) return -1;
    if (read_lit(&p, "input_blocks_") || read_lit(&p, "output_blocks_")) {
        if (!read_number(&p, &i, '_') || !read_number(&p, &j, '_')) return -1;
        if (module[0] == 'i' && i == 0) return -1; /* input_blocks_0 is conv_in, which kohya names as diffusers does */
        snprintf(head, sizeof head, "%s.%d.%d.", module[0] == 'i' ? "input_blocks" : "output_blocks", i, j);
    } else if (read_lit(&p, "middle_block_")) {
        if (!read_number(&p, &i, '_')) return -1;
        snprintf(head, sizeof head, "middle_block.%d.", i);
    } else {
        return -1;
    }
    const char *rest = p;
    for (size_t k = 0; k < sizeof parts / sizeof *parts; k++)
        if (!strcmp(p, parts[k].from)) rest = parts[k].to;
    if (rest == p ? put(ldm, sizeof ldm, "%s%s.weight", head, p) : put(ldm, sizeof ldm, "%s%sweight", head, rest))
        return -1;
    if (unet_key(name, sizeof name, ldm, lpb)) return -1;
    name[strlen(name) - strlen(".weight")] = '\0';
    for (char *c = name; *c; c++)
        if (*c == '.') *c = '_';
    return put(out, n, "%s", name);
}

int pf_lora_resolve(char *out, size_t n, const pf_weights *w, pf_part part, const pf_lora_key *k, int lpb) {
    const char *module = k->module;
    char sgm[600];
    if (k->kohya && part == PF_PART_UNET && !pf_lora_kohya_sgm(sgm, sizeof sgm, module, lpb)) module = sgm;
    /* a text encoder saved without "text_model." (transformers 5) */
    if ((part == PF_PART_TEXT_ENCODER || part == PF_PART_TEXT_ENCODER_2) && !*pf_text_encoder_prefix(w) &&
        starts(module, "text_model"))
        module += strlen("text_model") + (module[10] == '.' || module[10] == '_');
    if (!k->kohya) {
        if (put(out, n, "%s.weight", module) || !pf_weights_has(w, out)) return -1;
        return 0;
    }
    for (int i = 0, count = pf_weights_count(w); i < count; i++) {
        const char *name = pf_weights_name(w, i);
        size_t len = strlen(name);
        if (ends(name, len, ".weight") && kohya_eq(name, len - 7, module)) return put(out, n, "%s", name);
    }
    return -1;
}
