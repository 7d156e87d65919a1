/*
 * lt_io.h - files: safetensors reading (mmap, validated) and writing (atomic), the
 * atomic-write primitives every saved file goes through, dataset lines, and the JSON parser
 * behind lua/luatrain/json.lua.
 *
 * A safetensors file is: an 8-byte little-endian header length n, n bytes of JSON
 * ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 * "__metadata__": {"k": "v"}}), then the data buffer the offsets index into.
 * lt_safetensors_open checks all of it before any tensor is handed out: the header length
 * against the file size and a 100 MB cap, that the header is UTF-8 JSON holding one
 * object, each entry's fields (exactly dtype, shape and data_offsets, each of its type;
 * shape and offsets plain non-negative integers that fit int64), that numel * element size
 * equals end - begin, that the tensors tile the data buffer exactly (no overlaps, no gaps,
 * nothing past the end), unique names, and that __metadata__ is an object of strings.
 * Each failure is an LT_ERR_FORMAT whose message names the file and, where there is one,
 * the entry and field ("m.safetensors: tensor 'x': data_offsets [0, 12] hold 12 bytes but
 * F32 (2, 3) needs 24"). A well-formed file luatrain cannot represent (a dtype such as F64
 * or BOOL, more than LT_MAX_DIMS dims) is LT_ERR_UNSUPPORTED; a file that cannot be opened
 * or mapped is LT_ERR_IO.
 */
#ifndef LT_IO_H
#define LT_IO_H

#include "lt.h"

typedef struct lt_safetensors lt_safetensors;

int lt_safetensors_open(lt_safetensors **out, const char *path);
void lt_safetensors_close(lt_safetensors *f);

/* Tensors in the order of their data offsets; name is NULL when index is out of range. */
int64_t lt_safetensors_count(const lt_safetensors *f);
const char *lt_safetensors_name(const lt_safetensors *f, int64_t index);
/* Index of `name`, or LT_ERR_RANGE "no tensor named ..." (binary search). */
int lt_safetensors_find(const lt_safetensors *f, const char *name, int64_t *index);
/* A zero-copy, contiguous view of tensor `index` on the file mapping; `out` is refilled (see
   lt.h) and keeps the mapping alive after the file is closed. The mapping is private: writes
   through the view never reach the file. A tensor whose bytes are not aligned to its
   element size in the file (a header length that is not a multiple of 8, which other
   writers may produce) is copied into aligned memory instead. */
int lt_safetensors_tensor(const lt_safetensors *f, int64_t index, lt_tensor *out);

/* Give back the resident pages of tensor `index`'s bytes (the whole pages inside them) to
   the file, once the caller has read what it needs: a loader that quantizes or converts
   each tensor as it goes keeps the process's resident memory at what it built, instead of
   that plus every page of the file it read. Reading the tensor again later maps the pages
   back in from the file, so any changes written through a view of them are lost: call this
   only when no view of the tensor is still in use. */
int lt_safetensors_drop_pages(const lt_safetensors *f, int64_t index);

/* __metadata__ entries (string to string), in file order. */
int64_t lt_safetensors_metadata_count(const lt_safetensors *f);
const char *lt_safetensors_metadata_key(const lt_safetensors *f, int64_t index);
const char *lt_safetensors_metadata_value(const lt_safetensors *f, int64_t index);

typedef struct lt_safetensors_entry {
    const char *name;
    const lt_tensor *tensor;
} lt_safetensors_entry;

/* Write `n` tensors (any strides; CPU; non-packed dtypes with a safetensors name) and `m`
   metadata pairs (kv[2i] = key, kv[2i+1] = value; "format": "pt" is added unless given).
   Names must be unique, valid UTF-8 and not "__metadata__". As the reference writer does,
   entries are ordered by dtype (widest first: I64, F32, I32, BF16, F16, I8, U8) then by
   name, the data follows in that order, and the header is padded with spaces to a multiple
   of 8 bytes. Every argument is checked before anything is written. The file appears
   atomically (lt_atomic_file_*): on failure an existing file at `path` is untouched. */
int lt_safetensors_save(const char *path, const lt_safetensors_entry *entries, int64_t n,
                        const char *const *kv, int64_t m);

/* Write `nbytes` at `data` to `path` atomically (temporary file, fsync, rename, fsync of
   the directory). On failure the previous file, if any, is untouched. */
int lt_write_file_atomic(const char *path, const void *data, int64_t nbytes);

