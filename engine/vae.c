/* vae.c - AutoencoderKL: Encoder (conv_in, DownEncoderBlock2D x n, UNetMidBlock2D,
 * norm + SiLU + conv_out, quant_conv) and Decoder (post_quant_conv, conv_in,
 * UNetMidBlock2D, UpDecoderBlock2D x n, norm + SiLU + conv_out).
 * Mirrors diffusers/models/autoencoders/{autoencoder_kl,vae}.py with the blocks of
 * unets/unet_2d_blocks.py, resnet.py, downsampling.py, upsampling.py and the
 * group-normed single-head Attention of attention_processor.py; weights keep
 * diffusers' key names.
 *
 * Memory: the decoder's last blocks run at full resolution (SD at 512px:
 * 128-256 channels x 512 x 512, 128-256 MiB a tensor), so every forward step
 * allocates its output and frees its input as soon as it is consumed; a resnet
 * holds at most its input, one intermediate and its output. */
#include "vae.h"

#include <math.h>
#include <string.h>

#include "config.h"
#include "model_dir.h"

/* Every GroupNorm of the VAE (resnets, attention, conv_norm_out) uses 1e-6. */
#define VAE_EPS 1e-6f

typedef struct vae_resnet {         /* ResnetBlock2D, no time embedding */
    pf_tensor *norm1_w, *norm1_b;   /* (Ci) */
    pf_tensor *conv1_w, *conv1_b;   /* (Co, Ci, 3, 3), (Co) */
    pf_tensor *norm2_w, *norm2_b;   /* (Co) */
    pf_tensor *conv2_w, *conv2_b;   /* (Co, Co, 3, 3), (Co) */
    pf_tensor *short_w, *short_b;   /* conv_shortcut (Co, Ci, 1, 1), (Co); NULL when Ci == Co */
} vae_resnet;

typedef struct vae_attention {      /* Attention(C, heads=1, dim_head=C, norm_num_groups, residual) */
    pf_tensor *norm_w, *norm_b;     /* group_norm (C) */
    pf_tensor *q_w, *q_b;           /* to_q (C, C), (C) */
    pf_tensor *k_w, *k_b;           /* to_k */
    pf_tensor *v_w, *v_b;           /* to_v */
    pf_tensor *o_w, *o_b;           /* to_out.0 */
} vae_attention;

typedef struct vae_block {          /* DownEncoderBlock2D / UpDecoderBlock2D */
    int n_resnets;                  /* layers_per_block (down) or layers_per_block + 1 (up) */
    vae_resnet *resnets;
    pf_tensor *sample_w, *sample_b; /* downsamplers.0.conv / upsamplers.0.conv (C, C, 3, 3), (C);
                                       NULL on the last block */
} vae_block;

typedef struct vae_coder {          /* Encoder or Decoder */
    pf_tensor *conv_in_w, *conv_in_b;
    vae_block blocks[PF_VAE_MAX_BLOCKS];
    vae_resnet mid_res[2];          /* mid_block.resnets.0, .1 (C_last) */
    vae_attention mid_attn;         /* mid_block.attentions.0 (C_last) */
    pf_tensor *norm_out_w, *norm_out_b;
    pf_tensor *conv_out_w, *conv_out_b;
} vae_coder;

struct pf_vae {
    pf_vae_config cfg;
    pf_backend *be;
    vae_coder enc, dec;
    pf_tensor *quant_w, *quant_b;           /* quant_conv (2L, 2L, 1, 1), (2L) */
    pf_tensor *post_quant_w, *post_quant_b; /* post_quant_conv (L, L, 1, 1), (L) */
};

/* ---- config ---- */

/* Each entry of list `key` (num_blocks long) must be `want`. diffusers' default
 * for an absent list is a single block of that type. */
