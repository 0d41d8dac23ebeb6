/* perflow_sampler.c - the PeRFlow sampler (piecewise rectified flow).
 *
 * The reference is PeRFlowScheduler (public PeRFlow repository), run in float32
 * torch tensors; its golden output was made with torch 1.13. Matching it bit
 * for bit depends on details the spec only summarises; the ones that matter:
 *
 * - Noise table. torch.linspace(float32) is not start + i*step: the reference's
 *   torch computes each block of 8 as base + j*step from a base of
 *   fma(step, idx, start) (first half) or fma(-step, n-1-idx, end) (second
 *   half), vectorised and FMA-contracted. The plain formula puts 4 entries of
 *   alphas_cumprod off by an ulp (index 370 first); torch 2.8's linspace is off
 *   too. And torch.cumprod on the CPU accumulates float32 in double (acc_type),
 *   rounding each prefix to float32; a float32 running product is off from
 *   index 11. Both checked against alphas_cumprod_scaled_linear in the golden.
 * - Timesteps are float64 numpy: linspace(s, e, n, endpoint=False)[k] is
 *   k * ((e - s) / n) + s, so K = 1, N = 5 gives 399, not 400.
 * - step() works on 0-dim float32 tensors: t_c = float(t) / float(T); the window
 *   test is float32 (t_c - float(0.1 / T)) <= float(end); window bounds are
 *   float(i / K); indices trunc(float(t_s) * float(T) - 1). x ** 0.5 is sqrtf,
 *   x ** 2 is x * x, 1 / x is a float reciprocal, and the velocity divides by
 *   t_e - (t_s + (t_c - t_s)), which is not always t_e - t_c in float32.
 *
 * This file must be compiled without FP contraction (-std=c11 implies
 * -ffp-contract=off in GCC): the reference rounds every product. */
#include "perflow_sampler.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <string.h>

#ifdef __clang__ /* clang contracts a * b + c by default even in C11 mode */
#pragma STDC FP_CONTRACT OFF
#endif

/* Bounds that keep the tables small and int arithmetic safe; far above any
 * real configuration (T = 1000, K <= 8, N <= 50). */
#define MAX_TRAIN_TIMESTEPS 100000
#define MAX_INFERENCE_STEPS 100000

void pf_perflow_config_default(pf_perflow_config *cfg) {
    cfg->num_train_timesteps = 1000;
    cfg->beta_start = 0.00085;
    cfg->beta_end = 0.012;
    cfg->beta_schedule = PF_BETA_SCALED_LINEAR;
    cfg->prediction_type = PF_PRED_DDIM_EPS;
    cfg->num_time_windows = 4;
    cfg->t_noise = 1.0;
    cfg->t_clean = 0.0;
}

static const char *const schedule_names[] = {"scaled_linear", "linear", "squaredcos_cap_v2"};
static const char *const prediction_names[] = {"ddim_eps", "diff_eps", "velocity"};

int pf_perflow_parse_beta_schedule(pf_beta_schedule *out, const char *name, pf_error *err) {
    for (int i = 0; i < 3; i++)
        if (strcmp(name, schedule_names[i]) == 0) {
            *out = (pf_beta_schedule)i;
            return 0;
        }
    return pf_fail(err, "unknown beta_schedule \"%s\" (expected scaled_linear, linear or squaredcos_cap_v2)",
                   name);
}

int pf_perflow_parse_prediction(pf_prediction *out, const char *name, pf_error *err) {
    for (int i = 0; i < 3; i++)
        if (strcmp(name, prediction_names[i]) == 0) {
            *out = (pf_prediction)i;
            return 0;
        }
    if (strcmp(name, "epsilon") == 0) { /* the README's spelling, see the header */
        *out = PF_PRED_DIFF_EPS;
        return 0;
    }
    return pf_fail(err,
                   "unknown prediction_type \"%s\" for the PeRFlow sampler (expected ddim_eps, diff_eps, "
                   "velocity, or epsilon meaning diff_eps)",
                   name);
}

