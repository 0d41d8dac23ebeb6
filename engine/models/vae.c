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
 * holds at most its input, one intermediate and its output. Beyond that, the
 * tiled passes of diffusers' enable_tiling() bound the backend's share by one
 * tile's pass (512 px for SD), and pf_vae_*_peak_bytes model the untiled peak
 * walk by walk so that AUTO tiling can compare it with the memory available:
 * whoever changes an allocation in a forward below updates its walk. */
#include "vae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    long in_ch, out_ch, lat, lpb, groups, boc[PF_VAE_MAX_BLOCKS], sample[2];
    int nb, n_sample = 0;
    pf_error probe;
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
    /* sample_size: an int, or [h, w] for some non-square models; diffusers then
     * takes the first entry for the latent tile (and its tiled passes fail on
     * the list for the pixel tile: this takes the first entry for both). */
    if (pf_config_list_len(c, "sample_size", 2, &n_sample, &probe) || n_sample == 0) {
        if (pf_config_int(c, "sample_size", 32, 1, 1 << 20, &sample[0], err)) goto done;
    } else if (pf_config_int_list(c, "sample_size", 32, 1, 1 << 20, sample, n_sample, err)) {
        goto done;
    }
    if (nb == 0) nb = 1; /* absent: diffusers' default (64,) */
    if (pf_config_int_list(c, "block_out_channels", 64, 1, 1 << 16, boc, nb, err) ||
        check_block_types(c, "down_block_types", "DownEncoderBlock2D", nb, err) ||
        check_block_types(c, "up_block_types", "UpDecoderBlock2D", nb, err) ||
        pf_config_str(c, "act_fn", "silu", act, sizeof act, err) ||
        pf_config_num(c, "scaling_factor", 0.18215, &sf, err) ||
        pf_config_num(c, "shift_factor", 0.0, &shift, err) ||
        require_bool(c, "use_quant_conv", 1, err) || require_bool(c, "use_post_quant_conv", 1, err) ||
        require_bool(c, "mid_block_add_attention", 1, err) ||
        pf_config_bool(c, "force_upcast", 1, &cfg->force_upcast, err))
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
    cfg->sample_size = (int)sample[0];
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

pf_backend *pf_vae_backend(const pf_vae *m) { return m->be; }

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
    pf_upsample_nearest(u, x);                                          /* (N, C, 2H, 2W) */
    pf_free(x);
    pf_tensor *y = conv(u, b->sample_w, b->sample_b, 1, 1);            /* (N, C, 2H, 2W) */
    pf_free(u);
    return y;
}

/* vae.decode(latents / scaling_factor) without tiling: post_quant_conv and the
 * decoder on latents (N, L, H, W) into image_out (N, 3, H f, W f). Shapes were
 * checked by the caller; failures stay in the backend's sticky error. */
static void decode_forward(pf_vae *m, pf_tensor *image_out, const pf_tensor *latents) {
    const pf_vae_config *c = &m->cfg;
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
}

/* AutoencoderKL._encode without tiling: the encoder and quant_conv on image
 * (N, 3, H, W) into moments_out (N, 2L, H/f, W/f). As decode_forward. */
static void encode_forward(pf_vae *m, pf_tensor *moments_out, const pf_tensor *image) {
    const pf_vae_config *c = &m->cfg;
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
}

/* ---- tiling: diffusers' tiled_decode and _tiled_encode (see vae.h) ---- */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* The tile geometry of one pass in diffusers' terms (AutoencoderKL.__init__,
 * tiled_decode, _tiled_encode). tile and step count input elements (latents
 * for decode, pixels for encode), blend and keep output elements. */
typedef struct tile_plan {
    pf_vae_pass pass;
    int f;          /* pixels per latent */
    int sample;     /* config sample_size: tile_sample_min_size */
    int64_t tile;   /* input tile side: tile_latent_min_size (decode), tile_sample_min_size (encode) */
    int64_t step;   /* overlap_size = int(tile * (1 - 0.25)): tiles start at range(0, side, step) */
    int64_t blend;  /* blend_extent = int(output tile side * 0.25) */
    int64_t keep;   /* row_limit = output tile side - blend: rows and columns a blended tile keeps */
} tile_plan;

