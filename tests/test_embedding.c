/*
 * test_embedding.c - textual-inversion embedding files: both formats read
 * and written, triggers expanded to all their vectors, and a trigger whose
 * vector is a known word's embedding conditions exactly like that word.
 */
#include <stdlib.h>

#include "core/embedding.h"
#include "core/safetensors.h"
#include "core/sample.h"
#include "test.h"

#define SD1 "tests/golden/sd1/model.safetensors"
#define CAT_ID 2368     /* "cat</w>" */

/* Row id of the model's token embedding, width D. */
static int token_row(const char *model, int id, float *row, int64_t *width)
{
    coin_error err = {0};
    checkpoint *ck;
    if (checkpoint_open(&ck, model, SD_UNKNOWN, &err))
        return -1;
    const ckpt_tensor *t = checkpoint_find(ck, COMP_TEXT_ENCODER,
                                           "text_model.embeddings.token_embedding.weight");
    float *all = t ? malloc(t->nelem * sizeof(float)) : NULL;
    int rc = -1;
    if (all && !checkpoint_read_f32(ck, t, all, t->nelem, &err)) {
        *width = t->shape[1];
        memcpy(row, all + (int64_t)id * t->shape[1], (size_t)t->shape[1] * sizeof(float));
        rc = 0;
    }
    free(all);
    checkpoint_close(ck);
    return rc;
}

static void encode(sd_pipeline *p, const char *prompt, float *out, int32_t *ids_out)
{
    coin_error err = {0};
    tokenizer_result r;
    tensor h = {0};
    if (pipeline_tokenize(p, prompt, &r, &err) || clip_forward(p->clip, r.ids, 1, &h, &err) ||
        tensor_download(&h, out, h.n, &err))
        test_failed(__FILE__, __LINE__, "%s: %s", prompt, err.msg);
    if (ids_out)
        memcpy(ids_out, r.ids, sizeof r.ids);
    tensor_free(&h);
}

TEST(embedding_trigger_with_a_words_vector_acts_like_the_word)
{
    float row[64];
    int64_t D = 0;
    REQUIRE(token_row(SD1, CAT_ID, row, &D) == 0 && D == 16);
    const char *dir = test_tmpdir();
    char path[700];
    snprintf(path, sizeof path, "%s/learned_embeds.safetensors", dir);
    coin_error err = {0};
    REQUIRE_OK(embedding_save(path, EMB_DIFFUSERS, "<kitty>", row, 1, D, NULL, 0, &err), &err);
    sd_pipeline *p;
    REQUIRE_OK(pipeline_open(&p, SD1, SD_UNKNOWN, PRED_UNKNOWN, backend_cpu(), &err), &err);
    REQUIRE_OK(pipeline_add_embedding(p, path, &err), &err);
    float a[77 * 16], b[77 * 16];
    int32_t ids[77];
    encode(p, "a photo of a <kitty>", a, ids);
    encode(p, "a photo of a cat", b, NULL);
    CHECK_EQ_INT(ids[5], 49408);
    CHECK(!memcmp(a, b, sizeof a));
    pipeline_free(p);
}

