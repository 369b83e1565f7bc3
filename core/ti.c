/*
 * ti.c - the textual-inversion trainer (ti.h).
 */
#include "ti.h"

#include <cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "embedding.h"
#include "fileio.h"
#include "image.h"
#include "infotext.h"
#include "recipe.h"
#include "rng.h"
#include "safetensors.h"
#include "sample.h"

extern const char coin_templates_object[], coin_templates_style[];

#define TRY(expr)                 \
    do {                          \
        if ((rc = (expr)) != 0)   \
            goto done;            \
    } while (0)

#define MAX_IMAGES 1000
#define MAX_TEMPLATES 256
#define MAX_BAD_STEPS 5         /* non-finite steps in a row before rolling back */
#define ADAM_B1 0.9
#define ADAM_B2 0.999
#define ADAM_EPS 1e-8f
#define ADAM_WD 1e-2

void ti_config_defaults(ti_config *c)
{
    memset(c, 0, sizeof *c);
    c->vectors = 1;
    snprintf(c->templates, sizeof c->templates, "object");
    c->lr = 5e-4f;
    c->scale_lr = 1;
    c->schedule = LR_CONSTANT;
    c->steps = 2000;
    c->batch = 4;
    c->grad_accum = 1;
    c->save_every = 250;
    c->seed = 42;
    c->n_previews = 4;
    c->preview_steps = 25;
    c->preview_seed = 42;
    snprintf(c->preview_prompt, sizeof c->preview_prompt, "a photo of a {}");
}

static const char *const schedule_names[] = {"constant", "constant_with_warmup", "linear",
                                             "cosine"};

const char *ti_lr_schedule_name(ti_lr_schedule s)
{
    return (unsigned)s < 4 ? schedule_names[s] : "?";
}

int ti_lr_schedule_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, schedule_names[i]))
            return i;
    return -1;
}

double ti_lr_factor(ti_lr_schedule s, int step, int warmup, int total)
{
    if (s != LR_CONSTANT && step < warmup)
        return (double)step / (warmup > 1 ? warmup : 1);
    if (s == LR_LINEAR) {
        double f = (double)(total - step) / (total - warmup > 1 ? total - warmup : 1);
        return f > 0 ? f : 0;
    }
    if (s == LR_COSINE) {
        double progress = (double)(step - warmup) / (total - warmup > 1 ? total - warmup : 1);
        double f = 0.5 * (1.0 + cos(M_PI * 2.0 * 0.5 * progress));
        return f > 0 ? f : 0;
    }
    return 1.0;
}

/* ---- configuration as JSON (kept in the state file for resuming) ---- */

char *ti_config_to_json(const ti_config *c)
{
    cJSON *o = cJSON_CreateObject();
    char seed[24], pseed[24];
    snprintf(seed, sizeof seed, "%" PRIu64, c->seed);
    snprintf(pseed, sizeof pseed, "%" PRIu64, c->preview_seed);
    cJSON_AddStringToObject(o, "model", c->model);
    cJSON_AddStringToObject(o, "images", c->images);
    cJSON_AddStringToObject(o, "out_dir", c->out_dir);
    cJSON_AddStringToObject(o, "token", c->token);
    cJSON_AddStringToObject(o, "init_word", c->init_word);
    cJSON_AddNumberToObject(o, "vectors", c->vectors);
    cJSON_AddStringToObject(o, "templates", c->templates);
    cJSON_AddNumberToObject(o, "resolution", c->resolution);
    cJSON_AddBoolToObject(o, "center_crop", c->center_crop);
    char lr[32], clip[32];
    snprintf(lr, sizeof lr, "%.9g", c->lr);
    snprintf(clip, sizeof clip, "%.9g", c->max_grad_norm);
    cJSON_AddRawToObject(o, "lr", lr);
    cJSON_AddBoolToObject(o, "scale_lr", c->scale_lr);
    cJSON_AddStringToObject(o, "schedule", ti_lr_schedule_name(c->schedule));
    cJSON_AddNumberToObject(o, "warmup", c->warmup);
    cJSON_AddNumberToObject(o, "steps", c->steps);
    cJSON_AddNumberToObject(o, "batch", c->batch);
    cJSON_AddNumberToObject(o, "grad_accum", c->grad_accum);
    cJSON_AddRawToObject(o, "max_grad_norm", clip);
    cJSON_AddNumberToObject(o, "save_every", c->save_every);
    cJSON_AddStringToObject(o, "seed", seed);
    cJSON_AddBoolToObject(o, "checkpointing", c->checkpointing);
    cJSON_AddNumberToObject(o, "n_previews", c->n_previews);
    cJSON_AddNumberToObject(o, "preview_steps", c->preview_steps);
    cJSON_AddStringToObject(o, "preview_seed", pseed);
    cJSON_AddStringToObject(o, "preview_prompt", c->preview_prompt);
    cJSON_AddNumberToObject(o, "version", c->version);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static int config_from_json(const char *json, ti_config *c, coin_error *err)
{
    ti_config_defaults(c);
    cJSON *o = cJSON_Parse(json);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return coin_fail(err, COIN_EFORMAT, "the saved configuration is not JSON");
    }
    struct { const char *key; char *dst; size_t len; } strs[] = {
        {"model", c->model, sizeof c->model}, {"images", c->images, sizeof c->images},
        {"out_dir", c->out_dir, sizeof c->out_dir}, {"token", c->token, sizeof c->token},
        {"init_word", c->init_word, sizeof c->init_word},
        {"templates", c->templates, sizeof c->templates},
        {"preview_prompt", c->preview_prompt, sizeof c->preview_prompt},
    };
    struct { const char *key; int *dst; } ints[] = {
        {"vectors", &c->vectors}, {"resolution", &c->resolution}, {"warmup", &c->warmup},
        {"steps", &c->steps}, {"batch", &c->batch}, {"grad_accum", &c->grad_accum},
        {"save_every", &c->save_every}, {"n_previews", &c->n_previews},
        {"preview_steps", &c->preview_steps}, {"version", &c->version},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof strs / sizeof strs[0] && !rc; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, strs[i].key);
        if (!cJSON_IsString(v) || strlen(v->valuestring) >= strs[i].len)
            rc = coin_fail(err, COIN_EFORMAT, "the saved configuration lacks \"%s\"", strs[i].key);
        else
            strcpy(strs[i].dst, v->valuestring);
    }
    for (size_t i = 0; i < sizeof ints / sizeof ints[0] && !rc; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, ints[i].key);
        if (!cJSON_IsNumber(v))
            rc = coin_fail(err, COIN_EFORMAT, "the saved configuration lacks \"%s\"", ints[i].key);
        else
            *ints[i].dst = (int)v->valuedouble;
    }
    const cJSON *lr = cJSON_GetObjectItemCaseSensitive(o, "lr");
    const cJSON *clip = cJSON_GetObjectItemCaseSensitive(o, "max_grad_norm");
    const cJSON *sched = cJSON_GetObjectItemCaseSensitive(o, "schedule");
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(o, "seed");
    const cJSON *pseed = cJSON_GetObjectItemCaseSensitive(o, "preview_seed");
    if (!rc && (!cJSON_IsNumber(lr) || !cJSON_IsNumber(clip) || !cJSON_IsString(sched) ||
                ti_lr_schedule_parse(sched->valuestring) < 0 || !cJSON_IsString(seed) ||
                !cJSON_IsString(pseed)))
        rc = coin_fail(err, COIN_EFORMAT, "the saved configuration is incomplete");
    if (!rc) {
        c->lr = (float)lr->valuedouble;
        c->max_grad_norm = (float)clip->valuedouble;
        c->schedule = (ti_lr_schedule)ti_lr_schedule_parse(sched->valuestring);
        c->seed = strtoull(seed->valuestring, NULL, 10);
        c->preview_seed = strtoull(pseed->valuestring, NULL, 10);
        c->center_crop = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "center_crop"));
        c->scale_lr = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "scale_lr"));
        c->checkpointing = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "checkpointing"));
    }
    cJSON_Delete(o);
    return rc;
}

