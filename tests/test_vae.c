/*
 * test_vae.c - the VAE against diffusers' AutoencoderKL.
 *
 * tests/golden/sd{1,2}/vae_reference.safetensors hold z [1,4,16,16] and
 * diffusers' vae.decode(z).sample [1,3,64,64], and image [1,3,64,64] with
 * vae.encode(image).latent_dist's mean and logvar [1,4,16,16], for the tiny
 * VAEs (block_out (8,16,16), layers_per_block 2, norm_num_groups 4, latent
 * 4) stored both as a single LDM file and as a diffusers folder.  Tolerance
 * 1e-4 max absolute error; fp32 on both sides gives a few 1e-6.
 *
 * The other tests build variants of the diffusers VAE in a temporary
 * folder: old attention names, a missing tensor, a wrong shape, no encoder,
 * no config.
 */
#include <stdlib.h>
#include <sys/stat.h>

#include "core/checkpoint.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "core/vae.h"
#include "test.h"

#define TOLERANCE 1e-4f

/* Reads a golden tensor into a new CPU tensor. */
static int golden_tensor(tensor *t, const st_file *f, const char *name)
{
    coin_error err = {0};
    const st_tensor *s = st_find(f, name);
    float *host = NULL;
    int rc = -1;
    if (!s || s->ndim != 4) {
        test_failed(__FILE__, __LINE__, "%s: no 4-d tensor '%s'", f->path, name);
        return -1;
    }
    if (!(host = malloc(s->nelem * sizeof(float))) ||
        st_tensor_to_f32(f, s, host, s->nelem, &err) ||
        tensor_alloc(t, backend_cpu(), 4, s->shape, &err) ||
        tensor_upload(t, host, t->n, &err))
        test_failed(__FILE__, __LINE__, "%s: %s", name, err.msg);
    else
        rc = 0;
    free(host);
    return rc;
}

/* Max absolute difference (NaN propagates); -1 when the shapes differ. */
static float max_diff(const tensor *a, const tensor *b)
{
    if (a->ndim != b->ndim || a->n != b->n || memcmp(a->shape, b->shape, sizeof a->shape))
        return -1;
    float *x = malloc((size_t)a->n * sizeof(float)), *y = malloc((size_t)b->n * sizeof(float));
    float worst = -1;
    coin_error err = {0};
    if (x && y && !tensor_download(a, x, a->n, &err) && !tensor_download(b, y, b->n, &err)) {
        worst = 0;
        for (int64_t i = 0; i < a->n; i++) {
            float e = fabsf(x[i] - y[i]);
            if (!(e <= worst))
                worst = e;
        }
    }
    free(x);
    free(y);
    return worst;
}

static void check_close(const char *what, const tensor *got, const tensor *want, float tol)
{
    float e = max_diff(got, want);
    CHECK_MSG(e >= 0 && e <= tol, "%s: max abs error %g exceeds %g (or shapes differ)", what, e,
              tol);
    printf("    %s: max abs error %.3g\n", what, e);
}

static vae_model *open_vae(const char *model, checkpoint **ck)
{
    coin_error err = {0};
    vae_model *m = NULL;
    *ck = NULL;
    if (checkpoint_open(ck, model, SD_UNKNOWN, &err) || vae_load(&m, *ck, backend_cpu(), &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);   /* names the model */
        checkpoint_close(*ck);
        *ck = NULL;
        return NULL;
    }
    return m;
}

