/* tok_decode.c - ids -> text through the tokenizer.json decoder chain.
 *
 * The reference runs each decoder over the whole list of token strings. Here every decoder
 * is a stage of a push pipeline: a stage takes items (a token's text, or a piece of the one
 * token left after a Fuse or ByteLevel joined everything), keeps only the state it needs
 * (bytes of an unfinished UTF-8 character, a run of <0xXX> tokens, trailing characters a
 * Strip may still cut) and passes on what can no longer change. lt_tokenizer_decode pushes
 * all ids and finishes; a decode stream pushes one id at a time. Both run the same code, so
 * the text a stream hands out concatenates to exactly the full decode.
 *
 * After the chain, clean_up_tokenization_spaces (transformers' ten replacements, in order)
 * runs on the text; in a stream a piece waits until the text ends in three non-space
 * bytes, since every pattern starts with a space and is at most four bytes long: text cut
 * there cleans the same whatever follows. */
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>

#include "tok/tok_internal.h"

typedef struct tok_dec_state {
    lt_text buf;     /* BYTEFALLBACK: the run of byte tokens; BYTELEVEL: bytes of an
                        unfinished character; joined REPLACE: held text */
    lt_text scratch; /* this stage's output before it is passed on */
    int64_t count;   /* joined STRIP: leading characters cut; METASPACE: token index */
    int64_t held;    /* joined STRIP: trailing content characters held back */
    int flag;        /* FUSE, BYTELEVEL, JOIN_SPACE, joined REPLACE: something passed on;
                        joined STRIP: the leading part is over */
} tok_dec_state;

typedef struct tok_dec {
    const lt_tokenizer *t;
    int32_t flags;
    int32_t n_st;      /* t->n_decs, kept so that freeing never reads the tokenizer */
    tok_dec_state *st; /* (n_st) */
    lt_text pending;   /* cleanup: text not yet safe to clean */
    int64_t checked;   /* cleanup: pending[0..checked) holds no safe cut */
    lt_text tmp[2];
    tok_match match;
    lt_text *out; /* where the current call appends */
} tok_dec;

static void dec_reset(tok_dec *d) {
    for (int32_t k = 0; k < d->t->n_decs; k++) {
        tok_dec_state *s = &d->st[k];
        s->buf.len = 0;
        s->count = d->t->decs[k].type == TOK_DEC_METASPACE ? -1 : 0;
        s->held = 0;
        s->flag = 0;
    }
    d->pending.len = 0;
    d->checked = 0;
}

static int dec_init(tok_dec *d, const lt_tokenizer *t, int32_t flags) {
    memset(d, 0, sizeof *d);
    d->t = t;
    d->flags = flags;
    d->n_st = t->n_decs;
    d->st = calloc((size_t)t->n_decs + 1, sizeof *d->st);
    if (!d->st) return lt_fail(LT_ERR_NOMEM, "out of memory for a decoder");
    dec_reset(d);
    return LT_OK;
}

static void dec_free(tok_dec *d) {
    if (d->st)
        for (int32_t k = 0; k < d->n_st; k++) {
            lt_text_free(&d->st[k].buf);
            lt_text_free(&d->st[k].scratch);
        }
    free(d->st);
    lt_text_free(&d->pending);
    lt_text_free(&d->tmp[0]);
    lt_text_free(&d->tmp[1]);
    tok_match_free(&d->match);
    memset(d, 0, sizeof *d);
}

/* ---- clean_up_tokenization_spaces -------------------------------------------------- */

