/*
 * test_fileio.c - the small file helpers every subsystem leans on.
 */
#include <stdio.h>
#include <sys/stat.h>

#include "core/fileio.h"
#include "test.h"

TEST(path_make_dirs_creates_parents_and_refuses_a_file_in_the_way)
{
    const char *dir = test_tmpdir();
    char path[900], file[900];
    coin_error err = {0};
    snprintf(path, sizeof path, "%s/a/b/c", dir);
    CHECK_EQ_INT(path_make_dirs(path, &err), 0);
    CHECK(path_is_dir(path));
    /* an existing folder is fine, with or without a trailing slash */
    CHECK_EQ_INT(path_make_dirs(path, &err), 0);
    snprintf(path, sizeof path, "%s/a/b/", dir);
    CHECK_EQ_INT(path_make_dirs(path, &err), 0);
    snprintf(file, sizeof file, "%s/a/f", dir);
    FILE *f = fopen(file, "w");
    REQUIRE(f != NULL);
    fclose(f);
    snprintf(path, sizeof path, "%s/a/f/g", dir);
    CHECK(path_make_dirs(path, &err) < 0);
    CHECK_STR_CONTAINS(err.msg, "/a/f");
    CHECK(path_make_dirs(file, &err) < 0);
    CHECK_STR_CONTAINS(err.msg, "is not a folder");
}
