/* ip_adapter.h - IP-Adapter (Ye et al. 2023) as diffusers loads it
 * (loaders/unet.py _convert_ip_adapter_*): the image projection
 * (ImageProjection: Linear to num_tokens x cross_attention_dim, then LayerNorm)
 * and the decoupled cross-attention weights (to_k_ip / to_v_ip of every attn2),
 * from a file in the layout of h94/IP-Adapter's ip-adapter_sd15.safetensors:
 * image_proj.{proj,norm}.* and ip_adapter.{2i+1}.to_{k,v}_ip.weight. */
#ifndef PF_IP_ADAPTER_H
#define PF_IP_ADAPTER_H

#include "backend.h"
#include "unet.h"

/* diffusers hard-codes the plain adapter's image tokens */
#define PF_IP_ADAPTER_TOKENS 4

typedef struct pf_ip_adapter {
    int embed_dim;                   /* E: image_embeds width it takes (the image encoder's projection_dim) */
    int cross_dim;                   /* X: its tokens' width, the UNet's cross_attention_dim */
    int num_tokens;                  /* N */
    pf_tensor *proj_w, *proj_b;      /* image_proj.proj (N X, E), (N X) */
    pf_tensor *norm_w, *norm_b;      /* image_proj.norm (X) */
    int num_xattn;                   /* the UNet's cross-attentions */
    pf_tensor **to_k_ip, **to_v_ip;  /* (num_xattn) each (C_i, X) */
} pf_ip_adapter;

/* Loads the adapter in file for unet (its cross-attention count and widths).
 * A "plus" adapter (Resampler: image_proj.latents), an adapter made for another
 * UNet (an SDXL adapter on SD-1.5: other widths or count) and a missing or
 * misshapen tensor are one-line errors naming the file and, for a misfit, both
 * sides. On error returns -1 with *out NULL. */
int pf_ip_adapter_load(pf_ip_adapter **out, pf_backend *be, const char *file, const pf_unet *unet, pf_error *err);
void pf_ip_adapter_free(pf_ip_adapter *a);

/* ImageProjection.forward: embeds (B, E) -> tokens (B, N, X), a new tensor:
 * LayerNorm(proj(embeds).reshape(B, N, X)). */
pf_tensor *pf_ip_adapter_project(const pf_ip_adapter *a, const pf_tensor *embeds);

#endif