static int check_block_types(const pf_config *c, const char *key, const char *want, int num_blocks, pf_error *err) {
    int n;
    if (pf_config_list_len(c, key, PF_VAE_MAX_BLOCKS, &n, err)) return -1;
    if (!pf_config_has(c, key)) n = 1;
    if (n != num_blocks)
        return pf_fail(err, "%s: \"%s\" has %d entries but \"block_out_channels\" has %d", pf_config_path(c), key, n,
                       num_blocks);
    for (int i = 0; pf_config_has(c, key) && i < n; i++) {
        char type[64];
        if (pf_config_str_at(c, key, i, type, sizeof type, err)) return -1;
        if (strcmp(type, want))
            return pf_fail(err, "%s: \"%s\"[%d] is \"%s\", only %s is supported", pf_config_path(c), key, i, type,
                           want);
    }
    return 0;
}

/* A boolean key that must keep its SD value. */
static int require_bool(const pf_config *c, const char *key, int want, pf_error *err) {
    int v;
    if (pf_config_bool(c, key, want, &v, err)) return -1;
    if (v != want)
        return pf_fail(err, "%s: \"%s\" is %s, only %s is supported", pf_config_path(c), key, v ? "true" : "false",
                       want ? "true" : "false");
    return 0;
}

int pf_vae_config_read(pf_vae_config *cfg, const char *path, pf_error *err) {
    pf_config *c;
    if (pf_config_load(&c, path, err)) return -1;
    long in_ch, out_ch, lat, lpb, groups, boc[PF_VAE_MAX_BLOCKS];
    int nb;
    double sf, shift;
    char act[64];
    int rc = -1;
    if (pf_config_int(c, "in_channels", 3, 1, 1 << 16, &in_ch, err) ||
        pf_config_int(c, "out_channels", 3, 1, 1 << 16, &out_ch, err) ||
        pf_config_int(c, "latent_channels", 4, 1, 1 << 16, &lat, err) ||
        pf_config_int(c, "layers_per_block", 1, 1, 64, &lpb, err) ||
        pf_config_int(c, "norm_num_groups", 32, 1, 1 << 16, &groups, err) ||
        pf_config_list_len(c, "block_out_channels", PF_VAE_MAX_BLOCKS, &nb, err))
        goto done;
    if (nb == 0) nb = 1; /* absent: diffusers' default (64,) */
    if (pf_config_int_list(c, "block_out_channels", 64, 1, 1 << 16, boc, nb, err) ||
        check_block_types(c, "down_block_types", "DownEncoderBlock2D", nb, err) ||
        check_block_types(c, "up_block_types", "UpDecoderBlock2D", nb, err) ||
        pf_config_str(c, "act_fn", "silu", act, sizeof act, err) ||
        pf_config_num(c, "scaling_factor", 0.18215, &sf, err) ||
        pf_config_num(c, "shift_factor", 0.0, &shift, err) ||
        require_bool(c, "use_quant_conv", 1, err) || require_bool(c, "use_post_quant_conv", 1, err) ||
        require_bool(c, "mid_block_add_attention", 1, err))
        goto done;
    if (strcmp(act, "silu") && strcmp(act, "swish")) {
        pf_fail(err, "%s: \"act_fn\" is \"%s\", only silu is supported", path, act);
        goto done;
    }
    if (shift != 0.0) {
        pf_fail(err, "%s: \"shift_factor\" is %g, only null is supported (SD-3/FLUX latents)", path, shift);
        goto done;
    }
    if (!(sf > 0.0)) {
        pf_fail(err, "%s: \"scaling_factor\" is %g, must be positive", path, sf);
        goto done;
    }
    for (int i = 0; i < nb; i++) {
        if (boc[i] % groups) {
            pf_fail(err, "%s: \"block_out_channels\"[%d] = %ld is not a multiple of \"norm_num_groups\" %ld", path,
                    i, boc[i], groups);
            goto done;
        }
        cfg->block_out_channels[i] = (int)boc[i];
    }
    cfg->in_channels = (int)in_ch;
    cfg->out_channels = (int)out_ch;
    cfg->latent_channels = (int)lat;
    cfg->num_blocks = nb;
    cfg->layers_per_block = (int)lpb;
    cfg->norm_num_groups = (int)groups;
    cfg->scaling_factor = (float)sf;
    rc = 0;
done:
    pf_config_free(c);
    return rc;
}

/* ---- weights ---- */

