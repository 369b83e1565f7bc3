/*
 * test_ti.c - the trainer: AdamW equal to torch's, a run that resumes
 * exactly, non-finite steps that never reach a saved embedding, bad input
 * refused up front, and an embedding that coin sample loads.
 */
#include <stdlib.h>
#include <sys/stat.h>

#include "core/embedding.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "core/sample.h"
#include "core/ti.h"
#include "core/unet.h"
#include "test.h"

/* Three small images with a shape on a background, and a caption for one. */
static const char *make_images(void)
{
    static char dir[700];
    snprintf(dir, sizeof dir, "%s/images", test_tmpdir());
    mkdir(dir, 0777);
    for (int i = 0; i < 3; i++) {
        coin_image img;
        coin_error err = {0};
        if (image_alloc(&img, 80 + 8 * i, 64, 3, &err))
            return NULL;
        for (int y = 0; y < img.height; y++)
            for (int x = 0; x < img.width; x++) {
                uint8_t *p = img.pixels + (y * img.width + x) * 3;
                int in = (x - 30) * (x - 30) + (y - 30) * (y - 30) < 300;
                p[0] = in ? 250 : (uint8_t)(40 * i);
                p[1] = in ? 200 : (uint8_t)(90 + 10 * i);
                p[2] = in ? 0 : (uint8_t)(200 - 30 * i);
            }
        char path[800];
        snprintf(path, sizeof path, "%s/img%d.png", dir, i);
        int rc = image_write_png(path, &img, NULL, 0, &err);
        image_free(&img);
        if (rc)
            return NULL;
    }
    char path[800];
    snprintf(path, sizeof path, "%s/img1.txt", dir);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("a {} on a blue background\n", f);
        fclose(f);
    }
    return dir;
}

static void tiny_config(ti_config *c, const char *images, const char *out)
{
    ti_config_defaults(c);
    snprintf(c->model, sizeof c->model, "tests/golden/sd1/model.safetensors");
    snprintf(c->images, sizeof c->images, "%s", images);
    snprintf(c->out_dir, sizeof c->out_dir, "%s", out);
    snprintf(c->token, sizeof c->token, "<thumbs-up>");
    snprintf(c->init_word, sizeof c->init_word, "hand");
    c->vectors = 2;
    c->batch = 2;
    c->steps = 6;
    c->save_every = 3;
    c->n_previews = 0;
}

static int read_rows(const char *path, float *rows, int n)
{
    ti_embedding e;
    coin_error err = {0};
    if (embedding_load(&e, path, NULL, &err))
        return -1;
    int ok = e.n_vectors * e.width == n;
    if (ok)
        memcpy(rows, e.vectors, (size_t)n * sizeof(float));
    embedding_free(&e);
    return ok ? 0 : -1;
}

TEST(ti_adamw_equals_torch)
{
    /* Three steps of torch's AdamW on the golden gradients. */
    static const char *files[] = {"tests/golden/train/adamw_sd1.safetensors",
                                  "tests/golden/train/adamw_sd2.safetensors"};
    for (int f = 0; f < 2; f++) {
        coin_error err = {0};
        st_file *g;
        REQUIRE_OK(st_open(&g, files[f], &err), &err);
        const st_tensor *init = st_find(g, "rows_init");
        REQUIRE(init && init->nelem == 32);
        float p[32], m[32] = {0}, v[32] = {0};
        memcpy(p, init->data, sizeof p);
        for (int k = 1; k <= 3; k++) {
            char name[64];
            snprintf(name, sizeof name, "step%d.grad", k);
            const st_tensor *grad = st_find(g, name);
            snprintf(name, sizeof name, "step%d.rows", k);
            const st_tensor *rows = st_find(g, name);
            snprintf(name, sizeof name, "step%d.exp_avg_sq", k);
            const st_tensor *vs = st_find(g, name);
            REQUIRE(grad && rows && vs);
            /* lr 5e-4 scaled by batch 2, as the golden's script. */
            ti_adamw_step(p, grad->data, m, v, 32, k, 1e-3);
            CHECK_MSG(!memcmp(p, rows->data, sizeof p), "%s step %d: rows differ", files[f], k);
            CHECK(!memcmp(v, vs->data, sizeof v));
        }
        st_close(g);
    }
}