/* x * 0.75 and x * 0.25 are exact in double for these sizes, so Python's int()
 * of them is the integer floor computed here. */
static tile_plan plan_of(const pf_vae_config *cfg, pf_vae_pass pass) {
    tile_plan p = {.pass = pass, .f = 1 << (cfg->num_blocks - 1), .sample = cfg->sample_size};
    const int64_t latent_tile = cfg->sample_size / p.f; /* int(sample_size / 2 ** (blocks - 1)) */
    const int64_t out_tile = pass == PF_VAE_DECODE ? cfg->sample_size : latent_tile;
    p.tile = pass == PF_VAE_DECODE ? latent_tile : cfg->sample_size;
    p.step = 3 * p.tile / 4;
    p.blend = out_tile / 4;
    p.keep = out_tile - p.blend;
    return p;
}

/* Output side of an input side n: the decoder multiplies by f, the encoder
 * divides (plan_check makes sure that encoder tiles are multiples of f). */
static int64_t out_side(const tile_plan *p, int64_t n) { return p->pass == PF_VAE_DECODE ? n * p->f : n / p->f; }

/* diffusers' condition for a tiled pass: the input exceeds one tile along either side. */
static int exceeds_tile(const tile_plan *p, int64_t h, int64_t w) { return h > p->tile || w > p->tile; }

/* Checks that diffusers' tiles of an h x w input concatenate, after cropping,
 * to exactly the untiled output size. They do for every input when
 * sample_size is a multiple of 4f (all SD VAEs); otherwise diffusers returns an
 * image of another size, or fails (tiles under 2 latents: range() with step 0),
 * and so does this, with an error. */
static int plan_check(const tile_plan *p, int64_t h, int64_t w, pf_error *err) {
    const int dec = p->pass == PF_VAE_DECODE;
    if (p->step < 1)
        return pf_fail(err, "tiling: sample_size %d makes %s tiles of side %lld, too small to overlap", p->sample,
                       dec ? "latent" : "pixel", (long long)p->tile);
    for (int d = 0; d < 2; d++) {
        const int64_t n = d ? w : h;
        int64_t total = 0;
        for (int64_t at = 0; at < n; at += p->step) {
            const int64_t t = min64(p->tile, n - at);
            if (p->pass == PF_VAE_ENCODE && t % p->f)
                return pf_fail(err, "tiling: sample_size %d cuts a side of %lld pixels into a tile of %lld, not a "
                                    "multiple of %d", p->sample, (long long)n, (long long)t, p->f);
            total += min64(p->keep, out_side(p, t));
        }
        if (total != out_side(p, n))
            return pf_fail(err, "tiling: sample_size %d is not a multiple of %d: the tiles of a side of %lld %s "
                                "would make %lld %s instead of %lld", p->sample, 4 * p->f, (long long)n,
                           dec ? "latents" : "pixels", (long long)total, dec ? "pixels" : "latents",
                           (long long)out_side(p, n));
    }
    return 0;
}

/* One output tile on the host, float32 (N, C, h, w): all N * C planes together. */
typedef struct host_tile {
    float *d;
    int64_t h, w;
} host_tile;

/* blend_v(a, b, blend_extent) of diffusers, in place on b: with
 * e = min(a.h, b.h, blend), row y < e of b becomes
 *     a[..., a.h - e + y, :] * (1 - y/e) + b[..., y, :] * (y/e).
 * torch multiplies a float32 tensor by a Python float in float32, the scalar
 * rounded to float32 first (the weights below), and adds in float32: each
 * product gets its own statement so that no compiler contracts the sum into an
 * fma (GCC does not in -std=c11, clang would within one expression). */
