/*
 * test_sched.c - the schedule and the samplers against diffusers 0.31.0.
 *
 * tests/golden/sched/sched.safetensors (tools/reference/make_sched_goldens.py)
 * holds, per case, the timesteps diffusers gave the model, init_noise_sigma,
 * some of the model's (scaled) inputs and the final latents of a full run
 * with a synthetic closed-form "model" (toy_model below, the same formula in
 * the generator) on a [1,4,4,4] latent, plus the Euler a noise draws.
 * Tolerances: final latents and model inputs 1e-5 max absolute error;
 * integer timesteps exact; Euler's fractional Karras timesteps 1e-3 (numpy's
 * SIMD float32 log is not correctly rounded; see sched.c); init_noise_sigma
 * 1e-6 relative.  Set COIN_SCHED_VERBOSE=1 to print the observed maxima.
 */
#include <stdint.h>
#include <stdlib.h>

#include "core/safetensors.h"
#include "core/sched.h"
#include "test.h"

#define GOLDEN "tests/golden/sched/sched.safetensors"
#define N 64
#define MAX_CALLS 1100
#define TOL_X 1e-5
#define TOL_T_FRAC 1e-3

/* ---- the synthetic model and the callbacks ---- */

typedef struct toy {
    const float *noise;     /* golden "noise": row 0 initial latents, then draws */
    int noise_rows, noise_used;
    int calls;
    float t[MAX_CALLS];
    float *inputs;          /* [MAX_CALLS][N] */
    int fail_at;            /* make this call fail (-1: never) */
    int stop_at;            /* progress asks to stop after this call (-1: never) */
    prediction_kind pred;
} toy;

/* The generator's MODEL: the exact denoiser of toy data x0[i] ~ N(mu[i], S2)
 * under an approximate schedule a(t), in double, rounded once. */
static void toy_model(const float *x, float t, prediction_kind pred, float *out)
{
    const double s2 = 0.25;
    double a = exp(-5.4 * pow(t / 1000.0, 1.8));
    double sa = sqrt(a), sb = sqrt(1.0 - a);
    double den = a * s2 + 1.0 - a;
    for (int i = 0; i < N; i++) {
        double mu = 0.8 * sin(0.37 * i + 0.5);
        double r = x[i] - sa * mu;
        double eps = sb * r / den;
        if (pred == PREDICT_EPSILON) {
            out[i] = (float)eps;
        } else {
            double x0 = mu + sa * s2 * r / den;
            out[i] = (float)(sa * eps - sb * x0);
        }
    }
}

static int toy_denoise(void *ctx, const float *x_in, float t, float *out, coin_error *err)
{
    toy *s = ctx;
    if (s->calls == s->fail_at)
        return coin_fail(err, COIN_EIO, "toy model failure");
    if (s->calls < MAX_CALLS) {
        s->t[s->calls] = t;
        memcpy(s->inputs + (size_t)s->calls * N, x_in, N * sizeof *x_in);
    }
    s->calls++;
    toy_model(x_in, t, s->pred, out);
    return 0;
}

static void toy_noise(void *ctx, float *out, int64_t n)
{
    toy *s = ctx;
    s->noise_used++;
    if (n != N || s->noise_used >= s->noise_rows) {
        memset(out, 0, (size_t)n * sizeof *out);
        return;
    }
    memcpy(out, s->noise + (size_t)s->noise_used * N, N * sizeof *out);
}

static int toy_progress(void *ctx, int step, int total)
{
    toy *s = ctx;
    (void)total;
    return s->stop_at >= 0 && step >= s->stop_at;
}

/* ---- golden access ---- */

