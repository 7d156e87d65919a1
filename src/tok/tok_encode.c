/* tok_encode.c - text -> ids, as the Hugging Face tokenizers library does it:
 *
 *   1. invalid UTF-8 -> U+FFFD (one per maximal invalid subpart, like a WHATWG decoder)
 *   2. added tokens split out of the raw text (AddedVocabulary::extract_and_normalize):
 *      leftmost-longest, lstrip / rstrip / single_word, special ones kept as text under
 *      LT_TOK_NO_SPLIT_SPECIAL
 *   3. each remaining piece normalized, then split again on the normalized added tokens
 *   4. pre-tokenizers (Split, ByteLevel, Metaspace; Sequence) cut it into words
 *   5. each word through the BPE model (Word::merge_all's priority queue, byte fallback,
 *      unk fusing, ignore_merges), with a per-call cache of words already seen
 *   6. the post-processor's ids around the result under LT_TOK_ADD_SPECIAL
 *
 * All scratch memory lives in a tok_ctx, one per call (or per thread of a batch); the
 * tokenizer keeps a few between calls (with their word caches) in a lock-free pool, and is
 * otherwise only ever read. */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>

#include "tok/tok_internal.h"

/* A pre-token: bytes [off, off + len) of the context's arena. orig0: it begins at offset 0
   of the original text (Metaspace's prepend_scheme "first" asks). */
typedef struct tok_piece {
    int64_t off, len;
    int32_t orig0;
} tok_piece;

/* The reference caches words shorter than this (utils/cache.rs MAX_LENGTH). */
enum { TOK_CACHE_MAX_WORD = 256, TOK_CACHE_MAX_ENTRIES = 1 << 18 };

typedef struct tok_cache_slot {
    uint64_t hash;
    uint32_t key_off; /* into cache_keys */
    uint32_t key_len;
    uint32_t ids_off; /* into cache_ids; UINT32_MAX: empty slot */
    uint32_t ids_len;
} tok_cache_slot;

struct tok_ctx {
    lt_text clean;       /* the input after U+FFFD replacement, when it needed any */
    lt_text normed;      /* the current piece after the normalizer */
    lt_text ntmp;        /* normalizer scratch */
    lt_text arena;       /* pre-token text of the current piece */
    lt_text word;        /* a byte-level word mapped to its alphabet */
    tok_segs added_raw;  /* added-token splits of the raw text */
    tok_segs added_norm; /* ... of the normalized text */
    tok_segs segs;       /* regex matches */
    tok_match match;
    /* BPE over one word of up to sym_cap symbols: ids (-1 once merged away), links */
    int32_t *sym_c, *sym_prev, *sym_next;
    int64_t sym_cap;
    uint64_t *heap; /* (heap_cap) rank << 32 | position, a min-heap */
    int64_t heap_len, heap_cap;
    /* words seen in this call -> their ids */
    tok_cache_slot *cache;
    uint64_t cache_mask;
    int64_t cache_count;
    lt_text cache_keys;
    lt_ids cache_ids;
};

int tok_ctx_new(tok_ctx **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return lt_fail(LT_ERR_NOMEM, "out of memory for a tokenizer context");
    return LT_OK;
}

void tok_ctx_free(tok_ctx *c) {
    if (!c) return;
    lt_text_free(&c->clean);
    lt_text_free(&c->normed);
    lt_text_free(&c->ntmp);
    lt_text_free(&c->arena);
    lt_text_free(&c->word);
    free(c->added_raw.data);
    free(c->added_norm.data);
    free(c->segs.data);
    tok_match_free(&c->match);
    free(c->sym_c);
    free(c->sym_prev);
    free(c->sym_next);
    free(c->heap);
    free(c->cache);
    lt_text_free(&c->cache_keys);
    lt_ids_free(&c->cache_ids);
    free(c);
}

/* A context kept between calls holds on to no more than this: larger buffers (from a long
   text) are freed and an overgrown word cache starts over. */
enum { TOK_CTX_KEEP_BYTES = 8 << 20, TOK_CTX_KEEP_WORDS = 1 << 16 };

static void trim_text(lt_text *s) {
    if (s->cap > TOK_CTX_KEEP_BYTES) lt_text_free(s);
}

static void ctx_trim(tok_ctx *c) {
    trim_text(&c->clean);
    trim_text(&c->normed);
    trim_text(&c->ntmp);
    trim_text(&c->arena);
    trim_text(&c->word);
    if (c->sym_cap * 20 > TOK_CTX_KEEP_BYTES) {
        free(c->sym_c);
        free(c->sym_prev);
        free(c->sym_next);
        free(c->heap);
        c->sym_c = c->sym_prev = c->sym_next = NULL;
        c->heap = NULL;
        c->sym_cap = c->heap_cap = c->heap_len = 0;
    }
    if (c->cache_count > TOK_CTX_KEEP_WORDS || c->cache_keys.cap > TOK_CTX_KEEP_BYTES) {
        free(c->cache);
        c->cache = NULL;
        c->cache_mask = 0;
        c->cache_count = 0;
        lt_text_free(&c->cache_keys);
        lt_ids_free(&c->cache_ids);
    }
    if (c->added_raw.cap > TOK_CTX_KEEP_BYTES / 24) {
        free(c->added_raw.data);
        c->added_raw = (tok_segs){0};
    }
}

int tok_ctx_take(const lt_tokenizer *t, tok_ctx **out) {
    lt_tokenizer *m = (lt_tokenizer *)t; /* the pool is the one mutable part */
    for (int i = 0; i < TOK_CTX_POOL; i++) {
        tok_ctx *c = atomic_exchange(&m->ctx_pool[i], NULL);
        if (c) {
            *out = c;
            return LT_OK;
        }
    }
    return tok_ctx_new(out);
}