static void blend_v(const host_tile *a, host_tile *b, int64_t blend, int64_t planes) {
    const int64_t e = min64(min64(a->h, b->h), blend), w = b->w;
    PF_CHECK(a->w == b->w); /* tiles of one column */
    for (int64_t y = 0; y < e; y++) {
        const float wa = (float)(1.0 - (double)y / (double)e), wb = (float)((double)y / (double)e);
        for (int64_t pl = 0; pl < planes; pl++) {
            const float *ar = a->d + (pl * a->h + a->h - e + y) * w;
            float *br = b->d + (pl * b->h + y) * w;
            for (int64_t x = 0; x < w; x++) {
                const float pa = ar[x] * wa;
                const float pb = br[x] * wb;
                br[x] = pa + pb;
            }
        }
    }
}

/* blend_h(a, b, blend_extent), the same across columns: column x < e of b
 * becomes a[..., a.w - e + x] * (1 - x/e) + b[..., x] * (x/e). */
static void blend_h(const host_tile *a, host_tile *b, int64_t blend, int64_t planes) {
    const int64_t e = min64(min64(a->w, b->w), blend);
    PF_CHECK(a->h == b->h); /* tiles of one row */
    for (int64_t x = 0; x < e; x++) {
        const float wa = (float)(1.0 - (double)x / (double)e), wb = (float)((double)x / (double)e);
        for (int64_t r = 0; r < planes * b->h; r++) {
            const float pa = a->d[r * a->w + a->w - e + x] * wa;
            const float pb = b->d[r * b->w + x] * wb;
            b->d[r * b->w + x] = pa + pb;
        }
    }
}

typedef void (*vae_forward)(pf_vae *m, pf_tensor *out, const pf_tensor *in);

/* The tiled pass: out (N, Co, Ho, Wo) from in (N, Ci, H, W), `forward` run on
 * each tile alone, for a plan that plan_check accepted for H x W.
 *
 * diffusers computes every tile, then blends them row by row in place: tile
 * (i, j) with the tile above (i-1, j), then with the one to its left (i, j-1),
 * both already blended themselves, and keeps its top-left keep x keep. Tile
 * (i, j) reads no other tile, so blending each one as soon as it is computed
 * gives the same numbers while only the previous row of tiles is held. The
 * tiles live on the host in float32 (the CUDA backend's download converts from
 * float16); each finished row of tiles is cropped into a strip and uploaded
 * into out, plane by plane. The backend holds one tile's pass at a time.
 * Returns 0, or -1 with err (backend failure, host out of memory). */
