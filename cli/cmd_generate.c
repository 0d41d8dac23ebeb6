/* cmd_generate.c - `perflow generate`: PeRFlow text-to-image to PNG files, and with
 * --refine the 1024 px refiner after it (the original PeRFlow predictor's chain). */
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

static void generate_usage(FILE *f) {
    fprintf(f,
            "usage: perflow generate --model DIR|FILE.safetensors [--model-config DIR] [--delta PATH]\n"
            "                        [--lora PATH[:SCALE]]... --prompt TEXT --out FILE.png\n"
            "                        [--negative-prompt TEXT] [--steps 4] [--guidance 4.5] [--seed 0]\n"
            "                        [--width 512] [--height 512] [--num-images 1] [--grid]\n"
            "                        [--prediction-type T] [--windows K] [--clip-skip 0] [--threads N]\n"
            "                        [--prompt-2 TEXT] [--negative-prompt-2 TEXT] [--original-size W,H]\n"
            "                        [--crop-coords X,Y] [--target-size W,H]\n"
            "                        [--vae-tiling auto|on|off] [--device auto|cpu|cuda|cuda:N]\n"
            "                        [--controlnet DIR[:SCALE] --control-image FILE]... [--controlnet-scale 1.0]\n"
            "                        [--ip-adapter FILE[:SCALE] --ip-image FILE]... [--image-encoder DIR]\n"
            "                        [--refine --controlnet DIR[:SCALE] [--refine-size 1024] [--refine-steps 4]\n"
            "                         [--refine-prompt TEXT] [--refine-negative-prompt TEXT] [--refine-guidance 7.5]\n"
            "                         [--refine-strength 1.0]]\n\n"
            "Runs diffusers' StableDiffusionPipeline with the PeRFlow sampler on the CPU (float32)\n"
            "or a CUDA GPU (float16). --device auto (the default) takes $PERFLOW_DEVICE when set,\n"
            "else the first GPU when this build has CUDA and a GPU is present, else the CPU;\n"
            "--threads applies to the CPU.\n"
            "--model is a diffusers-layout folder (any component's weights may be sharded) or a\n"
            "single-file checkpoint in the original LDM layout (.safetensors; .ckpt pickles are\n"
            "refused). A single file's architecture is recognised from its tensors (SD-1.x,\n"
            "SD-2.x or SDXL, whose configs the project ships in configs/); --model-config DIR takes the\n"
            "configs, tokenizer and scheduler of a diffusers folder instead (diffusers'\n"
            "from_single_file(config=DIR)). --delta adds PeRFlow delta weights to the UNet (a\n"
            ".safetensors file, an index, or a folder holding diffusion_pytorch_model.safetensors).\n"
            "--lora fuses a LoRA (kohya/A1111, diffusers or PEFT keys) into the UNet and text encoder\n"
            "weights at SCALE (1.0): W += SCALE * alpha / rank * up @ down, after the delta, in the\n"
            "order given; SCALE is what follows the last ':' when it is a number, so paths with ':'\n"
            "work. Each LoRA's matched tensors are reported on stderr; keys that match nothing are a\n"
            "warning, a LoRA that matches nothing an error.\n"
            "Width and height: multiples of 8. With several images, FILE-0.png, FILE-1.png, ...;\n"
            "--grid writes one contact sheet FILE.png instead. Guidance <= 1 disables\n"
            "classifier-free guidance. The same seed gives the same image as diffusers with\n"
            "torch.Generator(\"cpu\").manual_seed(seed).\n"
            "Prediction types: diff_eps (released SD-1.5 PeRFlow models), ddim_eps (SDXL's), velocity;\n"
            "--prediction-type and --windows default to the model's scheduler config when it is a\n"
            "PeRFlowScheduler's; a base model's own scheduler config (PNDMScheduler, DDIMScheduler, ...)\n"
            "gives only the noise schedule, and the prediction type is then diff_eps for SD-1.x/2.x and\n"
            "ddim_eps for SDXL, with 4 windows. The PNG records the values used; perflow refine and\n"
            "perflow submit (the worker) take the same defaults.\n"
            "SDXL models (model_index.json: StableDiffusionXLPipeline) run diffusers'\n"
            "StableDiffusionXLPipeline: width and height default to 1024; --prompt-2 and\n"
            "--negative-prompt-2 go to the second text encoder (default: the prompt and negative prompt);\n"
            "without --negative-prompt the unconditional embeddings are zeros (force_zeros_for_empty_prompt),\n"
            "while --negative-prompt '' is encoded; --original-size, --crop-coords and --target-size are\n"
            "the time ids (diffusers' defaults: the image's size, 0,0, the image's size).\n"
            "--vae-tiling: decode in tiles as diffusers' enable_vae_tiling() (on), never (off), or\n"
            "only where an untiled decode would not fit the device's memory (auto, the default).\n\n"
            "ControlNets: each --controlnet DIR followed by a --control-image FILE (PNG or JPEG) is a\n"
            "text-to-image ControlNet (diffusers' StableDiffusionControlNetPipeline, for SDXL models\n"
            "StableDiffusionXLControlNetPipeline with SDXL's text_time ControlNets; several are summed\n"
            "as MultiControlNetModel); a --control-image belongs to the --controlnet just before it.\n"
            "A --controlnet without a --control-image is the refiner's ControlNet-Tile (--refine only).\n"
            "Each net's conditioning scale is its :SCALE, else --controlnet-scale (1.0).\n\n"
            "IP-Adapter (SD-1.x/2.x and SDXL; plain and Plus adapters): each --ip-adapter FILE (an\n"
            "ip-adapter .safetensors in h94/IP-Adapter's layout) followed by its --ip-image FILE (PNG\n"
            "or JPEG) is an image prompt, as diffusers' load_ip_adapter + set_ip_adapter_scale(SCALE,\n"
            "default 1.0). --image-encoder DIR: a CLIPVisionModelWithProjection folder with its\n"
            "preprocessor_config.json (default: the model folder's image_encoder/).\n\n"
            "--refine: then refine each image as `perflow refine` does (the ControlNet-Tile img2img\n"
            "refiner; see perflow refine --help) with the same model, delta, LoRAs, seed, prediction\n"
            "type, windows and tiling: the images are quantised to 8 bits first, as the PIL hand-over\n"
            "of the original predictor, so the result is exactly `perflow refine` of the first PNGs\n"
            "(one refine call for all of them, one generator seeded with --seed).\n");
}

