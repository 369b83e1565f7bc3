/*
 * recipe.h - everything needed to make an image again, bit for bit.
 *
 * coin stores a recipe as JSON in each PNG it writes (text chunk "coin"),
 * beside AUTOMATIC1111's "parameters" text that other tools read.  The
 * parameters text is lossy (it names a model by a 10-digit hash and rounds
 * nothing but says nothing of the backend); the recipe names files by full
 * sha256 and records backend, precision, RNG and prediction type.
 */
#ifndef COIN_RECIPE_H
#define COIN_RECIPE_H

#include <stdint.h>

#include "error.h"

#define RECIPE_MAX_EMBEDDINGS 16
#define COIN_VERSION "0.1.0"

typedef struct recipe_file {
    char *path;
    char sha256[65];
    char *token;                /* embeddings: the trigger word */
} recipe_file;

typedef struct recipe {
    recipe_file model;
    int n_embeddings;
    recipe_file embeddings[RECIPE_MAX_EMBEDDINGS];
    char *prompt, *negative;
    uint64_t seed;
    int steps;
    float cfg;
    char sampler[16];           /* sampler_name() */
    int karras;
    int width, height;
    char rng[8];                /* "cuda" or "cpu" */
    char backend[8];            /* "cpu" or "cuda" */
    char precision[8];          /* "fp32" */
    char prediction[16];        /* "epsilon" or "v_prediction" */
    char version[16];           /* coin's version that made it */
} recipe;

/* The recipe as one line of JSON (*out: caller frees). */
int recipe_to_json(const recipe *r, char **out, coin_error *err);
/* Parses what recipe_to_json wrote; unknown keys are ignored, missing
 * required ones are an error that names them.  Free with recipe_free. */
int recipe_from_json(const char *json, recipe *r, coin_error *err);
void recipe_free(recipe *r);

#endif