static int run_tiled(pf_vae *m, pf_tensor *out, const pf_tensor *in, const tile_plan *p, vae_forward forward,
                     pf_error *err) {
    pf_backend *be = m->be;
    const int64_t N = in->shape[0], Ci = in->shape[1], H = in->shape[2], W = in->shape[3];
    const int64_t Co = out->shape[1], Ho = out->shape[2], Wo = out->shape[3];
    const int64_t cols = (W + p->step - 1) / p->step;
    float *x = malloc((size_t)pf_numel(in) * sizeof(float));                       /* (N, Ci, H, W) */
    float *tin = malloc((size_t)(N * Ci * min64(p->tile, H) * min64(p->tile, W)) * sizeof(float)); /* (N, Ci, th, tw) */
    float *strip = malloc((size_t)(N * Co * p->keep * Wo) * sizeof(float));        /* (N, Co, kh, Wo) */
    host_tile *prev = calloc((size_t)cols, sizeof *prev), *cur = calloc((size_t)cols, sizeof *cur);
    pf_tensor *out2 = pf_view2(out, N * Co * Ho, Wo);                               /* rows of every plane */
    int rc = -1;
    if (!x || !tin || !strip || !prev || !cur) {
        pf_fail(err, "out of memory for the tiles' host buffers");
        goto done;
    }
    pf_to_host(x, in);
    int64_t r0 = 0; /* first output row of the current row of tiles */
    for (int64_t y0 = 0; y0 < H; y0 += p->step) {
        const int64_t th = min64(p->tile, H - y0);
        int64_t c0 = 0, kh = 0; /* next output column; rows kept of this row of tiles */
        for (int64_t j = 0, x0 = 0; x0 < W; j++, x0 += p->step) {
            const int64_t tw = min64(p->tile, W - x0);
            for (int64_t pl = 0; pl < N * Ci; pl++)
                for (int64_t r = 0; r < th; r++)
                    memcpy(tin + (pl * th + r) * tw, x + (pl * H + y0 + r) * W + x0, (size_t)tw * sizeof(float));
            pf_tensor *ti = pf_from_host(be, 4, (int64_t[]){N, Ci, th, tw}, tin);  /* (N, Ci, th, tw) */
            host_tile *t = &cur[j];
            t->h = out_side(p, th);
            t->w = out_side(p, tw);
            pf_tensor *to = pf_new4(be, N, Co, t->h, t->w);                          /* (N, Co, th', tw') */
            forward(m, to, ti);
            pf_free(ti);
            if (!(t->d = malloc((size_t)pf_numel(to) * sizeof(float)))) {
                pf_free(to);
                pf_fail(err, "out of memory for a tile's host buffer");
                goto done;
            }
            pf_to_host(t->d, to);
            pf_free(to);
            if (be->failed) goto done;
            if (y0 > 0) blend_v(&prev[j], t, p->blend, N * Co);
            if (j > 0) blend_h(&cur[j - 1], t, p->blend, N * Co);
            kh = min64(p->keep, t->h);
            const int64_t kw = min64(p->keep, t->w);
            for (int64_t pl = 0; pl < N * Co; pl++)
                for (int64_t r = 0; r < kh; r++)
                    memcpy(strip + (pl * kh + r) * Wo + c0, t->d + (pl * t->h + r) * t->w, (size_t)kw * sizeof(float));
            c0 += kw;
        }
        PF_CHECK(c0 == Wo && r0 + kh <= Ho); /* plan_check */
        for (int64_t pl = 0; pl < N * Co; pl++) {
            pf_tensor *dst = pf_slice0(out2, pl * Ho + r0, kh);                      /* (kh, Wo) of plane pl */
            pf_upload(dst, strip + pl * kh * Wo);
            pf_free(dst);
        }
        r0 += kh;
        for (int64_t j = 0; j < cols; j++) {
            free(prev[j].d);
            prev[j] = cur[j];
            cur[j].d = NULL;
        }
    }
    PF_CHECK(r0 == Ho);
    rc = 0;
done:
    if (!rc || be->failed) rc = pf_backend_ok(be, err);
    for (int64_t j = 0; prev && cur && j < cols; j++) {
        free(prev[j].d);
        free(cur[j].d);
    }
    free(prev);
    free(cur);
    free(strip);
    free(tin);
    free(x);
    pf_free(out2);
    return rc;
}

/* One pass (forward: decode_forward or encode_forward) of in (N, C, H, W) into
 * out, in tiles when pf_vae_tiling_needed says so for tiling, else whole.
 * Returns 0, or -1 with err set. */
static int run_pass(pf_vae *m, pf_vae_pass pass, pf_tensor *out, const pf_tensor *in, pf_vae_tiling tiling,
                    vae_forward forward, pf_error *err) {
    const int64_t N = in->shape[0], H = in->shape[2], W = in->shape[3];
    if (pf_vae_tiling_needed(m, tiling, pass, N, H, W)) {
        const tile_plan p = plan_of(&m->cfg, pass);
        return plan_check(&p, H, W, err) || run_tiled(m, out, in, &p, forward, err) ? -1 : 0;
    }
    forward(m, out, in);
    return pf_backend_ok(m->be, err);
}

