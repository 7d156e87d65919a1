/* test_tokenizer.c - tokenizer.json tokenizers on the hand-made fixtures in
 * tests/fixtures/tokenizers/: ids worked out by hand (and confirmed with the Hugging Face
 * tokenizers library when the fixtures were written), decode round trips, invalid UTF-8
 * with the U+FFFD counts a WHATWG decoder gives, streaming decode against full decode,
 * batches against single calls, and a table of malformed files that must each fail with a
 * clear message and no crash (this file also runs under AddressSanitizer).
 *
 *   sp_tiny       SentencePiece-style BPE: Prepend + Replace normalizer, byte fallback with
 *                 only some <0xXX> tokens (so both the byte and the <unk> paths show),
 *                 fuse_unk, added tokens with lstrip / rstrip / single_word, template [<s> $A]
 *   sp_metaspace  the same model behind a Metaspace pre-tokenizer (prepend_scheme first)
 *   bl_tiny       byte-level BPE behind Llama 3's split regex, ignore_merges */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lt_tok.h"

static const char *fixtures(void) {
    const char *d = getenv("LT_TEST_FIXTURES");
    return d && *d ? d : "../../tests/fixtures";
}

/* A tokenizer of tests/fixtures/tokenizers/<name>, with its config when asked. */
static lt_tokenizer *load(const char *name, int with_config) {
    char tj[1024], cj[1024];
    snprintf(tj, sizeof tj, "%s/tokenizers/%s/tokenizer.json", fixtures(), name);
    snprintf(cj, sizeof cj, "%s/tokenizers/%s/tokenizer_config.json", fixtures(), name);
    lt_tokenizer *t = NULL;
    int st = lt_tokenizer_load(&t, tj, with_config ? cj : NULL);
    if (st != LT_OK) fprintf(stderr, "loading %s: %s\n", name, lt_last_error());
    CHECK(st == LT_OK && t != NULL);
    return t;
}

