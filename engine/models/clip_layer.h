/* clip_layer.h - CLIPEncoderLayer (transformers/models/clip/modeling_clip.py), the
 * pre-norm transformer layer both CLIP towers share: the text encoders (clip.c,
 * causal attention) and the image encoder (clip_vision.c, full attention). */
#ifndef PF_CLIP_LAYER_H
#define PF_CLIP_LAYER_H

#include "backend.h"
#include "weights.h"

typedef struct pf_clip_layer {       /* CLIPEncoderLayer */
    pf_tensor *ln1_w, *ln1_b;        /* layer_norm1 (D) */
    pf_tensor *q_w, *q_b;            /* self_attn.q_proj (D, D), (D) */
    pf_tensor *k_w, *k_b;            /* self_attn.k_proj */
    pf_tensor *v_w, *v_b;            /* self_attn.v_proj */
    pf_tensor *o_w, *o_b;            /* self_attn.out_proj */
    pf_tensor *ln2_w, *ln2_b;        /* layer_norm2 (D) */
    pf_tensor *fc1_w, *fc1_b;        /* mlp.fc1 (I, D), (I) */
    pf_tensor *fc2_w, *fc2_b;        /* mlp.fc2 (D, I), (D) */
} pf_clip_layer;

/* Loads the layer's weights under the printf-style prefix ("...encoder.layers.3."),
 * checking shapes against D and I. On error returns -1 with err set; the caller
 * frees what was loaded with pf_clip_layer_free (l must start zeroed). */
int pf_clip_layer_load(pf_clip_layer *l, pf_backend *be, pf_weights *w, int64_t D, int64_t I, pf_error *err,
                       const char *prefix_fmt, ...) __attribute__((format(printf, 7, 8)));
void pf_clip_layer_free(pf_clip_layer *l);

/* CLIPEncoderLayer.forward: x = x + attn(ln1(x)); x = x + mlp(ln2(x)).
 * x: (B, L, D), updated in place; h, q, k, v, a: (B, L, D) and mlp (B, L, I)
 * scratch. causal masks later keys (the text tower). */
void pf_clip_layer_forward(const pf_clip_layer *l, pf_tensor *x, pf_tensor *h, pf_tensor *q, pf_tensor *k,
                           pf_tensor *v, pf_tensor *a, pf_tensor *mlp, int heads, float eps, pf_act act, int causal);

#endif