TEST(embedding_multi_vector_triggers_expand)
{
    float rows[3 * 16];
    int64_t D;
    REQUIRE(token_row(SD1, CAT_ID, rows, &D) == 0);
    REQUIRE(token_row(SD1, 320, rows + 16, &D) == 0);    /* "a</w>" */
    REQUIRE(token_row(SD1, 1125, rows + 32, &D) == 0);   /* "photo</w>" */
    char path[700];
    /* kohya's format: the trigger is the file's stem. */
    snprintf(path, sizeof path, "%s/cat-toy.safetensors", test_tmpdir());
    coin_error err = {0};
    REQUIRE_OK(embedding_save(path, EMB_KOHYA, NULL, rows, 3, 16, NULL, 0, &err), &err);
    ti_embedding e;
    REQUIRE_OK(embedding_load(&e, path, NULL, &err), &err);
    CHECK(!strcmp(e.token, "cat-toy"));
    CHECK_EQ_INT(e.n_vectors, 3);
    CHECK(!memcmp(e.vectors, rows, sizeof rows));
    embedding_free(&e);

    sd_pipeline *p;
    REQUIRE_OK(pipeline_open(&p, SD1, SD_UNKNOWN, PRED_UNKNOWN, backend_cpu(), &err), &err);
    REQUIRE_OK(pipeline_add_embedding(p, path, &err), &err);
    float a[77 * 16], b[77 * 16];
    int32_t ids[77];
    encode(p, "cat-toy on a table", a, ids);
    CHECK_EQ_INT(ids[1], 49408);
    CHECK_EQ_INT(ids[2], 49409);
    CHECK_EQ_INT(ids[3], 49410);
    encode(p, "cat a photo on a table", b, NULL);
    CHECK(!memcmp(a, b, sizeof a));
    pipeline_free(p);

    /* AUTOMATIC1111's flattened dict: the file names the trigger. */
    snprintf(path, sizeof path, "%s/thumbs.safetensors", test_tmpdir());
    REQUIRE_OK(embedding_save(path, EMB_A1111, NULL, rows, 3, 16, NULL, 0, &err), &err);
    REQUIRE_OK(embedding_load(&e, path, NULL, &err), &err);
    CHECK(!strcmp(e.token, "thumbs"));
    CHECK(!memcmp(e.vectors, rows, sizeof rows));
    embedding_free(&e);

    char *out;
    REQUIRE_OK(embedding_expand_prompt("x <t> y <t>", "<t>", 2, &out, &err), &err);
    CHECK(!strcmp(out, "x <t> <t>_1 y <t> <t>_1"));
    free(out);
}

TEST(embedding_wrong_width_and_bad_files_are_refused)
{
    const char *dir = test_tmpdir();
    char path[700];
    float rows[2 * 12] = {0};
    coin_error err = {0};
    snprintf(path, sizeof path, "%s/narrow.safetensors", dir);
    REQUIRE_OK(embedding_save(path, EMB_DIFFUSERS, "<n>", rows, 2, 12, NULL, 0, &err), &err);
    sd_pipeline *p;
    REQUIRE_OK(pipeline_open(&p, SD1, SD_UNKNOWN, PRED_UNKNOWN, backend_cpu(), &err), &err);
    CHECK_EQ_INT(pipeline_add_embedding(p, path, &err), COIN_ESHAPE);
    CHECK_STR_CONTAINS(err.msg, "12 wide");
    CHECK_STR_CONTAINS(err.msg, "16");
    /* A word already in the vocabulary cannot be a trigger. */
    snprintf(path, sizeof path, "%s/dog.safetensors", dir);
    float wide[16] = {0};
    REQUIRE_OK(embedding_save(path, EMB_KOHYA, NULL, wide, 1, 16, NULL, 0, &err), &err);
    CHECK(pipeline_add_embedding(p, path, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "dog");
    pipeline_free(p);
    ti_embedding e;
    snprintf(path, sizeof path, "%s/missing.pt", dir);
    CHECK(embedding_load(&e, path, NULL, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "missing.pt");
    /* A model file is not an embedding. */
    CHECK_EQ_INT(embedding_load(&e, SD1, NULL, &err), COIN_EFORMAT);
}

TEST(embedding_loads_a1111_pt_and_diffusers_bin)
{
    coin_error err = {0};
    ti_embedding e;
    /* AUTOMATIC1111 names the trigger after the file. */
    REQUIRE_OK(embedding_load(&e, "tests/golden/pt/a1111_3vec_f16.pt", NULL, &err), &err);
    CHECK(!strcmp(e.token, "a1111_3vec_f16"));
    CHECK_EQ_INT(e.n_vectors, 3);
    embedding_free(&e);
    /* diffusers' learned_embeds.bin: the key is the trigger. */
    REQUIRE_OK(embedding_load(&e, "tests/golden/pt/diffusers_2vec.bin", NULL, &err), &err);
    CHECK(e.token[0] != '\0' && strcmp(e.token, "diffusers_2vec") != 0);
    CHECK_EQ_INT(e.n_vectors, 2);
    embedding_free(&e);
    CHECK(embedding_load(&e, "tests/golden/pt/evil_builtins_eval.pt", NULL, &err) != 0);
}
