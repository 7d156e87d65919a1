/*
 * lt_io.h - files: safetensors reading (mmap, validated) and writing (atomic), and the
 * atomic-write primitive every saved file goes through.
 *
 * A safetensors file is: an 8-byte little-endian header length n, n bytes of JSON
 * ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 * "__metadata__": {"k": "v"}}), then the data buffer the offsets index into.
 * lt_safetensors_open checks all of it before any tensor is handed out: the header length
 * against the file size and a 100 MB cap, the JSON, each entry's fields and dtype, that
 * numel * element size equals end - begin, that the tensors tile the data buffer exactly
 * (no overlaps, no gaps, nothing past the end), and unique names. Each failure is an
 * LT_ERR_FORMAT whose message names the file and the entry.
 */
#ifndef LT_IO_H
#define LT_IO_H

#include "lt.h"

typedef struct lt_safetensors lt_safetensors;

int lt_safetensors_open(lt_safetensors **out, const char *path);
void lt_safetensors_close(lt_safetensors *f);

/* Tensors in the order of their data offsets. */
int64_t lt_safetensors_count(const lt_safetensors *f);
const char *lt_safetensors_name(const lt_safetensors *f, int64_t index);
/* Index of `name`, or LT_ERR_RANGE "no tensor named ..." */
int lt_safetensors_find(const lt_safetensors *f, const char *name, int64_t *index);
/* A zero-copy view of tensor `index` on the file mapping; it keeps the mapping alive after
   the file is closed. */
int lt_safetensors_tensor(const lt_safetensors *f, int64_t index, lt_tensor *out);

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
   The header is padded with spaces to a multiple of 8 bytes. The file appears atomically:
   written to a temporary name in the same directory, flushed, fsynced and renamed. */
int lt_safetensors_save(const char *path, const lt_safetensors_entry *entries, int64_t n,
                        const char *const *kv, int64_t m);

/* Write `nbytes` at `data` to `path` atomically (temporary file, fsync, rename, fsync of
   the directory). On failure the previous file, if any, is untouched. */
int lt_write_file_atomic(const char *path, const void *data, int64_t nbytes);

#endif