const char *pf_perflow_beta_schedule_name(pf_beta_schedule s) {
    PF_CHECK((int)s >= 0 && (int)s < 3);
    return schedule_names[s];
}

const char *pf_perflow_prediction_name(pf_prediction p) {
    PF_CHECK((int)p >= 0 && (int)p < 3);
    return prediction_names[p];
}

int pf_perflow_config_check(const pf_perflow_config *c, pf_error *err) {
    if (c->num_train_timesteps < 1 || c->num_train_timesteps > MAX_TRAIN_TIMESTEPS)
        return pf_fail(err, "num_train_timesteps %d out of range [1, %d]", c->num_train_timesteps,
                       MAX_TRAIN_TIMESTEPS);
    if (c->num_time_windows < 1 || c->num_time_windows > c->num_train_timesteps)
        return pf_fail(err, "num_time_windows %d out of range [1, num_train_timesteps = %d]", c->num_time_windows,
                       c->num_train_timesteps);
    if (!(c->beta_start >= 0 && c->beta_start < 1) || !(c->beta_end >= 0 && c->beta_end < 1))
        return pf_fail(err, "beta_start %g and beta_end %g must lie in [0, 1)", c->beta_start, c->beta_end);
    if (!(c->t_clean >= 0 && c->t_clean < 1.0 / c->num_time_windows))
        return pf_fail(err, "t_clean %g must lie in [0, 1/num_time_windows)", c->t_clean);
    if (!(c->t_clean < c->t_noise) || !isfinite(c->t_noise))
        return pf_fail(err, "t_noise %g must be finite and greater than t_clean %g", c->t_noise, c->t_clean);
    if ((int)c->beta_schedule < 0 || (int)c->beta_schedule > 2 || (int)c->prediction_type < 0 ||
        (int)c->prediction_type > 2)
        return pf_fail(err, "invalid beta_schedule or prediction_type value");
    return 0;
}

/* Reads key as an integer into *out if present. */
static int json_int_key(const json_t *o, const char *key, int *out, const char *what, pf_error *err) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)))
        d = json_real_value(v);
    else
        return pf_fail(err, "%s: %s must be an integer", what, key);
    if (d < -1e9 || d > 1e9) return pf_fail(err, "%s: %s = %g is out of range", what, key, d);
    *out = (int)d;
    return 0;
}

static int json_num_key(const json_t *o, const char *key, double *out, const char *what, pf_error *err) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return pf_fail(err, "%s: %s must be a number", what, key);
    *out = json_number_value(v);
    return 0;
}

static int json_str_key(const json_t *o, const char *key, const char **out, const char *what, pf_error *err) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return pf_fail(err, "%s: %s must be a string", what, key);
    *out = json_string_value(v);
    return 0;
}

/* pf_perflow_config_parse, starting from *cfg; with betas_only the PeRFlow keys
 * (prediction_type, num_time_windows, t_noise, t_clean) are not read. */
static int config_parse(pf_perflow_config *cfg, const char *json_text, size_t len, const char *what, int betas_only,
                        pf_error *err) {
    json_error_t jerr;
    json_t *o = json_loadb(json_text, len, 0, &jerr);
    if (!o) return pf_fail(err, "%s: not valid JSON: %s (line %d)", what, jerr.text, jerr.line);
    pf_perflow_config c = *cfg;
    const char *schedule = NULL, *prediction = NULL;
    int rc = -1;
    if (!json_is_object(o)) {
        pf_fail(err, "%s: expected a JSON object", what);
        goto done;
    }
    const json_t *tb = json_object_get(o, "trained_betas");
    if (tb && !json_is_null(tb)) {
        pf_fail(err, "%s: trained_betas is not supported by the PeRFlow sampler", what);
        goto done;
    }
    if (json_int_key(o, "num_train_timesteps", &c.num_train_timesteps, what, err) ||
        json_num_key(o, "beta_start", &c.beta_start, what, err) ||
        json_num_key(o, "beta_end", &c.beta_end, what, err) ||
        json_str_key(o, "beta_schedule", &schedule, what, err))
        goto done;
    if (!betas_only && (json_str_key(o, "prediction_type", &prediction, what, err) ||
                        json_int_key(o, "num_time_windows", &c.num_time_windows, what, err) ||
                        json_num_key(o, "t_noise", &c.t_noise, what, err) ||
                        json_num_key(o, "t_clean", &c.t_clean, what, err)))
        goto done;
    if (schedule && pf_perflow_parse_beta_schedule(&c.beta_schedule, schedule, err)) {
        pf_error_prefix(err, "%s", what);
        goto done;
    }
    if (prediction && pf_perflow_parse_prediction(&c.prediction_type, prediction, err)) {
        pf_error_prefix(err, "%s", what);
        goto done;
    }
    if (pf_perflow_config_check(&c, err)) {
        pf_error_prefix(err, "%s", what);
        goto done;
    }
    *cfg = c;
    rc = 0;
done:
    json_decref(o);
    return rc;
}

