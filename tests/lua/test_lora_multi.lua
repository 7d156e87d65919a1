--[[
test_lora_multi.lua - several LoRA adapters on one base (lt.lora.load with a name,
set_adapter, set_row_adapters, unload_adapter): tiny_facts' NF4 base with an adapter on
every linear layer ("default") and one on q_proj and v_proj only ("qv"): each active
adapter gives the logits of a model that has only it, bit for bit, "none" the base's; a
batch whose rows use different adapters gives each row its own adapter's logits; switching
reloads nothing (the base's quantized weights are the same objects, and adding an adapter
costs its own bytes only); unloading frees it; mistakes are refused by name.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local fs = require "luatrain.fs"

local MODEL = "recipes/assets/tiny_facts/model"
local Q = { type = "nf4", blocksize = 64, double_quant = true }
local DIR = (os.getenv("TMPDIR") or "/tmp") .. ("/lt_lora_multi_%d_%d"):format(os.time(), math.random(1, 1e6))
lt.set_num_threads(2)

local function base() return lt.llama.from_pretrained(MODEL, { quant = Q, dtype = "bf16" }) end

-- an adapter with random B (so it changes the model), saved in PEFT's layout
local function adapter(seed, opts, dir)
    lt.manual_seed(seed)
    local m = base()
    lt.lora.apply(m, opts)
    for _, r in ipairs(m:parameters()) do
        if r.name:find("lora_B") then r.param:normal_(0, 0.05) end
    end
    lt.lora.save(m, dir, { base_model_name_or_path = MODEL })
end
adapter(1, { r = 4, alpha = 8 }, DIR .. "/all")
adapter(2, { r = 2, alpha = 4, target = { "q_proj", "v_proj" } }, DIR .. "/qv")

local ids = lt.tensor({ { 256, 72, 101, 108, 108, 111, 32, 119 }, { 256, 87, 104, 97, 116, 32, 112, 101 },
    { 256, 84, 111, 107, 97, 107, 97, 39 } }, { dtype = "i64" })

local function logits_of(m)
    m:eval()
    return m:forward(ids):clone()
end

local function alone(dir)
    local m = base()
    if dir then lt.lora.load(m, dir) end
    return logits_of(m)
end
local want_all, want_qv, want_none = alone(DIR .. "/all"), alone(DIR .. "/qv"), alone(nil)

T.test("each active adapter is the model that has only it, bit for bit; none is the base", function()
    local m = base()
    lt.lora.load(m, DIR .. "/all")
    local q0 = m.model.layers:children()[1].self_attn.q_proj.qweight
    lt.memory.collect()
    local before = lt.memory.stats("cpu").current
    lt.lora.load(m, DIR .. "/qv", { name = "qv" })
    local after = lt.memory.collect()
    -- 2 layers... q_proj and v_proj of 4 layers, r 2: A (2, 128) and B (out, 2) in f32
    local L = m.config.num_hidden_layers
    local hd = m.config.head_dim * m.config.num_key_value_heads
    T.eq(after - before, 4 * L * (2 * 128 + 128 * 2 + 2 * 128 + hd * 2), "the new adapter's bytes, nothing more")
    T.eq(lt.lora.adapter_names(m), { "default", "qv" })
    T.ok(logits_of(m):equal(want_all), "default")
    lt.lora.set_adapter(m, "qv")
    T.eq(lt.lora.adapter_names(m), { "qv", "default" })
    T.ok(logits_of(m):equal(want_qv), "qv")
    T.ok(m.model.layers:children()[1].self_attn.q_proj.qweight == q0, "the base is the same object")
    lt.lora.set_adapter(m, "none")
    T.ok(logits_of(m):equal(want_none), "none")
    lt.lora.set_adapter(m, "default")
    T.ok(logits_of(m):equal(want_all), "default again")
end)

T.test("a batch whose rows use different adapters: each row its own", function()
    local m = base()
    lt.lora.load(m, DIR .. "/all")
    lt.lora.load(m, DIR .. "/qv", { name = "qv" })
    lt.lora.set_row_adapters(m, { "qv", "none", "default" })
    local l = logits_of(m)
    T.ok(l:narrow(1, 1, 1):equal(want_qv:narrow(1, 1, 1)), "row 1: qv")
    T.ok(l:narrow(1, 2, 1):equal(want_none:narrow(1, 2, 1)), "row 2: none")
    T.ok(l:narrow(1, 3, 1):equal(want_all:narrow(1, 3, 1)), "row 3: default")
    lt.lora.set_row_adapters(m, nil)
    T.ok(logits_of(m):equal(want_all), "back to the active adapter")
    lt.lora.set_row_adapters(m, { "qv" })
    T.raises(function() logits_of(m) end, "row adapters name 1 rows, the batch has 3")
    lt.lora.set_row_adapters(m, nil)
end)

T.test("unloading frees the adapter; mistakes are refused by name", function()
    local m = base()
    lt.lora.load(m, DIR .. "/all")
    lt.lora.load(m, DIR .. "/qv", { name = "qv" })
    T.raises(function() lt.lora.load(m, DIR .. "/qv", { name = "qv" }) end, 'adapter "qv" is already loaded')
    T.raises(function() lt.lora.load(m, DIR .. "/qv") end, "has adapters already %(default, qv%); give this one a name")
    T.raises(function() lt.lora.set_adapter(m, "nope") end, 'no adapter "nope" %(loaded: default, qv%)')
    T.raises(function() lt.lora.unload_adapter(m, "default") end, "is the active adapter")
    local before = lt.memory.collect()
    lt.lora.unload_adapter(m, "qv")
    local after = lt.memory.collect()
    T.ok(after < before, ("freed: %d -> %d"):format(before, after))
    T.eq(lt.lora.adapter_names(m), { "default" })
    T.raises(function() lt.lora.set_adapter(m, "qv") end, 'no adapter "qv"')
    T.ok(logits_of(m):equal(want_all), "the default adapter is untouched")
end)

fs.remove_tree(DIR)
T.done()
