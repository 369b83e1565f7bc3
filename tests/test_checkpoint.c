/*
 * test_checkpoint.c - the layouts map to one naming, versions are detected,
 * and bad inputs are refused with messages that say what to do.
 *
 * The tiny models in tests/golden/te_sd1 and te_sd2 hold the same weights in
 * both layouts (written by tools/reference/make_text_encoders.py and checked
 * there with diffusers' own single-file converter), so every canonical
 * tensor read through the single-file mapping must equal the diffusers
 * folder's tensor of the same name, value for value.
 */
#include <stdio.h>
#include <stdlib.h>

#include "core/checkpoint.h"
#include "core/clip.h"
#include "test.h"

#define SD1_FILE "tests/golden/sd1/model.safetensors"
#define SD1_DIR "tests/golden/sd1/diffusers"
#define SD2_FILE "tests/golden/sd2/model.safetensors"
#define SD2_DIR "tests/golden/sd2/diffusers"

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n)
        test_failed(__FILE__, __LINE__, "cannot write %s", path);
    if (f)
        fclose(f);
}

TEST(checkpoint_sd1_single_file_detected)
{
    coin_error err = {0};
    checkpoint *ck;
    REQUIRE_OK(checkpoint_open(&ck, SD1_FILE, SD_UNKNOWN, &err), &err);
    CHECK_EQ_INT(ck->layout, CKPT_SINGLE_FILE);
    CHECK_EQ_INT(ck->version, SD_V1);
    CHECK_EQ_INT(ck->prediction, PRED_EPSILON);
    CHECK_EQ_INT(checkpoint_pad_id(ck), 49407);
    CHECK_EQ_INT(ck->text.width, 16);
    CHECK_EQ_INT(ck->text.vocab, 49408);
    CHECK_EQ_INT(ck->text.intermediate, 37);
    CHECK_EQ_INT(ck->text.heads, 2);
    CHECK_EQ_INT(ck->text.layers, 3);
    CHECK_EQ_INT(ck->text.layers_in_file, 3);
    CHECK_EQ_INT(ck->text.act, CLIP_ACT_QUICK_GELU);
    /* position_ids (I64) is a buffer, not a parameter. */
    CHECK(checkpoint_find(ck, COMP_TEXT_ENCODER, "text_model.embeddings.position_ids") == NULL);
    CHECK_EQ_INT(ck->n_problems, 0);
    checkpoint_close(ck);
}

TEST(checkpoint_sd2_openclip_detected)
{
    coin_error err = {0};
    checkpoint *ck;
    REQUIRE_OK(checkpoint_open(&ck, SD2_FILE, SD_UNKNOWN, &err), &err);
    CHECK_EQ_INT(ck->version, SD_V2);
    CHECK_EQ_INT(checkpoint_pad_id(ck), 0);
    CHECK_EQ_INT(ck->text.heads, 4);
    CHECK_EQ_INT(ck->text.layers_in_file, 4);
    CHECK_EQ_INT(ck->text.layers, 3);   /* penultimate */
    CHECK_EQ_INT(ck->text.act, CLIP_ACT_GELU);
    /* The fused in_proj became three [16, 16] slices. */
    const ckpt_tensor *k = checkpoint_find(ck, COMP_TEXT_ENCODER,
                                           "text_model.encoder.layers.1.self_attn.k_proj.weight");
    REQUIRE(k != NULL);
    CHECK_EQ_INT(k->ndim, 2);
    CHECK_EQ_INT(k->shape[0], 16);
    CHECK_EQ_INT(k->row_begin, 16);
    CHECK_EQ_INT(ck->prediction, PRED_UNKNOWN);
    checkpoint_close(ck);
}

TEST(checkpoint_diffusers_folders_detected)
{
    coin_error err = {0};
    checkpoint *ck;
    REQUIRE_OK(checkpoint_open(&ck, SD1_DIR, SD_UNKNOWN, &err), &err);
    CHECK_EQ_INT(ck->layout, CKPT_DIFFUSERS);
    CHECK_EQ_INT(ck->version, SD_V1);
    CHECK_EQ_INT(ck->text.heads, 2);
    CHECK_EQ_INT(ck->text.layers, 3);
    checkpoint_close(ck);
    REQUIRE_OK(checkpoint_open(&ck, SD2_DIR, SD_UNKNOWN, &err), &err);
    CHECK_EQ_INT(ck->version, SD_V2);
    CHECK_EQ_INT(ck->text.heads, 4);
    CHECK_EQ_INT(ck->text.layers, 3);
    CHECK_EQ_INT(ck->text.act, CLIP_ACT_GELU);
    checkpoint_close(ck);
}

