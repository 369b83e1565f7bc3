/*
 * pickle_pt.h - reading textual-inversion embeddings saved with torch.save
 * (.pt, .bin) without running any of the file.
 *
 * A torch.save file is a zip archive holding a pickle (data.pkl) and one
 * record per tensor storage (data/<key>).  A pickle is a program for a stack
 * machine that may call any Python function, so Python's own loader executes
 * whatever the file says.  coin never executes anything: it parses the zip
 * container itself and runs the pickle on a small stack machine of its own
 * that knows only the opcodes torch.save emits and a whitelist of the few
 * names that rebuild tensors and dicts.  Every other opcode or name is
 * refused with a message that names the file, the byte, what was found and
 * what was expected.
 *
 * Accepted (zip format, torch >= 1.6, pickle protocols 2 to 5):
 *   AUTOMATIC1111  {'string_to_param': {'*': tensor [N, D]}, 'name': ...,
 *                  'step': ..., ...}; string_to_param may also be the
 *                  nn.ParameterDict of the original textual-inversion code
 *   diffusers      {'<token>': tensor [N, D] or [D]} (learned_embeds.bin)
 *   a bare tensor  [N, D] or [D]
 * Tensors may be float32, float16, bfloat16 or float64, any strides, any
 * storage offset; the vectors come back as float32.  Refused: the legacy
 * (pre-1.6, non-zip) torch.save format, with the command that re-saves it;
 * SDXL embeddings (clip_g/clip_l); encrypted, multi-disk or oddly compressed
 * archives; anything beyond the limits below.
 */
#ifndef COIN_PICKLE_PT_H
#define COIN_PICKLE_PT_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Limits.  An embedding's pickle is under 1 KB and its storage a few
 * hundred KB; these leave room for odd but honest files and bound what a
 * hostile one can make coin allocate or compute. */
#define PT_MAX_PICKLE_BYTES (1u << 20)   /* data.pkl */
#define PT_MAX_INFLATED (16u << 20)      /* one deflated zip entry, unpacked */
#define PT_MAX_ENTRIES 4096              /* zip entries */
#define PT_MAX_VALUES 16384              /* pickle objects made */
#define PT_MAX_STACK 1024                /* pickle stack depth */
#define PT_MAX_MARKS 256                 /* open MARKs */
#define PT_MAX_MEMO 16384                /* memo slots (BINPUT index bound) */
#define PT_MAX_ITEMS 4096                /* items of one tuple, list or set */
#define PT_MAX_DICT 256                  /* entries of one dict */
#define PT_MAX_ALL_ITEMS (1u << 18)      /* items and entries of all containers */
#define PT_MAX_DIMS 8                    /* tensor dimensions */
#define PT_MAX_FLOATS (1u << 26)         /* N * D of the embedding */

/* Reads the embedding in the torch.save file at path.
 * On success: *vectors (caller frees) holds *n rows of *width floats, and
 * *token (caller frees) is the trigger the file itself names, or NULL when
 * it names none and the caller should use the file's stem:
 *   diffusers dict     the dict's key ("emb_params" gives NULL, as kohya's
 *                      safetensors key does)
 *   AUTOMATIC1111      NULL: the webui triggers on the file name, whatever
 *                      the 'name' field says
 *   bare tensor        NULL
 * A token is valid UTF-8 without NULs; whether it is one word is the
 * caller's rule.  n >= 1 and width >= 1; the caller applies its own limit
 * on n.  On failure every output is NULL or 0 and err holds one sentence
 * that begins with path. */
int pt_load_embedding(const char *path, char **token, float **vectors, int *n,
                      int64_t *width, coin_error *err);

/* The same for a file image in memory (not copied, not kept); name stands
 * for the path in messages.  The fuzz target drives this. */
int pt_parse_embedding(const void *buf, size_t len, const char *name, char **token,
                       float **vectors, int *n, int64_t *width, coin_error *err);

#endif
