/*
 * test_clip_backward.c - the text encoder's backward pass against torch
 * autograd (tests/golden/train/grads_sdN.safetensors): given d loss / d
 * encoder_hidden_states from the golden, the gradient on the two trigger
 * rows (ids 49408, 49409) must equal torch's within 1e-4 relative error (of
 * the largest component), as the issue asks.
 */
#include <stdlib.h>

#include "core/checkpoint.h"
#include "core/clip.h"
#include "core/safetensors.h"
#include "test.h"

#define REL_TOL 1e-4f

static const float *golden_f32(const st_file *g, const char *name, uint64_t n)
{
    const st_tensor *t = st_find(g, name);
    if (!t || t->dtype != ST_F32 || t->nelem != n) {
        test_failed(__FILE__, __LINE__, "golden tensor %s missing or misshapen", name);
        return NULL;
    }
    return t->data;
}

static void check_backward(const char *model, const char *golden)
{
    coin_error err = {0};
    st_file *g = NULL;
    checkpoint *ck = NULL;
    clip_model *m = NULL;
    clip_trace *trace = NULL;
    tensor out = {0}, dout = {0}, drows = {0};
    REQUIRE_OK(st_open(&g, golden, &err), &err);
    enum { B = 2, T = 77, D = 16, R = 2 };
    const float *init = golden_f32(g, "trigger_init", R * D);
    const float *ehs = golden_f32(g, "encoder_hidden_states", B * T * D);
    const float *gehs = golden_f32(g, "grad_encoder_hidden_states", B * T * D);
    const float *gtrig = golden_f32(g, "grad_trigger", R * D);
    const st_tensor *ids64 = st_find(g, "input_ids");
    if (!init || !ehs || !gehs || !gtrig || !ids64 || ids64->nelem != B * T)
        goto done;
    int32_t ids[B * T];
    for (int i = 0; i < B * T; i++)
        ids[i] = (int32_t)((const int64_t *)ids64->data)[i];
    if (checkpoint_open(&ck, model, SD_UNKNOWN, &err) ||
        clip_load(&m, ck, backend_cpu(), &err) ||
        clip_add_tokens(m, init, R, 49408, &err) ||
        clip_forward_trace(m, ids, B, &out, &trace, &err) ||
        tensor_alloc3(&dout, backend_cpu(), B, T, D, &err) ||
        tensor_upload(&dout, gehs, B * T * D, &err) ||
        tensor_alloc2(&drows, backend_cpu(), R, D, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", model, err.msg);
        goto done;
    }
    float zeros[R * D] = {0}, got[R * D], hs[B * T * D];
    REQUIRE_OK(tensor_upload(&drows, zeros, R * D, &err), &err);
    REQUIRE_OK(tensor_download(&out, hs, B * T * D, &err), &err);
    float ehs_err = 0;
    for (int i = 0; i < B * T * D; i++)
        ehs_err = fmaxf(ehs_err, fabsf(hs[i] - ehs[i]));
    CHECK_MSG(ehs_err <= 1e-4f, "%s: hidden states differ by %g", model, ehs_err);
    if (clip_backward(m, trace, &dout, 49408, &drows, &err) ||
        tensor_download(&drows, got, R * D, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", model, err.msg);
        goto done;
    }
    float worst = 0, scale = 0;
    for (int i = 0; i < R * D; i++) {
        worst = fmaxf(worst, fabsf(got[i] - gtrig[i]));
        scale = fmaxf(scale, fabsf(gtrig[i]));
    }
    CHECK(scale > 0);
    CHECK_MSG(worst <= REL_TOL * scale, "%s: trigger gradient off by %g of max %g", model, worst,
              scale);
    printf("    %s: hidden states %.2g, trigger gradient %.2g relative\n", model, ehs_err,
           worst / scale);
done:
    tensor_free(&out);
    tensor_free(&dout);
    tensor_free(&drows);
    clip_trace_free(trace);
    clip_free(m);
    checkpoint_close(ck);
    st_close(g);
}

TEST(clip_backward_sd1_matches_autograd)
{
    check_backward("tests/golden/sd1/model.safetensors", "tests/golden/train/grads_sd1.safetensors");
    check_backward("tests/golden/sd1/diffusers", "tests/golden/train/grads_sd1.safetensors");
}

TEST(clip_backward_sd2_matches_autograd)
{
    check_backward("tests/golden/sd2/model.safetensors", "tests/golden/train/grads_sd2.safetensors");
    check_backward("tests/golden/sd2/diffusers", "tests/golden/train/grads_sd2.safetensors");
}
