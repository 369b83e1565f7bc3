/*
 * sample.c - text to image with classifier-free guidance (sample.h).
 *
 * The loop follows diffusers' StableDiffusionPipeline: prompt and negative
 * prompt (or "") encoded, latents = randn * init_noise_sigma, at each step
 * the UNet on [uncond, cond] and noise = uncond + g (cond - uncond), then
 * the VAE decodes latents / scaling_factor.
 */
#include "sample.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRY(expr)                 \
    do {                          \
        if ((rc = (expr)) != 0)   \
            goto done;            \
    } while (0)

/* AUTOMATIC1111's test for v-prediction (sd_models_config.py): a constant
 * 0.5 latent at t = 999 under a constant 0.5 context; a v model's output
 * sits well below the input on average. */
static int probe_prediction(sd_pipeline *p, coin_error *err)
{
    const unet_config *uc = unet_get_config(p->unet);
    int side = p->unet_multiple > 8 ? p->unet_multiple : 8;
    int64_t n = (int64_t)uc->in_channels * side * side, nc = 2 * uc->context_dim;
    tensor x = {0}, ctx = {0}, out = {0};
    float *host = malloc((size_t)(n > nc ? n : nc) * sizeof(float));
    int rc;
    if (!host)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    for (int64_t i = 0; i < (n > nc ? n : nc); i++)
        host[i] = 0.5f;
    float t = 999.0f;
    TRY(tensor_alloc4(&x, p->be, 1, uc->in_channels, side, side, err));
    TRY(tensor_upload(&x, host, n, err));
    TRY(tensor_alloc3(&ctx, p->be, 1, 2, uc->context_dim, err));
    TRY(tensor_upload(&ctx, host, nc, err));
    TRY(unet_forward(p->unet, &x, &t, &ctx, &out, err));
    float *o = realloc(host, (size_t)out.n * sizeof(float));
    if (!o) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    host = o;
    TRY(tensor_download(&out, host, out.n, err));
    double mean = 0;
    for (int64_t i = 0; i < out.n; i++)
        mean += (host[i] - 0.5) / (double)out.n;
    p->prediction = mean < -1 ? PRED_V : PRED_EPSILON;
    snprintf(p->prediction_from, sizeof p->prediction_from,
             "probed: mean(unet(0.5) - 0.5) at t=999 is %.3f (v below -1)", mean);
done:
    free(host);
    tensor_free(&x);
    tensor_free(&ctx);
    tensor_free(&out);
    return rc;
}

