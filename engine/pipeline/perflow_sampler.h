/* perflow_sampler.h - the PeRFlow sampler (piecewise rectified flow), matching
 * the PeRFlowScheduler of the public PeRFlow repository number for number.
 *
 * Specification: shared/spec/perflow-scheduler.md. The reference runs in
 * float32 torch tensors; every float32 operation here is the one the reference
 * performs, in the same order, so trajectories match it bit for bit (checked
 * against shared/golden/perflow_scheduler.json). Latents live on the host as
 * float32 arrays; the sampler is pure C.
 *
 * Use: fill a pf_perflow_config (pf_perflow_config_default, or
 * pf_perflow_config_load from a diffusers scheduler_config.json), pf_perflow_init,
 * pf_perflow_set_timesteps, then for each timestep t in s.timesteps run the
 * UNet and pf_perflow_step; pf_perflow_free at the end. */
#ifndef PF_PERFLOW_SAMPLER_H
#define PF_PERFLOW_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum pf_beta_schedule {
    PF_BETA_SCALED_LINEAR = 0, /* linspace(sqrt(beta_start), sqrt(beta_end), T)^2 */
    PF_BETA_LINEAR = 1,        /* linspace(beta_start, beta_end, T) */
    PF_BETA_SQUAREDCOS_CAP_V2 = 2, /* Glide cosine schedule, betas capped at 0.999 */
} pf_beta_schedule;

typedef enum pf_prediction {
    PF_PRED_DDIM_EPS = 0, /* UNet predicts noise; DDIM-style window map (released SDXL models) */
    PF_PRED_DIFF_EPS = 1, /* UNet predicts noise; diffusion-style map (released SD-1.5 models) */
    PF_PRED_VELOCITY = 2, /* UNet predicts the flow velocity directly */
} pf_prediction;

typedef struct pf_perflow_config {
    int num_train_timesteps;         /* T, default 1000 */
    double beta_start, beta_end;     /* default 0.00085, 0.012 */
    pf_beta_schedule beta_schedule;  /* default scaled_linear */
    pf_prediction prediction_type;   /* default ddim_eps (the reference's default) */
    int num_time_windows;            /* K, default 4 */
    double t_noise, t_clean;         /* default 1, 0. The reference uses t_clean as the
                                        last window's end and checks t_clean < t_noise;
                                        windows always start at t = 1 whatever t_noise is. */
} pf_perflow_config;

/* The reference's defaults (see the struct). */
void pf_perflow_config_default(pf_perflow_config *cfg);

/* Names as they appear in scheduler_config.json. On error returns -1 with a
 * message listing the accepted names and leaves *out unchanged. "epsilon" is
 * accepted as an alias of "diff_eps": the PeRFlow README passes
 * prediction_type="epsilon" for its SD-1.5 models, whose released sampler
 * setting is diff_eps (the reference itself rejects "epsilon"). */
int pf_perflow_parse_beta_schedule(pf_beta_schedule *out, const char *name, pf_error *err);
int pf_perflow_parse_prediction(pf_prediction *out, const char *name, pf_error *err);
const char *pf_perflow_beta_schedule_name(pf_beta_schedule s);
const char *pf_perflow_prediction_name(pf_prediction p);

/* Fills cfg from the JSON text of a diffusers scheduler_config.json (len bytes,
 * need not be NUL-terminated). Keys that are absent take the defaults above;
 * other keys (_class_name, set_alpha_to_one, steps_offset, ...) are ignored.
 * `what` names the source in messages (a path). Returns 0, or -1 with err set
 * and *cfg unchanged when the text is not a JSON object, a known key has the
 * wrong type, a name is unknown, trained_betas is given (not supported), or
 * pf_perflow_config_check fails. */
int pf_perflow_config_parse(pf_perflow_config *cfg, const char *json_text, size_t len, const char *what,
                            pf_error *err);

