/* controlnet.c - ControlNetModel: the UNet's encoder half (unet.c builds it from
 * the same config keys and key names), ControlNetConditioningEmbedding, and the
 * zero convolutions controlnet_down_blocks / controlnet_mid_block.
 * Mirrors diffusers/models/controlnets/controlnet.py (ControlNetModel.__init__ and
 * forward with guess_mode off). */
#include "controlnet.h"

#include <string.h>

#include "config.h"
#include "model_dir.h"

typedef struct cond_embedding {      /* ControlNetConditioningEmbedding */
    int nblocks;                     /* len(conditioning_embedding_out_channels) */
    pf_tensor *in_w, *in_b;          /* conv_in (c0, Ccond, 3, 3), (c0) */
    /* blocks.{2i}: (c_i, c_i, 3, 3) stride 1; blocks.{2i+1}: (c_{i+1}, c_i, 3, 3) stride 2 */
    pf_tensor *blk_w[2 * PF_CONTROLNET_MAX_COND_BLOCKS], *blk_b[2 * PF_CONTROLNET_MAX_COND_BLOCKS];
    pf_tensor *out_w, *out_b;        /* conv_out (C0, c_last, 3, 3), (C0): zero-initialised in training */
} cond_embedding;

struct pf_controlnet {
    pf_controlnet_config cfg;
    pf_backend *be;
    pf_unet *enc;                    /* conv_in, time embedding, down blocks, mid block */
    cond_embedding cond;
    int nres;                        /* len(controlnet_down_blocks) = the UNet's skips */
    pf_tensor **down_w, **down_b;    /* controlnet_down_blocks.k (Ck, Ck, 1, 1), (Ck) */
    pf_tensor *mid_w, *mid_b;        /* controlnet_mid_block (Cm, Cm, 1, 1), (Cm) */
};

/* ---- config ---- */

int pf_controlnet_config_read(pf_controlnet_config *cfg, const char *path, pf_error *err) {
    pf_config *c;
    memset(cfg, 0, sizeof *cfg);
    if (pf_config_load(&c, path, err)) return -1;
    int rc = -1, global_pool, n;
    long v[PF_CONTROLNET_MAX_COND_BLOCKS], cc;
    char order[16];
    if (pf_unet_config_parse(&cfg->unet, c, 0, err)) goto done;
    /* ControlNetModel ignores time_embedding_dim: its embedding is 4 C0 wide (SDXL's
     * text_time add_embedding too: TimestepEmbedding(projection_class_embeddings_input_dim, 4 C0)). */
    cfg->unet.time_embed_dim = 4 * cfg->unet.block_out_channels[0];
    if (pf_config_bool(c, "global_pool_conditions", 0, &global_pool, err) ||
        pf_config_str(c, "controlnet_conditioning_channel_order", "rgb", order, sizeof order, err) ||
        pf_config_int(c, "conditioning_channels", 3, 1, 64, &cc, err))
        goto done;
    if (global_pool) {
        pf_fail(err, "%s: unsupported \"global_pool_conditions\" true (guess-mode ControlNets are not supported)",
                path);
        goto done;
    }
    if (strcmp(order, "rgb") && strcmp(order, "bgr")) {
        pf_fail(err, "%s: \"controlnet_conditioning_channel_order\" must be \"rgb\" or \"bgr\" (found \"%s\")", path,
                order);
        goto done;
    }
    cfg->bgr = !strcmp(order, "bgr");
    cfg->conditioning_channels = (int)cc;
    if (pf_config_has(c, "conditioning_embedding_out_channels")) {
        if (pf_config_list_len(c, "conditioning_embedding_out_channels", PF_CONTROLNET_MAX_COND_BLOCKS, &n, err))
            goto done;
        if (n < 1) {
            pf_fail(err, "%s: \"conditioning_embedding_out_channels\" is empty", path);
            goto done;
        }
        if (pf_config_int_list(c, "conditioning_embedding_out_channels", 0, 1, 1 << 16, v, n, err)) goto done;
    } else { /* diffusers' default (16, 32, 96, 256) */
        n = 4;
        v[0] = 16, v[1] = 32, v[2] = 96, v[3] = 256;
    }
    cfg->num_cond_blocks = n;
    for (int i = 0; i < n; i++) cfg->cond_channels[i] = (int)v[i];
    rc = 0;
done:
    pf_config_free(c);
    return rc;
}

/* ---- loading ---- */