/* Every tensor of the diffusers folder (text encoder, UNet, VAE) is found
 * under the same canonical name in the single file, with identical values:
 * the single file's LDM and OpenCLIP names were written by the reference
 * generator and checked there with diffusers' own single-file loader. */
static void check_same_weights(const char *file, const char *dir)
{
    coin_error err = {0};
    checkpoint *a, *b;
    REQUIRE_OK(checkpoint_open(&a, file, SD_UNKNOWN, &err), &err);
    if (checkpoint_open(&b, dir, SD_UNKNOWN, &err)) {
        checkpoint_close(a);
        test_failed(__FILE__, __LINE__, "%s", err.msg);
        return;
    }
    int compared[COMP_COUNT] = {0};
    for (size_t i = 0; i < b->n_tensors; i++) {
        const ckpt_tensor *tb = &b->tensors[i];
        if (tb->comp == COMP_OTHER || !strncmp(tb->name, "text_projection", 15))
            continue;
        const ckpt_tensor *ta = checkpoint_find(a, tb->comp, tb->name);
        CHECK_MSG(ta != NULL, "%s lacks the %s tensor %s", file,
                  ckpt_component_name(tb->comp), tb->name);
        if (!ta || ta->nelem != tb->nelem) {
            CHECK_MSG(ta == NULL, "%s: %s differs in size", file, tb->name);
            continue;
        }
        CHECK_MSG(ta->ndim == tb->ndim && !memcmp(ta->shape, tb->shape, sizeof(int64_t) * ta->ndim),
                  "%s: %s differs in shape", file, tb->name);
        float *va = malloc(ta->nelem * sizeof(float)), *vb = malloc(tb->nelem * sizeof(float));
        REQUIRE(va && vb);
        if (checkpoint_read_f32(a, ta, va, ta->nelem, &err) ||
            checkpoint_read_f32(b, tb, vb, tb->nelem, &err))
            test_failed(__FILE__, __LINE__, "%s", err.msg);
        else
            CHECK_MSG(!memcmp(va, vb, ta->nelem * sizeof(float)), "%s differs", tb->name);
        free(va);
        free(vb);
        compared[tb->comp]++;
    }
    /* 2 embeddings + 16 per layer x 3 layers + final LayerNorm (2). */
    CHECK_EQ_INT(compared[COMP_TEXT_ENCODER], 2 + 16 * 3 + 2);
    CHECK(compared[COMP_UNET] > 100);
    CHECK(compared[COMP_VAE] > 50);
    /* Nothing in the single file was left unmapped. */
    CHECK_EQ_INT(a->n_problems, 0);
    for (int i = 0; i < a->n_problems; i++)
        printf("    problem: %s\n", a->problems[i]);
    checkpoint_close(a);
    checkpoint_close(b);
}

TEST(checkpoint_sd1_layouts_hold_the_same_weights)
{
    check_same_weights(SD1_FILE, SD1_DIR);
}

TEST(checkpoint_sd2_layouts_hold_the_same_weights)
{
    check_same_weights(SD2_FILE, SD2_DIR);
}

TEST(checkpoint_version_override)
{
    coin_error err = {0};
    checkpoint *ck;
    REQUIRE_OK(checkpoint_open(&ck, SD1_FILE, SD_V2, &err), &err);
    CHECK_EQ_INT(ck->version, SD_V2);
    CHECK_EQ_INT(checkpoint_pad_id(ck), 0);
    REQUIRE(ck->n_problems == 1);
    CHECK_STR_CONTAINS(ck->problems[0], "forced to SD 2.x");
    checkpoint_close(ck);
    CHECK_EQ_INT(sd_version_parse("sd1"), SD_V1);
    CHECK_EQ_INT(sd_version_parse("2"), SD_V2);
    CHECK_EQ_INT(sd_version_parse("xl"), SD_UNKNOWN);
}

