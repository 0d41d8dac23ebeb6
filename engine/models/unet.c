/* unet.c - UNet2DConditionModel for SD-1.x/2.x: sinusoidal timestep embedding,
 * conv_in, down blocks (ResnetBlock2D + Transformer2DModel + Downsample2D),
 * mid block, up blocks consuming the down path's skips, conv_out.
 * Mirrors diffusers/models/unets/unet_2d_condition.py and unet_2d_blocks.py;
 * weights keep diffusers' key names.
 *
 * Memory: every module returns a fresh tensor or updates its input in place,
 * and the forward frees each activation as soon as its last reader has run.
 * What stays alive across the network is only the skip list (diffusers'
 * down_block_res_samples), each entry freed when its up block consumes it. */
#include "unet.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "model_dir.h"

/* diffusers Transformer2DModel builds its GroupNorm with this eps, whatever norm_eps says. */
#define TRANSFORMER_GROUP_NORM_EPS 1e-6f
/* BasicTransformerBlock's LayerNorms (norm_eps default of Transformer2DModel). */
#define TRANSFORMER_LAYER_NORM_EPS 1e-5f

typedef struct resnet {              /* diffusers ResnetBlock2D (resnet.py) */
    int cin, cout;                   /* Ci, Co */
    pf_tensor *norm1_w, *norm1_b;    /* (Ci) */
    pf_tensor *conv1_w, *conv1_b;    /* (Co, Ci, 3, 3), (Co) */
    pf_tensor *temb_w, *temb_b;      /* time_emb_proj (Co, T), (Co) */
    pf_tensor *norm2_w, *norm2_b;    /* (Co) */
    pf_tensor *conv2_w, *conv2_b;    /* (Co, Co, 3, 3), (Co) */
    pf_tensor *short_w, *short_b;    /* conv_shortcut (Co, Ci, 1, 1), (Co); NULL when Ci == Co */
} resnet;

typedef struct attention {           /* diffusers Attention (attention_processor.py), no qkv bias */
    pf_tensor *q_w;                  /* to_q (C, C) */
    pf_tensor *k_w, *v_w;            /* to_k, to_v (C, C) self / (C, X) cross */
    pf_tensor *o_w, *o_b;            /* to_out.0 (C, C), (C) */
} attention;

typedef struct tblock {              /* diffusers BasicTransformerBlock (attention.py) */
    pf_tensor *norm1_w, *norm1_b;    /* (C) */
    attention attn1;                 /* self-attention */
    pf_tensor *norm2_w, *norm2_b;    /* (C) */
    attention attn2;                 /* cross-attention on the context */
    pf_tensor *norm3_w, *norm3_b;    /* (C) */
    pf_tensor *ff_in_w, *ff_in_b;    /* ff.net.0.proj (8C, C), (8C): GEGLU's projection */
    pf_tensor *ff_out_w, *ff_out_b;  /* ff.net.2 (C, 4C), (C) */
    int xattn;                       /* attn2's place in diffusers' attn_processors order (IP-Adapter) */
} tblock;

typedef struct transformer {         /* diffusers Transformer2DModel (transformer_2d.py) */
    int channels, heads, layers;     /* C, heads, len(blocks) */
    pf_tensor *norm_w, *norm_b;      /* (C) GroupNorm */
    /* proj_in / proj_out: Linear (C, C), or a 1x1 Conv2d (C, C, 1, 1) held with a
     * (C, C) view: the conv on NCHW equals the Linear after the NHWC permute. */
    pf_tensor *proj_in_w, *proj_in, *proj_in_b;
    pf_tensor *proj_out_w, *proj_out, *proj_out_b;
    tblock *blocks;
} transformer;

/* CrossAttnDownBlock2D / DownBlock2D / CrossAttnUpBlock2D / UpBlock2D: `layers`
 * resnets, each followed by a transformer in the CrossAttn kinds, then
 * Downsample2D (conv 3x3 stride 2 pad 1) or Upsample2D (nearest 2x + conv 3x3). */
typedef struct unet_block {
    int layers;
    resnet *resnets;
    transformer *attns;              /* NULL for DownBlock2D / UpBlock2D */
    pf_tensor *sample_w, *sample_b;  /* {down,up}samplers.0.conv (C, C, 3, 3), (C); NULL: none */
} unet_block;

struct pf_unet {                     /* diffusers UNet2DConditionModel */
    pf_unet_config cfg;
    pf_backend *be;
    int num_skips;
    int has_up;                          /* 0: the encoder half only (pf_unet_load_encoder) */
    pf_tensor *conv_in_w, *conv_in_b;    /* (C0, Cin, 3, 3), (C0) */
    pf_tensor *time_1_w, *time_1_b;      /* time_embedding.linear_1 (T, C0), (T) - TimestepEmbedding */
    pf_tensor *time_2_w, *time_2_b;      /* time_embedding.linear_2 (T, T), (T) */
    pf_tensor *add_1_w, *add_1_b;        /* add_embedding.linear_1 (T, P + 6A), (T): text_time only */
    pf_tensor *add_2_w, *add_2_b;        /* add_embedding.linear_2 (T, T), (T) */
    unet_block down[PF_UNET_MAX_BLOCKS];
    resnet mid_res[2];                   /* UNetMidBlock2DCrossAttn: resnet, attn, resnet */
    transformer mid_attn;
    unet_block up[PF_UNET_MAX_BLOCKS];
    pf_tensor *norm_out_w, *norm_out_b;  /* conv_norm_out (C0) */
    pf_tensor *conv_out_w, *conv_out_b;  /* (Cout, C0, 3, 3), (Cout) */
    int num_xattn;                       /* cross-attentions (attn2), numbered by number_cross_attentions */
    int *xattn_channels;                 /* (num_xattn) each one's query channels C */
};

/* ---- config ---- */

static int unsupported(const pf_config *c, const char *key, const char *want, pf_error *err) {
    return pf_fail(err, "%s: unsupported \"%s\" (this UNet supports only %s)", pf_config_path(c), key, want);
}

/* key must be absent or null. */
static int require_null(const pf_config *c, const char *key, pf_error *err) {
    return pf_config_has(c, key) ? unsupported(c, key, "null", err) : 0;
}

static int require_bool(const pf_config *c, const char *key, int want, pf_error *err) {
    int v;
    if (pf_config_bool(c, key, want, &v, err)) return -1;
    return v != want ? unsupported(c, key, want ? "true" : "false", err) : 0;
}

static int require_num(const pf_config *c, const char *key, double want, pf_error *err) {
    double v;
    if (pf_config_num(c, key, want, &v, err)) return -1;
    char s[32];
    snprintf(s, sizeof s, "%g", want);
    return v != want ? unsupported(c, key, s, err) : 0;
}

