/* clip.c - CLIPTextModel: token + position embeddings, pre-norm transformer
 * layers with causal self-attention, final layer norm; CLIPTextModelWithProjection
 * adds text_projection of the end token's state (SDXL's pooled embedding).
 * Mirrors transformers/models/clip/modeling_clip.py; weights keep its key names. */
#include "clip.h"

#include <string.h>

#include "clip_layer.h"
#include "config.h"
#include "convert.h"
#include "model_dir.h"


struct pf_clip_text_model {
    pf_clip_text_config cfg;
    pf_backend *be;
    pf_tensor *token_embedding;      /* (V, D) */
    pf_tensor *position_embedding;   /* (P, D) */
    pf_clip_layer *layers;              /* num_hidden_layers */
    pf_tensor *final_ln_w, *final_ln_b; /* (D) */
    pf_tensor *projection;           /* text_projection (P, D), no bias; NULL: CLIPTextModel */
};

int pf_clip_text_config_read(pf_clip_text_config *cfg, const char *path, pf_error *err) {
    pf_config *c;
    if (pf_config_load(&c, path, err)) return -1;
    long v, d, i, l, h, p, proj, eos;
    double eps;
    char act[64];
    int rc = -1;
    if (pf_config_int(c, "vocab_size", 49408, 1, 1 << 24, &v, err) ||
        pf_config_int(c, "hidden_size", 512, 1, 1 << 16, &d, err) ||
        pf_config_int(c, "intermediate_size", 2048, 1, 1 << 18, &i, err) ||
        pf_config_int(c, "num_hidden_layers", 12, 1, 1024, &l, err) ||
        pf_config_int(c, "num_attention_heads", 8, 1, 1024, &h, err) ||
        pf_config_int(c, "max_position_embeddings", 77, 1, 1 << 16, &p, err) ||
        pf_config_num(c, "layer_norm_eps", 1e-5, &eps, err) ||
        pf_config_str(c, "hidden_act", "quick_gelu", act, sizeof act, err) ||
        pf_config_int(c, "projection_dim", 512, 1, 1 << 16, &proj, err) ||
        pf_config_int(c, "eos_token_id", 2, 0, 1 << 24, &eos, err))
        goto done;
    if (d % h) {
        pf_fail(err, "%s: hidden_size %ld is not a multiple of num_attention_heads %ld", path, d, h);
        goto done;
    }
    if (!strcmp(act, "quick_gelu"))
        cfg->hidden_act = PF_ACT_QUICK_GELU;
    else if (!strcmp(act, "gelu"))
        cfg->hidden_act = PF_ACT_GELU;
    else if (!strcmp(act, "gelu_new") || !strcmp(act, "gelu_pytorch_tanh"))
        cfg->hidden_act = PF_ACT_GELU_TANH;
    else {
        pf_fail(err, "%s: unsupported hidden_act \"%s\" (quick_gelu, gelu, gelu_new)", path, act);
        goto done;
    }
    cfg->vocab_size = (int)v;
    cfg->hidden_size = (int)d;
    cfg->intermediate_size = (int)i;
    cfg->num_hidden_layers = (int)l;
    cfg->num_attention_heads = (int)h;
    cfg->max_position_embeddings = (int)p;
    cfg->layer_norm_eps = (float)eps;
    cfg->projection_dim = (int)proj;
    cfg->eos_token_id = (int)eos;
    rc = 0;
done:
    pf_config_free(c);
    return rc;
}

void pf_clip_text_model_free(pf_clip_text_model *m) {
    if (!m) return;
    pf_free(m->token_embedding);
    pf_free(m->position_embedding);
    for (int i = 0; m->layers && i < m->cfg.num_hidden_layers; i++) pf_clip_layer_free(&m->layers[i]);
    free(m->layers);
    pf_free(m->final_ln_w);
    pf_free(m->final_ln_b);
    pf_free(m->projection);
    free(m);
}

const pf_clip_text_config *pf_clip_text_model_config(const pf_clip_text_model *m) { return &m->cfg; }

int pf_clip_text_model_has_projection(const pf_clip_text_model *m) { return m->projection != NULL; }