TEST(ti_lr_schedules)
{
    CHECK(ti_lr_factor(LR_CONSTANT, 5, 10, 100) == 1.0);
    CHECK(fabs(ti_lr_factor(LR_CONSTANT_WARMUP, 5, 10, 100) - 0.5) < 1e-12);
    CHECK(ti_lr_factor(LR_CONSTANT_WARMUP, 50, 10, 100) == 1.0);
    CHECK(fabs(ti_lr_factor(LR_LINEAR, 55, 10, 100) - 0.5) < 1e-12);
    CHECK(ti_lr_factor(LR_LINEAR, 100, 10, 100) == 0.0);
    CHECK(fabs(ti_lr_factor(LR_COSINE, 55, 10, 100) - 0.5) < 1e-12);
    CHECK(fabs(ti_lr_factor(LR_COSINE, 10, 10, 100) - 1.0) < 1e-12);
    CHECK_EQ_INT(ti_lr_schedule_parse("cosine"), LR_COSINE);
    CHECK_EQ_INT(ti_lr_schedule_parse("polynomial"), -1);
}

TEST(ti_resume_continues_exactly)
{
    const char *images = make_images();
    REQUIRE(images);
    char straight[800], halves[800], path[900];
    snprintf(straight, sizeof straight, "%s/straight", test_tmpdir());
    snprintf(halves, sizeof halves, "%s/halves", test_tmpdir());
    ti_config c;
    ti_result res;
    coin_error err = {0};
    tiny_config(&c, images, straight);
    REQUIRE_OK(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err), &err);
    CHECK_EQ_INT(res.steps_done, 6);
    /* The same run stopped after 3 steps, then resumed. */
    tiny_config(&c, images, halves);
    c.steps = 3;
    REQUIRE_OK(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err), &err);
    REQUIRE_OK(ti_resume(halves, 6, backend_cpu(), NULL, NULL, &res, &err), &err);
    CHECK_EQ_INT(res.steps_done, 6);
    float a[32], b[32], init[32];
    snprintf(path, sizeof path, "%s/learned_embeds-steps-6.safetensors", straight);
    REQUIRE(read_rows(path, a, 32) == 0);
    snprintf(path, sizeof path, "%s/learned_embeds.safetensors", halves);
    REQUIRE(read_rows(path, b, 32) == 0);
    CHECK(!memcmp(a, b, sizeof a));
    /* It learned something: the rows moved from the initializer's. */
    snprintf(path, sizeof path, "%s/learned_embeds-steps-3.safetensors", straight);
    REQUIRE(read_rows(path, init, 32) == 0);
    CHECK(memcmp(a, init, sizeof a) != 0);
    /* A second run into the same folder is refused; resume it instead. */
    tiny_config(&c, images, straight);
    CHECK_EQ_INT(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "--resume");
}

TEST(ti_checkpoint_loads_in_sample)
{
    const char *images = make_images();
    REQUIRE(images);
    char out[800];
    snprintf(out, sizeof out, "%s/run", test_tmpdir());
    ti_config c;
    ti_result res;
    coin_error err = {0};
    tiny_config(&c, images, out);
    c.steps = 2;
    c.save_every = 2;
    c.n_previews = 1;
    c.preview_steps = 2;
    REQUIRE_OK(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err), &err);
    /* The preview exists and the embedding conditions a sample. */
    char path[900];
    snprintf(path, sizeof path, "%s/previews/step-2-0.png", out);
    image_text_list texts;
    REQUIRE_OK(image_read_png_text(path, &texts, &err), &err);
    CHECK_STR_CONTAINS(image_text_get(&texts, "parameters"), "a photo of a <thumbs-up>");
    image_text_list_free(&texts);
    sd_pipeline *p;
    REQUIRE_OK(pipeline_open(&p, c.model, SD_UNKNOWN, PRED_UNKNOWN, backend_cpu(), &err), &err);
    REQUIRE_OK(pipeline_add_embedding(p, res.embedding, &err), &err);
    tokenizer_result r;
    REQUIRE_OK(pipeline_tokenize(p, "a <thumbs-up> on a table", &r, &err), &err);
    CHECK_EQ_INT(r.ids[2], 49408);
    CHECK_EQ_INT(r.ids[3], 49409);
    /* Its metadata says where it came from. */
    st_file *f;
    REQUIRE_OK(st_open(&f, res.embedding, &err), &err);
    CHECK(st_meta(f, "coin.step") && !strcmp(st_meta(f, "coin.step"), "2"));
    CHECK(st_meta(f, "coin.initializer") && !strcmp(st_meta(f, "coin.initializer"), "hand"));
    CHECK(st_meta(f, "coin.model_sha256") && strlen(st_meta(f, "coin.model_sha256")) == 64);
    st_close(f);
    pipeline_free(p);
}