/* key is absent (def applies) or one of the `|`-separated names in `allowed`. */
static int require_str(const pf_config *c, const char *key, const char *def, const char *allowed, pf_error *err) {
    char v[128], quoted[256];
    if (pf_config_str(c, key, def, v, sizeof v, err)) return -1;
    for (const char *a = allowed; *a;) {
        size_t n = strcspn(a, "|");
        if (strlen(v) == n && !strncmp(v, a, n)) return 0;
        a += n + (a[n] == '|');
    }
    snprintf(quoted, sizeof quoted, "\"%s\" (found \"%s\")", allowed, v);
    return unsupported(c, key, quoted, err);
}

/* Block kinds: 1 for the CrossAttn variant, 0 for the plain one. */
static int block_types(const pf_config *c, const char *key, int nb, const char *cross, const char *plain, int *out,
                       pf_error *err) {
    int n;
    if (pf_config_list_len(c, key, PF_UNET_MAX_BLOCKS, &n, err)) return -1;
    if (n != nb)
        return pf_fail(err, "%s: \"%s\" has %d entries, block_out_channels has %d", pf_config_path(c), key, n, nb);
    for (int i = 0; i < nb; i++) {
        char s[128];
        if (pf_config_str_at(c, key, i, s, sizeof s, err)) return -1;
        if (!strcmp(s, cross))
            out[i] = 1;
        else if (!strcmp(s, plain))
            out[i] = 0;
        else
            return pf_fail(err, "%s: unsupported \"%s\"[%d] \"%s\" (this UNet supports %s and %s)", pf_config_path(c),
                           key, i, s, cross, plain);
    }
    return 0;
}

int pf_unet_config_parse(pf_unet_config *cfg, const pf_config *c, int up_blocks, pf_error *err) {
    const char *path = pf_config_path(c);
    long v[PF_UNET_MAX_BLOCKS], cin, cout, x, g, temb;
    double eps, shift;
    int nb;
    memset(cfg, 0, sizeof *cfg);
    /* Everything this family leaves at diffusers' defaults: a checkpoint that sets
     * one of these needs code we do not have, so it is refused by name. */
    if (require_null(c, "num_attention_heads", err) || /* diffusers itself refuses it */
        require_null(c, "class_embed_type", err) || require_null(c, "num_class_embeds", err) ||
        require_str(c, "addition_embed_type", "", "|text_time", err) || require_null(c, "time_cond_proj_dim", err) ||
        require_null(c, "encoder_hid_dim", err) || require_null(c, "encoder_hid_dim_type", err) ||
        require_null(c, "time_embedding_act_fn", err) || require_null(c, "timestep_post_act", err) ||
        require_null(c, "cross_attention_norm", err) || require_null(c, "reverse_transformer_layers_per_block", err) ||
        require_bool(c, "only_cross_attention", 0, err) || require_bool(c, "dual_cross_attention", 0, err) ||
        require_bool(c, "mid_block_only_cross_attention", 0, err) || require_bool(c, "center_input_sample", 0, err) ||
        require_bool(c, "resnet_skip_time_act", 0, err) || require_num(c, "conv_in_kernel", 3, err) ||
        require_num(c, "conv_out_kernel", 3, err) || require_num(c, "downsample_padding", 1, err) ||
        require_num(c, "mid_block_scale_factor", 1, err) || require_num(c, "resnet_out_scale_factor", 1, err) ||
        require_str(c, "time_embedding_type", "positional", "positional", err) ||
        require_str(c, "resnet_time_scale_shift", "default", "default", err) ||
        require_str(c, "act_fn", "silu", "silu|swish", err) ||
        require_str(c, "attention_type", "default", "default", err) ||
        require_str(c, "mid_block_type", "UNetMidBlock2DCrossAttn", "UNetMidBlock2DCrossAttn", err))
        return -1;
    int upcast; /* our attention always runs in float32: upcast or not is the same */
    if (pf_config_bool(c, "upcast_attention", 0, &upcast, err)) return -1;

    if (pf_config_list_len(c, "block_out_channels", PF_UNET_MAX_BLOCKS, &nb, err)) return -1;
    if (nb == 0) return pf_fail(err, "%s: missing \"block_out_channels\"", path);
    cfg->num_blocks = nb;
    if (pf_config_int_list(c, "block_out_channels", 0, 1, 1 << 16, v, nb, err)) return -1;
    for (int i = 0; i < nb; i++) cfg->block_out_channels[i] = (int)v[i];
    if (pf_config_int_list(c, "layers_per_block", 2, 1, 64, v, nb, err)) return -1;
    for (int i = 0; i < nb; i++) cfg->layers_per_block[i] = (int)v[i];
    /* Legacy naming (unet_2d_condition.py): num_attention_heads is null, so
     * attention_head_dim holds the number of heads of each block. */
    if (pf_config_int_list(c, "attention_head_dim", 8, 1, 1 << 16, v, nb, err)) return -1;
    for (int i = 0; i < nb; i++) cfg->num_heads[i] = (int)v[i];
    if (pf_config_int_list(c, "transformer_layers_per_block", 1, 1, 64, v, nb, err)) return -1;
    for (int i = 0; i < nb; i++) cfg->transformer_layers[i] = (int)v[i];
    if (block_types(c, "down_block_types", nb, "CrossAttnDownBlock2D", "DownBlock2D", cfg->down_cross_attn, err) ||
        (up_blocks &&
         block_types(c, "up_block_types", nb, "CrossAttnUpBlock2D", "UpBlock2D", cfg->up_cross_attn, err)))
        return -1;
    if (pf_config_int(c, "in_channels", 4, 1, 1 << 16, &cin, err) ||
        pf_config_int(c, "out_channels", 4, 1, 1 << 16, &cout, err) ||
        pf_config_int(c, "cross_attention_dim", 1280, 1, 1 << 16, &x, err) ||
        pf_config_int(c, "norm_num_groups", 32, 1, 1 << 16, &g, err) ||
        pf_config_num(c, "norm_eps", 1e-5, &eps, err) ||
        pf_config_bool(c, "flip_sin_to_cos", 1, &cfg->flip_sin_to_cos, err) ||
        pf_config_num(c, "freq_shift", 0, &shift, err) ||
        pf_config_int(c, "time_embedding_dim", 4L * cfg->block_out_channels[0], 1, 1 << 18, &temb, err) ||
        pf_config_bool(c, "use_linear_projection", 0, &cfg->use_linear_projection, err))
        return -1;
    char add_type[32];
    if (pf_config_str(c, "addition_embed_type", "", add_type, sizeof add_type, err)) return -1;
    cfg->text_time = !strcmp(add_type, "text_time");
    if (cfg->text_time) {
        long a, in;
        if (pf_config_int(c, "addition_time_embed_dim", 256, 2, 1 << 16, &a, err) ||
            pf_config_int(c, "projection_class_embeddings_input_dim", 2816, 1, 1 << 20, &in, err))
            return -1;
        if (a % 2) return pf_fail(err, "%s: \"addition_time_embed_dim\" %ld must be even", path, a);
        if (in <= 6 * a)
            return pf_fail(err, "%s: \"projection_class_embeddings_input_dim\" %ld leaves no room for the pooled text "
                                "embedding beside 6 time ids of %ld", path, in, a);
        cfg->addition_time_embed_dim = (int)a;
        cfg->add_embed_in = (int)in;
    }
    cfg->in_channels = (int)cin;
    cfg->out_channels = (int)cout;
    cfg->cross_attention_dim = (int)x;
    cfg->norm_num_groups = (int)g;
    cfg->norm_eps = (float)eps;
    cfg->freq_shift = (float)shift;
    cfg->time_embed_dim = (int)temb;
    if (eps <= 0) return pf_fail(err, "%s: \"norm_eps\" must be positive", path);
    if (shift >= cfg->block_out_channels[0] / 2)
        return pf_fail(err, "%s: \"freq_shift\" %g leaves no timestep frequencies", path, shift);
    /* Heads split channels evenly, or diffusers' inner_dim would differ from C.
     * Block i's transformers: down i; up j = nb-1-i (reversed lists); mid: last. */
    for (int i = 0; i < nb; i++) {
        int uses = cfg->down_cross_attn[i] || cfg->up_cross_attn[nb - 1 - i] || i == nb - 1;
        if (uses && cfg->block_out_channels[i] % cfg->num_heads[i])
            return pf_fail(err, "%s: block %d has %d channels, not a multiple of its %d attention heads (\"attention_head_dim\")",
                           path, i, cfg->block_out_channels[i], cfg->num_heads[i]);
    }
    return 0;
}