static void free_resnet(vae_resnet *r) {
    pf_tensor **t = (pf_tensor **)r;
    for (size_t k = 0; k < sizeof(vae_resnet) / sizeof(pf_tensor *); k++) pf_free(t[k]);
}

static void free_coder(vae_coder *c) {
    pf_free(c->conv_in_w);
    pf_free(c->conv_in_b);
    for (int i = 0; i < PF_VAE_MAX_BLOCKS; i++) {
        vae_block *b = &c->blocks[i];
        for (int j = 0; b->resnets && j < b->n_resnets; j++) free_resnet(&b->resnets[j]);
        free(b->resnets);
        pf_free(b->sample_w);
        pf_free(b->sample_b);
    }
    free_resnet(&c->mid_res[0]);
    free_resnet(&c->mid_res[1]);
    pf_tensor **t = (pf_tensor **)&c->mid_attn;
    for (size_t k = 0; k < sizeof(vae_attention) / sizeof(pf_tensor *); k++) pf_free(t[k]);
    pf_free(c->norm_out_w);
    pf_free(c->norm_out_b);
    pf_free(c->conv_out_w);
    pf_free(c->conv_out_b);
}

void pf_vae_free(pf_vae *m) {
    if (!m) return;
    free_coder(&m->enc);
    free_coder(&m->dec);
    pf_free(m->quant_w);
    pf_free(m->quant_b);
    pf_free(m->post_quant_w);
    pf_free(m->post_quant_b);
    free(m);
}

const pf_vae_config *pf_vae_config_of(const pf_vae *m) { return &m->cfg; }

int pf_vae_scale_factor(const pf_vae *m) { return 1 << (m->cfg.num_blocks - 1); }

/* Where weights come from during one load. */
typedef struct loader {
    pf_weights *w;
    pf_backend *be;
    pf_error *err;
} loader;

/* name.weight (co, ci, k, k) and name.bias (co) of an nn.Conv2d. */
static int load_conv(loader *l, pf_tensor **w, pf_tensor **b, int64_t co, int64_t ci, int64_t k, const char *name) {
    return !(*w = pf_weights_loadf(l->w, l->be, l->err, 4, (int64_t[]){co, ci, k, k}, "%s.weight", name)) ||
                   !(*b = pf_weights_loadf(l->w, l->be, l->err, 1, (int64_t[]){co}, "%s.bias", name))
               ? -1
               : 0;
}

/* name.weight (n, k) and name.bias (n) of an nn.Linear. */
static int load_linear(loader *l, pf_tensor **w, pf_tensor **b, int64_t n, int64_t k, const char *name) {
    return !(*w = pf_weights_loadf(l->w, l->be, l->err, 2, (int64_t[]){n, k}, "%s.weight", name)) ||
                   !(*b = pf_weights_loadf(l->w, l->be, l->err, 1, (int64_t[]){n}, "%s.bias", name))
               ? -1
               : 0;
}

/* name.weight and name.bias (c) of an nn.GroupNorm. */
static int load_norm(loader *l, pf_tensor **w, pf_tensor **b, int64_t c, const char *name) {
    return !(*w = pf_weights_loadf(l->w, l->be, l->err, 1, (int64_t[]){c}, "%s.weight", name)) ||
                   !(*b = pf_weights_loadf(l->w, l->be, l->err, 1, (int64_t[]){c}, "%s.bias", name))
               ? -1
               : 0;
}

static int load_resnet(loader *l, vae_resnet *r, int64_t ci, int64_t co, const char *p) {
    char n[512];
#define SUB(s) (snprintf(n, sizeof n, "%s.%s", p, s), n)
    if (load_norm(l, &r->norm1_w, &r->norm1_b, ci, SUB("norm1")) ||
        load_conv(l, &r->conv1_w, &r->conv1_b, co, ci, 3, SUB("conv1")) ||
        load_norm(l, &r->norm2_w, &r->norm2_b, co, SUB("norm2")) ||
        load_conv(l, &r->conv2_w, &r->conv2_b, co, co, 3, SUB("conv2")))
        return -1;
    if (ci != co && load_conv(l, &r->short_w, &r->short_b, co, ci, 1, SUB("conv_shortcut"))) return -1;
#undef SUB
    return 0;
}