/* Decode and encode the golden inputs with model and compare. */
static void check_model(const char *model, const char *golden_path)
{
    coin_error err = {0};
    st_file *g = NULL;
    checkpoint *ck = NULL;
    vae_model *m = NULL;
    tensor z = {0}, decoded = {0}, image = {0}, mean = {0}, logvar = {0};
    tensor img = {0}, got_mean = {0}, got_logvar = {0};
    char what[300];
    if (st_open(&g, golden_path, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return;
    }
    if (golden_tensor(&z, g, "z") || golden_tensor(&decoded, g, "decoded") ||
        golden_tensor(&image, g, "image") || golden_tensor(&mean, g, "mean") ||
        golden_tensor(&logvar, g, "logvar") || !(m = open_vae(model, &ck)))
        goto done;
    if (vae_decode(m, &z, &img, &err)) {
        test_failed(__FILE__, __LINE__, "%s: decode: %s", model, err.msg);
    } else {
        snprintf(what, sizeof what, "%s decode", model);
        check_close(what, &img, &decoded, TOLERANCE);
    }
    if (vae_encode(m, &image, &got_mean, &got_logvar, &err)) {
        test_failed(__FILE__, __LINE__, "%s: encode: %s", model, err.msg);
    } else {
        snprintf(what, sizeof what, "%s encode mean", model);
        check_close(what, &got_mean, &mean, TOLERANCE);
        snprintf(what, sizeof what, "%s encode logvar", model);
        check_close(what, &got_logvar, &logvar, TOLERANCE);
    }
done:
    tensor_free(&z);
    tensor_free(&decoded);
    tensor_free(&image);
    tensor_free(&mean);
    tensor_free(&logvar);
    tensor_free(&img);
    tensor_free(&got_mean);
    tensor_free(&got_logvar);
    vae_free(m);
    checkpoint_close(ck);
    st_close(g);
}

TEST(vae_sd1_single_file_matches_diffusers)
{
    check_model("tests/golden/sd1/model.safetensors", "tests/golden/sd1/vae_reference.safetensors");
}

TEST(vae_sd1_diffusers_matches_diffusers)
{
    check_model("tests/golden/sd1/diffusers", "tests/golden/sd1/vae_reference.safetensors");
}

TEST(vae_sd2_single_file_matches_diffusers)
{
    check_model("tests/golden/sd2/model.safetensors", "tests/golden/sd2/vae_reference.safetensors");
}

TEST(vae_sd2_diffusers_matches_diffusers)
{
    check_model("tests/golden/sd2/diffusers", "tests/golden/sd2/vae_reference.safetensors");
}

TEST(vae_config_comes_from_the_weights)
{
    const char *models[] = {"tests/golden/sd1/diffusers", "tests/golden/sd1/model.safetensors"};
    for (int i = 0; i < 2; i++) {
        checkpoint *ck;
        vae_model *m = open_vae(models[i], &ck);
        if (!m)
            continue;
        const vae_config *c = vae_get_config(m);
        CHECK_EQ_INT(c->levels, 3);
        CHECK_EQ_INT(c->channels[0], 8);
        CHECK_EQ_INT(c->channels[1], 16);
        CHECK_EQ_INT(c->channels[2], 16);
        CHECK_EQ_INT(c->layers_per_block, 2);
        CHECK_EQ_INT(c->norm_groups, 4);
        CHECK_EQ_INT(c->latent_channels, 4);
        CHECK_EQ_INT(c->in_channels, 3);
        CHECK(fabsf(c->scaling_factor - 0.18215f) < 1e-7f);
        vae_free(m);
        checkpoint_close(ck);
    }
}

TEST(vae_batch_rows_are_independent)
{
    /* Two copies of z in one batch decode to two copies of the golden. */
    coin_error err = {0};
    st_file *g = NULL;
    checkpoint *ck = NULL;
    vae_model *m = NULL;
    tensor z = {0}, decoded = {0}, z2 = {0}, img = {0};
    float *host = NULL;
    if (st_open(&g, "tests/golden/sd1/vae_reference.safetensors", &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return;
    }
    if (golden_tensor(&z, g, "z") || golden_tensor(&decoded, g, "decoded") ||
        !(m = open_vae("tests/golden/sd1/diffusers", &ck)))
        goto done;
    host = malloc(2 * (size_t)z.n * sizeof(float));
    REQUIRE(host);
    if (tensor_download(&z, host, z.n, &err) ||
        tensor_alloc4(&z2, backend_cpu(), 2, z.shape[1], z.shape[2], z.shape[3], &err))
        goto fail;
    memcpy(host + z.n, host, (size_t)z.n * sizeof(float));
    if (tensor_upload(&z2, host, z2.n, &err) || vae_decode(m, &z2, &img, &err))
        goto fail;
    CHECK(img.shape[0] == 2 && img.n == 2 * decoded.n);
    float *out = realloc(host, (size_t)img.n * sizeof(float));
    REQUIRE(out);
    host = out;
    float *want = malloc((size_t)decoded.n * sizeof(float));
    REQUIRE(want);
    if (!tensor_download(&img, host, img.n, &err) &&
        !tensor_download(&decoded, want, decoded.n, &err)) {
        float worst = 0;
        for (int64_t i = 0; i < decoded.n; i++) {
            worst = fmaxf(worst, fabsf(host[i] - want[i]));
            worst = fmaxf(worst, fabsf(host[decoded.n + i] - want[i]));
        }
        CHECK_MSG(worst <= TOLERANCE, "batch of 2: max abs error %g", worst);
    }
    free(want);
    goto done;
fail:
    test_failed(__FILE__, __LINE__, "%s", err.msg);
done:
    free(host);
    tensor_free(&z);
    tensor_free(&z2);
    tensor_free(&decoded);
    tensor_free(&img);
    vae_free(m);
    checkpoint_close(ck);
    st_close(g);
}

TEST(vae_rejects_latents_of_the_wrong_shape)
{
    checkpoint *ck;
    vae_model *m = open_vae("tests/golden/sd1/diffusers", &ck);
    if (!m)
        return;
    coin_error err = {0};
    tensor z = {0}, img = {0};
    REQUIRE_OK(tensor_alloc4(&z, backend_cpu(), 1, 3, 8, 8, &err), &err);
    CHECK_EQ_INT(vae_decode(m, &z, &img, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "[1, 3, 8, 8]");
    CHECK(!img.mem);
    tensor mean = {0}, logvar = {0};
    /* 62 is not a multiple of the VAE's factor 4. */
    tensor bad = {0};
    REQUIRE_OK(tensor_alloc4(&bad, backend_cpu(), 1, 3, 62, 64, &err), &err);
    CHECK_EQ_INT(vae_encode(m, &bad, &mean, &logvar, &err), COIN_ESHAPE);
    CHECK(!mean.mem && !logvar.mem);
    tensor_free(&bad);
    tensor_free(&z);
    vae_free(m);
    checkpoint_close(ck);
}

/* ---- variants of the sd1 diffusers VAE, written into a temporary folder ---- */

/* How a variant treats a tensor: return 0 to drop it, else 1 with the name
 * to write in out (and possibly a changed shape). */
typedef int (*edit_fn)(const char *name, char *out, size_t len, int64_t *shape, int *ndim);

/* Writes <dir>/vae/diffusion_pytorch_model.safetensors from the golden sd1
 * diffusers VAE through edit, and copies config.json unless with_config is
 * 0.  Returns dir (a fresh test directory) or NULL. */
static const char *write_variant(edit_fn edit, int with_config)
{
    static char dir[600];
    const char *src = "tests/golden/sd1/diffusers/vae";
    char path[1200];
    coin_error err = {0};
    st_file *f = NULL;
    st_writer *w = NULL;
    char *cfg = NULL;
    size_t cfg_len = 0;
    int ok = 0;
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    snprintf(path, sizeof path, "%s/vae", dir);
    if (mkdir(path, 0755)) {
        snprintf(err.msg, sizeof err.msg, "cannot create %.900s", path);
        goto done;
    }
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", src);
    if (st_open(&f, path, &err) || !(w = st_writer_new()))
        goto done;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        char name[300];
        int64_t shape[ST_MAX_DIMS];
        int ndim = t->ndim;
        memcpy(shape, t->shape, sizeof shape);
        if (!edit(t->name, name, sizeof name, shape, &ndim))
            continue;
        int64_t n = 1;
        for (int d = 0; d < ndim; d++)
            n *= shape[d];
        if ((uint64_t)n > t->nelem) {
            test_failed(__FILE__, __LINE__, "variant grows '%s'", t->name);
            goto done;
        }
        if (st_writer_add(w, name, t->dtype, ndim, shape, t->data, &err))
            goto done;
    }
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    if (st_writer_save(w, path, &err))
        goto done;
    if (with_config) {
        snprintf(path, sizeof path, "%s/config.json", src);
        if (file_read_all(path, 1 << 20, &cfg, &cfg_len, &err))
            goto done;
        snprintf(path, sizeof path, "%s/vae/config.json", dir);
        FILE *out = fopen(path, "wb");
        if (!out || fwrite(cfg, 1, cfg_len, out) != cfg_len || fclose(out)) {
            snprintf(err.msg, sizeof err.msg, "cannot write %.900s", path);
            goto done;
        }
    }
    ok = 1;
done:
    if (!ok)
        test_failed(__FILE__, __LINE__, "making a VAE variant: %s", err.msg);
    free(cfg);
    st_writer_free(w);
    st_close(f);
    return ok ? dir : NULL;
}

static int keep_all(const char *name, char *out, size_t len, int64_t *shape, int *ndim)
{
    (void)shape;
    (void)ndim;
    snprintf(out, len, "%s", name);
    return 1;
}

/* diffusers before 0.14 saved the mid-block attention as query, key, value
 * and proj_attn (runwayml's 2022 SD2 uploads still have them). */
static int old_attention_names(const char *name, char *out, size_t len, int64_t *shape,
                               int *ndim)
{
    static const char *const map[][2] = {
        {".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."},
        {".to_out.0.", ".proj_attn."},
    };
    keep_all(name, out, len, shape, ndim);
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        const char *at = strstr(name, map[i][0]);
        if (at && strstr(name, "mid_block.attentions.0")) {
            snprintf(out, len, "%.*s%s%s", (int)(at - name), name, map[i][1],
                     at + strlen(map[i][0]));
            break;
        }
    }
    return 1;
}

TEST(vae_old_attention_names_decode_alike)
{
    const char *dir = write_variant(old_attention_names, 1);
    if (!dir)
        return;
    char dir_copy[600];
    snprintf(dir_copy, sizeof dir_copy, "%s", dir);
    coin_error err = {0};
    st_file *g = NULL;
    checkpoint *ck_new = NULL, *ck_old = NULL;
    vae_model *m_new = NULL, *m_old = NULL;
    tensor z = {0}, a = {0}, b = {0};
    /* The variant really has the old names. */
    char path[800];
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir_copy);
    st_file *v = NULL;
    if (!st_open(&v, path, &err)) {
        CHECK(st_find(v, "decoder.mid_block.attentions.0.query.weight") != NULL);
        CHECK(st_find(v, "encoder.mid_block.attentions.0.proj_attn.bias") != NULL);
        CHECK(st_find(v, "decoder.mid_block.attentions.0.to_q.weight") == NULL);
        st_close(v);
    }
    if (st_open(&g, "tests/golden/sd1/vae_reference.safetensors", &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return;
    }
    if (golden_tensor(&z, g, "z") || !(m_new = open_vae("tests/golden/sd1/diffusers", &ck_new)) ||
        !(m_old = open_vae(dir_copy, &ck_old)))
        goto done;
    if (vae_decode(m_new, &z, &a, &err) || vae_decode(m_old, &z, &b, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        goto done;
    }
    CHECK_MSG(max_diff(&a, &b) == 0, "old names decode differently: %g", max_diff(&a, &b));
done:
    tensor_free(&z);
    tensor_free(&a);
    tensor_free(&b);
    vae_free(m_new);
    vae_free(m_old);
    checkpoint_close(ck_new);
    checkpoint_close(ck_old);
    st_close(g);
}

static int drop_to_k(const char *name, char *out, size_t len, int64_t *shape, int *ndim)
{
    keep_all(name, out, len, shape, ndim);
    return strcmp(name, "decoder.mid_block.attentions.0.to_k.weight") != 0;
}

static int short_bias(const char *name, char *out, size_t len, int64_t *shape, int *ndim)
{
    keep_all(name, out, len, shape, ndim);
    if (!strcmp(name, "decoder.up_blocks.1.resnets.2.conv1.bias"))
        shape[0]--;
    return 1;
}

static void check_load_error(const char *dir, int code, const char *needle)
{
    coin_error err = {0};
    checkpoint *ck = NULL;
    vae_model *m = NULL;
    if (!dir)
        return;
    if (checkpoint_open(&ck, dir, SD_UNKNOWN, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return;
    }
    CHECK_EQ_INT(vae_load(&m, ck, backend_cpu(), &err), code);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(err.msg, needle);
    printf("    %s\n", err.msg);
    vae_free(m);
    checkpoint_close(ck);
}

TEST(vae_missing_tensor_is_named)
{
    check_load_error(write_variant(drop_to_k, 1), COIN_ENOTFOUND,
                     "decoder.mid_block.attentions.0.to_k.weight");
}

TEST(vae_wrong_shape_is_named)
{
    check_load_error(write_variant(short_bias, 1), COIN_ESHAPE,
                     "'decoder.up_blocks.1.resnets.2.conv1.bias' has shape [15]");
}

TEST(vae_groups_that_do_not_divide_are_refused)
{
    /* Without config.json the group count is the default 32, which the
     * tiny model's 8 channels cannot be split into. */
    check_load_error(write_variant(keep_all, 0), COIN_EFORMAT, "norm_num_groups");
}

static int decoder_only(const char *name, char *out, size_t len, int64_t *shape, int *ndim)
{
    keep_all(name, out, len, shape, ndim);
    return strncmp(name, "encoder.", 8) && strncmp(name, "quant_conv.", 11);
}

TEST(vae_decoder_only_decodes_and_refuses_to_encode)
{
    const char *dir = write_variant(decoder_only, 1);
    if (!dir)
        return;
    char dir_copy[600];
    snprintf(dir_copy, sizeof dir_copy, "%s", dir);
    coin_error err = {0};
    st_file *g = NULL;
    checkpoint *ck = NULL;
    vae_model *m = NULL;
    tensor z = {0}, decoded = {0}, image = {0}, img = {0}, mean = {0}, logvar = {0};
    if (st_open(&g, "tests/golden/sd1/vae_reference.safetensors", &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return;
    }
    if (golden_tensor(&z, g, "z") || golden_tensor(&decoded, g, "decoded") ||
        golden_tensor(&image, g, "image") || !(m = open_vae(dir_copy, &ck)))
        goto done;
    if (vae_decode(m, &z, &img, &err))
        test_failed(__FILE__, __LINE__, "%s", err.msg);
    else
        check_close("decoder-only decode", &img, &decoded, TOLERANCE);
    CHECK_EQ_INT(vae_encode(m, &image, &mean, &logvar, &err), COIN_EUNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "only a decoder");
    CHECK(!mean.mem && !logvar.mem);
    /* Asking for the encoder of such a file is an error at load. */
    vae_model *enc = NULL;
    CHECK_EQ_INT(vae_load_parts(&enc, ck, backend_cpu(), VAE_ENCODER, &err), COIN_ENOTFOUND);
    CHECK_STR_CONTAINS(err.msg, "only a decoder");
    CHECK(enc == NULL);
done:
    tensor_free(&z);
    tensor_free(&decoded);
    tensor_free(&image);
    tensor_free(&img);
    vae_free(m);
    checkpoint_close(ck);
    st_close(g);
}

TEST(vae_load_parts_loads_one_half)
{
    coin_error err = {0};
    st_file *g = NULL;
    checkpoint *ck = NULL;
    vae_model *dec = NULL, *enc = NULL, *none = NULL;
    tensor z = {0}, decoded = {0}, image = {0}, mean = {0}, img = {0};
    tensor got_mean = {0}, got_logvar = {0};
    if (st_open(&g, "tests/golden/sd1/vae_reference.safetensors", &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return;
    }
    if (golden_tensor(&z, g, "z") || golden_tensor(&decoded, g, "decoded") ||
        golden_tensor(&image, g, "image") || golden_tensor(&mean, g, "mean"))
        goto done;
    if (checkpoint_open(&ck, "tests/golden/sd1/diffusers", SD_UNKNOWN, &err) ||
        vae_load_parts(&dec, ck, backend_cpu(), VAE_DECODER, &err) ||
        vae_load_parts(&enc, ck, backend_cpu(), VAE_ENCODER, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        goto done;
    }
    CHECK_EQ_INT(vae_load_parts(&none, ck, backend_cpu(), 0, &err), COIN_EINVAL);
    if (vae_decode(dec, &z, &img, &err) || vae_encode(enc, &image, &got_mean, &got_logvar, &err)) {
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        goto done;
    }
    check_close("decoder-only load: decode", &img, &decoded, TOLERANCE);
    check_close("encoder-only load: encode mean", &got_mean, &mean, TOLERANCE);
    tensor_free(&img);
    tensor_free(&got_mean);
    tensor_free(&got_logvar);
    CHECK_EQ_INT(vae_encode(dec, &image, &got_mean, &got_logvar, &err), COIN_EUNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "without its encoder");
    CHECK(vae_decode(enc, &z, &img, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "without its decoder");
    CHECK(!img.mem && !got_mean.mem && !got_logvar.mem);
done:
    tensor_free(&z);
    tensor_free(&decoded);
    tensor_free(&image);
    tensor_free(&mean);
    tensor_free(&img);
    tensor_free(&got_mean);
    tensor_free(&got_logvar);
    vae_free(dec);
    vae_free(enc);
    vae_free(none);
    checkpoint_close(ck);
    st_close(g);
}
