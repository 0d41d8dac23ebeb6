/* cli_images.h - what the image-making subcommands (generate, refine) share:
 * numeric options, the model options (--model, --model-config, --lora), the
 * ControlNet options (--controlnet, --control-image), the progress line of
 * each stage, and writing the PNGs. */
#ifndef PF_CLI_IMAGES_H
#define PF_CLI_IMAGES_H

#include <stdint.h>

#include "checkpoint.h"
#include "error.h"
#include "pipeline.h"
#include "provenance.h"
#include "vae.h"

/* Option values. Each prints "perflow: NAME must be ... (got 'S')" on stderr and
 * returns -1 when s is not what it must be; 0 with *out set otherwise. */
int pf_cli_int(const char *s, const char *name, long lo, long hi, long *out);
/* Any finite number: ranges that depend on other settings are the library's to check. */
int pf_cli_number(const char *s, const char *name, double *out);
/* A number in [lo, hi]. */
int pf_cli_number_in(const char *s, const char *name, double lo, double hi, double *out);
/* "A,B": two integers in [lo, hi] (SDXL's --original-size W,H and friends). */
int pf_cli_pair(const char *s, const char *name, long lo, long hi, long out[2]);
/* A seed: an integer in [0, 2^64). */
int pf_cli_seed(const char *s, const char *name, uint64_t *out);
/* --vae-tiling: auto, on or off. */
int pf_cli_vae_tiling(const char *s, pf_vae_tiling *out);

/* PATH[:SCALE]: the scale is what follows the last ':' when that parses as a
 * finite number, so that a path holding ':' still works ("a:b.safetensors" is
 * a path, "a:b.safetensors:0.5" that path at 0.5). *path is a new string (free
 * it); *has_scale says whether a scale was given. */
void pf_cli_split_scale(const char *arg, char **path, double *scale, int *has_scale);

/* The model options of generate and refine: --model, --model-config, --delta
 * and the repeatable --lora PATH[:SCALE] (scale 1.0 unless given). */
typedef struct pf_cli_model {
    pf_model_spec spec;
    pf_lora_spec loras[PF_MAX_LORAS];
    pf_lora_report reports[PF_MAX_LORAS];
    char *paths[PF_MAX_LORAS];
} pf_cli_model;
void pf_cli_model_init(pf_cli_model *m);
/* --lora ARG. Prints the usage error and returns -1 past PF_MAX_LORAS. */
int pf_cli_model_add_lora(pf_cli_model *m, const char *arg);
/* After loading: one line per LoRA on stderr, "perflow: lora PATH (FORMAT): M of
 * N tensors matched", and a warning listing the keys that matched nothing. */
void pf_cli_model_report(const pf_cli_model *m);
/* The LoRAs as "PATH:SCALE, ..." for the PNG text ("" when none). */
void pf_cli_model_describe(const pf_cli_model *m, char *buf, size_t n);
void pf_cli_model_free(pf_cli_model *m);

/* The ControlNet options: --controlnet DIR[:SCALE] and --control-image FILE,
 * repeatable. A --control-image belongs to the --controlnet just before it
 * (an error when that one has an image already or there is none); a
 * --controlnet left without one is the refiner's tile ControlNet
 * (it takes the refined image). A net without a scale takes --controlnet-scale. */
typedef struct pf_cli_controls {
    int n;
    struct {
        char *dir;
        const char *image;  /* NULL: the tile */
        double scale;
        int has_scale;
        uint8_t *rgb;       /* the image read (pf_cli_controls_read) */
        int w, h;
    } net[PF_MAX_CONTROLS];
} pf_cli_controls;
/* --controlnet ARG / --control-image PATH; each prints a usage error and
 * returns -1 on a misuse (too many nets, an image before any net or after
 * every net has one). */