/* ---- templates and images ---- */

typedef struct trainer {
    ti_config cfg;
    const coin_backend *be;
    sd_pipeline *p;
    char model_sha[65];
    int first_id;                   /* the trigger's first token id */
    int64_t width;                  /* text encoder width D */
    char *templates[MAX_TEMPLATES];
    int n_templates;
    int n_images;
    char *captions[MAX_IMAGES];     /* NULL when the image has no caption file */
    char *names[MAX_IMAGES];
    int latent_c, latent_h, latent_w;
    float *mean, *std;              /* [n_images, 2 (flip), C*h*w] */
    float scaling;
    /* the state that a checkpoint saves */
    int step;                       /* optimizer steps done */
    int skipped;
    float smooth;
    float *rows, *m, *v;            /* [vectors, D] */
    coin_rng rng;
    int bad_in_a_row;
} trainer;

static int load_templates(trainer *t, coin_error *err)
{
    char *text = NULL;
    const char *src = NULL;
    if (!strcmp(t->cfg.templates, "object"))
        src = coin_templates_object;
    else if (!strcmp(t->cfg.templates, "style"))
        src = coin_templates_style;
    else {
        int rc = file_read_all(t->cfg.templates, 1 << 20, &text, NULL, err);
        if (rc)
            return coin_error_prefix(err, "prompt templates");
        src = text;
    }
    for (const char *line = src; *line && t->n_templates < MAX_TEMPLATES;) {
        const char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        while (n && (line[n - 1] == '\r' || line[n - 1] == ' '))
            n--;
        if (n) {
            char *tpl = strndup(line, n);
            if (!tpl) {
                free(text);
                return coin_fail(err, COIN_ENOMEM, "out of memory");
            }
            if (!strstr(tpl, "{}")) {
                free(text);
                coin_fail(err, COIN_EINVAL, "%s: the template \"%s\" has no {} where the trigger "
                          "goes", t->cfg.templates, tpl);
                free(tpl);
                return COIN_EINVAL;
            }
            t->templates[t->n_templates++] = tpl;
        }
        line = end ? end + 1 : line + n;
    }
    free(text);
    if (!t->n_templates)
        return coin_fail(err, COIN_EINVAL, "%s: no prompt templates", t->cfg.templates);
    return 0;
}

/* text with every "{}" replaced by with (*out: caller frees). */
static char *fill_braces(const char *text, const char *with)
{
    size_t n = 0, wl = strlen(with);
    for (const char *p = strstr(text, "{}"); p; p = strstr(p + 2, "{}"))
        n++;
    char *out = malloc(strlen(text) + n * wl + 1), *d = out;
    if (!out)
        return NULL;
    for (const char *p = text, *hit; ; p = hit + 2) {
        hit = strstr(p, "{}");
        size_t k = hit ? (size_t)(hit - p) : strlen(p);
        memcpy(d, p, k);
        d += k;
        if (!hit)
            break;
        memcpy(d, with, wl);
        d += wl;
    }
    *d = '\0';
    return out;
}

