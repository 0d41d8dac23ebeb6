/* cli_images.h - what the image-making subcommands (generate, refine) share:
 * numeric options, the progress line of each stage, and writing the PNGs. */
#ifndef PF_CLI_IMAGES_H
#define PF_CLI_IMAGES_H

#include <stdint.h>

#include "error.h"
#include "vae.h"

/* Option values. Each prints "perflow: NAME must be ... (got 'S')" on stderr and
 * returns -1 when s is not what it must be; 0 with *out set otherwise. */
int pf_cli_int(const char *s, const char *name, long lo, long hi, long *out);
/* Any finite number: ranges that depend on other settings are the library's to check. */
int pf_cli_number(const char *s, const char *name, double *out);
/* A number in [lo, hi]. */
int pf_cli_number_in(const char *s, const char *name, double lo, double hi, double *out);
/* A seed: an integer in [0, 2^64). */
int pf_cli_seed(const char *s, const char *name, uint64_t *out);
/* --vae-tiling: auto, on or off. */
int pf_cli_vae_tiling(const char *s, pf_vae_tiling *out);

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
 * printed on stdout. text: key, value pairs for the PNG (see pf_png_write)
 * whose last pair must be "index", NULL-valued slot that this fills in.
 * Returns 0, or -1 with err set. */
int pf_cli_write_pngs(const char *out, const uint8_t *rgb, int n, int w, int h, int grid, const char **text,
                      pf_error *err);

/* 1 when path ends in ".png" and has a name before it. */
int pf_cli_is_png_path(const char *path);

#endif