int pipeline_open(sd_pipeline **out, const char *model, sd_version force_version,
                  sd_prediction force_prediction, const coin_backend *be,
                  coin_error *err)
{
    *out = NULL;
    sd_pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    p->be = be;
    int rc;
    TRY(checkpoint_open(&p->ck, model, force_version, err));
    TRY(checkpoint_load_tokenizer(p->ck, &p->tok, err));
    TRY(clip_load(&p->clip, p->ck, be, err));
    TRY(unet_load(&p->unet, p->ck, be, err));
    TRY(vae_load(&p->vae, p->ck, be, err));
    p->vae_factor = 1 << (vae_get_config(p->vae)->levels - 1);
    p->unet_multiple = 1 << (unet_get_config(p->unet)->levels - 1);
    if (unet_get_config(p->unet)->context_dim != p->clip->cfg.width) {
        rc = coin_fail(err, COIN_ESHAPE, "%s: the UNet attends to %d-wide text but the text "
                       "encoder is %lld wide", model, unet_get_config(p->unet)->context_dim,
                       (long long)p->clip->cfg.width);
        goto done;
    }
    if (force_prediction != PRED_UNKNOWN) {
        p->prediction = force_prediction;
        snprintf(p->prediction_from, sizeof p->prediction_from, "given on the command line");
    } else if (p->ck->prediction != PRED_UNKNOWN) {
        p->prediction = p->ck->prediction;
        snprintf(p->prediction_from, sizeof p->prediction_from, "%s", p->ck->prediction_from);
    } else {
        TRY(probe_prediction(p, err));
    }
done:
    if (rc) {
        pipeline_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void pipeline_free(sd_pipeline *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_embeddings; i++)
        embedding_free(&p->embeddings[i]);
    vae_free(p->vae);
    unet_free(p->unet);
    clip_free(p->clip);
    tokenizer_free(p->tok);
    checkpoint_close(p->ck);
    free(p);
}

int pipeline_add_embedding(sd_pipeline *p, const char *path, coin_error *err)
{
    if (p->n_embeddings == PIPELINE_MAX_EMBEDDINGS)
        return coin_fail(err, COIN_EINVAL, "at most %d embeddings", PIPELINE_MAX_EMBEDDINGS);
    ti_embedding *e = &p->embeddings[p->n_embeddings];
    int rc = embedding_load(e, path, NULL, err);
    if (rc)
        return rc;
    if (e->width != p->clip->cfg.width) {
        rc = coin_fail(err, COIN_ESHAPE,
                       "%s: the embedding is %lld wide but this model's text encoder is %lld "
                       "wide (%s); an embedding trained on SD 1.x (768) does not fit SD 2.x "
                       "(1024) or the other way round", path, (long long)e->width,
                       (long long)p->clip->cfg.width, sd_version_name(p->ck->version));
        embedding_free(e);
        return rc;
    }
    int first = -1;
    for (int i = 0; i < e->n_vectors && !rc; i++) {
        char name[512];
        int id;
        if (embedding_vector_token(e->token, i, name, sizeof name))
            rc = coin_fail(err, COIN_EINVAL, "trigger '%s' is too long", e->token);
        else if (!(rc = tokenizer_add_token(p->tok, name, &id, err)) && i == 0)
            first = id;
        else if (!rc && id != first + i)
            rc = coin_fail(err, COIN_EINVAL, "trigger '%s' was added twice", e->token);
    }
    if (!rc)
        rc = clip_add_tokens(p->clip, e->vectors, e->n_vectors, first, err);
    if (rc) {
        coin_error_prefix(err, "%s", path);
        embedding_free(e);
        return rc;
    }
    p->n_embeddings++;
    return 0;
}

int pipeline_tokenize(const sd_pipeline *p, const char *prompt, tokenizer_result *r,
                      coin_error *err)
{
    char *text = strdup(prompt);
    if (!text)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    int rc = 0;
    for (int i = 0; i < p->n_embeddings && !rc; i++) {
        const ti_embedding *e = &p->embeddings[i];
        if (e->n_vectors < 2)
            continue;
        char *expanded;
        rc = embedding_expand_prompt(text, e->token, e->n_vectors, &expanded, err);
        if (!rc) {
            free(text);
            text = expanded;
        }
    }
    if (!rc)
        rc = tokenizer_encode(p->tok, text, checkpoint_pad_id(p->ck), r, err);
    free(text);
    return rc;
}

void sample_defaults(const sd_pipeline *p, sample_params *sp)
{
    memset(sp, 0, sizeof *sp);
    sp->prompt = "";
    sp->negative = "";
    sp->steps = 50;
    sp->cfg = 7.5f;
    /* diffusers' schedulers for the SD 1.5 and 2.1 repositories. */
    sp->sampler = p->ck->version == SD_V2 ? SAMPLER_DDIM : SAMPLER_PNDM;
    sp->rng = RNG_CUDA;
    sp->seed = 42;
    int side;
    if (unet_get_config(p->unet)->channels[0] >= 128)
        side = p->ck->version == SD_V2 && p->prediction == PRED_V ? 768 : 512;
    else
        side = 16 * p->vae_factor;  /* coin's small test models: 16x16 latents */
    sp->width = sp->height = side;
}

int sample_validate(const sd_pipeline *p, const sample_params *sp, coin_error *err)
{
    if (sp->steps < 1 || sp->steps > 1000)
        return coin_fail(err, COIN_EINVAL, "steps must be 1 to 1000, not %d", sp->steps);
    if (!isfinite(sp->cfg) || sp->cfg < 0 || sp->cfg > 100)
        return coin_fail(err, COIN_EINVAL, "guidance must be a number from 0 to 100, not %g",
                         sp->cfg);
    if ((unsigned)sp->sampler >= SAMPLER_COUNT)
        return coin_fail(err, COIN_EINVAL, "unknown sampler");
    if (sp->karras && (sp->sampler == SAMPLER_DDIM || sp->sampler == SAMPLER_PNDM))
        return coin_fail(err, COIN_EINVAL, "the Karras schedule applies to euler, euler_a and "
                         "dpmpp_2m, not %s", sampler_name(sp->sampler));
    int unit = p->vae_factor * p->unet_multiple;
    const char *names[2] = {"width", "height"};
    int sides[2] = {sp->width, sp->height};
    for (int i = 0; i < 2; i++) {
        int s = sides[i];
        if (s < unit || s > 4096 || s % unit) {
            int lo = s / unit * unit, hi = lo + unit;
            if (lo < unit)
                lo = unit;
            return coin_fail(err, COIN_EINVAL, "%s %d does not work with this model: it must "
                             "be a multiple of %d from %d to 4096 (try %d or %d)", names[i], s,
                             unit, unit, lo, hi > 4096 ? lo : hi);
        }
    }
    return 0;
}

/* ---- the loop ---- */

typedef struct denoise_ctx {
    sd_pipeline *p;
    const tensor *ctx;          /* [G, 77, D]: uncond then cond when guided */
    int guided;
    float cfg;
    int channels, h, w;
    int64_t n;                  /* latent floats of one image */
    tensor x, out;              /* [G, C, h, w] */
    float *host;                /* [G * n] */
    coin_rng *rng;
    sample_progress_fn progress;
    void *progress_ctx;
} denoise_ctx;

static int denoise(void *vctx, const float *x_in, float t, float *out, coin_error *err)
{
    denoise_ctx *d = vctx;
    int G = d->guided ? 2 : 1, rc;
    float ts[2] = {t, t};
    for (int g = 0; g < G; g++)
        if ((rc = tensor_upload_range(&d->x, g * d->n, x_in, d->n, err)))
            return rc;
    tensor_free(&d->out);
    if ((rc = unet_forward(d->p->unet, &d->x, ts, d->ctx, &d->out, err)) ||
        (rc = tensor_download(&d->out, d->host, G * d->n, err)))
        return rc;
    if (!d->guided) {
        memcpy(out, d->host, (size_t)d->n * sizeof(float));
        return 0;
    }
    const float *uncond = d->host, *cond = d->host + d->n;
    for (int64_t i = 0; i < d->n; i++)
        out[i] = uncond[i] + d->cfg * (cond[i] - uncond[i]);
    return 0;
}

static void ancestral_noise(void *vctx, float *out, int64_t n)
{
    denoise_ctx *d = vctx;
    rng_randn(d->rng, out, n);
}

static int step_done(void *vctx, int step, int total)
{
    denoise_ctx *d = vctx;
    return d->progress ? d->progress(d->progress_ctx, step, total) : 0;
}

int sample_image(sd_pipeline *p, const sample_params *sp, sample_progress_fn progress,
                 void *progress_ctx, float *pixels, float *latents, coin_error *err)
{
    int rc = sample_validate(p, sp, err);
    if (rc)
        return rc;
    const unet_config *uc = unet_get_config(p->unet);
    denoise_ctx d = {
        .p = p, .guided = sp->cfg > 1.0f, .cfg = sp->cfg, .channels = uc->in_channels,
        .h = sp->height / p->vae_factor, .w = sp->width / p->vae_factor,
        .progress = progress, .progress_ctx = progress_ctx,
    };
    d.n = (int64_t)d.channels * d.h * d.w;
    int G = d.guided ? 2 : 1;
    tensor ctx = {0}, z = {0}, img = {0};
    float *x = malloc((size_t)d.n * sizeof(float));
    d.host = malloc((size_t)(G * d.n) * sizeof(float));
    coin_rng rng;
    d.rng = &rng;
    if (!x || !d.host) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    /* Text: [uncond, cond] as diffusers batches them. */
    int32_t ids[2 * CLIP_CONTEXT];
    tokenizer_result r;
    if (d.guided) {
        TRY(pipeline_tokenize(p, sp->negative ? sp->negative : "", &r, err));
        memcpy(ids, r.ids, sizeof r.ids);
    }
    TRY(pipeline_tokenize(p, sp->prompt, &r, err));
    memcpy(ids + (G - 1) * CLIP_CONTEXT, r.ids, sizeof r.ids);
    TRY(clip_forward(p->clip, ids, G, &ctx, err));
    d.ctx = &ctx;
    TRY(tensor_alloc4(&d.x, p->be, G, d.channels, d.h, d.w, err));

    sched_config sc = sched_default(p->prediction == PRED_V ? PREDICT_V : PREDICT_EPSILON);
    sc.karras = sp->karras;
    rng_seed(&rng, sp->rng, sp->seed);
    rng_randn(&rng, x, d.n);
    float sigma = sampler_init_sigma(sp->sampler, &sc, sp->steps);
    for (int64_t i = 0; i < d.n; i++)
        x[i] *= sigma;
    sched_callbacks cb = {.denoise = denoise, .noise = ancestral_noise, .progress = step_done,
                          .ctx = &d};
    TRY(sampler_run(sp->sampler, &sc, sp->steps, x, d.n, &cb, err));
    if (latents)
        memcpy(latents, x, (size_t)d.n * sizeof(float));

    /* Divided, not multiplied by the inverse: diffusers' exact arithmetic. */
    float scaling = vae_get_config(p->vae)->scaling_factor;
    for (int64_t i = 0; i < d.n; i++)
        x[i] /= scaling;
    TRY(tensor_alloc4(&z, p->be, 1, d.channels, d.h, d.w, err));
    TRY(tensor_upload(&z, x, d.n, err));
    TRY(vae_decode(p->vae, &z, &img, err));
    TRY(tensor_download(&img, pixels, (int64_t)3 * sp->width * sp->height, err));
done:
    free(x);
    free(d.host);
    tensor_free(&d.x);
    tensor_free(&d.out);
    tensor_free(&ctx);
    tensor_free(&z);
    tensor_free(&img);
    return rc;
}