static int is_image_name(const char *name)
{
    const char *ext = path_ext(name);
    return !strcasecmp(ext, "png") || !strcasecmp(ext, "jpg") || !strcasecmp(ext, "jpeg") ||
           !strcasecmp(ext, "bmp") || !strcasecmp(ext, "gif");
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists the image files of the folder (sorted, so a run does not depend on
 * the file system's order) and reads each one's caption file if any. */
static int list_images(trainer *t, coin_error *err)
{
    DIR *d = opendir(t->cfg.images);
    if (!d)
        return coin_fail(err, errno == ENOENT ? COIN_ENOTFOUND : COIN_EIO,
                         "%s: %s (give a folder of PNG or JPEG images)", t->cfg.images,
                         strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !is_image_name(e->d_name))
            continue;
        if (t->n_images == MAX_IMAGES) {
            closedir(d);
            return coin_fail(err, COIN_EINVAL, "%s: more than %d images", t->cfg.images,
                             MAX_IMAGES);
        }
        if (!(t->names[t->n_images++] = strdup(e->d_name))) {
            closedir(d);
            return coin_fail(err, COIN_ENOMEM, "out of memory");
        }
    }
    closedir(d);
    if (!t->n_images)
        return coin_fail(err, COIN_EINVAL, "%s has no images (PNG, JPEG, BMP or GIF files)",
                         t->cfg.images);
    qsort(t->names, (size_t)t->n_images, sizeof *t->names, cmp_str);
    for (int i = 0; i < t->n_images; i++) {
        char path[2200], *text;
        const char *dot = strrchr(t->names[i], '.');
        snprintf(path, sizeof path, "%s/%.*s.txt", t->cfg.images, (int)(dot - t->names[i]),
                 t->names[i]);
        if (path_exists(path)) {
            int rc = file_read_all(path, 1 << 16, &text, NULL, err);
            if (rc)
                return rc;
            for (char *nl = text; *nl; nl++)
                if (*nl == '\n' || *nl == '\r')
                    *nl = ' ';
            t->captions[i] = text;
        }
    }
    return 0;
}

/* Encodes every image and its mirror image once: the latent distribution
 * (mean, std) that each step samples from. */
static int encode_images(trainer *t, ti_report_fn report, void *ctx, coin_error *err)
{
    int size = t->cfg.resolution, f = t->p->vae_factor, rc = 0;
    t->latent_c = vae_get_config(t->p->vae)->latent_channels;
    t->latent_h = t->latent_w = size / f;
    int64_t n = (int64_t)t->latent_c * t->latent_h * t->latent_w;
    t->mean = malloc((size_t)(t->n_images * 2 * n) * sizeof(float));
    t->std = malloc((size_t)(t->n_images * 2 * n) * sizeof(float));
    float *chw = malloc((size_t)3 * size * size * sizeof(float)), *logvar = malloc(n * sizeof(float));
    tensor img = {0}, mean = {0}, lv = {0};
    if (!t->mean || !t->std || !chw || !logvar) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    TRY(tensor_alloc4(&img, t->be, 1, 3, size, size, err));
    for (int i = 0; i < t->n_images; i++) {
        char path[2200];
        coin_image raw = {0}, prepared = {0};
        snprintf(path, sizeof path, "%s/%s", t->cfg.images, t->names[i]);
        if (report) {
            char ev[2300];
            snprintf(ev, sizeof ev, "encoding image %d/%d: %s", i + 1, t->n_images, t->names[i]);
            ti_report r = {.step = t->step, .total = t->cfg.steps, .event = ev};
            report(ctx, &r);
        }
        TRY(image_load(path, &raw, err));
        for (int flip = 0; flip < 2 && !rc; flip++) {
            rc = image_prepare_ti(&raw, size, t->cfg.center_crop, flip, &prepared, err);
            if (!rc)
                rc = image_to_chw_float(&prepared, chw, err);
            image_free(&prepared);
            if (!rc)
                rc = tensor_upload(&img, chw, (int64_t)3 * size * size, err);
            if (!rc)
                rc = vae_encode(t->p->vae, &img, &mean, &lv, err);
            float *m = t->mean + (i * 2 + flip) * n, *s = t->std + (i * 2 + flip) * n;
            if (!rc)
                rc = tensor_download(&mean, m, n, err);
            if (!rc)
                rc = tensor_download(&lv, logvar, n, err);
            for (int64_t k = 0; !rc && k < n; k++)
                s[k] = expf(0.5f * logvar[k]);    /* diffusers: exp(0.5 * logvar) */
            tensor_free(&mean);
            tensor_free(&lv);
        }
        image_free(&raw);
        if (rc) {
            coin_error_prefix(err, "%s", path);
            goto done;
        }
    }
done:
    free(chw);
    free(logvar);
    tensor_free(&img);
    tensor_free(&mean);
    tensor_free(&lv);
    return rc;
}

/* ---- AdamW, exactly as torch 2.5's single-tensor CPU path ---- */

void ti_adamw_step(float *p, const float *g, float *m, float *v, int64_t n, int step,
                   double lr)
{
    /* Bias corrections in double, rounded to float where they meet a tensor;
     * the lerp and the addcmul are fused multiply-adds in torch's kernels. */
    float decay = (float)(1.0 - lr * ADAM_WD);
    double bc1 = 1.0 - pow(ADAM_B1, step), bc2 = 1.0 - pow(ADAM_B2, step);
    float neg_step = (float)(-lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    for (int64_t i = 0; i < n; i++) {
        p[i] *= decay;
        m[i] = fmaf(0.1f, g[i] - m[i], m[i]);
        v[i] *= 0.999f;
        v[i] = fmaf(0.001f * g[i], g[i], v[i]);
        float denom = sqrtf(v[i]) / bc2_sqrt + ADAM_EPS;
        p[i] = p[i] + (neg_step * m[i]) / denom;
    }
}

/* ---- one optimizer step ---- */

/* The prompt of one sample: its caption (with {} for the trigger, else
 * appended to a template) or a template, with a multi-vector trigger
 * expanded to all its tokens. */
static int sample_ids(trainer *t, int image, int tpl, int32_t *ids, coin_error *err)
{
    char *text = fill_braces(t->templates[tpl], t->cfg.token);
    const char *cap = t->captions[image];
    if (text && cap) {
        char *with;
        if (strstr(cap, "{}"))
            with = fill_braces(cap, t->cfg.token);
        else if ((with = malloc(strlen(text) + strlen(cap) + 3)))
            sprintf(with, "%s, %s", text, cap);
        free(text);
        text = with;
    }
    if (!text)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    tokenizer_result r;
    int rc = pipeline_tokenize(t->p, text, &r, err);
    free(text);
    if (!rc)
        memcpy(ids, r.ids, sizeof r.ids);
    return rc;
}

/* Forward and backward of one micro-batch: adds d(loss / accum) / d rows
 * into drows and returns the batch's loss in *loss. */
static int micro_step(trainer *t, tensor *drows, double *loss, coin_error *err)
{
    const ti_config *c = &t->cfg;
    int B = c->batch, rc;
    int64_t n = (int64_t)t->latent_c * t->latent_h * t->latent_w;
    int64_t image[64], tpl[64], ts64[64];
    int ts[64];
    float flip[64], tsf[64];
    float *eps = malloc((size_t)(B * n) * sizeof(float)), *noise = malloc((size_t)(B * n) * sizeof(float));
    float *x0 = malloc((size_t)(B * n) * sizeof(float)), *noisy = malloc((size_t)(B * n) * sizeof(float));
    float *target = malloc((size_t)(B * n) * sizeof(float)), *pred = malloc((size_t)(B * n) * sizeof(float));
    int32_t *ids = malloc((size_t)B * CLIP_CONTEXT * sizeof(int32_t));
    tensor ehs = {0}, x = {0}, out = {0}, dout = {0}, dctx = {0};
    clip_trace *ctrace = NULL;
    unet_trace *utrace = NULL;
    if (!eps || !noise || !x0 || !noisy || !target || !pred || !ids) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    /* The draws, in this order, from the run's one generator. */
    for (int b = 0; b < B; b++) {
        TRY(rng_randint(&t->rng, 0, t->n_images, &image[b], 1, err));
        rng_rand(&t->rng, &flip[b], 1);
        TRY(rng_randint(&t->rng, 0, t->n_templates, &tpl[b], 1, err));
    }
    rng_randn(&t->rng, eps, B * n);
    rng_randn(&t->rng, noise, B * n);
    TRY(rng_randint(&t->rng, 0, SCHED_TRAIN_STEPS, ts64, B, err));
    for (int b = 0; b < B; b++) {
        int f = flip[b] < 0.5f;
        const float *m = t->mean + (image[b] * 2 + f) * n, *s = t->std + (image[b] * 2 + f) * n;
        for (int64_t k = 0; k < n; k++) {
            float sample = m[k] + s[k] * eps[b * n + k];
            x0[b * n + k] = sample * t->scaling;
        }
        ts[b] = (int)ts64[b];
        tsf[b] = (float)ts64[b];
        TRY(sample_ids(t, (int)image[b], (int)tpl[b], ids + b * CLIP_CONTEXT, err));
    }
    sched_config sc = sched_default(t->p->prediction == PRED_V ? PREDICT_V : PREDICT_EPSILON);
    TRY(sched_add_noise(&sc, x0, noise, ts, B, n, noisy, err));
    if (t->p->prediction == PRED_V)
        TRY(sched_velocity(&sc, x0, noise, ts, B, n, target, err));
    else
        memcpy(target, noise, (size_t)(B * n) * sizeof(float));

    TRY(clip_forward_trace(t->p->clip, ids, B, &ehs, &ctrace, err));
    TRY(tensor_alloc4(&x, t->be, B, t->latent_c, t->latent_h, t->latent_w, err));
    TRY(tensor_upload(&x, noisy, B * n, err));
    TRY(unet_forward_trace(t->p->unet, &x, tsf, &ehs, &out, c->checkpointing, &utrace, err));
    TRY(tensor_download(&out, pred, B * n, err));
    /* mse_loss(reduction="mean") over every element, then / accum as
     * accelerate's backward divides it. */
    double sum = 0;
    float scale = 2.0f / (float)(B * n) / (float)c->grad_accum;
    for (int64_t k = 0; k < B * n; k++) {
        float d = pred[k] - target[k];
        sum += (double)d * d;
        pred[k] = scale * d;
    }
    *loss = sum / (double)(B * n);
    TRY(tensor_alloc4(&dout, t->be, B, t->latent_c, t->latent_h, t->latent_w, err));
    TRY(tensor_upload(&dout, pred, B * n, err));
    TRY(unet_backward_ctx(t->p->unet, utrace, &dout, &dctx, err));
    TRY(clip_backward(t->p->clip, ctrace, &dctx, t->first_id, drows, err));
done:
    unet_trace_free(utrace);
    clip_trace_free(ctrace);
    tensor_free(&ehs);
    tensor_free(&x);
    tensor_free(&out);
    tensor_free(&dout);
    tensor_free(&dctx);
    free(eps), free(noise), free(x0), free(noisy), free(target), free(pred), free(ids);
    return rc;
}

/* The learning rate of optimizer step `step` (0-based): scaled as diffusers'
 * --scale_lr does, then shaped by the schedule. */
static double lr_at(const ti_config *c, int step)
{
    double lr = c->lr * (c->scale_lr ? (double)c->batch * c->grad_accum : 1.0);
    return lr * ti_lr_factor(c->schedule, step, c->warmup, c->steps);
}

/* Result of one optimizer step. */
enum { STEP_OK, STEP_SKIPPED };

static int optimizer_step(trainer *t, double *loss_out, int *outcome, coin_error *err)
{
    const ti_config *c = &t->cfg;
    int64_t nr = (int64_t)c->vectors * t->width;
    tensor drows = {0};
    float *grad = calloc((size_t)nr, sizeof(float));
    int rc;
    double loss = 0;
    *outcome = STEP_OK;
    if (!grad)
        return coin_fail(err, COIN_ENOMEM, "out of memory");
    TRY(tensor_alloc2(&drows, t->be, c->vectors, t->width, err));
    TRY(tensor_upload(&drows, grad, nr, err));
    for (int a = 0; a < c->grad_accum; a++) {
        double l = 0;
        TRY(micro_step(t, &drows, &l, err));
        loss += l / c->grad_accum;
    }
    TRY(tensor_download(&drows, grad, nr, err));
    int finite = isfinite(loss);
    if (c->poison_from_step && t->step + 1 >= c->poison_from_step)
        finite = 0;     /* tests: as if this step's loss were NaN */
    double norm2 = 0;
    for (int64_t i = 0; i < nr; i++) {
        finite &= isfinite(grad[i]);
        norm2 += (double)grad[i] * grad[i];
    }
    *loss_out = loss;
    if (!finite) {
        /* Never let a non-finite value reach the rows or the moments. */
        *outcome = STEP_SKIPPED;
        goto done;
    }
    if (c->max_grad_norm > 0 && sqrt(norm2) > c->max_grad_norm) {
        /* torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6). */
        float coef = (float)(c->max_grad_norm / (sqrt(norm2) + 1e-6));
        for (int64_t i = 0; i < nr; i++)
            grad[i] *= coef;
    }
    ti_adamw_step(t->rows, grad, t->m, t->v, nr, t->step + 1, lr_at(c, t->step));
    TRY(clip_set_token_rows(t->p->clip, t->first_id, t->rows, c->vectors, err));
done:
    tensor_free(&drows);
    free(grad);
    return rc;
}

/* ---- checkpoints ---- */

static int save_embedding(trainer *t, const char *path, coin_error *err)
{
    char step[16], *cfg = ti_config_to_json(&t->cfg);
    snprintf(step, sizeof step, "%d", t->step);
    const char *meta[] = {
        "coin.version", COIN_VERSION, "coin.step", step, "coin.trigger", t->cfg.token,
        "coin.initializer", t->cfg.init_word, "coin.model_sha256", t->model_sha,
        "coin.hyperparameters", cfg ? cfg : "{}",
    };
    int rc = embedding_save(path, EMB_DIFFUSERS, t->cfg.token, t->rows, t->cfg.vectors, t->width,
                            meta, sizeof meta / sizeof meta[0] / 2, err);
    free(cfg);
    return rc;
}

static int save_state(trainer *t, coin_error *err)
{
    char path[1200], buf[8][40], *cfg = ti_config_to_json(&t->cfg);
    int64_t rd[2] = {t->cfg.vectors, t->width}, mt[1] = {624};
    st_writer *w = st_writer_new();
    int rc = !w || !cfg ? coin_fail(err, COIN_ENOMEM, "out of memory") : 0;
    snprintf(buf[0], sizeof buf[0], "%d", t->step);
    snprintf(buf[1], sizeof buf[1], "%d", t->skipped);
    snprintf(buf[2], sizeof buf[2], "%.9g", t->smooth);
    snprintf(buf[3], sizeof buf[3], "%d", t->rng.mti);
    snprintf(buf[4], sizeof buf[4], "%d", t->rng.has_cached);
    snprintf(buf[5], sizeof buf[5], "%.17g", t->rng.cached);
    snprintf(buf[6], sizeof buf[6], "%" PRIu64, t->rng.seed);
    snprintf(buf[7], sizeof buf[7], "%u", t->rng.offset);
    const char *keys[] = {"step", "skipped", "smooth", "rng_mti", "rng_has_cached", "rng_cached",
                          "rng_seed", "rng_offset"};
    if (!rc)
        rc = st_writer_add(w, "rows", ST_F32, 2, rd, t->rows, err);
    if (!rc)
        rc = st_writer_add(w, "exp_avg", ST_F32, 2, rd, t->m, err);
    if (!rc)
        rc = st_writer_add(w, "exp_avg_sq", ST_F32, 2, rd, t->v, err);
    if (!rc)
        rc = st_writer_add(w, "rng_mt", ST_U32, 1, mt, t->rng.mt, err);
    for (int i = 0; i < 8 && !rc; i++)
        rc = st_writer_meta(w, keys[i], buf[i], err);
    if (!rc)
        rc = st_writer_meta(w, "config", cfg, err);
    if (!rc)
        rc = path_join(path, sizeof path, t->cfg.out_dir, "state.safetensors", err);
    if (!rc)
        rc = st_writer_save(w, path, err);
    st_writer_free(w);
    free(cfg);
    return rc;
}

/* Reads the resume state into t (rows, moments, generator, counters). */
static int load_state(trainer *t, const char *path, char **config, coin_error *err)
{
    st_file *f;
    int rc = st_open(&f, path, err);
    if (rc)
        return rc;
    const st_tensor *rows = st_find(f, "rows"), *m = st_find(f, "exp_avg");
    const st_tensor *v = st_find(f, "exp_avg_sq"), *mt = st_find(f, "rng_mt");
    const char *keys[] = {"step", "skipped", "smooth", "rng_mti", "rng_has_cached", "rng_cached",
                          "rng_seed", "rng_offset", "config"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!st_meta(f, keys[i]))
            rc = coin_fail(err, COIN_EFORMAT, "%s: no \"%s\" in the resume state", path, keys[i]);
    if (!rc && (!rows || !m || !v || !mt || mt->dtype != ST_U32 || mt->nelem != 624 ||
                m->nelem != rows->nelem || v->nelem != rows->nelem))
        rc = coin_fail(err, COIN_EFORMAT, "%s: the resume state is incomplete", path);
    if (!rc && config)
        rc = (*config = strdup(st_meta(f, "config"))) ? 0 : coin_fail(err, COIN_ENOMEM, "out of memory");
    if (!rc && t->rows) {
        if (rows->nelem != (uint64_t)t->cfg.vectors * t->width)
            rc = coin_fail(err, COIN_EFORMAT, "%s: the saved rows do not fit the trigger", path);
        if (!rc)
            rc = st_tensor_to_f32(f, rows, t->rows, rows->nelem, err);
        if (!rc)
            rc = st_tensor_to_f32(f, m, t->m, m->nelem, err);
        if (!rc)
            rc = st_tensor_to_f32(f, v, t->v, v->nelem, err);
        if (!rc) {
            memcpy(t->rng.mt, mt->data, sizeof t->rng.mt);
            t->step = atoi(st_meta(f, "step"));
            t->skipped = atoi(st_meta(f, "skipped"));
            t->smooth = strtof(st_meta(f, "smooth"), NULL);
            t->rng.kind = RNG_CPU;
            t->rng.mti = atoi(st_meta(f, "rng_mti"));
            t->rng.has_cached = atoi(st_meta(f, "rng_has_cached"));
            t->rng.cached = strtod(st_meta(f, "rng_cached"), NULL);
            t->rng.seed = strtoull(st_meta(f, "rng_seed"), NULL, 10);
            t->rng.offset = (uint32_t)strtoul(st_meta(f, "rng_offset"), NULL, 10);
        }
    }
    st_close(f);
    return rc;
}

/* Preview images from fixed prompts and seeds, the same at every checkpoint. */
static int save_previews(trainer *t, ti_report_fn report, void *ctx, coin_error *err)
{
    const ti_config *c = &t->cfg;
    if (c->n_previews <= 0)
        return 0;
    char dir[1200], path[1400], *prompt = fill_braces(c->preview_prompt, c->token);
    int rc = prompt ? path_join(dir, sizeof dir, c->out_dir, "previews", err)
                    : coin_fail(err, COIN_ENOMEM, "out of memory");
    if (!rc && mkdir(dir, 0777) && errno != EEXIST)
        rc = coin_fail(err, COIN_EIO, "%s: %s", dir, strerror(errno));
    sample_params sp;
    sample_defaults(t->p, &sp);
    sp.prompt = prompt;
    sp.steps = c->preview_steps;
    sp.sampler = SAMPLER_DPMPP_2M;      /* as diffusers' validation does */
    sp.width = sp.height = c->resolution;
    float *pixels = malloc((size_t)3 * sp.width * sp.height * sizeof(float));
    if (!rc && !pixels)
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
    for (int k = 0; k < c->n_previews && !rc; k++) {
        coin_image img = {0};
        char *params = NULL, model_short[11], step[16];
        sp.seed = c->preview_seed + (uint64_t)k;
        snprintf(path, sizeof path, "%s/step-%d-%d.png", dir, t->step, k);
        snprintf(model_short, sizeof model_short, "%.10s", t->model_sha);
        snprintf(step, sizeof step, "%d", t->step);
        infotext it = {
            .prompt = prompt, .negative_prompt = "", .steps = sp.steps, .cfg_scale = sp.cfg,
            .seed = (int64_t)sp.seed, .width = sp.width, .height = sp.height,
            .have = INFOTEXT_STEPS | INFOTEXT_CFG | INFOTEXT_SEED | INFOTEXT_SIZE,
            .sampler = (char *)sampler_a1111_name(sp.sampler), .schedule_type = "Automatic",
            .model_hash = model_short, .rng = (char *)infotext_rng_from_coin(rng_kind_name(sp.rng)),
            .version = "coin " COIN_VERSION,
        };
        rc = sample_image(t->p, &sp, NULL, NULL, pixels, NULL, err);
        if (!rc)
            rc = image_from_chw_float(pixels, sp.width, sp.height, &img, err);
        if (!rc)
            rc = infotext_format(&it, &params, err);
        if (!rc) {
            image_text text[2] = {{"parameters", params}, {"coin.training_step", step}};
            rc = image_write_png(path, &img, text, 2, err);
        }
        image_free(&img);
        free(params);
        if (!rc && report) {
            char ev[1500];
            snprintf(ev, sizeof ev, "preview %s", path);
            ti_report r = {.step = t->step, .total = c->steps, .event = ev};
            report(ctx, &r);
        }
    }
    free(pixels);
    free(prompt);
    return rc;
}

static int save_checkpoint(trainer *t, ti_report_fn report, void *ctx, ti_result *res,
                      coin_error *err)
{
    char name[64], path[1200];
    snprintf(name, sizeof name, "learned_embeds-steps-%d.safetensors", t->step);
    int rc = path_join(path, sizeof path, t->cfg.out_dir, name, err);
    if (!rc)
        rc = save_embedding(t, path, err);
    if (!rc)
        rc = path_join(path, sizeof path, t->cfg.out_dir, "learned_embeds.safetensors", err);
    if (!rc)
        rc = save_embedding(t, path, err);
    /* The state last: a state always has its embedding on disk. */
    if (!rc)
        rc = save_state(t, err);
    if (rc)
        return rc;
    snprintf(res->embedding, sizeof res->embedding, "%s", path);
    if (report) {
        char ev[1300];
        snprintf(ev, sizeof ev, "checkpoint %s", path);
        ti_report r = {.step = t->step, .total = t->cfg.steps, .smooth = t->smooth,
                       .skipped = t->skipped, .event = ev};
        report(ctx, &r);
    }
    return save_previews(t, report, ctx, err);
}

/* ---- setting up a run ---- */

static int check_config(const ti_config *c, coin_error *err)
{
    if (!c->model[0] || !c->images[0] || !c->out_dir[0] || !c->token[0] || !c->init_word[0])
        return coin_fail(err, COIN_EINVAL, "the model, images, output folder, trigger and "
                         "initializer word are all needed");
    if (c->vectors < 1 || c->vectors > 16)
        return coin_fail(err, COIN_EINVAL, "vectors per trigger must be 1 to 16, not %d", c->vectors);
    if (c->steps < 1 || c->steps > 1000000)
        return coin_fail(err, COIN_EINVAL, "steps must be 1 to 1000000, not %d", c->steps);
    if (c->batch < 1 || c->batch > 64)
        return coin_fail(err, COIN_EINVAL, "batch must be 1 to 64, not %d", c->batch);
    if (c->grad_accum < 1 || c->grad_accum > 1024)
        return coin_fail(err, COIN_EINVAL, "gradient accumulation must be 1 to 1024");
    if (!isfinite(c->lr) || c->lr <= 0 || c->lr > 1)
        return coin_fail(err, COIN_EINVAL, "the learning rate must be above 0 and at most 1, "
                         "not %g", c->lr);
    if (!isfinite(c->max_grad_norm) || c->max_grad_norm < 0)
        return coin_fail(err, COIN_EINVAL, "the gradient clipping norm must be 0 (off) or more");
    if (c->save_every < 1)
        return coin_fail(err, COIN_EINVAL, "checkpoints every %d steps?", c->save_every);
    if (c->warmup < 0 || (c->schedule != LR_CONSTANT && c->warmup >= c->steps &&
                          c->schedule != LR_CONSTANT_WARMUP))
        return coin_fail(err, COIN_EINVAL, "warm-up of %d steps does not fit %d steps",
                         c->warmup, c->steps);
    if (strchr(c->token, ' ') || strchr(c->token, '{'))
        return coin_fail(err, COIN_EINVAL, "the trigger must be one word without braces");
    return 0;
}

static int add_trigger(trainer *t, coin_error *err)
{
    sd_pipeline *p = t->p;
    const ti_config *c = &t->cfg;
    int32_t ids[8];
    int n = 0, rc = tokenizer_tokenize(p->tok, c->init_word, ids, 8, &n, err);
    if (!rc && n != 1)
        rc = coin_fail(err, COIN_EINVAL, "the initializer word \"%s\" is %d tokens; pick a word "
                       "that is one token (coin tokenize --no-pad tells)", c->init_word, n);
    float *init = malloc((size_t)t->width * sizeof(float));
    if (!rc && !init)
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
    if (!rc)
        rc = clip_get_token_rows(p->clip, ids[0], init, 1, err);
    /* Every vector starts as the initializer's embedding, as in diffusers. */
    for (int i = 0; !rc && i < c->vectors; i++) {
        char name[160];
        int id;
        embedding_vector_token(c->token, i, name, sizeof name);
        rc = tokenizer_add_token(p->tok, name, &id, err);
        if (rc)
            coin_error_prefix(err, "trigger \"%s\"", c->token);
        else if (i == 0)
            t->first_id = id;
        memcpy(t->rows + (int64_t)i * t->width, init, (size_t)t->width * sizeof(float));
    }
    free(init);
    if (!rc)
        rc = clip_add_tokens(p->clip, t->rows, c->vectors, t->first_id, err);
    /* Registered like a loaded embedding, so prompts expand the trigger. */
    ti_embedding *e = &p->embeddings[p->n_embeddings];
    if (!rc && !(e->token = strdup(c->token)))
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
    if (!rc) {
        e->n_vectors = c->vectors;
        e->width = t->width;
        p->n_embeddings++;
    }
    return rc;
}

static int setup(trainer *t, const ti_config *c, const coin_backend *be, ti_report_fn report,
                 void *ctx, coin_error *err)
{
    int rc = check_config(c, err);
    if (rc)
        return rc;
    t->cfg = *c;
    t->be = be;
    TRY(pipeline_open(&t->p, c->model, (sd_version)c->version, PRED_UNKNOWN, be, err));
    sample_params sp;
    sample_defaults(t->p, &sp);
    if (t->cfg.resolution <= 0)
        t->cfg.resolution = sp.width;
    sp.width = sp.height = t->cfg.resolution;
    TRY(sample_validate(t->p, &sp, err));
    t->width = t->p->clip->cfg.width;
    t->scaling = vae_get_config(t->p->vae)->scaling_factor;
    int64_t nr = (int64_t)c->vectors * t->width;
    t->rows = calloc((size_t)nr, sizeof(float));
    t->m = calloc((size_t)nr, sizeof(float));
    t->v = calloc((size_t)nr, sizeof(float));
    if (!t->rows || !t->m || !t->v) {
        rc = coin_fail(err, COIN_ENOMEM, "out of memory");
        goto done;
    }
    if (c->model_sha256[0]) {
        snprintf(t->model_sha, sizeof t->model_sha, "%s", c->model_sha256);
    } else {
        uint8_t digest[32];
        TRY(sha256_file(checkpoint_main_file(t->p->ck), digest, NULL, NULL, err));
        sha256_hex(digest, t->model_sha);
    }
    TRY(add_trigger(t, err));
    TRY(load_templates(t, err));
    TRY(list_images(t, err));
    TRY(encode_images(t, report, ctx, err));
done:
    return rc;
}

static void trainer_free(trainer *t)
{
    pipeline_free(t->p);
    for (int i = 0; i < t->n_templates; i++)
        free(t->templates[i]);
    for (int i = 0; i < t->n_images; i++) {
        free(t->names[i]);
        free(t->captions[i]);
    }
    free(t->mean), free(t->std), free(t->rows), free(t->m), free(t->v);
}

/* loss.csv keeps the rows of steps up to `step` (a resumed run rewrites
 * what came after its checkpoint). */
static int trim_loss_csv(const char *path, int step, coin_error *err)
{
    char *text = NULL, tmp[1300];
    if (!path_exists(path))
        return 0;
    int rc = file_read_all(path, 1u << 30, &text, NULL, err);
    if (rc)
        return rc;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        free(text);
        return coin_fail(err, COIN_EIO, "%s: %s", tmp, strerror(errno));
    }
    /* A line cut short by a crash or a full disk (not "step,loss,lr") goes
     * with the steps after the checkpoint. */
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        const char *comma = strchr(line, ',');
        int whole = comma && strchr(comma + 1, ',') && comma[1] && strrchr(line, ',')[1];
        if (!isdigit((unsigned char)line[0]) ? !strncmp(line, "step,", 5)
                                             : whole && atoi(line) <= step)
            fprintf(f, "%s\n", line);
    }
    int bad = fflush(f) || fsync(fileno(f));
    fclose(f);
    free(text);
    if (bad || rename(tmp, path))
        return coin_fail(err, COIN_EIO, "%s: %s", path, strerror(errno));
    return 0;
}

