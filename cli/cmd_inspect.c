/* cmd_inspect.c - `perflow inspect FILE.safetensors`: validates a safetensors
 * file and lists its tensors, one line each: "name dtype shape". */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "safetensors.h"

static void usage(FILE *f) {
    fprintf(f, "usage: perflow inspect [--help] FILE.safetensors\n"
               "  Validates FILE and prints one line per tensor, sorted by name: NAME DTYPE SHAPE.\n"
               "  Exit status: 0 valid, 1 invalid or unreadable, 2 usage error.\n");
}

/* Names are valid UTF-8 but may hold control characters ("\n" is a legal
 * JSON escape); they are written as \xNN, as in the reader's messages, to
 * keep one tensor per line. */
static void print_name(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", stdout);
        else if (*p < 0x20 || *p == 0x7f)
            printf("\\x%02x", *p);
        else
            putchar(*p);
    }
}

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "perflow: inspect: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
        if (path) {
            fprintf(stderr, "perflow: inspect: expected one file, got '%s' and '%s'\n", path, argv[i]);
            usage(stderr);
            return 2;
        }
        path = argv[i];
    }
    if (!path) {
        fprintf(stderr, "perflow: inspect: missing FILE\n");
        usage(stderr);
        return 2;
    }

    pf_error err = {""};
    pf_safetensors *st;
    if (pf_st_open(&st, path, &err)) {
        fprintf(stderr, "perflow: %s\n", err.msg);
        return 1;
    }
    for (int i = 0; i < st->count; i++) {
        const pf_st_tensor *t = &st->tensors[i];
        char shape[160];
        print_name(t->name);
        printf(" %s %s\n", pf_st_dtype_name(t->dtype), pf_shape_str_raw(t->ndim, t->shape, shape, sizeof shape));
    }
    pf_st_close(st);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "perflow: %s: error writing the listing to stdout\n", path);
        return 1;
    }
    return 0;
}
