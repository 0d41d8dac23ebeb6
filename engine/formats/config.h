/* config.h - typed access to JSON configuration files (diffusers and
 * transformers config.json, model_index.json, scheduler_config.json).
 *
 * Every getter takes a default used when the key is absent; a key that is
 * present with the wrong type or an out-of-range value is an error naming the
 * file, the key and what was found. */
#ifndef PF_CONFIG_H
#define PF_CONFIG_H

#include <stddef.h>

#include "error.h"

typedef struct pf_config pf_config;

/* Loads and parses path (must be a JSON object). */
int pf_config_load(pf_config **out, const char *path, pf_error *err);
void pf_config_free(pf_config *c);
const char *pf_config_path(const pf_config *c);
int pf_config_has(const pf_config *c, const char *key);

/* Integer in [lo, hi]. */
int pf_config_int(const pf_config *c, const char *key, long def, long lo, long hi, long *out, pf_error *err);
/* Number (integer or real). */
int pf_config_num(const pf_config *c, const char *key, double def, double *out, pf_error *err);
int pf_config_bool(const pf_config *c, const char *key, int def, int *out, pf_error *err);
/* String copied into out (n bytes); def may be NULL meaning "required". */
int pf_config_str(const pf_config *c, const char *key, const char *def, char *out, size_t n, pf_error *err);
/* A list of `count` integers in [lo, hi], or one integer repeated `count` times
 * (diffusers allows both for e.g. attention_head_dim). Absent: def repeated. */
int pf_config_int_list(const pf_config *c, const char *key, long def, long lo, long hi, long *out, int count,
                       pf_error *err);
/* Length of a list key (0 when absent); error when present and not a list or longer than max. */
int pf_config_list_len(const pf_config *c, const char *key, int max, int *out, pf_error *err);
/* Element i of a list of strings. */
int pf_config_str_at(const pf_config *c, const char *key, int i, char *out, size_t n, pf_error *err);

/* A list of `count` finite numbers (absent: def[0..count)). */
int pf_config_num_list(const pf_config *c, const char *key, const double *def, double *out, int count,
                       pf_error *err);
/* An integer that may also be written as an object holding it under `field`
 * (transformers' image processors: "size": 224 or {"shortest_edge": 224}). */
int pf_config_int_field(const pf_config *c, const char *key, const char *field, long def, long lo, long hi,
                        long *out, pf_error *err);

#endif