static int run(trainer *t, ti_report_fn report, void *ctx, ti_result *res, coin_error *err)
{
    const ti_config *c = &t->cfg;
    char csv_path[1200];
    int rc = path_join(csv_path, sizeof csv_path, c->out_dir, "loss.csv", err);
    if (!rc)
        rc = trim_loss_csv(csv_path, t->step, err);
    if (rc)
        return rc;
    int fresh = !path_exists(csv_path);
    FILE *csv = fopen(csv_path, "a");
    if (!csv)
        return coin_fail(err, COIN_EIO, "%s: %s", csv_path, strerror(errno));
    if (fresh)
        fprintf(csv, "step,loss,lr\n");
    while (t->step < c->steps && !rc) {
        double loss = 0, lr = lr_at(c, t->step);
        int outcome;
        if ((rc = optimizer_step(t, &loss, &outcome, err)))
            break;
        if (outcome == STEP_SKIPPED) {
            t->skipped++;
            if (++t->bad_in_a_row < MAX_BAD_STEPS)
                continue;
            char state[1200];
            path_join(state, sizeof state, c->out_dir, "state.safetensors", NULL);
            int saved = path_exists(state);
            rc = coin_fail(err, COIN_EINVAL,
                           "the loss or gradient was not finite %d steps in a row after step %d; "
                           "%s. Lower the learning rate (now %g%s) or clip gradients "
                           "(--clip-grad 1), then resume", MAX_BAD_STEPS, t->step,
                           saved ? "the run stops at its last checkpoint, which is intact"
                                 : "no checkpoint was written yet",
                           c->lr, c->scale_lr ? " before scaling" : "");
            break;
        }
        t->bad_in_a_row = 0;
        t->step++;
        t->smooth = t->step == 1 ? (float)loss : 0.98f * t->smooth + 0.02f * (float)loss;
        /* A line that cannot be written (a full disk) ends the run here:
         * the last checkpoint stays the one to resume from. */
        char line[96];
        int len = snprintf(line, sizeof line, "%d,%.9g,%.9g\n", t->step, loss, lr);
        if (fileio_test_enospc((size_t)len) || fputs(line, csv) == EOF || fflush(csv) != 0) {
            int e = errno;
            rc = coin_fail(err, COIN_EIO, "%s: cannot write: %s%s", csv_path,
                           e == ENOSPC || e == EDQUOT ? "the disk is full: " : "", strerror(e));
            break;
        }
        int stop = 0;
        if (report) {
            ti_report r = {.step = t->step, .total = c->steps, .loss = (float)loss,
                           .smooth = t->smooth, .lr = lr, .skipped = t->skipped};
            stop = report(ctx, &r);
        }
        if (t->step % c->save_every == 0 || t->step == c->steps || stop)
            rc = save_checkpoint(t, report, ctx, res, err);
        if (stop && !rc) {
            res->stopped = 1;
            break;
        }
    }
    res->steps_done = t->step;
    if (rc)
        clearerr(csv);      /* what could not be written is dropped with the run's tail */
    if (fsync(fileno(csv)) && !rc)
        rc = coin_fail(err, COIN_EIO, "%s: %s", csv_path, strerror(errno));
    fclose(csv);
    return rc;
}

