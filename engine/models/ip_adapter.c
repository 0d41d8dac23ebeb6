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
    pf_tensor *t[] = {a->latents, a->proj_in_w, a->proj_in_b, a->proj_out_w, a->proj_out_b, a->norm_out_w,
                      a->norm_out_b};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) pf_free(t[i]);
    for (int i = 0; a->blocks && i < a->depth; i++) {
        pf_ip_resampler_block *b = &a->blocks[i];
        pf_free(b->to_k); /* views before their parent */
        pf_free(b->to_v);
        pf_tensor *u[] = {b->ln0_w, b->ln0_b, b->ln1_w, b->ln1_b, b->to_q, b->to_kv, b->to_out, b->ff_ln_w, b->ff_ln_b,
                          b->ff1, b->ff2};
        for (size_t k = 0; k < sizeof u / sizeof *u; k++) pf_free(u[k]);
    }
    free(a->blocks);
    free(a);
}

/* The family a cross-attention width suggests, for messages. */
static const char *family_of(int x, int adapter) {
    if (x == 2048) return adapter ? "an SDXL adapter" : "SDXL";
    if (x == 768) return adapter ? "an SD-1.5 adapter" : "SD-1.5";
    if (x == 1024) return adapter ? "an SD-2 adapter" : "SD-2";
    return adapter ? "unknown family" : "this model";
}

/* The decoupled attention weights: the file's to_k_ip count and width must be
 * the UNet's, then every ip_adapter.{2i+1}.to_{k,v}_ip (C_i, X). */
static int load_attention(pf_ip_adapter *a, pf_weights *w, pf_backend *be, const char *file, const pf_unet *unet,
                          pf_error *err) {
    const int X = pf_unet_get_config(unet)->cross_attention_dim, n = pf_unet_num_cross_attentions(unet);
    int64_t kshape[PF_MAX_DIMS];
    if (pf_weights_shape(w, "ip_adapter.1.to_k_ip.weight", kshape) != 2)
        return pf_fail(err, "ip-adapter %s: not an IP-Adapter file (no ip_adapter.1.to_k_ip.weight matrix)", file);
    int found = 0;
    for (int i = 0; i < pf_weights_count(w); i++) { /* the file's cross-attentions */
        int id, end = 0;
        if (sscanf(pf_weights_name(w, i), "ip_adapter.%d.to_k_ip.weight%n", &id, &end) == 1 &&
            !pf_weights_name(w, i)[end])
            found++;
    }
    const int fx = (int)kshape[1];
    if (fx != X || found != n)
        return pf_fail(err, "ip-adapter %s does not fit the model: it has %d cross-attentions over %d-wide image "
                            "tokens (%s), the model's UNet has %d over %d (%s)", file, found, fx, family_of(fx, 1), n,
                       X, family_of(X, 0));
    a->cross_dim = X;
    a->num_xattn = n;
    a->to_k_ip = PF_CALLOC((size_t)n, sizeof *a->to_k_ip);
    a->to_v_ip = PF_CALLOC((size_t)n, sizeof *a->to_v_ip);
    for (int i = 0; i < n; i++) {
        const int64_t C = pf_unet_cross_attention_channels(unet, i);
        if (!(a->to_k_ip[i] = pf_weights_loadf(w, be, err, 2, (int64_t[]){C, X}, "ip_adapter.%d.to_k_ip.weight",
                                               2 * i + 1)) ||
            !(a->to_v_ip[i] = pf_weights_loadf(w, be, err, 2, (int64_t[]){C, X}, "ip_adapter.%d.to_v_ip.weight",
                                               2 * i + 1)))
            return pf_error_prefix(err, "ip-adapter %s", file);
    }
    return 0;
}

/* ImageProjection: image_proj.proj (N X, E) and image_proj.norm (X), N = 4. */
static int load_plain(pf_ip_adapter *a, pf_weights *w, pf_backend *be, const char *file, pf_error *err) {
    const int X = a->cross_dim;
    int64_t shape[PF_MAX_DIMS];
    if (pf_weights_shape(w, "image_proj.proj.weight", shape) != 2)
        return pf_fail(err, "ip-adapter %s: not an IP-Adapter file (no image_proj.proj.weight or image_proj.latents)",
                       file);
    if (shape[0] != (int64_t)PF_IP_ADAPTER_TOKENS * X)
        return pf_fail(err, "ip-adapter %s: image_proj.proj.weight has %lld rows, not %d tokens of %d", file,
                       (long long)shape[0], PF_IP_ADAPTER_TOKENS, X);
    a->embed_dim = (int)shape[1];
    a->num_tokens = PF_IP_ADAPTER_TOKENS;
    const int64_t NX = (int64_t)a->num_tokens * X, E = a->embed_dim;
    if (!(a->proj_w = pf_weights_loadf(w, be, err, 2, (int64_t[]){NX, E}, "image_proj.proj.weight")) ||
        !(a->proj_b = pf_weights_loadf(w, be, err, 1, (int64_t[]){NX}, "image_proj.proj.bias")) ||
        !(a->norm_w = pf_weights_loadf(w, be, err, 1, (int64_t[]){X}, "image_proj.norm.weight")) ||
        !(a->norm_b = pf_weights_loadf(w, be, err, 1, (int64_t[]){X}, "image_proj.norm.bias")))
        return pf_error_prefix(err, "ip-adapter %s", file);
    return 0;
}

