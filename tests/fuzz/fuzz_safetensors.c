/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors reader.
 *
 * Every input goes through st_parse.  A rejected input must come back with a
 * negative code and a message; an accepted one must hold together: each
 * tensor is found by its name, lies inside the data, and small float tensors
 * convert without touching anything outside it (ASan watches the copy that
 * st_parse makes, which is exactly the input's size).
 * Built by `make bin/fuzz_safetensors`, run by `make fuzz`.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file *f;
    coin_error err = {0};
    int rc = st_parse(&f, data, size, "fuzz.safetensors", &err);
    if (rc != 0) {
        if (rc > 0 || f != NULL || err.code != rc || err.msg[0] == '\0')
            abort();        /* a failure must be reported, and leave nothing */
        return 0;
    }
    uint64_t prev_end = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (st_find(f, t->name) != t || t->begin != prev_end || t->end < t->begin ||
            t->ndim < 0 || t->ndim > ST_MAX_DIMS || st_dtype_parse(st_dtype_name(t->dtype)) != (int)t->dtype)
            abort();
        prev_end = t->end;
        int bits = st_dtype_bits(t->dtype);
        if ((t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 ||
             t->dtype == ST_F64) && t->nelem <= 4096) {
            float *out = malloc((size_t)t->nelem * sizeof *out + 1);
            if (!out || st_tensor_to_f32(f, t, out, t->nelem, &err) != 0)
                abort();
            /* Through the half converters and back: NaN stays NaN, and a
             * value that F16 holds exactly comes back unchanged. */
            for (uint64_t k = 0; k < t->nelem; k++) {
                float h = st_f16_to_f32(st_f32_to_f16(out[k]));
                int nan = !!isnan(out[k]);
                if (nan != !!isnan(h) || nan != !!isnan(st_bf16_to_f32(st_f32_to_bf16(out[k]))))
                    abort();
                if (!isnan(h) && st_f16_to_f32(st_f32_to_f16(h)) != h)
                    abort();
            }
            free(out);
        } else if ((uint64_t)bits * t->nelem / 8 != t->end - t->begin) {
            abort();
        }
    }
    for (size_t i = 0; i < f->n_meta; i++)
        if (st_meta(f, f->meta_keys[i]) != f->meta_values[i])
            abort();
    st_close(f);
    return 0;
}