int pf_cli_controls_add_net(pf_cli_controls *c, const char *arg);
int pf_cli_controls_add_image(pf_cli_controls *c, const char *path);
/* The number of nets without an image (tiles). */
int pf_cli_controls_tiles(const pf_cli_controls *c);
/* Reads every control image (PNG or JPEG; one of more than max_pixels pixels
 * is refused from its header, 0: only the decoder's own limits), gives each
 * net without a scale default_scale, attaches the nets to p (the tile, if any,
 * first: net 0) and fills controls[] with the nets that have an image (their
 * pf_control, for a txt2img or refine run); *n their count. Returns 0, or -1
 * with err set. */
int pf_cli_controls_attach(pf_cli_controls *c, pf_pipeline *p, double default_scale, long max_pixels,
                           pf_control *controls, int *n,
                           pf_error *err);
/* The nets with an image as "DIR:SCALE=IMAGE, ..." for the PNG text, and *tile
 * the tile's folder (NULL when none). */
void pf_cli_controls_describe(const pf_cli_controls *c, char *buf, size_t n, const char **tile);
void pf_cli_controls_free(pf_cli_controls *c);

/* The IP-Adapters of a run: --ip-adapter FILE[:SCALE] --ip-image FILE pairs (an
 * --ip-image belongs to the --ip-adapter just before it; every adapter needs
 * one) and --image-encoder DIR (default: the model folder's image_encoder/). */
typedef struct pf_cli_ips {
    int n;
    const char *encoder;
    char encoder_used[4096];  /* the encoder attached (pf_cli_ips_attach), "" before */
    struct {
        char *file;
        const char *image;
        double scale;       /* :SCALE, else 1.0 (load_ip_adapter's) */
        int has_scale;
        uint8_t *rgb;
        int w, h;
    } ip[PF_MAX_IP_ADAPTERS];
} pf_cli_ips;
/* --ip-adapter ARG / --ip-image PATH; each prints a usage error and returns -1
 * on a misuse (too many, an image before its adapter or a second one). */
int pf_cli_ips_add_adapter(pf_cli_ips *c, const char *arg);
int pf_cli_ips_add_image(pf_cli_ips *c, const char *path);
/* Reads every image prompt, attaches the adapters and the image encoder to p
 * (model: the --model argument, for the default encoder) and fills ips[] (*n).
 * Returns 0, or -1 with err set (an adapter without an image among them). */
int pf_cli_ips_attach(pf_cli_ips *c, pf_pipeline *p, const char *model, pf_ip_image *ips, int *n, pf_error *err);
void pf_cli_ips_free(pf_cli_ips *c);
/* The image prompts as "FILE:SCALE=IMAGE, ..." for the PNG text ("" when none),
 * and *encoder the image encoder they ran with (NULL when none; valid once
 * pf_cli_ips_attach succeeded). */
void pf_cli_ips_describe(const pf_cli_ips *c, char *buf, size_t n, const char **encoder);

/* Progress of one stage: a bar redrawn in place on a terminal, one line per
 * step otherwise (logs). Pass as the pipeline's progress callback with a
 * pf_cli_progress as user; stage names the stage ("generate", "refine"). */
typedef struct pf_cli_progress {
    int tty;
    double start;        /* CLOCK_MONOTONIC seconds when the command started */
    const char *stage;
} pf_cli_progress;
void pf_cli_progress_init(pf_cli_progress *p, const char *stage);
void pf_cli_on_progress(void *user, int step, int total);

/* Writes n w x h 8-bit RGB images to out (a .png path): one file when n is 1,
 * one contact sheet when grid, else OUT-0.png, OUT-1.png, ...; each path is
 * printed on stdout. Each PNG's text is the provenance (provenance.h) of the
 * resolved request rq run on p with model m, ControlNets nets and image prompts
 * ips (NULL: none; input: the refine stage's input image, or NULL), with its
 * index. Returns 0, or -1 with err set. */
int pf_cli_write_pngs(const char *out, const uint8_t *rgb, int n, int w, int h, int grid, const pf_request *rq,
                      const pf_pipeline *p, const pf_cli_model *m, const pf_cli_controls *nets, const pf_cli_ips *ips,
                      const char *input, pf_error *err);

/* 1 when path ends in ".png" and has a name before it. */
int pf_cli_is_png_path(const char *path);

#endif