static void print_ids(const char *what, const int32_t *ids, int64_t n) {
    fprintf(stderr, "  %s:", what);
    for (int64_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

static int encode_is(const lt_tokenizer *t, const char *text, int64_t len, int32_t flags,
                     const int32_t *want, int64_t n, int line) {
    lt_ids got = {0};
    int st = lt_tokenizer_encode(t, text, len, flags, &got);
    int ok = st == LT_OK && got.len == n && (n == 0 || memcmp(got.data, want, (size_t)n * 4) == 0);
    if (!ok) {
        fprintf(stderr, "line %d: encoding \"%.*s\" (flags %d): status %d %s\n", line, (int)len,
                text, flags, st, st ? lt_last_error() : "");
        print_ids("want", want, n);
        print_ids("got ", got.data, got.len);
    }
    lt_ids_free(&got);
    return ok;
}

#define ENC(t, text, flags, ...)                                                                   \
    do {                                                                                           \
        static const int32_t want_[] = {__VA_ARGS__};                                              \
        CHECK(encode_is(t, text, (int64_t)strlen(text), flags, want_,                              \
                        (int64_t)(sizeof want_ / sizeof want_[0]), __LINE__));                     \
    } while (0)

static int decode_is(const lt_tokenizer *t, const int32_t *ids, int64_t n, int32_t flags,
                     const char *want, int line) {
    lt_text got = {0};
    int st = lt_tokenizer_decode(t, ids, n, flags, &got);
    int ok = st == LT_OK && got.len == (int64_t)strlen(want) &&
             memcmp(got.data, want, strlen(want)) == 0 && got.data[got.len] == '\0';
    if (!ok) {
        fprintf(stderr, "line %d: decode (flags %d): status %d %s\n", line, flags, st,
                st ? lt_last_error() : "");
        fprintf(stderr, "  want \"%s\"\n  got  \"%.*s\"\n", want, (int)got.len,
                got.data ? got.data : "");
    }
    lt_text_free(&got);
    return ok;
}

#define DEC(t, flags, want, ...)                                                                   \
    do {                                                                                           \
        static const int32_t ids_[] = {__VA_ARGS__};                                               \
        CHECK(decode_is(t, ids_, (int64_t)(sizeof ids_ / sizeof ids_[0]), flags, want, __LINE__)); \
    } while (0)

/* Valid UTF-8 in s[0..n)? (every piece a stream hands out must be) */
static int utf8_ok(const char *s, int64_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (int64_t i = 0; i < n;) {
        int len = u[i] < 0x80 ? 1 : u[i] < 0xe0 ? 2 : u[i] < 0xf0 ? 3 : 4;
        if (i + len > n) return 0;
        for (int k = 1; k < len; k++)
            if ((u[i + k] & 0xc0) != 0x80) return 0;
        i += len;
    }
    return 1;
}

/* Pushing ids one by one hands out whole characters that add up to the full decode. */
static int stream_matches(const lt_tokenizer *t, const int32_t *ids, int64_t n, int32_t flags) {
    lt_text full = {0}, all = {0};
    lt_decode_stream *s = NULL;
    int ok = lt_tokenizer_decode(t, ids, n, flags, &full) == LT_OK &&
             lt_decode_stream_new(&s, t, flags) == LT_OK;
    for (int64_t i = 0; ok && i < n; i++) {
        int64_t before = all.len;
        ok = lt_decode_stream_push(s, ids[i], &all) == LT_OK &&
             utf8_ok(all.data + before, all.len - before);
    }
    ok = ok && lt_decode_stream_flush(s, &all) == LT_OK;
    ok = ok && all.len == full.len &&
         memcmp(all.data ? all.data : "", full.data ? full.data : "", (size_t)full.len) == 0;
    if (!ok) {
        print_ids("stream ids", ids, n);
        fprintf(stderr, "  flags %d\n  full   \"%.*s\"\n  stream \"%.*s\"\n", flags, (int)full.len,
                full.data ? full.data : "", (int)all.len, all.data ? all.data : "");
    }
    lt_decode_stream_free(s);
    lt_text_free(&all);
    lt_text_free(&full);
    return ok;
}

#define STREAM(t, flags, ...)                                                                      \
    do {                                                                                           \
        static const int32_t ids_[] = {__VA_ARGS__};                                               \
        CHECK(stream_matches(t, ids_, (int64_t)(sizeof ids_ / sizeof ids_[0]), flags));            \
    } while (0)

static void test_sp_info(void) {
    lt_tokenizer *t = load("sp_tiny", 1);
    if (!t) return;
    lt_tokenizer_info info;
    CHECK_OK(lt_tokenizer_get_info(t, &info));
    CHECK(info.vocab_size == 32);
    CHECK(info.bos_id == 1 && info.eos_id == 2 && info.unk_id == 0 && info.pad_id == -1);
    CHECK(info.kind == LT_TOK_KIND_BPE_SENTENCEPIECE);
    /* add_bos_token / add_eos_token of the config replace the template's [<s> $A] */
    CHECK(info.add_bos == 1 && info.add_eos == 1);
    CHECK(info.clean_up_spaces == 0);
    ENC(t, "hello world", LT_TOK_ADD_SPECIAL, 1, 22, 27, 2);
    ENC(t, "", LT_TOK_ADD_SPECIAL, 1, 2);
    lt_tokenizer_free(t);

    /* Without the config: the template decides, BOS/EOS come from tokenizer.json */
    t = load("sp_tiny", 0);
    if (!t) return;
    CHECK_OK(lt_tokenizer_get_info(t, &info));
    CHECK(info.bos_id == 1 && info.eos_id == 2 && info.unk_id == 0 && info.pad_id == -1);
    CHECK(info.add_bos == 1 && info.add_eos == 0);
    ENC(t, "hello world", LT_TOK_ADD_SPECIAL, 1, 22, 27);
    lt_tokenizer_free(t);
}

static void test_sp_encode(void) {
    lt_tokenizer *t = load("sp_tiny", 0);
    if (!t) return;
    /* "▁hello▁world": merges by rank build ▁hello and ▁world */
    ENC(t, "hello world", 0, 22, 27);
    /* "▁▁▁": the leftmost of two equal-rank pairs merges first */
    ENC(t, "  ", 0, 29, 6);
    /* byte fallback: é is <0xC3><0xA9>; ß needs <0x9F>, which is missing, so <unk> */
    ENC(t, "é", 0, 6, 4, 5);
    ENC(t, "ß", 0, 6, 0);
    ENC(t, "ßß", 0, 6, 0); /* fuse_unk */
    /* as the reference: a pending <unk> waits across byte tokens and fuses with the next */
    ENC(t, "ßéß", 0, 6, 4, 5, 0);
    ENC(t, "hello\n", 0, 22, 3);
    CHECK(encode_is(t, "", 0, 0, NULL, 0, __LINE__));
    /* special tokens are split out before normalization */
    ENC(t, "<s>hello</s>", 0, 1, 22, 2);
    /* single_word "ab": only between non-word characters */
    ENC(t, "ab ab", 0, 28, 29, 28);
    ENC(t, "abab", 0, 6, 28, 28);
    ENC(t, "abh", 0, 6, 28, 11);
    /* lstrip / rstrip absorb the spaces around <tool> */
    ENC(t, "hello <tool> world", 0, 22, 30, 27);
    ENC(t, "hello<sep>", 0, 22, 31);
    ENC(t, "hello <sep>", 0, 22, 31);
    /* LT_TOK_NO_SPLIT_SPECIAL: special tokens are text (unknown characters here), other
       added tokens still split */
    ENC(t, "hello<sep>", LT_TOK_NO_SPLIT_SPECIAL, 22, 0, 10, 0);
    ENC(t, "<s>", LT_TOK_NO_SPLIT_SPECIAL, 6, 0);
    ENC(t, "hello <tool> world", LT_TOK_NO_SPLIT_SPECIAL, 22, 30, 27);
    /* a long SentencePiece word (one BPE word for the whole text) */
    {
        enum { REP = 2000 };
        char *text = malloc(12 * REP + 1);
        int32_t *want = malloc(2 * REP * sizeof *want);
        if (text && want) {
            text[0] = '\0';
            for (int i = 0; i < REP; i++) {
                memcpy(text + 12 * i, i ? " hello world" : "hello world ", 12);
                want[2 * i] = 22;
                want[2 * i + 1] = 27;
            }
            /* "hello world  hello world hello world ...": at the double space, ▁ h merges
               (rank 0) before ▁ ▁ (rank 11), so it is ▁ ▁hello */
            text[12 * REP] = '\0';
            lt_ids got = {0};
            CHECK_OK(lt_tokenizer_encode(t, text, 12 * REP, 0, &got));
            CHECK(got.len == 2 * REP + 1 && got.data[0] == 22 && got.data[1] == 27 &&
                  got.data[2] == 6 && got.data[3] == 22 && got.data[got.len - 1] == 27);
            lt_text back = {0};
            CHECK_OK(lt_tokenizer_decode(t, got.data, got.len, 0, &back));
            CHECK(back.len == 12 * REP && memcmp(back.data, text, 12 * REP) == 0);
            lt_text_free(&back);
            lt_ids_free(&got);
        }
        free(text);
        free(want);
    }
    /* bad arguments */
    lt_ids ids = {0};
    CHECK_FAILS(lt_tokenizer_encode(t, "x", 1, 0x100, &ids), LT_ERR_ARG, "flags");
    CHECK_FAILS(lt_tokenizer_encode(t, NULL, 3, 0, &ids), LT_ERR_ARG, "");
    CHECK_FAILS(lt_tokenizer_encode(t, "x", -1, 0, &ids), LT_ERR_ARG, "");
    CHECK(ids.len == 0);
    lt_tokenizer_free(t);
}

static void test_sp_decode(void) {
    lt_tokenizer *t = load("sp_tiny", 0);
    if (!t) return;
    DEC(t, 0, "hello world", 22, 27);
    DEC(t, 0, "<s> hello world</s>", 1, 22, 27, 2);
    DEC(t, LT_TOK_SKIP_SPECIAL, "hello world", 1, 22, 27, 2);
    DEC(t, 0, "é<unk>", 6, 4, 5, 0);
    DEC(t, LT_TOK_SKIP_SPECIAL, "é", 6, 4, 5, 0);
    DEC(t, 0, "hello<tool> world", 22, 30, 27); /* <tool> is not special */
    DEC(t, LT_TOK_SKIP_SPECIAL, "hello<tool> world", 22, 30, 27);
    DEC(t, 0, "\n\n", 3, 3);
    /* ByteFallback: a run of byte tokens that is not valid UTF-8 gives one U+FFFD per byte
       (the reference's rule, not a lossy decode) */
    DEC(t, 0, "\xef\xbf\xbd", 4);
    DEC(t, 0, "é", 4, 5);
    DEC(t, 0, "\xef\xbf\xbd\xef\xbf\xbd", 5, 4);
    DEC(t, 0, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 4, 5, 4);
    /* clean_up_tokenization_spaces */
    DEC(t, 0, "hello .", 22, 6, 16);
    DEC(t, LT_TOK_CLEANUP_SPACES, "hello.", 22, 6, 16);
    DEC(t, LT_TOK_CLEANUP_SPACES, "hello, world.", 22, 6, 17, 27, 6, 16);
    CHECK(decode_is(t, NULL, 0, 0, "", __LINE__));
    /* round trips */
    const char *texts[] = {"hello world", "  hello  world ", "é\n", "abab ab",
                           "hello <tool> world"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        lt_ids ids = {0};
        lt_text back = {0};
        CHECK_OK(
            lt_tokenizer_encode(t, texts[i], (int64_t)strlen(texts[i]), LT_TOK_ADD_SPECIAL, &ids));
        CHECK_OK(lt_tokenizer_decode(t, ids.data, ids.len, LT_TOK_SKIP_SPECIAL, &back));
        int same = back.len == (int64_t)strlen(texts[i]) &&
                   memcmp(back.data, texts[i], (size_t)back.len) == 0;
        /* <tool> absorbed its spaces, so that one comes back without them */
        CHECK(same || i == 4);
        lt_ids_free(&ids);
        lt_text_free(&back);
    }
    /* ids outside the vocabulary */
    lt_text out = {0};
    int32_t bad[] = {22, 32};
    CHECK_FAILS(lt_tokenizer_decode(t, bad, 2, 0, &out), LT_ERR_RANGE, "id 32");
    bad[1] = -1;
    CHECK_FAILS(lt_tokenizer_decode(t, bad, 2, 0, &out), LT_ERR_RANGE, "id -1");
    CHECK(out.len == 0);
    CHECK_FAILS(lt_tokenizer_decode(t, bad, 1, 0x40, &out), LT_ERR_ARG, "flags");
    lt_text_free(&out);

    /* token <-> id */
    int32_t id = -2, special = -1;
    CHECK_OK(lt_tokenizer_token_to_id(t, "▁hello", (int64_t)strlen("▁hello"), &id));
    CHECK(id == 22);
    CHECK_OK(lt_tokenizer_token_to_id(t, "<tool>", 6, &id));
    CHECK(id == 30);
    CHECK_OK(lt_tokenizer_token_to_id(t, "nope", 4, &id));
    CHECK(id == -1);
    lt_text s = {0};
    CHECK_OK(lt_tokenizer_id_to_token(t, 22, &s));
    CHECK(s.len == (int64_t)strlen("▁hello") && strcmp(s.data, "▁hello") == 0);
    s.len = 0;
    CHECK_OK(lt_tokenizer_id_to_token(t, 4, &s));
    CHECK(strcmp(s.data, "<0xC3>") == 0);
    CHECK_FAILS(lt_tokenizer_id_to_token(t, 99, &s), LT_ERR_RANGE, "id 99");
    lt_text_free(&s);
    CHECK_OK(lt_tokenizer_is_special(t, 1, &special));
    CHECK(special == 1);
    CHECK_OK(lt_tokenizer_is_special(t, 30, &special));
    CHECK(special == 0);
    CHECK_OK(lt_tokenizer_is_special(t, 31, &special));
    CHECK(special == 1);
    lt_tokenizer_free(t);
}

static void test_metaspace(void) {
    lt_tokenizer *t = load("sp_metaspace", 0);
    if (!t) return;
    ENC(t, "hello world", 0, 22, 27);
    /* prepend_scheme "first": only the piece at the start of the text gets a ▁ */
    ENC(t, "<s>hello", 0, 1, 11, 19, 20);
    ENC(t, "hello<s> world", 0, 22, 1, 27);
    ENC(t, " hello", 0, 22);
    ENC(t, "hello  world", 0, 22, 6, 27);
    /* the Metaspace decoder drops the ▁ of the first token only */
    DEC(t, 0, "hello world", 22, 27);
    DEC(t, 0, "hello  world", 22, 6, 27);
    DEC(t, 0, "<s> hello", 1, 22);
    STREAM(t, 0, 22, 6, 27, 1, 22);
    STREAM(t, LT_TOK_SKIP_SPECIAL, 1, 22, 4, 5, 27);
    lt_tokenizer_free(t);
}

static void test_bytelevel(void) {
    lt_tokenizer *t = load("bl_tiny", 1);
    if (!t) return;
    lt_tokenizer_info info;
    CHECK_OK(lt_tokenizer_get_info(t, &info));
    CHECK(info.kind == LT_TOK_KIND_BPE_BYTELEVEL);
    CHECK(info.vocab_size == 31 && info.bos_id == 29 && info.eos_id == 30);
    CHECK(info.unk_id == -1 && info.pad_id == -1);
    /* the ByteLevel post-processor adds nothing; no add_bos_token key in the config */
    CHECK(info.add_bos == 0 && info.add_eos == 0 && info.clean_up_spaces == 1);
    ENC(t, "hello world!", LT_TOK_ADD_SPECIAL, 18, 23, 0);
    /* ignore_merges: a whole pre-token in the vocabulary is one token, though no merge
       makes it */
    ENC(t, "lo", 0, 27);
    ENC(t, "lol", 0, 6, 7, 6);
    ENC(t, "é", 0, 24);
    ENC(t, "héllo", 0, 5, 24, 16, 7);
    ENC(t, "hello\n\nworld", 0, 18, 1, 1, 9, 20, 22);
    ENC(t, "  hello", 0, 2, 2, 18);
    ENC(t, "<|begin_of_text|>hello", 0, 29, 18);
    ENC(t, "helloworld", 0, 18, 9, 20, 22);
    /* Letters new in Unicode 15 and 16 are \p{L} as in the reference's Oniguruma tables:
       "lo" + letter is one pre-token (so no ignore_merges "lo"); a symbol is not. The
       letter's own bytes are not in this vocabulary and drop out. */
    ENC(t, "lo\xf0\xb1\x8d\x90", 0, 6, 7); /* U+31350, CJK extension H (Unicode 15) */
    ENC(t, "lo\xf0\xae\xaf\xb0", 0, 6, 7); /* U+2EBF0, CJK extension I (Unicode 15.1) */
    ENC(t, "lo\xe1\xb2\x89", 0, 6, 7);     /* U+1C89, Cyrillic TJE (Unicode 16) */
    ENC(t, "lo\xe2\x82\xac", 0, 27);       /* U+20AC, the euro sign */
    DEC(t, 0, "hello world!", 18, 23, 0);
    DEC(t, 0, "<|begin_of_text|>hello<|end_of_text|>", 29, 18, 30);
    DEC(t, LT_TOK_SKIP_SPECIAL, "hello", 29, 18, 30);
    /* bytes back to UTF-8, invalid sequences lossy (one U+FFFD per maximal subpart) */
    DEC(t, 0, "é", 10, 11);
    DEC(t, 0, "\xef\xbf\xbd", 10);
    DEC(t, 0, "\xef\xbf\xbd!", 10, 0);
    DEC(t, 0, "\xef\xbf\xbd\xef\xbf\xbd", 11, 10);
    DEC(t, 0, "\xef\xbf\xbd", 12, 13); /* EF BF: a truncated sequence is one U+FFFD */
    /* streams: a partial character waits for the id that completes it */
    lt_decode_stream *s = NULL;
    CHECK_OK(lt_decode_stream_new(&s, t, 0));
    lt_text out = {0};
    CHECK_OK(lt_decode_stream_push(s, 18, &out));
    CHECK(out.len == 5 && memcmp(out.data, "hello", 5) == 0);
    CHECK_OK(lt_decode_stream_push(s, 10, &out));
    CHECK(out.len == 5);
    CHECK_OK(lt_decode_stream_push(s, 11, &out));
    CHECK(out.len == 7 && memcmp(out.data + 5, "é", 2) == 0);
    CHECK_OK(lt_decode_stream_push(s, 10, &out));
    CHECK_OK(lt_decode_stream_flush(s, &out));
    CHECK(out.len == 10 && memcmp(out.data + 7, "\xef\xbf\xbd", 3) == 0);
    CHECK_FAILS(lt_decode_stream_push(s, 31, &out), LT_ERR_RANGE, "id 31");
    /* after a flush the stream starts over */
    out.len = 0;
    CHECK_OK(lt_decode_stream_push(s, 23, &out));
    CHECK_OK(lt_decode_stream_flush(s, &out));
    CHECK(out.len == 6 && memcmp(out.data, " world", 6) == 0);
    lt_text_free(&out);
    lt_decode_stream_free(s);
    STREAM(t, 0, 18, 10, 11, 23, 12, 13, 14, 0);
    STREAM(t, LT_TOK_SKIP_SPECIAL, 29, 10, 30, 11, 18);
    STREAM(t, 0, 10, 10, 10);
    STREAM(t, 0, 12, 13);
    lt_tokenizer_free(t);
}

/* Invalid UTF-8 becomes U+FFFD, one per maximal invalid subpart (the WHATWG count); the
   byte-level fixture encodes each U+FFFD (EF BF BD) as token 26. */
static void test_invalid_utf8(void) {
    lt_tokenizer *t = load("bl_tiny", 0);
    if (!t) return;
    static const struct {
        const char *bytes;
        int fffd; /* U+FFFD characters a WHATWG decoder makes */
    } cases[] = {
        {"\x80", 1},         /* lone continuation byte */
        {"\xbf\x80\xbf", 3}, /* three of them */
        {"\xff", 1},         /* never valid */
        {"\xfe\xff", 2},
        {"\xc3", 1},                 /* truncated 2-byte sequence */
        {"\xe2\x82", 1},             /* truncated 3-byte sequence: one subpart */
        {"\xf0\x9f\x98", 1},         /* truncated 4-byte sequence */
        {"h\xe2\x82h", 1},           /* ... in the middle */
        {"\xc0\xaf", 2},             /* overlong: C0 is never valid */
        {"\xe0\x80\xaf", 3},         /* overlong 3-byte: E0 80 is no valid prefix */
        {"\xed\xa0\x80", 3},         /* a surrogate (U+D800) encoded in UTF-8 */
        {"\xed\xbf\xbf", 3},         /* U+DFFF */
        {"\xf4\x90\x80\x80", 4},     /* above U+10FFFF */
        {"\xf8\x88\x80\x80\x80", 5}, /* 5-byte form */
        {"\xe2!\xa1", 2},
        {"\xf0\x9f\x98\x80", 0}, /* valid: U+1F600 */
        {"h\xc3\xa9llo", 0},     /* valid */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t n = (int64_t)strlen(cases[i].bytes);
        lt_ids ids = {0};
        CHECK_OK(lt_tokenizer_encode(t, cases[i].bytes, n, 0, &ids));
        int count = 0;
        for (int64_t k = 0; k < ids.len; k++) count += ids.data[k] == 26;
        if (count != cases[i].fffd)
            fprintf(stderr, "invalid UTF-8 case %zu: %d U+FFFD, want %d\n", i, count,
                    cases[i].fffd);
        CHECK(count == cases[i].fffd);
        /* decoding gives back the text with the replacements */
        lt_text back = {0};
        CHECK_OK(lt_tokenizer_decode(t, ids.data, ids.len, 0, &back));
        int found = 0;
        for (int64_t k = 0; k + 3 <= back.len; k++)
            if (memcmp(back.data + k, "\xef\xbf\xbd", 3) == 0) found++;
        CHECK(found == cases[i].fffd);
        lt_ids_free(&ids);
        lt_text_free(&back);
    }
    /* the SentencePiece fixture too: U+FFFD has no byte tokens there, so it is <unk> */
    lt_tokenizer *sp = load("sp_tiny", 0);
    if (sp) {
        ENC(sp, "hello\xff", 0, 22, 0);
        ENC(sp, "\xe2\x82 hello", 0, 6, 0, 22);
        lt_tokenizer_free(sp);
    }
    lt_tokenizer_free(t);
}

static void test_streams(void) {
    lt_tokenizer *t = load("sp_tiny", 0);
    if (!t) return;
    static const int32_t seqs[][8] = {
        {22, 27, 6, 4, 5, 0, 1, 2},  {4, 5, 22, 4, 4, 5, 6, 16},  {6, 6, 22, 6, 17, 27, 6, 16},
        {1, 4, 2, 5, 6, 29, 30, 27}, {3, 22, 3, 6, 3, 31, 16, 0},
    };
    static const int32_t flag_sets[4] = {0, LT_TOK_SKIP_SPECIAL, LT_TOK_CLEANUP_SPACES,
                                         LT_TOK_SKIP_SPECIAL | LT_TOK_CLEANUP_SPACES};
    /* every prefix of every sequence, under every flag combination */
    for (size_t i = 0; i < sizeof seqs / sizeof seqs[0]; i++)
        for (int f = 0; f < 4; f++)
            for (int64_t n = 0; n <= 8; n++) CHECK(stream_matches(t, seqs[i], n, flag_sets[f]));
    /* the held-back ByteFallback run comes out with the next ordinary token */
    lt_decode_stream *s = NULL;
    CHECK_OK(lt_decode_stream_new(&s, t, 0));
    lt_text out = {0};
    CHECK_OK(lt_decode_stream_push(s, 4, &out));
    CHECK_OK(lt_decode_stream_push(s, 5, &out));
    CHECK(out.len == 0);
    CHECK_OK(lt_decode_stream_push(s, 22, &out));
    CHECK(out.len == 8 && memcmp(out.data, "é hello", 8) == 0);
    CHECK_OK(lt_decode_stream_flush(s, &out));
    CHECK(out.len == 8);
    lt_text_free(&out);
    lt_decode_stream_free(s);
    CHECK_FAILS(lt_decode_stream_new(&s, t, 0x10), LT_ERR_ARG, "flags");
    lt_tokenizer_free(t);

    t = load("bl_tiny", 0);
    if (!t) return;
    static const int32_t bl[][8] = {
        {18, 10, 11, 23, 12, 13, 14, 0},
        {10, 0, 11, 10, 29, 11, 30, 1},
        {12, 13, 12, 13, 14, 14, 2, 2},
    };
    for (size_t i = 0; i < sizeof bl / sizeof bl[0]; i++)
        for (int64_t n = 0; n <= 8; n++) {
            CHECK(stream_matches(t, bl[i], n, 0));
            CHECK(stream_matches(t, bl[i], n, LT_TOK_SKIP_SPECIAL | LT_TOK_CLEANUP_SPACES));
        }
    lt_tokenizer_free(t);
}

static void test_batch(void) {
    lt_tokenizer *t = load("bl_tiny", 0);
    lt_tokenizer *sp = load("sp_tiny", 1);
    if (!t || !sp) {
        lt_tokenizer_free(t);
        lt_tokenizer_free(sp);
        return;
    }
    static const char *const words[] = {
        "hello", " world", "!",       "\n", "lo", "é", "\xff", "  ", "<|begin_of_text|>",
        "<s>",   "ab",     " <tool> "};
    enum { N = 64 };
    char *texts[N];
    int64_t lens[N];
    for (int i = 0; i < N; i++) {
        texts[i] = calloc(256, 1);
        if (!texts[i]) return;
        for (int k = 0; k < (i * 7) % 13; k++) strcat(texts[i], words[(i * 5 + k * 3) % 12]);
        lens[i] = (int64_t)strlen(texts[i]);
    }
    const lt_tokenizer *toks[2] = {t, sp};
    for (int which = 0; which < 2; which++) {
        for (int threads = 0; threads <= 3; threads++) {
            lt_ids outs[N];
            memset(outs, 0, sizeof outs);
            CHECK_OK(lt_tokenizer_encode_batch(toks[which], (const char *const *)texts, lens, N,
                                               LT_TOK_ADD_SPECIAL, threads, outs));
            for (int i = 0; i < N; i++) {
                lt_ids one = {0};
                CHECK_OK(
                    lt_tokenizer_encode(toks[which], texts[i], lens[i], LT_TOK_ADD_SPECIAL, &one));
                CHECK(one.len == outs[i].len &&
                      (one.len == 0 || memcmp(one.data, outs[i].data, (size_t)one.len * 4) == 0));
                lt_ids_free(&one);
                lt_ids_free(&outs[i]);
            }
        }
    }
    /* lens may be NULL for NUL-terminated texts */
    lt_ids outs2[2] = {{0}, {0}};
    const char *two[2] = {"hello", "lo"};
    CHECK_OK(lt_tokenizer_encode_batch(t, two, NULL, 2, 0, 2, outs2));
    CHECK(outs2[0].len == 1 && outs2[0].data[0] == 18 && outs2[1].len == 1 &&
          outs2[1].data[0] == 27);
    lt_ids_free(&outs2[0]);
    lt_ids_free(&outs2[1]);
    int64_t bad_lens[2] = {5, -1};
    CHECK_FAILS(lt_tokenizer_encode_batch(t, two, bad_lens, 2, 0, 2, outs2), LT_ERR_ARG, "text 1");
    for (int i = 0; i < N; i++) free(texts[i]);
    lt_tokenizer_free(t);
    lt_tokenizer_free(sp);
}

/* ---- malformed files --------------------------------------------------------------- */

static char tmp_dir[256];

static const char *write_tmp(const char *name, const char *data, size_t len) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return path;
    fwrite(data, 1, len, f);
    fclose(f);
    return path;
}

/* A minimal valid tokenizer with a hole where the case puts its text. */
#define MINI_MODEL                                                                                 \
    "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a " \
    "b\"]}"

static void test_malformed(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "%s/lt_tok_test_XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        CHECK(!"mkdtemp failed");
        return;
    }
    /* the minimal file works: no normalizer, pre-tokenizer or decoder */
    const char *ok_json = "{" MINI_MODEL "}";
    lt_tokenizer *t = NULL;
    CHECK_OK(lt_tokenizer_load(&t, write_tmp("ok.json", ok_json, strlen(ok_json)), NULL));
    if (t) {
        ENC(t, "ab", 0, 2);
        ENC(t, "aab", 0, 0, 2);
        DEC(t, 0, "a b ab", 0, 1, 2); /* no decoder: tokens joined with spaces */
        lt_tokenizer_free(t);
    }

    static const struct {
        const char *json;
        int status;
        const char *needle;
    } cases[] = {
        {"", LT_ERR_FORMAT, "empty"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", LT_ERR_FORMAT, "not valid JSON"},
        {"{" MINI_MODEL "} trailing", LT_ERR_FORMAT, "not valid JSON"},
        {"[1, 2]", LT_ERR_FORMAT, "not a JSON object"},
        {"{}", LT_ERR_FORMAT, "missing field 'model'"},
        {"{\"model\": 5}", LT_ERR_FORMAT, "model is a number"},
        {"{\"model\": {\"type\": 7}}", LT_ERR_FORMAT, "model.type is a number"},
        {"{\"model\": {\"vocab\": {}}}", LT_ERR_FORMAT, "missing field 'type'"},
        {"{\"model\": {\"type\": \"BPE\", \"merges\": []}}", LT_ERR_FORMAT,
         "missing field 'vocab'"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}", LT_ERR_FORMAT,
         "missing field 'merges'"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}}", LT_ERR_FORMAT,
         "model.vocab is an array"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}",
         LT_ERR_FORMAT, "model.vocab['a'] is a string"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1.5}, \"merges\": []}}", LT_ERR_FORMAT,
         "not an integer"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1e300}, \"merges\": []}}",
         LT_ERR_FORMAT, "outside"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1e999}, \"merges\": []}}",
         LT_ERR_FORMAT, "model.vocab['a']"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 99999999999999999999}, \"merges\": "
         "[]}}",
         LT_ERR_FORMAT, "outside"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", LT_ERR_FORMAT,
         "outside"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}",
         LT_ERR_FORMAT, "id 0 is given to both"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"a\": 1}, \"merges\": []}}",
         LT_ERR_FORMAT, "appears twice"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a c\"]}}",
         LT_ERR_FORMAT, "'c' is not in the vocabulary"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
         LT_ERR_FORMAT, "merged token 'ab'"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}}",
         LT_ERR_FORMAT, "not two tokens"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [5]}}", LT_ERR_FORMAT,
         "model.merges[0] is a number"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": "
         "[\"a b\", [\"a\", \"b\"]]}}",
         LT_ERR_FORMAT, "mixes"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": {}}}", LT_ERR_FORMAT,
         "model.merges is an object"},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", LT_ERR_UNSUPPORTED, "WordPiece"},
        {"{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", LT_ERR_UNSUPPORTED, "Unigram"},
        {"{\"model\": {\"type\": \"Magic\"}}", LT_ERR_FORMAT,
         "'Magic' is not a tokenizers model type"},
        {"{\"model\": {\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {}, \"merges\": []}}",
         LT_ERR_UNSUPPORTED, "dropout"},
        {"{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {}, \"merges\": "
         "[]}}",
         LT_ERR_FORMAT, "unk_token '<unk>'"},
        {"{\"model\": {\"type\": \"BPE\", \"byte_fallback\": \"yes\", \"vocab\": {}, \"merges\": "
         "[]}}",
         LT_ERR_FORMAT, "model.byte_fallback is a string"},
        {"{\"normalizer\": {\"type\": \"NFKC\"}, " MINI_MODEL "}", LT_ERR_UNSUPPORTED, "NFKC"},
        {"{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": "
         "\"Lowercase\"}]}, " MINI_MODEL "}",
         LT_ERR_UNSUPPORTED, "normalizer.normalizers[0]: normalizer type 'Lowercase'"},
        {"{\"normalizer\": {\"type\": \"Frobnicate\"}, " MINI_MODEL "}", LT_ERR_FORMAT,
         "Frobnicate"},
        {"{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}}, " MINI_MODEL
         "}",
         LT_ERR_FORMAT, "missing field 'content'"},
        {"{\"normalizer\": {\"type\": \"Replace\", \"pattern\": \" \", \"content\": "
         "\"x\"}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "normalizer.pattern is a string"},
        {"{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"(a\"}, \"content\": "
         "\"x\"}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "bad regular expression"},
        {"{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"[a-\"}, "
         "\"behavior\": \"Isolated\", \"invert\": false}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "bad regular expression"},
        {"{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": "
         "\"Sideways\", \"invert\": false}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "Sideways"},
        {"{\"pre_tokenizer\": {\"type\": \"Whitespace\"}, " MINI_MODEL "}", LT_ERR_UNSUPPORTED,
         "Whitespace"},
        {"{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"ab\"}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "not a single character"},
        {"{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"x\", "
         "\"prepend_scheme\": \"sometimes\"}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "prepend_scheme"},
        {"{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": 3}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "pretokenizers is a number"},
        {"{\"decoder\": {\"type\": \"CTC\"}, " MINI_MODEL "}", LT_ERR_UNSUPPORTED, "CTC"},
        {"{\"decoder\": {\"type\": \"Strip\", \"content\": \" \", \"start\": -1, \"stop\": "
         "0}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "decoder.start"},
        {"{\"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Fuse\"}, {\"type\": "
         "\"ByteFallback\"}]}, " MINI_MODEL "}",
         LT_ERR_UNSUPPORTED, "ByteFallback"},
        {"{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": "
         "{\"id\": \"<s>\", \"type_id\": 0}}], \"special_tokens\": {}}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "'<s>' is not in special_tokens"},
        {"{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": "
         "{\"id\": \"x\", \"type_id\": 0}}], \"special_tokens\": {\"x\": {\"id\": \"x\", \"ids\": "
         "[0], \"tokens\": [\"a\"]}}}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "no $A"},
        {"{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"Sequence\": "
         "{\"id\": \"A\", \"type_id\": 0}}, {\"SpecialToken\": {\"id\": \"x\", \"type_id\": 0}}], "
         "\"special_tokens\": {\"x\": {\"id\": \"x\", \"ids\": [77], \"tokens\": "
         "[\"?\"]}}}, " MINI_MODEL "}",
         LT_ERR_FORMAT, "adds id 77"},
        {"{\"post_processor\": {\"type\": \"Magic\"}, " MINI_MODEL "}", LT_ERR_UNSUPPORTED,
         "Magic"},
        {"{\"added_tokens\": 5, " MINI_MODEL "}", LT_ERR_FORMAT, "added_tokens is a number"},
        {"{\"added_tokens\": [{\"id\": 3}], " MINI_MODEL "}", LT_ERR_FORMAT,
         "added_tokens[0]: missing field 'content'"},
        {"{\"added_tokens\": [{\"id\": \"3\", \"content\": \"x\"}], " MINI_MODEL "}", LT_ERR_FORMAT,
         "added_tokens[0].id is a string"},
        {"{\"added_tokens\": [{\"id\": 3, \"content\": \"x\", \"special\": 1}], " MINI_MODEL "}",
         LT_ERR_FORMAT, "added_tokens[0].special is a number"},
        {"{\"version\": 1, " MINI_MODEL "}", LT_ERR_FORMAT, "version is a number"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\\u0000b\": 0}, \"merges\": []}}",
         LT_ERR_FORMAT, "NUL"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\xff\": 0}, \"merges\": []}}",
         LT_ERR_FORMAT, "not valid UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_tmp("bad.json", cases[i].json, strlen(cases[i].json));
        t = NULL;
        int st = lt_tokenizer_load(&t, path, NULL);
        if (st != cases[i].status || !strstr(lt_last_error(), cases[i].needle) ||
            !strstr(lt_last_error(), "bad.json"))
            fprintf(stderr, "malformed case %zu (%.80s): status %d, message: %s\n", i,
                    cases[i].json, st, lt_last_error());
        CHECK(st == cases[i].status && t == NULL);
        CHECK(strstr(lt_last_error(), cases[i].needle) != NULL);
        CHECK(strstr(lt_last_error(), "bad.json") != NULL); /* names the file */
        lt_tokenizer_free(t);
    }

    /* deep nesting */
    {
        enum { DEPTH = 5000 };
        char *deep = malloc(2 * DEPTH + 64);
        if (deep) {
            size_t n = 0;
            n += (size_t)sprintf(deep, "{\"x\": ");
            for (int i = 0; i < DEPTH; i++) deep[n++] = '[';
            for (int i = 0; i < DEPTH; i++) deep[n++] = ']';
            deep[n++] = '}';
            CHECK_FAILS(lt_tokenizer_load(&t, write_tmp("deep.json", deep, n), NULL), LT_ERR_FORMAT,
                        "nested deeper");
            free(deep);
        }
    }
    /* a missing file */
    char missing[512];
    snprintf(missing, sizeof missing, "%s/no_such_tokenizer.json", tmp_dir);
    CHECK_FAILS(lt_tokenizer_load(&t, missing, NULL), LT_ERR_IO, "no_such_tokenizer.json");
    CHECK_FAILS(lt_tokenizer_load(NULL, missing, NULL), LT_ERR_ARG, "");
    CHECK_FAILS(lt_tokenizer_load(&t, NULL, NULL), LT_ERR_ARG, "");

    /* tokenizer_config.json problems name that file */
    char good[512];
    snprintf(good, sizeof good, "%s", write_tmp("good.json", ok_json, strlen(ok_json)));
    static const struct {
        const char *json;
        const char *needle;
    } configs[] = {
        {"{\"add_bos_token\": \"yes\"}", "add_bos_token is a string"},
        {"{\"bos_token\": 5}", "bos_token is a number"},
        {"{\"bos_token\": {\"lstrip\": false}}", "missing field 'content'"},
        {"{\"clean_up_tokenization_spaces\": 1}", "clean_up_tokenization_spaces is a number"},
        {"{\"additional_special_tokens\": \"<x>\"}", "additional_special_tokens is a string"},
        {"{\"add_bos_token\": true}", "no bos_token"},
        {"{\"bos_token\": \"<s>\"", "not valid JSON"},
        {"[]", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) {
        const char *path = write_tmp("bad_config.json", configs[i].json, strlen(configs[i].json));
        t = NULL;
        int st = lt_tokenizer_load(&t, good, path);
        if (st != LT_ERR_FORMAT || !strstr(lt_last_error(), configs[i].needle))
            fprintf(stderr, "config case %zu: status %d, message: %s\n", i, st, lt_last_error());
        CHECK(st == LT_ERR_FORMAT && t == NULL);
        CHECK(strstr(lt_last_error(), configs[i].needle) != NULL);
        CHECK(strstr(lt_last_error(), "bad_config.json") != NULL);
    }
    /* a config special token the vocabulary lacks becomes a new special added token */
    const char *cfg = "{\"pad_token\": \"<pad>\", \"bos_token\": \"a\", \"add_bos_token\": true}";
    CHECK_OK(lt_tokenizer_load(&t, good, write_tmp("cfg.json", cfg, strlen(cfg))));
    if (t) {
        lt_tokenizer_info info;
        CHECK_OK(lt_tokenizer_get_info(t, &info));
        CHECK(info.pad_id == 3 && info.vocab_size == 4 && info.bos_id == 0 && info.add_bos == 1);
        /* "a" is an added (special) token now, split out before the merges see it */
        ENC(t, "ab<pad>", LT_TOK_ADD_SPECIAL, 0, 0, 1, 3);
        ENC(t, "ab", LT_TOK_NO_SPLIT_SPECIAL, 2);
        DEC(t, LT_TOK_SKIP_SPECIAL, "b", 0, 1, 3);
        lt_tokenizer_free(t);
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    CHECK(system(cmd) == 0);
}

int main(void) {
    test_sp_info();
    test_sp_encode();
    test_sp_decode();
    test_metaspace();
    test_bytelevel();
    test_invalid_utf8();
    test_streams();
    test_batch();
    test_malformed();
    return check_summary();
}