TEST(checkpoint_refuses_pickle)
{
    const char *dir = test_tmpdir();
    char path[700];
    coin_error err = {0};
    checkpoint *ck;
    /* By extension, and by content whatever the name. */
    snprintf(path, sizeof path, "%s/model.ckpt", dir);
    write_bytes(path, "PK\x03\x04 not really a zip", 22);
    CHECK_EQ_INT(checkpoint_open(&ck, path, SD_UNKNOWN, &err), COIN_EUNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "pickle");
    CHECK_STR_CONTAINS(err.msg, "save_file");
    CHECK_STR_CONTAINS(err.msg, path);
    snprintf(path, sizeof path, "%s/renamed.safetensors", dir);
    write_bytes(path, "\x80\x02}q\x00.", 6);
    CHECK_EQ_INT(checkpoint_open(&ck, path, SD_UNKNOWN, &err), COIN_EUNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "pickle");
    /* A diffusers folder with only pytorch_model.bin. */
    snprintf(path, sizeof path, "%s/pipe/text_encoder", dir);
    char cmd[1600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && : > '%s/pytorch_model.bin'", path, path);
    REQUIRE(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/pipe", dir);
    CHECK_EQ_INT(checkpoint_open(&ck, path, SD_UNKNOWN, &err), COIN_EUNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "pytorch_model.bin");
    CHECK_STR_CONTAINS(err.msg, "safetensors");
}

TEST(checkpoint_bad_paths_and_folders)
{
    coin_error err = {0};
    checkpoint *ck;
    CHECK_EQ_INT(checkpoint_open(&ck, "tests/golden/no-such-model.safetensors", SD_UNKNOWN, &err),
                 COIN_ENOTFOUND);
    CHECK_STR_CONTAINS(err.msg, "no-such-model");
    const char *dir = test_tmpdir();
    CHECK_EQ_INT(checkpoint_open(&ck, dir, SD_UNKNOWN, &err), COIN_EFORMAT);
    CHECK_STR_CONTAINS(err.msg, "not a diffusers model");
    /* A truncated copy of a real file names the file. */
    char path[700];
    snprintf(path, sizeof path, "%s/cut.safetensors", dir);
    FILE *in = fopen(SD1_FILE, "rb");
    REQUIRE(in);
    static char buf[100000];
    size_t n = fread(buf, 1, sizeof buf, in);
    fclose(in);
    write_bytes(path, buf, n);
    CHECK_EQ_INT(checkpoint_open(&ck, path, SD_UNKNOWN, &err), COIN_EFORMAT);
    CHECK_STR_CONTAINS(err.msg, "cut.safetensors");
}

TEST(checkpoint_missing_tensor_named_on_load)
{
    /* A copy of the SD1 model without one layer's fc2 bias. */
    coin_error err = {0};
    st_file *src;
    REQUIRE_OK(st_open(&src, SD1_FILE, &err), &err);
    st_writer *w = st_writer_new();
    REQUIRE(w);
    const char *drop = "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias";
    for (size_t i = 0; i < src->n_tensors; i++) {
        const st_tensor *t = &src->tensors[i];
        if (strcmp(t->name, drop) &&
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err))
            test_failed(__FILE__, __LINE__, "%s", err.msg);
    }
    for (size_t i = 0; i < src->n_meta; i++)
        st_writer_meta(w, src->meta_keys[i], src->meta_values[i], &err);
    char path[700];
    snprintf(path, sizeof path, "%s/holed.safetensors", test_tmpdir());
    REQUIRE_OK(st_writer_save(w, path, &err), &err);
    st_writer_free(w);
    st_close(src);
    checkpoint *ck;
    REQUIRE_OK(checkpoint_open(&ck, path, SD_UNKNOWN, &err), &err);
    clip_model *m;
    CHECK_EQ_INT(clip_load(&m, ck, backend_cpu(), &err), COIN_ENOTFOUND);
    CHECK_STR_CONTAINS(err.msg, "text_model.encoder.layers.1.mlp.fc2.bias");
    checkpoint_close(ck);
}
