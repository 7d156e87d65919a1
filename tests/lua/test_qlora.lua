--[[
test_qlora.lua - a Llama with a 4-bit base: a bitsandbytes checkpoint loads as it is and
dequantizes to the reference values, a float checkpoint is quantized while loading, LoRA
trains on top (only the adapters learn), and the adapter saves and reloads.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local FIX = "tests/fixtures/"

T.test("a bitsandbytes 4-bit checkpoint loads with from_pretrained and dequantizes exactly", function()
    local m = lt.llama.from_pretrained(FIX .. "bnb_4bit")
    local expected = lt.safetensors.load(FIX .. "bnb_4bit/expected.safetensors")
    local layers = m:quant_layers()
    T.ok(#layers == 14, "7 quantized linears in each of 2 layers, got " .. #layers)
    local checked = 0
    for _, e in ipairs(layers) do
        local name, ql = e[1], e[2]
        T.eq(ql.qweight.type, "nf4")
        local want = expected[name .. ".weight"]
        if want then
            local got = ql.qweight:dequantize("f32")
            T.ok(got:equal(want), name .. " dequantizes to the reference values")
            got:free()
            checked = checked + 1
        end
    end
    T.ok(checked >= 14, "reference values for every quantized weight, checked " .. checked)
    local ids = lt.randint(0, m.config.vocab_size, 2, 9)
    local logits = m:forward(ids)
    T.eq(logits:shape(), { 2, 9, m.config.vocab_size })
    T.ok(not logits:has_nonfinite(), "finite logits")
end)

T.test("quantizing at load: the 4-bit model computes exactly what its dequantized weights do", function()
    local f = lt.llama.from_pretrained(FIX .. "llama_tiny_gqa")
    local q = lt.llama.from_pretrained(FIX .. "llama_tiny_gqa", { quant = "nf4" })
    local ids = lt.safetensors.load(FIX .. "llama_tiny_gqa/golden.safetensors").input_ids
    local sd = f:state_dict()
    local worst = 0
    for _, e in ipairs(q:quant_layers()) do
        local w = sd[e[1] .. ".weight"]
        local dq = e[2].qweight:dequantize("f32")
        local _, rel = T.diff(dq, w)
        worst = math.max(worst, rel)
        w:copy_(dq) -- the float model now holds the dequantized weights
        dq:free()
    end
    -- NF4 keeps Gaussian weights to about 10% RMS (16 levels per block of 64)
    T.ok(worst < 0.12 and worst > 0.01, ("NF4 weight error %.3f"):format(worst))
    T.ok(q:forward(ids):equal(f:forward(ids)), "tile-by-tile dequantization changes nothing")
    local bytes, f32_bytes = 0, 0
    for _, e in ipairs(q:quant_layers()) do
        bytes = bytes + e[2].qweight:nbytes()
        f32_bytes = f32_bytes + 4 * e[2].in_features * e[2].out_features
    end
    T.eq(#q:quant_layers(), 14)
    T.ok(bytes < f32_bytes / 3, ("quantized %d bytes vs f32 %d"):format(bytes, f32_bytes))
end)

T.test("QLoRA: LoRA on the 4-bit base trains, only adapters change, adapter round trip", function()
    lt.manual_seed(4)
    local m = lt.llama.from_pretrained(FIX .. "llama_tiny_gqa", { quant = { type = "nf4", double_quant = true } })
    lt.lora.apply(m, { r = 8, alpha = 16, dropout = 0.05, target = "all-linear" })
    for _, r in ipairs(m:parameters()) do
        T.ok(r.name:find("lora_[AB]"), "trainable: " .. r.name)
    end
    local g = lt.safetensors.load(FIX .. "llama_tiny_gqa/golden.safetensors")
    local embed_before = m.model.embed_tokens.weight:clone()
    local opt = lt.optim.AdamW(m:parameters(), { lr = 1e-2, weight_decay = 0 })
    local first, last
    for _ = 1, 25 do
        opt:zero_grad()
        local loss = m:forward_backward(g.input_ids, g.targets)
        first = first or loss
        last = loss
        opt:step()
    end
    T.ok(last < first - 1.0, ("loss %.3f -> %.3f"):format(first, last))
    T.ok(m.model.embed_tokens.weight:equal(embed_before), "the frozen base did not move")
    m:eval()
    local want = m:forward(g.input_ids):clone()
    local dir = os.tmpname()
    os.remove(dir)
    lt.lora.save(m, dir)
    local m2 = lt.llama.from_pretrained(FIX .. "llama_tiny_gqa", { quant = "nf4" })
    lt.lora.load(m2, dir)
    m2:eval()
    T.ok(m2:forward(g.input_ids):equal(want), "a reloaded adapter on a re-quantized base gives the same logits")
    -- merged export dequantizes the base
    lt.lora.export_merged(m2, dir .. "/merged", { dtype = "f32" })
    local merged = lt.llama.from_pretrained(dir .. "/merged")
    local _, rel = T.diff(merged:forward(g.input_ids), want)
    T.ok(rel < 1e-5, ("merged f32 export equals base + adapter (rel %.2g)"):format(rel))
    os.execute("rm -rf " .. dir)
end)

T.test("a QLoRA run resumed from its checkpoint continues bit for bit", function()
    local g = lt.safetensors.load(FIX .. "llama_tiny_gqa/golden.safetensors")
    local samples = {}
    for b = 1, g.input_ids:size(1) do
        for start = 1, 13, 6 do
            local ids = {}
            for t = start, start + 7 do ids[#ids + 1] = g.input_ids[b][t] end
            samples[#samples + 1] = { ids = ids }
        end
    end
    local ds = lt.data.tokens.from_samples(samples)
    local dir = os.tmpname()
    os.remove(dir)
    local function run(steps, opts)
        lt.manual_seed(8)
        local m = lt.llama.from_pretrained(FIX .. "llama_tiny_gqa", { quant = "nf4", dtype = "bf16" })
        lt.lora.apply(m, { r = 4, alpha = 8, dropout = 0.1 })
        local o = { model = m, train = ds, batch_size = 2, seq_len = 8, steps = steps, lr = 5e-3, seed = 3 }
        for k, v in pairs(opts or {}) do o[k] = v end
        return lt.trainer.finetune(o)
    end
    local straight = run(6)
    -- an interrupted run: it dies right after its step-3 checkpoint
    local ok = pcall(run, 6, { checkpoint_dir = dir, save_every = 3,
        on_step = function(rec) if rec.step == 3 then error("interrupted", 0) end end })
    T.ok(not ok)
    local st = lt.json.read_file(dir .. "/checkpoint-3/state.json")
    T.eq(st.model_params, "trainable", "a quantized base is not saved in the checkpoint")
    local saved = lt.safetensors.load(dir .. "/checkpoint-3/model.safetensors")
    for name in pairs(saved) do T.ok(name:find("lora_[AB]"), "only adapters in the checkpoint: " .. name) end
    local resumed = run(6, { resume = dir })
    T.eq(resumed.first_step, 4)
    for step = 4, 6 do T.eq(resumed.loss_curve[step], straight.loss_curve[step], "loss at step " .. step) end
    os.execute("rm -rf " .. dir)
end)

T.test("quantization options and errors", function()
    T.raises(function() lt.llama.from_pretrained(FIX .. "llama_tiny_gqa", { quant = "nf3" }) end, "unknown quantization type", true)
    local m = lt.llama.from_pretrained(FIX .. "llama_tiny_gqa", { quant = "int8" })
    T.eq(m:quant_layers()[1][2].qweight.type, "int8")
    local fp4 = lt.llama.from_pretrained(FIX .. "llama_tiny_gqa", { quant = { type = "fp4", blocksize = 32, double_quant = false } })
    T.eq(fp4:quant_layers()[1][2].qweight.blocksize, 32)
end)

T.done()