/* Removes what writers killed mid-write left behind in dir: NAME.tmp.PID
 * files (every file is written under such a name, then renamed).  Called
 * with the folder's lock held, when no other trainer can be writing. */
static void sweep_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[2400];
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.") || (strlen(e->d_name) > 4 &&
                                           !strcmp(e->d_name + strlen(e->d_name) - 4, ".tmp"))) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
}

/* Takes the folder's lock (a flock on DIR/train.lock, released when the
 * process ends, however it ends), so that two trainers never write one
 * folder: a run being paused finishes its checkpoint before its resumption
 * starts.  Waits up to wait_s seconds. */
static int lock_folder(const char *dir, int wait_s, int *fd, coin_error *err)
{
    char path[1200];
    int rc = path_join(path, sizeof path, dir, "train.lock", err);
    if (rc)
        return rc;
    *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (*fd < 0)
        return coin_fail(err, COIN_EIO, "cannot write in %s: %s", dir, strerror(errno));
    for (int i = 0; i <= wait_s * 10; i++) {
        if (flock(*fd, LOCK_EX | LOCK_NB) == 0) {
            char previews[1300];
            sweep_temp_files(dir);
            snprintf(previews, sizeof previews, "%s/previews", dir);
            sweep_temp_files(previews);
            return 0;
        }
        if (errno != EWOULDBLOCK)
            break;
        if (i < wait_s * 10)
            usleep(100000);
    }
    close(*fd);
    *fd = -1;
    return coin_fail(err, COIN_EINVAL, "another coin process is training in %s; wait for it, or "
                     "stop it (coin stop RUN)", dir);
}

