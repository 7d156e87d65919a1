/* tok_internal.h - what the tokenizer's source files share; not part of the FFI-visible API.
 *
 *   tokenizer.c   loading tokenizer.json / tokenizer_config.json, the small public calls
 *   tok_util.c    growable buffers, UTF-8, hash maps, the regex wrapper
 *   tok_encode.c  added tokens, normalizers, pre-tokenizers, BPE, post-processing, batches
 *   tok_decode.c  the decoder chain (streaming by construction), decode, decode streams
 *
 * The pipeline reproduces the Hugging Face tokenizers library (Rust) step for step; each
 * function names the Rust behaviour it mirrors where the behaviour is not obvious. */
#ifndef LT_TOK_INTERNAL_H
#define LT_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdatomic.h>
#include <stdint.h>

#include "core/internal.h"
#include "lt_tok.h"

/* ---- growable outputs (tok_util.c) ------------------------------------------------- */

int tok_text_reserve(lt_text *s, int64_t extra);
int tok_text_put(lt_text *s, const void *p, int64_t n);
static inline int tok_text_putc(lt_text *s, char c) { return tok_text_put(s, &c, 1); }
int tok_ids_reserve(lt_ids *v, int64_t extra);
static inline int tok_ids_push(lt_ids *v, int32_t id) {
    if (LT_UNLIKELY(v->len == v->cap)) LT_TRY(tok_ids_reserve(v, 1));
    v->data[v->len++] = id;
    return LT_OK;
}
int tok_ids_put(lt_ids *v, const int32_t *ids, int64_t n);

/* ---- UTF-8 (tok_util.c) ------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 when it is not one;
   then *bad is the length of its maximal invalid subpart (>= 1), what a WHATWG decoder
   replaces with one U+FFFD. */
int tok_utf8_seq(const unsigned char *s, int64_t n, int64_t i, int *bad);
/* Length of the valid prefix of s (n when all of it is valid). */
int64_t tok_utf8_valid_prefix(const unsigned char *s, int64_t n);
/* Append s with every maximal invalid subpart replaced by U+FFFD. */
int tok_utf8_sanitize(lt_text *out, const unsigned char *s, int64_t n);
/* Append the lossy decoding of s (as Rust's String::from_utf8_lossy). When `final` is 0, a
   trailing incomplete-but-so-far-valid sequence is left unconsumed; returns the number of
   bytes consumed in *used. */
int tok_utf8_lossy(lt_text *out, const unsigned char *s, int64_t n, int final, int64_t *used);
/* Decode one character of valid UTF-8 at s (n > 0 bytes left); returns its length. */
static inline int tok_utf8_decode(const unsigned char *s, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xe0) {
        *cp = (c & 0x1fu) << 6 | (s[1] & 0x3fu);
        return 2;
    }
    if (c < 0xf0) {
        *cp = (c & 0x0fu) << 12 | (s[1] & 0x3fu) << 6 | (s[2] & 0x3fu);
        return 3;
    }
    *cp = (c & 0x07u) << 18 | (s[1] & 0x3fu) << 12 | (s[2] & 0x3fu) << 6 | (s[3] & 0x3fu);
    return 4;
}
static inline int tok_utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}
/* Encode cp into buf (4 bytes); returns the length. */
int tok_utf8_encode(uint32_t cp, char *buf);
/* Unicode White_Space (Rust's char::is_whitespace and regex \s). */
int tok_is_white_space(uint32_t cp);

/* ---- hashing and maps (tok_util.c) ------------------------------------------------- */

uint64_t tok_hash(const void *p, int64_t n);

/* String -> int32, open addressing; keys are copied into `pool`. */
typedef struct tok_strmap_slot {
    uint32_t hash;
    int32_t value; /* -1: empty */
    uint32_t off;  /* key bytes at pool.data + off */
    uint32_t len;
} tok_strmap_slot;

typedef struct tok_strmap {
    tok_strmap_slot *slots; /* (mask + 1) */
    uint64_t mask;
    int64_t count;
    lt_text pool;
} tok_strmap;

int tok_strmap_init(tok_strmap *m, int64_t expected);
void tok_strmap_free(tok_strmap *m);
/* Insert key -> value. When the key is present already nothing changes and *existing gets
   its value (else -1). *off (may be NULL) gets the pool offset of the stored key. */
int tok_strmap_insert(tok_strmap *m, const char *key, int64_t len, int32_t value, int32_t *existing,
                      uint32_t *off);
int32_t tok_strmap_get(const tok_strmap *m, const char *key, int64_t len);

/* (left id, right id) -> (rank, merged id): the BPE merges. */
typedef struct tok_pair_slot {
    uint64_t key; /* left << 32 | right; UINT64_MAX: empty */
    int32_t rank;
    int32_t new_id;
} tok_pair_slot;

typedef struct tok_pairmap {
    tok_pair_slot *slots; /* (mask + 1) */
    uint64_t mask;
    int64_t count;
} tok_pairmap;

int tok_pairmap_init(tok_pairmap *m, int64_t expected);
void tok_pairmap_free(tok_pairmap *m);
/* Insert or overwrite (a later merge of the same pair replaces an earlier one, as the
   reference's hash map does). */
void tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id);
static inline uint64_t tok_pair_mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
}
static inline const tok_pair_slot *tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b) {
    if (!m->slots) return NULL;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t i = tok_pair_mix(key) & m->mask;
    for (;;) {
        const tok_pair_slot *s = &m->slots[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

/* ---- regular expressions (tok_util.c, tok_unicode.c) ------------------------------- */

/* Characters whose general category PCRE2's tables give otherwise than Unicode 16 (the
   reference's Oniguruma): the offset in valid UTF-8 s[0..n) of the first, or -1; and
   replacing each in s[from..n) in place by a stand-in of its Unicode 16 category and the
   same length, so that a pattern matches the copy as the reference matches the original. */
int64_t tok_unicode_find(const char *s, int64_t n);
void tok_unicode_standin(char *s, int64_t n, int64_t from);

/* A pattern as the reference compiles it: Oniguruma syntax (tokenizers' SysRegex) run by
   PCRE2 with UTF and UCP after the few escapes whose meaning differs are rewritten, or a
   literal string (SplitPattern::String / ReplacePattern::String). */
typedef struct tok_regex {
    pcre2_code *code;
    char *literal; /* the literal string when the pattern is one (NUL-terminated) */
    int64_t literal_len;
    int is_literal;
} tok_regex;

/* Per-thread matching state: PCRE2 match data, after a JIT stack overflow a larger JIT
   stack, and room for a subject with stand-ins. Zero-initialise; free with tok_match_free. */
typedef struct tok_match {
    lt_text subject;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *stack;
} tok_match;

void tok_match_free(tok_match *m);

/* `where` names the field for messages ("pre_tokenizer.pretokenizers[0].pattern"). */
int tok_regex_compile(tok_regex *re, const char *pattern, int64_t len, int literal,
                      const char *path, const char *where);
void tok_regex_free(tok_regex *re);

/* The first match of re in s[0..n) starting at or after `from` (a character boundary);
 *found is 0 when there is none. */
int tok_regex_search(const tok_regex *re, tok_match *m, const char *s, int64_t n, int64_t from,
                     int64_t *ms, int64_t *me, int *found);

/* One segment of a subject: a match of the pattern or the text between matches. */
typedef struct tok_seg {
    int64_t start, end;
    int32_t is_match;
} tok_seg;

typedef struct tok_segs {
    tok_seg *data;
    int64_t len, cap;
} tok_segs;

/* Pattern::find_matches: segments covering s[0..n) in order, matches flagged, with the
   iteration rules of the onig crate's find_iter (an empty match right after the previous
   match is skipped). `out` is cleared first. */
int tok_regex_find_matches(const tok_regex *re, tok_match *m, const char *s, int64_t n,
                           tok_segs *out);
int tok_segs_push(tok_segs *v, int64_t start, int64_t end, int is_match);

/* ---- the loaded tokenizer ---------------------------------------------------------- */

/* Code points below this are looked up in a direct table instead of the vocabulary hash;
   it covers ASCII, the 256 byte-level characters and SentencePiece's U+2581. */
enum { TOK_CHAR_TABLE = 0x2600 };

/* Encode contexts a tokenizer keeps for reuse (tok_encode.c). */
enum { TOK_CTX_POOL = 8 };
typedef struct tok_ctx tok_ctx;

enum tok_norm_type { TOK_NORM_PREPEND = 1, TOK_NORM_REPLACE, TOK_NORM_STRIP };

typedef struct tok_norm {
    int type;
    tok_regex re; /* REPLACE: the pattern */
    char *str;    /* PREPEND: the text; REPLACE: the content */
    int64_t str_len;
    int strip_left, strip_right;
} tok_norm;

enum tok_behavior {
    TOK_SPLIT_REMOVED = 1,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS
};

enum tok_pre_type { TOK_PRE_SPLIT = 1, TOK_PRE_BYTELEVEL, TOK_PRE_METASPACE };
enum tok_prepend { TOK_PREPEND_ALWAYS = 1, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };

typedef struct tok_pre {
    int type;
    tok_regex re;         /* SPLIT: the pattern; BYTELEVEL with use_regex: GPT-2's */
    int behavior, invert; /* SPLIT */
    int add_prefix_space; /* BYTELEVEL */
    int use_regex;        /* BYTELEVEL */
    char repl[8];         /* METASPACE: the replacement character, UTF-8 */
    int repl_len;
    int prepend_scheme; /* METASPACE */
    int split;          /* METASPACE */
} tok_pre;

enum tok_dec_type {
    TOK_DEC_REPLACE = 1,
    TOK_DEC_BYTEFALLBACK,
    TOK_DEC_FUSE,
    TOK_DEC_STRIP,
    TOK_DEC_METASPACE,
    TOK_DEC_BYTELEVEL,
    TOK_DEC_JOIN_SPACE /* no decoder: the reference joins the tokens with spaces */
};

typedef struct tok_dec_step {
    int type;
    int joined;   /* a Fuse or ByteLevel came before: items are pieces of one token */
    tok_regex re; /* REPLACE */
    char *str;    /* REPLACE: the content */
    int64_t str_len;
    char ch[8]; /* STRIP: the content character; METASPACE: the replacement */
    int ch_len;
    int64_t start, stop; /* STRIP */
    int prepend_scheme;  /* METASPACE */
} tok_dec_step;

typedef struct tok_added {
    int32_t id;
    char *content;
    int64_t len;
    char *norm; /* normalized tokens: the content after the normalizer; else NULL */
    int64_t norm_len;
    uint8_t special, lstrip, rstrip, single_word, normalized;
} tok_added;

/* A byte trie over added-token contents for leftmost-longest matching. */
typedef struct tok_trie_node {
    int32_t child;   /* first child, -1 */
    int32_t sibling; /* next sibling, -1 */
    int32_t added;   /* index into lt_tokenizer.added of the token ending here, -1 */
    uint8_t byte;
} tok_trie_node;

typedef struct tok_trie {
    tok_trie_node *nodes; /* (count), node 0 is the root */
    int32_t count, cap;
    uint8_t first[256]; /* bytes that can start a token */
} tok_trie;

struct lt_tokenizer {
    char *path;
    int32_t n_ids; /* largest id + 1 */

    /* the BPE model */
    tok_strmap vocab;  /* model token -> id */
    uint32_t *tok_off; /* (n_ids) model token string of each id in vocab.pool */
    int32_t *tok_len;  /* (n_ids) its length; -1 when the id is no model token */
    tok_pairmap merges;
    int32_t *merge_new_id; /* (number of merges) rank -> merged id */
    int32_t *char_ids;     /* (TOK_CHAR_TABLE) code point -> model id of the 1-char token */
    int32_t byte_ids[256]; /* <0xXX> token ids for byte fallback, -1 when absent */
    int32_t unk_id;        /* the model's unk_token, -1 */
    int byte_fallback, fuse_unk, ignore_merges;
    /* No vocabulary token has U+2581 after another character than U+2581, so no merge
       crosses the start of a run of U+2581: a SentencePiece word (all of a Llama 2 text)
       is merged run by run, each run cached. Exact, and O(run) instead of O(text). */
    int chunk_metaspace;
    char *cont_prefix; /* continuing_subword_prefix, NULL */
    int64_t cont_prefix_len;
    char *eow_suffix; /* end_of_word_suffix, NULL */
    int64_t eow_suffix_len;

    /* added tokens */
    tok_added *added;
    int32_t n_added;
    tok_strmap added_map; /* content -> id */
    int32_t *added_of;    /* (n_ids) id -> index into added, -1 */
    tok_trie trie_raw;    /* tokens with normalized false: matched on the raw text */
    tok_trie trie_norm;   /* normalized true: matched on the normalized text */
    tok_regex word_re;    /* one Rust-regex \w character, for single_word tokens */

    /* the pipeline */
    tok_norm *norms;
    int32_t n_norms;
    tok_pre *pres;
    int32_t n_pres;
    int32_t *prefix; /* post-processor: ids before and after the sequence */
    int32_t n_prefix;
    int32_t *suffix;
    int32_t n_suffix;
    tok_dec_step *decs;
    int32_t n_decs;

    lt_tokenizer_info info;

    /* Encode contexts (scratch buffers and word caches) kept between calls, so that one
       call after another finds the words it saw before; taken and given back with atomic
       exchanges, the only state of a loaded tokenizer that changes. */
    _Atomic(tok_ctx *) ctx_pool[TOK_CTX_POOL];
};

/* The byte-level alphabet (GPT-2's bytes_to_unicode): byte -> code point and back. */
extern const uint16_t tok_byte_to_cp[256];
int tok_cp_to_byte(uint32_t cp); /* -1 when cp is not one of the 256 */

/* Normalize text with the tokenizer's normalizer into out (cleared first). `orig0` is set
   to 0 when the normalizer strips leading characters (the piece no longer starts at the
   original offset). tok_encode.c; the loader uses it for normalized added tokens. */
int tok_normalize(const lt_tokenizer *t, tok_ctx *c, const char *s, int64_t n, lt_text *out,
                  int *orig0);
int tok_ctx_new(tok_ctx **out);
void tok_ctx_free(tok_ctx *c);
/* A context from the tokenizer's pool (or a new one), and back (or freed). */
int tok_ctx_take(const lt_tokenizer *t, tok_ctx **out);
void tok_ctx_give(const lt_tokenizer *t, tok_ctx *c);

/* A token's text as decoding sees it: an added token's content (its normalized form for a
   normalized one, as tokenizers 0.23 decodes it), else the model's string. */
static inline const char *tok_id_str(const lt_tokenizer *t, int32_t id, int64_t *len) {
    int32_t a = t->added_of[id];
    if (a >= 0) {
        const tok_added *ad = &t->added[a];
        *len = ad->norm ? ad->norm_len : ad->len;
        return ad->norm ? ad->norm : ad->content;
    }
    *len = t->tok_len[id];
    return t->vocab.pool.data + t->tok_off[id];
}

static inline int tok_id_valid(const lt_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && (t->added_of[id] >= 0 || t->tok_len[id] >= 0);
}

#endif