/* The same, streamed, for files too large to build in memory:
       lt_atomic_file *f;
       LT_TRY(lt_atomic_file_open(&f, path));      creates a unique temporary file
       if (lt_atomic_file_write(f, buf, n) != LT_OK) { lt_atomic_file_abort(f); ... }
       return lt_atomic_file_commit(f);            fsync, rename over path, fsync the dir
   The temporary file sits in path's directory (so the rename cannot cross file systems) and
   takes the mode of an existing target. commit and abort free `f` whatever they return;
   a failed commit, like abort, removes the temporary file and leaves `path` as it was. (The
   one exception is a failing fsync of the directory after the rename: it is reported, and
   the new file is then in place but may not survive a power loss.) */
typedef struct lt_atomic_file lt_atomic_file;

int lt_atomic_file_open(lt_atomic_file **out, const char *path);
int lt_atomic_file_write(lt_atomic_file *f, const void *data, int64_t nbytes);
int lt_atomic_file_commit(lt_atomic_file *f);
void lt_atomic_file_abort(lt_atomic_file *f);

/* ---- folders that commit as one unit ------------------------------------------------ */

/* A checkpoint or an adapter is a folder of several files that must change together. It is
   built in a temporary sibling and put in place with one rename, so whatever moment a
   crash comes, `path` holds the previous complete folder or the new complete one:

       char tmp[4096];
       LT_TRY(lt_dir_make_temp(path, tmp, sizeof tmp));   a new empty ".<name>.tmp-..."
       ... write the files into tmp (lt_atomic_file_*, lt_safetensors_save) ...
       LT_TRY(lt_dir_commit(tmp, path, 0));

   Work in progress and folders on their way out have hidden sibling names: ".<name>.tmp-"
   (being written, or the previous folder after an exchange), ".<name>.old-" (the previous
   folder, moved aside by the fallback) and ".<name>.del-" (being removed), each followed
   by "<pid>-<n>-<salt>". No reader takes them for the folder. A crash leaves at most such
   leftovers: the next save calls lt_dir_restore, then removes the rest. One process writes
   a given folder at a time. */

/* What a path names. lt_path_kind follows symbolic links (LT_PATH_LINK only in listings). */
enum lt_path {
    LT_PATH_MISSING = 0,
    LT_PATH_FILE = 1,
    LT_PATH_DIR = 2,
    LT_PATH_LINK = 3,
    LT_PATH_OTHER = 4
};

/* LT_DIR_COMMIT_NO_EXCHANGE: take the fallback even where the exchange works (tests). */
enum lt_dir_commit_flag { LT_DIR_COMMIT_NO_EXCHANGE = 1 };

/* *kind = LT_PATH_*; a missing path (or a missing folder on the way) is LT_PATH_MISSING. */
int lt_path_kind(const char *path, int32_t *kind);

/* Create a new empty folder beside `path` (".<name>.tmp-<pid>-<n>-<salt>", mode 0755) and
   write its path, NUL-terminated, into out[cap]. The parent folder must exist. */
int lt_dir_make_temp(const char *path, char *out, int64_t cap);

/* fsync a folder: the names in it (files created, renamed, removed) survive a power loss. */
int lt_fsync_dir(const char *path);

/* fsync every regular file in the tree under `path`, then each folder after its contents
   (symbolic links are not followed). */
int lt_dir_sync(const char *path);

/* Put the finished folder `tmp` (made by lt_dir_make_temp for this `path`) at `path`:
     1. fsync every file in tmp and tmp itself (lt_dir_sync);
     2. no `path` yet: rename tmp to path;
        `path` a folder: exchange the two names in one step (renameat2 RENAME_EXCHANGE),
        so the previous folder is now at tmp's name; where the file system cannot
        exchange (or with LT_DIR_COMMIT_NO_EXCHANGE), rename path to ".<name>.old-...",
        then tmp to path: a crash between those two renames leaves `path` missing and the
        previous folder complete under the old- name, which lt_dir_restore puts back;
     3. fsync the parent folder: the new name is durable;
     4. remove the previous folder.
   A failure before the new folder is in place leaves `path` as it was (tmp is the caller's
   to remove). A failure in 3 or 4 says "committed, but finishing up failed": the new
   folder is then in place. `path` must not be a symbolic link, and a file there is an
   error, never replaced. */
int lt_dir_commit(const char *tmp, const char *path, int32_t flags);

/* Undo a commit's fallback cut short by a crash: when `path` is missing and a previous
   folder waits at ".<name>.old-..." (the latest moved aside, if several), rename it back
   and fsync the parent. *restored is 1 when it did. A missing parent is not an error. */
int lt_dir_restore(const char *path, int32_t *restored);

/* Give the new folder `to` every entry of the folder `from` that `to` lacks (recursively;
   `to`'s own entries win), so a commit keeps the other files a user keeps beside an
   adapter: regular files as hard links (copied where the file system refuses links),
   folders recreated, symbolic links recreated. A missing `from` is nothing to carry; a
   socket, pipe or device file is an error (LT_ERR_UNSUPPORTED). */
