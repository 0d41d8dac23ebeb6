/* clip_vision.c - CLIPVisionModelWithProjection: patch embedding (a conv with
 * stride P), a class token and position embeddings, pre_layrnorm, the
 * CLIPEncoderLayer stack with full attention (clip_layer.c), post_layernorm of
 * the class token and visual_projection; and CLIPImageProcessor's preprocessing.
 * Weights keep transformers' names (vision_model.*, visual_projection.weight). */
#include "clip_vision.h"

#include <string.h>

#include "clip_layer.h"
#include "config.h"
#include "image.h"
#include "model_dir.h"
#include "resize.h"

struct pf_clip_vision {
    pf_clip_vision_config cfg;
    pf_clip_image_config proc;
    pf_backend *be;
    pf_tensor *patch_w;              /* embeddings.patch_embedding (D, 3, P, P), no bias */
    pf_tensor *class_emb;            /* embeddings.class_embedding (D) */
    pf_tensor *pos_emb;              /* embeddings.position_embedding (N + 1, D) */
    pf_tensor *pre_w, *pre_b;        /* pre_layrnorm (D) (transformers' spelling) */
    pf_clip_layer *layers;           /* num_hidden_layers */
    pf_tensor *post_w, *post_b;      /* post_layernorm (D) */
    pf_tensor *proj;                 /* visual_projection (E, D), no bias */
};

static int vision_config_read(pf_clip_vision_config *cfg, const char *path, pf_error *err) {
    pf_config *c;
    if (pf_config_load(&c, path, err)) return -1;
    long d, i, l, h, s, p, ch, e;
    double eps;
    char act[64];
    int rc = -1;
    if (pf_config_int(c, "hidden_size", 768, 1, 1 << 16, &d, err) ||
        pf_config_int(c, "intermediate_size", 3072, 1, 1 << 18, &i, err) ||
        pf_config_int(c, "num_hidden_layers", 12, 1, 1024, &l, err) ||
        pf_config_int(c, "num_attention_heads", 12, 1, 1024, &h, err) ||
        pf_config_int(c, "image_size", 224, 1, 4096, &s, err) ||
        pf_config_int(c, "patch_size", 32, 1, 4096, &p, err) ||
        pf_config_int(c, "num_channels", 3, 3, 3, &ch, err) ||
        pf_config_int(c, "projection_dim", 512, 1, 1 << 16, &e, err) ||
        pf_config_num(c, "layer_norm_eps", 1e-5, &eps, err) ||
        pf_config_str(c, "hidden_act", "quick_gelu", act, sizeof act, err))
        goto done;
    if (d % h) {
        pf_fail(err, "%s: hidden_size %ld is not a multiple of num_attention_heads %ld", path, d, h);
        goto done;
    }
    if (s % p) {
        pf_fail(err, "%s: image_size %ld is not a multiple of patch_size %ld", path, s, p);
        goto done;
    }
    if (!strcmp(act, "quick_gelu"))
        cfg->hidden_act = PF_ACT_QUICK_GELU;
    else if (!strcmp(act, "gelu"))
        cfg->hidden_act = PF_ACT_GELU;
    else {
        pf_fail(err, "%s: unsupported hidden_act \"%s\" (quick_gelu, gelu)", path, act);
        goto done;
    }
    cfg->hidden_size = (int)d;
    cfg->intermediate_size = (int)i;
    cfg->num_hidden_layers = (int)l;
    cfg->num_attention_heads = (int)h;
    cfg->image_size = (int)s;
    cfg->patch_size = (int)p;
    cfg->num_channels = (int)ch;
    cfg->projection_dim = (int)e;
    cfg->layer_norm_eps = (float)eps;
    rc = 0;
done:
    pf_config_free(c);
    return rc;
}

