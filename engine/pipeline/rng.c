/* rng.c - PyTorch's CPU random generator and torch.randn, reproduced bit for bit.
 *
 * What torch does (read from torch 2.8's ATen sources: core/MT19937RNGEngine.h,
 * CPUGeneratorImpl.{h,cpp}, core/DistributionsHelper.h, core/TransformationHelper.h,
 * native/cpu/DistributionTemplates.h, native/cpu/avx_mathfun.h) and checked
 * against tests/data/rng_goldens.json:
 *
 * Seeding. Generator.manual_seed(s) takes s as a uint64 and calls
 * CPUGeneratorImpl::set_current_seed, which clears both cached normals and
 * builds at::mt19937(s). The engine keeps all 64 bits as its "seed" but puts
 * only `s & 0xffffffff` into state[0]; the rest of the state is the classic
 * MT19937 init_genrand recurrence, left = 1, next = 0 (so the first draw
 * twists). Hence manual_seed(5) and manual_seed(2**32 + 5) give one stream.
 *
 * Draws. random() is one tempered MT19937 output; random64() is two, the first
 * in the high 32 bits. uniform_real_distribution<float> keeps the low 24 bits of
 * random() and scales by 2^-24 (exact in float); <double> keeps the low 53 bits
 * of random64() and scales by 2^-53.
 *
 * randn on float32 (normal_kernel), two paths chosen by element count:
 * - n >= 16 (contiguous): normal_fill. First n uniform floats are drawn into the
 *   output, one random() each. Then each block of 16 is Box-Muller'd in place
 *   with u1 = 1 - d[j], u2 = d[j+8] (j < 8): d[j] = radius * cos(theta),
 *   d[j+8] = radius * sin(theta), radius = sqrt(-2 * log(u1)), theta = 2 pi u2.
 *   When n % 16 != 0 the tail is one more block over the LAST 16 elements, with
 *   16 fresh uniforms overwriting the normals already computed there. This path
 *   neither reads nor writes the cached normal. How log and sincos are computed
 *   depends on the CPU torch runs on (at::native dispatch), and the two ways
 *   differ in the last bits of about a third of the values:
 *   - x86 with AVX2, AVX-512 machines included (this kernel has no AVX-512
 *     build; checked on an AVX-512 Xeon): normal_fill_16_AVX2, whose
 *     log256_ps/sincos256_ps are Cephes polynomials in float, theta is the
 *     float product float(2 pi) * u2, and GCC fused many multiply-adds into
 *     FMAs in torch 2.8's wheel. Which ones was read from the disassembly of
 *     libtorch_cpu.so; log_cephes and sincos_cephes write each one as fmaf.
 *   - without AVX2 (ATEN_CPU_CAPABILITY=default): the generic normal_fill_16,
 *     radius = sqrtf(-2 * logf(u1)), theta = (float)(2.0 * pi * (double)u2),
 *     glibc's logf and sincosf.
 * - n < 16: a serial loop of at::normal_distribution<double>(0, 1), one per
 *   element, cast to float. Each call first returns the generator's cached
 *   double normal if one is set (and clears it); otherwise it draws u1 then u2
 *   (two random64() each), r = sqrt(-2 * log1p(-u2)), theta = 2 * pi * u1,
 *   caches r * sin(theta) and returns r * cos(theta). The cache lives in the
 *   generator, so it carries over to the next small randn call: randn(3) uses
 *   pairs A, A, B and leaves B's sine cached; a following randn(3) returns that
 *   sine, then C, C. manual_seed clears it.
 *
 * libm must be glibc's for the generic kernel and the small path to match bit
 * for bit, as torch itself calls glibc's logf/sincosf/log1p/sin/cos. This file
 * must be compiled without FP contraction (-std=c11 implies
 * -ffp-contract=off in GCC): every fused multiply-add is written out as fmaf. */
#include "rng.h"

#include <math.h>
#include <string.h>

#include "error.h"

#ifdef __clang__ /* clang contracts a * b + c by default even in C11 mode */
#pragma STDC FP_CONTRACT OFF
#endif

/* c10::pi<double>. */
#define PF_PI 3.14159265358979323846

enum { MT_M = 397 };

void pf_rng_seed(pf_rng *g, uint64_t seed) {
    memset(g, 0, sizeof *g);
    g->seed = seed;
    g->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < PF_RNG_MT_N; j++)
        g->state[j] = 1812433253u * (g->state[j - 1] ^ (g->state[j - 1] >> 30)) + j;
    g->left = 1;
    g->next = 0;
    g->has_cached_normal = 0;
    g->kernel = PF_RNG_TORCH_X86;
}

void pf_rng_set_kernel(pf_rng *g, pf_rng_kernel kernel) {
    PF_CHECK(kernel == PF_RNG_TORCH_X86 || kernel == PF_RNG_TORCH_GENERIC);
    g->kernel = kernel;
}

