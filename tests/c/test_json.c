/* test_json.c - the JSON parser behind lua/luatrain/json.lua (src/io/json.c): the node
 * list it hands out, its error positions, what it refuses that cJSON alone accepts, and
 * documents cut short or mutated at random, each copied into a buffer of exactly its size.
 * Built a second time under AddressSanitizer: malformed input must give an error, never a
 * crash, a leak or a read past the text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lt_io.h"

static lt_json_doc *doc;
static const lt_json_node *nodes;
static int64_t count;

/* Parse text[0..len) from an exact-size copy, so a read past the end is caught. */
static int parse_n(const char *text, size_t len) {
    char *copy = malloc(len ? len : 1);
    memcpy(copy, text, len);
    int st = lt_json_parse(doc, copy, (int64_t)len, "doc", &nodes, &count);
    /* the node strings belong to the document, not the text */
    free(copy);
    return st;
}

static int parse(const char *text) { return parse_n(text, strlen(text)); }

/* The call fails with LT_ERR_FORMAT and exactly `msg`. */
static void check_error(const char *text, size_t len, const char *msg) {
    int st = parse_n(text, len);
    if (st == LT_ERR_FORMAT && strcmp(lt_last_error(), msg) == 0) {
        check_passed++;
    } else {
        check_failed++;
        fprintf(stderr, "parsing \"%.*s\": want \"%s\", got %d \"%s\"\n", (int)len, text, msg, st,
                st ? lt_last_error() : "");
    }
}

#define ERR(text, msg) check_error(text, sizeof(text) - 1, msg)

static int str_is(const char *p, int64_t len, const char *want, size_t want_len) {
    return p && len == (int64_t)want_len && memcmp(p, want, want_len) == 0;
}

static void test_nodes(void) {
    CHECK_OK(parse(" {\"a\": [1, -2.5e3, true, false, null], \"b\\u0000c\": \"x\\u0000y\","
                   " \"e\": {}, \"f\": \"\\u00e9\\uD83D\\uDE00\"} "));
    CHECK(count == 10);
    if (count != 10) return;
    const lt_json_node *n = nodes;
    CHECK(n[0].type == LT_JSON_OBJECT && n[0].len == 4 && n[0].key == NULL && n[0].key_pos == -1);
    CHECK(n[1].type == LT_JSON_ARRAY && n[1].len == 5 && str_is(n[1].key, n[1].key_len, "a", 1));
    CHECK(n[1].key_pos == 2);
    CHECK(n[2].type == LT_JSON_NUMBER && n[2].number == 1 && n[2].key == NULL);
    CHECK(n[3].type == LT_JSON_NUMBER && n[3].number == -2500);
    CHECK(n[4].type == LT_JSON_TRUE && n[5].type == LT_JSON_FALSE && n[6].type == LT_JSON_NULL);
    /* \u0000 is one byte of the key and of the string */
    CHECK(n[7].type == LT_JSON_STRING && str_is(n[7].key, n[7].key_len, "b\0c", 3));
    CHECK(str_is(n[7].str, n[7].len, "x\0y", 3));
    CHECK(n[8].type == LT_JSON_OBJECT && n[8].len == 0 && str_is(n[8].key, n[8].key_len, "e", 1));
    CHECK(n[9].type == LT_JSON_STRING && str_is(n[9].str, n[9].len, "\xc3\xa9\xf0\x9f\x98\x80", 6));

    CHECK_OK(parse("\"top\""));
    CHECK(count == 1 && nodes[0].type == LT_JSON_STRING && str_is(nodes[0].str, nodes[0].len, "top", 3));
    CHECK_OK(parse("1e400"));
    CHECK(count == 1 && nodes[0].number > 1e308);
    CHECK_OK(parse("-0"));
    CHECK(count == 1 && nodes[0].number == 0);
    CHECK_OK(parse("123456789012345678901234567890"));
    CHECK(count == 1 && nodes[0].number == 1.2345678901234568e29);
    CHECK_OK(parse("[0.1, 5e-324, 9007199254740993]"));
    CHECK(count == 4 && nodes[1].number == 0.1 && nodes[2].number == 5e-324 &&
          nodes[3].number == 9007199254740992.0);
}

