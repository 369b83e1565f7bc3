/*
 * test_plot.c - the braille plots of the workbench (tui/plot.c), checked
 * dot by dot against patterns worked out by hand.
 */
#include <math.h>
#include <string.h>

#include "test.h"
#include "tui/plot.h"

/* The canvas's cells as a string of braille characters, rows joined by '|'. */
static void canvas_text(const plot_canvas *c, char *out)
{
    size_t n = 0;
    for (int r = 0; r < c->rows; r++) {
        if (r)
            out[n++] = '|';
        for (int k = 0; k < c->cols; k++)
            n += plot_cell_utf8(c->dots[r * c->cols + k], out + n);
    }
    out[n] = '\0';
}

TEST(plot_dot_numbering_is_unicode_braille)
{
    /* Unicode: dots 1,2,3 down the left column are bits 0,1,2; 4,5,6 down the
     * right are bits 3,4,5; the bottom row is 7 (left, bit 6) and 8 (right). */
    CHECK_EQ_INT(PLOT_DOT(0, 0), 0x01);
    CHECK_EQ_INT(PLOT_DOT(0, 2), 0x04);
    CHECK_EQ_INT(PLOT_DOT(0, 3), 0x40);
    CHECK_EQ_INT(PLOT_DOT(1, 0), 0x08);
    CHECK_EQ_INT(PLOT_DOT(1, 2), 0x20);
    CHECK_EQ_INT(PLOT_DOT(1, 3), 0x80);
    char s[4];
    plot_cell_utf8(0xFF, s);
    CHECK(!strcmp(s, "\xe2\xa3\xbf"));     /* U+28FF, all eight dots */
    plot_cell_utf8(0, s);
    CHECK(!strcmp(s, "\xe2\xa0\x80"));     /* U+2800, blank */
    CHECK_EQ_INT(plot_cell_ascii(0x01), '\'');
    CHECK_EQ_INT(plot_cell_ascii(0x40), '.');
    CHECK_EQ_INT(plot_cell_ascii(0x41), ':');
    CHECK_EQ_INT(plot_cell_ascii(0), ' ');
}

TEST(plot_rising_line_makes_known_dots)
{
    /* 2 x 1 cells = 4 x 4 dots.  y = x over 0..3 maps to dots (0,3), (1,2),
     * (2,1), (3,0): cell 0 has dots 7 and 6 (0x40 | 0x20 = U+2860), cell 1
     * dots 2 and 4 (0x02 | 0x08 = U+280A). */
    plot_canvas c;
    REQUIRE(plot_canvas_init(&c, 2, 1) == 0);
    float x[] = {0, 1, 2, 3}, y[] = {0, 1, 2, 3};
    plot_series s = {x, y, 4};
    plot_opts o = {0};
    CHECK_EQ_INT(plot_braille(&c, &s, 1, &o), 4);
    CHECK_EQ_INT(c.dots[0], 0x60);
    CHECK_EQ_INT(c.dots[1], 0x0A);
    char text[64];
    canvas_text(&c, text);
    CHECK(!strcmp(text, "\xe2\xa1\xa0\xe2\xa0\x8a"));
    /* On a log axis 1, 10, 100, 1000 are evenly spaced: the same picture. */
    float ylog[] = {1, 10, 100, 1000};
    plot_series sl = {x, ylog, 4};
    o.log_y = 1;
    plot_braille(&c, &sl, 1, &o);
    CHECK_EQ_INT(c.dots[0], 0x60);
    CHECK_EQ_INT(c.dots[1], 0x0A);
    CHECK(fabs(c.y_min - 1) < 1e-9 && fabs(c.y_max - 1000) < 1e-6);
    plot_canvas_free(&c);
}

