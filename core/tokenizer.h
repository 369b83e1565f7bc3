/*
 * tokenizer.h - the CLIP byte-level BPE tokenizer, as Stable Diffusion uses it.
 *
 * Turns a prompt into the 77 token ids the text encoder reads, equal to
 * transformers' CLIPTokenizer (without ftfy) for SD1 and SD2 (REFERENCE.md
 * section 2): added tokens (textual-inversion trigger words such as
 * "<thumbs-up>") are matched on the raw text before anything else; the rest is
 * cleaned of control characters, CJK-spaced, NFC-normalised,
 * whitespace-collapsed and lower-cased, split by the CLIP pattern (letters,
 * single digits, punctuation runs, 's 't 're 've 'm 'll 'd), mapped
 * byte-to-unicode and merged by BPE rank.  The ids are framed by
 * 49406 ... 49407, truncated to 77 (the last id stays 49407) and padded with
 * the pad id (49407 for SD1, 0 for SD2).  Unicode properties are those of
 * the reference's Python 3.11 (Unicode 14.0).
 *
 * Loaded tokenizers are read-only while encoding: several threads may
 * encode with one tokenizer at once (not while a token is being added).
 *
 * The vocabulary comes from a model's tokenizer/ folder (vocab.json and
 * merges.txt) or from the CLIP merges file that the build embeds in coin
 * (bpe_simple_vocab_16e6.txt.gz, taken from a pinned PyPI package).
 */
#ifndef COIN_TOKENIZER_H
#define COIN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define CLIP_CONTEXT 77
#define CLIP_BOS 49406
#define CLIP_EOS 49407
#define CLIP_VOCAB 49408
#define CLIP_PAD_SD1 49407
#define CLIP_PAD_SD2 0

typedef struct clip_tokenizer clip_tokenizer;

/* The vocabulary embedded in coin at build time. */
int tokenizer_load_builtin(clip_tokenizer **out, coin_error *err);
/* A bpe_simple_vocab_16e6.txt.gz-style merges file (gzip or plain text). */
int tokenizer_load_bpe(clip_tokenizer **out, const char *path, coin_error *err);
/* A Hugging Face tokenizer folder: dir/vocab.json and dir/merges.txt
 * (added_tokens.json, when present, adds its tokens too). */
int tokenizer_load_hf(clip_tokenizer **out, const char *dir, coin_error *err);
void tokenizer_free(clip_tokenizer *tok);

/* Number of ids, added tokens included. */
int tokenizer_vocab_size(const clip_tokenizer *tok);

/* Adds a trigger word that is matched verbatim (case-sensitive, as
 * transformers does) before BPE.  Returns its id in *id (the next free id,
 * 49408 upwards).  Adding a word already in the vocabulary (e.g. "cat", which
 * is an entry although only "cat</w>" ends words) is COIN_EINVAL, as in
 * diffusers; adding the same added token twice returns its existing id. */
int tokenizer_add_token(clip_tokenizer *tok, const char *word, int *id,
                        coin_error *err);

typedef struct tokenizer_result {
    int32_t ids[CLIP_CONTEXT];  /* framed, truncated and padded */
    int n_tokens;               /* ids before padding, BOS and EOS included */
    int n_dropped;              /* BPE tokens lost to truncation */
    int dropped_at;             /* byte offset in text where dropped text starts, or -1 */
} tokenizer_result;

/* Tokenizes UTF-8 text (invalid UTF-8 is a COIN_EINVAL error, never a crash)
 * and frames it to CLIP_CONTEXT ids padded with pad_id. */
int tokenizer_encode(const clip_tokenizer *tok, const char *text, int pad_id,
                     tokenizer_result *out, coin_error *err);
/* The same for text of len bytes, which may hold NUL bytes (U+0000, which
 * the clean-up drops, as transformers does), e.g. a prompt read from a file. */
int tokenizer_encode_len(const clip_tokenizer *tok, const char *text,
                         size_t len, int pad_id, tokenizer_result *out,
                         coin_error *err);

/* Tokenizes without framing: up to max ids into ids, the count in *n (which
 * may exceed max; the surplus is not stored). */
int tokenizer_tokenize(const clip_tokenizer *tok, const char *text,
                       int32_t *ids, int max, int *n, coin_error *err);

/* The token string of an id ("cat</w>", "<thumbs-up>"), or NULL.  It lives
 * as long as the tokenizer. */
const char *tokenizer_id_to_token(const clip_tokenizer *tok, int id);
/* The id of a token string, or -1. */
int tokenizer_token_to_id(const clip_tokenizer *tok, const char *token);

/* Writes dir/vocab.json and dir/merges.txt as a Hugging Face tokenizer
 * folder holds them (dir must exist), and dir/added_tokens.json with the added
 * tokens when there are any (removing a stale one when there are none), so
 * that tokenizer_load_hf(dir) gives back the same ids. */
int tokenizer_export_hf(const clip_tokenizer *tok, const char *dir,
                        coin_error *err);

#endif