int ti_wait_for_folder(const char *dir, int wait_s, coin_error *err)
{
    int fd, rc = lock_folder(dir, wait_s, &fd, err);
    if (!rc)
        close(fd);
    return rc;
}

int ti_train(const ti_config *c, const coin_backend *be, ti_report_fn report, void *ctx,
             ti_result *res, coin_error *err)
{
    trainer t;
    memset(&t, 0, sizeof t);
    memset(res, 0, sizeof *res);
    char state[1200], probe[1200];
    int rc = path_make_dirs(c->out_dir, err);
    if (rc)
        return rc;
    rc = path_join(state, sizeof state, c->out_dir, "state.safetensors", err);
    if (rc)
        return rc;
    if (path_exists(state))
        return coin_fail(err, COIN_EINVAL, "%s already holds a training run; continue it with "
                         "coin train --resume %s, or choose another output folder", c->out_dir,
                         c->out_dir);
    /* Find an unwritable folder now, not after the images are encoded. */
    snprintf(probe, sizeof probe, "%s/.coin-write-test", c->out_dir);
    FILE *f = fopen(probe, "w");
    if (!f)
        return coin_fail(err, COIN_EIO, "cannot write in %s: %s", c->out_dir, strerror(errno));
    fclose(f);
    unlink(probe);
    int lock = -1;
    rc = lock_folder(c->out_dir, 0, &lock, err);
    if (!rc)
        rc = setup(&t, c, be, report, ctx, err);
    if (!rc) {
        rng_seed(&t.rng, RNG_CPU, c->seed);
        rc = run(&t, report, ctx, res, err);
    }
    trainer_free(&t);
    if (lock >= 0)
        close(lock);
    return rc;
}