int pf_unet_config_read(pf_unet_config *cfg, const char *path, pf_error *err) {
    pf_config *c;
    if (pf_config_load(&c, path, err)) return -1;
    int rc = pf_unet_config_parse(cfg, c, 1, err);
    pf_config_free(c);
    return rc;
}

/* ---- loading ---- */

/* The weights' sticky loader (weights.h), and the group count every
 * normalised channel count must split into. */
typedef struct loader {
    pf_loader ld;
    int groups;  /* norm_num_groups */
} loader;
#define LD1(l, ...) PF_LD1(&(l)->ld, __VA_ARGS__)
#define LD2(l, ...) PF_LD2(&(l)->ld, __VA_ARGS__)
#define LD4(l, ...) PF_LD4(&(l)->ld, __VA_ARGS__)

/* GroupNorm needs the channels to split evenly into norm_num_groups. */
static void groups_check(loader *l, const char *p, int channels) {
    if (l->ld.failed || channels % l->groups == 0) return;
    pf_fail(l->ld.err, "%s: %snorm has %d channels, not a multiple of norm_num_groups %d",
            pf_weights_file(l->ld.w)->path, p, channels, l->groups);
    l->ld.failed = 1;
}

static void load_resnet(loader *l, resnet *r, int cin, int cout, int T, const char *p) {
    r->cin = cin;
    r->cout = cout;
    groups_check(l, p, cin);
    groups_check(l, p, cout);
    r->norm1_w = LD1(l, cin, "%snorm1.weight", p);
    r->norm1_b = LD1(l, cin, "%snorm1.bias", p);
    r->conv1_w = LD4(l, cout, cin, 3, 3, "%sconv1.weight", p);
    r->conv1_b = LD1(l, cout, "%sconv1.bias", p);
    r->temb_w = LD2(l, cout, T, "%stime_emb_proj.weight", p);
    r->temb_b = LD1(l, cout, "%stime_emb_proj.bias", p);
    r->norm2_w = LD1(l, cout, "%snorm2.weight", p);
    r->norm2_b = LD1(l, cout, "%snorm2.bias", p);
    r->conv2_w = LD4(l, cout, cout, 3, 3, "%sconv2.weight", p);
    r->conv2_b = LD1(l, cout, "%sconv2.bias", p);
    if (cin != cout) {
        r->short_w = LD4(l, cout, cin, 1, 1, "%sconv_shortcut.weight", p);
        r->short_b = LD1(l, cout, "%sconv_shortcut.bias", p);
    }
}

static void free_resnet(resnet *r) {
    pf_tensor *t[] = {r->norm1_w, r->norm1_b, r->conv1_w, r->conv1_b, r->temb_w, r->temb_b, r->norm2_w,
                      r->norm2_b, r->conv2_w, r->conv2_b, r->short_w, r->short_b};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) pf_free(t[i]);
}

static void load_attention(loader *l, attention *a, int C, int kv_dim, const char *p) {
    a->q_w = LD2(l, C, C, "%sto_q.weight", p);
    a->k_w = LD2(l, C, kv_dim, "%sto_k.weight", p);
    a->v_w = LD2(l, C, kv_dim, "%sto_v.weight", p);
    a->o_w = LD2(l, C, C, "%sto_out.0.weight", p);
    a->o_b = LD1(l, C, "%sto_out.0.bias", p);
}

static void free_attention(attention *a) {
    pf_free(a->q_w);
    pf_free(a->k_w);
    pf_free(a->v_w);
    pf_free(a->o_w);
    pf_free(a->o_b);
}

/* proj_in / proj_out weight: Linear (C, C) or 1x1 Conv2d (C, C, 1, 1) plus its (C, C) view. */
static void load_proj(loader *l, pf_tensor **owner, pf_tensor **mat, int C, int linear, const char *p,
                      const char *name) {
    if (linear) {
        *owner = *mat = LD2(l, C, C, "%s%s.weight", p, name);
    } else {
        *owner = LD4(l, C, C, 1, 1, "%s%s.weight", p, name);
        *mat = *owner ? pf_view2(*owner, C, C) : NULL;
    }
}

static void load_transformer(loader *l, transformer *t, int C, int heads, int layers, int X, int linear,
                             const char *p) {
    char q[512];
    t->channels = C;
    t->heads = heads;
    t->layers = layers;
    groups_check(l, p, C);
    t->norm_w = LD1(l, C, "%snorm.weight", p);
    t->norm_b = LD1(l, C, "%snorm.bias", p);
    load_proj(l, &t->proj_in_w, &t->proj_in, C, linear, p, "proj_in");
    t->proj_in_b = LD1(l, C, "%sproj_in.bias", p);
    t->blocks = PF_CALLOC((size_t)layers, sizeof *t->blocks);
    for (int k = 0; k < layers; k++) {
        tblock *b = &t->blocks[k];
        snprintf(q, sizeof q, "%stransformer_blocks.%d.", p, k);
        char a[600];
        b->norm1_w = LD1(l, C, "%snorm1.weight", q);
        b->norm1_b = LD1(l, C, "%snorm1.bias", q);
        snprintf(a, sizeof a, "%sattn1.", q);
        load_attention(l, &b->attn1, C, C, a);
        b->norm2_w = LD1(l, C, "%snorm2.weight", q);
        b->norm2_b = LD1(l, C, "%snorm2.bias", q);
        snprintf(a, sizeof a, "%sattn2.", q);
        load_attention(l, &b->attn2, C, X, a);
        b->norm3_w = LD1(l, C, "%snorm3.weight", q);
        b->norm3_b = LD1(l, C, "%snorm3.bias", q);
        b->ff_in_w = LD2(l, 8 * C, C, "%sff.net.0.proj.weight", q);
        b->ff_in_b = LD1(l, 8 * C, "%sff.net.0.proj.bias", q);
        b->ff_out_w = LD2(l, C, 4 * C, "%sff.net.2.weight", q);
        b->ff_out_b = LD1(l, C, "%sff.net.2.bias", q);
    }
    load_proj(l, &t->proj_out_w, &t->proj_out, C, linear, p, "proj_out");
    t->proj_out_b = LD1(l, C, "%sproj_out.bias", p);
}