int pf_vae_decode(pf_vae *m, pf_tensor *image_out, const pf_tensor *latents, pf_vae_tiling tiling, pf_error *err) {
    const pf_vae_config *c = &m->cfg;
    const int f = pf_vae_scale_factor(m);
    char s[64];
    if (latents->ndim != 4 || latents->shape[1] != c->latent_channels)
        return pf_fail(err, "vae decode: latents %s, expected (B, %d, H, W)", pf_shape_str(latents, s, sizeof s),
                       c->latent_channels);
    const int64_t N = latents->shape[0], H = latents->shape[2], W = latents->shape[3];
    PF_CHECK(image_out->ndim == 4 && image_out->shape[0] == N && image_out->shape[1] == c->out_channels &&
             image_out->shape[2] == H * f && image_out->shape[3] == W * f);
    return run_pass(m, PF_VAE_DECODE, image_out, latents, tiling, decode_forward, err)
               ? pf_error_prefix(err, "vae decode")
               : 0;
}

int pf_vae_encode(pf_vae *m, pf_tensor *moments_out, const pf_tensor *image, pf_vae_tiling tiling, pf_error *err) {
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
    return run_pass(m, PF_VAE_ENCODE, moments_out, image, tiling, encode_forward, err)
               ? pf_error_prefix(err, "vae encode")
               : 0;
}

/* ---- memory model of an untiled pass (pf_vae_*_peak_bytes) ---- */

/* The backends' op scratch, mirrored from engine/core/backend_cpu.c (COL_BUDGET,
 * SCORE_BUDGET) and kernels/backend_cuda.cu (COL_BUDGET_FAST): keep in step. */
#define CPU_COL_FLOATS ((int64_t)4 << 20)    /* im2col columns per convolution, freed after it */
#define CPU_SCORE_FLOATS ((int64_t)1 << 20)  /* attention scores per thread, freed after the op */
#define CUDA_COL_HALVES ((int64_t)128 << 20) /* im2col buffer kept for the backend's lifetime */

/* A walk through one forward that mirrors its allocations and frees. Bytes are
 * doubles: no overflow for absurd sizes, exact below 2^53. */
typedef struct mem_walk {
    int64_t N;        /* batch */
    int64_t elem;     /* bytes of one activation element */
    int cuda;         /* the CUDA backend's scratch, else the CPU's */
    int64_t threads;  /* CPU: the team that holds attention score blocks at once */
    double cur, peak; /* bytes live now, and the most so far */
    double col;       /* CUDA: the im2col buffer, grown to the largest convolution's need */
} mem_walk;

/* Bytes of an activation (N, c, h, w). */
static double act(const mem_walk *w, int64_t c, int64_t h, int64_t x) {
    return (double)w->N * (double)c * (double)h * (double)x * (double)w->elem;
}
static void take(mem_walk *w, double n) {
    w->cur += n;
    if (w->cur > w->peak) w->peak = w->cur;
}
static void drop(mem_walk *w, double n) { w->cur -= n; }
/* Scratch held during one op only. */
static void scratch(mem_walk *w, double n) {
    if (w->cur + n > w->peak) w->peak = w->cur + n;
}

/* The im2col scratch of a k x k convolution of ci channels to an (ho, wo)
 * output; 1x1 convolutions (stride 1, no padding: all of the VAE's) are plain
 * products on both backends. Both backends unfold whole output rows into a
 * budget (cpu_conv2d per call, cuda_conv2d into its persistent buffer), at
 * least one row and at most the whole column matrix; the exact tile sizes
 * (floor and even-piece divisions) go up and down with the image size, so the
 * model takes this bound, which only grows with it. */
static void walk_conv_scratch(mem_walk *w, int64_t ci, int k, int64_t ho, int64_t wo) {
    if (k == 1) return;
    const int64_t kk = ci * k * k;
    if (!w->cuda) {
        scratch(w, 4.0 * (double)min64(max64(CPU_COL_FLOATS, kk * wo), kk * ho * wo));
        return;
    }
    const double col = 2.0 * (double)min64(max64(CUDA_COL_HALVES, kk * wo), w->N * kk * ho * wo);
    if (col > w->col) w->col = col;
}

/* conv(): a new (N, co, ho, wo) output, then the convolution's scratch. */
static void walk_conv(mem_walk *w, int64_t ci, int64_t co, int k, int64_t ho, int64_t wo) {
    take(w, act(w, co, ho, wo));
    walk_conv_scratch(w, ci, k, ho, wo);
}

