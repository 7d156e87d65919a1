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