static float *read_f32(const st_file *f, const char *name, int64_t *count)
{
    const st_tensor *t = st_find(f, name);
    if (!t) {
        test_failed(__FILE__, __LINE__, "golden has no tensor %s", name);
        return NULL;
    }
    float *v = malloc((t->nelem ? t->nelem : 1) * sizeof *v);
    coin_error err = {0};
    if (!v || st_tensor_to_f32(f, t, v, t->nelem, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", name, err.msg);
        free(v);
        return NULL;
    }
    if (count)
        *count = (int64_t)t->nelem;
    return v;
}

static st_file *open_golden(void)
{
    st_file *f = NULL;
    coin_error err = {0};
    if (st_open(&f, GOLDEN, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return NULL;
    }
    return f;
}

/* "<sampler>_<eps|v>[_karras][_<spacing>]_s<steps>" */
typedef struct case_spec {
    sampler_kind kind;
    sched_config cfg;
    int steps;
} case_spec;

static int parse_case(const char *name, case_spec *cs)
{
    int best = -1;
    size_t best_len = 0;
    for (int k = 0; k < SAMPLER_COUNT; k++) {
        size_t l = strlen(sampler_name(k));
        if (!strncmp(name, sampler_name(k), l) && name[l] == '_' && l > best_len) {
            best = k;
            best_len = l;
        }
    }
    if (best < 0)
        return -1;
    const char *r = name + best_len + 1;
    prediction_kind pred;
    if (!strncmp(r, "eps_", 4)) {
        pred = PREDICT_EPSILON;
        r += 4;
    } else if (!strncmp(r, "v_", 2)) {
        pred = PREDICT_V;
        r += 2;
    } else {
        return -1;
    }
    cs->kind = (sampler_kind)best;
    cs->cfg = sched_default(pred);
    if (!strncmp(r, "karras_", 7)) {
        cs->cfg.karras = 1;
        r += 7;
    }
    static const struct { const char *s; spacing_kind k; } sp[] = {
        {"leading_", SPACING_LEADING}, {"linspace_", SPACING_LINSPACE},
        {"trailing_", SPACING_TRAILING},
    };
    for (size_t i = 0; i < sizeof sp / sizeof sp[0]; i++)
        if (!strncmp(r, sp[i].s, strlen(sp[i].s))) {
            cs->cfg.spacing = sp[i].k;
            r += strlen(sp[i].s);
        }
    if (r[0] != 's')
        return -1;
    cs->steps = atoi(r + 1);
    return cs->steps > 0 ? 0 : -1;
}

/* ---- tests ---- */

TEST(sched_alphas_cumprod_matches)
{
    st_file *f = open_golden();
    REQUIRE(f);
    int64_t n = 0;
    float *want = read_f32(f, "alphas_cumprod", &n);
    float *want_sig = read_f32(f, "train_sigmas", NULL);
    if (want && want_sig && n == SCHED_TRAIN_STEPS) {
        sched_config c = sched_default(PREDICT_EPSILON);
        float ac[SCHED_TRAIN_STEPS];
        sched_alphas_cumprod(&c, ac);
        int diff = 0, sig_off = 0, sig_far = 0;
        for (int i = 0; i < SCHED_TRAIN_STEPS; i++) {
            diff += ac[i] != want[i];
            /* torch's float32 sqrt (MKL) is not correctly rounded: about 1 in
             * 200 results is 1 ulp off, so allow 1 ulp here */
            float s = sqrtf((1.0f - ac[i]) / ac[i]);
            sig_off += s != want_sig[i];
            sig_far += fabsf(s - want_sig[i]) > 1.2e-7f * want_sig[i];
        }
        CHECK_MSG(diff == 0, "%d alphas_cumprod values differ from torch's", diff);
        CHECK_MSG(sig_far == 0 && sig_off < 20, "%d training sigmas differ (%d by more than 1 ulp)",
                  sig_off, sig_far);
        /* REFERENCE.md section 8's test values */
        CHECK(fabs(ac[999] - 0.0046601) < 1e-7);
        CHECK(fabs(sqrt((1.0 - ac[999]) / ac[999]) - 14.6146) < 1e-4);
        CHECK(fabs(sqrt((1.0 - ac[0]) / ac[0]) - 0.029167) < 1e-6);
        CHECK(fabs(ac[0] - 0.99915) < 1e-6);
    } else {
        test_failed(__FILE__, __LINE__, "alphas_cumprod golden missing or wrong size");
    }
    free(want);
    free(want_sig);
    st_close(f);
}

/* Max observed errors per sampler, over all cases. */
static double max_dx[SAMPLER_COUNT], max_din[SAMPLER_COUNT], max_dt[SAMPLER_COUNT];

static void run_case(const st_file *f, const char *name, const float *noise, int noise_rows)
{
    case_spec cs;
    if (parse_case(name, &cs)) {
        test_failed(__FILE__, __LINE__, "cannot parse case name %s", name);
        return;
    }
    char key[160];
    int64_t n_t = 0, n_in = 0;
    snprintf(key, sizeof key, "%s.t", name);
    float *want_t = read_f32(f, key, &n_t);
    snprintf(key, sizeof key, "%s.init_sigma", name);
    float *want_sigma = read_f32(f, key, NULL);
    snprintf(key, sizeof key, "%s.final", name);
    float *want_x = read_f32(f, key, NULL);
    snprintf(key, sizeof key, "%s.inputs", name);
    float *want_in = read_f32(f, key, &n_in);
    snprintf(key, sizeof key, "%s.input_calls", name);
    const st_tensor *ic = st_find(f, key);
    toy s = { .noise = noise, .noise_rows = noise_rows, .fail_at = -1, .stop_at = -1,
              .pred = cs.cfg.prediction };
    s.inputs = malloc((size_t)MAX_CALLS * N * sizeof(float));
    float *tt = malloc(MAX_CALLS * sizeof(float));
    if (!want_t || !want_sigma || !want_x || !want_in || !ic || ic->dtype != ST_I32 ||
        !s.inputs || !tt) {
        test_failed(__FILE__, __LINE__, "%s: golden incomplete", name);
        goto done;
    }
    sampler_kind k = cs.kind;
    coin_error err = {0};

    /* init_noise_sigma, then latents = noise * init_noise_sigma as the pipeline does */
    float sigma = sampler_init_sigma(k, &cs.cfg, cs.steps);
    CHECK_MSG(fabs(sigma - want_sigma[0]) <= 1e-6 * want_sigma[0],
              "%s: init_noise_sigma %.9g, diffusers %.9g", name, sigma, want_sigma[0]);
    CHECK_MSG(sampler_model_calls(k, cs.steps) == n_t, "%s: %d model calls, diffusers %lld",
              name, sampler_model_calls(k, cs.steps), (long long)n_t);

    /* timesteps, from the planning call */
    if (sampler_timesteps(k, &cs.cfg, cs.steps, tt, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", name, err.msg);
        goto done;
    }
    for (int i = 0; i < n_t; i++) {
        double d = fabs((double)tt[i] - want_t[i]);
        int integral = want_t[i] == floorf(want_t[i]) && tt[i] == floorf(tt[i]);
        if (d > max_dt[k])
            max_dt[k] = d;
        if (integral ? d != 0.0 : d > TOL_T_FRAC) {
            test_failed(__FILE__, __LINE__, "%s: timestep %d is %.9g, diffusers %.9g", name, i,
                        tt[i], want_t[i]);
            break;
        }
    }

    float x[N];
    for (int i = 0; i < N; i++)
        x[i] = noise[i] * sigma;
    sched_callbacks cb = { toy_denoise, toy_noise, toy_progress, &s };
    if (sampler_run(k, &cs.cfg, cs.steps, x, N, &cb, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", name, err.msg);
        goto done;
    }
    CHECK_MSG(s.calls == n_t, "%s: model called %d times, diffusers %lld", name, s.calls,
              (long long)n_t);
    CHECK_MSG(s.noise_used == (k == SAMPLER_EULER_A ? cs.steps : 0),
              "%s: %d noise draws", name, s.noise_used);
    for (int i = 0; i < s.calls && i < n_t; i++)
        CHECK_MSG(s.t[i] == tt[i], "%s: call %d saw t=%.9g, planned %.9g", name, i, s.t[i], tt[i]);

    /* the recorded model inputs (scaled as scale_model_input scales them) */
    const int32_t *calls = ic->data;
    double din = 0;
    for (uint64_t j = 0; j < ic->nelem && (int64_t)(j + 1) * N <= n_in; j++) {
        int call = calls[j];
        if (call >= s.calls)
            continue;
        for (int i = 0; i < N; i++) {
            double d = fabs((double)s.inputs[(size_t)call * N + i] - want_in[j * N + i]);
            din = d > din ? d : din;
        }
    }
    double dx = 0;
    for (int i = 0; i < N; i++) {
        double d = fabs((double)x[i] - want_x[i]);
        dx = d > dx || d != d ? d : dx;
    }
    max_din[k] = din > max_din[k] ? din : max_din[k];
    max_dx[k] = dx > max_dx[k] ? dx : max_dx[k];
    CHECK_MSG(din <= TOL_X, "%s: model inputs differ by %.3g", name, din);
    CHECK_MSG(dx <= TOL_X, "%s: final latents differ by %.3g", name, dx);
done:
    free(want_t);
    free(want_sigma);
    free(want_x);
    free(want_in);
    free(s.inputs);
    free(tt);
}

TEST(sched_samplers_match_diffusers)
{
    st_file *f = open_golden();
    REQUIRE(f);
    int64_t n_noise = 0;
    float *noise = read_f32(f, "noise", &n_noise);
    const char *cases = st_meta(f, "cases");
    if (!noise || !cases) {
        test_failed(__FILE__, __LINE__, "golden has no noise or no case list");
        free(noise);
        st_close(f);
        return;
    }
    /* every sampler x prediction x (Karras) x steps of the default matrix
     * must be among the cases, so a thinner golden cannot pass silently */
    static const int steps[] = {1, 2, 4, 10, 50};
    for (int k = 0; k < SAMPLER_COUNT; k++)
        for (int v = 0; v < 2; v++)
            for (int kar = 0; kar < 2; kar++)
                for (int i = 0; i < 5; i++) {
                    if (kar && (k == SAMPLER_DDIM || k == SAMPLER_PNDM))
                        continue;
                    char want[64];
                    snprintf(want, sizeof want, "%s_%s%s_s%d", sampler_name(k), v ? "v" : "eps",
                             kar ? "_karras" : "", steps[i]);
                    size_t l = strlen(want);
                    const char *p = cases;
                    int found = 0;
                    while ((p = strstr(p, want)) && !found) {
                        found = (p == cases || p[-1] == ',') && (p[l] == ',' || p[l] == '\0');
                        p += l;
                    }
                    CHECK_MSG(found, "golden lacks case %s", want);
                }
    int n_cases = 0;
    const char *p = cases;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        char name[128];
        if (l < sizeof name) {
            memcpy(name, p, l);
            name[l] = '\0';
            run_case(f, name, noise, (int)(n_noise / N));
            n_cases++;
        }
        p += l + (e ? 1 : 0);
    }
    CHECK(n_cases >= 100);
    if (getenv("COIN_SCHED_VERBOSE")) {
        printf("    %d cases; max |final|, |inputs|, |t| error per sampler:\n", n_cases);
        for (int k = 0; k < SAMPLER_COUNT; k++)
            printf("      %-9s %.3g  %.3g  %.3g\n", sampler_name(k), max_dx[k], max_din[k],
                   max_dt[k]);
    }
    free(noise);
    st_close(f);
}

TEST(sched_training_noise_and_velocity)
{
    st_file *f = open_golden();
    REQUIRE(f);
    float *x0 = read_f32(f, "train.x0", NULL);
    float *eps = read_f32(f, "train.eps", NULL);
    float *want_noisy = read_f32(f, "train.add_noise", NULL);
    float *want_v = read_f32(f, "train.velocity", NULL);
    const st_tensor *tt = st_find(f, "train.t");
    if (x0 && eps && want_noisy && want_v && tt && tt->dtype == ST_I64 && tt->nelem == 3) {
        int t[3];
        for (int i = 0; i < 3; i++) {
            int64_t v;
            memcpy(&v, (const char *)tt->data + 8 * i, 8);
            t[i] = (int)v;
        }
        sched_config c = sched_default(PREDICT_V);
        float noisy[3 * N], vel[3 * N];
        coin_error err = {0};
        REQUIRE_OK(sched_add_noise(&c, x0, eps, t, 3, N, noisy, &err), &err);
        REQUIRE_OK(sched_velocity(&c, x0, eps, t, 3, N, vel, &err), &err);
        double dn = 0, dv = 0;
        for (int i = 0; i < 3 * N; i++) {
            dn = fmax(dn, fabs((double)noisy[i] - want_noisy[i]));
            dv = fmax(dv, fabs((double)vel[i] - want_v[i]));
        }
        /* the same float32 operations as torch: exact, unless the compiler
         * contracts a * b + c into an FMA (-ffp-contract=fast) */
        CHECK_MSG(dn <= 1e-6 && dv <= 1e-6, "add_noise off by %.3g, velocity by %.3g", dn, dv);
        float sa, sb;
        REQUIRE_OK(sched_noise_coefs(&c, 999, &sa, &sb, &err), &err);
        CHECK(fabs(sa * sa - 0.0046601) < 1e-6 && fabs(sa * sa + sb * sb - 1.0) < 1e-6);
        int bad = 1000;
        CHECK(sched_add_noise(&c, x0, eps, &bad, 1, N, noisy, &err) == COIN_EINVAL);
        CHECK_STR_CONTAINS(err.msg, "1000");
    } else {
        test_failed(__FILE__, __LINE__, "training golden incomplete");
    }
    free(x0);
    free(eps);
    free(want_noisy);
    free(want_v);
    st_close(f);
}

TEST(sched_names_round_trip)
{
    for (int k = 0; k < SAMPLER_COUNT; k++) {
        CHECK_EQ_INT(sampler_parse(sampler_name(k)), k);
        CHECK_EQ_INT(sampler_parse(sampler_a1111_name(k)), k);
    }
    CHECK_EQ_INT(sampler_parse("Euler a"), SAMPLER_EULER_A);
    CHECK_EQ_INT(sampler_parse("euler a"), SAMPLER_EULER_A);
    CHECK_EQ_INT(sampler_parse("PLMS"), SAMPLER_PNDM);
    CHECK_EQ_INT(sampler_parse("DPM++ 2M"), SAMPLER_DPMPP_2M);
    CHECK_EQ_INT(sampler_parse("dpm++"), -1);
    CHECK_EQ_INT(sampler_parse(""), -1);
    CHECK_EQ_INT(sampler_parse(NULL), -1);
    CHECK(!strcmp(sampler_a1111_name(SAMPLER_PNDM), "PLMS"));
    CHECK_EQ_INT(sampler_model_calls(SAMPLER_PNDM, 1), 1);
    CHECK_EQ_INT(sampler_model_calls(SAMPLER_PNDM, 20), 21);
    CHECK_EQ_INT(sampler_model_calls(SAMPLER_DPMPP_2M, 20), 20);
}

TEST(sched_rejects_bad_arguments)
{
    toy s = { .fail_at = -1, .stop_at = -1 };
    s.inputs = malloc((size_t)MAX_CALLS * N * sizeof(float));
    REQUIRE(s.inputs);
    sched_callbacks cb = { toy_denoise, toy_noise, toy_progress, &s };
    float x[N] = {0};
    coin_error err = {0};
    sched_config c = sched_default(PREDICT_EPSILON);

    CHECK(sampler_run(SAMPLER_DDIM, &c, 0, x, N, &cb, &err) == COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "steps");
    CHECK(sampler_run(SAMPLER_DDIM, &c, 1001, x, N, &cb, &err) == COIN_EINVAL);
    CHECK(sampler_init_sigma(SAMPLER_EULER, &c, 0) < 0);

    c.karras = 1;
    CHECK(sampler_run(SAMPLER_PNDM, &c, 10, x, N, &cb, &err) == COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "Karras");
    c.karras = 0;

    /* diffusers' trailing spacing makes 62 timesteps (the last -1) for 61 steps */
    c.spacing = SPACING_TRAILING;
    CHECK(sampler_run(SAMPLER_DDIM, &c, 61, x, N, &cb, &err) == COIN_EUNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "61");
    c.spacing = SPACING_LEADING;
    /* DDIM leading with 1000 steps would index alphas_cumprod[1000] */
    CHECK(sampler_run(SAMPLER_DDIM, &c, 1000, x, N, &cb, &err) == COIN_EUNSUPPORTED);
    c = sched_default(PREDICT_EPSILON);

    sched_callbacks no_noise = { toy_denoise, NULL, NULL, &s };
    CHECK(sampler_run(SAMPLER_EULER_A, &c, 4, x, N, &no_noise, &err) == COIN_EINVAL);

    /* a failing model stops the run with its own error */
    s.fail_at = 2;
    s.calls = 0;
    CHECK(sampler_run(SAMPLER_DPMPP_2M, &c, 10, x, N, &cb, &err) == COIN_EIO);
    CHECK_STR_CONTAINS(err.msg, "toy model failure");
    CHECK_EQ_INT(s.calls, 2);
    /* progress can interrupt */
    s.fail_at = -1;
    s.stop_at = 3;
    s.calls = 0;
    coin_error_clear(&err);
    CHECK(sampler_run(SAMPLER_EULER, &c, 10, x, N, &cb, &err) == COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "interrupted");
    CHECK_EQ_INT(s.calls, 3);
    free(s.inputs);
}
