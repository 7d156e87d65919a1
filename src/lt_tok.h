/*
 * lt_tok.h - tokenizers: Hugging Face tokenizer.json files, encode and decode.
 *
 *     lt_tokenizer *tok;
 *     if (lt_tokenizer_load(&tok, "model/tokenizer.json", "model/tokenizer_config.json"))
 *         fprintf(stderr, "%s\n", lt_last_error());
 *     lt_ids ids = {0};
 *     lt_tokenizer_encode(tok, "Hello world", 11, LT_TOK_ADD_SPECIAL, &ids);
 *     lt_text text = {0};
 *     lt_tokenizer_decode(tok, ids.data, ids.len, LT_TOK_SKIP_SPECIAL, &text);
 *     lt_ids_free(&ids);
 *     lt_text_free(&text);
 *     lt_tokenizer_free(tok);
 *
 * The two families Llama models use are reproduced id for id: SentencePiece-style BPE with
 * byte fallback (Llama 2, Mistral) and byte-level BPE behind a split regex (Llama 3).
 * Input text is UTF-8; invalid sequences are replaced by U+FFFD the way a UTF-8 decoder
 * does (one per maximal invalid subpart), as a reference tokenizer sees them. A loaded
 * tokenizer is read-only, so one may encode from several threads at once.
 */
#ifndef LT_TOK_H
#define LT_TOK_H

#include "lt.h"

/* Growable outputs the caller owns: start zeroed, functions append, free when done. */
typedef struct lt_ids {
    int32_t *data;
    int64_t len;
    int64_t cap;
} lt_ids;

typedef struct lt_text {
    char *data; /* NUL-terminated after every append; may contain other NULs */
    int64_t len;
    int64_t cap;
} lt_text;

void lt_ids_free(lt_ids *v);
void lt_text_free(lt_text *s);

enum lt_tok_flags {
    LT_TOK_ADD_SPECIAL = 1,    /* encode: add the post-processor's special tokens (BOS...) */
    LT_TOK_SKIP_SPECIAL = 2,   /* decode: leave special tokens out */
    LT_TOK_CLEANUP_SPACES = 4, /* decode: clean_up_tokenization_spaces (" ." -> ".") */
    LT_TOK_NO_SPLIT_SPECIAL = 8 /* encode: treat special-token text as plain text */
};

enum lt_tok_kind { LT_TOK_KIND_BPE_SENTENCEPIECE = 1, LT_TOK_KIND_BPE_BYTELEVEL = 2 };

typedef struct lt_tokenizer_info {
    int32_t vocab_size; /* model vocabulary plus added tokens (largest id + 1) */
    int32_t bos_id;     /* -1 when the tokenizer has none */
    int32_t eos_id;
    int32_t unk_id;
    int32_t pad_id;
    int32_t kind;
    int32_t clean_up_spaces; /* tokenizer_config.json's clean_up_tokenization_spaces */
    int32_t add_bos;         /* what LT_TOK_ADD_SPECIAL adds at the start / end */
    int32_t add_eos;
    int32_t reserved;
} lt_tokenizer_info;

typedef struct lt_tokenizer lt_tokenizer;

/* config may be NULL (then BOS/EOS come from tokenizer.json alone). Errors name the file
   and the field. */
int lt_tokenizer_load(lt_tokenizer **out, const char *tokenizer_json, const char *config_json);
void lt_tokenizer_free(lt_tokenizer *t);
int lt_tokenizer_get_info(const lt_tokenizer *t, lt_tokenizer_info *out);

/* Append the ids of `len` bytes of text. */
int lt_tokenizer_encode(const lt_tokenizer *t, const char *text, int64_t len, int32_t flags,
                        lt_ids *out);
/* n texts on up to `threads` threads (0: all); outs[i] gets the ids of texts[i]. */
int lt_tokenizer_encode_batch(const lt_tokenizer *t, const char *const *texts,
                              const int64_t *lens, int32_t n, int32_t flags, int32_t threads,
                              lt_ids *outs);
/* Append the text of n ids; an id outside the vocabulary is an LT_ERR_RANGE. */
int lt_tokenizer_decode(const lt_tokenizer *t, const int32_t *ids, int64_t n, int32_t flags,
                        lt_text *out);

/* *id = the token's id, or -1 when the vocabulary has no such token. */
int lt_tokenizer_token_to_id(const lt_tokenizer *t, const char *token, int64_t len,
                             int32_t *id);
/* Append the token's string as the vocabulary spells it ("▁the", "Ġthe", "<0x0A>"). */
int lt_tokenizer_id_to_token(const lt_tokenizer *t, int32_t id, lt_text *out);
int lt_tokenizer_is_special(const lt_tokenizer *t, int32_t id, int32_t *out);

/* Streaming decode: push ids one at a time and receive the text each completes, so that
   the concatenation of everything pushed out equals decoding all the ids at once (a
   partial UTF-8 character waits for the id that completes it). */
typedef struct lt_decode_stream lt_decode_stream;
int lt_decode_stream_new(lt_decode_stream **out, const lt_tokenizer *t, int32_t flags);
int lt_decode_stream_push(lt_decode_stream *s, int32_t id, lt_text *out);
int lt_decode_stream_flush(lt_decode_stream *s, lt_text *out);
void lt_decode_stream_free(lt_decode_stream *s);

#endif