TEST(ti_non_finite_steps_never_reach_an_embedding)
{
    const char *images = make_images();
    REQUIRE(images);
    char out[800], path[900];
    snprintf(out, sizeof out, "%s/nan", test_tmpdir());
    ti_config c;
    ti_result res;
    coin_error err = {0};
    tiny_config(&c, images, out);
    c.steps = 10;
    c.save_every = 2;
    c.poison_from_step = 4;     /* steps 4 on go bad */
    CHECK_EQ_INT(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "not finite 5 steps in a row after step 3");
    CHECK_STR_CONTAINS(err.msg, "Lower the learning rate");
    /* The last checkpoint (step 2) is intact and resumable. */
    snprintf(path, sizeof path, "%s/learned_embeds.safetensors", out);
    st_file *f;
    REQUIRE_OK(st_open(&f, path, &err), &err);
    CHECK(!strcmp(st_meta(f, "coin.step"), "2"));
    st_close(f);
    REQUIRE_OK(ti_resume(out, 4, backend_cpu(), NULL, NULL, &res, &err), &err);
    CHECK_EQ_INT(res.steps_done, 4);
}

TEST(ti_bad_input_is_refused_up_front)
{
    const char *images = make_images();
    REQUIRE(images);
    char out[800];
    snprintf(out, sizeof out, "%s/bad", test_tmpdir());
    ti_config c;
    ti_result res;
    coin_error err = {0};
    tiny_config(&c, images, out);
    snprintf(c.init_word, sizeof c.init_word, "thumbsup");    /* two tokens */
    CHECK_EQ_INT(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "one token");
    tiny_config(&c, images, out);
    snprintf(c.token, sizeof c.token, "cat");                 /* already a word */
    CHECK(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "cat");
    tiny_config(&c, test_tmpdir(), out);                      /* no images */
    CHECK_EQ_INT(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err), COIN_EINVAL);
    CHECK_STR_CONTAINS(err.msg, "no images");
    tiny_config(&c, images, "/proc/coin-cannot-write-here");
    CHECK_EQ_INT(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err), COIN_EIO);
    CHECK_STR_CONTAINS(err.msg, "/proc/coin-cannot-write-here");
    tiny_config(&c, images, out);
    c.lr = NAN;
    CHECK_EQ_INT(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err), COIN_EINVAL);
    /* A broken image is named. */
    char path[900];
    snprintf(path, sizeof path, "%s/broken.png", images);
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    fputs("\x89PNG\r\n\x1a\nnot really", f);
    fclose(f);
    tiny_config(&c, images, out);
    CHECK(ti_train(&c, backend_cpu(), NULL, NULL, &res, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "broken.png");
}

/*
 * The whole training gradient, as the trainer chains it: text encoder
 * forward with the trigger rows, UNet forward on the golden noisy latents,
 * MSE against the golden target, UNet backward to the conditioning, text
 * encoder backward to the trigger rows.  Loss within 1e-6 relative and the
 * trigger gradient within 1e-4 of its largest component, against torch
 * autograd (tests/golden/train/grads_sdN.safetensors); then ten AdamW steps
 * on that batch lower its loss.
 */