static void free_transformer(transformer *t) {
    for (int k = 0; t->blocks && k < t->layers; k++) {
        tblock *b = &t->blocks[k];
        pf_tensor *ts[] = {b->norm1_w, b->norm1_b, b->norm2_w, b->norm2_b, b->norm3_w,
                           b->norm3_b, b->ff_in_w, b->ff_in_b, b->ff_out_w, b->ff_out_b};
        for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) pf_free(ts[i]);
        free_attention(&b->attn1);
        free_attention(&b->attn2);
    }
    free(t->blocks);
    if (t->proj_in != t->proj_in_w) pf_free(t->proj_in); /* the view first */
    if (t->proj_out != t->proj_out_w) pf_free(t->proj_out);
    pf_tensor *ts[] = {t->norm_w, t->norm_b, t->proj_in_w, t->proj_in_b, t->proj_out_w, t->proj_out_b};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) pf_free(ts[i]);
}

static void free_block(unet_block *b) {
    for (int k = 0; b->resnets && k < b->layers; k++) free_resnet(&b->resnets[k]);
    for (int k = 0; b->attns && k < b->layers; k++) free_transformer(&b->attns[k]);
    free(b->resnets);
    free(b->attns);
    pf_free(b->sample_w);
    pf_free(b->sample_b);
}

void pf_unet_free(pf_unet *m) {
    if (!m) return;
    free(m->xattn_channels);
    for (int i = 0; i < m->cfg.num_blocks; i++) {
        free_block(&m->down[i]);
        free_block(&m->up[i]);
    }
    free_resnet(&m->mid_res[0]);
    free_resnet(&m->mid_res[1]);
    free_transformer(&m->mid_attn);
    pf_tensor *ts[] = {m->conv_in_w, m->conv_in_b, m->time_1_w, m->time_1_b, m->time_2_w, m->time_2_b,
                       m->add_1_w,   m->add_1_b,   m->add_2_w,  m->add_2_b,  m->norm_out_w, m->norm_out_b,
                       m->conv_out_w, m->conv_out_b};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) pf_free(ts[i]);
    free(m);
}

const pf_unet_config *pf_unet_get_config(const pf_unet *m) { return &m->cfg; }

int pf_unet_num_skips(const pf_unet *m) { return m->num_skips; }

/* Numbers every attn2 in the order of diffusers' unet.attn_processors (module
 * registration order: down blocks, up blocks, then the mid block), the order
 * IP-Adapter files number their to_k_ip / to_v_ip in. */
static void number_cross_attentions(pf_unet *m) {
    const int nb = m->cfg.num_blocks;
    unet_block *blocks[2] = {m->down, m->up};
    for (int pass = 0; pass < 2; pass++) { /* count, then number */
        int n = 0;
        for (int half = 0; half < 2; half++)
            for (int i = 0; i < nb; i++)
                for (int k = 0; blocks[half][i].attns && k < blocks[half][i].layers; k++)
                    for (int b = 0; b < blocks[half][i].attns[k].layers; b++, n++)
                        if (pass) {
                            blocks[half][i].attns[k].blocks[b].xattn = n;
                            m->xattn_channels[n] = blocks[half][i].attns[k].channels;
                        }
        for (int b = 0; b < m->mid_attn.layers; b++, n++)
            if (pass) {
                m->mid_attn.blocks[b].xattn = n;
                m->xattn_channels[n] = m->mid_attn.channels;
            }
        if (!pass) m->xattn_channels = PF_CALLOC((size_t)n + 1, sizeof(int));
        m->num_xattn = n;
    }
}

int pf_unet_num_cross_attentions(const pf_unet *m) { return m->num_xattn; }
int pf_unet_cross_attention_channels(const pf_unet *m, int i) { return m->xattn_channels[i]; }

/* Builds the module tree exactly as UNet2DConditionModel.__init__ does: up block j
 * mirrors down block nb-1-j (reversed channel, head and layer lists), has one more
 * resnet than it, and its resnets take the concatenation of the running state
 * (prev_output_channel, then out) and the popped skip (out, and for the last
 * resnet the channels of the next-lower down block's input). With up_blocks 0
 * only the half that ControlNetModel copies is built (conv_in, the time
 * embedding, the down blocks and the mid block). */