int pf_perflow_config_parse(pf_perflow_config *cfg, const char *json_text, size_t len, const char *what,
                            pf_error *err) {
    pf_perflow_config c;
    pf_perflow_config_default(&c);
    if (config_parse(&c, json_text, len, what, 0, err)) return -1;
    *cfg = c;
    return 0;
}

/* config_parse on the contents of the file at path. */
static int config_load(pf_perflow_config *cfg, const char *path, int betas_only, pf_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return pf_fail(err, "%s: cannot open: %s", path, strerror(errno));
    /* scheduler configs are a few hundred bytes; refuse anything huge */
    enum { MAX_CONFIG = 1 << 20 };
    char *buf = PF_MALLOC(MAX_CONFIG);
    size_t len = fread(buf, 1, MAX_CONFIG, f);
    int rc;
    if (ferror(f))
        rc = pf_fail(err, "%s: read error", path);
    else if (len == MAX_CONFIG)
        rc = pf_fail(err, "%s: larger than %d bytes, not a scheduler config", path, MAX_CONFIG);
    else
        rc = config_parse(cfg, buf, len, path, betas_only, err);
    free(buf);
    fclose(f);
    return rc;
}

int pf_perflow_config_load(pf_perflow_config *cfg, const char *path, pf_error *err) {
    pf_perflow_config c;
    pf_perflow_config_default(&c);
    if (config_load(&c, path, 0, err)) return -1;
    *cfg = c;
    return 0;
}

int pf_perflow_config_load_betas(pf_perflow_config *cfg, const char *path, pf_error *err) {
    return config_load(cfg, path, 1, err);
}

/* torch.linspace(start, end, n, dtype=float32) as the reference's torch CPU
 * kernel computes it (see the file comment): blocks of 16 as two vectors of 8,
 * each vector's elements base + j*step; the remainder element by element. */
static void linspace_f32(float *out, float start, float end, int n) {
    if (n == 1) {
        out[0] = start;
        return;
    }
    const float step = (end - start) / (float)(n - 1);
    const int half = n / 2;
    int i = 0;
    for (; i + 16 <= n; i += 8) {
        float base = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - i - 1), end);
        for (int j = 0; j < 8; j++) out[i + j] = fmaf((float)j, step, base);
        i += 8;
        base = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - i - 1), end);
        for (int j = 0; j < 8; j++) out[i + j] = fmaf((float)j, step, base);
    }
    for (; i < n; i++) out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - i - 1), end);
}

/* Glide's alpha_bar, in float64 like the reference's Python. */
static double alpha_bar(double t) {
    double c = cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
}