static uint32_t twist(uint32_t u, uint32_t v) {
    uint32_t mixed = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (mixed >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

/* Regenerates all 624 words (at::mt19937::next_state). */
static void next_state(pf_rng *g) {
    uint32_t *s = g->state;
    int k = 0;
    for (; k < PF_RNG_MT_N - MT_M; k++) s[k] = s[k + MT_M] ^ twist(s[k], s[k + 1]);
    for (; k < PF_RNG_MT_N - 1; k++) s[k] = s[k + MT_M - PF_RNG_MT_N] ^ twist(s[k], s[k + 1]);
    s[k] = s[k + MT_M - PF_RNG_MT_N] ^ twist(s[k], s[0]);
    g->left = PF_RNG_MT_N;
    g->next = 0;
}

uint32_t pf_rng_random(pf_rng *g) {
    PF_CHECK(g->left >= 1 && g->left <= PF_RNG_MT_N && g->next >= 0 && g->next < PF_RNG_MT_N + 1);
    if (--g->left == 0) next_state(g);
    uint32_t y = g->state[g->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t pf_rng_random64(pf_rng *g) {
    uint32_t hi = pf_rng_random(g);
    uint32_t lo = pf_rng_random(g);
    return ((uint64_t)hi << 32) | lo;
}

/* uniform_real_distribution<float>(0, 1). */
static float uniform_f32(pf_rng *g) {
    return (float)(pf_rng_random(g) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* uniform_real_distribution<double>(0, 1). */
static double uniform_f64(pf_rng *g) {
    return (double)(pf_rng_random64(g) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* at::normal_distribution<double>(0, 1), with the generator's cache. */
static double normal_f64(pf_rng *g) {
    if (g->has_cached_normal) {
        g->has_cached_normal = 0;
        return g->cached_normal;
    }
    double u1 = uniform_f64(g);
    double u2 = uniform_f64(g);
    double r = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * PF_PI * u1;
    g->cached_normal = r * sin(theta);
    g->has_cached_normal = 1;
    return r * cos(theta);
}

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* log256_ps for one lane, x in (0, 1] (torch passes 1 - uniform). */
static float log_cephes(float x) {
    x = x > u2f(0x00800000u) ? x : u2f(0x00800000u); /* cut off denormals */
    int32_t imm0 = (int32_t)(f2u(x) >> 23) - 0x7f;
    x = u2f((f2u(x) & ~0x7f800000u) | f2u(0.5f)); /* mantissa in [0.5, 1) */
    float e = (float)imm0 + 1.0f;
    uint32_t mask = x < 0.707106781186547524f ? 0xffffffffu : 0u;
    float tmp = u2f(f2u(x) & mask);
    x = x + -1.0f;
    e = e - u2f(f2u(1.0f) & mask);
    x = tmp + x;
    float z = x * x;
    float y = 7.0376836292E-2f;
    y = fmaf(y, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, 1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, 2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, 3.3333331174E-1f);
    y = x * y;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    return fmaf(e, 0.693359375f, x);
}

/* sincos256_ps for one lane, x >= 0 and small (torch passes 2 pi u). */
static void sincos_cephes(float xin, float *s, float *c) {
    uint32_t sign_sin = f2u(xin) & 0x80000000u;
    float x = u2f(f2u(xin) & 0x7fffffffu);
    int32_t j = (int32_t)(x * 1.27323954473516f); /* 4 / pi; truncates like cvttps */
    j = (j + 1) & ~1;
    float y = (float)j;
    uint32_t swap_sign_sin = (uint32_t)(j & 4) << 29;
    uint32_t poly_mask = (j & 2) == 0 ? 0xffffffffu : 0u;
    x = fmaf(y, -0.78515625f, x); /* extended precision modular arithmetic */
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    sign_sin ^= swap_sign_sin;

    float z = x * x;
    float yc = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = z * yc;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;

    float ys = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = z * ys;
    ys = fmaf(ys, x, x);

    float ysin2 = u2f(f2u(ys) & poly_mask);
    float ysin1 = u2f(f2u(yc) & ~poly_mask);
    float sin_v = ysin2 + ysin1;
    float cos_v = (ys - ysin2) + (yc - ysin1);
    *s = u2f(f2u(sin_v) ^ sign_sin);
    *c = u2f(f2u(cos_v) ^ sign_cos);
}

/* normal_fill_16_AVX2 with mean 0 and std 1 (the final fma(n, std, mean) is the
 * "+ 0.0f", which turns -0 into +0 as torch does). */
static void box_muller_16_x86(float *d) {
    const float two_pi = (float)(2.0 * PF_PI);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(log_cephes(u1) * -2.0f);
        float s, c;
        sincos_cephes(two_pi * u2, &s, &c);
        d[j] = radius * c + 0.0f;
        d[j + 8] = radius * s + 0.0f;
    }
}

/* The generic normal_fill_16, mean 0 and std 1. */
static void box_muller_16_generic(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = (float)(2.0 * PF_PI * (double)u2);
        d[j] = radius * cosf(theta) + 0.0f;
        d[j + 8] = radius * sinf(theta) + 0.0f;
    }
}

static void box_muller_16(const pf_rng *g, float *d) {
    if (g->kernel == PF_RNG_TORCH_GENERIC)
        box_muller_16_generic(d);
    else
        box_muller_16_x86(d);
}

void pf_rng_randn(pf_rng *g, float *out, size_t n) {
    if (n < 16) {
        for (size_t i = 0; i < n; i++) out[i] = (float)(normal_f64(g) + 0.0);
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = uniform_f32(g);
    for (size_t i = 0; i + 16 <= n; i += 16) box_muller_16(g, out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = uniform_f32(g);
        box_muller_16(g, tail);
    }
}
