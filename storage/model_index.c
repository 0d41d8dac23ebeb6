/* model_index.c - planning a diffusers model's files from model_index.json (or
 * a lone component folder's), the shards of sharded weights from their index,
 * and the cache's per-model manifest, all through jansson. */
#include "model_index.h"

#include <ctype.h>
#include <jansson.h>
#include <string.h>

/* jansson quotes the input near an error: hostile bytes, newlines included.
 * The message keeps one printable line. */
static const char *json_error_text(json_error_t *je) {
    for (char *p = je->text; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '?';
    return je->text;
}

static int segment_ok(const char *s, size_t n) {
    if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '_' || s[i] == '-')) return 0;
    return 1;
}

int pf_relpath_valid(const char *p) {
    size_t n = strnlen(p, PF_RELPATH_MAX);
    if (n == 0 || n >= PF_RELPATH_MAX) return 0;
    const char *slash = memchr(p, '/', n);
    if (!slash) return segment_ok(p, n);
    size_t a = (size_t)(slash - p);
    return segment_ok(p, a) && segment_ok(slash + 1, n - a - 1);
}

/* A JSON string of letters, digits, '_' and '.', 1 to 64 bytes (library and class names). */
static const char *name_value(const json_t *v) {
    if (!json_is_string(v)) return NULL;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n == 0 || n > 64 || strlen(s) != n) return NULL;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '.')) return NULL;
    return s;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

typedef struct plan {
    pf_model_file *files;
    int count, max;
} plan;

static int add(plan *p, const char *component, const char *file, const char *fallback, int optional, pf_error *err) {
    if (p->count >= p->max) return pf_fail(err, "model_index.json: more than %d files", p->max);
    pf_model_file *f = &p->files[p->count];
    memset(f, 0, sizeof *f);
    if (component)
        snprintf(f->path, sizeof f->path, "%s/%s", component, file);
    else
        snprintf(f->path, sizeof f->path, "%s", file);
    if (fallback && component)
        snprintf(f->fallback, sizeof f->fallback, "%s/%s", component, fallback);
    else if (fallback)
        snprintf(f->fallback, sizeof f->fallback, "%s", fallback);
    f->optional = optional;
    PF_CHECK(pf_relpath_valid(f->path) && (!fallback || pf_relpath_valid(f->fallback)));
    p->count++;
    return 0;
}

/* A model component: its config and (with_weights) its weights, either
 * variant, each also in its sharded form. */
static int add_weights(plan *p, const char *component, const char *stem, int prefer_fp16, int with_weights,
                       pf_error *err) {
    char full[96], half[96];
    snprintf(full, sizeof full, "%s.safetensors", stem);
    snprintf(half, sizeof half, "%s.fp16.safetensors", stem);
    if (add(p, component, "config.json", NULL, 0, err)) return -1;
    if (!with_weights) return 0;
    if (add(p, component, prefer_fp16 ? half : full, prefer_fp16 ? full : half, 0, err)) return -1;
    p->files[p->count - 1].weights = 1;
    return 0;
}

