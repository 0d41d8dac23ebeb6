/* cmd_refine.c - `perflow refine`: the PeRFlow refiner, a ControlNet-Tile img2img pass
 * that takes an image (typically a 512 px first stage) to 1024 px. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli_images.h"
#include "commands.h"
#include "image.h"
#include "pipeline.h"
#include "request.h"

static void refine_usage(FILE *f) {
    fprintf(f,
            "usage: perflow refine --model DIR|FILE.safetensors [--model-config DIR] [--delta PATH]\n"
            "                      [--lora PATH[:SCALE]]... --controlnet DIR[:SCALE] --image IN.png --out OUT.png\n"
            "                      [--controlnet DIR[:SCALE] --control-image FILE]...\n"
            "                      [--prompt TEXT] [--negative-prompt TEXT] [--size 1024] [--steps 4]\n"
            "                      [--guidance 7.5] [--strength 1.0] [--controlnet-scale 1.0] [--seed 0]\n"
            "                      [--prediction-type T] [--windows K] [--clip-skip 0]\n"
            "                      [--vae-tiling auto|on|off] [--device auto|cpu|cuda|cuda:N] [--threads N]\n\n"
            "Runs diffusers' StableDiffusionControlNetImg2ImgPipeline with the PeRFlow sampler, as the\n"
            "original PeRFlow predictor's refiner: IN (PNG or JPEG, converted to RGB as Pillow's\n"
            "convert(\"RGB\") does) is scaled so its short side is --size, each side rounded to a\n"
            "multiple of 64 (Python's round), with Pillow's Lanczos; that image is both the img2img\n"
            "input and the ControlNet condition. --size 0 keeps IN's own size (multiples of 8).\n"
            "--model, --model-config, --delta and --lora as for perflow generate (see its --help): an\n"
            "SD-1.5 base as a folder or a single file, PeRFlow delta weights for its UNet, LoRAs fused\n"
            "at load. The --controlnet without a --control-image is the ControlNet-Tile (diffusers\n"
            "layout, e.g. control_v11f1e_sd15_tile, used as published), conditioned on the refined\n"
            "image; each further --controlnet DIR followed by --control-image FILE adds a ControlNet\n"
            "with its own condition image (their residuals are summed, as MultiControlNetModel). A\n"
            "net's conditioning scale is its :SCALE, else --controlnet-scale.\n"
            "--strength in (0, 1]: img2img keeps the last min(int(steps * strength), steps) timesteps\n"
            "and noises the encoded image to the first of them. The seed seeds a fresh\n"
            "torch.manual_seed(seed) generator, so the same seed gives diffusers' image.\n"
            "Defaults are the predictor's: prompt \"" PF_REFINE_PROMPT "\", negative prompt\n"
            "\"" PF_REFINE_NEGATIVE_PROMPT "\".\n"
            "--prediction-type and --windows default as for perflow generate: the model's scheduler\n"
            "config when it is a PeRFlowScheduler's, else diff_eps (SD-1.x/2.x), with 4 windows.\n"
            "--vae-tiling: encode and decode in tiles as diffusers' enable_vae_tiling() (on), never\n"
            "(off), or only where an untiled pass would not fit the device's memory (auto, the default).\n");
}

int cmd_refine(int argc, char **argv) {
    enum { O_CONTROLNET = 256, O_IMAGE, O_SIZE, O_STRENGTH, O_CNSCALE, O_TILING, O_MODEL_CONFIG, O_LORA,
           O_CONTROL_IMAGE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},        {"delta", required_argument, 0, 'd'},
        {"controlnet", required_argument, 0, O_CONTROLNET}, {"image", required_argument, 0, O_IMAGE},
        {"out", required_argument, 0, 'o'},          {"prompt", required_argument, 0, 'p'},
        {"negative-prompt", required_argument, 0, 'n'}, {"size", required_argument, 0, O_SIZE},
        {"steps", required_argument, 0, 's'},        {"guidance", required_argument, 0, 'g'},
        {"strength", required_argument, 0, O_STRENGTH}, {"controlnet-scale", required_argument, 0, O_CNSCALE},
        {"seed", required_argument, 0, 'S'},         {"prediction-type", required_argument, 0, 'P'},
        {"windows", required_argument, 0, 'K'},      {"clip-skip", required_argument, 0, 'c'},
        {"vae-tiling", required_argument, 0, O_TILING}, {"device", required_argument, 0, 'v'},
        {"threads", required_argument, 0, 't'},      {"help", no_argument, 0, 'h'},
        {"model-config", required_argument, 0, O_MODEL_CONFIG}, {"lora", required_argument, 0, O_LORA},
        {"control-image", required_argument, 0, O_CONTROL_IMAGE},
        {0, 0, 0, 0},
    };
    pf_request rq; /* the refine stage alone; pf_request_resolve decides what the flags leave */
    pf_request_init(&rq);
    rq.txt2img = 0;
    rq.refine = 1;
    pf_refine_params *prm = &rq.ref;
    const char *image = NULL, *out = NULL, *device = NULL;
    long v, threads = 0;
    double d;
    int c, rc = 2;
    pf_error err = {0};
    pf_cli_model m;
    pf_cli_model_init(&m);
    pf_cli_controls nets = {0};
    pf_backend *be = NULL;
    pf_pipeline *pipe = NULL;
    float *images = NULL;
    uint8_t *input = NULL, *rgb = NULL;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': m.spec.model = optarg; break;
        case 'd': m.spec.delta = optarg; break;
        case O_MODEL_CONFIG: m.spec.model_config = optarg; break;
        case O_LORA: if (pf_cli_model_add_lora(&m, optarg)) goto done; break;
        case O_CONTROLNET: if (pf_cli_controls_add_net(&nets, optarg)) goto done; break;
        case O_CONTROL_IMAGE: if (pf_cli_controls_add_image(&nets, optarg)) goto done; break;
        case O_IMAGE: image = optarg; break;
        case 'o': out = optarg; break;
        case 'p': prm->prompt = optarg; break;
        case 'n': prm->negative_prompt = optarg; break;
        case 'v': device = optarg; break;
        case 'P': prm->prediction_type = optarg; break;
        /* size and strength: any number here; their limits (a size that rounds to 0 or
         * past the maximum, strength outside (0, 1]) are the library's, exit status 1 */
        case O_SIZE: if (pf_cli_int(optarg, "--size", 0, 1L << 20, &v)) goto done; prm->size = (int)v; break;
        case O_STRENGTH: if (pf_cli_number(optarg, "--strength", &d)) goto done; prm->strength = (float)d; break;
        case O_CNSCALE: if (pf_cli_number(optarg, "--controlnet-scale", &d)) goto done; prm->controlnet_scale = (float)d; break;
        case 's': if (pf_cli_int(optarg, "--steps", 1, 1000, &v)) goto done; prm->steps = (int)v; break;
        case 'K': if (pf_cli_int(optarg, "--windows", 1, 1000, &v)) goto done; prm->windows = (int)v; break;
        case 'c': if (pf_cli_int(optarg, "--clip-skip", 0, 64, &v)) goto done; prm->clip_skip = (int)v; break;
        case 't': if (pf_cli_int(optarg, "--threads", 0, 1024, &threads)) goto done; break;
        case 'S': if (pf_cli_seed(optarg, "--seed", &prm->seed)) goto done; break;
        case 'g': if (pf_cli_number_in(optarg, "--guidance", 0, 100, &d)) goto done; prm->guidance = (float)d; break;
        case O_TILING: if (pf_cli_vae_tiling(optarg, &prm->vae_tiling)) goto done; break;
        case 'h': refine_usage(stdout); rc = 0; goto done;
        default: refine_usage(stderr); goto done;
        }
    }
    if (!m.spec.model || !nets.n || !image || !out || optind != argc) {
        if (optind != argc) fprintf(stderr, "perflow: unexpected argument '%s'\n", argv[optind]);
        refine_usage(stderr);
        goto done;
    }
    if (!pf_cli_is_png_path(out)) {
        fprintf(stderr, "perflow: --out must name a .png file (got '%s')\n", out);
        goto done;
    }
    if (pf_cli_controls_tiles(&nets) != 1) {
        fprintf(stderr, "perflow: refine needs exactly one --controlnet DIR without a --control-image (the "
                        "ControlNet-Tile), got %d\n", pf_cli_controls_tiles(&nets));
        goto done;
    }

    rc = 1;
    int W, H;
    pf_control controls[PF_MAX_CONTROLS];
    /* the input first: a bad image fails before any model is loaded */
    if (pf_image_read(image, &input, &prm->image_width, &prm->image_height, &err)) goto done;
    prm->images = input;
    if (!(be = pf_backend_open(device, (int)threads, &err)) || pf_pipeline_load_model(&pipe, be, &m.spec, &err))
        goto done;
    pf_cli_model_report(&m);
    /* the tile is net 0, conditioned on the refined image (image NULL); the pairs follow */
    /* condition images: at most 16 x the input image's pixels */
    if (pf_cli_controls_attach(&nets, pipe, prm->controlnet_scale, 16L * prm->image_width * prm->image_height,
                               controls + 1, &prm->n_controls, &err))
        goto done;
    for (int i = 0; i < nets.n; i++)
        if (!nets.net[i].image) controls[0] = (pf_control){0, NULL, 0, 0, (float)nets.net[i].scale};
    prm->controlnet_scale = controls[0].scale;
    if (prm->n_controls) {
        prm->n_controls++;
        prm->controls = controls;
    }
    pf_request_resolve(pipe, &rq);
    if (pf_request_check(pipe, &rq, NULL, &err)) goto done;
    pf_refine_output_size(prm, &W, &H);
    const size_t px = (size_t)W * H * 3;
    images = malloc(px * sizeof *images);
    rgb = malloc(px);
    if (!images || !rgb) {
        pf_fail(&err, "out of memory for an image of %d x %d", W, H);
        goto done;
    }
    pf_cli_progress ps;
    pf_cli_progress_init(&ps, "refine");
    prm->progress = pf_cli_on_progress;
    prm->user = &ps;
    if (pf_pipeline_refine(pipe, prm, images, &err)) goto done;
    pf_image_to_u8(rgb, images, (long)px);

    if (pf_cli_write_pngs(out, rgb, 1, W, H, 0, &rq, pipe, &m, &nets, NULL, image, &err)) goto done;
    rc = 0;
done:
    if (rc == 1) fprintf(stderr, "perflow: %s\n", err.msg);
    free(images);
    free(input);
    free(rgb);
    pf_pipeline_free(pipe);
    pf_backend_free(be);
    pf_cli_controls_free(&nets);
    pf_cli_model_free(&m);
    return rc;
}