/* Checkpoints saved before diffusers 0.14 (among them the original SD-1.x VAE
 * uploads) name the attention projections query/key/value/proj_attn; diffusers
 * renames them on load (ModelMixin._convert_deprecated_attention_blocks), and
 * so does this, per projection, preferring the current name. */
static int load_attention(loader *l, vae_attention *a, int64_t c, const char *p) {
    static const char *const names[4][2] = {{"to_q", "query"}, {"to_k", "key"}, {"to_v", "value"},
                                            {"to_out.0", "proj_attn"}};
    pf_tensor **dst[4][2] = {{&a->q_w, &a->q_b}, {&a->k_w, &a->k_b}, {&a->v_w, &a->v_b}, {&a->o_w, &a->o_b}};
    char n[512], probe[600];
    snprintf(n, sizeof n, "%s.group_norm", p);
    if (load_norm(l, &a->norm_w, &a->norm_b, c, n)) return -1;
    for (int i = 0; i < 4; i++) {
        snprintf(n, sizeof n, "%s.%s", p, names[i][0]);
        snprintf(probe, sizeof probe, "%s.weight", n);
        if (!pf_weights_has(l->w, probe)) {
            snprintf(probe, sizeof probe, "%s.%s.weight", p, names[i][1]);
            if (pf_weights_has(l->w, probe)) snprintf(n, sizeof n, "%s.%s", p, names[i][1]);
        }
        if (load_linear(l, dst[i][0], dst[i][1], c, c, n)) return -1;
    }
    return 0;
}

static int load_mid(loader *l, vae_coder *c, int64_t ch, const char *p) {
    char n[512];
    for (int i = 0; i < 2; i++) {
        snprintf(n, sizeof n, "%s.mid_block.resnets.%d", p, i);
        if (load_resnet(l, &c->mid_res[i], ch, ch, n)) return -1;
    }
    snprintf(n, sizeof n, "%s.mid_block.attentions.0", p);
    return load_attention(l, &c->mid_attn, ch, n);
}

/* Encoder: block i maps block_out_channels[i-1] (conv_in's for i = 0) to
 * block_out_channels[i], then halves the resolution unless it is the last. */
static int load_encoder(loader *l, vae_coder *e, const pf_vae_config *cfg, const char *prefix) {
    const int *boc = cfg->block_out_channels, nb = cfg->num_blocks;
    char p[256], n[512];
    snprintf(p, sizeof p, "%sencoder", prefix);
    snprintf(n, sizeof n, "%s.conv_in", p);
    if (load_conv(l, &e->conv_in_w, &e->conv_in_b, boc[0], cfg->in_channels, 3, n)) return -1;
    for (int i = 0; i < nb; i++) {
        vae_block *b = &e->blocks[i];
        b->n_resnets = cfg->layers_per_block;
        b->resnets = PF_CALLOC((size_t)b->n_resnets, sizeof(vae_resnet));
        for (int j = 0; j < b->n_resnets; j++) {
            snprintf(n, sizeof n, "%s.down_blocks.%d.resnets.%d", p, i, j);
            if (load_resnet(l, &b->resnets[j], j == 0 ? boc[i > 0 ? i - 1 : 0] : boc[i], boc[i], n)) return -1;
        }
        snprintf(n, sizeof n, "%s.down_blocks.%d.downsamplers.0.conv", p, i);
        if (i < nb - 1 && load_conv(l, &b->sample_w, &b->sample_b, boc[i], boc[i], 3, n)) return -1;
    }
    if (load_mid(l, e, boc[nb - 1], p)) return -1;
    snprintf(n, sizeof n, "%s.conv_norm_out", p);
    if (load_norm(l, &e->norm_out_w, &e->norm_out_b, boc[nb - 1], n)) return -1;
    snprintf(n, sizeof n, "%s.conv_out", p);
    return load_conv(l, &e->conv_out_w, &e->conv_out_b, 2 * cfg->latent_channels, boc[nb - 1], 3, n);
}

/* Decoder: up block i walks block_out_channels backwards, mapping
 * reversed[i-1] (reversed[0] for i = 0) to reversed[i], then doubles the
 * resolution unless it is the last. */
