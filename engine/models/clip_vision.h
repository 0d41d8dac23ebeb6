/* clip_vision.h - the IP-Adapter image encoder: transformers'
 * CLIPVisionModelWithProjection (modeling_clip.py) and the CLIPImageProcessor
 * that prepares its input (image_processing_clip.py), from a diffusers
 * image_encoder/ folder (config.json, model.safetensors, preprocessor_config.json). */
#ifndef PF_CLIP_VISION_H
#define PF_CLIP_VISION_H

#include <stdint.h>

#include "backend.h"
#include "weights.h"

typedef struct pf_clip_vision_config {
    int hidden_size;             /* D */
    int intermediate_size;       /* I */
    int num_hidden_layers;
    int num_attention_heads;
    int image_size;              /* S: the side of the input */
    int patch_size;              /* P: (S / P)^2 patches, plus the class token */
    int num_channels;            /* 3 */
    int projection_dim;          /* E: visual_projection's width, the image_embeds */
    pf_act hidden_act;
    float layer_norm_eps;
} pf_clip_vision_config;

/* CLIPImageProcessor's settings (preprocessor_config.json; absent keys take
 * the class defaults: 224, 224, bicubic, OpenAI's mean and std). */
typedef struct pf_clip_image_config {
    int shortest_edge;           /* resize the short side to this (aspect kept) */
    int crop_height, crop_width; /* then center-crop */
    double rescale_factor;       /* 1/255 */
    float mean[3], std[3];
    int do_resize, do_center_crop, do_rescale, do_normalize;
} pf_clip_image_config;

typedef struct pf_clip_vision pf_clip_vision;

/* Loads an image_encoder folder: config.json (CLIPVisionConfig, or a
 * CLIPConfig's vision_config is not read: the folder must be the vision
 * model's), model.safetensors and preprocessor_config.json. The processor's
 * crop must equal the model's image_size. On error returns -1 with err naming
 * the folder and *out NULL. */
int pf_clip_vision_load_dir(pf_clip_vision **out, pf_backend *be, const char *dir, pf_error *err);
void pf_clip_vision_free(pf_clip_vision *m);
const pf_clip_vision_config *pf_clip_vision_get_config(const pf_clip_vision *m);
/* Its preprocessor_config.json. */
const pf_clip_image_config *pf_clip_vision_image_config(const pf_clip_vision *m);

/* CLIPImageProcessor.preprocess of one 8-bit RGB image (w x h, rows top to
 * bottom): resize the short side to shortest_edge with Pillow's bicubic (the
 * long side int(edge * long / short)), center-crop (top (h - ch) / 2 floored),
 * v * rescale_factor in double then float32, (v - mean) / std in float32.
 * out: 3 x crop_height x crop_width floats, planar. Returns 0 or -1 with err. */
int pf_clip_image_preprocess(float *out, const pf_clip_image_config *c, const uint8_t *rgb, int w, int h,
                             pf_error *err);

/* The vision tower on one preprocessed image (pixels: 3 x S x S planar, the
 * processor's output, or zeros for diffusers' unconditional "plus" input):
 * hidden (NULL: not wanted) receives hidden_states[layers], (N + 1) x D host
 * floats, class token first (1 <= layers <= num_hidden_layers; IP-Adapter Plus
 * takes hidden_states[-2], layers = num_hidden_layers - 1); embeds (NULL: not
 * wanted) receives image_embeds, E host floats. */
int pf_clip_vision_encode(pf_clip_vision *m, const float *pixels, int layers, float *hidden, float *embeds,
                          pf_error *err);

/* image_embeds of one image: the processor, the vision tower, post_layernorm of
 * the class token, visual_projection. embeds: E host floats. */
int pf_clip_vision_embed(pf_clip_vision *m, float *embeds, const uint8_t *rgb, int w, int h, pf_error *err);

#endif