void pf_controlnet_free(pf_controlnet *m) {
    if (!m) return;
    pf_unet_free(m->enc);
    cond_embedding *e = &m->cond;
    pf_free(e->in_w);
    pf_free(e->in_b);
    for (int i = 0; i < 2 * PF_CONTROLNET_MAX_COND_BLOCKS; i++) {
        pf_free(e->blk_w[i]);
        pf_free(e->blk_b[i]);
    }
    pf_free(e->out_w);
    pf_free(e->out_b);
    for (int k = 0; m->down_w && k < m->nres; k++) {
        pf_free(m->down_w[k]);
        pf_free(m->down_b[k]);
    }
    free(m->down_w);
    free(m->down_b);
    pf_free(m->mid_w);
    pf_free(m->mid_b);
    free(m);
}

/* Channels of down_block_res_samples[k], in the order UNet2DConditionModel
 * produces them: conv_in, then per down block one per resnet and one for the
 * downsampler. */
static int skip_channels(const pf_unet_config *c, int k) {
    if (k == 0) return c->block_out_channels[0];
    k--;
    for (int i = 0; i < c->num_blocks; i++) {
        int n = c->layers_per_block[i] + (i < c->num_blocks - 1);
        if (k < n) return c->block_out_channels[i];
        k -= n;
    }
    PF_CHECK(0);
    return 0;
}

