/* test_folders.c - folders that commit as one unit: temporary siblings, commits by rename,
 * by exchange and by the fallback, restoring after a fallback cut short, carrying other
 * files over, removing trees without following links, listings. Also built under
 * AddressSanitizer. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "lt_io.h"

static char root[256];

static const char *at(const char *name) {
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", root, name);
    return p[k];
}

static void put(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        return;
    }
    fputs(text, f);
    fclose(f);
}

/* The file's text, or "" when it cannot be read. */
static const char *get(const char *path) {
    static char buf[256];
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int kind(const char *path) {
    int32_t k = -1;
    if (lt_path_kind(path, &k) != LT_OK) return -1;
    return k;
}

/* Entries of `dir` joined by spaces, in listing order. */
static const char *listing(const char *dir) {
    static char buf[1024];
    buf[0] = '\0';
    lt_dir_list *l;
    if (lt_dir_list_open(&l, dir) != LT_OK) return "(error)";
    for (int64_t i = 0; i < lt_dir_list_count(l); i++) {
        if (i) strcat(buf, " ");
        strncat(buf, lt_dir_list_name(l, i), sizeof buf - strlen(buf) - 2);
    }
    lt_dir_list_close(l);
    return buf;
}

/* "<dir>/<name>" in a static buffer. */
static const char *inside(const char *dir, const char *name) {
    static char p[2048];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

/* A finished temporary folder for `path` holding one file `name` with `text`. */
static void build(const char *path, char *tmp, size_t cap, const char *name, const char *text) {
    CHECK_OK(lt_dir_make_temp(path, tmp, (int64_t)cap));
    put(inside(tmp, name), text);
}

static void test_make_temp_and_list(void) {
    char tmp[1024];
    CHECK_OK(lt_dir_make_temp(at("ckpt"), tmp, sizeof tmp));
    char want[512];
    snprintf(want, sizeof want, "%s/.ckpt.tmp-%ld-", root, (long)getpid());
    CHECK(strncmp(tmp, want, strlen(want)) == 0);
    CHECK(kind(tmp) == LT_PATH_DIR);
    CHECK(strcmp(listing(tmp), "") == 0);
    char tmp2[1024];
    CHECK_OK(lt_dir_make_temp(at("ckpt/"), tmp2, sizeof tmp2)); /* trailing slash: same parent */
    CHECK(strcmp(tmp, tmp2) != 0 && strncmp(tmp2, want, strlen(want)) == 0);
    char small[8];
    CHECK_FAILS(lt_dir_make_temp(at("ckpt"), small, sizeof small), LT_ERR_ARG, "longer than the buffer");
    char bad[1024];
    CHECK_FAILS(lt_dir_make_temp(at("no/such/parent"), bad, sizeof bad), LT_ERR_IO, "no/such");
    CHECK(bad[0] == '\0');
    CHECK_FAILS(lt_dir_make_temp("", bad, sizeof bad), LT_ERR_ARG, "empty");
    CHECK_FAILS(lt_dir_make_temp(at(".."), bad, sizeof bad), LT_ERR_ARG, "does not name a folder");
    CHECK_OK(lt_remove_tree(tmp));
    CHECK_OK(lt_remove_tree(tmp2));

    CHECK_OK(lt_make_dirs(at("ls/sub")));
    put(at("ls/b.txt"), "b");
    put(at("ls/a.txt"), "a");
    CHECK(symlink("a.txt", at("ls/link")) == 0);
    CHECK(mkfifo(at("ls/pipe"), 0600) == 0);
    lt_dir_list *l;
    CHECK_OK(lt_dir_list_open(&l, at("ls")));
    CHECK(lt_dir_list_count(l) == 5);
    const char *names[] = { "a.txt", "b.txt", "link", "pipe", "sub" };
    int kinds[] = { LT_PATH_FILE, LT_PATH_FILE, LT_PATH_LINK, LT_PATH_OTHER, LT_PATH_DIR };
    for (int i = 0; i < 5; i++) {
        CHECK(strcmp(lt_dir_list_name(l, i), names[i]) == 0);
        CHECK(lt_dir_list_kind(l, i) == kinds[i]);
    }
    CHECK(lt_dir_list_name(l, 5) == NULL && lt_dir_list_kind(l, -1) == LT_PATH_MISSING);
    lt_dir_list_close(l);
    CHECK_FAILS(lt_dir_list_open(&l, at("missing")), LT_ERR_IO, "missing: cannot list folder");
    CHECK(kind(at("ls/link")) == LT_PATH_FILE); /* followed */
    CHECK(kind(at("ls/sub")) == LT_PATH_DIR);
    CHECK(kind(at("ls/missing")) == LT_PATH_MISSING);
    CHECK(kind(at("ls/a.txt/below")) == LT_PATH_MISSING);
    CHECK_OK(lt_dir_sync(at("ls")));
    CHECK_OK(lt_fsync_dir(at("ls")));
    CHECK_FAILS(lt_dir_sync(at("missing")), LT_ERR_IO, "missing");
    CHECK_FAILS(lt_fsync_dir(at("missing")), LT_ERR_IO, "missing: cannot open folder");
    CHECK_OK(lt_remove_tree(at("ls")));
    CHECK(kind(at("ls")) == LT_PATH_MISSING);
}

/* Commit a new folder, then replace it, with and without the exchange; the parent holds
   nothing else afterwards. */
static void test_commit(int flags) {
    char tmp[1024];
    CHECK_OK(lt_make_dirs(at("run")));
    build(at("run/a"), tmp, sizeof tmp, "w", "one");
    CHECK_OK(lt_dir_commit(tmp, at("run/a"), flags));
    CHECK(strcmp(get(at("run/a/w")), "one") == 0);
    CHECK(strcmp(listing(at("run")), "a") == 0);

    build(at("run/a"), tmp, sizeof tmp, "w", "two");
    put(inside(tmp, "config"), "cfg two");
    CHECK_OK(lt_dir_commit(tmp, at("run/a"), flags));
    CHECK(strcmp(get(at("run/a/w")), "two") == 0);
    CHECK(strcmp(get(at("run/a/config")), "cfg two") == 0);
    CHECK(strcmp(listing(at("run/a")), "config w") == 0);
    CHECK(strcmp(listing(at("run")), "a") == 0); /* the previous folder is gone, no leftovers */

    /* errors leave the folder as it was */
    build(at("run/b"), tmp, sizeof tmp, "w", "x");
    CHECK_FAILS(lt_dir_commit(tmp, at("other/b"), flags), LT_ERR_ARG, "not beside it");
    put(at("run/file"), "keep");
    char tmp_file[1024];
    build(at("run/file"), tmp_file, sizeof tmp_file, "w", "x");
    CHECK_FAILS(lt_dir_commit(tmp_file, at("run/file"), flags), LT_ERR_IO, "exists and is not a folder");
    CHECK(strcmp(get(at("run/file")), "keep") == 0);
    CHECK(symlink("a", at("run/alias")) == 0);
    char tmp_link[1024];
    build(at("run/alias"), tmp_link, sizeof tmp_link, "w", "x");
    CHECK_FAILS(lt_dir_commit(tmp_link, at("run/alias"), flags), LT_ERR_ARG, "symbolic link");
    CHECK(strcmp(get(at("run/a/w")), "two") == 0);
    CHECK_FAILS(lt_dir_commit(at("run/.nothing"), at("run/nothing"), flags), LT_ERR_ARG, "is missing");
    CHECK_FAILS(lt_dir_commit(tmp, at("run/b"), 4), LT_ERR_ARG, "unknown flags");
    CHECK_OK(lt_remove_tree(at("run")));
}

/* The fallback cut short between its two renames: the folder is missing, the previous one
   waits under its old- name, and restore puts it back. */
static void test_restore(void) {
    CHECK_OK(lt_make_dirs(at("r/.adapter.old-1-2-3")));
    put(at("r/.adapter.old-1-2-3/w"), "previous");
    CHECK_OK(lt_make_dirs(at("r/.adapter.tmp-1-2-4")));
    CHECK_OK(lt_make_dirs(at("r/.adapterx.old-1-2-5"))); /* another folder's: not ours */
    int32_t restored = -1;
    CHECK_OK(lt_dir_restore(at("r/adapter"), &restored));
    CHECK(restored == 1);
    CHECK(strcmp(get(at("r/adapter/w")), "previous") == 0);
    CHECK(strcmp(listing(at("r")), ".adapter.tmp-1-2-4 .adapterx.old-1-2-5 adapter") == 0);
    /* present: nothing to do, whatever lies beside it */
    CHECK_OK(lt_make_dirs(at("r/.adapter.old-9-9-9")));
    CHECK_OK(lt_dir_restore(at("r/adapter"), &restored));
    CHECK(restored == 0);
    CHECK(strcmp(get(at("r/adapter/w")), "previous") == 0);
    /* nothing saved here yet, not even the parent */
    CHECK_OK(lt_dir_restore(at("none/adapter"), &restored));
    CHECK(restored == 0);
    CHECK_OK(lt_dir_restore(at("r/never"), &restored));
    CHECK(restored == 0);
    CHECK_OK(lt_remove_tree(at("r")));
}

static void test_carry_over(void) {
    CHECK_OK(lt_make_dirs(at("old/sub/deeper")));
    put(at("old/log.jsonl"), "log");
    put(at("old/adapter_model.safetensors"), "old weights");
    put(at("old/sub/deeper/f"), "deep");
    CHECK(symlink("../elsewhere", at("old/link")) == 0);
    char tmp[1024];
    build(at("old"), tmp, sizeof tmp, "adapter_model.safetensors", "new weights");
    CHECK_OK(lt_dir_carry_over(at("old"), tmp));
    /* the new folder's own file wins */
    CHECK(strcmp(get(inside(tmp, "adapter_model.safetensors")), "new weights") == 0);
    CHECK(strcmp(get(inside(tmp, "log.jsonl")), "log") == 0);
    struct stat a, b;
    CHECK(stat(inside(tmp, "log.jsonl"), &a) == 0 && stat(at("old/log.jsonl"), &b) == 0 &&
          a.st_ino == b.st_ino); /* a link, not a copy */
    CHECK(strcmp(get(inside(tmp, "sub/deeper/f")), "deep") == 0);
    char target[64] = { 0 };
    CHECK(readlink(inside(tmp, "link"), target, sizeof target - 1) > 0 && strcmp(target, "../elsewhere") == 0);
    CHECK_OK(lt_dir_commit(tmp, at("old"), 0));
    CHECK(strcmp(get(at("old/log.jsonl")), "log") == 0);
    CHECK(strcmp(get(at("old/adapter_model.safetensors")), "new weights") == 0);
    CHECK(strcmp(get(at("old/sub/deeper/f")), "deep") == 0);

    CHECK_OK(lt_dir_carry_over(at("never"), at("old"))); /* nothing to carry */
    CHECK(mkfifo(at("old/pipe"), 0600) == 0);
    build(at("old"), tmp, sizeof tmp, "w", "x");
    CHECK_FAILS(lt_dir_carry_over(at("old"), tmp), LT_ERR_UNSUPPORTED, "old/pipe");
    CHECK_OK(lt_remove_tree(tmp));
    CHECK_OK(lt_remove_tree(at("old")));
    CHECK(strcmp(listing(root), "") == 0);
}

static void test_remove_tree(void) {
    put(at("outside"), "survives");
    CHECK_OK(lt_make_dirs(at("t/a/b/c")));
    put(at("t/a/b/c/f"), "x");
    put(at("t/a/g"), "y");
    CHECK(symlink("../../outside", at("t/a/link")) == 0);
    CHECK(symlink(root, at("t/a/dirlink")) == 0); /* a link to a folder: not entered */
    CHECK_OK(lt_remove_tree(at("t")));
    CHECK(kind(at("t")) == LT_PATH_MISSING);
    CHECK(strcmp(get(at("outside")), "survives") == 0);
    CHECK(strcmp(listing(root), "outside") == 0); /* no ".t.del-" left behind */
    CHECK_OK(lt_remove_tree(at("t")));           /* already gone */
    CHECK_OK(lt_remove_tree(at("outside")));     /* a file */
    CHECK_OK(lt_make_dirs(at(".hidden/x")));
    CHECK_OK(lt_remove_tree(at(".hidden")));
    CHECK(strcmp(listing(root), "") == 0);
    CHECK_FAILS(lt_remove_tree(""), LT_ERR_ARG, "empty path");
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/lt_folders_%ld", (long)getpid());
    lt_remove_tree(root);
    if (lt_make_dirs(root) != LT_OK) {
        fprintf(stderr, "cannot create %s: %s\n", root, lt_last_error());
        return 1;
    }
    test_make_temp_and_list();
    test_commit(0);
    test_commit(LT_DIR_COMMIT_NO_EXCHANGE);
    test_restore();
    test_carry_over();
    test_remove_tree();
    CHECK_OK(lt_remove_tree(root));
    return check_summary();
}
