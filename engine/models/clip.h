/* clip.h - the CLIP text encoders of Stable Diffusion, mirroring transformers'
 * CLIPTextModel and (SDXL's second encoder) CLIPTextModelWithProjection
 * (transformers/models/clip/modeling_clip.py). */
#ifndef PF_CLIP_H
#define PF_CLIP_H

#include "backend.h"
#include "weights.h"

typedef struct pf_clip_text_config {
    int vocab_size;              /* V */
    int hidden_size;             /* D */
    int intermediate_size;       /* I */
    int num_hidden_layers;
    int num_attention_heads;
    int max_position_embeddings; /* P */
    pf_act hidden_act;           /* quick_gelu (SD-1.x) or gelu (SD-2.x) */
    float layer_norm_eps;
    int projection_dim;          /* P: text_projection's width (CLIPTextModelWithProjection) */
    int eos_token_id;            /* pooling position: 2 means transformers' legacy argmax of the ids */
} pf_clip_text_config;

typedef struct pf_clip_text_model pf_clip_text_model;

/* Reads a transformers CLIPTextConfig config.json. */
int pf_clip_text_config_read(pf_clip_text_config *cfg, const char *path, pf_error *err);

/* Loads every weight under `prefix` ("text_model." for diffusers folders) from w,
 * checking each shape against cfg; and text_projection.weight (P, D), beside the
 * text model (prefix without "text_model."), when w has it: the model is then a
 * CLIPTextModelWithProjection. On error returns -1 with *out NULL. */
int pf_clip_text_model_load(pf_clip_text_model **out, pf_backend *be, const pf_clip_text_config *cfg,
                            pf_weights *w, const char *prefix, pf_error *err);
/* Loads the text_encoder component of a diffusers-layout model folder. */
int pf_clip_text_model_load_dir(pf_clip_text_model **out, pf_backend *be, const char *model_dir, pf_error *err);
/* The same for another component folder name (SDXL's "text_encoder_2"). */
int pf_clip_text_model_load_component(pf_clip_text_model **out, pf_backend *be, const char *model_dir,
                                      const char *component, pf_error *err);
/* 1 when the model has a text projection (CLIPTextModelWithProjection). */
int pf_clip_text_model_has_projection(const pf_clip_text_model *m);
void pf_clip_text_model_free(pf_clip_text_model *m);
const pf_clip_text_config *pf_clip_text_model_config(const pf_clip_text_model *m);

/* Encodes B sequences of L token ids (ids: B*L host ints, each < V; L <= P).
 * clip_skip = 0 returns last_hidden_state; clip_skip = k > 0 returns the hidden
 * state k layers before the last, through the final layer norm, as diffusers'
 * encode_prompt does. out: [B, L, D] on the model's backend, made by the caller. */
int pf_clip_text_model_forward(pf_clip_text_model *m, pf_tensor *out, const int32_t *ids, int B, int L,
                               int clip_skip, pf_error *err);

/* The general form. hidden [B, L, D] (NULL: not wanted) receives the hidden
 * state after `layers` encoder layers (1..num_hidden_layers), through the final
 * layer norm when final_norm: transformers' hidden_states[layers] (SDXL takes
 * hidden_states[-2] = layers num_hidden_layers - 1, no norm). pooled [B, P] (NULL:
 * not wanted; needs the projection) receives text_embeds: text_projection of
 * last_hidden_state at each sequence's end token (the first largest id when
 * eos_token_id is 2, as transformers' legacy configs ask, else the first
 * eos_token_id). Tensors on the model's backend, made by the caller. */
int pf_clip_text_model_encode(pf_clip_text_model *m, const int32_t *ids, int B, int L, int layers, int final_norm,
                              pf_tensor *hidden, pf_tensor *pooled, pf_error *err);

#endif