/* resnet(): leaves its (N, co, h, x) output live; the caller drops the input. */
static void walk_resnet(mem_walk *w, int64_t ci, int64_t co, int64_t h, int64_t x) {
    take(w, act(w, ci, h, x));    /* norm1 */
    walk_conv(w, ci, co, 3, h, x); /* conv1 */
    drop(w, act(w, ci, h, x));
    walk_conv(w, co, co, 3, h, x); /* conv2 */
    drop(w, act(w, co, h, x));
    if (ci != co) {
        walk_conv(w, ci, co, 1, h, x); /* conv_shortcut */
        drop(w, act(w, co, h, x));
    }
}

/* attention(): group norm, tokens, q, k, v and the attention output live
 * together at its peak (6 activations of c x h x). The CUDA kernels keep their
 * scores in shared memory; cpu_attention gives each thread a block of query
 * rows whose scores [rows, L] fit its budget (one row at least), and has no
 * more blocks than the N x (L + rows) / rows score rows make: bounded here by
 * threads x max(budget, L) and by 2 N L^2 floats. */
static void walk_attention(mem_walk *w, int64_t c, int64_t h, int64_t x) {
    const double a = act(w, c, h, x), L = (double)(h * x);
    take(w, 6 * a);
    if (!w->cuda)
        scratch(w, 4.0 * fmin((double)w->threads * fmax((double)CPU_SCORE_FLOATS, L), 2.0 * (double)w->N * L * L));
    drop(w, 6 * a);
}

/* mid_block(): consumes its input, leaves its output. */
static void walk_mid(mem_walk *w, int64_t c, int64_t h, int64_t x) {
    walk_resnet(w, c, c, h, x);
    drop(w, act(w, c, h, x));
    walk_attention(w, c, h, x);
    walk_resnet(w, c, c, h, x);
    drop(w, act(w, c, h, x));
}

/* upsample(): consumes (N, c, h, x), leaves (N, c, 2h, 2x). */
static void walk_upsample(mem_walk *w, int64_t c, int64_t h, int64_t x) {
    take(w, act(w, c, 2 * h, 2 * x));
    drop(w, act(w, c, h, x));
    walk_conv(w, c, c, 3, 2 * h, 2 * x);
    drop(w, act(w, c, 2 * h, 2 * x));
}

/* downsample(): consumes (N, c, h, x), leaves (N, c, h/2, x/2), through the
 * zero-padded copies (h, x+1) and (h+1, x+1). */
static void walk_downsample(mem_walk *w, int64_t c, int64_t h, int64_t x) {
    take(w, act(w, c, h, 1) + act(w, c, h, x + 1));
    drop(w, act(w, c, h, 1) + act(w, c, h, x));
    take(w, act(w, c, 1, x + 1) + act(w, c, h + 1, x + 1));
    drop(w, act(w, c, 1, x + 1) + act(w, c, h, x + 1));
    walk_conv(w, c, c, 3, h / 2, x / 2);
    drop(w, act(w, c, h + 1, x + 1));
}