static int plan_index(pf_model_file *files, int *count, int max, const char *json, size_t len, int prefer_fp16,
                      int with_weights, pf_error *err) {
    *count = 0;
    if (len > PF_MODEL_INDEX_MAX_BYTES)
        return pf_fail(err, "model_index.json: %zu bytes, more than the %d allowed", len, PF_MODEL_INDEX_MAX_BYTES);
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return pf_fail(err, "model_index.json: %s (line %d)", json_error_text(&je), je.line);
    if (!json_is_object(root)) {
        json_decref(root);
        return pf_fail(err, "model_index.json: not a JSON object");
    }
    plan p = {files, 0, max};
    int rc = add(&p, NULL, "model_index.json", NULL, 0, err);
    /* Sorted by name, so that the plan (and so the manifest) does not depend on key order. */
    const char **names = PF_CALLOC(json_object_size(root) + 1, sizeof *names);
    size_t nn = 0;
    const char *name;
    json_t *value;
    json_object_foreach(root, name, value) names[nn++] = name;
    for (size_t i = 1; i < nn; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    int components = 0;
    for (size_t i = 0; i < nn && !rc; i++) {
        name = names[i];
        value = json_object_get(root, name);
        if (name[0] == '_' || !json_is_array(value)) continue; /* _class_name, requires_safety_checker, ... */
        if (json_array_size(value) != 2) {
            rc = pf_fail(err, "model_index.json: component entries must be [library, class]");
            break;
        }
        json_t *jl = json_array_get(value, 0), *jc = json_array_get(value, 1);
        if (json_is_null(jl) && json_is_null(jc)) continue; /* a component the pipeline goes without */
        const char *lib = name_value(jl), *cls = name_value(jc);
        size_t name_len = strlen(name);
        if (name_len > 64 || !segment_ok(name, name_len) || name[0] == '.') {
            rc = pf_fail(err, "model_index.json: component name is not a plain folder name");
            break;
        }
        if (!lib || !cls) {
            rc = pf_fail(err, "model_index.json: component '%s' must name a library and a class", name);
            break;
        }
        components++;
        if (!strcmp(cls, "CLIPTokenizer") || !strcmp(cls, "CLIPTokenizerFast")) {
            rc = add(&p, name, "vocab.json", NULL, 0, err) || add(&p, name, "merges.txt", NULL, 0, err) ||
                 add(&p, name, "tokenizer_config.json", NULL, 1, err) ||
                 add(&p, name, "special_tokens_map.json", NULL, 1, err);
        } else if (!strcmp(lib, "transformers") && !strncmp(cls, "CLIPTextModel", 13)) {
            rc = add_weights(&p, name, "model", prefer_fp16, with_weights, err);
        } else if (!strcmp(lib, "diffusers") && (!strcmp(cls, "UNet2DConditionModel") || !strcmp(cls, "AutoencoderKL") ||
                                                 !strcmp(cls, "ControlNetModel"))) {
            rc = add_weights(&p, name, "diffusion_pytorch_model", prefer_fp16, with_weights, err);
        } else if (ends_with(cls, "Scheduler")) {
            rc = add(&p, name, "scheduler_config.json", NULL, 0, err);
        } else if (!strcmp(lib, "transformers") && !strcmp(cls, "CLIPVisionModelWithProjection")) {
            /* the IP-Adapter image encoder (--image-encoder defaults to it), with its
             * preprocessing when the folder carries it */
            rc = add_weights(&p, name, "model", prefer_fp16, with_weights, err) ||
                 add(&p, name, "preprocessor_config.json", NULL, 1, err);
        } else if (!strcmp(cls, "StableDiffusionSafetyChecker") || !strcmp(cls, "CLIPImageProcessor") ||
                   !strcmp(cls, "CLIPFeatureExtractor")) {
            components--; /* not run by the engine */
        } else {
            rc = pf_fail(err, "model_index.json: component '%s' has class '%s' (library '%s'), which perflow does not load",
                         name, cls, lib);
        }
    }
    free(names);
    json_decref(root);
    if (!rc && components == 0) rc = pf_fail(err, "model_index.json: no components");
    if (rc) return -1;
    *count = p.count;
    return 0;
}

int pf_model_index_plan(pf_model_file *files, int *count, int max, const char *json, size_t len, int prefer_fp16,
                        pf_error *err) {
    return plan_index(files, count, max, json, len, prefer_fp16, 1, err);
}

int pf_model_index_plan_configs(pf_model_file *files, int *count, int max, const char *json, size_t len,
                                pf_error *err) {
    return plan_index(files, count, max, json, len, 0, 0, err);
}

int pf_model_component_plan(pf_model_file *files, int *count, int max, int prefer_fp16, pf_error *err) {
    plan p = {files, 0, max};
    *count = 0;
    if (add_weights(&p, NULL, "diffusion_pytorch_model", prefer_fp16, 1, err)) return -1;
    *count = p.count;
    return 0;
}

int pf_model_image_encoder_plan(pf_model_file *files, int *count, int max, int prefer_fp16, pf_error *err) {
    plan p = {files, 0, max};
    *count = 0;
    if (add_weights(&p, NULL, "model", prefer_fp16, 1, err) || add(&p, NULL, "preprocessor_config.json", NULL, 0, err))
        return -1;
    *count = p.count;
    return 0;
}

int pf_model_shard_index_name(char *out, size_t n, const char *weights_path, pf_error *err) {
    size_t len = strlen(weights_path);
    const int half = ends_with(weights_path, ".fp16.safetensors");
    if (!ends_with(weights_path, ".safetensors"))
        return pf_fail(err, "'%s' is not a .safetensors weights file", weights_path);
    /* <stem>.fp16.safetensors -> <stem>.safetensors.index.fp16.json, as diffusers' variants name indexes */
    size_t stem = len - (half ? strlen(".fp16.safetensors") : strlen(".safetensors"));
    int w = snprintf(out, n, "%.*s.safetensors.index%s.json", (int)stem, weights_path, half ? ".fp16" : "");
    if (w < 0 || (size_t)w >= n || !pf_relpath_valid(out))
        return pf_fail(err, "the index name of '%s' is too long", weights_path);
    return 0;
}

int pf_model_is_shard_index(const char *path) {
    return ends_with(path, ".safetensors.index.json") || ends_with(path, ".safetensors.index.fp16.json");
}

int pf_model_shard_plan(pf_model_file *files, int *count, int max, const char *index_path, const char *json,
                        size_t len, pf_error *err) {
    if (len > PF_SHARD_INDEX_MAX_BYTES)
        return pf_fail(err, "%s: %zu bytes, more than the %d allowed", index_path, len, PF_SHARD_INDEX_MAX_BYTES);
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return pf_fail(err, "%s: %s (line %d)", index_path, json_error_text(&je), je.line);
    json_t *map = json_object_get(root, "weight_map");
    int rc = 0, n = *count;
    if (!json_is_object(map) || json_object_size(map) == 0)
        rc = pf_fail(err, "%s: no \"weight_map\" object naming the shards", index_path);
    /* the shards sit beside the index: its folder (a component's, or the source's root) */
    const char *slash = strrchr(index_path, '/');
    const int dir_len = slash ? (int)(slash - index_path) : 0;
    const char *key;
    json_t *v;
    json_object_foreach(map, key, v) {
        if (rc) break;
        const char *shard = json_string_value(v);
        size_t sl = shard ? json_string_length(v) : 0;
        if (!shard || sl == 0 || sl > 128 || strlen(shard) != sl || !segment_ok(shard, sl) ||
            !ends_with(shard, ".safetensors")) {
            rc = pf_fail(err, "%s: a weight_map entry is not the file name of a .safetensors shard", index_path);
            break;
        }
        char rel[PF_RELPATH_MAX];
        snprintf(rel, sizeof rel, "%.*s%s%s", dir_len, index_path, slash ? "/" : "", shard);
        int seen = 0;
        for (int i = *count; i < n && !seen; i++) seen = !strcmp(files[i].path, rel);
        if (seen) continue;
        if (n >= max) {
            rc = pf_fail(err, "%s: more shards than the %d files a model may have", index_path, max);
            break;
        }
        memset(&files[n], 0, sizeof files[n]);
        snprintf(files[n].path, sizeof files[n].path, "%s", rel);
        PF_CHECK(pf_relpath_valid(files[n].path));
        n++;
    }
    json_decref(root);
    if (rc) return -1;
    *count = n;
    return 0;
}

char *pf_manifest_format(const pf_manifest_file *files, int count, const char *source_url) {
    json_t *root = json_object(), *list = json_array();
    json_object_set_new(root, "version", json_integer(1));
    json_object_set_new(root, "source", json_string(source_url));
    for (int i = 0; i < count; i++) {
        json_t *f = json_object();
        json_object_set_new(f, "path", json_string(files[i].path));
        json_object_set_new(f, "sha256", json_string(files[i].sha256));
        json_object_set_new(f, "size", json_integer((json_int_t)files[i].size));
        json_array_append_new(list, f);
    }
    json_object_set_new(root, "files", list);
    char *s = json_dumps(root, JSON_INDENT(1) | JSON_ENSURE_ASCII);
    json_decref(root);
    PF_CHECK(s);
    return s;
}

int pf_manifest_parse(pf_manifest_file *files, int *count, int max, const char *json, size_t len, pf_error *err) {
    *count = 0;
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return pf_fail(err, "manifest: %s (line %d)", json_error_text(&je), je.line);
    json_t *files_j = json_object_get(root, "files");
    int rc = 0;
    if (!json_is_object(root) || json_integer_value(json_object_get(root, "version")) != 1 || !json_is_array(files_j))
        rc = pf_fail(err, "manifest: not a version 1 manifest");
    else if (json_array_size(files_j) == 0 || json_array_size(files_j) > (size_t)max)
        rc = pf_fail(err, "manifest: 1 to %d files expected", max);
    for (size_t i = 0; !rc && i < json_array_size(files_j); i++) {
        json_t *f = json_array_get(files_j, i);
        const char *path = json_string_value(json_object_get(f, "path"));
        const char *sha = json_string_value(json_object_get(f, "sha256"));
        json_t *size = json_object_get(f, "size");
        if (!path || !pf_relpath_valid(path) || !sha || !pf_sha256_hex_valid(sha) || !json_is_integer(size) ||
            json_integer_value(size) < 0) {
            rc = pf_fail(err, "manifest: file %zu is malformed", i);
            break;
        }
        for (size_t j = 0; j < i && !rc; j++)
            if (!strcmp(files[j].path, path)) rc = pf_fail(err, "manifest: '%s' listed twice", path);
        snprintf(files[i].path, sizeof files[i].path, "%s", path);
        memcpy(files[i].sha256, sha, PF_SHA256_HEX);
        files[i].size = (uint64_t)json_integer_value(size);
    }
    if (!rc) *count = (int)json_array_size(files_j);
    json_decref(root);
    return rc;
}
