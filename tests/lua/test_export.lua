--[[
test_export.lua - lt.export (`luatrain export`): tiny_facts' model with a LoRA adapter
written as an adapter, a merged folder, GGUF files and llama.cpp's adapter GGUF, each read back and checked against
the adapter on its NF4 base: the report's numbers (f32 GGUF within float rounding of the
trained model, q8_0 and bf16 within their precision), the merged folder's tokenizer files
and generation_config (EOS), the GGUF file's keys and tensors, sizes; an export that fails
its thresholds leaves nothing at the output; bad settings are refused by name. (llama.cpp's
reading of the GGUF files: test_gguf.lua.)
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local json = require "luatrain.json"
local ex = require "luatrain.export"

local MODEL = "recipes/assets/tiny_facts/model"
local PROMPTS = "recipes/assets/tiny_facts/eval.jsonl"
local DIR = (os.getenv("TMPDIR") or "/tmp") .. "/lt_export_" .. tostring(os.time()) .. "_" .. math.random(1, 1e6)
lt.set_num_threads(2)

-- an adapter of r 4 on every linear layer of the NF4 base, B random so it changes the model
local function make_adapter()
    lt.manual_seed(3)
    local m = lt.llama.from_pretrained(MODEL, { quant = { type = "nf4", blocksize = 64, double_quant = true },
        dtype = "bf16" })
    lt.lora.apply(m, { r = 4, alpha = 8 })
    for _, r in ipairs(m:parameters()) do
        if r.name:find("lora_B") then r.param:normal_(0, 0.05) end
    end
    lt.lora.save(m, DIR .. "/adapter_in", { base_model_name_or_path = MODEL })
    return DIR .. "/adapter_in"
end
local ADAPTER = make_adapter()

local function run(format, quant, output, extra)
    local o = { model = MODEL, adapter = ADAPTER, format = format, quant = quant, output = output,
        prompts = PROMPTS, n_prompts = 4, n_predict = 6 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return ex.run(o)
end

local function exists(p) return lt.fs and lt.fs.exists(p) or require("luatrain.fs").exists(p) end

T.test("f32 GGUF: the trained model's logits within float rounding, every greedy token, the tokenizer", function()
    local out = DIR .. "/m_f32.gguf"
    local r = run("gguf", "f32", out)
    T.ok(r.passed, "passed")
    local v = r.verification
    T.ok(v.max_logit_delta < 1e-3, ("max |logit difference| %g"):format(v.max_logit_delta))
    T.ok(v.mean_kl < 1e-8, ("mean KL %g"):format(v.mean_kl))
    T.eq(v.agreement, 1, "greedy agreement")
    T.eq({ v.tokenizer.same_ids, v.tokenizer.round_trips }, { 4, 4 }, "tokenizer round trip")
    T.ok(exists(out) and exists(out .. ".export_report.json"), "the file and its report")
    local saved = json.decode(io.open(out .. ".export_report.json"):read("*a"))
    T.eq(saved.passed, true, "the report on disk")
    -- the file's keys and tensors
    local f = lt.gguf.read(out)
    T.eq(f.meta["general.architecture"], "llama")
    T.eq(f.meta["llama.block_count"], 4)
    T.eq(f.meta["tokenizer.ggml.model"], "gpt2")
    T.eq(f.meta["tokenizer.ggml.pre"], "gpt-2")
    T.eq(f.meta["tokenizer.ggml.bos_token_id"], 256)
    T.eq(f.meta["tokenizer.ggml.eos_token_id"], 260)
    T.eq(#f.meta["tokenizer.ggml.tokens"], 261)
    T.eq(f.meta["tokenizer.ggml.token_type"][261], 3, "<|eot_id|> is a control token")
    T.ok(f.by_name["output.weight"] == nil, "tied: no output.weight")
    T.eq(f.by_name["blk.0.attn_q.weight"].dims, { 128, 128 })
    T.eq(f.by_name["blk.3.ffn_down.weight"].dims, { 344, 128 })
    T.eq(#f.tensors, 2 + 4 * 9)
    f:close()
end)

T.test("q8_0 GGUF and a bf16 merged folder: within their precision; rows that do not split fall back", function()
    local r = run("gguf", "q8_0", DIR .. "/m_q8.gguf")
    T.ok(r.passed and r.verification.mean_kl < 2e-3, ("q8_0: mean KL %g"):format(r.verification.mean_kl))
    local f = lt.gguf.read(DIR .. "/m_q8.gguf")
    T.eq(f.by_name["blk.0.attn_q.weight"].type_name, "q8_0")
    T.eq(f.by_name["blk.0.ffn_down.weight"].type_name, "f16", "rows of 344 are not blocks of 32")
    T.eq(f.by_name["blk.0.attn_norm.weight"].type_name, "f32")
    f:close()
    local m = run("merged", "bf16", DIR .. "/merged")
    T.ok(m.passed and m.verification.mean_kl < 1e-3, ("merged: mean KL %g"):format(m.verification.mean_kl))
    for _, name in ipairs({ "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "generation_config.json", "export_report.json" }) do
        T.ok(exists(DIR .. "/merged/" .. name), name)
    end
    local gen = json.decode(io.open(DIR .. "/merged/generation_config.json"):read("*a"))
    T.eq(gen.eos_token_id, 260, "EOS: <|eot_id|>")
    T.eq(gen.bos_token_id, 256)
    -- the folder loads as it is, its own tokenizer with it
    local mm = lt.llama.from_pretrained(DIR .. "/merged")
    T.eq(mm.config.vocab_size, 261)
    local tok = lt.tokenizer.load(DIR .. "/merged")
    T.eq(tok:encode("Hello", { add_special_tokens = false }), { 72, 101, 108, 108, 111 })
end)

T.test("the adapter alone: the same model exactly, a fraction of the base's bytes", function()
    local r = run("adapter", nil, DIR .. "/adapter_out")
    T.ok(r.passed, "passed")
    T.eq(r.verification.max_logit_delta, 0)
    T.ok(r.bytes.output < r.bytes.base, ("adapter %d bytes, base %d"):format(r.bytes.output, r.bytes.base))
    T.ok(exists(DIR .. "/adapter_out/adapter_model.safetensors"), "PEFT layout")
end)

T.test("the adapter as llama.cpp's LoRA file: read back onto the base, the trained model exactly", function()
    local out = DIR .. "/adapter.gguf"
    local r = run("adapter-gguf", nil, out)
    T.ok(r.passed, "passed")
    T.eq(r.verification.max_logit_delta, 0)
    local f = lt.gguf.read(out)
    T.eq(f.meta["general.type"], "adapter")
    T.eq(f.meta["adapter.type"], "lora")
    T.eq(f.meta["adapter.lora.alpha"], 8)
    T.eq(f.by_name["blk.0.attn_q.weight.lora_a"].dims, { 128, 4 })
    T.eq(f.by_name["blk.0.attn_q.weight.lora_b"].dims, { 4, 128 })
    T.eq(f.by_name["blk.3.ffn_down.weight.lora_a"].dims, { 344, 4 })
    f:close()
    T.ok(r.bytes.output < r.bytes.base / 3, ("%d bytes against the base's %d"):format(r.bytes.output, r.bytes.base))
    -- and the base it goes on: the NF4 base as trained, dequantized
    local b = run("gguf", "f16", DIR .. "/base.gguf", { adapter = "" })
    T.ok(b.passed and b.verification.mean_kl < 1e-4, "the base alone")
end)

T.test("an export above its thresholds fails and leaves nothing that looks complete", function()
    local out = DIR .. "/m_q4.gguf"
    local err = T.raises(function() run("gguf", "q4_0", out, { max_kl = 1e-12 }) end,
        "does not behave like the trained one")
    T.ok(err:find("max_kl=1e-12", 1, true) ~= nil, err)
    T.ok(not exists(out), "no file at the output")
    local saved = json.decode(io.open(out .. ".export_report.json"):read("*a"))
    T.eq(saved.passed, false, "the failed report says so")
    -- and no temporary left behind in the folder
    for _, e in ipairs(require("luatrain.fs").list(DIR)) do
        T.ok(not e.name:find("exporting", 1, true), "left behind: " .. e.name)
    end
end)

T.test("bad settings are refused by name", function()
    T.raises(function() run("onnx", nil, DIR .. "/x") end, "format must be adapter, merged, gguf or adapter%-gguf")
    T.raises(function() run("adapter-gguf", "q8_0", DIR .. "/x.gguf") end, "takes quant=f32, f16")
    T.raises(function() run("gguf", "q5_k", DIR .. "/x.gguf") end, "takes quant=q8_0, f32")
    T.raises(function() run("merged", "q8_0", DIR .. "/x") end, "format=merged takes quant=bf16")
    T.raises(function() ex.run({ model = MODEL, format = "adapter", output = DIR .. "/x" }) end, "needs adapter=")
    T.raises(function() ex.run({ model = MODEL, format = "gguf", output = DIR .. "/x.gguf" }) end, "give prompts=")
end)

T.test("luatrain export on the command line", function()
    local out, code = T.run(("%s export adapter=%s format=gguf quant=f32 output=%s/cli.gguf n_prompts=2 n_predict=4"):format(
        T.luatrain(), ADAPTER, DIR))
    T.eq(code, 0, out)
    T.ok(out:find("export gguf (f32): passed", 1, true) ~= nil, out)
    local _, bad = T.run(("%s export format=gguf output=%s/bad.gguf max_kl=1e-15 n_prompts=1 n_predict=2 quant=q4_0"):format(
        T.luatrain(), DIR))
    T.ok(bad ~= 0, "a failed export exits non-zero")
    local msg = T.run(("%s export format=gguf 2>&1"):format(T.luatrain()))
    T.ok(msg:find("give output=", 1, true) ~= nil, msg)
end)

require("luatrain.fs").remove_tree(DIR)
T.done()
