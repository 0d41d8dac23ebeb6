/* clip_layer.c - CLIPEncoderLayer, shared by the text and image towers of CLIP. */
#include "clip_layer.h"

#include <stdarg.h>
#include <stdio.h>

int pf_clip_layer_load(pf_clip_layer *l, pf_backend *be, pf_weights *w, int64_t D, int64_t I, pf_error *err,
                       const char *prefix_fmt, ...) {
    char p[512];
    va_list ap;
    va_start(ap, prefix_fmt);
    vsnprintf(p, sizeof p, prefix_fmt, ap);
    va_end(ap);
    const int64_t vec_d[] = {D}, mat_dd[] = {D, D}, vec_i[] = {I}, mat_id[] = {I, D}, mat_di[] = {D, I};
    struct {
        pf_tensor **dst;
        int ndim;
        const int64_t *shape;
        const char *name;
    } t[] = {
        {&l->ln1_w, 1, vec_d, "layer_norm1.weight"},      {&l->ln1_b, 1, vec_d, "layer_norm1.bias"},
        {&l->q_w, 2, mat_dd, "self_attn.q_proj.weight"},  {&l->q_b, 1, vec_d, "self_attn.q_proj.bias"},
        {&l->k_w, 2, mat_dd, "self_attn.k_proj.weight"},  {&l->k_b, 1, vec_d, "self_attn.k_proj.bias"},
        {&l->v_w, 2, mat_dd, "self_attn.v_proj.weight"},  {&l->v_b, 1, vec_d, "self_attn.v_proj.bias"},
        {&l->o_w, 2, mat_dd, "self_attn.out_proj.weight"}, {&l->o_b, 1, vec_d, "self_attn.out_proj.bias"},
        {&l->ln2_w, 1, vec_d, "layer_norm2.weight"},      {&l->ln2_b, 1, vec_d, "layer_norm2.bias"},
        {&l->fc1_w, 2, mat_id, "mlp.fc1.weight"},         {&l->fc1_b, 1, vec_i, "mlp.fc1.bias"},
        {&l->fc2_w, 2, mat_di, "mlp.fc2.weight"},         {&l->fc2_b, 1, vec_d, "mlp.fc2.bias"},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (!(*t[i].dst = pf_weights_loadf(w, be, err, t[i].ndim, t[i].shape, "%s%s", p, t[i].name))) return -1;
    return 0;
}

void pf_clip_layer_free(pf_clip_layer *l) {
    pf_tensor **t = (pf_tensor **)l;
    for (size_t k = 0; k < sizeof(pf_clip_layer) / sizeof(pf_tensor *); k++) pf_free(t[k]);
}

void pf_clip_layer_forward(const pf_clip_layer *l, pf_tensor *x, pf_tensor *h, pf_tensor *q, pf_tensor *k,
                           pf_tensor *v, pf_tensor *a, pf_tensor *mlp, int heads, float eps, pf_act act, int causal) {
    pf_layer_norm(h, x, l->ln1_w, l->ln1_b, eps);                      /* (B, L, D) */
    pf_linear(q, h, l->q_w, l->q_b);                                   /* (B, L, D) */
    pf_linear(k, h, l->k_w, l->k_b);                                   /* (B, L, D) */
    pf_linear(v, h, l->v_w, l->v_b);                                   /* (B, L, D) */
    pf_attention(a, q, k, v, heads, causal);                           /* (B, L, D) */
    pf_linear(h, a, l->o_w, l->o_b);                                   /* (B, L, D) */
    pf_add(x, x, h);
    pf_layer_norm(h, x, l->ln2_w, l->ln2_b, eps);                      /* (B, L, D) */
    pf_linear(mlp, h, l->fc1_w, l->fc1_b);                             /* (B, L, I) */
    pf_activation(mlp, mlp, act);
    pf_linear(h, mlp, l->fc2_w, l->fc2_b);                             /* (B, L, D) */
    pf_add(x, x, h);
}