TEST(plot_joins_points_and_centres_a_flat_line)
{
    /* Two points of the same value: the range becomes [4.5, 5.5], the value
     * maps to row round(0.5 * 3) = 2, and the line between x = 0 and x = 3
     * fills all four columns: dots 3 and 6 in both cells (0x04 | 0x20). */
    plot_canvas c;
    REQUIRE(plot_canvas_init(&c, 2, 1) == 0);
    float x[] = {0, 10}, y[] = {5, 5};
    plot_series s = {x, y, 2};
    plot_braille(&c, &s, 1, NULL);
    CHECK_EQ_INT(c.dots[0], 0x24);
    CHECK_EQ_INT(c.dots[1], 0x24);
    /* A steep rise over two rows of cells (2 x 2 cells = 4 x 8 dots): y from
     * 0 to 1 goes from dot (0,7) to (3,0), and Bresenham visits (0,7) (0,6) (1,5) (1,4) (2,3) (2,2) (3,1)
     * (3,0): top-left cell none, top-right (2,3)->dot7 (2,2)->dot3, (3,1)->dot5,
     * (3,0)->dot4 = 0x40|0x04|0x10|0x08 = 0x5C; bottom-left (0,7)->7 (0,6)->3
     * (1,5)->5 (1,4)->4 = 0x5C; the other two cells blank. */
    plot_canvas c2;
    REQUIRE(plot_canvas_init(&c2, 2, 2) == 0);
    float x2[] = {0, 1}, y2[] = {0, 1};
    plot_series s2 = {x2, y2, 2};
    plot_braille(&c2, &s2, 1, NULL);
    CHECK_EQ_INT(c2.dots[0], 0x00);
    CHECK_EQ_INT(c2.dots[1], 0x5C);
    CHECK_EQ_INT(c2.dots[2], 0x5C);
    CHECK_EQ_INT(c2.dots[3], 0x00);
    plot_canvas_free(&c);
    plot_canvas_free(&c2);
}

TEST(plot_window_nan_and_overlay)
{
    plot_canvas c;
    REQUIRE(plot_canvas_init(&c, 2, 1) == 0);
    /* Last 3 steps of 0..6: x range [3, 6], values 3..6 as before. */
    float x[] = {0, 1, 2, 3, 4, 5, 6}, y[] = {100, -50, 7, 0, 1, 2, 3};
    plot_series s = {x, y, 7};
    plot_opts o = {.x_window = 3};
    CHECK_EQ_INT(plot_braille(&c, &s, 1, &o), 4);
    CHECK_EQ_INT(c.dots[0], 0x60);
    CHECK_EQ_INT(c.dots[1], 0x0A);
    CHECK(c.x_min == 3 && c.x_max == 6);
    /* A NaN breaks the line: (0,3) and (3,0) alone, no dots between. */
    float xn[] = {0, 1, 2}, yn[] = {0, NAN, 1};
    plot_series sn = {xn, yn, 3};
    plot_braille(&c, &sn, 1, NULL);
    CHECK_EQ_INT(c.dots[0], 0x40);
    CHECK_EQ_INT(c.dots[1], 0x08);
    /* Two series share one range; the owner says who drew a cell last. */
    float xa[] = {0, 3}, ya[] = {0, 0}, yb[] = {1, 1};
    plot_series two[2] = {{xa, ya, 2}, {xa, yb, 2}};
    plot_braille(&c, two, 2, NULL);
    CHECK_EQ_INT(c.dots[0], 0x40 | 0x80 | 0x01 | 0x08);   /* bottom row and top row */
    CHECK_EQ_INT(c.owner[0], 2);
    plot_canvas_free(&c);
}

TEST(plot_ema_and_sparkline)
{
    float y[] = {0, 2, NAN, 4}, e[4];
    plot_ema(y, 4, 0.5f, e);
    CHECK(e[0] == 0 && e[1] == 1 && isnan(e[2]) && e[3] == 2.5f);
    /* 8 points in 4 cells: means 0.5, 2.5, 4.5, 6.5 -> levels 0, 2.33->2,
     * 4.67->5, 7. */
    float r[] = {0, 1, 2, 3, 4, 5, 6, 7};
    char out[64];
    CHECK_EQ_INT(plot_sparkline(r, 8, 4, 0, out, sizeof out), 4);
    CHECK(!strcmp(out, " :+#"));
    plot_sparkline(r, 8, 4, 1, out, sizeof out);
    CHECK(!strcmp(out, "\xe2\x96\x81\xe2\x96\x83\xe2\x96\x86\xe2\x96\x88"));
}