static void test_errors(void) {
    ERR("", "doc:1:1: unexpected end of input");
    ERR("[1,\n 2", "doc:2:3: unexpected end of input (expected ',' or ']' in array)");
    ERR("{\"a\" 1}", "doc:1:6: expected ':' after key \"a\", found '1'");
    ERR("[1,]", "doc:1:4: expected a value, found ']'");
    ERR("\"ab", "doc:1:4: unterminated string");
    ERR("\"\\q\"", "doc:1:2: bad escape \\q");
    ERR("\"\\u00G0\"", "doc:1:2: bad \\u escape (expected 4 hex digits)");
    ERR("\"\\u00", "doc:1:2: bad \\u escape (expected 4 hex digits)");
    ERR("\"\\uD800\\u00", "doc:1:2: lone surrogate \\uD800 (a high surrogate not followed by a low one)");
    ERR("\"\\uDFFF\"", "doc:1:2: lone surrogate \\uDFFF (a low surrogate with no high one before it)");
    ERR("\"a\x01\"", "doc:1:3: control character 0x01 in string (write it as an escape)");
    ERR("\"\xf0\x9f\x98\"", "doc:1:2: invalid UTF-8 in string (byte 0xf0)");
    ERR("\"\xc1\xbf\"", "doc:1:2: invalid UTF-8 in string (byte 0xc1)");
    ERR("\"\xf5\x80\x80\x80\"", "doc:1:2: invalid UTF-8 in string (byte 0xf5)");
    ERR("\"\xe0\x9f\xbf\"", "doc:1:2: invalid UTF-8 in string (byte 0xe0)");
    ERR("\"\xf0\x8f\xbf\xbf\"", "doc:1:2: invalid UTF-8 in string (byte 0xf0)");
    ERR("00", "doc:1:1: leading zero in number '00'");
    ERR("[1.]", "doc:1:2: bad number '1.'");
    ERR("2e", "doc:1:1: bad number '2e'");
    ERR("{} 1", "doc:1:4: trailing characters after the document ('1')");
    ERR("{}\0", "doc:1:3: trailing characters after the document (byte 0x00)");
    ERR("\x0b[]", "doc:1:1: expected a value, found byte 0x0b");
    ERR("\xef\xbb\xbf[]", "doc:1:1: UTF-8 byte order mark before the document (JSON text must "
        "not start with one)");
    ERR("tru", "doc:1:1: expected a value, found 't'");
    ERR("fals", "doc:1:1: expected a value, found 'f'");
    ERR("[nul]", "doc:1:2: expected a value, found 'n'");
    ERR("1234567890123456789012345678901234567890123456789012345678901234",
        "doc:1:1: number '1234567890123456789012345678901234567890...' has 64 characters; at "
        "most 63 are read");
    CHECK_OK(parse("123456789012345678901234567890123456789012345678901234567890123"));

    CHECK_FAILS(lt_json_parse(NULL, "1", 1, "x", &nodes, &count), LT_ERR_ARG, "NULL");
    CHECK_FAILS(lt_json_parse(doc, NULL, 1, "x", &nodes, &count), LT_ERR_ARG, "NULL");
    CHECK_FAILS(lt_json_parse(doc, "1", -1, "x", &nodes, &count), LT_ERR_ARG, "negative");
    CHECK_FAILS(lt_json_parse(doc, "", 0, NULL, &nodes, &count), LT_ERR_FORMAT,
                "JSON:1:1: unexpected end of input");
    CHECK_FAILS(lt_json_doc_new(NULL), LT_ERR_ARG, "NULL");
}

