/* lora.h - LoRA files fused into the weights as they load.
 *
 * A LoRA changes a weight W (out, in[, kh, kw]) of the UNet or the text encoder
 * by a low-rank product: W += scale * alpha / rank * up @ down, with up (out,
 * rank[, 1, 1]) and down (rank, in[, kh, kw]) flattened to matrices, for
 * Linear and Conv2d layers alike (kohya's LoCon included). alpha is the
 * module's own (kohya's .alpha key), else the file's PEFT metadata
 * (lora_adapter_metadata: lora_alpha, alpha_pattern, use_rslora), else the
 * rank (a factor of 1), as diffusers takes it; scale is the user's strength.
 *
 * The fuse runs in float32 on the host copy of W, after the PeRFlow delta
 * (weights.h: W = W_base + dW, then each LoRA in the order given), before the
 * conversion to the backend's dtype. That is diffusers' order and arithmetic:
 * the delta merged into the UNet's state dict, then load_lora_weights for each
 * LoRA, set_adapters(names, weights=scales) and fuse_lora(), which adds each
 * adapter's (B @ A) * scaling to the float32 weight in turn (peft's
 * LoraLayer.merge).
 *
 * Key spellings are convert.h's business; this module groups a file's keys
 * into modules, checks them, matches them against a component's weights and
 * does the arithmetic. */
#ifndef PF_LORA_H
#define PF_LORA_H

#include "convert.h"
#include "weights.h"

typedef struct pf_lora pf_lora;

/* Opens and checks a LoRA file: every module has an up and a down of the same
 * rank (else an error naming the module and both ranks), readable dtypes, a
 * scalar alpha; CP-decomposed LoCon (lora_mid), PEFT's lora_bias and DoRA's
 * magnitude vectors are errors saying they are not supported. kohya's
 * dora_scale keys are dropped (diffusers drops them too) and listed with the
 * keys that match nothing. On error -1 with *out NULL. */
int pf_lora_open(pf_lora **out, const char *path, pf_error *err);
/* NULL is a no-op. Only after every weight set it was attached to has loaded. */
void pf_lora_close(pf_lora *l);

const char *pf_lora_path(const pf_lora *l);
/* The format of most of its modules: PF_LORA_KOHYA, PF_LORA_DIFFUSERS or PF_LORA_PEFT. */
pf_lora_format pf_lora_format_of(const pf_lora *l);
int pf_lora_num_tensors(const pf_lora *l);
/* Modules for part (those without a component prefix count for every part). */
int pf_lora_num_modules(const pf_lora *l, pf_part part);

/* Matches the modules of l meant for part (and those without a component
 * prefix not matched yet) against w's weights (convert.h, pf_lora_resolve) and
 * adds a patch W += scale * alpha / rank * up @ down to each weight matched.
 * Returns the number of modules matched, or -1 with err set when a matched
 * weight's shape does not fit the module (naming both shapes). layers_per_block
 * is the UNet's (kohya's SDXL block numbering, pf_lora_resolve). l must outlive
 * every load from w. */
int pf_lora_attach(pf_lora *l, pf_weights *w, pf_part part, float scale, int layers_per_block, pf_error *err);

/* Tensors (up, down, alpha) of the modules matched so far; with applied, of
 * those whose patch has run (a matched weight the model never loads is not
 * applied). */
int pf_lora_matched(const pf_lora *l, int applied);
/* Writes the keys of l that are not matched (with applied: not applied), keys
 * of no known spelling and dropped keys to buf (n bytes) as a comma-separated
 * quoted list, cut with "... and N more"; returns their count. */
int pf_lora_unmatched(const pf_lora *l, int applied, char *buf, size_t n);

#endif