static void chained_gradient(const char *model, const char *golden)
{
    enum { B = 2, T = 77, D = 16, R = 2, N = 2 * 4 * 16 * 16 };
    coin_error err = {0};
    st_file *g;
    REQUIRE_OK(st_open(&g, golden, &err), &err);
    const st_tensor *ids64 = st_find(g, "input_ids"), *init = st_find(g, "trigger_init");
    const st_tensor *noisy = st_find(g, "noisy_latents"), *target = st_find(g, "target");
    const st_tensor *ts = st_find(g, "timesteps"), *loss_t = st_find(g, "loss");
    const st_tensor *gtrig = st_find(g, "grad_trigger");
    REQUIRE(ids64 && init && noisy && target && ts && loss_t && gtrig && noisy->nelem == N);
    int32_t ids[B * T];
    for (int i = 0; i < B * T; i++)
        ids[i] = (int32_t)((const int64_t *)ids64->data)[i];
    float tsf[B] = {(float)((const int64_t *)ts->data)[0], (float)((const int64_t *)ts->data)[1]};
    checkpoint *ck = NULL;
    clip_model *clip = NULL;
    unet_model *unet = NULL;
    float rows[R * D], m[R * D] = {0}, v[R * D] = {0}, first_loss = 0, loss = 0;
    memcpy(rows, init->data, sizeof rows);
    if (checkpoint_open(&ck, model, SD_UNKNOWN, &err) || clip_load(&clip, ck, backend_cpu(), &err) ||
        unet_load(&unet, ck, backend_cpu(), &err) || clip_add_tokens(clip, rows, R, 49408, &err)) {
        test_failed(__FILE__, __LINE__, "%s: %s", model, err.msg);
        goto done;
    }
    for (int step = 0; step <= 10; step++) {
        tensor ehs = {0}, x = {0}, out = {0}, dout = {0}, dctx = {0}, drows = {0};
        clip_trace *ct = NULL;
        unet_trace *ut = NULL;
        float pred[N], grad[R * D] = {0};
        int rc = clip_set_token_rows(clip, 49408, rows, R, &err);
        if (!rc) rc = clip_forward_trace(clip, ids, B, &ehs, &ct, &err);
        if (!rc) rc = tensor_alloc4(&x, backend_cpu(), B, 4, 16, 16, &err);
        if (!rc) rc = tensor_upload(&x, noisy->data, N, &err);
        if (!rc) rc = unet_forward_trace(unet, &x, tsf, &ehs, &out, step & 1, &ut, &err);
        if (!rc) rc = tensor_download(&out, pred, N, &err);
        double sum = 0;
        for (int i = 0; !rc && i < N; i++) {
            float d = pred[i] - ((const float *)target->data)[i];
            sum += (double)d * d;
            pred[i] = 2.0f / N * d;
        }
        loss = (float)(sum / N);
        if (!rc) rc = tensor_alloc4(&dout, backend_cpu(), B, 4, 16, 16, &err);
        if (!rc) rc = tensor_upload(&dout, pred, N, &err);
        if (!rc) rc = unet_backward_ctx(unet, ut, &dout, &dctx, &err);
        if (!rc) rc = tensor_alloc2(&drows, backend_cpu(), R, D, &err);
        if (!rc) rc = tensor_upload(&drows, grad, R * D, &err);
        if (!rc) rc = clip_backward(clip, ct, &dctx, 49408, &drows, &err);
        if (!rc) rc = tensor_download(&drows, grad, R * D, &err);
        unet_trace_free(ut);
        clip_trace_free(ct);
        tensor_free(&ehs), tensor_free(&x), tensor_free(&out), tensor_free(&dout);
        tensor_free(&dctx), tensor_free(&drows);
        if (rc) {
            test_failed(__FILE__, __LINE__, "%s: %s", model, err.msg);
            goto done;
        }
        if (step == 0) {
            float want = *(const float *)loss_t->data, worst = 0, scale = 0;
            first_loss = loss;
            CHECK_MSG(fabsf(loss - want) <= 1e-6f * want, "%s: loss %.9g, torch %.9g", model, loss,
                      want);
            for (int i = 0; i < R * D; i++) {
                worst = fmaxf(worst, fabsf(grad[i] - ((const float *)gtrig->data)[i]));
                scale = fmaxf(scale, fabsf(((const float *)gtrig->data)[i]));
            }
            CHECK_MSG(worst <= 1e-4f * scale, "%s: trigger gradient off by %g of %g", model,
                      worst, scale);
            printf("    %s: loss %.7g (torch %.7g), gradient %.2g relative\n", model, loss, want,
                   worst / scale);
        }
        if (step < 10)
            ti_adamw_step(rows, grad, m, v, R * D, step + 1, 1e-3);
    }
    CHECK_MSG(loss < first_loss, "%s: ten steps took the loss from %g to %g", model, first_loss,
              loss);
    printf("    %s: ten AdamW steps on this batch: loss %.7g -> %.7g\n", model, first_loss, loss);
done:
    unet_free(unet);
    clip_free(clip);
    checkpoint_close(ck);
    st_close(g);
}

TEST(ti_gradient_chain_matches_autograd_and_learns)
{
    chained_gradient("tests/golden/sd1/model.safetensors", "tests/golden/train/grads_sd1.safetensors");
    chained_gradient("tests/golden/sd2/diffusers", "tests/golden/train/grads_sd2.safetensors");
}
