/* cmd_generate.c - `perflow generate`: PeRFlow text-to-image to PNG files. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "commands.h"
#include "image.h"
#include "pipeline.h"

static void generate_usage(FILE *f) {
    fprintf(f,
            "usage: perflow generate --model DIR [--delta PATH] --prompt TEXT --out FILE.png\n"
            "                        [--negative-prompt TEXT] [--steps 4] [--guidance 4.5] [--seed 0]\n"
            "                        [--width 512] [--height 512] [--num-images 1] [--grid]\n"
            "                        [--prediction-type diff_eps] [--windows 4] [--clip-skip 0] [--threads N]\n"
            "                        [--device auto|cpu|cuda|cuda:N]\n\n"
            "Runs diffusers' StableDiffusionPipeline with the PeRFlow sampler on the CPU (float32)\n"
            "or a CUDA GPU (float16). --device auto (the default) takes $PERFLOW_DEVICE when set,\n"
            "else the first GPU when this build has CUDA and a GPU is present, else the CPU;\n"
            "--threads applies to the CPU.\n"
            "DIR is a diffusers-layout model folder; --delta adds PeRFlow delta weights to its\n"
            "UNet (a .safetensors file or a folder holding diffusion_pytorch_model.safetensors).\n"
            "With several images, FILE-0.png, FILE-1.png, ...; --grid writes one contact sheet\n"
            "FILE.png instead. Guidance <= 1 disables classifier-free guidance. The same seed\n"
            "gives the same image as diffusers with torch.Generator(\"cpu\").manual_seed(seed).\n"
            "Prediction types: diff_eps (released SD-1.5 PeRFlow models), ddim_eps, velocity.\n");
}

static int parse_int(const char *s, const char *name, long lo, long hi, long *out) {
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

typedef struct progress_state {
    int tty;
    double start;
} progress_state;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A bar redrawn in place on a terminal; one line per step otherwise (logs). */
static void on_progress(void *user, int step, int total) {
    progress_state *ps = user;
    double el = now() - ps->start;
    if (ps->tty) {
        int filled = step * 30 / total;
        fprintf(stderr, "\r[%.*s%*s] step %d/%d %.1fs", filled, "==============================", 30 - filled, "",
                step, total, el);
        if (step == total) fputc('\n', stderr);
    } else {
        fprintf(stderr, "step %d/%d %.2fs\n", step, total, el);
    }
}

