/*
 * embedding.h - learned textual-inversion embeddings in the files other
 * tools read and write.
 *
 * A trained trigger word is N vectors of the text encoder's width.  coin
 * reads and writes them as safetensors in two shapes:
 *   diffusers  {"<token>": F32 [N, D]}    (learned_embeds.safetensors; the
 *              trigger is the key)
 *   kohya      {"emb_params": F32 [N, D]} (sd-scripts, AUTOMATIC1111 and
 *              stable-diffusion.cpp read it; the trigger is the file's stem)
 *   a1111      {"string_to_param.*": F32 [N, D]}, AUTOMATIC1111's .pt dict
 *              flattened (the trigger is the file's stem)
 * AUTOMATIC1111's .pt files and diffusers' learned_embeds.bin (torch.save)
 * are read too, by pickle_pt.c, which executes nothing.  Multi-vector triggers use diffusers' convention: the
 * extra vectors are the tokens "<tok>_1" ... "<tok>_{N-1}", and a prompt's
 * "<tok>" is expanded to "<tok> <tok>_1 ... <tok>_{N-1}".
 */
#ifndef COIN_EMBEDDING_H
#define COIN_EMBEDDING_H

#include <stdint.h>

#include "error.h"

typedef struct ti_embedding {
    char *token;            /* the trigger word */
    char *path;
    int n_vectors;
    int64_t width;
    float *vectors;         /* [n_vectors, width], host memory */
} ti_embedding;

/* Reads an embedding file.  token_override, when not NULL, names the trigger
 * instead of the key or file stem. */
int embedding_load(ti_embedding *e, const char *path, const char *token_override,
                   coin_error *err);
void embedding_free(ti_embedding *e);

/* diffusers {token: [N, D]}; kohya {"emb_params": [N, D]}; AUTOMATIC1111's
 * dict flattened {"string_to_param.*": [N, D]} (both named by the file). */
typedef enum embedding_format { EMB_DIFFUSERS, EMB_KOHYA, EMB_A1111 } embedding_format;

/* Writes vectors [n, width] as a safetensors embedding, atomically, with
 * metadata pairs meta[2k] = key, meta[2k+1] = value (n_meta pairs). */
int embedding_save(const char *path, embedding_format fmt, const char *token,
                   const float *vectors, int n, int64_t width,
                   const char *const *meta, int n_meta, coin_error *err);

/* The token names of vector i: "<tok>" for 0, "<tok>_i" after (diffusers'
 * naming).  Writes into buf. */
int embedding_vector_token(const char *token, int i, char *buf, size_t len);

/* Replaces each whole occurrence of token in prompt by the token followed by
 * its extra vectors' names, into a new string (*out, caller frees). */
int embedding_expand_prompt(const char *prompt, const char *token, int n_vectors,
                            char **out, coin_error *err);

#endif