/* preprocessor_config.json; transformers' CLIPImageProcessor defaults for absent keys. */
static int image_config_read(pf_clip_image_config *pc, const char *path, pf_error *err) {
    pf_config *c;
    if (pf_config_load(&c, path, err)) return -1;
    static const double mean0[3] = {0.48145466, 0.4578275, 0.40821073}, std0[3] = {0.26862954, 0.26130258, 0.27577711};
    double mean[3], std[3];
    long edge, ch, cw, resample;
    int rc = -1;
    if (pf_config_int_field(c, "size", "shortest_edge", 224, 1, PF_IMAGE_MAX_SIDE, &edge, err) ||
        pf_config_int_field(c, "crop_size", "height", 224, 1, PF_IMAGE_MAX_SIDE, &ch, err) ||
        pf_config_int_field(c, "crop_size", "width", 224, 1, PF_IMAGE_MAX_SIDE, &cw, err) ||
        pf_config_int(c, "resample", 3, 0, 5, &resample, err) ||
        pf_config_num(c, "rescale_factor", 1.0 / 255, &pc->rescale_factor, err) ||
        pf_config_num_list(c, "image_mean", mean0, mean, 3, err) ||
        pf_config_num_list(c, "image_std", std0, std, 3, err) ||
        pf_config_bool(c, "do_resize", 1, &pc->do_resize, err) ||
        pf_config_bool(c, "do_center_crop", 1, &pc->do_center_crop, err) ||
        pf_config_bool(c, "do_rescale", 1, &pc->do_rescale, err) ||
        pf_config_bool(c, "do_normalize", 1, &pc->do_normalize, err))
        goto done;
    if (resample != 3) {
        pf_fail(err, "%s: resample %ld is not supported (3, bicubic, is what CLIP uses)", path, resample);
        goto done;
    }
    for (int k = 0; k < 3; k++) {
        if (std[k] == 0.0) {
            pf_fail(err, "%s: image_std[%d] is 0", path, k);
            goto done;
        }
        pc->mean[k] = (float)mean[k];
        pc->std[k] = (float)std[k];
    }
    pc->shortest_edge = (int)edge;
    pc->crop_height = (int)ch;
    pc->crop_width = (int)cw;
    rc = 0;
done:
    pf_config_free(c);
    return rc;
}

void pf_clip_vision_free(pf_clip_vision *m) {
    if (!m) return;
    pf_tensor *t[] = {m->patch_w, m->class_emb, m->pos_emb, m->pre_w, m->pre_b, m->post_w, m->post_b, m->proj};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) pf_free(t[i]);
    for (int i = 0; m->layers && i < m->cfg.num_hidden_layers; i++) pf_clip_layer_free(&m->layers[i]);
    free(m->layers);
    free(m);
}

const pf_clip_vision_config *pf_clip_vision_get_config(const pf_clip_vision *m) { return &m->cfg; }

const pf_clip_image_config *pf_clip_vision_image_config(const pf_clip_vision *m) { return &m->proc; }