static int load_decoder(loader *l, vae_coder *d, const pf_vae_config *cfg, const char *prefix) {
    const int *boc = cfg->block_out_channels, nb = cfg->num_blocks;
    char p[256], n[512];
    snprintf(p, sizeof p, "%sdecoder", prefix);
    snprintf(n, sizeof n, "%s.conv_in", p);
    if (load_conv(l, &d->conv_in_w, &d->conv_in_b, boc[nb - 1], cfg->latent_channels, 3, n)) return -1;
    if (load_mid(l, d, boc[nb - 1], p)) return -1;
    for (int i = 0; i < nb; i++) {
        vae_block *b = &d->blocks[i];
        int64_t co = boc[nb - 1 - i], ci = boc[nb - 1 - (i > 0 ? i - 1 : 0)];
        b->n_resnets = cfg->layers_per_block + 1;
        b->resnets = PF_CALLOC((size_t)b->n_resnets, sizeof(vae_resnet));
        for (int j = 0; j < b->n_resnets; j++) {
            snprintf(n, sizeof n, "%s.up_blocks.%d.resnets.%d", p, i, j);
            if (load_resnet(l, &b->resnets[j], j == 0 ? ci : co, co, n)) return -1;
        }
        snprintf(n, sizeof n, "%s.up_blocks.%d.upsamplers.0.conv", p, i);
        if (i < nb - 1 && load_conv(l, &b->sample_w, &b->sample_b, co, co, 3, n)) return -1;
    }
    snprintf(n, sizeof n, "%s.conv_norm_out", p);
    if (load_norm(l, &d->norm_out_w, &d->norm_out_b, boc[0], n)) return -1;
    snprintf(n, sizeof n, "%s.conv_out", p);
    return load_conv(l, &d->conv_out_w, &d->conv_out_b, cfg->out_channels, boc[0], 3, n);
}

int pf_vae_load(pf_vae **out, pf_backend *be, const pf_vae_config *cfg, pf_weights *w, const char *prefix,
                pf_error *err) {
    *out = NULL;
    PF_CHECK(cfg->num_blocks >= 1 && cfg->num_blocks <= PF_VAE_MAX_BLOCKS);
    pf_vae *m = PF_CALLOC(1, sizeof *m);
    m->cfg = *cfg;
    m->be = be;
    loader l = {w, be, err};
    const int64_t L = cfg->latent_channels;
    char n[512];
    if (load_encoder(&l, &m->enc, cfg, prefix) || load_decoder(&l, &m->dec, cfg, prefix)) goto fail;
    snprintf(n, sizeof n, "%squant_conv", prefix);
    if (load_conv(&l, &m->quant_w, &m->quant_b, 2 * L, 2 * L, 1, n)) goto fail;
    snprintf(n, sizeof n, "%spost_quant_conv", prefix);
    if (load_conv(&l, &m->post_quant_w, &m->post_quant_b, L, L, 1, n)) goto fail;
    *out = m;
    return 0;
fail:
    pf_vae_free(m);
    return -1;
}

int pf_vae_load_dir(pf_vae **out, pf_backend *be, const char *model_dir, pf_error *err) {
    *out = NULL;
    char cfg_path[4096], weights_path[4096];
    pf_vae_config cfg;
    pf_weights *w;
    if (pf_model_file(cfg_path, sizeof cfg_path, model_dir, "vae", "config.json", err) ||
        pf_vae_config_read(&cfg, cfg_path, err) ||
        pf_model_weights(weights_path, sizeof weights_path, model_dir, "vae", 0, err) ||
        pf_weights_open(&w, weights_path, err))
        return -1;
    int rc = pf_vae_load(out, be, &cfg, w, "", err);
    pf_weights_close(w);
    return rc;
}

/* ---- forward ---- */

/* y = conv2d(x, w, b) into a new tensor (N, Co, Ho, Wo). */
static pf_tensor *conv(const pf_tensor *x, const pf_tensor *w, const pf_tensor *b, int stride, int pad) {
    int64_t ho = (x->shape[2] + 2 * pad - w->shape[2]) / stride + 1;
    int64_t wo = (x->shape[3] + 2 * pad - w->shape[3]) / stride + 1;
    pf_tensor *y = pf_new4(x->be, x->shape[0], w->shape[0], ho, wo);
    pf_conv2d(y, x, w, b, stride, pad);
    return y;
}

