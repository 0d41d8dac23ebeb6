/* model_dir.c - locating the files of a diffusers-layout model folder. */
#include "model_dir.h"

#include <string.h>
#include <sys/stat.h>

#include "config.h"

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int pf_model_dir_check(const char *root, pf_error *err) {
    struct stat st;
    if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode))
        return pf_fail(err, "%s: not a model folder (no such directory)", root);
    char p[4096];
    if (pf_model_file(p, sizeof p, root, NULL, "model_index.json", err)) return -1;
    pf_config *c;
    if (pf_config_load(&c, p, err)) return -1;
    pf_config_free(c);
    return 0;
}

int pf_model_file(char *out, size_t n, const char *root, const char *component, const char *file, pf_error *err) {
    int len = component ? snprintf(out, n, "%s/%s/%s", root, component, file) : snprintf(out, n, "%s/%s", root, file);
    if (len < 0 || (size_t)len >= n) return pf_fail(err, "%s: path too long", root);
    if (!is_file(out)) return pf_fail(err, "%s: missing file", out);
    return 0;
}

int pf_model_weights(char *out, size_t n, const char *root, const char *component, int prefer_fp16,
                     pf_error *err) {
    /* transformers components (text_encoder, SDXL's text_encoder_2) name their weights model.* */
    const char *stem = component && !strncmp(component, "text_encoder", 12) ? "model" : "diffusion_pytorch_model";
    char names[4][256];
    snprintf(names[0], sizeof names[0], "%s.safetensors", stem);
    snprintf(names[1], sizeof names[1], "%s.safetensors.index.json", stem);
    snprintf(names[2], sizeof names[2], "%s.fp16.safetensors", stem);
    snprintf(names[3], sizeof names[3], "%s.safetensors.index.fp16.json", stem);
    static const int order[2][4] = {{0, 1, 2, 3}, {2, 3, 0, 1}};
    for (int i = 0; i < 4; i++)
        if (pf_model_file(out, n, root, component, names[order[prefer_fp16 ? 1 : 0][i]], NULL) == 0) return 0;
    return pf_fail(err, "%s%s%s: no weights (looked for %s, %s and their fp16 variants)", root, component ? "/" : "",
                   component ? component : "", names[0], names[1]);
}