void tok_ctx_give(const lt_tokenizer *t, tok_ctx *c) {
    if (!c) return;
    lt_tokenizer *m = (lt_tokenizer *)t;
    ctx_trim(c);
    for (int i = 0; i < TOK_CTX_POOL; i++) {
        tok_ctx *expected = NULL;
        if (atomic_compare_exchange_strong(&m->ctx_pool[i], &expected, c)) return;
    }
    tok_ctx_free(c);
}

/* ---- normalizers ------------------------------------------------------------------- */

static void swap_text(lt_text *a, lt_text *b) {
    lt_text t = *a;
    *a = *b;
    *b = t;
}

/* Replace every match of re in `in` by content, into out (cleared). */
static int replace_all(tok_ctx *c, const tok_regex *re, const char *content, int64_t clen,
                       const lt_text *in, lt_text *out) {
    out->len = 0;
    if (re->is_literal && re->literal_len > 0) {
        const char *s = in->data, *end = in->data + in->len;
        while (s < end) {
            const char *hit = memmem(s, (size_t)(end - s), re->literal, (size_t)re->literal_len);
            if (!hit) break;
            LT_TRY(tok_text_put(out, s, hit - s));
            LT_TRY(tok_text_put(out, content, clen));
            s = hit + re->literal_len;
        }
        return tok_text_put(out, s, end - s);
    }
    LT_TRY(tok_regex_find_matches(re, &c->match, in->data, in->len, &c->segs));
    for (int64_t i = 0; i < c->segs.len; i++) {
        const tok_seg *g = &c->segs.data[i];
        if (g->is_match)
            LT_TRY(tok_text_put(out, content, clen));
        else
            LT_TRY(tok_text_put(out, in->data + g->start, g->end - g->start));
    }
    return LT_OK;
}

int tok_normalize(const lt_tokenizer *t, tok_ctx *c, const char *s, int64_t n, lt_text *out,
                  int *orig0) {
    *orig0 = 1;
    out->len = 0;
    LT_TRY(tok_text_put(out, s, n));
    for (int32_t k = 0; k < t->n_norms; k++) {
        const tok_norm *m = &t->norms[k];
        if (m->type == TOK_NORM_PREPEND) {
            if (out->len == 0) continue; /* the reference prepends to non-empty text only */
            c->ntmp.len = 0;
            LT_TRY(tok_text_put(&c->ntmp, m->str, m->str_len));
            LT_TRY(tok_text_put(&c->ntmp, out->data, out->len));
            swap_text(out, &c->ntmp);
        } else if (m->type == TOK_NORM_REPLACE) {
            LT_TRY(replace_all(c, &m->re, m->str, m->str_len, out, &c->ntmp));
            swap_text(out, &c->ntmp);
        } else {
            const unsigned char *u = (const unsigned char *)out->data;
            int64_t a = 0, b = out->len;
            while (m->strip_left && a < b) {
                uint32_t cp;
                int l = tok_utf8_decode(u + a, &cp);
                if (!tok_is_white_space(cp)) break;
                a += l;
            }
            while (m->strip_right && b > a) {
                int64_t p = b - 1;
                while (p > a && (u[p] & 0xc0) == 0x80) p--;
                uint32_t cp;
                tok_utf8_decode(u + p, &cp);
                if (!tok_is_white_space(cp)) break;
                b = p;
            }
            if (a > 0) *orig0 = 0;
            memmove(out->data, out->data + a, (size_t)(b - a));
            out->len = b - a;
            out->data[out->len] = '\0';
        }
    }
    return LT_OK;
}

/* ---- added tokens ------------------------------------------------------------------ */

/* Rust regex's \w (Alphabetic, marks, decimal digits, connector punctuation, joiners) for
   the character starting at s[i]; the reference's single_word check uses it. */
static int is_word_char(const unsigned char *s, int64_t i) {
    uint32_t cp;
    tok_utf8_decode(s + i, &cp);
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    return -1; /* ask the regex */
}

static int word_at(const lt_tokenizer *t, tok_ctx *c, const char *s, int64_t n, int64_t i,
                   int *out) {
    int w = is_word_char((const unsigned char *)s, i);
    if (w >= 0) {
        *out = w;
        return LT_OK;
    }
    int found = 0;
    int64_t len = tok_utf8_len((unsigned char)s[i]);
    if (i + len > n) len = n - i;
    LT_TRY(tok_regex_find_matches(&t->word_re, &c->match, s + i, len, &c->segs));
    for (int64_t k = 0; k < c->segs.len; k++)
        if (c->segs.data[k].is_match && c->segs.data[k].end > c->segs.data[k].start) found = 1;
    *out = found;
    return LT_OK;
}

/* Start of the last character before byte i. */
static int64_t char_before(const char *s, int64_t i) {
    int64_t p = i - 1;
    while (p > 0 && ((unsigned char)s[p] & 0xc0) == 0x80) p--;
    return p;
}

/* AddedVocabulary::find_matches: sections of s[0..n) in order; is_match holds the token id
   + 1 of a token section, 0 for text. */