/* ResnetBlock2D.forward(x, temb=None) with output_scale_factor 1:
 * shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))). x (N, Ci, H, W) is
 * kept; returns a new (N, Co, H, W). */
static pf_tensor *resnet(const pf_vae *m, const vae_resnet *r, const pf_tensor *x) {
    const int G = m->cfg.norm_num_groups;
    pf_tensor *h = pf_new_like(x);                                      /* (N, Ci, H, W) */
    pf_group_norm(h, x, r->norm1_w, r->norm1_b, G, VAE_EPS, 1);
    pf_tensor *h1 = conv(h, r->conv1_w, r->conv1_b, 1, 1);             /* (N, Co, H, W) */
    pf_free(h);
    pf_group_norm(h1, h1, r->norm2_w, r->norm2_b, G, VAE_EPS, 1);
    pf_tensor *y = conv(h1, r->conv2_w, r->conv2_b, 1, 1);             /* (N, Co, H, W) */
    pf_free(h1);
    if (r->short_w) {
        pf_tensor *s = conv(x, r->short_w, r->short_b, 1, 0);          /* (N, Co, H, W) */
        pf_add(y, y, s);
        pf_free(s);
    } else {
        pf_add(y, y, x);
    }
    return y;
}

/* Attention with AttnProcessor2_0 on a 4-D input, as the VAE mid block uses it:
 * x + to_out(sdpa(to_q(n), to_k(n), to_v(n))) with n = group_norm(x) seen as
 * H*W tokens of C channels, one head of dim C. x (N, C, H, W) is updated. */
static void attention(const pf_vae *m, const vae_attention *a, pf_tensor *x) {
    pf_backend *be = m->be;
    const int64_t N = x->shape[0], C = x->shape[1], HW = x->shape[2] * x->shape[3];
    const int to_tokens[] = {0, 2, 1}; /* (N, C, HW) <-> (N, HW, C) */
    pf_tensor *h = pf_new_like(x);                                      /* (N, C, H, W) */
    pf_group_norm(h, x, a->norm_w, a->norm_b, m->cfg.norm_num_groups, VAE_EPS, 0);
    pf_tensor *h3 = pf_view3(h, N, C, HW);                              /* (N, C, HW) */
    pf_tensor *t = pf_new3(be, N, HW, C);                               /* (N, HW, C) tokens */
    pf_permute(t, h3, to_tokens);
    pf_tensor *q = pf_new3(be, N, HW, C), *k = pf_new3(be, N, HW, C), *v = pf_new3(be, N, HW, C);
    pf_linear(q, t, a->q_w, a->q_b);                                    /* (N, HW, C) */
    pf_linear(k, t, a->k_w, a->k_b);                                    /* (N, HW, C) */
    pf_linear(v, t, a->v_w, a->v_b);                                    /* (N, HW, C) */
    pf_tensor *o = pf_new3(be, N, HW, C);
    pf_attention(o, q, k, v, 1, 0);                                     /* (N, HW, C) */
    pf_free(q);
    pf_free(k);
    pf_free(v);
    pf_linear(t, o, a->o_w, a->o_b);                                    /* (N, HW, C) */
    pf_free(o);
    pf_permute(h3, t, to_tokens);                                       /* (N, C, HW) */
    pf_free(t);
    pf_add(x, x, h);                                                    /* residual_connection */
    pf_free(h3);
    pf_free(h);
}

/* UNetMidBlock2D (one layer): resnet, attention, resnet. Consumes x, returns
 * a new (N, C, H, W). */
static pf_tensor *mid_block(const pf_vae *m, const vae_coder *c, pf_tensor *x) {
    pf_tensor *y = resnet(m, &c->mid_res[0], x);                        /* (N, C, H, W) */
    pf_free(x);
    attention(m, &c->mid_attn, y);
    x = resnet(m, &c->mid_res[1], y);                                   /* (N, C, H, W) */
    pf_free(y);
    return x;
}