/* IPAdapterPlusImageProjection from h94's keys (diffusers'
 * _convert_ip_adapter_image_proj_to_diffusers maps them the same way): latents
 * (1, N, H), proj_in (H, E), layers.i.{0,1}.*, proj_out (X, H), norm_out (X);
 * heads = to_q rows / 64 as diffusers takes them. */
static int load_plus(pf_ip_adapter *a, pf_weights *w, pf_backend *be, const char *file, pf_error *err) {
    const int64_t X = a->cross_dim;
    int64_t ls[PF_MAX_DIMS], ps[PF_MAX_DIMS], qs[PF_MAX_DIMS];
    if (pf_weights_shape(w, "image_proj.latents", ls) != 3 || ls[0] != 1 ||
        pf_weights_shape(w, "image_proj.proj_in.weight", ps) != 2 ||
        pf_weights_shape(w, "image_proj.layers.0.0.to_q.weight", qs) != 2)
        return pf_fail(err, "ip-adapter %s: a \"plus\" adapter without latents (1, N, H), proj_in and "
                            "layers.0.0.to_q matrices", file);
    const int64_t N = ls[1], H = ls[2], E = ps[1], inner = qs[0];
    if (inner % 64 || inner < 64)
        return pf_fail(err, "ip-adapter %s: layers.0.0.to_q has %lld rows, not heads of 64", file, (long long)inner);
    while (a->depth < 64) {
        char name[96];
        snprintf(name, sizeof name, "image_proj.layers.%d.0.to_q.weight", a->depth);
        if (!pf_weights_has(w, name)) break;
        a->depth++;
    }
    a->plus = 1;
    a->num_tokens = (int)N;
    a->hidden_dim = (int)H;
    a->embed_dim = (int)E;
    a->heads = (int)(inner / 64);
#define LD(dst, ...)                                                                                       \
    do {                                                                                                   \
        const int64_t sh_[] = __VA_ARGS__;                                                                 \
        if (!((dst) = pf_weights_loadf(w, be, err, sizeof sh_ / sizeof *sh_, sh_, "image_proj.%s", name))) \
            return pf_error_prefix(err, "ip-adapter %s", file);                                            \
    } while (0)
    char name[96];
#define NAME(...) snprintf(name, sizeof name, __VA_ARGS__)
    NAME("latents"); LD(a->latents, {1, N, H});
    NAME("proj_in.weight"); LD(a->proj_in_w, {H, E});
    NAME("proj_in.bias"); LD(a->proj_in_b, {H});
    NAME("proj_out.weight"); LD(a->proj_out_w, {X, H});
    NAME("proj_out.bias"); LD(a->proj_out_b, {X});
    NAME("norm_out.weight"); LD(a->norm_out_w, {X});
    NAME("norm_out.bias"); LD(a->norm_out_b, {X});
    a->blocks = PF_CALLOC((size_t)a->depth, sizeof *a->blocks);
    for (int i = 0; i < a->depth; i++) {
        pf_ip_resampler_block *b = &a->blocks[i];
        NAME("layers.%d.0.norm1.weight", i); LD(b->ln0_w, {H});
        NAME("layers.%d.0.norm1.bias", i); LD(b->ln0_b, {H});
        NAME("layers.%d.0.norm2.weight", i); LD(b->ln1_w, {H});
        NAME("layers.%d.0.norm2.bias", i); LD(b->ln1_b, {H});
        NAME("layers.%d.0.to_q.weight", i); LD(b->to_q, {inner, H});
        NAME("layers.%d.0.to_kv.weight", i); LD(b->to_kv, {2 * inner, H});
        NAME("layers.%d.0.to_out.weight", i); LD(b->to_out, {H, inner});
        NAME("layers.%d.1.0.weight", i); LD(b->ff_ln_w, {H});
        NAME("layers.%d.1.0.bias", i); LD(b->ff_ln_b, {H});
        NAME("layers.%d.1.1.weight", i); LD(b->ff1, {4 * H, H});
        NAME("layers.%d.1.3.weight", i); LD(b->ff2, {H, 4 * H});
        b->to_k = pf_slice0(b->to_kv, 0, inner);                       /* to_kv.chunk(2, dim=0) */
        b->to_v = pf_slice0(b->to_kv, inner, inner);
    }
#undef NAME
#undef LD
    return 0;
}