int pf_clip_text_model_load(pf_clip_text_model **out, pf_backend *be, const pf_clip_text_config *cfg,
                            pf_weights *w, const char *prefix, pf_error *err) {
    *out = NULL;
    pf_clip_text_model *m = PF_CALLOC(1, sizeof *m);
    m->cfg = *cfg;
    m->be = be;
    const int64_t D = cfg->hidden_size, I = cfg->intermediate_size;
    const int64_t vec_d[] = {D};
#define LOAD(dst, shape, ...)                                                                  \
    do {                                                                                       \
        if (!((dst) = pf_weights_loadf(w, be, err, sizeof(shape) / sizeof(int64_t), shape, __VA_ARGS__))) \
            goto fail;                                                                         \
    } while (0)
    LOAD(m->token_embedding, ((int64_t[]){cfg->vocab_size, D}), "%sembeddings.token_embedding.weight", prefix);
    LOAD(m->position_embedding, ((int64_t[]){cfg->max_position_embeddings, D}),
         "%sembeddings.position_embedding.weight", prefix);
    m->layers = PF_CALLOC((size_t)cfg->num_hidden_layers, sizeof(pf_clip_layer));
    for (int i = 0; i < cfg->num_hidden_layers; i++)
        if (pf_clip_layer_load(&m->layers[i], be, w, D, I, err, "%sencoder.layers.%d.", prefix, i)) goto fail;
    LOAD(m->final_ln_w, vec_d, "%sfinal_layer_norm.weight", prefix);
    LOAD(m->final_ln_b, vec_d, "%sfinal_layer_norm.bias", prefix);
    /* CLIPTextModelWithProjection keeps text_projection beside text_model */
    size_t pl = strlen(prefix), tl = strlen("text_model.");
    int outer = (int)(pl >= tl && !strcmp(prefix + pl - tl, "text_model.") ? pl - tl : pl);
    char proj_name[512];
    snprintf(proj_name, sizeof proj_name, "%.*stext_projection.weight", outer, prefix);
    if (pf_weights_has(w, proj_name)) LOAD(m->projection, ((int64_t[]){cfg->projection_dim, D}), "%s", proj_name);
#undef LOAD
    *out = m;
    return 0;
fail:
    pf_clip_text_model_free(m);
    return -1;
}

int pf_clip_text_model_load_component(pf_clip_text_model **out, pf_backend *be, const char *model_dir,
                                      const char *component, pf_error *err) {
    *out = NULL;
    char cfg_path[4096], weights_path[4096];
    pf_clip_text_config cfg;
    pf_weights *w;
    if (pf_model_file(cfg_path, sizeof cfg_path, model_dir, component, "config.json", err) ||
        pf_clip_text_config_read(&cfg, cfg_path, err) ||
        pf_model_weights(weights_path, sizeof weights_path, model_dir, component, 0, err) ||
        pf_weights_open(&w, weights_path, err))
        return -1;
    /* transformers 4.x saves CLIPTextModel under "text_model."; 5.x drops the prefix. */
    int rc = pf_clip_text_model_load(out, be, &cfg, w, pf_text_encoder_prefix(w), err);
    pf_weights_close(w);
    return rc;
}

int pf_clip_text_model_load_dir(pf_clip_text_model **out, pf_backend *be, const char *model_dir, pf_error *err) {
    return pf_clip_text_model_load_component(out, be, model_dir, "text_encoder", err);
}

int pf_clip_text_model_forward(pf_clip_text_model *m, pf_tensor *out, const int32_t *ids, int B, int L,
                               int clip_skip, pf_error *err) {
    const int n = m->cfg.num_hidden_layers;
    if (clip_skip < 0 || clip_skip >= n)
        return pf_fail(err, "text encoder: clip_skip %d outside [0, %d]", clip_skip, n - 1);
    return pf_clip_text_model_encode(m, ids, B, L, n - clip_skip, 1, out, NULL, err);
}

/* The pooling position of each sequence (CLIPTextTransformer.forward). */
static int64_t pool_position(const pf_clip_text_config *c, const int32_t *ids, int L) {
    int64_t best = 0;
    for (int i = 0; i < L; i++) {
        if (c->eos_token_id == 2) { /* legacy: argmax of the ids, the first of equal maxima */
            if (ids[i] > ids[best]) best = i;
        } else if (ids[i] == c->eos_token_id) {
            return i;
        }
    }
    return c->eos_token_id == 2 ? best : 0; /* torch's argmax of an all-false mask: 0 */
}

