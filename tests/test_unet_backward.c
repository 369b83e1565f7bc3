/*
 * test_unet_backward.c - the UNet's backward pass to its conditioning
 * against torch autograd (tests/golden/train/grads_sdN.safetensors), with
 * and without gradient checkpointing, and against finite differences.
 *
 * Golden: the traced forward on noisy_latents, timesteps, encoder_hidden_
 * states must give pred within 1e-4 (and unet_forward's output bit for
 * bit); with dout = 2 (pred - target) / 2048 (the mean-squared-error loss
 * over all 2048 elements, pred and target from the golden), the gradient
 * must equal grad_encoder_hidden_states within 1e-4 of its largest
 * |value|.  Checkpointing must not change a bit of the gradient.  Finite
 * differences (central, loss summed in double over unet_forward outputs):
 * along the gradient with h = 1e-2 within 1e-2 relative, and at the four
 * coordinates of the largest gradients with h = 2e-2 within 2e-2 (see
 * FD_STEP_1).
 */
#include <stdlib.h>

#include "core/checkpoint.h"
#include "core/safetensors.h"
#include "core/unet.h"
#include "test.h"

#define PRED_TOL 1e-4f
#define REL_TOL 1e-4f
#define FD_STEP 1e-2f
#define FD_TOL 1e-2
/* One coordinate moves the loss by only ~1e-6 at h = 1e-2, where float
 * rounding in the forward pass is ~1e-8 (observed: errors grow as h shrinks,
 * 1.8e-2 at h = 1e-2, 0.12 at 1e-3): a wider step and tolerance. */
#define FD_STEP_1 2e-2f
#define FD_TOL_1 2e-2
#define FD_POINTS 4

enum { B = 2, C = 4, HW = 16 * 16, N = B * C * HW, T = 77, D = 16, NCTX = B * T * D };

/* The golden's inputs and torch's results, host floats. */
typedef struct golden {
    st_file *file;
    const float *x, *ctx, *pred, *target, *gctx;
    float t[B];
} golden;

static const float *golden_f32(const st_file *g, const char *name, uint64_t n)
{
    const st_tensor *t = st_find(g, name);
    if (!t || t->dtype != ST_F32 || t->nelem != n) {
        test_failed(__FILE__, __LINE__, "golden tensor %s missing or misshapen", name);
        return NULL;
    }
    return t->data;
}