int lt_dir_carry_over(const char *from, const char *to);

/* rm -rf without a shell: a missing path is fine; symbolic links are removed, never
   followed. A folder whose name does not start with '.' is first renamed to a hidden
   ".<name>.del-..." sibling, so a crash halfway through leaves no partial folder under a
   name a reader looks at. */
int lt_remove_tree(const char *path);

/* The entries of a folder (not "." and ".."), sorted by name (bytewise), with their kinds
   (LT_PATH_FILE, _DIR, _LINK or _OTHER, links not followed). */
typedef struct lt_dir_list lt_dir_list;
int lt_dir_list_open(lt_dir_list **out, const char *path);
int64_t lt_dir_list_count(const lt_dir_list *l);
/* NULL / LT_PATH_MISSING when index is out of range. */
const char *lt_dir_list_name(const lt_dir_list *l, int64_t index);
int32_t lt_dir_list_kind(const lt_dir_list *l, int64_t index);
void lt_dir_list_close(lt_dir_list *l);

/* ---- datasets -------------------------------------------------------------------- */

/* Lines of a text file, plain or gzip-compressed (told apart by its first bytes), read as
   a stream: memory holds the longest line, not the file. */
typedef struct lt_lines lt_lines;
int lt_lines_open(lt_lines **out, const char *path);
/* The next line without its line ending ("\n" or "\r\n"), NUL-terminated and valid until
   the next call; *lineno is its 1-based number; *has is 0 at the end of the file. A line
   longer than 256 MiB, or a corrupt gzip stream, is an error naming the file and line. */
int lt_lines_next(lt_lines *r, const char **line, int64_t *len, int64_t *lineno, int32_t *has);
/* Bytes of the file consumed so far (compressed bytes for gzip), for progress reports. */
int64_t lt_lines_offset(const lt_lines *r);
int64_t lt_lines_file_size(const lt_lines *r);
void lt_lines_close(lt_lines *r);

/* A whole file as a 1-D tensor of `dtype`, zero-copy through mmap. The size must be a
   multiple of the element size. */
int lt_tensor_map_file(lt_tensor *out, const char *path, int dtype);

/* A spool: a file that is only appended to, then mapped whole as a 1-D tensor. A tokenized
   dataset goes to disk through spools while its records are read, so memory holds the
   caller's write chunk, never the dataset, whatever its size:
       lt_spool *s;
       LT_TRY(lt_spool_open(&s, "cache/tokens.i32", NULL));     a named file, or
       LT_TRY(lt_spool_open(&s, NULL, tmp_dir));                an unnamed one
       if (lt_spool_write(s, ids, n * 4) != LT_OK) { lt_spool_abort(s); ... }
       return lt_spool_finish(s, tensor, LT_DTYPE_I32);         frees s whatever it returns
   Named: the bytes go to a temporary file beside `path` (lt_atomic_file); finish renames
   it over `path` and maps it, and abort or a failed finish leaves `path` as it was.
   Unnamed: the file is created in `tmp_dir` (NULL: $TMPDIR, else /var/tmp, which is on disk
   where /tmp may be memory, else /tmp) and unlinked at once, so it never has a name that
   outlives the process: the system frees its blocks when its last mapping is released or
   the process ends, however it ends. Writes go straight to the file: nothing is buffered
   here, so callers write in chunks. finish checks that the size is a whole number of
   `dtype` elements before committing anything. */
typedef struct lt_spool lt_spool;

int lt_spool_open(lt_spool **out, const char *path, const char *tmp_dir);
int lt_spool_write(lt_spool *s, const void *data, int64_t nbytes);
/* Bytes written so far. */
int64_t lt_spool_size(const lt_spool *s);
int lt_spool_finish(lt_spool *s, lt_tensor *out, int dtype);
void lt_spool_abort(lt_spool *s);

/* Size in bytes and modification time (ns since the epoch) of a file, for cache checks. */
int lt_file_info(const char *path, int64_t *size, int64_t *mtime_ns);

/* mkdir -p: create `path` and any missing parents (mode 0755). An existing directory is
   fine; an existing non-directory is an LT_ERR_IO naming it. */
int lt_make_dirs(const char *path);

/* ---- JSON ------------------------------------------------------------------------- */

