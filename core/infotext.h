/*
 * infotext.h - generation parameters as AUTOMATIC1111 writes them, and the
 * SHA-256 hashes they name models and embeddings by.
 *
 * A1111 stores an image's parameters as one text (PNG tEXt "parameters"):
 *
 *     <prompt, any number of lines>
 *     Negative prompt: <negative prompt, any number of lines>
 *     Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, ...
 *
 * Every tool in the ecosystem (A1111, Forge, ComfyUI loaders, Civitai) reads
 * this format, so coin writes it byte for byte as A1111's create_infotext
 * would and reads it as parse_generation_parameters does, keeping keys it
 * does not know so that nothing is lost on a round trip.
 *
 * Hashes are A1111's: "Model hash" is the first 10 hex digits of the model
 * file's SHA-256, a TI hash the first 12 of the embedding file's.
 */
#ifndef COIN_INFOTEXT_H
#define COIN_INFOTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* ---- SHA-256 (FIPS 180-4) ---- */

typedef struct sha256_ctx {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t buf[64];
    size_t nbuf;
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t n);
/* Writes the digest; c must be initialised again before reuse. */
void sha256_final(sha256_ctx *c, uint8_t digest[32]);
void sha256_buffer(const void *data, size_t n, uint8_t digest[32]);
/* 64 lowercase hex digits and a NUL. */
void sha256_hex(const uint8_t digest[32], char hex[65]);

/* Progress of a file hash: bytes done of total.  Return nonzero to stop
 * (sha256_file then fails with COIN_EINVAL, "cancelled"). */
typedef int (*sha256_progress_fn)(uint64_t done, uint64_t total, void *user);

/* Hashes a whole file, reading it in 4 MiB chunks (multi-GB checkpoints are
 * fine) and calling progress (may be NULL) after each chunk and at the end.
 * Uses the CPU's SHA instructions when it has them. */
int sha256_file(const char *path, uint8_t digest[32], sha256_progress_fn progress,
                void *user, coin_error *err);

/* Whether the SHA instructions may be used (default: when the CPU has
 * them).  Returns the previous setting; for tests and benchmarks. */
int sha256_allow_hw(int allow);

/* A1111's short hashes of a file: model "Model hash" (10 hex digits,
 * CheckpointInfo.shorthash) and embedding "TI hashes" (12, Embedding.shorthash). */
int infotext_model_hash(const char *path, char out[11], sha256_progress_fn progress,
                        void *user, coin_error *err);
int infotext_ti_hash(const char *path, char out[13], sha256_progress_fn progress,
                     void *user, coin_error *err);

/* ---- Generation parameters ---- */

typedef struct infotext_ti {
    char *name;         /* the embedding's name as used in the prompt */
    char *hash;         /* its 12-hex-digit short hash */
} infotext_ti;

typedef struct infotext_kv {
    char *key;
    char *value;        /* unquoted */
} infotext_kv;

/* Which numbers of an infotext are set (infotext.have). */
enum {
    INFOTEXT_STEPS = 1,
    INFOTEXT_CFG = 2,
    INFOTEXT_SEED = 4,
    INFOTEXT_SIZE = 8,
};

/*
 * The parameters.  A NULL or empty string and a number whose INFOTEXT_* bit
 * is clear are absent: not written, and not found when parsing.
 *   sampler        A1111's name: "Euler a", "Euler", "DPM++ 2M", "DDIM",
 *                  "PLMS", ...
 *   schedule_type  "Automatic", "Karras", "Exponential", ... (A1111 1.9+;
 *                  absent in older texts, whose sampler names carried the
 *                  schedule: "DPM++ 2M Karras").
 *   cfg_scale      written as A1111 shows gradio's numbers: "7" when
 *                  integral, else Python's repr ("7.5").
 *   rng            A1111's randn_source: "CPU" or "NV"; "GPU" (its default)
 *                  is never written, as A1111 omits it.  infotext_rng_* map
 *                  coin's generator names.
 *   ti             embeddings used, written as TI hashes: "name: hash, ...".
 *   version        "coin <version>" for coin's own images.
 *   extra          every other key, in order (e.g. "Clip skip", "VAE hash",
 *                  "Lora hashes"); each is written in A1111's slot for it when
 *                  A1111 has one, else with the extra parameters before
 *                  Version, where ti_at places TI hashes among them (before
 *                  extra[ti_at]; 0 = first).
 * Strings are owned by the struct after infotext_parse and are freed by
 * infotext_free; a caller that only formats may point them at its own
 * strings and not call infotext_free.
 */
typedef struct infotext {
    char *prompt;
    char *negative_prompt;
    unsigned have;
    int steps;
    double cfg_scale;
    int64_t seed;
    int width, height;
    char *sampler;
    char *schedule_type;
    char *model_hash;
    char *model_name;
    char *rng;
    infotext_ti *ti;
    size_t n_ti;
    char *version;
    infotext_kv *extra;
    size_t n_extra;
    size_t ti_at;
} infotext;

void infotext_free(infotext *it);

/* Adds an embedding to it->ti (strings copied). */
int infotext_add_ti(infotext *it, const char *name, const char *hash, coin_error *err);
/* Sets extra key to value (copied), replacing an existing key in place. */
int infotext_set_extra(infotext *it, const char *key, const char *value, coin_error *err);
/* The value of an extra key, or NULL. */
const char *infotext_get_extra(const infotext *it, const char *key);

/*
 * The text A1111's create_infotext would produce:
 *   prompt, then "\nNegative prompt: " + negative when the negative is not
 *   empty, then "\n" + the "Key: value" pairs joined by ", " in A1111's key
 *   order (Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash,
 *   Model, ..., RNG, Tiling, the extra parameters with TI hashes among them,
 *   Version, User), the whole stripped of surrounding whitespace.  A value containing ',', ':' or a
 *   newline is JSON-quoted (json.dumps, ensure_ascii=False), as A1111's
 *   quote() does; a value equal to its key is written as the key alone.
 * *out is a new NUL-terminated string.
 */
int infotext_format(const infotext *it, char **out, coin_error *err);

/*
 * Parses text as A1111's parse_generation_parameters does: the last line is
 * the parameter line if its regex finds at least 3 "Key: value" pairs (else
 * it is part of the prompt); lines before are the prompt until one starting
 * with "Negative prompt:", the rest the negative prompt (lines stripped and
 * joined by "\n"); quoted values are JSON-unquoted; a key with an empty value
 * is dropped, and a repeated key keeps its first position and last value.
 * Known keys fill the fields ("Size: WxH" gives width and height); a known
 * key whose value does not parse (e.g. "Steps: many") is kept in extra
 * instead.  When Schedule type is absent and the sampler name ends in a
 * schedule label ("DPM++ 2M Karras"), it is split as A1111 1.9+ does when
 * it applies such a text.  *out is overwritten (not freed first).
 */
int infotext_parse(const char *text, infotext *out, coin_error *err);

/* coin's generator ("cuda": Philox, "cpu": mt19937) as A1111's RNG value:
 * "NV" (A1111's CPU port of the CUDA generator: the same numbers on any
 * machine) and "CPU"; NULL for anything else.  And back: "NV", "GPU" or
 * absent (NULL) -> "cuda" (torch's CUDA generator is what A1111's GPU
 * default means on NVIDIA cards), "CPU" -> "cpu", else NULL. */
const char *infotext_rng_from_coin(const char *coin_rng);
const char *infotext_rng_to_coin(const char *a1111_rng);

#endif