static int golden_open(golden *g, const char *path)
{
    coin_error err = {0};
    memset(g, 0, sizeof *g);
    if (st_open(&g->file, path, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return -1;
    }
    g->x = golden_f32(g->file, "noisy_latents", N);
    g->ctx = golden_f32(g->file, "encoder_hidden_states", NCTX);
    g->pred = golden_f32(g->file, "pred", N);
    g->target = golden_f32(g->file, "target", N);
    g->gctx = golden_f32(g->file, "grad_encoder_hidden_states", NCTX);
    const st_tensor *ts = st_find(g->file, "timesteps");
    if (!g->x || !g->ctx || !g->pred || !g->target || !g->gctx || !ts || ts->nelem != B ||
        ts->dtype != ST_I64) {
        test_failed(__FILE__, __LINE__, "%s: unexpected golden layout", path);
        return -1;
    }
    for (int b = 0; b < B; b++)
        g->t[b] = (float)((const int64_t *)ts->data)[b];
    return 0;
}

/* A model with the golden's inputs uploaded. */
typedef struct fixture {
    golden g;
    checkpoint *ck;
    unet_model *m;
    tensor x, ctx;
} fixture;

static void fixture_close(fixture *f)
{
    tensor_free(&f->x);
    tensor_free(&f->ctx);
    unet_free(f->m);
    checkpoint_close(f->ck);
    st_close(f->g.file);
    memset(f, 0, sizeof *f);
}

static int fixture_open(fixture *f, const char *model, const char *golden_path)
{
    coin_error err = {0};
    memset(f, 0, sizeof *f);
    if (golden_open(&f->g, golden_path))
        return -1;
    const coin_backend *be = backend_cpu();
    if (checkpoint_open(&f->ck, model, SD_UNKNOWN, &err) || unet_load(&f->m, f->ck, be, &err) ||
        tensor_alloc4(&f->x, be, B, C, 16, 16, &err) || tensor_upload(&f->x, f->g.x, N, &err) ||
        tensor_alloc3(&f->ctx, be, B, T, D, &err) ||
        tensor_upload(&f->ctx, f->g.ctx, NCTX, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", model, err.msg);
        return -1;
    }
    return 0;
}

/* Traced forward and backward with dout = 2 (pred_for_dout - target) / N:
 * pred[N] and dctx[NCTX] to the host.  pred_for_dout NULL: coin's own pred. */
static int forward_backward(fixture *f, int checkpointing, const float *pred_for_dout,
                            float *pred, float *dctx)
{
    coin_error err = {0};
    unet_trace *trace = NULL;
    tensor out = {0}, dout = {0}, dc = {0};
    float d[N];
    int rc = unet_forward_trace(f->m, &f->x, f->g.t, &f->ctx, &out, checkpointing, &trace, &err);
    if (!rc)
        rc = tensor_download(&out, pred, N, &err);
    if (!rc) {
        const float *p = pred_for_dout ? pred_for_dout : pred;
        for (int i = 0; i < N; i++)
            d[i] = 2.0f * (p[i] - f->g.target[i]) / (float)N;
        rc = tensor_alloc4(&dout, backend_cpu(), B, C, 16, 16, &err);
    }
    if (!rc)
        rc = tensor_upload(&dout, d, N, &err);
    if (!rc)
        rc = unet_backward_ctx(f->m, trace, &dout, &dc, &err);
    if (!rc && (dc.ndim != 3 || dc.shape[0] != B || dc.shape[1] != T || dc.shape[2] != D))
        rc = coin_fail(&err, COIN_ESHAPE, "dctx has the wrong shape");
    if (!rc)
        rc = tensor_download(&dc, dctx, NCTX, &err);
    if (rc)
        test_failed(__FILE__, __LINE__, "forward/backward (checkpointing %d): %s", checkpointing,
                    err.msg);
    tensor_free(&out);
    tensor_free(&dout);
    tensor_free(&dc);
    unet_trace_free(trace);
    return rc;
}

static float max_abs(const float *a, int n)
{
    float m = 0;
    for (int i = 0; i < n; i++)
        m = fmaxf(m, fabsf(a[i]));
    return m;
}

static float max_diff(const float *a, const float *b, int n)
{
    float m = 0;
    for (int i = 0; i < n; i++)
        m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

static void check_autograd(const char *model, const char *golden_path)
{
    coin_error err = {0};
    fixture f;
    tensor plain = {0};
    if (fixture_open(&f, model, golden_path))
        goto done;
    float pred[N], dctx[NCTX], ref[N];
    if (forward_backward(&f, 0, f.g.pred, pred, dctx))
        goto done;
    float pred_err = max_diff(pred, f.g.pred, N);
    CHECK_MSG(pred_err <= PRED_TOL, "%s: pred differs by %g", model, pred_err);
    /* The traced forward is unet_forward op for op. */
    if (unet_forward(f.m, &f.x, f.g.t, &f.ctx, &plain, &err) ||
        tensor_download(&plain, ref, N, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", model, err.msg);
        goto done;
    }
    CHECK_MSG(!memcmp(pred, ref, sizeof pred), "%s: traced output differs from unet_forward's "
              "by %g", model, max_diff(pred, ref, N));
    float scale = max_abs(f.g.gctx, NCTX), worst = max_diff(dctx, f.g.gctx, NCTX);
    CHECK(scale > 0);
    CHECK_MSG(worst <= REL_TOL * scale, "%s: d loss / d ctx off by %g of max %g", model, worst,
              scale);
    printf("    %s: pred %.2g, d loss / d ctx %.2g relative (max |g| %.2g)\n", model, pred_err,
           worst / scale, scale);
done:
    tensor_free(&plain);
    fixture_close(&f);
}

TEST(unet_backward_sd1_matches_autograd)
{
    check_autograd("tests/golden/sd1/model.safetensors", "tests/golden/train/grads_sd1.safetensors");
    check_autograd("tests/golden/sd1/diffusers", "tests/golden/train/grads_sd1.safetensors");
}

TEST(unet_backward_sd2_matches_autograd)
{
    check_autograd("tests/golden/sd2/model.safetensors", "tests/golden/train/grads_sd2.safetensors");
    check_autograd("tests/golden/sd2/diffusers", "tests/golden/train/grads_sd2.safetensors");
}

static void check_checkpointing(const char *model, const char *golden_path)
{
    fixture f;
    if (fixture_open(&f, model, golden_path))
        goto done;
    float pred0[N], pred1[N], d0[NCTX], d1[NCTX];
    if (forward_backward(&f, 0, f.g.pred, pred0, d0) ||
        forward_backward(&f, 1, f.g.pred, pred1, d1))
        goto done;
    CHECK_MSG(!memcmp(pred0, pred1, sizeof pred0), "%s: checkpointing changes the output by %g",
              model, max_diff(pred0, pred1, N));
    CHECK_MSG(!memcmp(d0, d1, sizeof d0), "%s: checkpointing changes d loss / d ctx by %g",
              model, max_diff(d0, d1, NCTX));
    CHECK(max_abs(d0, NCTX) > 0);
done:
    fixture_close(&f);
}

TEST(unet_backward_checkpointing_gives_the_same_gradient)
{
    check_checkpointing("tests/golden/sd1/model.safetensors",
                        "tests/golden/train/grads_sd1.safetensors");
    check_checkpointing("tests/golden/sd2/diffusers", "tests/golden/train/grads_sd2.safetensors");
}

/* The loss of unet_forward at ctx, summed in double. */
static int loss_at(fixture *f, const float *ctx, double *loss)
{
    coin_error err = {0};
    tensor out = {0};
    float pred[N];
    int rc = tensor_upload(&f->ctx, ctx, NCTX, &err);
    if (!rc)
        rc = unet_forward(f->m, &f->x, f->g.t, &f->ctx, &out, &err);
    if (!rc)
        rc = tensor_download(&out, pred, N, &err);
    tensor_free(&out);
    if (rc) {
        test_failed(__FILE__, __LINE__, "unet_forward: %s", err.msg);
        return rc;
    }
    double sum = 0;
    for (int i = 0; i < N; i++) {
        double d = (double)pred[i] - f->g.target[i];
        sum += d * d;
    }
    *loss = sum / N;
    return 0;
}

static void check_finite_differences(const char *model, const char *golden_path)
{
    fixture f;
    if (fixture_open(&f, model, golden_path))
        goto done;
    float pred[N], dctx[NCTX], cp[NCTX], cm[NCTX];
    double lp, lm;
    /* The gradient of coin's own loss (coin's pred in dout). */
    if (forward_backward(&f, 1, NULL, pred, dctx))
        goto done;

    /* Along the gradient: every component at once, so the loss moves by
     * |g|_2 h, ten times more than along one coordinate. */
    double norm = 0;
    for (int i = 0; i < NCTX; i++)
        norm += (double)dctx[i] * dctx[i];
    norm = sqrt(norm);
    REQUIRE(norm > 0);
    double want = 0;
    for (int i = 0; i < NCTX; i++) {
        cp[i] = (float)(f.g.ctx[i] + FD_STEP * dctx[i] / norm);
        cm[i] = (float)(f.g.ctx[i] - FD_STEP * dctx[i] / norm);
        /* The steps as stored in float, not as intended. */
        want += (double)dctx[i] * ((double)cp[i] - cm[i]);
    }
    if (loss_at(&f, cp, &lp) || loss_at(&f, cm, &lm))
        goto done;
    double dir_rel = fabs((lp - lm) - want) / fabs(want);
    CHECK_MSG(dir_rel <= FD_TOL, "%s: along the gradient: backward %g, finite difference %g",
              model, want, lp - lm);

    /* Single coordinates, the largest components: the finite difference
     * resolves them best. */
    int at[FD_POINTS];
    for (int k = 0; k < FD_POINTS; k++) {
        at[k] = -1;
        for (int i = 0; i < NCTX; i++) {
            int taken = 0;
            for (int j = 0; j < k; j++)
                taken |= at[j] == i;
            if (!taken && (at[k] < 0 || fabsf(dctx[i]) > fabsf(dctx[at[k]])))
                at[k] = i;
        }
    }
    memcpy(cp, f.g.ctx, sizeof cp);
    double worst = 0;
    for (int k = 0; k < FD_POINTS; k++) {
        int i = at[k];
        cp[i] = f.g.ctx[i] + FD_STEP_1;
        if (loss_at(&f, cp, &lp))
            goto done;
        cp[i] = f.g.ctx[i] - FD_STEP_1;
        if (loss_at(&f, cp, &lm))
            goto done;
        cp[i] = f.g.ctx[i];
        double h2 = (double)(f.g.ctx[i] + FD_STEP_1) - (double)(f.g.ctx[i] - FD_STEP_1);
        double fd = (lp - lm) / h2, rel = fabs(fd - dctx[i]) / fabs(fd);
        worst = fmax(worst, rel);
        CHECK_MSG(rel <= FD_TOL_1, "%s: ctx[%d]: backward %g, finite difference %g", model, i,
                  dctx[i], fd);
    }
    printf("    %s: along the gradient %.2g relative; %d coordinates, worst %.2g relative\n",
           model, dir_rel, FD_POINTS, worst);
done:
    fixture_close(&f);
}

TEST(unet_backward_matches_finite_differences)
{
    check_finite_differences("tests/golden/sd1/model.safetensors",
                             "tests/golden/train/grads_sd1.safetensors");
    check_finite_differences("tests/golden/sd2/diffusers",
                             "tests/golden/train/grads_sd2.safetensors");
}

TEST(unet_backward_rejects_a_gradient_that_does_not_fit)
{
    coin_error err = {0};
    fixture f;
    unet_trace *trace = NULL;
    tensor out = {0}, dout = {0}, dc = {0};
    if (fixture_open(&f, "tests/golden/sd1/model.safetensors",
                     "tests/golden/train/grads_sd1.safetensors"))
        goto done;
    if (unet_forward_trace(f.m, &f.x, f.g.t, &f.ctx, &out, 1, &trace, &err) ||
        tensor_alloc4(&dout, backend_cpu(), B, C, 8, 8, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        goto done;
    }
    CHECK_EQ_INT(unet_backward_ctx(f.m, trace, &dout, &dc, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "unet_backward_ctx");
    CHECK(dc.mem == NULL);
done:
    tensor_free(&out);
    tensor_free(&dout);
    tensor_free(&dc);
    unet_trace_free(trace);
    fixture_close(&f);
}
