/* config.c - typed access to JSON configuration files, through jansson. */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

struct pf_config {
    json_t *root;
    char *path;
};

int pf_config_load(pf_config **out, const char *path, pf_error *err) {
    *out = NULL;
    json_error_t je;
    char *text;
    size_t len;
    if (pf_read_text_file(&text, &len, path, err)) return -1; /* capped: pf_text_limit */
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root) {
        /* jansson quotes input in its message: keep the error one printable line */
        for (char *ch = je.text; *ch; ch++)
            if ((unsigned char)*ch < 0x20 || *ch == 0x7f) *ch = '?';
        return pf_fail(err, "%s: %s (line %d)", path, je.text, je.line);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return pf_fail(err, "%s: not a JSON object", path);
    }
    pf_config *c = PF_CALLOC(1, sizeof *c);
    c->root = root;
    c->path = PF_STRDUP(path);
    *out = c;
    return 0;
}

void pf_config_free(pf_config *c) {
    if (!c) return;
    json_decref(c->root);
    free(c->path);
    free(c);
}

const char *pf_config_path(const pf_config *c) { return c->path; }

/* null counts as absent: diffusers writes null for unset optional keys. */
static json_t *get(const pf_config *c, const char *key) {
    json_t *v = json_object_get(c->root, key);
    return json_is_null(v) ? NULL : v;
}

int pf_config_has(const pf_config *c, const char *key) { return get(c, key) != NULL; }

static int int_value(const pf_config *c, const char *key, json_t *v, long lo, long hi, long *out, pf_error *err) {
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v))
        d = json_real_value(v);
    else
        return pf_fail(err, "%s: \"%s\" must be an integer", c->path, key);
    if (d < (double)lo || d > (double)hi)
        return pf_fail(err, "%s: \"%s\" is %.0f, outside [%ld, %ld]", c->path, key, d, lo, hi);
    *out = (long)d;
    return 0;
}

int pf_config_int(const pf_config *c, const char *key, long def, long lo, long hi, long *out, pf_error *err) {
    json_t *v = get(c, key);
    if (!v) {
        *out = def;
        return 0;
    }
    return int_value(c, key, v, lo, hi, out, err);
}

int pf_config_num(const pf_config *c, const char *key, double def, double *out, pf_error *err) {
    json_t *v = get(c, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) return pf_fail(err, "%s: \"%s\" must be a number", c->path, key);
    *out = json_number_value(v);
    if (!isfinite(*out)) return pf_fail(err, "%s: \"%s\" must be finite", c->path, key);
    return 0;
}

int pf_config_bool(const pf_config *c, const char *key, int def, int *out, pf_error *err) {
    json_t *v = get(c, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) return pf_fail(err, "%s: \"%s\" must be true or false", c->path, key);
    *out = json_is_true(v);
    return 0;
}

static int copy_str(const pf_config *c, const char *key, const char *s, char *out, size_t n, pf_error *err) {
    if (strlen(s) >= n) return pf_fail(err, "%s: \"%s\" is too long", c->path, key);
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

int pf_config_str(const pf_config *c, const char *key, const char *def, char *out, size_t n, pf_error *err) {
    json_t *v = get(c, key);
    if (!v) {
        if (!def) return pf_fail(err, "%s: missing \"%s\"", c->path, key);
        return copy_str(c, key, def, out, n, err);
    }
    if (!json_is_string(v)) return pf_fail(err, "%s: \"%s\" must be a string", c->path, key);
    return copy_str(c, key, json_string_value(v), out, n, err);
}

int pf_config_int_list(const pf_config *c, const char *key, long def, long lo, long hi, long *out, int count,
                       pf_error *err) {
    json_t *v = get(c, key);
    if (!v || json_is_number(v)) {
        long x = def;
        if (v && int_value(c, key, v, lo, hi, &x, err)) return -1;
        for (int i = 0; i < count; i++) out[i] = x;
        return 0;
    }
    if (!json_is_array(v)) return pf_fail(err, "%s: \"%s\" must be an integer or a list", c->path, key);
    if ((int)json_array_size(v) != count)
        return pf_fail(err, "%s: \"%s\" has %zu entries, expected %d", c->path, key, json_array_size(v), count);
    for (int i = 0; i < count; i++)
        if (int_value(c, key, json_array_get(v, (size_t)i), lo, hi, &out[i], err)) return -1;
    return 0;
}

int pf_config_list_len(const pf_config *c, const char *key, int max, int *out, pf_error *err) {
    json_t *v = get(c, key);
    *out = 0;
    if (!v) return 0;
    if (!json_is_array(v)) return pf_fail(err, "%s: \"%s\" must be a list", c->path, key);
    if ((int)json_array_size(v) > max || json_array_size(v) > (size_t)max)
        return pf_fail(err, "%s: \"%s\" has %zu entries, at most %d supported", c->path, key, json_array_size(v),
                       max);
    *out = (int)json_array_size(v);
    return 0;
}

int pf_config_str_at(const pf_config *c, const char *key, int i, char *out, size_t n, pf_error *err) {
    json_t *v = json_array_get(get(c, key), (size_t)i);
    if (!json_is_string(v)) return pf_fail(err, "%s: \"%s\"[%d] must be a string", c->path, key, i);
    return copy_str(c, key, json_string_value(v), out, n, err);
}

int pf_config_num_list(const pf_config *c, const char *key, const double *def, double *out, int count,
                       pf_error *err) {
    json_t *v = get(c, key);
    if (!v) {
        for (int i = 0; i < count; i++) out[i] = def[i];
        return 0;
    }
    if (!json_is_array(v) || (int)json_array_size(v) != count)
        return pf_fail(err, "%s: \"%s\" must be a list of %d numbers", c->path, key, count);
    for (int i = 0; i < count; i++) {
        json_t *e = json_array_get(v, (size_t)i);
        if (!json_is_number(e) || !isfinite(json_number_value(e)))
            return pf_fail(err, "%s: \"%s\"[%d] must be a finite number", c->path, key, i);
        out[i] = json_number_value(e);
    }
    return 0;
}

int pf_config_int_field(const pf_config *c, const char *key, const char *field, long def, long lo, long hi,
                        long *out, pf_error *err) {
    json_t *v = get(c, key);
    if (v && json_is_object(v)) {
        json_t *f = json_object_get(v, field);
        if (!f) return pf_fail(err, "%s: \"%s\" has no \"%s\"", c->path, key, field);
        return int_value(c, field, f, lo, hi, out, err);
    }
    return pf_config_int(c, key, def, lo, hi, out, err);
}