int ti_resume(const char *dir, int steps, const coin_backend *be, ti_report_fn report,
              void *ctx, ti_result *res, coin_error *err)
{
    trainer t;
    memset(&t, 0, sizeof t);
    memset(res, 0, sizeof *res);
    char state[1200], *json = NULL;
    ti_config c;
    int lock = -1;
    int rc = path_join(state, sizeof state, dir, "state.safetensors", err);
    if (!rc && !path_exists(state))
        rc = coin_fail(err, COIN_ENOTFOUND, "%s has no state.safetensors: no run to resume "
                       "there (a run writes it at its first checkpoint)", dir);
    /* A run asked to pause may still be writing its checkpoint. */
    if (!rc)
        rc = lock_folder(dir, 120, &lock, err);
    if (rc)
        return rc;
    rc = load_state(&t, state, &json, err);
    if (!rc)
        rc = config_from_json(json, &c, err);
    free(json);
    if (rc) {
        close(lock);
        return rc;
    }
    /* The folder may have moved since; the state is where it is now. */
    snprintf(c.out_dir, sizeof c.out_dir, "%s", dir);
    if (steps > 0)
        c.steps = steps;
    rc = setup(&t, &c, be, report, ctx, err);
    if (!rc)
        rc = load_state(&t, state, NULL, err);
    if (!rc)
        rc = clip_set_token_rows(t.p->clip, t.first_id, t.rows, c.vectors, err);
    if (!rc)
        rc = run(&t, report, ctx, res, err);
    trainer_free(&t);
    close(lock);
    return rc;
}