/* Runs a block's resnets on x, consuming it; returns the new activation. */
static pf_tensor *block_resnets(const pf_vae *m, const vae_block *b, pf_tensor *x) {
    for (int j = 0; j < b->n_resnets; j++) {
        pf_tensor *y = resnet(m, &b->resnets[j], x);                    /* (N, Co, H, W) */
        pf_free(x);
        x = y;
    }
    return x;
}

/* A zero tensor (N, C, H, W): host zeros uploaded, so no op has to read
 * uninitialised (possibly NaN) memory to make it. */
static pf_tensor *zeros4(pf_backend *be, int64_t n, int64_t c, int64_t h, int64_t w) {
    float *z = calloc((size_t)(n * c * h * w) + 1, sizeof(float));
    if (!z) {
        pf_backend_set_error(be, "vae: out of memory for a padding tensor");
        return pf_new4(be, n, c, h, w); /* storage-less: the failed backend skips every op */
    }
    pf_tensor *t = pf_from_host(be, 4, (int64_t[]){n, c, h, w}, z);
    free(z);
    return t;
}

/* Downsample2D(use_conv, padding=0): F.pad(x, (0, 1, 0, 1)) then a 3x3 stride-2
 * convolution. The backend's convolution pads all sides alike, so the zero
 * column and row are concatenated explicitly (two copies of x; a padded-conv op
 * would save them). Consumes x (N, C, H, W), returns (N, C, H/2, W/2) for even H, W. */
static pf_tensor *downsample(const pf_vae *m, const vae_block *b, pf_tensor *x) {
    pf_backend *be = m->be;
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    pf_tensor *zc = zeros4(be, N, C, H, 1);
    pf_tensor *xw = pf_new4(be, N, C, H, W + 1);
    pf_concat(xw, x, zc, 3);                                            /* (N, C, H, W+1) */
    pf_free(zc);
    pf_free(x);
    pf_tensor *zr = zeros4(be, N, C, 1, W + 1);
    pf_tensor *xp = pf_new4(be, N, C, H + 1, W + 1);
    pf_concat(xp, xw, zr, 2);                                           /* (N, C, H+1, W+1) */
    pf_free(zr);
    pf_free(xw);
    pf_tensor *y = conv(xp, b->sample_w, b->sample_b, 2, 0);           /* (N, C, H/2, W/2) */
    pf_free(xp);
    return y;
}

/* Upsample2D(use_conv): nearest 2x then a 3x3 convolution. Consumes x (N, C, H, W),
 * returns (N, C, 2H, 2W). */
static pf_tensor *upsample(const pf_vae *m, const vae_block *b, pf_tensor *x) {
    pf_tensor *u = pf_new4(m->be, x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]);
    pf_upsample_nearest2x(u, x);                                        /* (N, C, 2H, 2W) */
    pf_free(x);
    pf_tensor *y = conv(u, b->sample_w, b->sample_b, 1, 1);            /* (N, C, 2H, 2W) */
    pf_free(u);
    return y;
}