static int unet_load(pf_unet **out, pf_backend *be, const pf_unet_config *cfg, pf_weights *w, const char *prefix,
                     int up_blocks, pf_error *err) {
    *out = NULL;
    pf_unet *m = PF_CALLOC(1, sizeof *m);
    m->cfg = *cfg;
    m->be = be;
    loader L = {{w, be, prefix, err, 0}, cfg->norm_num_groups}, *l = &L;
    const int nb = cfg->num_blocks, T = cfg->time_embed_dim, X = cfg->cross_attention_dim;
    const int lin = cfg->use_linear_projection, *C = cfg->block_out_channels;
    char p[256];

    m->conv_in_w = LD4(l, C[0], cfg->in_channels, 3, 3, "conv_in.weight");
    m->conv_in_b = LD1(l, C[0], "conv_in.bias");
    m->time_1_w = LD2(l, T, C[0], "time_embedding.linear_1.weight");
    m->time_1_b = LD1(l, T, "time_embedding.linear_1.bias");
    m->time_2_w = LD2(l, T, T, "time_embedding.linear_2.weight");
    m->time_2_b = LD1(l, T, "time_embedding.linear_2.bias");
    if (cfg->text_time) { /* TimestepEmbedding(projection_class_embeddings_input_dim, T) */
        m->add_1_w = LD2(l, T, cfg->add_embed_in, "add_embedding.linear_1.weight");
        m->add_1_b = LD1(l, T, "add_embedding.linear_1.bias");
        m->add_2_w = LD2(l, T, T, "add_embedding.linear_2.weight");
        m->add_2_b = LD1(l, T, "add_embedding.linear_2.bias");
    }

    m->num_skips = 1;
    for (int i = 0; i < nb; i++) { /* CrossAttnDownBlock2D / DownBlock2D */
        unet_block *d = &m->down[i];
        int cin = i ? C[i - 1] : C[0];
        d->layers = cfg->layers_per_block[i];
        d->resnets = PF_CALLOC((size_t)d->layers, sizeof *d->resnets);
        if (cfg->down_cross_attn[i]) d->attns = PF_CALLOC((size_t)d->layers, sizeof *d->attns);
        for (int k = 0; k < d->layers; k++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d.", i, k);
            load_resnet(l, &d->resnets[k], k ? C[i] : cin, C[i], T, p);
            if (!d->attns) continue;
            snprintf(p, sizeof p, "down_blocks.%d.attentions.%d.", i, k);
            load_transformer(l, &d->attns[k], C[i], cfg->num_heads[i], cfg->transformer_layers[i], X, lin, p);
        }
        m->num_skips += d->layers;
        if (i < nb - 1) {
            d->sample_w = LD4(l, C[i], C[i], 3, 3, "down_blocks.%d.downsamplers.0.conv.weight", i);
            d->sample_b = LD1(l, C[i], "down_blocks.%d.downsamplers.0.conv.bias", i);
            m->num_skips++;
        }
    }

    const int Cm = C[nb - 1]; /* UNetMidBlock2DCrossAttn */
    load_resnet(l, &m->mid_res[0], Cm, Cm, T, "mid_block.resnets.0.");
    load_transformer(l, &m->mid_attn, Cm, cfg->num_heads[nb - 1], cfg->transformer_layers[nb - 1], X, lin,
                     "mid_block.attentions.0.");
    load_resnet(l, &m->mid_res[1], Cm, Cm, T, "mid_block.resnets.1.");

    for (int j = 0; up_blocks && j < nb; j++) { /* CrossAttnUpBlock2D / UpBlock2D */
        unet_block *u = &m->up[j];
        int i = nb - 1 - j; /* the down block this one mirrors */
        int cout = C[i], prev = j ? C[i + 1] : C[nb - 1], cskip = C[i ? i - 1 : 0];
        u->layers = cfg->layers_per_block[i] + 1;
        u->resnets = PF_CALLOC((size_t)u->layers, sizeof *u->resnets);
        if (cfg->up_cross_attn[j]) u->attns = PF_CALLOC((size_t)u->layers, sizeof *u->attns);
        for (int k = 0; k < u->layers; k++) {
            int res_in = k ? cout : prev, res_skip = k == u->layers - 1 ? cskip : cout;
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d.", j, k);
            load_resnet(l, &u->resnets[k], res_in + res_skip, cout, T, p);
            if (!u->attns) continue;
            snprintf(p, sizeof p, "up_blocks.%d.attentions.%d.", j, k);
            load_transformer(l, &u->attns[k], cout, cfg->num_heads[i], cfg->transformer_layers[i], X, lin, p);
        }
        if (j < nb - 1) {
            u->sample_w = LD4(l, cout, cout, 3, 3, "up_blocks.%d.upsamplers.0.conv.weight", j);
            u->sample_b = LD1(l, cout, "up_blocks.%d.upsamplers.0.conv.bias", j);
        }
    }

    if (up_blocks) {
        m->has_up = 1;
        groups_check(l, "conv_", C[0]);
        m->norm_out_w = LD1(l, C[0], "conv_norm_out.weight");
        m->norm_out_b = LD1(l, C[0], "conv_norm_out.bias");
        m->conv_out_w = LD4(l, cfg->out_channels, C[0], 3, 3, "conv_out.weight");
        m->conv_out_b = LD1(l, cfg->out_channels, "conv_out.bias");
    }
    if (l->ld.failed) {
        pf_unet_free(m);
        return -1;
    }
    number_cross_attentions(m);
    *out = m;
    return 0;
}

int pf_unet_load(pf_unet **out, pf_backend *be, const pf_unet_config *cfg, pf_weights *w, const char *prefix,
                 pf_error *err) {
    return unet_load(out, be, cfg, w, prefix, 1, err);
}

int pf_unet_load_encoder(pf_unet **out, pf_backend *be, const pf_unet_config *cfg, pf_weights *w,
                         const char *prefix, pf_error *err) {
    return unet_load(out, be, cfg, w, prefix, 0, err);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int pf_unet_load_dir(pf_unet **out, pf_backend *be, const char *model_dir, const char *delta, pf_error *err) {
    *out = NULL;
    char cfg_path[4096], weights_path[4096], delta_path[4096];
    pf_unet_config cfg;
    pf_weights *w;
    if (pf_model_file(cfg_path, sizeof cfg_path, model_dir, "unet", "config.json", err) ||
        pf_unet_config_read(&cfg, cfg_path, err) ||
        pf_model_weights(weights_path, sizeof weights_path, model_dir, "unet", 0, err) ||
        pf_weights_open(&w, weights_path, err))
        return -1;
    int rc = 0;
    if (delta) {
        /* A PeRFlow delta is published as a unet/ folder; a bare file also works. */
        if (is_dir(delta))
            rc = pf_model_weights(delta_path, sizeof delta_path, delta, NULL, 0, err);
        else
            snprintf(delta_path, sizeof delta_path, "%s", delta);
        if (!rc) rc = pf_weights_set_delta(w, delta_path, err);
    }
    if (!rc) rc = pf_unet_load(out, be, &cfg, w, "", err);
    pf_weights_close(w);
    return rc ? pf_error_prefix(err, "loading unet") : 0;
}

/* ---- forward ---- */

/* Timesteps (embeddings.py get_timestep_embedding) on the host, in float32 with
 * torch's order of operations: e[B, dim] = cat(sin(t f), cos(t f)) (cos first when
 * flip_sin_to_cos), f_i = exp(-ln(10000) i / (dim/2 - freq_shift)); dim is C0 for
 * the timestep, addition_time_embed_dim for SDXL's time ids. The
 * arguments reach ~1000 rad, so an ulp of difference between torch's and libm's
 * expf moves single entries by up to ~6e-5; the network damps that far below
 * the tests' tolerance. */
static void timestep_proj(float *e, const pf_unet_config *c, int dim, const float *ts, int64_t B) {
    const int half = dim / 2;
    const float neg_log = (float)-log(10000.0), div = (float)(half - (double)c->freq_shift);
    for (int64_t b = 0; b < B; b++) {
        float *row = e + b * dim;
        for (int i = 0; i < half; i++) {
            float arg = ts[b] * expf((float)i * neg_log / div);
            row[c->flip_sin_to_cos ? half + i : i] = sinf(arg);
            row[c->flip_sin_to_cos ? i : half + i] = cosf(arg);
        }
        if (dim % 2) row[dim - 1] = 0.0f; /* diffusers zero-pads odd sizes */
    }
}

/* TimestepEmbedding: linear_2(silu(linear_1(x))), x (B, K) -> a new (B, T). */
static pf_tensor *timestep_embedding(const pf_unet *m, const pf_tensor *x, const pf_tensor *w1, const pf_tensor *b1,
                                     const pf_tensor *w2, const pf_tensor *b2) {
    const int64_t B = x->shape[0], T = m->cfg.time_embed_dim;
    pf_tensor *t1 = pf_new2(m->be, B, T);                              /* (B, T) */
    pf_linear(t1, x, w1, b1);
    pf_activation(t1, t1, PF_ACT_SILU);
    pf_tensor *y = pf_new2(m->be, B, T);                               /* (B, T) */
    pf_linear(y, t1, w2, b2);
    pf_free(t1);
    return y;
}

/* ResnetBlock2D.forward (default time_embedding_norm, output_scale_factor 1):
 * y = conv2(silu(norm2(conv1(silu(norm1(x))) + time_emb_proj(temb)))) + shortcut(x).
 * x (B, Ci, H, W) is only read; temb (B, T) is silu(emb), which every resnet
 * applies first; returns y (B, Co, H, W). */
static pf_tensor *resnet_forward(const pf_unet *m, const resnet *r, const pf_tensor *x, const pf_tensor *temb) {
    pf_backend *be = m->be;
    const int G = m->cfg.norm_num_groups;
    const float eps = m->cfg.norm_eps;
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3], Co = r->cout;
    pf_tensor *n = pf_new_like(x);                                 /* (B, Ci, H, W) */
    pf_group_norm(n, x, r->norm1_w, r->norm1_b, G, eps, 1);
    pf_tensor *h = pf_new4(be, B, Co, H, W);                       /* (B, Co, H, W) */
    pf_conv2d(h, n, r->conv1_w, r->conv1_b, 1, 1);
    pf_free(n);
    pf_tensor *t = pf_new2(be, B, Co);                             /* (B, Co) */
    pf_linear(t, temb, r->temb_w, r->temb_b);
    pf_tensor *t4 = pf_view4(t, B, Co, 1, 1);                      /* (B, Co, 1, 1) */
    pf_add(h, h, t4);
    pf_free(t4);
    pf_free(t);
    pf_group_norm(h, h, r->norm2_w, r->norm2_b, G, eps, 1);        /* dropout: identity */
    pf_tensor *y = pf_new4(be, B, Co, H, W);                       /* (B, Co, H, W) */
    pf_conv2d(y, h, r->conv2_w, r->conv2_b, 1, 1);
    if (r->short_w) {
        pf_conv2d(h, x, r->short_w, r->short_b, 1, 0);             /* h reused: (B, Co, H, W) */
        pf_add(y, y, h);
    } else {
        pf_add(y, y, x);
    }
    pf_free(h);
    return y;
}

