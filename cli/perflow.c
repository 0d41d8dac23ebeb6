/* perflow.c - main() of bin/perflow: dispatches to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"generate", cmd_generate, "PeRFlow text-to-image into PNG files (--refine: then the refiner)"},
    {"refine", cmd_refine, "the PeRFlow refiner: ControlNet-Tile img2img of an image to 1024 px"},
    {"tokenize", cmd_tokenize, "print CLIP token ids of texts as JSON arrays"},
    {"encode", cmd_encode, "encode a prompt with a model's CLIP text encoder"},
    {"inspect", cmd_inspect, "validate a .safetensors file and list its tensors"},
    {"cache", cmd_cache, "the shared model cache: ls, fetch URL, evict, verify"},
    {"put", cmd_put, "upload a file to s3://bucket/key (or file://)"},
    {"submit", cmd_submit, "send generation jobs to the worker fleet (one, or prompts x seeds); --wait follows them"},
    {"status", cmd_status, "a job's or a batch's latest state from the workers' Redis"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: perflow COMMAND [OPTIONS]   (perflow COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "perflow: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
