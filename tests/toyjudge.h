/*
 * toyjudge.h - says what a toy-world image shows: which shape or glyph, in
 * which colour, on which background.
 *
 * It is the measuring instrument of the toy world (toyworld.h): the prompt
 * following of the toy model and the success of textual inversion on it are
 * rates of judge verdicts on sampled images.  It is deterministic and uses
 * no learned weights, so a verdict can be checked by eye: the background is
 * the palette colour most of the border pixels are nearest to; the object
 * is every pixel whose nearest palette colour is another one (specks with
 * fewer than two such neighbours dropped); its colour is the palette colour
 * most of those pixels are nearest to; its class is the one whose exact
 * outline, fitted to the object's bounding box, overlaps the object best
 * (intersection over union).  An image shows nothing when its best overlap
 * is below TOY_JUDGE_MIN_IOU, when it has almost no object pixels, or when
 * the background or the object is not mostly one colour (less than
 * TOY_JUDGE_MIN_PURITY of the border ring, or of the object, nearest to the
 * colour judged): a blotchy sample is not a shape however its outline falls.
 */
#ifndef COIN_TOYJUDGE_H
#define COIN_TOYJUDGE_H

#include <stdint.h>

#define TOY_JUDGE_MIN_IOU 0.5
#define TOY_JUDGE_MIN_PURITY 0.6
#define TOY_JUDGE_NONE (-1)

typedef struct toy_verdict {
    int cls;            /* TOY_CIRCLE ... TOY_GLYPH, or TOY_JUDGE_NONE */
    int fg, bg;         /* palette indices; fg is TOY_JUDGE_NONE when no object */
    double iou;         /* overlap of the best class's outline with the object */
    double iou_class[8];  /* the overlap of every class (TOY_CLASSES of them) */
} toy_verdict;

/* Judges rgb[h * w * 3] (row-major RGB, any size of at least 8x8).  Fills
 * *out; never fails. */
void toy_judge(const uint8_t *rgb, int w, int h, toy_verdict *out);

#endif