int pf_clip_text_model_encode(pf_clip_text_model *m, const int32_t *ids, int B, int L, int layers, int final_norm,
                              pf_tensor *hidden, pf_tensor *pooled, pf_error *err) {
    const pf_clip_text_config *c = &m->cfg;
    const int64_t D = c->hidden_size;
    if (L < 1 || L > c->max_position_embeddings)
        return pf_fail(err, "text encoder: sequence length %d outside [1, %d]", L, c->max_position_embeddings);
    if (layers < 1 || layers > c->num_hidden_layers)
        return pf_fail(err, "text encoder: %d layers asked of %d", layers, c->num_hidden_layers);
    if (pooled && !m->projection) return pf_fail(err, "text encoder: no text_projection for a pooled embedding");
    for (int64_t i = 0; i < (int64_t)B * L; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return pf_fail(err, "text encoder: token id %d outside the vocabulary (%d)", ids[i], c->vocab_size);
    PF_CHECK(!hidden || (hidden->ndim == 3 && hidden->shape[0] == B && hidden->shape[1] == L && hidden->shape[2] == D));
    PF_CHECK(!pooled || (pooled->ndim == 2 && pooled->shape[0] == B && pooled->shape[1] == c->projection_dim));

    pf_backend *be = m->be;
    int32_t *pos = PF_MALLOC((size_t)B * L * sizeof *pos);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < L; i++) pos[b * L + i] = i;
    pf_tensor *x = pf_new3(be, B, L, D);                               /* (B, L, D) residual stream */
    pf_tensor *h = pf_new3(be, B, L, D), *q = pf_new3(be, B, L, D), *k = pf_new3(be, B, L, D);
    pf_tensor *v = pf_new3(be, B, L, D), *a = pf_new3(be, B, L, D);
    pf_tensor *mlp = pf_new3(be, B, L, c->intermediate_size);          /* (B, L, I) */
    pf_tensor *x2 = pf_view2(x, (int64_t)B * L, D);                    /* (B*L, D) */
    pf_tensor *h2 = pf_view2(h, (int64_t)B * L, D);

    /* CLIPTextEmbeddings: token_embedding(ids) + position_embedding(arange(L)) */
    pf_embedding(x2, m->token_embedding, ids, (int64_t)B * L);
    pf_embedding(h2, m->position_embedding, pos, (int64_t)B * L);
    pf_add(x, x, h);
    /* a pooled embedding needs every layer; the hidden state may be an earlier one */
    const int run = pooled ? c->num_hidden_layers : layers;
    for (int i = 0; i < run; i++) {
        pf_clip_layer_forward(&m->layers[i], x, h, q, k, v, a, mlp, c->num_attention_heads, c->layer_norm_eps,
                              c->hidden_act, 1);
        if (hidden && i + 1 == layers) {
            if (final_norm)
                pf_layer_norm(hidden, x, m->final_ln_w, m->final_ln_b, c->layer_norm_eps);
            else
                pf_copy(hidden, x);
        }
    }
    if (pooled) { /* last_hidden_state at the end tokens, then text_projection */
        pf_layer_norm(h, x, m->final_ln_w, m->final_ln_b, c->layer_norm_eps); /* (B, L, D) */
        pf_tensor *ends = pf_new2(be, B, D);                           /* (B, D) pooled_output */
        for (int b = 0; b < B; b++) {
            pf_tensor *src = pf_slice0(h2, (int64_t)b * L + pool_position(c, ids + (size_t)b * L, L), 1);
            pf_tensor *dst = pf_slice0(ends, b, 1);                    /* (1, D) */
            pf_copy(dst, src);
            pf_free(src);
            pf_free(dst);
        }
        pf_linear(pooled, ends, m->projection, NULL);                  /* (B, P) */
        pf_free(ends);
    }

    free(pos);
    pf_free(x2);
    pf_free(h2);
    pf_free(x);
    pf_free(h);
    pf_free(q);
    pf_free(k);
    pf_free(v);
    pf_free(a);
    pf_free(mlp);
    if (pf_backend_ok(be, err)) return pf_error_prefix(err, "text encoder");
    return 0;
}