int pf_controlnet_load(pf_controlnet **out, pf_backend *be, const pf_controlnet_config *cfg, pf_weights *w,
                       const char *prefix, pf_error *err) {
    *out = NULL;
    pf_controlnet *m = PF_CALLOC(1, sizeof *m);
    m->cfg = *cfg;
    m->be = be;
    if (pf_unet_load_encoder(&m->enc, be, &cfg->unet, w, prefix, err)) {
        pf_controlnet_free(m);
        return -1;
    }
    pf_loader L = {w, be, prefix, err, 0}, *l = &L;
    const int *cc = cfg->cond_channels, nc = cfg->num_cond_blocks, C0 = cfg->unet.block_out_channels[0];
    cond_embedding *e = &m->cond;
    e->nblocks = nc;
    e->in_w = PF_LD4(l, cc[0], cfg->conditioning_channels, 3, 3, "controlnet_cond_embedding.conv_in.weight");
    e->in_b = PF_LD1(l, cc[0], "controlnet_cond_embedding.conv_in.bias");
    for (int i = 0; i + 1 < nc; i++) {
        e->blk_w[2 * i] = PF_LD4(l, cc[i], cc[i], 3, 3, "controlnet_cond_embedding.blocks.%d.weight", 2 * i);
        e->blk_b[2 * i] = PF_LD1(l, cc[i], "controlnet_cond_embedding.blocks.%d.bias", 2 * i);
        e->blk_w[2 * i + 1] = PF_LD4(l, cc[i + 1], cc[i], 3, 3, "controlnet_cond_embedding.blocks.%d.weight", 2 * i + 1);
        e->blk_b[2 * i + 1] = PF_LD1(l, cc[i + 1], "controlnet_cond_embedding.blocks.%d.bias", 2 * i + 1);
    }
    e->out_w = PF_LD4(l, C0, cc[nc - 1], 3, 3, "controlnet_cond_embedding.conv_out.weight");
    e->out_b = PF_LD1(l, C0, "controlnet_cond_embedding.conv_out.bias");

    m->nres = pf_unet_num_skips(m->enc);
    m->down_w = PF_CALLOC((size_t)m->nres, sizeof *m->down_w);
    m->down_b = PF_CALLOC((size_t)m->nres, sizeof *m->down_b);
    for (int k = 0; k < m->nres; k++) {
        int ch = skip_channels(&cfg->unet, k);
        m->down_w[k] = PF_LD4(l, ch, ch, 1, 1, "controlnet_down_blocks.%d.weight", k);
        m->down_b[k] = PF_LD1(l, ch, "controlnet_down_blocks.%d.bias", k);
    }
    const int Cm = cfg->unet.block_out_channels[cfg->unet.num_blocks - 1];
    m->mid_w = PF_LD4(l, Cm, Cm, 1, 1, "controlnet_mid_block.weight");
    m->mid_b = PF_LD1(l, Cm, "controlnet_mid_block.bias");
    if (l->failed) {
        pf_controlnet_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

int pf_controlnet_load_dir(pf_controlnet **out, pf_backend *be, const char *dir, pf_error *err) {
    *out = NULL;
    char cfg_path[4096], weights_path[4096];
    pf_controlnet_config cfg;
    pf_weights *w;
    if (pf_model_file(cfg_path, sizeof cfg_path, dir, NULL, "config.json", err) ||
        pf_controlnet_config_read(&cfg, cfg_path, err) ||
        pf_model_weights(weights_path, sizeof weights_path, dir, NULL, 0, err) ||
        pf_weights_open(&w, weights_path, err))
        return pf_error_prefix(err, "loading controlnet");
    int rc = pf_controlnet_load(out, be, &cfg, w, "", err);
    pf_weights_close(w);
    return rc ? pf_error_prefix(err, "loading controlnet") : 0;
}

const pf_controlnet_config *pf_controlnet_get_config(const pf_controlnet *m) { return &m->cfg; }

int pf_controlnet_cond_scale(const pf_controlnet *m) { return 1 << (m->cfg.num_cond_blocks - 1); }

int pf_controlnet_num_residuals(const pf_controlnet *m) { return m->nres; }

int pf_controlnet_check_unet(const pf_controlnet *m, const pf_unet *unet, int vae_scale, pf_error *err) {
    const pf_unet_config *a = &m->cfg.unet, *b = pf_unet_get_config(unet);
    if (a->text_time != b->text_time) /* the families first: the shapes below would differ anyway */
        return pf_fail(err, "%s ControlNet on %s UNet", a->text_time ? "an SDXL" : "an SD-1.x/2.x",
                       b->text_time ? "an SDXL" : "an SD-1.x/2.x");
    if (a->text_time && a->add_embed_in != b->add_embed_in)
        return pf_fail(err, "controlnet's add_embedding takes %d features, the UNet's %d", a->add_embed_in,
                       b->add_embed_in);
    if (a->in_channels != b->in_channels)
        return pf_fail(err, "controlnet takes %d latent channels, the UNet %d", a->in_channels, b->in_channels);
    if (a->cross_attention_dim != b->cross_attention_dim)
        return pf_fail(err, "controlnet's cross_attention_dim %d differs from the UNet's %d", a->cross_attention_dim,
                       b->cross_attention_dim);
    if (a->num_blocks != b->num_blocks)
        return pf_fail(err, "controlnet has %d down blocks, the UNet %d", a->num_blocks, b->num_blocks);
    for (int i = 0; i < a->num_blocks; i++) {
        if (a->block_out_channels[i] != b->block_out_channels[i])
            return pf_fail(err, "controlnet block %d has %d channels, the UNet's %d", i, a->block_out_channels[i],
                           b->block_out_channels[i]);
        if (a->layers_per_block[i] != b->layers_per_block[i])
            return pf_fail(err, "controlnet block %d has %d layers, the UNet's %d", i, a->layers_per_block[i],
                           b->layers_per_block[i]);
    }
    if (pf_controlnet_cond_scale(m) != vae_scale)
        return pf_fail(err, "controlnet's condition embedding downscales by %d, the VAE by %d",
                       pf_controlnet_cond_scale(m), vae_scale);
    if (m->cfg.conditioning_channels != 3)
        return pf_fail(err, "controlnet takes %d condition channels, an RGB image has 3",
                       m->cfg.conditioning_channels);
    return 0;
}

/* ---- forward ---- */

/* ControlNetConditioningEmbedding.forward: silu(conv_in(x)), then silu of each
 * block's conv (every second one with stride 2), then conv_out.
 * cond (B, Ccond, Hc, Wc) -> (B, C0, Hc / 2^(n-1), Wc / 2^(n-1)), rounding odd sides up. */
static pf_tensor *cond_embed(const pf_controlnet *m, const pf_tensor *cond) {
    const cond_embedding *e = &m->cond;
    pf_backend *be = m->be;
    const int64_t B = cond->shape[0];
    int64_t H = cond->shape[2], W = cond->shape[3];
    pf_tensor *h = pf_new4(be, B, e->in_w->shape[0], H, W);        /* (B, c0, Hc, Wc) */
    pf_conv2d(h, cond, e->in_w, e->in_b, 1, 1);
    pf_activation(h, h, PF_ACT_SILU);
    for (int i = 0; i + 1 < e->nblocks; i++) {
        pf_tensor *a = pf_new_like(h);                             /* (B, c_i, H, W) */
        pf_conv2d(a, h, e->blk_w[2 * i], e->blk_b[2 * i], 1, 1);
        pf_activation(a, a, PF_ACT_SILU);
        pf_free(h);
        H = (H + 1) / 2;
        W = (W + 1) / 2;
        h = pf_new4(be, B, e->blk_w[2 * i + 1]->shape[0], H, W);   /* (B, c_{i+1}, H/2, W/2) */
        pf_conv2d(h, a, e->blk_w[2 * i + 1], e->blk_b[2 * i + 1], 2, 1);
        pf_activation(h, h, PF_ACT_SILU);
        pf_free(a);
    }
    pf_tensor *y = pf_new4(be, B, e->out_w->shape[0], H, W);       /* (B, C0, h, w) */
    pf_conv2d(y, h, e->out_w, e->out_b, 1, 1);
    pf_free(h);
    return y;
}

/* controlnet_cond with its channels reversed (controlnet_conditioning_channel_order "bgr"). */
static pf_tensor *flip_channels(pf_backend *be, const pf_tensor *cond) {
    const int64_t B = cond->shape[0], C = cond->shape[1], HW = cond->shape[2] * cond->shape[3];
    pf_tensor *y = pf_new_like(cond);                              /* (B, C, H, W) */
    pf_tensor *src = pf_view2(cond, B * C, HW), *dst = pf_view2(y, B * C, HW);
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++) {
            pf_tensor *s = pf_slice0(src, b * C + (C - 1 - c), 1), *d = pf_slice0(dst, b * C + c, 1);
            pf_copy(d, s);
            pf_free(s);
            pf_free(d);
        }
    pf_free(src);
    pf_free(dst);
    (void)be;
    return y;
}

int pf_controlnet_forward(pf_controlnet *m, pf_tensor **down_out, pf_tensor **mid_out, const pf_tensor *x,
                          const float *timesteps, const pf_tensor *context, const pf_unet_added *added,
                          const pf_tensor *cond, float scale, pf_error *err) {
    const pf_unet_config *c = &m->cfg.unet;
    pf_backend *be = m->be;
    const int f = pf_controlnet_cond_scale(m);
    char s1[64], s2[64];
    for (int k = 0; k < m->nres; k++) down_out[k] = NULL;
    *mid_out = NULL;
    PF_CHECK(x->be == be && context->be == be && cond->be == be);
    if (x->ndim != 4 || x->shape[1] != c->in_channels || x->shape[0] < 1 || x->shape[2] < 1 || x->shape[3] < 1)
        return pf_fail(err, "controlnet: input has shape %s, expected (B, %d, H, W)", pf_shape_str(x, s1, sizeof s1),
                       c->in_channels);
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    if (context->ndim != 3 || context->shape[0] != B || context->shape[2] != c->cross_attention_dim)
        return pf_fail(err, "controlnet: context has shape %s, expected (%lld, L, %d)",
                       pf_shape_str(context, s1, sizeof s1), (long long)B, c->cross_attention_dim);
    if (cond->ndim != 4 || cond->shape[0] != B || cond->shape[1] != m->cfg.conditioning_channels ||
        cond->shape[2] != H * f || cond->shape[3] != W * f)
        return pf_fail(err, "controlnet: condition image has shape %s, expected (%lld, %d, %lld, %lld) for latents %s",
                       pf_shape_str(cond, s1, sizeof s1), (long long)B, m->cfg.conditioning_channels,
                       (long long)(H * f), (long long)(W * f), pf_shape_str(x, s2, sizeof s2));

    if (c->text_time && (!added || !added->text_embeds || !added->time_ids || added->text_embeds->ndim != 2 ||
                         added->text_embeds->shape[0] != B ||
                         added->text_embeds->shape[1] != c->add_embed_in - 6 * c->addition_time_embed_dim))
        return pf_fail(err, "controlnet: this ControlNet (addition_embed_type \"text_time\") needs text_embeds "
                            "(%lld, %d) and time_ids", (long long)B, c->add_embed_in - 6 * c->addition_time_embed_dim);
    pf_tensor *temb = pf_unet_time_embed(m->enc, timesteps, B, c->text_time ? added : NULL); /* (B, T) */
    pf_tensor *h = pf_unet_conv_in(m->enc, x);                     /* (B, C0, H, W) */
    pf_tensor *flipped = m->cfg.bgr ? flip_channels(be, cond) : NULL;
    pf_tensor *e = cond_embed(m, flipped ? flipped : cond);        /* (B, C0, H, W) */
    pf_free(flipped);
    pf_add(h, h, e);                                               /* sample + controlnet_cond */
    pf_free(e);
    pf_tensor **skips = PF_CALLOC((size_t)m->nres, sizeof *skips);
    pf_tensor *mid = pf_unet_down_mid(m->enc, h, temb, context, skips); /* (B, Cm, h, w) */
    pf_free(temb);
    /* controlnet_down_blocks / controlnet_mid_block, then * conditioning_scale */
    for (int k = 0; k < m->nres; k++) {
        down_out[k] = pf_new_like(skips[k]);                       /* (B, Ck, hk, wk) */
        pf_conv2d(down_out[k], skips[k], m->down_w[k], m->down_b[k], 1, 0);
        if (scale != 1.0f) pf_scale(down_out[k], down_out[k], scale, 0.0f);
        pf_free(skips[k]);
    }
    free(skips);
    *mid_out = pf_new_like(mid);                                   /* (B, Cm, h, w) */
    pf_conv2d(*mid_out, mid, m->mid_w, m->mid_b, 1, 0);
    if (scale != 1.0f) pf_scale(*mid_out, *mid_out, scale, 0.0f);
    pf_free(mid);
    if (pf_backend_ok(be, err)) {
        for (int k = 0; k < m->nres; k++) {
            pf_free(down_out[k]);
            down_out[k] = NULL;
        }
        pf_free(*mid_out);
        *mid_out = NULL;
        return pf_error_prefix(err, "controlnet");
    }
    return 0;
}
