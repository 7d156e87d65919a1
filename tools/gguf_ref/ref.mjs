#!/usr/bin/env node
// Reference outputs from llama.cpp (via node-llama-cpp 3.21.1, prebuilt CPU binary)
// for a GGUF model: tokenization, greedy continuation and next-token log-probs.
//
//   node tools/gguf_ref/ref.mjs --modules <node_modules dir> --model <file.gguf> \
//        --cases <cases.json> --out <out.json> [--threads N] [--ctx N] \
//        [--kv-type f32|f16] [--flash-attn off|auto|on] [--lora adapter.gguf] [--verbose]
//
// Defaults are --kv-type f32 --flash-attn off (near-exact fp32 attention). llama.cpp's own defaults
// (--kv-type f16 --flash-attn auto) store K/V (and, with flash attention, Q·K) in f16 and shift
// log-probs by ~1e-3 on a random tiny model.
//
// See README.md in this folder for the input/output format.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const NLC_VERSION = "3.21.1";

let lastLlamaError = null; // last error line logged by llama.cpp, appended to failures for context

function fail(msg) {
    let line = String(msg).split("\n")[0];
    if (lastLlamaError != null && !line.includes(lastLlamaError)) line += ` (llama.cpp: ${lastLlamaError})`;
    process.stderr.write(`gguf_ref: error: ${line}\n`);
    process.exit(1);
}

function parseArgs(argv) {
    const opts = { threads: 1, ctx: 512, kvType: "f32", flashAttn: "off", verbose: false };
    const valueOpts = {
        "--modules": "modules", "--model": "model", "--cases": "cases", "--out": "out",
        "--threads": "threads", "--ctx": "ctx", "--kv-type": "kvType", "--flash-attn": "flashAttn",
        "--lora": "lora"
    };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a === "--verbose") { opts.verbose = true; continue; }
        if (a === "-h" || a === "--help") {
            process.stdout.write("usage: node ref.mjs --modules DIR --model FILE.gguf --cases CASES.json --out OUT.json " +
                "[--threads N] [--ctx N] [--kv-type f16|f32] [--flash-attn auto|on|off] [--lora ADAPTER.gguf] [--verbose]\n");
            process.exit(0);
        }
        const key = valueOpts[a];
        if (key == null) fail(`unknown argument ${a}`);
        if (i + 1 >= argv.length) fail(`missing value for ${a}`);
        opts[key] = argv[++i];
    }
    for (const k of ["modules", "model", "cases", "out"])
        if (opts[k] == null) fail(`--${k} is required`);
    opts.threads = Number(opts.threads);
    opts.ctx = Number(opts.ctx);
    if (!Number.isInteger(opts.threads) || opts.threads < 1) fail("--threads must be a positive integer");
    if (!Number.isInteger(opts.ctx) || opts.ctx < 1) fail("--ctx must be a positive integer");
    if (!["f16", "f32"].includes(opts.kvType)) fail("--kv-type must be f16 or f32");
    if (!["auto", "on", "off"].includes(opts.flashAttn)) fail("--flash-attn must be auto, on or off");
    return opts;
}

async function loadNodeLlamaCpp(modulesDir) {
    const dir = path.resolve(modulesDir);
    if (!fs.existsSync(path.join(dir, "node-llama-cpp", "package.json")))
        fail(`node-llama-cpp not found under ${dir}`);
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, "node-llama-cpp", "package.json"), "utf8"));
    if (pkg.version !== NLC_VERSION)
        fail(`node-llama-cpp ${pkg.version} found in ${dir}, expected ${NLC_VERSION}`);
    // resolve like a file sitting next to the node_modules folder would
    const req = createRequire(path.join(path.dirname(dir), "__gguf_ref__.js"));
    let entry;
    try {
        entry = req.resolve("node-llama-cpp");
    } catch (e) {
        fail(`cannot resolve node-llama-cpp from ${dir}: ${e.message}`);
    }
    return { nlc: await import(pathToFileURL(entry).href), version: pkg.version };
}