static int find_added(const lt_tokenizer *t, tok_ctx *c, const tok_trie *tr, const char *s,
                      int64_t n, int32_t flags, tok_segs *out) {
    out->len = 0;
    const unsigned char *u = (const unsigned char *)s;
    int64_t start_offset = 0, i = 0;
    while (tr->count && i < n) {
        if (!tr->first[u[i]]) {
            i++;
            continue;
        }
        /* the longest token starting at i */
        int32_t node = 0, best = -1;
        int64_t best_end = 0;
        for (int64_t j = i; j < n; j++) {
            int32_t ch = tr->nodes[node].child;
            while (ch >= 0 && tr->nodes[ch].byte != u[j]) ch = tr->nodes[ch].sibling;
            if (ch < 0) break;
            node = ch;
            if (tr->nodes[node].added >= 0) {
                best = tr->nodes[node].added;
                best_end = j + 1;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        const tok_added *a = &t->added[best];
        int64_t start = i, stop = best_end;
        i = best_end; /* matches never overlap, whatever happens to this one */
        if ((flags & LT_TOK_NO_SPLIT_SPECIAL) && a->special) continue;
        if (a->single_word) {
            int before = 0, after = 0;
            if (start > 0) LT_TRY(word_at(t, c, s, n, char_before(s, start), &before));
            if (stop < n) LT_TRY(word_at(t, c, s, n, stop, &after));
            if (before || after) continue;
        }
        if (a->lstrip) {
            /* absorb the whitespace before it, but not into an earlier match */
            int64_t p = start;
            while (p > 0) {
                int64_t q = char_before(s, p);
                uint32_t cp;
                tok_utf8_decode(u + q, &cp);
                if (!tok_is_white_space(cp)) break;
                p = q;
            }
            start = p > start_offset ? p : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                int l = tok_utf8_decode(u + stop, &cp);
                if (!tok_is_white_space(cp)) break;
                stop += l;
            }
        }
        if (start_offset < start) LT_TRY(tok_segs_push(out, start_offset, start, 0));
        LT_TRY(tok_segs_push(out, start, stop, a->id + 1));
        start_offset = stop;
    }
    if (start_offset < n) LT_TRY(tok_segs_push(out, start_offset, n, 0));
    return LT_OK;
}

/* ---- the BPE model ----------------------------------------------------------------- */

static int bpe_reserve(tok_ctx *c, int64_t n) {
    if (n <= c->sym_cap) return LT_OK;
    int64_t cap = c->sym_cap ? c->sym_cap : 64;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(c->sym_c, (size_t)cap * sizeof *a);
    if (a) c->sym_c = a;
    int32_t *b = realloc(c->sym_prev, (size_t)cap * sizeof *b);
    if (b) c->sym_prev = b;
    int32_t *d = realloc(c->sym_next, (size_t)cap * sizeof *d);
    if (d) c->sym_next = d;
    uint64_t *h = realloc(c->heap, (size_t)cap * 2 * sizeof *h);
    if (h) c->heap = h;
    if (!a || !b || !d || !h)
        return lt_fail(LT_ERR_NOMEM, "out of memory for a %lld-symbol word", (long long)n);
    c->sym_cap = cap;
    c->heap_cap = cap * 2;
    return LT_OK;
}

static int heap_push(tok_ctx *c, uint64_t key) {
    if (c->heap_len == c->heap_cap) {
        int64_t cap = c->heap_cap * 2;
        uint64_t *h = realloc(c->heap, (size_t)cap * sizeof *h);
        if (!h) return lt_fail(LT_ERR_NOMEM, "out of memory for the merge queue");
        c->heap = h;
        c->heap_cap = cap;
    }
    uint64_t *h = c->heap;
    int64_t i = c->heap_len++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (h[p] <= key) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = key;
    return LT_OK;
}

static uint64_t heap_pop(tok_ctx *c) {
    uint64_t *h = c->heap;
    uint64_t top = h[0], last = h[--c->heap_len];
    int64_t n = c->heap_len, i = 0;
    for (;;) {
        int64_t l = 2 * i + 1;
        if (l >= n) break;
        if (l + 1 < n && h[l + 1] < h[l]) l++;
        if (h[l] >= last) break;
        h[i] = h[l];
        i = l;
    }
    if (n > 0) h[i] = last;
    return top;
}

/* The model id of one character of a word (with the continuing-subword prefix when not
   first, the end-of-word suffix when last), -1 when the vocabulary lacks it. `tmp` gets the
   looked-up string when it is not the bare character. */
static int32_t char_id(const lt_tokenizer *t, const char *ch, int clen, int first, int last,
                       lt_text *tmp, int *st, const char **looked, int64_t *looked_len) {
    int decorate = (!first && t->cont_prefix) || (last && t->eow_suffix);
    if (!decorate) {
        *looked = ch;
        *looked_len = clen;
        uint32_t cp;
        tok_utf8_decode((const unsigned char *)ch, &cp);
        if (cp < TOK_CHAR_TABLE) return t->char_ids[cp];
        return tok_strmap_get(&t->vocab, ch, clen);
    }
    tmp->len = 0;
    if ((!first && t->cont_prefix &&
         (*st = tok_text_put(tmp, t->cont_prefix, t->cont_prefix_len))) ||
        (*st = tok_text_put(tmp, ch, clen)) ||
        (last && t->eow_suffix && (*st = tok_text_put(tmp, t->eow_suffix, t->eow_suffix_len))))
        return -1;
    *looked = tmp->data;
    *looked_len = tmp->len;
    return tok_strmap_get(&t->vocab, tmp->data, tmp->len);
}

/* BPE::merge_word + Word::merge_all for the valid UTF-8 word w[0..n); ids appended. */
static int bpe_word(const lt_tokenizer *t, tok_ctx *c, const char *w, int64_t n, lt_ids *out) {
    if (n > INT32_MAX - 1)
        return lt_fail(LT_ERR_RANGE, "a %lld-byte word is too long for the BPE model",
                       (long long)n);
    /* At most one symbol per byte, or per byte of prefix + character + suffix when a
       character falls back to bytes. */
    int64_t most = n + 1;
    if (t->cont_prefix || t->eow_suffix) {
        if (t->cont_prefix_len > (INT32_MAX / 2) / (n + 1))
            return lt_fail(LT_ERR_RANGE, "a %lld-byte word is too long for the BPE model",
                           (long long)n);
        most = n * (1 + t->cont_prefix_len) + t->eow_suffix_len + 1;
    }
    LT_TRY(bpe_reserve(c, most));
    int32_t *sc = c->sym_c, *sp = c->sym_prev, *sn = c->sym_next;
    int64_t ns = 0;
    int32_t unk = -1; /* a pending unknown symbol (fuse_unk grows it) */
    int st = LT_OK;
    for (int64_t i = 0; i < n;) {
        int clen = tok_utf8_len((unsigned char)w[i]);
        if (i + clen > n) clen = (int)(n - i);
        const char *looked;
        int64_t looked_len;
        int32_t id =
            char_id(t, w + i, clen, i == 0, i + clen == n, &c->ntmp, &st, &looked, &looked_len);
        if (st != LT_OK) return st;
        i += clen;
        if (id >= 0) {
            if (unk >= 0) {
                sc[ns++] = unk;
                unk = -1;
            }
            sc[ns++] = id;
            continue;
        }
        if (t->byte_fallback) {
            int all = 1;
            for (int64_t k = 0; k < looked_len; k++)
                if (t->byte_ids[(unsigned char)looked[k]] < 0) all = 0;
            if (all) {
                /* as the reference, a pending unk stays pending across byte tokens */
                for (int64_t k = 0; k < looked_len; k++)
                    sc[ns++] = t->byte_ids[(unsigned char)looked[k]];
                continue;
            }
        }
        if (t->unk_id >= 0) {
            if (unk >= 0 && !t->fuse_unk) sc[ns++] = unk;
            unk = t->unk_id;
        }
    }
    if (unk >= 0) sc[ns++] = unk;
    for (int64_t k = 0; k < ns; k++) {
        sp[k] = (int32_t)k - 1;
        sn[k] = k + 1 < ns ? (int32_t)k + 1 : -1;
    }

    /* Word::merge_all: always the lowest-rank pair, leftmost among equal ranks; entries
       made stale by earlier merges are dropped when popped. */
    c->heap_len = 0;
    for (int64_t k = 0; k + 1 < ns; k++) {
        const tok_pair_slot *m = tok_pairmap_get(&t->merges, sc[k], sc[k + 1]);
        if (m) LT_TRY(heap_push(c, (uint64_t)m->rank << 32 | (uint64_t)k));
    }
    while (c->heap_len > 0) {
        uint64_t top = heap_pop(c);
        int32_t pos = (int32_t)(top & 0xffffffffu);
        int32_t new_id = t->merge_new_id[top >> 32];
        if (sc[pos] < 0) continue;
        int32_t right = sn[pos];
        if (right < 0) continue;
        const tok_pair_slot *m = tok_pairmap_get(&t->merges, sc[pos], sc[right]);
        if (!m || m->new_id != new_id) continue;
        sc[pos] = new_id;
        sn[pos] = sn[right];
        sc[right] = -1;
        if (sn[right] >= 0) sp[sn[right]] = pos;
        if (sp[pos] >= 0) {
            m = tok_pairmap_get(&t->merges, sc[sp[pos]], new_id);
            if (m) LT_TRY(heap_push(c, (uint64_t)m->rank << 32 | (uint32_t)sp[pos]));
        }
        if (sn[pos] >= 0) {
            m = tok_pairmap_get(&t->merges, new_id, sc[sn[pos]]);
            if (m) LT_TRY(heap_push(c, (uint64_t)m->rank << 32 | (uint32_t)pos));
        }
    }
    LT_TRY(tok_ids_reserve(out, ns));
    for (int64_t k = 0; k < ns; k++)
        if (sc[k] >= 0) out->data[out->len++] = sc[k];
    return LT_OK;
}

static int cache_init(tok_ctx *c) {
    uint64_t cap = 1024;
    c->cache = malloc(cap * sizeof *c->cache);
    if (!c->cache) return lt_fail(LT_ERR_NOMEM, "out of memory for the word cache");
    for (uint64_t i = 0; i < cap; i++) c->cache[i].ids_off = UINT32_MAX;
    c->cache_mask = cap - 1;
    return LT_OK;
}

static int cache_grow(tok_ctx *c) {
    uint64_t cap = (c->cache_mask + 1) * 2;
    tok_cache_slot *slots = malloc(cap * sizeof *slots);
    if (!slots) return lt_fail(LT_ERR_NOMEM, "out of memory for the word cache");
    for (uint64_t i = 0; i < cap; i++) slots[i].ids_off = UINT32_MAX;
    for (uint64_t i = 0; i <= c->cache_mask; i++) {
        if (c->cache[i].ids_off == UINT32_MAX) continue;
        uint64_t j = c->cache[i].hash & (cap - 1);
        while (slots[j].ids_off != UINT32_MAX) j = (j + 1) & (cap - 1);
        slots[j] = c->cache[i];
    }
    free(c->cache);
    c->cache = slots;
    c->cache_mask = cap - 1;
    return LT_OK;
}

/* The ids of word w[0..n) from the cache, else computed and cached. map_bytes: the word is
   raw bytes still to be mapped to the byte-level alphabet (the ByteLevel pre-tokenizer's
   last step, done here so that a cached word costs one hash lookup); whole: ignore_merges
   may take the word as one token. */
static int cached_word(const lt_tokenizer *t, tok_ctx *c, const char *w, int64_t n, int map_bytes,
                       int whole_ok, lt_ids *out) {
    int cacheable = n < TOK_CACHE_MAX_WORD;
    uint64_t h = 0, slot = 0;
    if (cacheable) {
        if (!c->cache) LT_TRY(cache_init(c));
        h = tok_hash(w, n);
        for (slot = h & c->cache_mask; c->cache[slot].ids_off != UINT32_MAX;
             slot = (slot + 1) & c->cache_mask) {
            const tok_cache_slot *e = &c->cache[slot];
            if (e->hash == h && e->key_len == (uint32_t)n &&
                memcmp(c->cache_keys.data + e->key_off, w, (size_t)n) == 0) {
                /* A word of no ids may be cached before cache_ids holds anything (data
                   NULL), and NULL + 0 is undefined in C. */
                if (e->ids_len == 0) return LT_OK;
                return tok_ids_put(out, c->cache_ids.data + e->ids_off, e->ids_len);
            }
        }
    }
    const char *word = w;
    int64_t wn = n;
    if (map_bytes) {
        c->word.len = 0;
        LT_TRY(tok_text_reserve(&c->word, 2 * n));
        char *d = c->word.data;
        for (int64_t i = 0; i < n; i++)
            d += tok_utf8_encode(tok_byte_to_cp[(unsigned char)w[i]], d);
        c->word.len = d - c->word.data;
        c->word.data[c->word.len] = '\0';
        word = c->word.data;
        wn = c->word.len;
    }
    int64_t before = out->len;
    int32_t whole = whole_ok && t->ignore_merges ? tok_strmap_get(&t->vocab, word, wn) : -1;
    if (whole >= 0)
        LT_TRY(tok_ids_push(out, whole));
    else
        LT_TRY(bpe_word(t, c, word, wn, out));
    if (!cacheable || c->cache_count >= TOK_CACHE_MAX_ENTRIES ||
        c->cache_keys.len + n > (int64_t)UINT32_MAX / 2 ||
        c->cache_ids.len + (out->len - before) > (int64_t)UINT32_MAX / 2)
        return LT_OK;
    tok_cache_slot e = {.hash = h,
                        .key_off = (uint32_t)c->cache_keys.len,
                        .key_len = (uint32_t)n,
                        .ids_off = (uint32_t)c->cache_ids.len,
                        .ids_len = (uint32_t)(out->len - before)};
    LT_TRY(tok_text_put(&c->cache_keys, w, n));
    if (out->len > before) /* else out->data may be NULL */
        LT_TRY(tok_ids_put(&c->cache_ids, out->data + before, out->len - before));
    c->cache[slot] = e;
    if ((uint64_t)(++c->cache_count) * 2 > c->cache_mask + 1) LT_TRY(cache_grow(c));
    return LT_OK;
}

/* One word through the model. */
static int model_word(const lt_tokenizer *t, tok_ctx *c, const char *w, int64_t n, int map_bytes,
                      lt_ids *out) {
    if (n == 0) return LT_OK;
    if (!t->chunk_metaspace || map_bytes) return cached_word(t, c, w, n, map_bytes, 1, out);
    /* Runs that start where U+2581 follows another character merge independently (see
       lt_tokenizer.chunk_metaspace). */
    static const char ms[3] = {(char)0xe2, (char)0x96, (char)0x81};
    int64_t start = 0;
    const char *p = w, *end = w + n;
    while ((p = memmem(p, (size_t)(end - p), ms, 3))) {
        int64_t i = p - w;
        if (i > start && !(i >= 3 && memcmp(w + i - 3, ms, 3) == 0)) {
            LT_TRY(cached_word(t, c, w + start, i - start, 0, 0, out));
            start = i;
        }
        p += 3;
    }
    return cached_word(t, c, w + start, n - start, 0, 0, out);
}

/* ---- pre-tokenizers ---------------------------------------------------------------- */

/* NormalizedString::split's behaviours, one segment at a time: feed the segments of a
   subject in order (matches flagged), take the pieces as they are decided. */
typedef struct tok_behav {
    int behavior, invert;
    int has; /* a segment is held */
    tok_seg held;
    int prev_match;
} tok_behav;

/* Up to two pieces decided by segment s go to y. */
static int behav_feed(tok_behav *b, tok_seg s, tok_seg *y) {
    if (b->invert) s.is_match = !s.is_match;
    int ny = 0;
    switch (b->behavior) {
    case TOK_SPLIT_ISOLATED: y[ny++] = s; break;
    case TOK_SPLIT_REMOVED:
        if (!s.is_match) y[ny++] = s;
        break;
    case TOK_SPLIT_CONTIGUOUS:
    case TOK_SPLIT_MERGED_PREV: {
        /* Contiguous joins runs of equal flags; MergedWithPrevious joins a match to what
           precedes it when that is not a match */
        int join = b->behavior == TOK_SPLIT_CONTIGUOUS ? s.is_match == b->prev_match
                                                       : s.is_match && !b->prev_match;
        if (b->has && join) {
            b->held.end = s.end;
        } else {
            if (b->has) y[ny++] = b->held;
            b->held = s;
            b->has = 1;
        }
        b->prev_match = s.is_match;
        break;
    }
    default: /* MergedWithNext: a match joins the non-match right after it */
        if (b->has) {
            b->has = 0;
            if (!s.is_match) {
                y[ny++] = (tok_seg){b->held.start, s.end, 0};
                break;
            }
            y[ny++] = b->held;
        }
        if (s.is_match) {
            b->held = s;
            b->has = 1;
        } else {
            y[ny++] = s;
        }
        break;
    }
    return ny;
}

static int pre_run(const lt_tokenizer *t, tok_ctx *c, int32_t k, tok_piece p, lt_ids *out);

/* Pieces y[0..ny) of piece p go on to step k + 1 (empty ones are dropped, as the
   reference drops empty splits). */
static int pass_on(const lt_tokenizer *t, tok_ctx *c, int32_t k, const tok_piece *p,
                   const tok_seg *y, int ny, lt_ids *out) {
    for (int i = 0; i < ny; i++)
        if (y[i].end > y[i].start) {
            tok_piece q = {p->off + y[i].start, y[i].end - y[i].start, p->orig0 && y[i].start == 0};
            LT_TRY(pre_run(t, c, k + 1, q, out));
        }
    return LT_OK;
}

/* Where in the arena re should look for piece p: the piece itself, or a copy with stand-ins
   for the characters PCRE2 categorizes otherwise than the reference (tok_unicode.c). The
   copy has the piece's offsets, so pieces are still cut from the original. */
static int regex_subject(tok_ctx *c, const tok_regex *re, const tok_piece *p, int64_t *subject) {
    int64_t first = re->is_literal ? -1 : tok_unicode_find(c->arena.data + p->off, p->len);
    *subject = p->off;
    if (first < 0) return LT_OK;
    LT_TRY(tok_text_reserve(&c->arena, p->len)); /* room first: the copy's source is the arena */
    *subject = c->arena.len;
    LT_TRY(tok_text_put(&c->arena, c->arena.data + p->off, p->len));
    tok_unicode_standin(c->arena.data + *subject, p->len, first);
    return LT_OK;
}

/* Split piece p at the matches of re (Pattern::find_matches with the onig crate's
   iteration), pieces on to step k + 1 as they are decided. The arena may move while later
   steps run, so the subject is found again from its offset before every search. */
static int split_piece(const lt_tokenizer *t, tok_ctx *c, int32_t k, const tok_piece *p,
                       const tok_regex *re, int behavior, int invert, lt_ids *out) {
    tok_behav b = {.behavior = behavior, .invert = invert};
    tok_seg y[2];
    int64_t n = p->len, prev = 0, last_end = 0, last_match_end = -1, subject;
    if (n == 0) return pass_on(t, c, k, p, y, behav_feed(&b, (tok_seg){0, 0, 0}, y), out);
    LT_TRY(regex_subject(c, re, p, &subject));
    while (last_end <= n) {
        int64_t ms, me;
        int found;
        LT_TRY(
            tok_regex_search(re, &c->match, c->arena.data + subject, n, last_end, &ms, &me, &found));
        if (!found) break;
        if (ms == me && last_match_end == me) {
            last_end +=
                last_end < n ? tok_utf8_len((unsigned char)c->arena.data[p->off + last_end]) : 1;
            continue;
        }
        last_end = me;
        last_match_end = me;
        if (prev != ms)
            LT_TRY(pass_on(t, c, k, p, y, behav_feed(&b, (tok_seg){prev, ms, 0}, y), out));
        LT_TRY(pass_on(t, c, k, p, y, behav_feed(&b, (tok_seg){ms, me, 1}, y), out));
        prev = me;
    }
    if (prev != n) LT_TRY(pass_on(t, c, k, p, y, behav_feed(&b, (tok_seg){prev, n, 0}, y), out));
    return b.has ? pass_on(t, c, k, p, &b.held, 1, out) : LT_OK;
}

/* Map piece p to the byte-level alphabet (a new string in the arena). */
static int map_piece(tok_ctx *c, tok_piece *p) {
    int64_t at = c->arena.len;
    LT_TRY(tok_text_reserve(&c->arena, 2 * p->len));
    char *d = c->arena.data + at;
    const unsigned char *s = (const unsigned char *)c->arena.data + p->off;
    for (int64_t k = 0; k < p->len; k++) d += tok_utf8_encode(tok_byte_to_cp[s[k]], d);
    c->arena.len = d - c->arena.data;
    c->arena.data[c->arena.len] = '\0';
    p->off = at;
    p->len = c->arena.len - at;
    return LT_OK;
}

static int pre_bytelevel(const lt_tokenizer *t, tok_ctx *c, int32_t k, tok_piece p, lt_ids *out) {
    const tok_pre *pre = &t->pres[k];
    if (pre->add_prefix_space && (p.len == 0 || c->arena.data[p.off] != ' ')) {
        int64_t at = c->arena.len;
        /* room first: the copy's source is the arena itself */
        LT_TRY(tok_text_reserve(&c->arena, p.len + 1));
        LT_TRY(tok_text_putc(&c->arena, ' '));
        LT_TRY(tok_text_put(&c->arena, c->arena.data + p.off, p.len));
        p.off = at;
        p.len++;
    }
    if (k == t->n_pres - 1) {
        /* the last step: the model maps the bytes itself (and caches by raw bytes) */
        if (pre->use_regex) return split_piece(t, c, k, &p, &pre->re, TOK_SPLIT_ISOLATED, 0, out);
        return p.len ? pre_run(t, c, k + 1, p, out) : LT_OK;
    }
    if (!pre->use_regex) {
        LT_TRY(map_piece(c, &p));
        return p.len ? pre_run(t, c, k + 1, p, out) : LT_OK;
    }
    /* Later steps see mapped text: as the reference, split the raw text with the GPT-2
       pattern (Isolated), then map each piece. */
    int64_t n = p.len, prev = 0, last_end = 0, last_match_end = -1, subject;
    LT_TRY(regex_subject(c, &pre->re, &p, &subject));
    while (last_end <= n) {
        int64_t ms, me;
        int found;
        LT_TRY(tok_regex_search(&pre->re, &c->match, c->arena.data + subject, n, last_end, &ms,
                                &me, &found));
        if (!found) break;
        if (ms == me && last_match_end == me) {
            last_end +=
                last_end < n ? tok_utf8_len((unsigned char)c->arena.data[p.off + last_end]) : 1;
            continue;
        }
        last_end = last_match_end = me;
        int64_t cut[2][2] = {{prev, ms}, {ms, me}};
        for (int i = 0; i < 2; i++) {
            if (cut[i][1] <= cut[i][0]) continue;
            tok_piece q = {p.off + cut[i][0], cut[i][1] - cut[i][0], p.orig0 && cut[i][0] == 0};
            LT_TRY(map_piece(c, &q));
            LT_TRY(pre_run(t, c, k + 1, q, out));
        }
        prev = me;
    }
    if (prev < n) {
        tok_piece q = {p.off + prev, n - prev, p.orig0 && prev == 0};
        LT_TRY(map_piece(c, &q));
        LT_TRY(pre_run(t, c, k + 1, q, out));
    }
    return LT_OK;
}

static int pre_metaspace(const lt_tokenizer *t, tok_ctx *c, int32_t k, tok_piece p, lt_ids *out) {
    const tok_pre *pre = &t->pres[k];
    const char *r = pre->repl;
    int rl = pre->repl_len;
    /* spaces -> the replacement, then the prepend scheme */
    int starts = p.len >= rl && memcmp(c->arena.data + p.off, r, (size_t)rl) == 0;
    int space_first = p.len > 0 && c->arena.data[p.off] == ' ';
    int prepend =
        !(starts || space_first) && (pre->prepend_scheme == TOK_PREPEND_ALWAYS ||
                                     (pre->prepend_scheme == TOK_PREPEND_FIRST && p.orig0));
    int64_t at = c->arena.len;
    LT_TRY(tok_text_reserve(&c->arena, p.len * rl + rl));
    if (prepend) LT_TRY(tok_text_put(&c->arena, r, rl));
    for (int64_t i = 0; i < p.len; i++) {
        char ch = c->arena.data[p.off + i];
        if (ch == ' ')
            LT_TRY(tok_text_put(&c->arena, r, rl));
        else
            LT_TRY(tok_text_putc(&c->arena, ch));
    }
    tok_piece q = {at, c->arena.len - at, p.orig0};
    if (!pre->split) return q.len ? pre_run(t, c, k + 1, q, out) : LT_OK;
    /* split on the replacement character (a char pattern), MergedWithNext: each one opens
       a new piece */
    tok_behav b = {.behavior = TOK_SPLIT_MERGED_NEXT};
    tok_seg y[2];
    int64_t last = 0, i = 0;
    while (i + rl <= q.len) {
        if (memcmp(c->arena.data + q.off + i, r, (size_t)rl) == 0) {
            if (last < i)
                LT_TRY(pass_on(t, c, k, &q, y, behav_feed(&b, (tok_seg){last, i, 0}, y), out));
            LT_TRY(pass_on(t, c, k, &q, y, behav_feed(&b, (tok_seg){i, i + rl, 1}, y), out));
            i += rl;
            last = i;
        } else {
            i += tok_utf8_len((unsigned char)c->arena.data[q.off + i]);
        }
    }
    if (last < q.len)
        LT_TRY(pass_on(t, c, k, &q, y, behav_feed(&b, (tok_seg){last, q.len, 0}, y), out));
    return b.has ? pass_on(t, c, k, &q, &b.held, 1, out) : LT_OK;
}

/* Step k of the pre-tokenizer on piece p, depth first: what it produces goes straight on
   to the next step and the model, so no list of a long text's words is ever built. */
static int pre_run(const lt_tokenizer *t, tok_ctx *c, int32_t k, tok_piece p, lt_ids *out) {
    if (k == t->n_pres) {
        int lazy = t->pres[k - 1].type == TOK_PRE_BYTELEVEL;
        return model_word(t, c, c->arena.data + p.off, p.len, lazy, out);
    }
    const tok_pre *pre = &t->pres[k];
    if (pre->type == TOK_PRE_SPLIT)
        return split_piece(t, c, k, &p, &pre->re, pre->behavior, pre->invert, out);
    if (pre->type == TOK_PRE_BYTELEVEL) return pre_bytelevel(t, c, k, p, out);
    return pre_metaspace(t, c, k, p, out);
}

/* Pre-tokenize one normalized piece and run its words through the model. */
static int encode_words(const lt_tokenizer *t, tok_ctx *c, const char *s, int64_t n, int orig0,
                        lt_ids *out) {
    if (t->n_pres == 0) return model_word(t, c, s, n, 0, out);
    c->arena.len = 0;
    LT_TRY(tok_text_put(&c->arena, s, n));
    return pre_run(t, c, 0, (tok_piece){0, n, orig0}, out);
}

/* A text section between raw added tokens: normalize, split on normalized added tokens,
   pre-tokenize, model. */
static int encode_section(const lt_tokenizer *t, tok_ctx *c, const char *s, int64_t n, int orig0,
                          int32_t flags, lt_ids *out) {
    if (t->n_norms == 0 && t->trie_norm.count == 0) return encode_words(t, c, s, n, orig0, out);
    int o0 = 1;
    LT_TRY(tok_normalize(t, c, s, n, &c->normed, &o0));
    orig0 = orig0 && o0;
    if (c->normed.len == 0) return LT_OK;
    if (t->trie_norm.count == 0)
        return encode_words(t, c, c->normed.data, c->normed.len, orig0, out);
    LT_TRY(find_added(t, c, &t->trie_norm, c->normed.data, c->normed.len, flags, &c->added_norm));
    for (int64_t i = 0; i < c->added_norm.len; i++) {
        const tok_seg *g = &c->added_norm.data[i];
        if (g->is_match)
            LT_TRY(tok_ids_push(out, g->is_match - 1));
        else
            LT_TRY(encode_words(t, c, c->normed.data + g->start, g->end - g->start,
                                orig0 && g->start == 0, out));
    }
    return LT_OK;
}

static int encode_one(const lt_tokenizer *t, tok_ctx *c, const char *text, int64_t len,
                      int32_t flags, lt_ids *out) {
    const char *s = text ? text : "";
    int64_t n = len;
    if (tok_utf8_valid_prefix((const unsigned char *)s, n) != n) {
        c->clean.len = 0;
        LT_TRY(tok_utf8_sanitize(&c->clean, (const unsigned char *)s, n));
        s = c->clean.data;
        n = c->clean.len;
    }
    if (flags & LT_TOK_ADD_SPECIAL) LT_TRY(tok_ids_put(out, t->prefix, t->n_prefix));
    LT_TRY(find_added(t, c, &t->trie_raw, s, n, flags, &c->added_raw));
    for (int64_t i = 0; i < c->added_raw.len; i++) {
        const tok_seg *g = &c->added_raw.data[i];
        if (g->is_match)
            LT_TRY(tok_ids_push(out, g->is_match - 1));
        else
            LT_TRY(
                encode_section(t, c, s + g->start, g->end - g->start, g->start == 0, flags, out));
    }
    if (flags & LT_TOK_ADD_SPECIAL) LT_TRY(tok_ids_put(out, t->suffix, t->n_suffix));
    return LT_OK;
}

enum { TOK_ENCODE_FLAGS = LT_TOK_ADD_SPECIAL | LT_TOK_NO_SPLIT_SPECIAL };

int lt_tokenizer_encode(const lt_tokenizer *t, const char *text, int64_t len, int32_t flags,
                        lt_ids *out) {
    if (!t || !out || (!text && len) || len < 0)
        return lt_fail(LT_ERR_ARG, "lt_tokenizer_encode: bad argument (tokenizer, text and out "
                                   "must be given, len >= 0)");
    if (flags & ~TOK_ENCODE_FLAGS)
        return lt_fail(LT_ERR_ARG, "lt_tokenizer_encode: unknown flags 0x%x", (unsigned)flags);
    int64_t before = out->len;
    LT_TRY(tok_ids_reserve(out, 0));
    tok_ctx *c;
    LT_TRY(tok_ctx_take(t, &c));
    int st = encode_one(t, c, text, len, flags, out);
    tok_ctx_give(t, c);
    if (st != LT_OK) out->len = before;
    return st;
}

int lt_tokenizer_encode_batch(const lt_tokenizer *t, const char *const *texts, const int64_t *lens,
                              int32_t n, int32_t flags, int32_t threads, lt_ids *outs) {
    if (!t || n < 0 || (n > 0 && (!texts || !outs)))
        return lt_fail(LT_ERR_ARG, "lt_tokenizer_encode_batch: bad argument");
    if (flags & ~TOK_ENCODE_FLAGS)
        return lt_fail(LT_ERR_ARG, "lt_tokenizer_encode_batch: unknown flags 0x%x",
                       (unsigned)flags);
    for (int32_t i = 0; i < n; i++) {
        if ((!texts[i] && lens && lens[i]) || (lens && lens[i] < 0))
            return lt_fail(LT_ERR_ARG,
                           "lt_tokenizer_encode_batch: text %d is NULL or has a "
                           "negative length",
                           i);
        LT_TRY(tok_ids_reserve(&outs[i], 0));
    }
    int nt = threads > 0 ? threads : lt_get_num_threads();
    if (nt > n) nt = n;
    if (nt < 1) nt = 1;
    int failed = 0, fail_status = LT_OK;
    int32_t fail_index = -1;
    char fail_msg[1024] = "";
#pragma omp parallel num_threads(nt)
    {
        tok_ctx *c = NULL;
        int st = tok_ctx_take(t, &c);
        /* Each thread encodes into its own buffer and copies once: appending id by id to
           neighbouring outs[] headers would share their cache lines between threads. */
        lt_ids local = {0};
#pragma omp for schedule(dynamic, 4)
        for (int32_t i = 0; i < n; i++) {
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop) continue;
            if (st == LT_OK) {
                const char *s = texts[i] ? texts[i] : "";
                int64_t len = lens ? lens[i] : (int64_t)strlen(s);
                local.len = 0;
                st = encode_one(t, c, s, len, flags, &local);
                if (st == LT_OK) st = tok_ids_put(&outs[i], local.data, local.len);
            }
            if (st != LT_OK) {
#pragma omp critical(lt_tok_batch_error)
                {
                    if (!failed || i < fail_index) {
                        fail_status = st;
                        fail_index = i;
                        snprintf(fail_msg, sizeof fail_msg, "%s", lt_last_error());
                    }
#pragma omp atomic write
                    failed = 1;
                }
                st = LT_OK;
            }
        }
        tok_ctx_give(t, c);
        lt_ids_free(&local);
    }
    if (failed) return lt_fail(fail_status, "text %d: %s", fail_index, fail_msg);
    return LT_OK;
}