/* pf_perflow_config_parse on the contents of the file at path. */
int pf_perflow_config_load(pf_perflow_config *cfg, const char *path, pf_error *err);
/* The config of another scheduler (a base model's PNDMScheduler, DDIMScheduler,
 * ...) at path: only the noise schedule it shares with PeRFlow is read
 * (num_train_timesteps, beta_start, beta_end, beta_schedule; trained_betas
 * refused), over *cfg's values; prediction_type, num_time_windows, t_noise and
 * t_clean are that scheduler's, not PeRFlow's, and keep *cfg's. Errors as
 * pf_perflow_config_load, *cfg unchanged. */
int pf_perflow_config_load_betas(pf_perflow_config *cfg, const char *path, pf_error *err);

/* Checks the values the sampler depends on: T >= 1, 1 <= K <= T (every window
 * start must index the noise table), 0 <= beta_start, beta_end < 1 (finite),
 * 0 <= t_clean < 1/K and t_clean < t_noise. Returns 0 or -1 with err set. */
int pf_perflow_config_check(const pf_perflow_config *cfg, pf_error *err);

typedef struct pf_perflow_sampler {
    pf_perflow_config cfg;
    float *alphas_cumprod;  /* (T): alphas_cumprod[i] = prod_{j<=i} (1 - betas[j]) */
    double *window_starts;  /* (K): 1, (K-1)/K, ..., 1/K */
    double *window_ends;    /* (K): (K-1)/K, ..., 1/K, t_clean */
    int64_t *timesteps;     /* (num_steps), descending; NULL before set_timesteps */
    int num_steps;
} pf_perflow_sampler;

/* Builds the noise table and the windows for cfg. On error (cfg fails
 * pf_perflow_config_check, or the table underflows to 0) returns -1 with err
 * set and s zeroed, so pf_perflow_free(s) is always safe. Read the fields of s,
 * never write them. */
int pf_perflow_init(pf_perflow_sampler *s, const pf_perflow_config *cfg, pf_error *err);

/* Releases what init and set_timesteps allocated; s is zeroed. */
void pf_perflow_free(pf_perflow_sampler *s);

/* Sets s->timesteps for num_inference_steps N: N < K becomes K (as the
 * reference does, which prints a warning); window i gets N/K steps, one more if
 * i < N % K, at linspace(start_i, end_i, n_i, endpoint=False) in float64, each
 * times T truncated to an integer. Returns 0, or -1 with err set (and the old
 * timesteps kept) when N < 1, or when N is so large for T that two timesteps
 * coincide or one falls outside every window (the reference would misbehave). */
int pf_perflow_set_timesteps(pf_perflow_sampler *s, int num_inference_steps, pf_error *err);

/* One sampler step: x_out = x + (t_next - t) / T * v, where v is the velocity
 * from model_output m at timestep t (one of s->timesteps) and t_next is the
 * timestep after t, or 0 after the last. n elements each; x_out may alias x
 * (and model_output). t not in s->timesteps is a caller bug (PF_CHECK). */
void pf_perflow_step(const pf_perflow_sampler *s, float *x_out, const float *model_output, int64_t timestep,
                     const float *x, size_t n);

/* out = sqrt(alphas_cumprod[t - 1]) * x0 + sqrt(1 - alphas_cumprod[t - 1]) * noise,
 * as the reference's add_noise (timesteps count from 1 here). out may alias x0
 * or noise. t outside [1, T] is a caller bug (PF_CHECK). */
void pf_perflow_add_noise(const pf_perflow_sampler *s, float *out, const float *x0, const float *noise,
                          int64_t timestep, size_t n);

/* Sets *first to the index of the first of s->timesteps an img2img pipeline
 * runs at strength (0, 1], as diffusers' get_timesteps computes it from the
 * step count the caller asked for (requested_steps, before the sampler raised
 * it to K): requested - min(int(requested * strength), requested). The pipeline
 * noises its latents to s->timesteps[*first] and steps from there; *first ==
 * s->num_steps means no step is left (diffusers then fails). Returns 0, or -1
 * with err set for requested_steps < 1 or strength outside (0, 1]. */
int pf_perflow_img2img_first(const pf_perflow_sampler *s, int *first, int requested_steps, double strength,
                             pf_error *err);

#endif