/* Attention.forward with AttnProcessor: out = to_out(sdpa(to_q(x), to_k(kv), to_v(kv))).
 * x (B, L, C) -> y (B, L, C); kv (B, Lk, Ckv); q, o: (B, L, C) and k, v: (B, Lk, C) scratch. */
static void attention_forward(const attention *a, pf_tensor *y, const pf_tensor *x, const pf_tensor *kv, int heads,
                              pf_tensor *q, pf_tensor *k, pf_tensor *v, pf_tensor *o) {
    pf_linear(q, x, a->q_w, NULL);                                 /* (B, L, C) */
    pf_linear(k, kv, a->k_w, NULL);                                /* (B, Lk, C) */
    pf_linear(v, kv, a->v_w, NULL);                                /* (B, Lk, C) */
    pf_attention(o, q, k, v, heads, 0);                            /* (B, L, C), float32 */
    pf_linear(y, o, a->o_w, a->o_b);                               /* (B, L, C) */
}

/* IPAdapterAttnProcessor2_0's part of a cross-attention: for each adapter,
 * o += scale * sdpa(q, to_k_ip(tokens), to_v_ip(tokens)), in adapter order,
 * before to_out (diffusers skips an adapter whose scale is 0). q, o (B, L, C). */
static void ip_attention(const pf_unet_added *added, int xattn, pf_tensor *o, const pf_tensor *q, int heads) {
    for (int i = 0; added && i < added->n_ip; i++) {
        const pf_unet_ip *ip = &added->ip[i];
        if (ip->scale == 0.0f) continue;
        pf_backend *be = o->be;
        const int64_t B = q->shape[0], C = q->shape[2], N = ip->tokens->shape[1];
        pf_tensor *k = pf_new3(be, B, N, C), *v = pf_new3(be, B, N, C), *a = pf_new_like(o);
        pf_linear(k, ip->tokens, ip->to_k_ip[xattn], NULL);        /* (B, N, C) */
        pf_linear(v, ip->tokens, ip->to_v_ip[xattn], NULL);        /* (B, N, C) */
        pf_attention(a, q, k, v, heads, 0);                        /* (B, L, C) */
        pf_scale(a, a, ip->scale, 0.0f);                           /* scale * current_ip_hidden_states */
        pf_add(o, o, a);
        pf_free(k);
        pf_free(v);
        pf_free(a);
    }
}

/* Transformer2DModel.forward on continuous input, x (B, C, H, W) updated in place:
 * x += proj_out(blocks(proj_in(norm(x)) as (B, HW, C))) back in NCHW.
 * ctx (B, Lc, X) is encoder_hidden_states; added's image prompts (or NULL) join
 * each cross-attention as IP-Adapter's decoupled attention. */
static void transformer_forward(const pf_unet *m, const transformer *t, pf_tensor *x, const pf_tensor *ctx,
                                const pf_unet_added *added) {
    pf_backend *be = m->be;
    const int64_t B = x->shape[0], C = x->shape[1], L = x->shape[2] * x->shape[3], Lc = ctx->shape[1];
    const int nhwc[] = {0, 2, 1};
    pf_tensor *n = pf_new_like(x);                                 /* (B, C, H, W) */
    pf_group_norm(n, x, t->norm_w, t->norm_b, m->cfg.norm_num_groups, TRANSFORMER_GROUP_NORM_EPS, 0);
    pf_tensor *n3 = pf_view3(n, B, C, L);                          /* (B, C, HW) */
    pf_tensor *a = pf_new3(be, B, L, C);                           /* (B, L, C) scratch */
    pf_permute(a, n3, nhwc);                                       /* (B, L, C) */
    pf_tensor *h = pf_new3(be, B, L, C);                           /* (B, L, C) residual stream */
    pf_linear(h, a, t->proj_in, t->proj_in_b);
    pf_tensor *q = pf_new3(be, B, L, C), *k = pf_new3(be, B, L, C), *v = pf_new3(be, B, L, C);
    pf_tensor *o = pf_new3(be, B, L, C);                           /* attention output (B, L, C) */
    pf_tensor *kc = pf_new3(be, B, Lc, C), *vc = pf_new3(be, B, Lc, C); /* cross keys/values (B, Lc, C) */
    pf_tensor *ff = pf_new3(be, B, L, 8 * C);                      /* (B, L, 8C) GEGLU input */
    pf_tensor *g = pf_new3(be, B, L, 4 * C);                       /* (B, L, 4C) */
    for (int i = 0; i < t->layers; i++) { /* BasicTransformerBlock.forward */
        const tblock *b = &t->blocks[i];
        pf_layer_norm(a, h, b->norm1_w, b->norm1_b, TRANSFORMER_LAYER_NORM_EPS);
        attention_forward(&b->attn1, a, a, a, t->heads, q, k, v, o);      /* self: (B, L, C) */
        pf_add(h, h, a);
        pf_layer_norm(a, h, b->norm2_w, b->norm2_b, TRANSFORMER_LAYER_NORM_EPS);
        if (added && added->n_ip) { /* attention_forward with the image prompts' attention beside */
            pf_linear(q, a, b->attn2.q_w, NULL);                   /* (B, L, C) */
            pf_linear(kc, ctx, b->attn2.k_w, NULL);                /* (B, Lc, C) */
            pf_linear(vc, ctx, b->attn2.v_w, NULL);
            pf_attention(o, q, kc, vc, t->heads, 0);               /* (B, L, C) */
            ip_attention(added, b->xattn, o, q, t->heads);
            pf_linear(a, o, b->attn2.o_w, b->attn2.o_b);
        } else {
            attention_forward(&b->attn2, a, a, ctx, t->heads, q, kc, vc, o); /* cross: (B, L, C) */
        }
        pf_add(h, h, a);
        pf_layer_norm(a, h, b->norm3_w, b->norm3_b, TRANSFORMER_LAYER_NORM_EPS);
        pf_linear(ff, a, b->ff_in_w, b->ff_in_b);                  /* (B, L, 8C) */
        pf_geglu(g, ff);                                           /* (B, L, 4C) */
        pf_linear(a, g, b->ff_out_w, b->ff_out_b);                 /* (B, L, C) */
        pf_add(h, h, a);
    }
    pf_linear(a, h, t->proj_out, t->proj_out_b);                   /* (B, L, C) */
    pf_permute(n3, a, nhwc);                                       /* (B, C, HW) */
    pf_add(x, x, n);
    pf_tensor *dead[] = {n3, n, a, h, q, k, v, o, kc, vc, ff, g};
    for (size_t i = 0; i < sizeof dead / sizeof *dead; i++) pf_free(dead[i]);
}