function readCases(file) {
    let cases;
    try {
        cases = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (e) {
        fail(`cannot read cases ${file}: ${e.message}`);
    }
    if (cases == null || !Array.isArray(cases.prompts)) fail(`${file}: expected {"prompts": [...]}`);
    cases.prompts.forEach((p, i) => {
        if (p == null || typeof p !== "object") fail(`prompt ${i}: not an object`);
        if (p.text != null && typeof p.text !== "string") fail(`prompt ${i}: text must be a string`);
        if (p.tokens != null && !(Array.isArray(p.tokens) && p.tokens.every((t) => Number.isInteger(t) && t >= 0)))
            fail(`prompt ${i}: tokens must be a list of non-negative integers`);
        if (p.text == null && p.tokens == null) fail(`prompt ${i}: needs text or tokens`);
        if (p.n_predict != null && !(Number.isInteger(p.n_predict) && p.n_predict >= 0))
            fail(`prompt ${i}: n_predict must be a non-negative integer`);
    });
    return cases.prompts;
}

function sameTokens(a, b) {
    return a.length === b.length && a.every((t, i) => t === b[i]);
}

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    const prompts = readCases(opts.cases);
    if (!fs.existsSync(opts.model)) fail(`model file not found: ${opts.model}`);

    const timings = {};
    let t = performance.now();
    const { nlc, version } = await loadNodeLlamaCpp(opts.modules);
    const { getLlama, LlamaLogLevel } = nlc;

    // CPU only, prebuilt binary only: never build from source, never download llama.cpp sources.
    let llama;
    try {
        llama = await getLlama({
            gpu: false,
            build: "never",
            usePrebuiltBinaries: true,
            skipDownload: true,
            progressLogs: false,
            maxThreads: opts.threads,
            logLevel: opts.verbose ? LlamaLogLevel.debug : LlamaLogLevel.error,
            logger: (level, message) => {
                if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal) {
                    const m = message.trim();
                    if (m !== "" && !/failed to load model$/.test(m)) lastLlamaError = m;
                }
                process.stderr.write(`[llama.cpp ${level}] ${message}${message.endsWith("\n") ? "" : "\n"}`);
            }
        });
    } catch (e) {
        if (e?.name === "NoBinaryFoundError" || String(e?.message).includes("NoBinaryFoundError"))
            fail("no usable prebuilt llama.cpp CPU binary (is @node-llama-cpp/linux-x64 3.21.1 installed in --modules?); " +
                "building from source is disabled");
        throw e;
    }
    if (llama.buildType !== "prebuilt" || llama.gpu !== false)
        fail(`unexpected llama.cpp binary: buildType=${llama.buildType} gpu=${llama.gpu}`);
    timings.backend_s = (performance.now() - t) / 1000;

    t = performance.now();
    const model = await llama.loadModel({ modelPath: path.resolve(opts.model), gpuLayers: 0 });
    timings.model_load_s = (performance.now() - t) / 1000;

    const md = model.fileInfo.metadata ?? {};
    const tokMd = md.tokenizer ?? {};
    const nVocab = tokMd.ggml?.tokens?.length ?? null;
    const bos = model.tokens.bos;

    // resolve the token lists first so that the context can be sized
    const jobs = prompts.map((p, i) => {
        const addBos = p.add_bos ?? model.tokens.shouldPrependBosToken;
        const job = { index: i, prompt: p, addBos, nPredict: p.n_predict ?? 0, wantLogits: p.logits === true };
        if (p.text != null) {
            const special = model.tokenize(p.text, true);
            const plain = model.tokenize(p.text, false);
            if (addBos && bos == null) fail(`prompt ${i}: add_bos requested but the model has no BOS token`);
            job.tokens = addBos ? [bos, ...special] : special;
            job.specialTokensInText = special.filter((tk) => model.isSpecialToken(tk));
            job.specialParsingChanged = !sameTokens(special, plain);
        }
        job.evalTokens = p.tokens != null ? p.tokens.slice() : job.tokens;
        if (nVocab != null)
            for (const tk of job.evalTokens)
                if (tk >= nVocab) fail(`prompt ${i}: token id ${tk} >= n_vocab ${nVocab}`);
        if ((job.nPredict > 0 || job.wantLogits) && job.evalTokens.length === 0)
            fail(`prompt ${i}: nothing to evaluate (empty token list)`);
        return job;
    });
    const needed = Math.max(1, ...jobs.map((j) => j.evalTokens.length + j.nPredict));
    const contextSize = Math.max(opts.ctx, needed);

    t = performance.now();
    const kvType = opts.kvType === "f32" ? "F32" : "F16";
    const context = await model.createContext({
        contextSize,
        sequences: 1,
        threads: { ideal: opts.threads, min: opts.threads },
        flashAttention: opts.flashAttn === "auto" ? "auto" : opts.flashAttn === "on",
        experimentalKvCacheKeyType: kvType,
        experimentalKvCacheValueType: kvType,
        // a LoRA adapter GGUF applied on top of the model (scale 1: its own alpha / rank)
        ...(opts.lora ? { lora: { adapters: [{ filePath: path.resolve(opts.lora), scale: 1 }] } } : {})
    });
    const sequence = context.getSequence();
    timings.context_create_s = (performance.now() - t) / 1000;

    const greedyOptions = { temperature: 0 }; // greedy sampler only: no top-k/p, no penalties, no bias
    const results = [];
    t = performance.now();
    for (const job of jobs) {
        const res = { index: job.index };
        if (job.prompt.text != null) {
            res.text = job.prompt.text;
            res.add_bos = job.addBos;
            res.tokens = job.tokens;
            res.parse_special = true;
            res.special_tokens_in_text = job.specialTokensInText;
            res.special_parsing_changed = job.specialParsingChanged;
        }
        res.eval_tokens = job.evalTokens;
        res.n_predict = job.nPredict;

        if (job.nPredict > 0 || job.wantLogits) {
            await sequence.clearHistory();
            const evalTokens = job.evalTokens;
            const input = evalTokens.map((tk, k) => (k === evalTokens.length - 1)
                ? [tk, { generateNext: { token: true, probabilities: job.wantLogits, options: greedyOptions } }]
                : tk);
            const out = await sequence.controlledEvaluate(input);
            const next = out[out.length - 1]?.next;
            if (next == null || next.token == null) fail(`prompt ${job.index}: evaluation produced no output`);

            if (job.wantLogits) {
                const probs = next.probabilities;
                const n = nVocab ?? probs.size;
                if (probs.size !== n) fail(`prompt ${job.index}: got ${probs.size} probabilities, expected n_vocab ${n}`);
                const logprobs = new Array(n).fill(null);
                let underflow = 0;
                for (const [tk, p] of probs) {
                    if (p > 0) logprobs[tk] = Math.log(p);
                    else underflow++;
                }
                res.n_vocab = n;
                res.logits_kind = "logprobs";
                res.logprobs_underflow = underflow;
                res.logits = logprobs;
            }

            const greedy = [next.token];
            while (greedy.length < job.nPredict) {
                const o = await sequence.controlledEvaluate([
                    [greedy[greedy.length - 1], { generateNext: { token: true, options: greedyOptions } }]
                ]);
                const tk = o[0]?.next?.token;
                if (tk == null) fail(`prompt ${job.index}: greedy step ${greedy.length} produced no token`);
                greedy.push(tk);
            }
            res.greedy = greedy.slice(0, job.nPredict);
            res.greedy_is_eog = res.greedy.map((tk) => model.isEogToken(tk));
        } else {
            res.greedy = [];
        }
        results.push(res);
    }
    timings.eval_s = (performance.now() - t) / 1000;

    const meta = {
        node_llama_cpp_version: version,
        llama_cpp_release: (() => {
            try {
                return JSON.parse(fs.readFileSync(path.join(path.resolve(opts.modules), "node-llama-cpp", "llama",
                    "llama.cpp.info.json"), "utf8")).tag ?? null;
            } catch {
                return null;
            }
        })(),
        binary: { build_type: llama.buildType, gpu: llama.gpu, cpu_math_cores: llama.cpuMathCores },
        model_path: path.resolve(opts.model),
        architecture: md.general?.architecture ?? null,
        model_type: model.typeDescription,
        n_vocab: nVocab,
        train_context_size: model.trainContextSize,
        embedding_size: model.embeddingVectorSize,
        vocabulary_type: model.vocabularyType,
        tokenizer_model: tokMd.ggml?.model ?? null,
        tokenizer_pre: tokMd.ggml?.pre ?? null,
        bos_token_id: model.tokens.bos,
        eos_token_id: model.tokens.eos,
        eot_token_id: model.tokens.eot,
        bos_string: model.tokens.bosString,
        eos_string: model.tokens.eosString,
        eot_string: model.tokens.eotString,
        should_prepend_bos: model.tokens.shouldPrependBosToken,
        should_append_eos: model.tokens.shouldAppendEosToken,
        chat_template: tokMd.chat_template ?? null,
        settings: {
            context_size: context.contextSize,
            threads: opts.threads,
            kv_cache_type: kvType,
            flash_attention: opts.flashAttn,
            sampler: "greedy (temperature 0), no penalties / top-k / top-p / bias",
            tokenize_parse_special: true
        },
        logits_kind: "logprobs",
        logits_note: "llama.cpp (node-llama-cpp) exposes only softmax probabilities of the raw last-position logits " +
            "(float32 softmax, full vocab, greedy chain leaves logits untouched); 'logits' holds ln(p) indexed by token id " +
            "= raw_logit - logsumexp(raw_logits); null where p underflowed to 0",
        timings_s: timings
    };

    await context.dispose();
    await model.dispose();
    await llama.dispose();

    const doc = { meta, prompts: results };
    fs.mkdirSync(path.dirname(path.resolve(opts.out)), { recursive: true });
    fs.writeFileSync(opts.out, JSON.stringify(doc) + "\n");
    process.stderr.write(`gguf_ref: wrote ${opts.out} (${results.length} prompts; load ${timings.model_load_s.toFixed(2)}s, eval ${timings.eval_s.toFixed(2)}s)\n`);
}

main().catch((e) => fail(e?.message ?? e));
