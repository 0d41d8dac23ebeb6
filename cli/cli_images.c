/* cli_images.c - options, progress and PNG output of generate and refine (cli_images.h). */
#include "cli_images.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "image.h"

int pf_cli_int(const char *s, const char *name, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "perflow: %s must be an integer in [%ld, %ld] (got '%s')\n", name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int pf_cli_number(const char *s, const char *name, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v)) {
        fprintf(stderr, "perflow: %s must be a number (got '%s')\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

int pf_cli_number_in(const char *s, const char *name, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "perflow: %s must be a number in [%g, %g] (got '%s')\n", name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int pf_cli_pair(const char *s, const char *name, long lo, long hi, long out[2]) {
    char *end;
    const char *at = s;
    for (int i = 0; i < 2; i++) {
        errno = 0;
        long v = strtol(at, &end, 10);
        if (errno || end == at || *at == ' ' || *at == '+' || v < lo || v > hi || *end != (i ? '\0' : ',')) {
            fprintf(stderr, "perflow: %s must be two integers in [%ld, %ld] as A,B (got '%s')\n", name, lo, hi, s);
            return -1;
        }
        out[i] = v;
        at = end + 1;
    }
    return 0;
}

int pf_cli_seed(const char *s, const char *name, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s || s[0] == '-' || s[0] == '+' || s[0] == ' ') {
        fprintf(stderr, "perflow: %s must be an integer in [0, 2^64) (got '%s')\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

void pf_cli_split_scale(const char *arg, char **path, double *scale, int *has_scale) {
    const char *colon = strrchr(arg, ':');
    char *end;
    *has_scale = 0;
    *scale = 1.0;
    if (colon && colon > arg && colon[1]) {
        errno = 0;
        double v = strtod(colon + 1, &end);
        if (!errno && !*end && isfinite(v)) {
            *scale = v;
            *has_scale = 1;
            *path = strndup(arg, (size_t)(colon - arg));
            PF_CHECK(*path != NULL);
            return;
        }
    }
    *path = PF_STRDUP(arg);
}

void pf_cli_model_init(pf_cli_model *m) {
    memset(m, 0, sizeof *m);
    m->spec.loras = m->loras;
    m->spec.lora_reports = m->reports;
}

int pf_cli_model_add_lora(pf_cli_model *m, const char *arg) {
    if (m->spec.n_loras == PF_MAX_LORAS) {
        fprintf(stderr, "perflow: at most %d --lora options\n", PF_MAX_LORAS);
        return -1;
    }
    int i = m->spec.n_loras++, has;
    double scale;
    pf_cli_split_scale(arg, &m->paths[i], &scale, &has);
    m->loras[i] = (pf_lora_spec){m->paths[i], (float)scale};
    return 0;
}

void pf_cli_model_report(const pf_cli_model *m) {
    for (int i = 0; i < m->spec.n_loras; i++) {
        const pf_lora_report *r = &m->reports[i];
        fprintf(stderr, "perflow: lora %s (%s, scale %g): %d of %d tensors matched\n", m->paths[i],
                pf_lora_format_name(r->format), (double)m->loras[i].scale, r->matched, r->total);
        if (r->unmatched)
            fprintf(stderr, "perflow: warning: lora %s: %d tensors matched no weight of the model: %s\n", m->paths[i],
                    r->unmatched, r->unmatched_keys);
    }
}

void pf_cli_model_describe(const pf_cli_model *m, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < m->spec.n_loras && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s:%g", i ? ", " : "", m->paths[i], (double)m->loras[i].scale);
}

void pf_cli_model_free(pf_cli_model *m) {
    for (int i = 0; i < m->spec.n_loras; i++) free(m->paths[i]);
    memset(m, 0, sizeof *m);
}

int pf_cli_controls_add_net(pf_cli_controls *c, const char *arg) {
    if (c->n == PF_MAX_CONTROLS) {
        fprintf(stderr, "perflow: at most %d --controlnet options\n", PF_MAX_CONTROLS);
        return -1;
    }
    pf_cli_split_scale(arg, &c->net[c->n].dir, &c->net[c->n].scale, &c->net[c->n].has_scale);
    c->n++;
    return 0;
}

int pf_cli_controls_add_image(pf_cli_controls *c, const char *path) {
    /* a --control-image belongs to the --controlnet just before it: pairs read in
     * order, and a net given without one (the refiner's tile) stays without */
    if (c->n && !c->net[c->n - 1].image) {
        c->net[c->n - 1].image = path;
        return 0;
    }
    fprintf(stderr, "perflow: --control-image '%s' must follow the --controlnet DIR it conditions\n", path);
    return -1;
}

int pf_cli_controls_tiles(const pf_cli_controls *c) {
    int n = 0;
    for (int i = 0; i < c->n; i++) n += !c->net[i].image;
    return n;
}

int pf_cli_controls_attach(pf_cli_controls *c, pf_pipeline *p, double default_scale, long max_pixels,
                           pf_control *controls, int *n,
                           pf_error *err) {
    const char *dirs[PF_MAX_CONTROLS];
    int order[PF_MAX_CONTROLS], k = 0;
    for (int pass = 0; pass < 2; pass++) /* the tile first: net 0 is the refiner's */
        for (int i = 0; i < c->n; i++)
            if (!c->net[i].image == !pass) order[k++] = i;
    *n = 0;
    for (int j = 0; j < c->n; j++) {
        int i = order[j];
        dirs[j] = c->net[i].dir;
        if (!c->net[i].has_scale) c->net[i].scale = default_scale;
        if (!c->net[i].image) continue;
        if (!c->net[i].rgb &&
            pf_image_read_max(c->net[i].image, max_pixels, &c->net[i].rgb, &c->net[i].w, &c->net[i].h, err))
            return -1;
        controls[(*n)++] = (pf_control){j, c->net[i].rgb, c->net[i].w, c->net[i].h, (float)c->net[i].scale};
    }
    return c->n ? pf_pipeline_set_controlnets(p, dirs, c->n, err) : 0;
}

void pf_cli_controls_describe(const pf_cli_controls *c, char *buf, size_t n, const char **tile) {
    size_t used = 0;
    buf[0] = '\0';
    *tile = NULL;
    for (int i = 0; i < c->n; i++) {
        if (!c->net[i].image) {
            *tile = c->net[i].dir;
        } else if (used < n) {
            used += (size_t)snprintf(buf + used, n - used, "%s%s:%g=%s", used ? ", " : "", c->net[i].dir,
                                     c->net[i].scale, c->net[i].image);
        }
    }
}

void pf_cli_controls_free(pf_cli_controls *c) {
    for (int i = 0; i < c->n; i++) {
        free(c->net[i].dir);
        free(c->net[i].rgb);
    }
    memset(c, 0, sizeof *c);
}

int pf_cli_ips_add_adapter(pf_cli_ips *c, const char *arg) {
    if (c->n == PF_MAX_IP_ADAPTERS) {
        fprintf(stderr, "perflow: at most %d --ip-adapter options\n", PF_MAX_IP_ADAPTERS);
        return -1;
    }
    pf_cli_split_scale(arg, &c->ip[c->n].file, &c->ip[c->n].scale, &c->ip[c->n].has_scale);
    if (!c->ip[c->n].has_scale) c->ip[c->n].scale = 1.0;
    c->n++;
    return 0;
}

int pf_cli_ips_add_image(pf_cli_ips *c, const char *path) {
    if (c->n && !c->ip[c->n - 1].image) {
        c->ip[c->n - 1].image = path;
        return 0;
    }
    fprintf(stderr, "perflow: --ip-image '%s' must follow the --ip-adapter FILE it prompts\n", path);
    return -1;
}

int pf_cli_ips_attach(pf_cli_ips *c, pf_pipeline *p, const char *model, pf_ip_image *ips, int *n, pf_error *err) {
    *n = 0;
    if (!c->n) return 0;
    const char *files[PF_MAX_IP_ADAPTERS];
    for (int i = 0; i < c->n; i++) {
        if (!c->ip[i].image) return pf_fail(err, "--ip-adapter %s has no --ip-image after it", c->ip[i].file);
        if (!c->ip[i].rgb && pf_image_read(c->ip[i].image, &c->ip[i].rgb, &c->ip[i].w, &c->ip[i].h, err)) return -1;
        files[i] = c->ip[i].file;
        ips[i] = (pf_ip_image){i, c->ip[i].rgb, c->ip[i].w, c->ip[i].h, (float)c->ip[i].scale};
    }
    char def[4096];
    const char *enc = c->encoder;
    if (!enc) { /* the model folder's image_encoder/, when it has one */
        struct stat st;
        snprintf(def, sizeof def, "%s/image_encoder", model);
        if (stat(def, &st) || !S_ISDIR(st.st_mode))
            return pf_fail(err, "--ip-adapter needs an image encoder: --image-encoder DIR (model %s has no "
                                "image_encoder/ folder)", model);
        enc = def;
    }
    if (pf_pipeline_set_ip_adapters(p, files, c->n, enc, err)) return -1;
    snprintf(c->encoder_used, sizeof c->encoder_used, "%s", enc);
    *n = c->n;
    return 0;
}

void pf_cli_ips_describe(const pf_cli_ips *c, char *buf, size_t n, const char **encoder) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < c->n && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s:%g=%s", i ? ", " : "", c->ip[i].file, c->ip[i].scale,
                                 c->ip[i].image);
    *encoder = c->n && c->encoder_used[0] ? c->encoder_used : NULL;
}

void pf_cli_ips_free(pf_cli_ips *c) {
    for (int i = 0; i < c->n; i++) {
        free(c->ip[i].file);
        free(c->ip[i].rgb);
    }
    memset(c, 0, sizeof *c);
}

int pf_cli_vae_tiling(const char *s, pf_vae_tiling *out) {
    pf_error err;
    if (pf_vae_tiling_parse(out, s, &err) == 0) return 0;
    fprintf(stderr, "perflow: --vae-tiling must be auto, on or off (got '%s')\n", s);
    return -1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void pf_cli_progress_init(pf_cli_progress *p, const char *stage) {
    p->tty = isatty(2);
    p->start = now();
    p->stage = stage;
}

void pf_cli_on_progress(void *user, int step, int total) {
    pf_cli_progress *ps = user;
    double el = now() - ps->start;
    if (ps->tty) {
        int filled = step * 30 / total;
        fprintf(stderr, "\r%-8s [%.*s%*s] step %d/%d %.1fs", ps->stage, filled, "==============================",
                30 - filled, "", step, total, el);
        if (step == total) fputc('\n', stderr);
    } else {
        fprintf(stderr, "%s step %d/%d %.2fs\n", ps->stage, step, total, el);
    }
}

int pf_cli_is_png_path(const char *path) {
    size_t n = strlen(path);
    return n >= 5 && !strcmp(path + n - 4, ".png");
}

int pf_cli_write_pngs(const char *out, const uint8_t *rgb, int n, int w, int h, int grid, const pf_request *rq,
                      const pf_pipeline *p, const pf_cli_model *m, const pf_cli_controls *nets, const pf_cli_ips *ips,
                      const char *input, pf_error *err) {
    const size_t px = (size_t)w * h * 3, olen = strlen(out);
    char loras[4096], controls[4096], prompts[4096] = "";
    const char *tile = NULL, *encoder = NULL;
    pf_cli_model_describe(m, loras, sizeof loras);
    pf_cli_controls_describe(nets, controls, sizeof controls, &tile);
    if (ips) pf_cli_ips_describe(ips, prompts, sizeof prompts, &encoder);
    const pf_provenance provenance = {.rq = rq, .sdxl = pf_pipeline_family(p) == PF_FAMILY_SDXL,
                                      .model = m->spec.model, .model_config = m->spec.model_config,
                                      .delta = m->spec.delta, .loras = loras, .controlnets = controls,
                                      .ip_adapters = prompts, .image_encoder = encoder,
                                      .refine_controlnet = tile, .input = input, .out_width = w, .out_height = h};
    const pf_provenance *prov = &provenance;
    pf_provenance_text *text = PF_MALLOC(sizeof *text);
    int rc = -1;
    if (n == 1 || grid) {
        int gw = w, gh = h;
        uint8_t *sheet = n > 1 ? pf_image_grid(rgb, n, w, h, &gw, &gh) : NULL;
        pf_provenance_fill(text, prov, n > 1 ? "grid" : "0");
        rc = pf_png_write(out, sheet ? sheet : rgb, gw, gh, text->kv, err);
        free(sheet);
        if (!rc) printf("%s\n", out);
        free(text);
        return rc;
    }
    for (int i = 0; i < n; i++) {
        char path[4096], index[16];
        snprintf(path, sizeof path, "%.*s-%d.png", (int)(olen - 4), out, i);
        snprintf(index, sizeof index, "%d", i);
        pf_provenance_fill(text, prov, index);
        if (pf_png_write(path, rgb + px * i, w, h, text->kv, err)) goto done;
        printf("%s\n", path);
    }
    rc = 0;
done:
    free(text);
    return rc;
}
