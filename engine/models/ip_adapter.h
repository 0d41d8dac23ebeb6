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

/* One block of the "plus" Resampler (diffusers' IPAdapterPlusImageProjectionBlock;
 * file keys image_proj.layers.i.0.* and .1.*). H: its width, heads of 64. */
typedef struct pf_ip_resampler_block {
    pf_tensor *ln0_w, *ln0_b;        /* 0.norm1 (H): the image features */
    pf_tensor *ln1_w, *ln1_b;        /* 0.norm2 (H): the latents */
    pf_tensor *to_q;                 /* 0.to_q (heads 64, H) */
    pf_tensor *to_kv;                /* 0.to_kv (2 heads 64, H): to_k rows, then to_v rows */
    pf_tensor *to_k, *to_v;          /* views of to_kv */
    pf_tensor *to_out;               /* 0.to_out (H, heads 64) */
    pf_tensor *ff_ln_w, *ff_ln_b;    /* 1.0 LayerNorm (H) */
    pf_tensor *ff1, *ff2;            /* 1.1 (4H, H), 1.3 (H, 4H): GELU between, no biases */
} pf_ip_resampler_block;

typedef struct pf_ip_adapter {
    int plus;                        /* 1: IP-Adapter Plus, the Resampler on hidden_states[-2] */
    int embed_dim;                   /* E: image_embeds width it takes (the image encoder's projection_dim);
                                        plus: the encoder's hidden_size */
    int cross_dim;                   /* X: its tokens' width, the UNet's cross_attention_dim */
    int num_tokens;                  /* N */
    pf_tensor *proj_w, *proj_b;      /* image_proj.proj (N X, E), (N X) */
    pf_tensor *norm_w, *norm_b;      /* image_proj.norm (X) */
    /* plus: IPAdapterPlusImageProjection */
    int hidden_dim, heads, depth;    /* H, H / 64 rounded as diffusers (to_q rows / 64), blocks */
    pf_tensor *latents;              /* image_proj.latents (1, N, H) */
    pf_tensor *proj_in_w, *proj_in_b;   /* (H, E), (H) */
    pf_tensor *proj_out_w, *proj_out_b; /* (X, H), (X) */
    pf_tensor *norm_out_w, *norm_out_b; /* (X) */
    pf_ip_resampler_block *blocks;   /* depth */
    int num_xattn;                   /* the UNet's cross-attentions */
    pf_tensor **to_k_ip, **to_v_ip;  /* (num_xattn) each (C_i, X) */
} pf_ip_adapter;

/* Loads the adapter in file for unet (its cross-attention count and widths):
 * plain (image_proj.proj) or "plus" (image_proj.latents, the Resampler). An adapter made for another
 * UNet (an SDXL adapter on SD-1.5: other widths or count) and a missing or
 * misshapen tensor are one-line errors naming the file and, for a misfit, both
 * sides. On error returns -1 with *out NULL. */
int pf_ip_adapter_load(pf_ip_adapter **out, pf_backend *be, const char *file, const pf_unet *unet, pf_error *err);
void pf_ip_adapter_free(pf_ip_adapter *a);

/* encoder_hid_proj: plain, ImageProjection: embeds (B, E) -> LayerNorm(proj(embeds)
 * .reshape(B, N, X)); plus, IPAdapterPlusImageProjection: embeds (B, L, E), the
 * encoder's hidden_states[-2] -> the Resampler's (B, N, X). A new tensor. */
pf_tensor *pf_ip_adapter_project(const pf_ip_adapter *a, const pf_tensor *embeds);

#endif