/* JSON documents are parsed here for the Lua side (lua/luatrain/json.lua), which turns the
   nodes into Lua values. Only RFC 8259 JSON is accepted: whitespace is space, tab, CR and
   LF; no byte order mark; numbers as the grammar has them ("01", "1.", ".5", "+1" are
   refused) and at most 63 characters long; strings valid UTF-8 with no raw control
   characters, known escapes only, and no lone surrogate in a \u escape; nothing after the
   value; at most LT_JSON_MAX_DEPTH nested arrays and objects. A number beyond the double
   range reads as +-inf (1e400) or 0 (1e-400), as Python's json reads it. Duplicate keys
   are left to the caller (the Lua side refuses them). A malformed document is an
   LT_ERR_FORMAT "NAME:LINE:COL: what was expected" (LINE and COLUMN 1-based, columns
   counting bytes). */
enum { LT_JSON_MAX_DEPTH = 512 };

enum lt_json_type {
    LT_JSON_NULL = 0,
    LT_JSON_FALSE = 1,
    LT_JSON_TRUE = 2,
    LT_JSON_NUMBER = 3,
    LT_JSON_STRING = 4,
    LT_JSON_ARRAY = 5,
    LT_JSON_OBJECT = 6
};

/* One value. A document is its values in document order (pre-order): an array or object
   is followed by its `len` children, each followed by its own. */
typedef struct lt_json_node {
    const char *str;  /* LT_JSON_STRING: the decoded bytes, len of them (NUL may be one) */
    const char *key;  /* a member of an object: its decoded name, key_len bytes; else NULL */
    double number;    /* LT_JSON_NUMBER */
    int64_t len;      /* LT_JSON_STRING: bytes at str; LT_JSON_ARRAY, LT_JSON_OBJECT: children */
    int64_t key_len;
    int64_t key_pos;  /* a member: byte offset of its name's opening quote in the text; else -1 */
    int32_t type;     /* lt_json_type */
    int32_t reserved; /* explicit padding, zero */
} lt_json_node;

/* ---- asynchronous file I/O (io/aio.c): the NVMe-offloaded optimizer state ------------- */

/* One file (created, truncated; removed by lt_aio_close) read and written by `threads`
   workers through 4096-aligned bounce buffers, with O_DIRECT where the file system takes it
   (lt_aio_direct says), so the caller's tensors need no alignment. Offsets must be multiples
   of lt_aio_align(); a request moves the tensor's bytes rounded up to that, so regions must
   be laid out that far apart. Each request returns a ticket (from 1); lt_aio_wait waits for
   one, at most timeout_s seconds ("did not finish within ..."), and reports its error. The
   tensor's storage is held until the request is done. Requests on overlapping ranges are
   the caller's to order. */
typedef struct lt_aio lt_aio;
int lt_aio_open(lt_aio **out, const char *path, int threads);
int lt_aio_read(lt_aio *a, int64_t offset, lt_tensor *dst, int64_t *ticket);
int lt_aio_write(lt_aio *a, int64_t offset, const lt_tensor *src, int64_t *ticket);
int lt_aio_wait(lt_aio *a, int64_t ticket, double timeout_s);
int lt_aio_close(lt_aio *a);
int lt_aio_direct(const lt_aio *a);
int64_t lt_aio_align(void);

/* ---- GGUF tensor encodings (io/gguf_quant.c): llama.cpp's ggml types ------------------- */

/* The ggml type ids GGUF files carry (the tensor infos' type field). */
enum {
    LT_GGUF_F32 = 0,
    LT_GGUF_F16 = 1,
    LT_GGUF_Q4_0 = 2,
    LT_GGUF_Q8_0 = 8,
    LT_GGUF_Q4_K = 12,
    LT_GGUF_Q6_K = 14,
    LT_GGUF_BF16 = 30
};
/* Bytes of one row of `cols` values in `type`, or -1 when the row does not split into the
   type's blocks (32 values for Q8_0 and Q4_0, 256 for Q4_K and Q6_K) or the type is not one
   of the above. */
int64_t lt_gguf_row_bytes(int type, int64_t cols);
/* src[rows][cols] f32 into rows * lt_gguf_row_bytes(type, cols) bytes at dst, and back. */
int lt_gguf_quantize(int type, const float *src, int64_t rows, int64_t cols, void *dst);
int lt_gguf_dequantize(int type, const void *src, int64_t rows, int64_t cols, float *dst);

/* A parsed document and the buffers reused from one parse to the next. */
typedef struct lt_json_doc lt_json_doc;
int lt_json_doc_new(lt_json_doc **out);
void lt_json_doc_free(lt_json_doc *d);
/* Parse text[0..len) into d, dropping what d held. *nodes (*count of them) stay valid until
   the next parse, clear or free of d. `name` (NULL: "JSON") starts error messages. */
int lt_json_parse(lt_json_doc *d, const char *text, int64_t len, const char *name,
                  const lt_json_node **nodes, int64_t *count);
/* Drop the parsed document (the nodes and their strings); d can parse again. */
void lt_json_doc_clear(lt_json_doc *d);

#endif