static void make_betas(float *betas, const pf_perflow_config *c) {
    const int T = c->num_train_timesteps;
    switch (c->beta_schedule) {
    case PF_BETA_SCALED_LINEAR:
        /* Python's beta ** 0.5 is pow, then float32 for torch */
        linspace_f32(betas, (float)pow(c->beta_start, 0.5), (float)pow(c->beta_end, 0.5), T);
        for (int i = 0; i < T; i++) betas[i] = betas[i] * betas[i];
        break;
    case PF_BETA_LINEAR:
        linspace_f32(betas, (float)c->beta_start, (float)c->beta_end, T);
        break;
    case PF_BETA_SQUAREDCOS_CAP_V2:
        for (int i = 0; i < T; i++) {
            double t1 = (double)i / T, t2 = (double)(i + 1) / T;
            double b = 1 - alpha_bar(t2) / alpha_bar(t1);
            betas[i] = (float)(b < 0.999 ? b : 0.999);
        }
        break;
    }
}

int pf_perflow_init(pf_perflow_sampler *s, const pf_perflow_config *cfg, pf_error *err) {
    memset(s, 0, sizeof *s);
    if (pf_perflow_config_check(cfg, err)) return -1;
    const int T = cfg->num_train_timesteps, K = cfg->num_time_windows;
    s->cfg = *cfg;
    s->alphas_cumprod = PF_MALLOC((size_t)T * sizeof(float));
    make_betas(s->alphas_cumprod, cfg);
    double acc = 1.0; /* torch's CPU cumprod accumulates in double */
    for (int i = 0; i < T; i++) {
        acc *= (double)(1.0f - s->alphas_cumprod[i]);
        s->alphas_cumprod[i] = (float)acc;
    }
    if (!(s->alphas_cumprod[T - 1] > 0)) {
        pf_perflow_free(s);
        return pf_fail(err, "the noise table underflows to 0 (beta_end too large for num_train_timesteps)");
    }
    s->window_starts = PF_MALLOC((size_t)K * sizeof(double));
    s->window_ends = PF_MALLOC((size_t)K * sizeof(double));
    for (int i = 0; i < K; i++) s->window_starts[i] = (double)(K - i) / K; /* Python's 1. * i / K */
    for (int i = 0; i < K; i++) s->window_ends[i] = i + 1 < K ? s->window_starts[i + 1] : cfg->t_clean;
    return 0;
}

void pf_perflow_free(pf_perflow_sampler *s) {
    free(s->alphas_cumprod);
    free(s->window_starts);
    free(s->window_ends);
    free(s->timesteps);
    memset(s, 0, sizeof *s);
}

/* Time_Windows.get_window on a float32 time point; returns the window index,
 * or -1 when tp lies at or below the last window's end (the reference would
 * index past its list). */
static int window_of(const pf_perflow_sampler *s, float tp) {
    const float eps = (float)(0.1 * (1.0 / s->cfg.num_train_timesteps));
    const float shifted = tp - eps;
    int idx = 0;
    while (shifted <= (float)s->window_ends[idx])
        if (++idx == s->cfg.num_time_windows) return -1;
    return idx;
}

static float time_of(const pf_perflow_sampler *s, int64_t t) {
    return (float)t / (float)s->cfg.num_train_timesteps;
}

int pf_perflow_set_timesteps(pf_perflow_sampler *s, int num_inference_steps, pf_error *err) {
    const int K = s->cfg.num_time_windows, T = s->cfg.num_train_timesteps;
    if (num_inference_steps < 1 || num_inference_steps > MAX_INFERENCE_STEPS)
        return pf_fail(err, "num_inference_steps %d out of range [1, %d]", num_inference_steps,
                       MAX_INFERENCE_STEPS);
    const int N = num_inference_steps < K ? K : num_inference_steps;
    int64_t *ts = PF_MALLOC((size_t)N * sizeof *ts);
    int k = 0;
    for (int i = 0; i < K; i++) {
        const int n_i = N / K + (i < N % K ? 1 : 0);
        const double start = s->window_starts[i], step = (s->window_ends[i] - start) / n_i;
        for (int j = 0; j < n_i; j++) ts[k++] = (int64_t)(((double)j * step + start) * T);
    }
    PF_CHECK(k == N);
    for (int i = 0; i < N; i++) {
        if ((i > 0 && ts[i] >= ts[i - 1]) || window_of(s, time_of(s, ts[i])) < 0) {
            free(ts);
            return pf_fail(err, "%d inference steps are too many for %d windows of %d training timesteps", N, K, T);
        }
    }
    free(s->timesteps);
    s->timesteps = ts;
    s->num_steps = N;
    return 0;
}