static void test_depth(void) {
    enum { N = 100000 };
    char *s = malloc(2 * N + 1);
    for (int i = 0; i < N; i++) s[i] = '[';
    check_error(s, N, "doc:1:513: nesting deeper than 512");
    for (int i = 0; i < 512; i++) s[512 + i] = ']';
    CHECK_OK(parse_n(s, 1024));
    CHECK(count == 512 && nodes[0].len == 1 && nodes[511].len == 0);
    s[0] = ' ';
    s[512] = '1';
    CHECK_OK(parse_n(s, 1024)); /* 511 arrays around a number */
    CHECK(count == 512 && nodes[510].len == 1 && nodes[511].type == LT_JSON_NUMBER);
    free(s);
}

/* A document of more nodes than lt_json_doc_clear keeps buffers for, parsed twice. */
static void test_large(void) {
    enum { N = 100000 };
    char *s = malloc(8 * N + 16);
    size_t k = 0;
    s[k++] = '[';
    for (int i = 0; i < N; i++) k += (size_t)sprintf(s + k, "%s\"%d\"", i ? "," : "", i % 1000);
    s[k++] = ']';
    for (int round = 0; round < 2; round++) {
        CHECK_OK(parse_n(s, k));
        CHECK(count == N + 1 && nodes[0].len == N);
        CHECK(count == N + 1 && str_is(nodes[N].str, nodes[N].len, "999", 3));
        lt_json_doc_clear(doc);
    }
    free(s);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* Every prefix of a document, and random mutations of it: an error or a document, never a
   crash; each success has as many nodes as its values. */
static void test_fuzz(void) {
    static const char seed[] =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xc3\xa9 \\u00e9 \\ud83d\\ude00 "
        "\\\"q\\\" \\\\ \\/ \\n\"}, {\"role\": \"assistant\", \"content\": \"ok\"}],\n"
        " \"n\": [0, -1.5e-3, 12345678901234567890, true, false, null, [], {}]}";
    size_t len = sizeof seed - 1;
    CHECK_OK(parse_n(seed, len));
    CHECK(count == 17);
    int ok = 0, bad = 0, other = 0;
    for (size_t cut = 0; cut < len; cut++) {
        int st = parse_n(seed, cut);
        if (st == LT_OK) ok++;
        else if (st == LT_ERR_FORMAT) bad++;
        else other++;
    }
    CHECK(ok == 0 && other == 0 && bad == (int)len);
    static const char alphabet[] = "{}[]:,\"\\u0123456789abcdefEe+-.tfnrl \t\n\r\x01\x7f\x80\xc3\xa9\xed\xf4\xff";
    char buf[sizeof seed + 16];
    ok = bad = other = 0;
    for (int iter = 0; iter < 50000; iter++) {
        memcpy(buf, seed, len);
        size_t n = len;
        int edits = 1 + (int)(next_rand() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = next_rand() % n;
            char ch = alphabet[next_rand() % (sizeof alphabet - 1)];
            switch (next_rand() % 3) {
            case 0: buf[at] = ch; break;
            case 1:
                if (n < sizeof buf) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = ch;
                    n++;
                }
                break;
            default:
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
                break;
            }
        }
        int st = parse_n(buf, n);
        if (st == LT_OK) {
            ok++;
            int64_t children = 0;
            for (int64_t i = 0; i < count; i++)
                if (nodes[i].type == LT_JSON_ARRAY || nodes[i].type == LT_JSON_OBJECT)
                    children += nodes[i].len;
            CHECK(children == count - 1);
        } else if (st == LT_ERR_FORMAT) {
            bad++;
        } else {
            other++;
            fprintf(stderr, "mutation %d: status %d: %s\n", iter, st, lt_last_error());
        }
    }
    CHECK(other == 0);
    CHECK(ok > 100 && bad > 1000);
    printf("fuzz: %d parsed, %d refused\n", ok, bad);
}

int main(void) {
    CHECK_OK(lt_json_doc_new(&doc));
    test_nodes();
    test_errors();
    test_depth();
    test_large();
    test_fuzz();
    lt_json_doc_free(doc);
    lt_json_doc_free(NULL);
    return check_summary();
}