int pf_ip_adapter_load(pf_ip_adapter **out, pf_backend *be, const char *file, const pf_unet *unet, pf_error *err) {
    *out = NULL;
    pf_weights *w;
    if (pf_weights_open(&w, file, err)) return pf_error_prefix(err, "ip-adapter %s", file);
    pf_ip_adapter *a = PF_CALLOC(1, sizeof *a);
    const int plus = pf_weights_has(w, "image_proj.latents");
    if (load_attention(a, w, be, file, unet, err) ||
        (plus ? load_plus(a, w, be, file, err) : load_plain(a, w, be, file, err))) {
        pf_weights_close(w);
        pf_ip_adapter_free(a);
        return -1;
    }
    pf_weights_close(w);
    *out = a;
    return 0;
}

/* IPAdapterPlusImageProjection.forward on x (B, L, E): latents (B, N, H)
 * through the blocks (attention of the latents over cat(ln0(x), ln1(latents)),
 * heads of 64, then LayerNorm + GELU MLP, each with its residual), proj_out,
 * norm_out. */
static pf_tensor *resample(const pf_ip_adapter *a, const pf_tensor *x) {
    pf_backend *be = x->be;
    const int64_t B = x->shape[0], L = x->shape[1], N = a->num_tokens, H = a->hidden_dim, I = 64LL * a->heads;
    pf_tensor *lat = pf_new3(be, B, N, H);                              /* latents.repeat(B, 1, 1) */
    for (int64_t b = 0; b < B; b++) {
        pf_tensor *dst = pf_slice0(lat, b, 1);
        pf_copy(dst, a->latents);
        pf_free(dst);
    }
    pf_tensor *xi = pf_new3(be, B, L, H);                               /* proj_in(x) */
    pf_linear(xi, x, a->proj_in_w, a->proj_in_b);
    pf_tensor *xn = pf_new3(be, B, L, H), *ln = pf_new3(be, B, N, H), *kv = pf_new3(be, B, L + N, H);
    pf_tensor *q = pf_new3(be, B, N, I), *k = pf_new3(be, B, L + N, I), *v = pf_new3(be, B, L + N, I);
    pf_tensor *o = pf_new3(be, B, N, I), *y = pf_new3(be, B, N, H), *f = pf_new3(be, B, N, 4 * H);
    for (int i = 0; i < a->depth; i++) {
        const pf_ip_resampler_block *bl = &a->blocks[i];
        pf_layer_norm(xn, xi, bl->ln0_w, bl->ln0_b, 1e-5f);            /* ln0(x) */
        pf_layer_norm(ln, lat, bl->ln1_w, bl->ln1_b, 1e-5f);           /* ln1(latents) */
        pf_concat(kv, xn, ln, 1);                                       /* (B, L + N, H) */
        pf_linear(q, ln, bl->to_q, NULL);
        pf_linear(k, kv, bl->to_k, NULL);
        pf_linear(v, kv, bl->to_v, NULL);
        pf_attention(o, q, k, v, a->heads, 0);                          /* (B, N, I) */
        pf_linear(y, o, bl->to_out, NULL);
        pf_add(lat, lat, y);                                            /* attn(...) + residual (addition commutes) */
        pf_layer_norm(y, lat, bl->ff_ln_w, bl->ff_ln_b, 1e-5f);
        pf_linear(f, y, bl->ff1, NULL);                                 /* (B, N, 4H) */
        pf_activation(f, f, PF_ACT_GELU);
        pf_linear(y, f, bl->ff2, NULL);
        pf_add(lat, lat, y);                                            /* ff(latents) + latents */
    }
    pf_tensor *p = pf_new3(be, B, N, a->cross_dim), *out = pf_new3(be, B, N, a->cross_dim);
    pf_linear(p, lat, a->proj_out_w, a->proj_out_b);
    pf_layer_norm(out, p, a->norm_out_w, a->norm_out_b, 1e-5f);
    pf_tensor *dead[] = {lat, xi, xn, ln, kv, q, k, v, o, y, f, p};
    for (size_t i = 0; i < sizeof dead / sizeof *dead; i++) pf_free(dead[i]);
    return out;
}

pf_tensor *pf_ip_adapter_project(const pf_ip_adapter *a, const pf_tensor *embeds) {
    if (a->plus) return resample(a, embeds);
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