static const char *const CLEANUP[10][2] = {
    {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
    {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};

static int cleanup_append(tok_dec *d, const char *s, int64_t n) {
    lt_text *a = &d->tmp[0], *b = &d->tmp[1];
    a->len = 0;
    LT_TRY(tok_text_put(a, s, n));
    for (int k = 0; k < 10; k++) {
        const char *pat = CLEANUP[k][0], *rep = CLEANUP[k][1];
        int64_t pl = (int64_t)strlen(pat), rl = (int64_t)strlen(rep);
        const char *p = a->data, *end = a->data + a->len;
        const char *hit = memmem(p, (size_t)(end - p), pat, (size_t)pl);
        if (!hit) continue;
        b->len = 0;
        while (hit) {
            LT_TRY(tok_text_put(b, p, hit - p));
            LT_TRY(tok_text_put(b, rep, rl));
            p = hit + pl;
            hit = memmem(p, (size_t)(end - p), pat, (size_t)pl);
        }
        LT_TRY(tok_text_put(b, p, end - p));
        lt_text tmp = *a;
        *a = *b;
        *b = tmp;
    }
    return tok_text_put(d->out, a->data, a->len);
}

/* The end of the decoder chain. */
static int sink(tok_dec *d, const char *s, int64_t n) {
    if (!(d->flags & LT_TOK_CLEANUP_SPACES)) return tok_text_put(d->out, s, n);
    LT_TRY(tok_text_put(&d->pending, s, n));
    /* The last character boundary q with three non-space bytes before it: text up to q
       cleans the same whatever follows. What was handed out already ends in three
       non-space bytes (or is nothing), so the three may reach back into it. Cuts at or
       before `checked` were tried already. */
    const char *p = d->pending.data;
    int64_t len = d->pending.len, cut = 0;
    for (int64_t q = len; q >= 1 && q > d->checked; q--) {
        if (q < len && ((unsigned char)p[q] & 0xc0) == 0x80) continue;
        if (p[q - 1] != ' ' && (q < 2 || p[q - 2] != ' ') && (q < 3 || p[q - 3] != ' ')) {
            cut = q;
            break;
        }
    }
    d->checked = len;
    if (cut == 0) return LT_OK;
    LT_TRY(cleanup_append(d, p, cut));
    memmove(d->pending.data, d->pending.data + cut, (size_t)(len - cut));
    d->pending.len = len - cut;
    d->pending.data[d->pending.len] = '\0';
    d->checked = d->pending.len;
    return LT_OK;
}

static int sink_finish(tok_dec *d) {
    if (!(d->flags & LT_TOK_CLEANUP_SPACES) || d->pending.len == 0) return LT_OK;
    LT_TRY(cleanup_append(d, d->pending.data, d->pending.len));
    d->pending.len = 0;
    d->checked = 0;
    return LT_OK;
}

/* ---- the stages -------------------------------------------------------------------- */

static int emit(tok_dec *d, int32_t k, const char *s, int64_t n, int new_token);

/* Replace every match in s[0..n) into out (cleared). */
static int replace_into(tok_dec *d, const tok_dec_step *step, const char *s, int64_t n,
                        lt_text *out) {
    out->len = 0;
    LT_TRY(tok_text_reserve(out, n));
    if (step->re.is_literal && step->re.literal_len > 0) {
        const char *p = s, *end = s + n;
        const char *hit;
        while (
            (hit = memmem(p, (size_t)(end - p), step->re.literal, (size_t)step->re.literal_len))) {
            LT_TRY(tok_text_put(out, p, hit - p));
            LT_TRY(tok_text_put(out, step->str, step->str_len));
            p = hit + step->re.literal_len;
        }
        return tok_text_put(out, p, end - p);
    }
    tok_segs segs = {0};
    int st = tok_regex_find_matches(&step->re, &d->match, s, n, &segs);
    for (int64_t i = 0; st == LT_OK && i < segs.len; i++) {
        const tok_seg *g = &segs.data[i];
        st = g->is_match ? tok_text_put(out, step->str, step->str_len)
                         : tok_text_put(out, s + g->start, g->end - g->start);
    }
    free(segs.data);
    return st;
}

/* A joined Replace with a literal pattern: pass on everything except a tail that could be
   the start of a match completed by later text. */
static int replace_joined(tok_dec *d, int32_t k, const char *s, int64_t n, int new_token) {
    const tok_dec_step *step = &d->t->decs[k];
    tok_dec_state *st = &d->st[k];
    LT_TRY(tok_text_put(&st->buf, s, n));
    if (!step->re.is_literal || step->re.literal_len == 0) return LT_OK; /* held to the end */
    const char *pat = step->re.literal;
    int64_t pl = step->re.literal_len;
    const char *p = st->buf.data, *end = st->buf.data + st->buf.len, *hit;
    lt_text *out = &st->scratch;
    out->len = 0;
    while ((hit = memmem(p, (size_t)(end - p), pat, (size_t)pl))) {
        LT_TRY(tok_text_put(out, p, hit - p));
        LT_TRY(tok_text_put(out, step->str, step->str_len));
        p = hit + pl;
    }
    int64_t tail = end - p, keep = 0;
    for (int64_t m = pl - 1 < tail ? pl - 1 : tail; m > 0; m--)
        if (memcmp(end - m, pat, (size_t)m) == 0) {
            keep = m;
            break;
        }
    LT_TRY(tok_text_put(out, p, tail - keep));
    memmove(st->buf.data, end - keep, (size_t)keep);
    st->buf.len = keep;
    if (out->len == 0) return LT_OK;
    int first = !st->flag;
    st->flag = 1;
    return emit(d, k + 1, out->data, out->len, first || new_token);
}

/* "<0xAB>" -> 0xAB, as the reference parses it (u8::from_str_radix takes a leading +). */
static int byte_token(const char *s, int64_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = 0, lo;
    const char *h = s + 3;
    if (h[0] == '+') {
        h++;
    } else {
        char c = h[0];
        hi = c >= '0' && c <= '9'   ? c - '0'
             : c >= 'a' && c <= 'f' ? c - 'a' + 10
             : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                    : -1;
        if (hi < 0) return -1;
        h++;
    }
    char c = h[0];
    lo = c >= '0' && c <= '9'   ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
    if (lo < 0) return -1;
    return hi * 16 + lo;
}

static const char FFFD[3] = {(char)0xef, (char)0xbf, (char)0xbd};

/* The run of byte tokens as one token when it is valid UTF-8, else one U+FFFD token per
   byte (the reference's ByteFallback; not a lossy decode). */
static int bytefallback_flush(tok_dec *d, int32_t k) {
    tok_dec_state *st = &d->st[k];
    if (st->buf.len == 0) return LT_OK;
    int64_t n = st->buf.len;
    st->buf.len = 0;
    if (tok_utf8_valid_prefix((const unsigned char *)st->buf.data, n) == n)
        return emit(d, k + 1, st->buf.data, n, 1);
    for (int64_t i = 0; i < n; i++) LT_TRY(emit(d, k + 1, FFFD, 3, 1));
    return LT_OK;
}

/* Strip applied to one whole token. */
static int strip_token(tok_dec *d, int32_t k, const char *s, int64_t n, int new_token) {
    const tok_dec_step *step = &d->t->decs[k];
    const char *ch = step->ch;
    int cl = step->ch_len;
    int64_t a = 0, b = n;
    for (int64_t i = 0; i < step->start && a + cl <= n && memcmp(s + a, ch, (size_t)cl) == 0; i++)
        a += cl;
    for (int64_t i = 0; i < step->stop && b - cl >= a && memcmp(s + b - cl, ch, (size_t)cl) == 0;
         i++)
        b -= cl;
    return emit(d, k + 1, s + a, b - a, new_token);
}

/* Strip over the pieces of one joined token: cut leading characters as they come, hold a
   trailing run of up to `stop` content characters until more text shows they are not the
   end. */
static int strip_joined(tok_dec *d, int32_t k, const char *s, int64_t n, int new_token) {
    const tok_dec_step *step = &d->t->decs[k];
    tok_dec_state *st = &d->st[k];
    const char *ch = step->ch;
    int cl = step->ch_len;
    int64_t a = 0;
    while (!st->flag && a < n) {
        if (st->count < step->start && a + cl <= n && memcmp(s + a, ch, (size_t)cl) == 0) {
            a += cl;
            st->count++;
        } else {
            st->flag = 1;
        }
    }
    if (a == n) return LT_OK;
    if (step->stop == 0) return emit(d, k + 1, s + a, n - a, new_token);
    int64_t b = n, run = 0;
    while (b - cl >= a && memcmp(s + b - cl, ch, (size_t)cl) == 0) {
        b -= cl;
        run++;
    }
    lt_text *out = &st->scratch;
    out->len = 0;
    if (b > a) {
        /* not the end: what was held is text after all */
        for (int64_t i = 0; i < st->held; i++) LT_TRY(tok_text_put(out, ch, cl));
        LT_TRY(tok_text_put(out, s + a, b - a));
        st->held = 0;
    }
    st->held += run;
    for (; st->held > step->stop; st->held--) LT_TRY(tok_text_put(out, ch, cl));
    if (out->len == 0) return LT_OK;
    return emit(d, k + 1, out->data, out->len, new_token);
}

static int metaspace(tok_dec *d, int32_t k, const char *s, int64_t n, int new_token) {
    const tok_dec_step *step = &d->t->decs[k];
    tok_dec_state *st = &d->st[k];
    if (new_token || st->count < 0) st->count++;
    int drop = st->count == 0 && step->prepend_scheme != TOK_PREPEND_NEVER;
    lt_text *out = &st->scratch;
    out->len = 0;
    const char *p = s, *end = s + n, *hit;
    while ((hit = memmem(p, (size_t)(end - p), step->ch, (size_t)step->ch_len))) {
        LT_TRY(tok_text_put(out, p, hit - p));
        if (!drop) LT_TRY(tok_text_putc(out, ' '));
        p = hit + step->ch_len;
    }
    LT_TRY(tok_text_put(out, p, end - p));
    return emit(d, k + 1, out->data, out->len, new_token);
}

/* A token's bytes for the ByteLevel decoder: each character back to its byte, or the
   token's own UTF-8 when some character is not of the byte alphabet (added tokens). */
static int bytelevel_bytes(const char *s, int64_t n, lt_text *out) {
    int64_t start = out->len;
    LT_TRY(tok_text_reserve(out, n));
    for (int64_t i = 0; i < n;) {
        uint32_t cp;
        i += tok_utf8_decode((const unsigned char *)s + i, &cp);
        int b = tok_cp_to_byte(cp);
        if (b < 0) {
            out->len = start;
            return tok_text_put(out, s, n);
        }
        out->data[out->len++] = (char)b;
    }
    out->data[out->len] = '\0';
    return LT_OK;
}

/* Decode the stage's byte buffer as far as it is final and pass it on. */
static int bytelevel_pass(tok_dec *d, int32_t k, int final) {
    tok_dec_state *st = &d->st[k];
    if (st->buf.len == 0) return LT_OK;
    lt_text *out = &st->scratch;
    out->len = 0;
    int64_t used;
    LT_TRY(tok_utf8_lossy(out, (const unsigned char *)st->buf.data, st->buf.len, final, &used));
    memmove(st->buf.data, st->buf.data + used, (size_t)(st->buf.len - used));
    st->buf.len -= used;
    if (out->len == 0) return LT_OK;
    int first = !st->flag;
    st->flag = 1;
    return emit(d, k + 1, out->data, out->len, first);
}

static int emit(tok_dec *d, int32_t k, const char *s, int64_t n, int new_token) {
    const lt_tokenizer *t = d->t;
    if (k == t->n_decs) return sink(d, s, n);
    const tok_dec_step *step = &t->decs[k];
    tok_dec_state *st = &d->st[k];
    switch (step->type) {
    case TOK_DEC_REPLACE:
        if (step->joined) return replace_joined(d, k, s, n, new_token);
        LT_TRY(replace_into(d, step, s, n, &st->scratch));
        return emit(d, k + 1, st->scratch.data, st->scratch.len, new_token);
    case TOK_DEC_BYTEFALLBACK: {
        int b = byte_token(s, n);
        if (b >= 0) {
            char c = (char)b;
            return tok_text_put(&st->buf, &c, 1);
        }
        LT_TRY(bytefallback_flush(d, k));
        return emit(d, k + 1, s, n, new_token);
    }
    case TOK_DEC_FUSE: {
        int first = !st->flag;
        st->flag = 1;
        return emit(d, k + 1, s, n, first);
    }
    case TOK_DEC_STRIP:
        return step->joined ? strip_joined(d, k, s, n, new_token)
                            : strip_token(d, k, s, n, new_token);
    case TOK_DEC_METASPACE: return metaspace(d, k, s, n, new_token);
    case TOK_DEC_BYTELEVEL:
        if (step->joined) return tok_text_put(&st->buf, s, n); /* the whole text is one token */
        LT_TRY(bytelevel_bytes(s, n, &st->buf));
        return bytelevel_pass(d, k, 0);
    default: /* TOK_DEC_JOIN_SPACE */
        if (new_token && st->flag) LT_TRY(emit(d, k + 1, " ", 1, 0));
        st->flag = 1;
        return emit(d, k + 1, s, n, new_token);
    }
}

/* End of the ids: every stage passes on what it held, in order. */
static int finish(tok_dec *d) {
    const lt_tokenizer *t = d->t;
    for (int32_t k = 0; k < t->n_decs; k++) {
        const tok_dec_step *step = &t->decs[k];
        tok_dec_state *st = &d->st[k];
        if (step->type == TOK_DEC_BYTEFALLBACK) {
            LT_TRY(bytefallback_flush(d, k));
        } else if (step->type == TOK_DEC_REPLACE && step->joined && st->buf.len) {
            lt_text held = st->buf;
            st->buf = (lt_text){0};
            int rc = replace_into(d, step, held.data, held.len, &st->scratch);
            lt_text_free(&held);
            LT_TRY(rc);
            if (st->scratch.len)
                LT_TRY(emit(d, k + 1, st->scratch.data, st->scratch.len, !st->flag));
        } else if (step->type == TOK_DEC_BYTELEVEL) {
            if (step->joined) {
                lt_text held = st->buf;
                st->buf = (lt_text){0};
                int rc = bytelevel_bytes(held.data ? held.data : "", held.len, &st->buf);
                lt_text_free(&held);
                LT_TRY(rc);
            }
            LT_TRY(bytelevel_pass(d, k, 1));
        }
        /* a joined Strip drops the trailing characters it held */
    }
    LT_TRY(sink_finish(d));
    dec_reset(d);
    return LT_OK;
}

static int push_id(tok_dec *d, int32_t id) {
    const lt_tokenizer *t = d->t;
    if ((d->flags & LT_TOK_SKIP_SPECIAL) && t->added_of[id] >= 0 &&
        t->added[t->added_of[id]].special)
        return LT_OK;
    int64_t len;
    const char *s = tok_id_str(t, id, &len);
    return emit(d, 0, s, len, 1);
}

enum { TOK_DECODE_FLAGS = LT_TOK_SKIP_SPECIAL | LT_TOK_CLEANUP_SPACES };

/* Put back out->len after a failure, keeping the NUL the type promises. */
static void restore(lt_text *out, int64_t len) {
    out->len = len;
    if (out->data) out->data[len] = '\0';
}

int lt_tokenizer_decode(const lt_tokenizer *t, const int32_t *ids, int64_t n, int32_t flags,
                        lt_text *out) {
    if (!t || !out || (!ids && n) || n < 0)
        return lt_fail(LT_ERR_ARG, "lt_tokenizer_decode: bad argument");
    if (flags & ~TOK_DECODE_FLAGS)
        return lt_fail(LT_ERR_ARG, "lt_tokenizer_decode: unknown flags 0x%x", (unsigned)flags);
    for (int64_t i = 0; i < n; i++)
        if (!tok_id_valid(t, ids[i]))
            return lt_fail(LT_ERR_RANGE,
                           "%s: id %d (position %lld) is no token (vocabulary size "
                           "%d)",
                           t->path, ids[i], (long long)i, t->n_ids);
    LT_TRY(tok_text_reserve(out, 0));
    int64_t before = out->len;
    tok_dec d;
    LT_TRY(dec_init(&d, t, flags));
    d.out = out;
    int st = LT_OK;
    for (int64_t i = 0; i < n && st == LT_OK; i++) st = push_id(&d, ids[i]);
    if (st == LT_OK) st = finish(&d);
    dec_free(&d);
    if (st != LT_OK) restore(out, before);
    return st;
}

/* ---- streams ----------------------------------------------------------------------- */

struct lt_decode_stream {
    tok_dec d;
};

int lt_decode_stream_new(lt_decode_stream **out, const lt_tokenizer *t, int32_t flags) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_decode_stream_new: out is NULL");
    *out = NULL;
    if (!t) return lt_fail(LT_ERR_ARG, "lt_decode_stream_new: tokenizer is NULL");
    if (flags & ~TOK_DECODE_FLAGS)
        return lt_fail(LT_ERR_ARG, "lt_decode_stream_new: unknown flags 0x%x", (unsigned)flags);
    lt_decode_stream *s = calloc(1, sizeof *s);
    if (!s) return lt_fail(LT_ERR_NOMEM, "out of memory for a decode stream");
    int st = dec_init(&s->d, t, flags);
    if (st != LT_OK) {
        free(s);
        return st;
    }
    *out = s;
    return LT_OK;
}

int lt_decode_stream_push(lt_decode_stream *s, int32_t id, lt_text *out) {
    if (!s || !out) return lt_fail(LT_ERR_ARG, "lt_decode_stream_push: NULL argument");
    const lt_tokenizer *t = s->d.t;
    if (!tok_id_valid(t, id))
        return lt_fail(LT_ERR_RANGE, "%s: id %d is no token (vocabulary size %d)", t->path, id,
                       t->n_ids);
    LT_TRY(tok_text_reserve(out, 0));
    int64_t before = out->len;
    s->d.out = out;
    int st = push_id(&s->d, id);
    if (st != LT_OK) restore(out, before);
    return st;
}

int lt_decode_stream_flush(lt_decode_stream *s, lt_text *out) {
    if (!s || !out) return lt_fail(LT_ERR_ARG, "lt_decode_stream_flush: NULL argument");
    LT_TRY(tok_text_reserve(out, 0));
    int64_t before = out->len;
    s->d.out = out;
    int st = finish(&s->d);
    if (st != LT_OK) restore(out, before);
    return st;
}

void lt_decode_stream_free(lt_decode_stream *s) {
    if (!s) return;
    dec_free(&s->d);
    free(s);
}
