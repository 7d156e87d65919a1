/* test_lines.c - the JSONL line reader (plain and gzip; CRLF, blank and long lines, NUL
 * bytes, truncated and corrupt gzip, missing files) and whole-file tensor mappings.
 * Built a second time under AddressSanitizer: malformed input must give an error, never a
 * crash or an out-of-bounds read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "lt_io.h"

static char dir[256];

static const char *path_of(const char *name) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *name, const void *data, size_t n) {
    FILE *f = fopen(path_of(name), "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

static void write_gz(const char *name, const void *data, size_t n) {
    gzFile g = gzopen(path_of(name), "wb");
    gzwrite(g, data, (unsigned)n);
    gzclose(g);
}

/* Read every line; returns the count, or -1 on an error (message in lt_last_error). */
static int read_all(const char *name, char lines[][64], int64_t *lens, int max) {
    lt_lines *r;
    if (lt_lines_open(&r, path_of(name)) != LT_OK) return -1;
    int n = 0;
    for (;;) {
        const char *line;
        int64_t len, no;
        int32_t has;
        if (lt_lines_next(r, &line, &len, &no, &has) != LT_OK) {
            lt_lines_close(r);
            return -1;
        }
        if (!has) break;
        if (n < max) {
            memcpy(lines[n], line, (size_t)(len < 63 ? len : 63));
            lines[n][len < 63 ? len : 63] = '\0';
            lens[n] = len;
        }
        CHECK(no == n + 1);
        n++;
    }
    lt_lines_close(r);
    return n;
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/lt_lines_%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    CHECK(system(cmd) == 0);
    char lines[8][64];
    int64_t lens[8];

    const char text[] = "first\r\nsecond\n\nno newline at the end";
    write_file("plain.jsonl", text, sizeof text - 1);
    CHECK(read_all("plain.jsonl", lines, lens, 8) == 4);
    CHECK(strcmp(lines[0], "first") == 0 && strcmp(lines[1], "second") == 0);
    CHECK(lens[2] == 0 && strcmp(lines[3], "no newline at the end") == 0);

    write_gz("data.jsonl.gz", text, sizeof text - 1);
    CHECK(read_all("data.jsonl.gz", lines, lens, 8) == 4);
    CHECK(strcmp(lines[3], "no newline at the end") == 0);

    /* NUL bytes stay inside the line (the JSON parser reports them) */
    const char nul[] = "a\0b\nc\n";
    write_file("nul.jsonl", nul, sizeof nul - 1);
    CHECK(read_all("nul.jsonl", lines, lens, 8) == 2);
    CHECK(lens[0] == 3 && lines[0][1] == '\0' && lines[0][2] == 'b');

    write_file("empty.jsonl", "", 0);
    CHECK(read_all("empty.jsonl", lines, lens, 8) == 0);

    /* a long line grows the buffer; the next line still starts right */
    size_t big = 300000;
    char *long_text = malloc(big + 8);
    memset(long_text, 'x', big);
    memcpy(long_text + big, "\nend\n", 5);
    write_gz("long.jsonl.gz", long_text, big + 5);
    CHECK(read_all("long.jsonl.gz", lines, lens, 8) == 2);
    CHECK(lens[0] == (int64_t)big && strcmp(lines[1], "end") == 0);
    free(long_text);

    /* truncated and corrupt gzip streams: errors naming the file and line */
    FILE *f = fopen(path_of("data.jsonl.gz"), "rb");
    unsigned char gzbuf[256];
    size_t gzn = fread(gzbuf, 1, sizeof gzbuf, f);
    fclose(f);
    write_file("cut.jsonl.gz", gzbuf, gzn - 12);
    CHECK(read_all("cut.jsonl.gz", lines, lens, 8) == -1);
    CHECK(strstr(lt_last_error(), "cut.jsonl.gz:") != NULL);
    gzbuf[gzn / 2] ^= 0x55;
    gzbuf[gzn / 2 + 1] ^= 0xAA;
    write_file("corrupt.jsonl.gz", gzbuf, gzn);
    int got = read_all("corrupt.jsonl.gz", lines, lens, 8);
    CHECK(got == -1 || got >= 0); /* either an error or garbage lines, never a crash */
    CHECK_FAILS(read_all("missing.jsonl", lines, lens, 8) == -1 ? lt_last_status() : LT_OK,
                LT_ERR_IO, "cannot open");
    lt_lines *r;
    CHECK_FAILS(lt_lines_open(&r, dir), LT_ERR_IO, "not a regular file");

    /* whole-file tensors */
    int32_t ids[5] = {3, 1, 4, 1, 5};
    write_file("ids.i32", ids, sizeof ids);
    lt_tensor t = {0};
    CHECK_OK(lt_tensor_map_file(&t, path_of("ids.i32"), LT_DTYPE_I32));
    CHECK(t.ndim == 1 && t.sizes[0] == 5 && ((int32_t *)lt_tensor_data(&t))[4] == 5);
    lt_tensor_release(&t);
    write_file("odd.i32", ids, 7);
    CHECK_FAILS(lt_tensor_map_file(&t, path_of("odd.i32"), LT_DTYPE_I32), LT_ERR_FORMAT,
                "7 bytes is not a whole number of i32 elements");
    CHECK_FAILS(lt_tensor_map_file(&t, path_of("missing.i32"), LT_DTYPE_I32), LT_ERR_IO, "cannot open");
    int64_t size, mtime;
    CHECK_OK(lt_file_info(path_of("ids.i32"), &size, &mtime));
    CHECK(size == 20 && mtime > 0);

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return check_summary();
}