int cmd_generate(int argc, char **argv) {
    enum { O_REFINE = 256, O_CONTROLNET, O_RSIZE, O_RSTEPS, O_RPROMPT, O_RNEG, O_RGUIDANCE, O_RSTRENGTH, O_CNSCALE,
           O_TILING, O_MODEL_CONFIG, O_LORA, O_CONTROL_IMAGE, O_PROMPT2, O_NEG2, O_ORIG, O_CROP, O_TARGET,
           O_IP_ADAPTER, O_IP_IMAGE, O_IMAGE_ENCODER };
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
        {"refine", no_argument, 0, O_REFINE},       {"controlnet", required_argument, 0, O_CONTROLNET},
        {"refine-size", required_argument, 0, O_RSIZE}, {"refine-steps", required_argument, 0, O_RSTEPS},
        {"refine-prompt", required_argument, 0, O_RPROMPT}, {"refine-negative-prompt", required_argument, 0, O_RNEG},
        {"refine-guidance", required_argument, 0, O_RGUIDANCE},
        {"refine-strength", required_argument, 0, O_RSTRENGTH},
        {"controlnet-scale", required_argument, 0, O_CNSCALE}, {"vae-tiling", required_argument, 0, O_TILING},
        {"model-config", required_argument, 0, O_MODEL_CONFIG}, {"lora", required_argument, 0, O_LORA},
        {"control-image", required_argument, 0, O_CONTROL_IMAGE},
        {"prompt-2", required_argument, 0, O_PROMPT2}, {"negative-prompt-2", required_argument, 0, O_NEG2},
        {"original-size", required_argument, 0, O_ORIG}, {"crop-coords", required_argument, 0, O_CROP},
        {"target-size", required_argument, 0, O_TARGET},
        {"ip-adapter", required_argument, 0, O_IP_ADAPTER}, {"ip-image", required_argument, 0, O_IP_IMAGE},
        {"image-encoder", required_argument, 0, O_IMAGE_ENCODER},
        {0, 0, 0, 0},
    };
    pf_request rq; /* what the flags set; pf_request_resolve decides the rest */
    pf_request_init(&rq);
    pf_txt2img_params *prm = &rq.gen;
    pf_refine_params *ref = &rq.ref;
    const char *out = NULL, *device = NULL;
    long v, threads = 0, pair[2];
    double d;
    int grid = 0, refine = 0, c, rc = 2;
    pf_error err = {0};
    pf_cli_model m;
    pf_cli_model_init(&m);
    pf_cli_controls nets = {0};
    pf_cli_ips ipa = {0};
    pf_ip_image ip_images[PF_MAX_IP_ADAPTERS];
    pf_backend *be = NULL;
    pf_pipeline *pipe = NULL;
    float *images = NULL;
    uint8_t *rgb = NULL;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': m.spec.model = optarg; break;
        case 'd': m.spec.delta = optarg; break;
        case O_MODEL_CONFIG: m.spec.model_config = optarg; break;
        case O_LORA: if (pf_cli_model_add_lora(&m, optarg)) goto done; break;
        case O_CONTROL_IMAGE: if (pf_cli_controls_add_image(&nets, optarg)) goto done; break;
        case O_IP_ADAPTER: if (pf_cli_ips_add_adapter(&ipa, optarg)) goto done; break;
        case O_IP_IMAGE: if (pf_cli_ips_add_image(&ipa, optarg)) goto done; break;
        case O_IMAGE_ENCODER: ipa.encoder = optarg; break;
        case 'p': prm->prompt = optarg; break;
        case 'n': prm->negative_prompt = optarg; break;
        case 'o': out = optarg; break;
        case 'v': device = optarg; break;
        case 'P': prm->prediction_type = optarg; break;
        case 'G': grid = 1; break;
        case 's': if (pf_cli_int(optarg, "--steps", 1, 1000, &v)) goto done; prm->steps = (int)v; break;
        case 'W': if (pf_cli_int(optarg, "--width", 8, 4096, &v)) goto done; prm->width = (int)v; break;
        case 'H': if (pf_cli_int(optarg, "--height", 8, 4096, &v)) goto done; prm->height = (int)v; break;
        case 'N': if (pf_cli_int(optarg, "--num-images", 1, 64, &v)) goto done; prm->num_images = (int)v; break;
        case 'K': if (pf_cli_int(optarg, "--windows", 1, 1000, &v)) goto done; prm->windows = (int)v; break;
        case 'c': if (pf_cli_int(optarg, "--clip-skip", 0, 64, &v)) goto done; prm->clip_skip = (int)v; break;
        case 't': if (pf_cli_int(optarg, "--threads", 0, 1024, &threads)) goto done; break;
        case 'S': if (pf_cli_seed(optarg, "--seed", &prm->seed)) goto done; break;
        case 'g': if (pf_cli_number_in(optarg, "--guidance", 0, 100, &d)) goto done; prm->guidance = (float)d; break;
        case O_REFINE: refine = 1; break;
        case O_CONTROLNET: if (pf_cli_controls_add_net(&nets, optarg)) goto done; break;
        case O_RSIZE: if (pf_cli_int(optarg, "--refine-size", 0, 1L << 20, &v)) goto done; ref->size = (int)v; break;
        case O_RSTEPS: if (pf_cli_int(optarg, "--refine-steps", 1, 1000, &v)) goto done; ref->steps = (int)v; break;
        case O_RPROMPT: ref->prompt = optarg; break;
        case O_RNEG: ref->negative_prompt = optarg; break;
        case O_RGUIDANCE:
            if (pf_cli_number_in(optarg, "--refine-guidance", 0, 100, &d)) goto done;
            ref->guidance = (float)d;
            break;
        case O_RSTRENGTH: if (pf_cli_number(optarg, "--refine-strength", &d)) goto done; ref->strength = (float)d; break;
        case O_CNSCALE: if (pf_cli_number(optarg, "--controlnet-scale", &d)) goto done; ref->controlnet_scale = (float)d; break;
        case O_TILING: if (pf_cli_vae_tiling(optarg, &prm->vae_tiling)) goto done; break;
        case O_PROMPT2: prm->prompt_2 = optarg; break;
        case O_NEG2: prm->negative_prompt_2 = optarg; break;
        /* W,H and X,Y on the command line; the time ids are (h, w) and (top, left) */
        case O_ORIG:
            if (pf_cli_pair(optarg, "--original-size", 1, 16384, pair)) goto done;
            prm->original_size[0] = (int)pair[1], prm->original_size[1] = (int)pair[0];
            break;
        case O_CROP:
            if (pf_cli_pair(optarg, "--crop-coords", 0, 16384, pair)) goto done;
            prm->crop_coords[0] = (int)pair[1], prm->crop_coords[1] = (int)pair[0];
            break;
        case O_TARGET:
            if (pf_cli_pair(optarg, "--target-size", 1, 16384, pair)) goto done;
            prm->target_size[0] = (int)pair[1], prm->target_size[1] = (int)pair[0];
            break;
        case 'h': generate_usage(stdout); rc = 0; goto done;
        default: generate_usage(stderr); goto done;
        }
    }
    if (!m.spec.model || !prm->prompt || !out || optind != argc) {
        if (optind != argc) fprintf(stderr, "perflow: unexpected argument '%s'\n", argv[optind]);
        generate_usage(stderr);
        goto done;
    }
    if (!pf_cli_is_png_path(out)) {
        fprintf(stderr, "perflow: --out must name a .png file (got '%s')\n", out);
        goto done;
    }
    int tiles = pf_cli_controls_tiles(&nets);
    if (refine && tiles != 1) {
        fprintf(stderr, "perflow: --refine needs --controlnet DIR (%s the refiner's ControlNet-Tile, given without a "
                        "--control-image)\n", tiles ? "exactly one:" : "");
        goto done;
    }
    if (tiles && !refine) {
        fprintf(stderr, "perflow: --controlnet is used by --refine only unless a --control-image FILE follows it "
                        "(a ControlNet in text-to-image needs its condition image)\n");
        goto done;
    }

    rc = 1;
    pf_control controls[PF_MAX_CONTROLS];
    be = pf_backend_open(device, (int)threads, &err);
    if (!be || pf_pipeline_load_model(&pipe, be, &m.spec, &err)) goto done;
    pf_cli_model_report(&m);
    rq.refine = refine;
    pf_request_resolve(pipe, &rq);
    /* no condition image needs more than 16 x the output's pixels (the worker's rule too) */
    if (pf_cli_controls_attach(&nets, pipe, ref->controlnet_scale, 16L * prm->width * prm->height, controls,
                               &prm->n_controls, &err))
        goto done;
    prm->controls = controls;
    if (pf_cli_ips_attach(&ipa, pipe, m.spec.model, ip_images, &prm->n_ip, &err)) goto done;
    prm->ip_images = ip_images;
    /* the tile is net 0, which a refine stage without controls of its own takes;
     * everything the second stage needs is checked before the first runs */
    for (int i = 0; i < nets.n; i++)
        if (!nets.net[i].image) ref->controlnet_scale = (float)nets.net[i].scale;
    if (pf_request_check(pipe, &rq, NULL, &err)) goto done;
    size_t px = (size_t)prm->width * prm->height * 3;
    int W = prm->width, H = prm->height;
    if (refine) pf_refine_output_size(ref, &W, &H);
    const size_t out_px = (size_t)W * H * 3, most = px > out_px ? px : out_px;
    images = malloc(most * prm->num_images * sizeof *images);
    rgb = malloc(px * prm->num_images);
    if (!images || !rgb) {
        pf_fail(&err, "out of memory for %d images of %d x %d", prm->num_images, W, H);
        goto done;
    }
    pf_cli_progress ps;
    pf_cli_progress_init(&ps, "generate");
    prm->progress = pf_cli_on_progress;
    prm->user = &ps;
    if (pf_pipeline_txt2img(pipe, prm, images, &err)) goto done;
    pf_image_to_u8(rgb, images, (long)(px * prm->num_images));
    if (refine) {
        ps.stage = "refine";
        ref->images = rgb;
        ref->progress = pf_cli_on_progress;
        ref->user = &ps;
        if (pf_pipeline_refine(pipe, ref, images, &err)) goto done;
        uint8_t *fine = realloc(rgb, out_px * prm->num_images);
        if (!fine) {
            pf_fail(&err, "out of memory for %d images of %d x %d", prm->num_images, W, H);
            goto done;
        }
        rgb = fine;
        pf_image_to_u8(rgb, images, (long)(out_px * prm->num_images));
    }

    if (pf_cli_write_pngs(out, rgb, prm->num_images, W, H, grid, &rq, pipe, &m, &nets, &ipa, NULL, &err)) goto done;
    rc = 0;
done:
    if (rc == 1) fprintf(stderr, "perflow: %s\n", err.msg);
    free(images);
    free(rgb);
    pf_pipeline_free(pipe);
    pf_backend_free(be);
    pf_cli_controls_free(&nets);
    pf_cli_ips_free(&ipa);
    pf_cli_model_free(&m);
    return rc;
}