/* Shape of skip s (diffusers' down_block_res_samples[s]) for a (B, Cin, H, W) input:
 * conv_in's output, then per down block one per resnet and one after the
 * downsampler (stride 2 pad 1 halves a side, rounding up). */
static void skip_shape(const pf_unet *m, int s, int64_t B, int64_t H, int64_t W, int64_t shape[4]) {
    const pf_unet_config *c = &m->cfg;
    int i = 0, n = 1; /* skips up to the end of block i */
    while (i < c->num_blocks && s >= n + c->layers_per_block[i] + (i < c->num_blocks - 1)) {
        n += c->layers_per_block[i] + (i < c->num_blocks - 1);
        H = (H + 1) / 2;
        W = (W + 1) / 2;
        i++;
    }
    if (s >= n + c->layers_per_block[i]) { /* the downsampler's output */
        H = (H + 1) / 2;
        W = (W + 1) / 2;
    }
    shape[0] = B;
    shape[1] = s == 0 ? c->block_out_channels[0] : c->block_out_channels[i];
    shape[2] = H;
    shape[3] = W;
}

static int check_shape(const pf_tensor *t, const int64_t *want, const char *what, int index, pf_error *err) {
    char got[64], exp[64];
    if (t->ndim == 4 && t->shape[0] == want[0] && t->shape[1] == want[1] && t->shape[2] == want[2] &&
        t->shape[3] == want[3])
        return 0;
    return pf_fail(err, "unet: %s %d has shape %s, expected %s", what, index, pf_shape_str(t, got, sizeof got),
                   pf_shape_str_raw(4, want, exp, sizeof exp));
}

pf_tensor *pf_unet_time_embed(const pf_unet *m, const float *timesteps, int64_t B, const pf_unet_added *added) {
    const pf_unet_config *c = &m->cfg;
    const int C0 = c->block_out_channels[0];
    float *tp = PF_MALLOC((size_t)(B * C0) * sizeof *tp);
    timestep_proj(tp, c, C0, timesteps, B);
    pf_tensor *t0 = pf_from_host(m->be, 2, (int64_t[]){B, C0}, tp);   /* (B, C0) */
    free(tp);
    pf_tensor *emb = timestep_embedding(m, t0, m->time_1_w, m->time_1_b, m->time_2_w, m->time_2_b); /* (B, T) */
    pf_free(t0);
    if (c->text_time) { /* emb + add_embedding(cat(text_embeds, add_time_proj(time_ids).reshape(B, 6A))) */
        PF_CHECK(added && added->text_embeds && added->time_ids);
        const int A = c->addition_time_embed_dim, P = c->add_embed_in - 6 * A;
        float *ids = PF_MALLOC((size_t)B * 6 * A * sizeof *ids);
        timestep_proj(ids, c, A, added->time_ids, 6 * B);              /* each id on its own: (6B, A) */
        pf_tensor *te = pf_from_host(m->be, 2, (int64_t[]){B, 6 * A}, ids); /* (B, 6A) */
        free(ids);
        pf_tensor *cat = pf_new2(m->be, B, P + 6 * A);                 /* (B, P + 6A) */
        pf_concat(cat, added->text_embeds, te, 1);
        pf_tensor *aug = timestep_embedding(m, cat, m->add_1_w, m->add_1_b, m->add_2_w, m->add_2_b); /* (B, T) */
        pf_add(emb, emb, aug);
        pf_free(aug);
        pf_free(cat);
        pf_free(te);
    }
    pf_activation(emb, emb, PF_ACT_SILU); /* every resnet takes silu(emb): do it once */
    return emb;
}

pf_tensor *pf_unet_conv_in(const pf_unet *m, const pf_tensor *x) {
    pf_tensor *h = pf_new4(m->be, x->shape[0], m->cfg.block_out_channels[0], x->shape[2], x->shape[3]);
    pf_conv2d(h, x, m->conv_in_w, m->conv_in_b, 1, 1);                /* (B, C0, H, W) */
    return h;
}

/* Every tensor h holds on the down path is also a skip, owned by skips[]. */
static pf_tensor *down_mid(const pf_unet *m, pf_tensor *h, const pf_tensor *temb, const pf_tensor *context,
                           const pf_unet_added *added, pf_tensor **skips) {
    const pf_unet_config *c = &m->cfg;
    const int nb = c->num_blocks;
    const int64_t B = h->shape[0];
    int ns = 0;
    skips[ns++] = h;                                               /* (B, C0, H, W) */
    for (int i = 0; i < nb; i++) {
        const unet_block *d = &m->down[i];
        for (int k = 0; k < d->layers; k++) {
            pf_tensor *r = resnet_forward(m, &d->resnets[k], h, temb); /* (B, C[i], h, w) */
            if (d->attns) transformer_forward(m, &d->attns[k], r, context, added);
            skips[ns++] = h = r;
        }
        if (d->sample_w) { /* Downsample2D: stride 2 pad 1 rounds odd sides up */
            pf_tensor *y = pf_new4(m->be, B, h->shape[1], (h->shape[2] + 1) / 2, (h->shape[3] + 1) / 2);
            pf_conv2d(y, h, d->sample_w, d->sample_b, 2, 1);       /* (B, C[i], ceil(h/2), ceil(w/2)) */
            skips[ns++] = h = y;
        }
    }
    PF_CHECK(ns == m->num_skips);
    /* UNetMidBlock2DCrossAttn: resnet, transformer, resnet */
    pf_tensor *r = resnet_forward(m, &m->mid_res[0], h, temb);     /* (B, Cm, h, w) */
    transformer_forward(m, &m->mid_attn, r, context, added);
    pf_tensor *mid = resnet_forward(m, &m->mid_res[1], r, temb);   /* (B, Cm, h, w) */
    pf_free(r);
    return mid;
}