size_t pf_vae_peak_bytes(const pf_vae_config *cfg, pf_vae_pass pass, const char *backend, int64_t B, int64_t h,
                         int64_t w) {
    const int cuda = backend && !strcmp(backend, "cuda");
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    mem_walk mw = {.N = B, .elem = cuda ? 2 : 4, .cuda = cuda, .threads = cores > 0 ? cores : 1};
    const int *boc = cfg->block_out_channels, nb = cfg->num_blocks;
    const int64_t L = cfg->latent_channels;
    if (pass == PF_VAE_DECODE) { /* decode_forward */
        take(&mw, act(&mw, L, h, w));              /* z */
        walk_conv(&mw, L, L, 1, h, w);             /* post_quant_conv */
        drop(&mw, act(&mw, L, h, w));
        walk_conv(&mw, L, boc[nb - 1], 3, h, w);   /* conv_in */
        drop(&mw, act(&mw, L, h, w));
        walk_mid(&mw, boc[nb - 1], h, w);
        for (int i = 0; i < nb; i++) {
            const int64_t co = boc[nb - 1 - i], ci = boc[nb - 1 - (i > 0 ? i - 1 : 0)];
            for (int j = 0; j <= cfg->layers_per_block; j++) {
                walk_resnet(&mw, j == 0 ? ci : co, co, h, w);
                drop(&mw, act(&mw, j == 0 ? ci : co, h, w));
            }
            if (i < nb - 1) {
                walk_upsample(&mw, co, h, w);
                h *= 2;
                w *= 2;
            }
        }
        walk_conv_scratch(&mw, boc[0], 3, h, w);   /* conv_out into image_out */
    } else {                                       /* encode_forward, h and w in pixels */
        walk_conv(&mw, cfg->in_channels, boc[0], 3, h, w); /* conv_in */
        for (int i = 0; i < nb; i++) {
            for (int j = 0; j < cfg->layers_per_block; j++) {
                const int64_t ci = j == 0 ? boc[i > 0 ? i - 1 : 0] : boc[i];
                walk_resnet(&mw, ci, boc[i], h, w);
                drop(&mw, act(&mw, ci, h, w));
            }
            if (i < nb - 1) {
                walk_downsample(&mw, boc[i], h, w);
                h /= 2;
                w /= 2;
            }
        }
        walk_mid(&mw, boc[nb - 1], h, w);
        walk_conv(&mw, boc[nb - 1], 2 * L, 3, h, w); /* conv_out; quant_conv writes moments_out */
    }
    /* + 1/8: allocator rounding (512 bytes on CUDA, whose cache may also hand out
     * a block up to 25% larger than asked), the zero pads' host copies, the
     * group norms' partial sums, the upsample index tables. */
    const double bytes = (mw.peak + mw.col) * 1.125;
    return bytes >= (double)SIZE_MAX ? SIZE_MAX : (size_t)bytes;
}

size_t pf_vae_decode_peak_bytes(const pf_vae *m, int64_t B, int64_t h, int64_t w) {
    return pf_vae_peak_bytes(&m->cfg, PF_VAE_DECODE, m->be->name, B, h, w);
}

size_t pf_vae_encode_peak_bytes(const pf_vae *m, int64_t B, int64_t H, int64_t W) {
    return pf_vae_peak_bytes(&m->cfg, PF_VAE_ENCODE, m->be->name, B, H, W);
}

int pf_vae_tiling_needed(const pf_vae *m, pf_vae_tiling mode, pf_vae_pass pass, int64_t B, int64_t h, int64_t w) {
    const tile_plan p = plan_of(&m->cfg, pass);
    if (mode == PF_VAE_TILING_OFF || !exceeds_tile(&p, h, w)) return 0;
    if (mode == PF_VAE_TILING_ON) return 1;
    /* AUTO: never turn a pass that can run untiled into a tiling error. */
    pf_error ignored;
    if (plan_check(&p, h, w, &ignored)) return 0;
    return pf_vae_peak_bytes(&m->cfg, pass, m->be->name, B, h, w) > pf_backend_mem_available(m->be);
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

/* The text forms of pf_vae_tiling, for options and settings files: exactly
 * "auto", "on" and "off" (see vae.h). */
int pf_vae_tiling_parse(pf_vae_tiling *out, const char *s, pf_error *err) {
    if (s && !strcmp(s, "auto")) *out = PF_VAE_TILING_AUTO;
    else if (s && !strcmp(s, "on")) *out = PF_VAE_TILING_ON;
    else if (s && !strcmp(s, "off")) *out = PF_VAE_TILING_OFF;
    else return pf_fail(err, "vae tiling must be auto, on or off (got '%s')", s ? s : "(null)");
    return 0;
}

const char *pf_vae_tiling_name(pf_vae_tiling t) {
    return t == PF_VAE_TILING_ON ? "on" : t == PF_VAE_TILING_OFF ? "off" : "auto";
}
