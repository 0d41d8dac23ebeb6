/* ip_adapter.c - an IP-Adapter file's image projection and decoupled
 * cross-attention weights (diffusers' ImageProjection and
 * IPAdapterAttnProcessor2_0 weights); unet.c runs the attention. */
#include "ip_adapter.h"

#include <stdio.h>

#include "weights.h"

void pf_ip_adapter_free(pf_ip_adapter *a) {
    if (!a) return;
    pf_free(a->proj_w);
    pf_free(a->proj_b);
    pf_free(a->norm_w);
    pf_free(a->norm_b);
    for (int i = 0; i < a->num_xattn; i++) {
        if (a->to_k_ip) pf_free(a->to_k_ip[i]);
        if (a->to_v_ip) pf_free(a->to_v_ip[i]);
    }
    free(a->to_k_ip);
    free(a->to_v_ip);
    free(a);
}

int pf_ip_adapter_load(pf_ip_adapter **out, pf_backend *be, const char *file, const pf_unet *unet, pf_error *err) {
    *out = NULL;
    pf_weights *w;
    if (pf_weights_open(&w, file, err)) return pf_error_prefix(err, "ip-adapter %s", file);
    pf_ip_adapter *a = PF_CALLOC(1, sizeof *a);
    const int X = pf_unet_get_config(unet)->cross_attention_dim, n = pf_unet_num_cross_attentions(unet);
    int64_t shape[PF_MAX_DIMS], kshape[PF_MAX_DIMS];
    int found = 0;
    if (pf_weights_has(w, "image_proj.latents")) {
        pf_fail(err, "ip-adapter %s: a \"plus\" adapter (Resampler image projection) is not supported yet", file);
        goto fail;
    }
    if (!pf_weights_has(w, "image_proj.proj.weight") || pf_weights_shape(w, "image_proj.proj.weight", shape) != 2 ||
        !pf_weights_has(w, "ip_adapter.1.to_k_ip.weight") ||
        pf_weights_shape(w, "ip_adapter.1.to_k_ip.weight", kshape) != 2) {
        pf_fail(err, "ip-adapter %s: not an IP-Adapter file (no image_proj.proj.weight and ip_adapter.1.to_k_ip.weight "
                     "matrices)", file);
        goto fail;
    }
    for (int i = 0; i < pf_weights_count(w); i++) { /* the file's cross-attentions */
        int id, end = 0;
        if (sscanf(pf_weights_name(w, i), "ip_adapter.%d.to_k_ip.weight%n", &id, &end) == 1 &&
            !pf_weights_name(w, i)[end])
            found++;
    }
    const int fx = (int)kshape[1];
    if (fx != X || found != n) {
        pf_fail(err, "ip-adapter %s does not fit the model: it has %d cross-attentions over %d-wide image tokens (%s), "
                     "the model's UNet has %d over %d (%s)", file, found, fx, fx == 2048 ? "an SDXL adapter" :
                     fx == 768 ? "an SD-1.5 adapter" : fx == 1024 ? "an SD-2 adapter" : "unknown family", n, X,
                     X == 2048 ? "SDXL" : X == 768 ? "SD-1.5" : X == 1024 ? "SD-2" : "this model");
        goto fail;
    }
    if (shape[0] % X) {
        pf_fail(err, "ip-adapter %s: image_proj.proj.weight has %lld rows, not a multiple of %d", file,
                (long long)shape[0], X);
        goto fail;
    }
    a->cross_dim = X;
    a->embed_dim = (int)shape[1];
    a->num_tokens = (int)(shape[0] / X);
    if (a->num_tokens != PF_IP_ADAPTER_TOKENS) {
        pf_fail(err, "ip-adapter %s: %d image tokens; diffusers' plain IP-Adapter has %d", file, a->num_tokens,
                PF_IP_ADAPTER_TOKENS);
        goto fail;
    }
    const int64_t NX = (int64_t)a->num_tokens * X, E = a->embed_dim;
    if (!(a->proj_w = pf_weights_loadf(w, be, err, 2, (int64_t[]){NX, E}, "image_proj.proj.weight")) ||
        !(a->proj_b = pf_weights_loadf(w, be, err, 1, (int64_t[]){NX}, "image_proj.proj.bias")) ||
        !(a->norm_w = pf_weights_loadf(w, be, err, 1, (int64_t[]){X}, "image_proj.norm.weight")) ||
        !(a->norm_b = pf_weights_loadf(w, be, err, 1, (int64_t[]){X}, "image_proj.norm.bias")))
        goto fail_named;
    a->num_xattn = n;
    a->to_k_ip = PF_CALLOC((size_t)n, sizeof *a->to_k_ip);
    a->to_v_ip = PF_CALLOC((size_t)n, sizeof *a->to_v_ip);
    for (int i = 0; i < n; i++) {
        const int64_t C = pf_unet_cross_attention_channels(unet, i);
        if (!(a->to_k_ip[i] = pf_weights_loadf(w, be, err, 2, (int64_t[]){C, X}, "ip_adapter.%d.to_k_ip.weight",
                                               2 * i + 1)) ||
            !(a->to_v_ip[i] = pf_weights_loadf(w, be, err, 2, (int64_t[]){C, X}, "ip_adapter.%d.to_v_ip.weight",
                                               2 * i + 1)))
            goto fail_named;
    }
    pf_weights_close(w);
    *out = a;
    return 0;
fail_named:
    pf_error_prefix(err, "ip-adapter %s", file);
fail:
    pf_weights_close(w);
    pf_ip_adapter_free(a);
    return -1;
}

pf_tensor *pf_ip_adapter_project(const pf_ip_adapter *a, const pf_tensor *embeds) {
    const int64_t B = embeds->shape[0];
    pf_tensor *t = pf_new2(embeds->be, B, (int64_t)a->num_tokens * a->cross_dim); /* (B, N X) */
    pf_linear(t, embeds, a->proj_w, a->proj_b);
    pf_tensor *out = pf_new3(embeds->be, B, a->num_tokens, a->cross_dim);       /* (B, N, X) */
    pf_tensor *t3 = pf_view3(t, B, a->num_tokens, a->cross_dim);
    pf_layer_norm(out, t3, a->norm_w, a->norm_b, 1e-5f);                        /* nn.LayerNorm default eps */
    pf_free(t3);
    pf_free(t);
    return out;
}
