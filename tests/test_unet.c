/*
 * test_unet.c - the UNet against diffusers' UNet2DConditionModel.
 *
 * tests/golden/sd{1,2}/unet_reference.safetensors hold x [2, 4, 16, 16],
 * ctx [2, 77, 16], timesteps t [K, 2] (one row per call: equal pairs, and
 * one pair of different fractional timesteps) and diffusers' outputs
 * out [K, 2, 4, 16, 16] for the tiny models of tests/golden/sd{1,2}/ (3
 * levels of 8/16/24 channels, 2 layers per block, 4 GroupNorm groups; SD1:
 * 2 heads, 1x1-conv projections; SD2: heads (2, 4, 4), linear projections).
 * Both layouts of each model must give diffusers' output within 1e-4 max
 * absolute error at every recorded timestep pair; fp32 on both sides, so the
 * observed error is far smaller.  A missing golden file is a failure.
 */
#include <cJSON.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "core/checkpoint.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "core/unet.h"
#include "test.h"

#define TOLERANCE 1e-4f

typedef struct golden {
    st_file *file;
    const st_tensor *x, *ctx, *t, *out;
    float *xv, *ctxv, *tv, *outv;
} golden;

static float *read_all(const st_file *f, const st_tensor *t)
{
    coin_error err = {0};
    float *v = malloc(t->nelem * sizeof(float));
    if (!v || st_tensor_to_f32(f, t, v, t->nelem, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", t->name, err.msg);
        free(v);
        return NULL;
    }
    return v;
}

static void golden_free(golden *g)
{
    free(g->xv);
    free(g->ctxv);
    free(g->tv);
    free(g->outv);
    st_close(g->file);
    memset(g, 0, sizeof *g);
}

static int golden_load(golden *g, const char *path)
{
    coin_error err = {0};
    memset(g, 0, sizeof *g);
    if (st_open(&g->file, path, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return -1;
    }
    g->x = st_find(g->file, "x");
    g->ctx = st_find(g->file, "ctx");
    g->t = st_find(g->file, "t");
    g->out = st_find(g->file, "out");
    if (!g->x || !g->ctx || !g->t || !g->out || g->x->ndim != 4 || g->ctx->ndim != 3 ||
        g->t->ndim != 2 || g->out->ndim != 5 || g->t->shape[1] != g->x->shape[0] ||
        g->out->shape[0] != g->t->shape[0] || g->out->shape[1] != g->x->shape[0]) {
        test_failed(__FILE__, __LINE__, "%s: unexpected golden layout", path);
        return -1;
    }
    if (!(g->xv = read_all(g->file, g->x)) || !(g->ctxv = read_all(g->file, g->ctx)) ||
        !(g->tv = read_all(g->file, g->t)) || !(g->outv = read_all(g->file, g->out)))
        return -1;
    return 0;
}

/* Runs model at every timestep pair of the golden file and compares. */
static void check_model(const char *model, const char *golden_path)
{
    golden g;
    coin_error err = {0};
    checkpoint *ck = NULL;
    unet_model *m = NULL;
    tensor x = {0}, ctx = {0}, out = {0};
    float *got = NULL;
    if (golden_load(&g, golden_path))
        goto done;
    if (checkpoint_open(&ck, model, SD_UNKNOWN, &err) ||
        unet_load(&m, ck, backend_cpu(), &err) ||
        tensor_alloc(&x, backend_cpu(), 4, g.x->shape, &err) ||
        tensor_upload(&x, g.xv, x.n, &err) ||
        tensor_alloc(&ctx, backend_cpu(), 3, g.ctx->shape, &err) ||
        tensor_upload(&ctx, g.ctxv, ctx.n, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", model, err.msg);
        goto done;
    }
    int64_t per = (int64_t)(g.out->nelem / (uint64_t)g.out->shape[0]);
    got = malloc((size_t)per * sizeof(float));
    if (!got) {
        test_failed(__FILE__, __LINE__, "out of memory");
        goto done;
    }
    for (int64_t k = 0; k < g.t->shape[0]; k++) {
        const float *ts = g.tv + k * g.t->shape[1];
        if (unet_forward(m, &x, ts, &ctx, &out, &err)) {
            test_failed(__FILE__, __LINE__, "%s: %s", model, err.msg);
            goto done;
        }
        if (out.n != per || tensor_download(&out, got, per, &err)) {
            test_failed(__FILE__, __LINE__, "%s: output of %lld values, not %lld", model,
                        (long long)out.n, (long long)per);
            goto done;
        }
        tensor_free(&out);
        const float *want = g.outv + k * per;
        float max_err = 0;
        for (int64_t i = 0; i < per; i++) {
            float e = fabsf(got[i] - want[i]);
            if (!(e <= max_err))
                max_err = e;   /* NaN propagates */
        }
        CHECK_MSG(max_err <= TOLERANCE, "%s: t = (%g, %g): max abs error %g exceeds %g", model,
                  ts[0], ts[1], max_err, TOLERANCE);
        printf("    %s t = (%g, %g): max abs error %.3g\n", model, ts[0], ts[1], max_err);
    }
done:
    free(got);
    tensor_free(&out);
    tensor_free(&x);
    tensor_free(&ctx);
    unet_free(m);
    checkpoint_close(ck);
    golden_free(&g);
}

TEST(unet_sd1_single_file_matches_diffusers)
{
    check_model("tests/golden/sd1/model.safetensors", "tests/golden/sd1/unet_reference.safetensors");
}

TEST(unet_sd1_diffusers_matches_diffusers)
{
    check_model("tests/golden/sd1/diffusers", "tests/golden/sd1/unet_reference.safetensors");
}

TEST(unet_sd2_single_file_matches_diffusers)
{
    check_model("tests/golden/sd2/model.safetensors", "tests/golden/sd2/unet_reference.safetensors");
}

TEST(unet_sd2_diffusers_matches_diffusers)
{
    check_model("tests/golden/sd2/diffusers", "tests/golden/sd2/unet_reference.safetensors");
}

/* The configuration read from weights and configs, in both layouts. */
static void check_config(const char *model, int linear, const int heads[3])
{
    coin_error err = {0};
    checkpoint *ck = NULL;
    unet_model *m = NULL;
    if (checkpoint_open(&ck, model, SD_UNKNOWN, &err) || unet_load(&m, ck, backend_cpu(), &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", model, err.msg);
    } else {
        const unet_config *c = unet_get_config(m);
        CHECK_EQ_INT(c->levels, 3);
        CHECK_EQ_INT(c->channels[0], 8);
        CHECK_EQ_INT(c->channels[1], 16);
        CHECK_EQ_INT(c->channels[2], 24);
        CHECK_EQ_INT(c->layers_per_block, 2);
        CHECK_EQ_INT(c->in_channels, 4);
        CHECK_EQ_INT(c->out_channels, 4);
        CHECK_EQ_INT(c->context_dim, 16);
        CHECK_EQ_INT(c->norm_groups, 4);
        CHECK_EQ_INT(c->time_dim, 8);
        CHECK_EQ_INT(c->temb_dim, 32);
        CHECK_EQ_INT(c->transformer_depth, 1);
        CHECK_EQ_INT(c->linear_projection, linear);
        CHECK(c->attention[0] && c->attention[1] && !c->attention[2]);
        CHECK(!c->up_attention[0] && c->up_attention[1] && c->up_attention[2]);
        for (int i = 0; i < 3; i++)
            CHECK_EQ_INT(c->heads[i], heads[i]);
    }
    unet_free(m);
    checkpoint_close(ck);
}

TEST(unet_config_is_read_from_weights_and_configs)
{
    check_config("tests/golden/sd1/model.safetensors", 0, (int[]){2, 2, 2});
    check_config("tests/golden/sd1/diffusers", 0, (int[]){2, 2, 2});
    check_config("tests/golden/sd2/model.safetensors", 1, (int[]){2, 4, 4});
    check_config("tests/golden/sd2/diffusers", 1, (int[]){2, 4, 4});
}

/* Copies the golden SD1 single file to the test directory, leaving out
 * `drop` and giving `swap` its first two dimensions swapped (same bytes,
 * wrong shape).  Returns the new path, or NULL after a test failure. */
static const char *mutated_copy(const char *drop, const char *swap, char *path, size_t len)
{
    coin_error err = {0};
    st_file *src = NULL;
    st_writer *w = st_writer_new();
    int ok = 0;
    snprintf(path, len, "%s/mutated.safetensors", test_tmpdir());
    if (!w || st_open(&src, "tests/golden/sd1/model.safetensors", &err))
        goto done;
    for (size_t i = 0; i < src->n_tensors; i++) {
        const st_tensor *t = &src->tensors[i];
        int64_t shape[ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (drop && !strcmp(t->name, drop))
            continue;
        if (swap && !strcmp(t->name, swap)) {
            shape[0] = t->shape[1];
            shape[1] = t->shape[0];
        }
        if (st_writer_add(w, t->name, t->dtype, t->ndim, shape, t->data, &err))
            goto done;
    }
    for (size_t i = 0; i < src->n_meta; i++)
        if (st_writer_meta(w, src->meta_keys[i], src->meta_values[i], &err))
            goto done;
    /* The error must be about the tensor, whatever the golden's metadata. */
    if (!st_meta(src, "unet.norm_num_groups") &&
        st_writer_meta(w, "unet.norm_num_groups", "4", &err))
        goto done;
    if (st_writer_save(w, path, &err))
        goto done;
    ok = 1;
done:
    if (!ok)
        test_failed(__FILE__, __LINE__, "cannot make a mutated model: %s", err.msg);
    st_close(src);
    st_writer_free(w);
    return ok ? path : NULL;
}

TEST(unet_missing_or_misshapen_tensor_is_named)
{
    char path[1024];
    coin_error err = {0};
    checkpoint *ck = NULL;
    unet_model *m = NULL;

    /* output_blocks.4.1 is up_blocks.1.attentions.1 (3 layers per up block). */
    REQUIRE(mutated_copy("model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_v.weight",
                         NULL, path, sizeof path));
    REQUIRE_OK(checkpoint_open(&ck, path, SD_UNKNOWN, &err), &err);
    CHECK(unet_load(&m, ck, backend_cpu(), &err) == COIN_ENOTFOUND);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(err.msg, "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v.weight");
    checkpoint_close(ck);
    ck = NULL;

    /* input_blocks.4.0 is down_blocks.1.resnets.0 (8 -> 16 channels).  Its
     * conv1 also gives the level's width, so the mismatch shows up there. */
    REQUIRE(mutated_copy(NULL, "model.diffusion_model.input_blocks.4.0.in_layers.2.weight",
                         path, sizeof path));
    REQUIRE_OK(checkpoint_open(&ck, path, SD_UNKNOWN, &err), &err);
    CHECK(unet_load(&m, ck, backend_cpu(), &err) == COIN_ESHAPE);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(err.msg, "'down_blocks.1.resnets.0.conv1.weight' has shape [8, 16, 3, 3]");
    checkpoint_close(ck);
    ck = NULL;

    REQUIRE(mutated_copy(NULL, "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
                         path, sizeof path));
    REQUIRE_OK(checkpoint_open(&ck, path, SD_UNKNOWN, &err), &err);
    CHECK(unet_load(&m, ck, backend_cpu(), &err) == COIN_ESHAPE);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(err.msg, "'down_blocks.1.resnets.0.conv_shortcut.weight' has shape "
                                "[8, 16, 1, 1] where [16, 8, 1, 1] was expected");
    checkpoint_close(ck);
}

TEST(unet_rejects_inputs_that_do_not_fit)
{
    coin_error err = {0};
    checkpoint *ck = NULL;
    unet_model *m = NULL;
    tensor x = {0}, ctx = {0}, out = {0};
    float ts[1] = {1};
    REQUIRE_OK(checkpoint_open(&ck, "tests/golden/sd1/diffusers", SD_UNKNOWN, &err), &err);
    if (unet_load(&m, ck, backend_cpu(), &err) ||
        tensor_alloc4(&x, backend_cpu(), 1, 4, 6, 8, &err) ||
        tensor_alloc3(&ctx, backend_cpu(), 1, 77, 16, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
    } else {
        /* 6 is not a multiple of 2^(levels - 1) = 4. */
        CHECK(unet_forward(m, &x, ts, &ctx, &out, &err) == COIN_ESHAPE);
        CHECK_STR_CONTAINS(err.msg, "multiples of 4");
        tensor_free(&x);
        REQUIRE_OK(tensor_alloc4(&x, backend_cpu(), 1, 4, 8, 8, &err), &err);
        tensor_free(&ctx);
        REQUIRE_OK(tensor_alloc3(&ctx, backend_cpu(), 1, 77, 32, &err), &err);
        CHECK(unet_forward(m, &x, ts, &ctx, &out, &err) == COIN_ESHAPE);
        CHECK_STR_CONTAINS(err.msg, "context");
        CHECK(out.mem == NULL);
    }
    tensor_free(&x);
    tensor_free(&ctx);
    unet_free(m);
    checkpoint_close(ck);
}

/* Writes len bytes to path; 0 on success. */
static int write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t put = fwrite(data, 1, len, f);
    return (fclose(f) || put != len) ? -1 : 0;
}

TEST(unet_rejects_unsupported_configs)
{
    /* A copy of the SD1 diffusers UNet whose config asks for an input
     * rescaling coin does not implement: an error, not a wrong answer. */
    char dir[1024], path[1100], *weights = NULL, *config = NULL;
    size_t n_weights = 0;
    coin_error err = {0};
    checkpoint *ck = NULL;
    unet_model *m = NULL;
    const char *root = test_tmpdir();
    snprintf(dir, sizeof dir, "%s/unet", root);
    REQUIRE(mkdir(dir, 0700) == 0);
    REQUIRE_OK(file_read_all("tests/golden/sd1/diffusers/unet/diffusion_pytorch_model.safetensors",
                             1 << 24, &weights, &n_weights, &err), &err);
    REQUIRE_OK(file_read_all("tests/golden/sd1/diffusers/unet/config.json", 1 << 20, &config,
                             NULL, &err), &err);
    cJSON *j = cJSON_Parse(config);
    REQUIRE(j);
    cJSON_ReplaceItemInObject(j, "center_input_sample", cJSON_CreateTrue());
    char *text = cJSON_Print(j);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    CHECK(write_file(path, weights, n_weights) == 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(text && write_file(path, text, strlen(text)) == 0);
    if (checkpoint_open(&ck, root, SD_UNKNOWN, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
    } else {
        CHECK(unet_load(&m, ck, backend_cpu(), &err) == COIN_EUNSUPPORTED);
        CHECK(m == NULL);
        CHECK_STR_CONTAINS(err.msg, "center_input_sample true is not supported");
    }
    checkpoint_close(ck);
    cJSON_Delete(j);
    free(text);
    free(weights);
    free(config);
}