int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"delta", required_argument, 0, 'd'},
        {"prompt", required_argument, 0, 'p'},      {"negative-prompt", required_argument, 0, 'n'},
        {"steps", required_argument, 0, 's'},       {"guidance", required_argument, 0, 'g'},
        {"seed", required_argument, 0, 'S'},        {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},      {"num-images", required_argument, 0, 'N'},
        {"prediction-type", required_argument, 0, 'P'}, {"windows", required_argument, 0, 'K'},
        {"clip-skip", required_argument, 0, 'c'},   {"threads", required_argument, 0, 't'},
        {"out", required_argument, 0, 'o'},         {"grid", no_argument, 0, 'G'},
        {"device", required_argument, 0, 'v'},      {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    pf_txt2img_params prm;
    pf_txt2img_defaults(&prm);
    prm.prompt = NULL;
    prm.prediction_type = "diff_eps";
    prm.windows = 4;
    const char *model = NULL, *delta = NULL, *out = NULL, *device = NULL;
    long v, threads = 0;
    int grid = 0, c;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'd': delta = optarg; break;
        case 'p': prm.prompt = optarg; break;
        case 'n': prm.negative_prompt = optarg; break;
        case 'o': out = optarg; break;
        case 'v': device = optarg; break;
        case 'P': prm.prediction_type = optarg; break;
        case 'G': grid = 1; break;
        case 's': if (parse_int(optarg, "--steps", 1, 1000, &v)) return 2; prm.steps = (int)v; break;
        case 'W': if (parse_int(optarg, "--width", 8, 4096, &v)) return 2; prm.width = (int)v; break;
        case 'H': if (parse_int(optarg, "--height", 8, 4096, &v)) return 2; prm.height = (int)v; break;
        case 'N': if (parse_int(optarg, "--num-images", 1, 64, &v)) return 2; prm.num_images = (int)v; break;
        case 'K': if (parse_int(optarg, "--windows", 1, 1000, &v)) return 2; prm.windows = (int)v; break;
        case 'c': if (parse_int(optarg, "--clip-skip", 0, 64, &v)) return 2; prm.clip_skip = (int)v; break;
        case 't': if (parse_int(optarg, "--threads", 0, 1024, &threads)) return 2; break;
        case 'S': {
            errno = 0;
            unsigned long long s = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-') {
                fprintf(stderr, "perflow: --seed must be an integer in [0, 2^64) (got '%s')\n", optarg);
                return 2;
            }
            prm.seed = s;
            break;
        }
        case 'g': {
            errno = 0;
            double g = strtod(optarg, &end);
            if (errno || *end || end == optarg || !(g >= 0 && g <= 100)) {
                fprintf(stderr, "perflow: --guidance must be a number in [0, 100] (got '%s')\n", optarg);
                return 2;
            }
            prm.guidance = (float)g;
            break;
        }
        case 'h': generate_usage(stdout); return 0;
        default: generate_usage(stderr); return 2;
        }
    }
    if (!model || !prm.prompt || !out || optind != argc) {
        if (optind != argc) fprintf(stderr, "perflow: unexpected argument '%s'\n", argv[optind]);
        generate_usage(stderr);
        return 2;
    }
    size_t olen = strlen(out);
    if (olen < 5 || strcmp(out + olen - 4, ".png")) {
        fprintf(stderr, "perflow: --out must name a .png file (got '%s')\n", out);
        return 2;
    }

    pf_error err = {{0}};
    pf_backend *be = pf_backend_open(device, (int)threads, &err);
    pf_pipeline *pipe = NULL;
    float *images = NULL;
    uint8_t *rgb = NULL, *sheet = NULL;
    int rc = 1;
    if (!be || pf_pipeline_load(&pipe, be, model, delta, &err) || pf_txt2img_check(pipe, &prm, &err)) goto done;
    const size_t px = (size_t)prm.width * prm.height * 3;
    images = malloc(px * prm.num_images * sizeof *images);
    rgb = malloc(px * prm.num_images);
    if (!images || !rgb) {
        pf_fail(&err, "out of memory for %d images of %d x %d", prm.num_images, prm.width, prm.height);
        goto done;
    }
    progress_state ps = {isatty(2), now()};
    prm.progress = on_progress;
    prm.user = &ps;
    if (pf_pipeline_txt2img(pipe, &prm, images, &err)) goto done;
    pf_image_to_u8(rgb, images, (long)(px * prm.num_images));

    char seed[32], steps[16], guidance[32], size[32], windows[16], index[16], skip[16];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)prm.seed);
    snprintf(steps, sizeof steps, "%d", prm.steps);
    snprintf(guidance, sizeof guidance, "%g", (double)prm.guidance);
    snprintf(size, sizeof size, "%dx%d", prm.width, prm.height);
    snprintf(windows, sizeof windows, "%d", prm.windows);
    snprintf(skip, sizeof skip, "%d", prm.clip_skip);
    const char *text[] = {"Software", "perflow", "prompt", prm.prompt,
                          "negative_prompt", prm.negative_prompt ? prm.negative_prompt : "",
                          "seed", seed, "steps", steps, "guidance", guidance, "size", size,
                          "prediction_type", prm.prediction_type, "windows", windows, "clip_skip", skip,
                          "model", model, "delta", delta ? delta : "", "index", index, NULL};
    if (prm.num_images == 1 || grid) {
        int gw = prm.width, gh = prm.height;
        const uint8_t *pix = rgb;
        if (prm.num_images > 1) pix = sheet = pf_image_grid(rgb, prm.num_images, prm.width, prm.height, &gw, &gh);
        snprintf(index, sizeof index, "%s", prm.num_images > 1 ? "grid" : "0");
        if (pf_png_write(out, pix, gw, gh, text, &err)) goto done;
        printf("%s\n", out);
    } else {
        for (int i = 0; i < prm.num_images; i++) {
            char path[4096];
            snprintf(path, sizeof path, "%.*s-%d.png", (int)(olen - 4), out, i);
            snprintf(index, sizeof index, "%d", i);
            if (pf_png_write(path, rgb + px * i, prm.width, prm.height, text, &err)) goto done;
            printf("%s\n", path);
        }
    }
    rc = 0;
done:
    if (rc) fprintf(stderr, "perflow: %s\n", err.msg);
    free(images);
    free(rgb);
    free(sheet);
    pf_pipeline_free(pipe);
    pf_backend_free(be);
    return rc;
}