int pf_clip_vision_load_dir(pf_clip_vision **out, pf_backend *be, const char *dir, pf_error *err) {
    *out = NULL;
    char path[4096];
    pf_clip_vision *m = PF_CALLOC(1, sizeof *m);
    m->be = be;
    pf_weights *w = NULL;
    if (pf_model_file(path, sizeof path, dir, NULL, "config.json", err) || vision_config_read(&m->cfg, path, err) ||
        pf_model_file(path, sizeof path, dir, NULL, "preprocessor_config.json", err) ||
        image_config_read(&m->proc, path, err) ||
        pf_model_file(path, sizeof path, dir, NULL, "model.safetensors", err) ||
        pf_weights_open(&w, path, err))
        goto fail;
    const pf_clip_vision_config *c = &m->cfg;
    if (m->proc.crop_height != c->image_size || m->proc.crop_width != c->image_size || !m->proc.do_center_crop) {
        pf_fail(err, "preprocessor_config.json crops to %dx%d but the model takes %dx%d images", m->proc.crop_width,
                m->proc.crop_height, c->image_size, c->image_size);
        goto fail;
    }
    const int64_t D = c->hidden_size, P = c->patch_size, N = (int64_t)(c->image_size / P) * (c->image_size / P);
#define LOAD(dst, ...)                                                                                    \
    do {                                                                                                  \
        const int64_t sh_[] = __VA_ARGS__;                                                                \
        if (!((dst) = pf_weights_loadf(w, be, err, sizeof sh_ / sizeof *sh_, sh_, "%s", name))) goto fail; \
    } while (0)
    const char *name;
    name = "vision_model.embeddings.patch_embedding.weight";
    LOAD(m->patch_w, {D, 3, P, P});
    name = "vision_model.embeddings.class_embedding";
    LOAD(m->class_emb, {D});
    name = "vision_model.embeddings.position_embedding.weight";
    LOAD(m->pos_emb, {N + 1, D});
    name = "vision_model.pre_layrnorm.weight";
    LOAD(m->pre_w, {D});
    name = "vision_model.pre_layrnorm.bias";
    LOAD(m->pre_b, {D});
    m->layers = PF_CALLOC((size_t)c->num_hidden_layers, sizeof *m->layers);
    for (int i = 0; i < c->num_hidden_layers; i++)
        if (pf_clip_layer_load(&m->layers[i], be, w, D, c->intermediate_size, err, "vision_model.encoder.layers.%d.",
                               i))
            goto fail;
    name = "vision_model.post_layernorm.weight";
    LOAD(m->post_w, {D});
    name = "vision_model.post_layernorm.bias";
    LOAD(m->post_b, {D});
    name = "visual_projection.weight";
    LOAD(m->proj, {c->projection_dim, D});
#undef LOAD
    pf_weights_close(w);
    *out = m;
    return 0;
fail:
    pf_weights_close(w);
    pf_clip_vision_free(m);
    return pf_error_prefix(err, "image encoder %s", dir);
}

int pf_clip_image_preprocess(float *out, const pf_clip_image_config *c, const uint8_t *rgb, int w, int h,
                             pf_error *err) {
    /* get_resize_output_image_size(default_to_square=False): short side to the
     * edge, long side int(edge * long / short) (Python's int() of a float). */
    int rw = w, rh = h;
    uint8_t *sized = NULL;
    const uint8_t *src = rgb;
    if (c->do_resize) {
        const int sshort = w < h ? w : h, slong = w < h ? h : w;
        const int nlong = (int)((double)c->shortest_edge * slong / sshort);
        rw = w <= h ? c->shortest_edge : nlong;
        rh = w <= h ? nlong : c->shortest_edge;
        if (rw != w || rh != h) {
            sized = PF_MALLOC((size_t)rw * rh * 3);
            if (pf_resize_bicubic(sized, rw, rh, rgb, w, h, err)) {
                free(sized);
                return pf_error_prefix(err, "image prompt");
            }
            src = sized;
        }
    }
    if (rw < c->crop_width || rh < c->crop_height) {
        free(sized);
        return pf_fail(err, "image prompt: %dx%d after resizing is smaller than the %dx%d crop", rw, rh,
                       c->crop_width, c->crop_height);
    }
    const int top = (rh - c->crop_height) / 2, left = (rw - c->crop_width) / 2;
    const size_t plane = (size_t)c->crop_width * c->crop_height;
    for (int y = 0; y < c->crop_height; y++)
        for (int x = 0; x < c->crop_width; x++)
            for (int k = 0; k < 3; k++) {
                const uint8_t v8 = src[((size_t)(top + y) * rw + left + x) * 3 + k];
                float v = c->do_rescale ? (float)((double)v8 * c->rescale_factor) : (float)v8; /* float64 then float32 */
                if (c->do_normalize) v = (v - c->mean[k]) / c->std[k];
                out[k * plane + (size_t)y * c->crop_width + x] = v;
            }
    free(sized);
    return 0;
}