void pf_perflow_step(const pf_perflow_sampler *s, float *x_out, const float *model_output, int64_t timestep,
                     const float *x, size_t n) {
    PF_CHECK(s->timesteps);
    int at = -1;
    for (int i = 0; i < s->num_steps; i++)
        if (s->timesteps[i] == timestep) {
            at = i;
            break;
        }
    PF_CHECK(at >= 0);
    const int64_t next = at + 1 < s->num_steps ? s->timesteps[at + 1] : 0;
    const float T = (float)s->cfg.num_train_timesteps;
    const float dt = (float)(next - timestep) / T;

    if (s->cfg.prediction_type == PF_PRED_VELOCITY) {
        for (size_t i = 0; i < n; i++) x_out[i] = x[i] + dt * model_output[i];
        return;
    }

    const float t_c = time_of(s, timestep);
    const int w = window_of(s, t_c);
    PF_CHECK(w >= 0); /* set_timesteps admitted only timesteps inside a window */
    const float t_s = (float)s->window_starts[w], t_e = (float)s->window_ends[w];
    const float c_to_s = t_c - t_s;
    const int64_t i_s = (int64_t)(t_s * T - 1.0f);
    int64_t i_e = (int64_t)(t_e * T - 1.0f);
    if (i_e < 0) i_e = 0;
    PF_CHECK(i_s >= 0 && i_s < s->cfg.num_train_timesteps && i_e < s->cfg.num_train_timesteps);
    const float a_s = s->alphas_cumprod[i_s], a_e = s->alphas_cumprod[i_e];

    float lambda_s, eta_s;
    if (s->cfg.prediction_type == PF_PRED_DDIM_EPS) {
        lambda_s = sqrtf(a_e / a_s);
        eta_s = sqrtf(1.0f - a_e) - sqrtf(a_e / a_s * (1.0f - a_s));
    } else {
        const float gamma = sqrtf(a_s / a_e);
        lambda_s = 1.0f / gamma;
        eta_s = -sqrtf(1.0f - gamma * gamma) / gamma;
    }
    const float den = lambda_s * (t_c - t_s) + (t_e - t_c);
    const float lambda_t = lambda_s * (t_e - t_s) / den;
    const float eta_t = eta_s * (t_e - t_c) / den;
    const float span = t_e - (t_s + c_to_s);
    for (size_t i = 0; i < n; i++) {
        const float xi = x[i];
        const float x_end = lambda_t * xi + eta_t * model_output[i];
        const float v = (x_end - xi) / span;
        x_out[i] = xi + dt * v;
    }
}

void pf_perflow_add_noise(const pf_perflow_sampler *s, float *out, const float *x0, const float *noise,
                          int64_t timestep, size_t n) {
    PF_CHECK(timestep >= 1 && timestep <= s->cfg.num_train_timesteps);
    const float a = s->alphas_cumprod[timestep - 1];
    const float sa = sqrtf(a), s1a = sqrtf(1.0f - a);
    for (size_t i = 0; i < n; i++) out[i] = sa * x0[i] + s1a * noise[i];
}

int pf_perflow_img2img_first(const pf_perflow_sampler *s, int *first, int requested_steps, double strength,
                             pf_error *err) {
    if (requested_steps < 1) return pf_fail(err, "img2img: %d inference steps requested", requested_steps);
    if (!(strength > 0 && strength <= 1)) return pf_fail(err, "img2img: strength %g outside (0, 1]", strength);
    int init = (int)(requested_steps * strength);
    if (init > requested_steps) init = requested_steps;
    int f = requested_steps - init;
    *first = f < s->num_steps ? f : s->num_steps;
    return 0;
}