pf_tensor *pf_unet_down_mid(const pf_unet *m, pf_tensor *h, const pf_tensor *temb, const pf_tensor *context,
                            pf_tensor **skips) {
    return down_mid(m, h, temb, context, NULL, skips);
}

int pf_unet_forward(pf_unet *m, pf_tensor *out, const pf_tensor *x, const float *timesteps, const pf_tensor *context,
                    const pf_tensor *const *down_residuals, const pf_tensor *mid_residual, pf_error *err) {
    return pf_unet_forward_added(m, out, x, timesteps, context, NULL, down_residuals, mid_residual, err);
}

/* UNet2DConditionModel.forward for SD-1.x/2.x and SDXL checkpoints. */
int pf_unet_forward_added(pf_unet *m, pf_tensor *out, const pf_tensor *x, const float *timesteps,
                          const pf_tensor *context, const pf_unet_added *added, const pf_tensor *const *down_residuals,
                          const pf_tensor *mid_residual, pf_error *err) {
    const pf_unet_config *c = &m->cfg;
    pf_backend *be = m->be;
    const int nb = c->num_blocks;
    char s1[64];
    PF_CHECK(m->has_up);
    PF_CHECK(x->be == be && context->be == be && out->be == be);
    if (x->ndim != 4 || x->shape[1] != c->in_channels || x->shape[0] < 1 || x->shape[2] < 1 || x->shape[3] < 1)
        return pf_fail(err, "unet: input has shape %s, expected (B, %d, H, W)", pf_shape_str(x, s1, sizeof s1),
                       c->in_channels);
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    if (context->ndim != 3 || context->shape[0] != B || context->shape[2] != c->cross_attention_dim ||
        context->shape[1] < 1)
        return pf_fail(err, "unet: context has shape %s, expected (%lld, L, %d)", pf_shape_str(context, s1, sizeof s1),
                       (long long)B, c->cross_attention_dim);
    PF_CHECK(out->ndim == 4 && out->shape[0] == B && out->shape[1] == c->out_channels && out->shape[2] == H &&
             out->shape[3] == W);
    if (c->text_time) {
        const int P = c->add_embed_in - 6 * c->addition_time_embed_dim;
        if (!added || !added->text_embeds || !added->time_ids)
            return pf_fail(err, "unet: this UNet (addition_embed_type \"text_time\") needs text_embeds and time_ids");
        if (added->text_embeds->ndim != 2 || added->text_embeds->shape[0] != B || added->text_embeds->shape[1] != P)
            return pf_fail(err, "unet: text_embeds has shape %s, expected (%lld, %d)",
                           pf_shape_str(added->text_embeds, s1, sizeof s1), (long long)B, P);
    }
    for (int i = 0; added && i < added->n_ip; i++) {
        const pf_tensor *t = added->ip[i].tokens;
        if (t->ndim != 3 || t->shape[0] != B || t->shape[2] != c->cross_attention_dim || t->shape[1] < 1)
            return pf_fail(err, "unet: image prompt %d has shape %s, expected (%lld, N, %d)", i,
                           pf_shape_str(t, s1, sizeof s1), (long long)B, c->cross_attention_dim);
    }
    int64_t want[4];
    for (int s = 0; down_residuals && s < m->num_skips; s++) {
        skip_shape(m, s, B, H, W, want);
        if (check_shape(down_residuals[s], want, "down residual", s, err)) return -1;
    }
    if (mid_residual) {
        skip_shape(m, m->num_skips - 1, B, H, W, want);
        if (check_shape(mid_residual, want, "mid residual", 0, err)) return -1;
    }

    /* 1. time; 2. conv_in; 3. down; 4. mid. The skips stay owned by skips[]
     * until their up block pops them. */
    pf_tensor *temb = pf_unet_time_embed(m, timesteps, B, c->text_time ? added : NULL); /* (B, T) */
    pf_tensor **skips = PF_CALLOC((size_t)m->num_skips, sizeof *skips);
    int ns = m->num_skips;
    pf_tensor *h = down_mid(m, pf_unet_conv_in(m, x), temb, context, added, skips); /* (B, Cm, h, w) */
    /* ControlNet residuals join after the mid block has read its input (the last
     * skip), as diffusers adds them to copies of the skips. */
    for (int s = 0; down_residuals && s < ns; s++) pf_add(skips[s], skips[s], down_residuals[s]);
    if (mid_residual) pf_add(h, h, mid_residual);

    /* 5. up: each resnet takes cat(h, last skip) on channels */
    for (int j = 0; j < nb; j++) {
        const unet_block *u = &m->up[j];
        for (int k = 0; k < u->layers; k++) {
            pf_tensor *s = skips[--ns];
            pf_tensor *cat = pf_new4(be, B, h->shape[1] + s->shape[1], h->shape[2], h->shape[3]);
            pf_concat(cat, h, s, 1);                               /* (B, Ch + Cs, h, w) */
            pf_free(h);
            pf_free(s);
            skips[ns] = NULL;
            h = resnet_forward(m, &u->resnets[k], cat, temb);      /* (B, C[nb-1-j], h, w) */
            pf_free(cat);
            if (u->attns) transformer_forward(m, &u->attns[k], h, context, added);
        }
        if (u->sample_w) {
            /* Upsample2D: nearest to the size of the skip the next block pops
             * (2x, or diffusers' forwarded upsample_size where a side was odd), conv 3x3 */
            const pf_tensor *next = skips[ns - 1];
            pf_tensor *up = pf_new4(be, B, h->shape[1], next->shape[2], next->shape[3]); /* (B, C, h', w') */
            pf_upsample_nearest(up, h);
            pf_free(h);
            h = pf_new_like(up);
            pf_conv2d(h, up, u->sample_w, u->sample_b, 1, 1);
            pf_free(up);
        }
    }
    PF_CHECK(ns == 0);

    /* 6. conv_norm_out + silu, conv_out */
    pf_group_norm(h, h, m->norm_out_w, m->norm_out_b, c->norm_num_groups, c->norm_eps, 1);
    pf_conv2d(out, h, m->conv_out_w, m->conv_out_b, 1, 1);         /* (B, Cout, H, W) */
    pf_free(h);
    pf_free(temb);
    free(skips);
    if (pf_backend_ok(be, err)) return pf_error_prefix(err, "unet");
    return 0;
}