int pf_clip_vision_encode(pf_clip_vision *m, const float *pixels, int layers, float *hidden, float *embeds,
                          pf_error *err) {
    const pf_clip_vision_config *c = &m->cfg;
    const int64_t S = c->image_size, P = c->patch_size, G = S / P, N = G * G, L = N + 1, D = c->hidden_size;
    if (hidden && (layers < 1 || layers > c->num_hidden_layers))
        return pf_fail(err, "image encoder: %d layers asked of %d", layers, c->num_hidden_layers);
    pf_backend *be = m->be;
    pf_tensor *px = pf_from_host(be, 4, (int64_t[]){1, 3, S, S}, pixels); /* (1, 3, S, S) pixel_values */
    pf_tensor *patches = pf_new4(be, 1, D, G, G);                         /* (1, D, G, G) */
    pf_conv2d(patches, px, m->patch_w, NULL, (int)P, 0);
    pf_tensor *p3 = pf_view3(patches, 1, D, N);                           /* (1, D, N) */
    pf_tensor *tok = pf_new3(be, 1, N, D);                                /* flatten(2).transpose(1, 2) */
    pf_permute(tok, p3, (const int[]){0, 2, 1});
    pf_tensor *cls = pf_view3(m->class_emb, 1, 1, D);                     /* (1, 1, D) */
    pf_tensor *x = pf_new3(be, 1, L, D);                                  /* (1, L, D) residual stream */
    pf_concat(x, cls, tok, 1);
    pf_tensor *pos = pf_view3(m->pos_emb, 1, L, D);
    pf_add(x, x, pos);
    pf_layer_norm(x, x, m->pre_w, m->pre_b, c->layer_norm_eps);          /* pre_layrnorm: hidden_states[0] */
    pf_tensor *hh = pf_new3(be, 1, L, D), *q = pf_new3(be, 1, L, D), *k = pf_new3(be, 1, L, D);
    pf_tensor *v = pf_new3(be, 1, L, D), *a = pf_new3(be, 1, L, D), *mlp = pf_new3(be, 1, L, c->intermediate_size);
    const int run = embeds ? c->num_hidden_layers : layers;
    for (int i = 0; i < run; i++) {
        pf_clip_layer_forward(&m->layers[i], x, hh, q, k, v, a, mlp, c->num_attention_heads, c->layer_norm_eps,
                              c->hidden_act, 0);
        if (hidden && i + 1 == layers) pf_to_host(hidden, x);             /* hidden_states[layers] */
    }
    pf_tensor *x2 = pf_view2(x, L, D);
    pf_tensor *first = pf_slice0(x2, 0, 1);                               /* (1, D) class token */
    pf_tensor *pooled = pf_new2(be, 1, D);
    pf_tensor *e = pf_new2(be, 1, c->projection_dim);                     /* (1, E) image_embeds */
    if (embeds) {
        pf_layer_norm(pooled, first, m->post_w, m->post_b, c->layer_norm_eps); /* post_layernorm */
        pf_linear(e, pooled, m->proj, NULL);
        pf_to_host(embeds, e);
    }
    pf_tensor *dead[] = {px, patches, p3, tok, cls, x, pos, hh, q, k, v, a, mlp, first, x2, pooled, e};
    for (size_t i = 0; i < sizeof dead / sizeof *dead; i++) pf_free(dead[i]);
    if (pf_backend_ok(be, err)) return pf_error_prefix(err, "image encoder");
    return 0;
}

int pf_clip_vision_embed(pf_clip_vision *m, float *embeds, const uint8_t *rgb, int w, int h, pf_error *err) {
    const int64_t S = m->cfg.image_size;
    float *pix = PF_MALLOC((size_t)3 * S * S * sizeof *pix);
    int rc = pf_clip_image_preprocess(pix, &m->proc, rgb, w, h, err) ||
             pf_clip_vision_encode(m, pix, 0, NULL, embeds, err) ? -1 : 0;
    free(pix);
    return rc;
}
