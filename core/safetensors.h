/*
 * safetensors.h - reading and writing the safetensors format.
 *
 * Every model file coin reads goes through here, and model files come from
 * strangers, so the reader is strict: it enforces each rule of the reference
 * reader (huggingface/safetensors, see REFERENCE.md section 5) and answers a
 * bad file with an error that names the file, the tensor and the problem.  The
 * data is memory-mapped; nothing is copied until a caller converts a tensor.
 * The writer lays files out as the reference writer does (dtype-descending then
 * name order, header padded to 8 bytes) and writes atomically: a temporary
 * name, fsync, rename, so a killed process never leaves a half file behind.
 */
#ifndef COIN_SAFETENSORS_H
#define COIN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* In the reference's enum order, which is also its alignment order. */
typedef enum st_dtype {
    ST_BOOL, ST_F4, ST_F6_E2M3, ST_F6_E3M2, ST_U8, ST_I8, ST_F8_E5M2,
    ST_F8_E4M3, ST_F8_E8M0, ST_F8_E4M3FNUZ, ST_F8_E5M2FNUZ, ST_I16, ST_U16,
    ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_C64, ST_F64, ST_I64, ST_U64,
    ST_DTYPE_COUNT
} st_dtype;

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER_SIZE 100000000ULL

typedef struct st_tensor {
    char *name;                 /* UTF-8, NUL-terminated */
    st_dtype dtype;
    int ndim;                   /* 0 for a scalar */
    int64_t shape[ST_MAX_DIMS];
    uint64_t nelem;             /* product of shape (1 for a scalar) */
    uint64_t begin, end;        /* byte offsets into the data buffer */
    const void *data;           /* begin of this tensor's bytes */
} st_tensor;

typedef struct st_file {
    char *path;                 /* as given to st_open, or the name given to st_parse */
    size_t n_tensors;
    st_tensor *tensors;         /* sorted by data offset */
    size_t n_meta;
    char **meta_keys, **meta_values;   /* __metadata__, string to string */
    /* private */
    void *map;
    size_t map_len;
    void *owned;                /* a copy st_parse made, freed by st_close */
} st_file;

/* Maps and validates the file at path.  On success *out owns the mapping.
 * Errors name the file, and the tensor where one is at fault. */
int st_open(st_file **out, const char *path, coin_error *err);

/* Validates a file image held in memory (copied, so buf may be freed after).
 * name is used in error messages.  The fuzz target drives this. */
int st_parse(st_file **out, const void *buf, size_t len, const char *name,
             coin_error *err);

/* Releases everything st_open/st_parse made; NULL is fine. */
void st_close(st_file *f);

/* Tells the kernel that the mapped pages of tensor t are not needed now, so they stop counting in this
 * process's memory once converted into backend tensors; reading the tensor
 * again still works. */
void st_release_pages(const st_file *f, const st_tensor *t);

/* The tensor called name, or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);

/* The value of a __metadata__ key, or NULL. */
const char *st_meta(const st_file *f, const char *key);

/* "F16" etc., and back; st_dtype_parse returns -1 for an unknown name. */
const char *st_dtype_name(st_dtype d);
int st_dtype_parse(const char *s);
/* Bits per element. */
int st_dtype_bits(st_dtype d);

/* Converts t's elements (F32, F16, BF16 or F64) into n floats at dst;
 * n must equal t->nelem.  Any other dtype is a COIN_EUNSUPPORTED error that
 * names the tensor. */
int st_tensor_to_f32(const st_file *f, const st_tensor *t, float *dst,
                     uint64_t n, coin_error *err);

/* Half-precision helpers, exposed for the writer's users and the tests. */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);   /* round to nearest even */
uint16_t st_f32_to_bf16(float f);  /* round to nearest even */

/* ---- writer ---- */

typedef struct st_writer st_writer;

st_writer *st_writer_new(void);
/* Adds a tensor; data (nelem * bits/8 bytes) is copied.  Names must be
 * unique.  ndim may be 0 for a scalar. */
int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim,
                  const int64_t *shape, const void *data, coin_error *err);
/* Adds a __metadata__ entry. */
int st_writer_meta(st_writer *w, const char *key, const char *value,
                   coin_error *err);
/* Writes path atomically (path.tmp, fsync, rename).  A full disk or any
 * other failure leaves no file at path and says so. */
int st_writer_save(st_writer *w, const char *path, coin_error *err);
void st_writer_free(st_writer *w);

#endif