int pf_vae_decode(pf_vae *m, pf_tensor *image_out, const pf_tensor *latents, pf_error *err) {
    const pf_vae_config *c = &m->cfg;
    const int f = pf_vae_scale_factor(m);
    char s[64];
    if (latents->ndim != 4 || latents->shape[1] != c->latent_channels)
        return pf_fail(err, "vae decode: latents %s, expected (B, %d, H, W)", pf_shape_str(latents, s, sizeof s),
                       c->latent_channels);
    const int64_t N = latents->shape[0], H = latents->shape[2], W = latents->shape[3];
    PF_CHECK(image_out->ndim == 4 && image_out->shape[0] == N && image_out->shape[1] == c->out_channels &&
             image_out->shape[2] == H * f && image_out->shape[3] == W * f);
    pf_backend *be = m->be;
    const vae_coder *d = &m->dec;

    pf_tensor *z = pf_new_like(latents);                                /* (N, L, H, W) */
    pf_scale(z, latents, 1.0f / c->scaling_factor, 0.0f);
    pf_tensor *zq = conv(z, m->post_quant_w, m->post_quant_b, 1, 0);   /* (N, L, H, W) */
    pf_free(z);
    pf_tensor *x = conv(zq, d->conv_in_w, d->conv_in_b, 1, 1);         /* (N, C_last, H, W) */
    pf_free(zq);
    x = mid_block(m, d, x);                                             /* (N, C_last, H, W) */
    for (int i = 0; i < c->num_blocks; i++) {
        const vae_block *b = &d->blocks[i];
        x = block_resnets(m, b, x);                 /* (N, reversed[i], H 2^i, W 2^i) */
        if (b->sample_w) x = upsample(m, b, x);     /* (N, reversed[i], H 2^(i+1), W 2^(i+1)) */
    }
    pf_group_norm(x, x, d->norm_out_w, d->norm_out_b, c->norm_num_groups, VAE_EPS, 1); /* (N, C_0, Hf, Wf) */
    pf_conv2d(image_out, x, d->conv_out_w, d->conv_out_b, 1, 1);       /* (N, 3, Hf, Wf) */
    pf_free(x);
    if (pf_backend_ok(be, err)) return pf_error_prefix(err, "vae decode");
    return 0;
}

int pf_vae_encode(pf_vae *m, pf_tensor *moments_out, const pf_tensor *image, pf_error *err) {
    const pf_vae_config *c = &m->cfg;
    const int f = pf_vae_scale_factor(m);
    char s[64];
    if (image->ndim != 4 || image->shape[1] != c->in_channels)
        return pf_fail(err, "vae encode: image %s, expected (B, %d, H, W)", pf_shape_str(image, s, sizeof s),
                       c->in_channels);
    const int64_t N = image->shape[0], H = image->shape[2], W = image->shape[3];
    if (H % f || W % f || H == 0 || W == 0)
        return pf_fail(err, "vae encode: image size %lldx%lld is not a positive multiple of %d", (long long)W,
                       (long long)H, f);
    PF_CHECK(moments_out->ndim == 4 && moments_out->shape[0] == N &&
             moments_out->shape[1] == 2 * c->latent_channels && moments_out->shape[2] == H / f &&
             moments_out->shape[3] == W / f);
    pf_backend *be = m->be;
    const vae_coder *e = &m->enc;

    pf_tensor *x = conv(image, e->conv_in_w, e->conv_in_b, 1, 1);      /* (N, C_0, H, W) */
    for (int i = 0; i < c->num_blocks; i++) {
        const vae_block *b = &e->blocks[i];
        x = block_resnets(m, b, x);                 /* (N, C_i, H / 2^i, W / 2^i) */
        if (b->sample_w) x = downsample(m, b, x);   /* (N, C_i, H / 2^(i+1), W / 2^(i+1)) */
    }
    x = mid_block(m, e, x);                                             /* (N, C_last, H/f, W/f) */
    pf_group_norm(x, x, e->norm_out_w, e->norm_out_b, c->norm_num_groups, VAE_EPS, 1);
    pf_tensor *h = conv(x, e->conv_out_w, e->conv_out_b, 1, 1);        /* (N, 2L, H/f, W/f) */
    pf_free(x);
    pf_conv2d(moments_out, h, m->quant_w, m->quant_b, 1, 0);           /* (N, 2L, H/f, W/f) */
    pf_free(h);
    if (pf_backend_ok(be, err)) return pf_error_prefix(err, "vae encode");
    return 0;
}

void pf_vae_sample_latents(float *latents_out, const float *moments, const float *noise, int B, int C, int H, int W,
                           float scaling_factor) {
    const int64_t plane = (int64_t)H * W, per_image = (int64_t)C * plane;
    for (int64_t b = 0; b < B; b++) {
        const float *mean = moments + 2 * b * per_image, *logvar = mean + per_image;
        const float *eps = noise + b * per_image;
        float *out = latents_out + b * per_image;
        for (int64_t i = 0; i < per_image; i++) {
            float lv = fminf(fmaxf(logvar[i], -30.0f), 20.0f);
            out[i] = (mean[i] + expf(0.5f * lv) * eps[i]) * scaling_factor;
        }
    }
}
