--[[
shard_base.lua - a 4-bit base sharded over the ranks of an mpirun job (dist/shard_base.lua):
every rank's logits, loss and LoRA gradients are the unsharded model's bit for bit, with and
without gradient checkpointing, and a rank holds its shards and two layer buffers in place of
the whole base, to the byte, in what it holds and at its peak; loading shards each layer as
it arrives, and a bitsandbytes checkpoint is cut by byte range straight from its file
mapping (run at 2 and 3 ranks).
]]
package.path = "tests/lua/?.lua;tests/dist/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local shard_base = require "luatrain.dist.shard_base"

local pg = lt.dist.init({ timeout = 30 })
local W = pg.world
T.ok(W >= 2, "run under mpirun with 2 or more ranks")
lt.set_num_threads(1)

local CFG = { vocab_size = 97, hidden_size = 64, intermediate_size = 160, num_hidden_layers = 4,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64 }

-- The same model on every rank (same seed): an NF4 base with double quantization, LoRA on
-- every linear layer.
local function model(ck)
    lt.manual_seed(11)
    local m = lt.nn.LlamaForCausalLM(CFG, { quant = { type = "nf4", blocksize = 64, double_quant = true } })
    if ck then m:gradient_checkpointing(true) end
    lt.lora.apply(m, { r = 4, alpha = 8, dropout = 0.1 })
    for _, r in ipairs(m:parameters()) do
        if r.name:find("lora_B") then r.param:normal_(0, 0.02) end -- B = 0 would hide A's gradients
    end
    return m
end

local ids = lt.randint(1, CFG.vocab_size, 2, 24)
local targets = lt.randint(1, CFG.vocab_size, 2, 24)

-- logits, loss, LoRA gradients and the step's peak above what was held before it
local function run(m)
    m:eval() -- logits without dropout
    local logits = m:forward(ids):clone()
    lt.memory.collect()
    local base = lt.memory.stats("cpu").current
    lt.memory.reset_peak("cpu")
    lt.manual_seed(5)
    m:train()
    local loss = m:forward_backward(ids, targets)
    local peak = lt.memory.stats("cpu").peak
    local grads = {}
    for _, r in ipairs(m:parameters()) do grads[r.name] = r.grad:clone() end
    return logits, loss, grads, peak, base
end

for _, ck in ipairs({ false, true }) do
    T.test(("%d ranks, checkpointing %s: the unsharded model's numbers, bit for bit; shards and two buffers in "
        .. "place of the base"):format(W, ck and "on" or "off"), function()
        local ref = model(ck)
        local l0, loss0, g0, peak0, base0 = run(ref)
        ref = nil -- luacheck: ignore 311
        lt.memory.collect()

        local m = model(ck)
        lt.memory.collect()
        local before = lt.memory.stats("cpu").current
        local sb = shard_base.new(m, pg)
        lt.memory.collect()
        local after = lt.memory.stats("cpu").current
        local b = sb.bytes
        T.eq(after - before, b.shards + b.buffers - b.unsharded, "held: the shards and two buffers for the base")
        T.ok(b.shards * W >= b.unsharded and b.shards * W < b.unsharded + W * 64 * 7 * CFG.num_hidden_layers * 5,
            ("the shards are 1/%d of the base (+ padding): %d x %d vs %d"):format(W, b.shards, W, b.unsharded))
        local l1, loss1, g1, peak1, base1 = run(m)
        T.ok(l1:equal(l0), "logits")
        T.eq(loss1, loss0, "loss")
        for name, g in pairs(g0) do T.ok(g1[name]:equal(g), name) end
        -- gathering allocates nothing: the step's peak above what the rank held is the
        -- unsharded step's, so the rank's peak is the unsharded one's less the base plus its
        -- shards and the two buffers
        T.eq(peak1 - base1, peak0 - base0, "the step's own peak is the unsharded step's")
        -- whole again
        sb:gather()
        m:eval()
        local l2 = m:forward(ids)
        T.ok(l2:equal(l0), "logits after gather()")
    end)
end

T.test(("%d ranks: loading shards each layer as it arrives, never holding the whole base"):format(W), function()
    local dir = "recipes/assets/tiny_facts/model"
    local q = { type = "nf4", blocksize = 64, double_quant = true }
    local function load(shard)
        lt.memory.collect()
        local base = lt.memory.stats("cpu").current
        lt.memory.reset_peak("cpu")
        local m = lt.llama.from_pretrained(dir, { quant = q, dtype = "bf16", shard = shard })
        lt.memory.collect()
        return m, lt.memory.stats("cpu").peak - base, lt.memory.stats("cpu").current - base
    end
    local whole, peak_w, held_w = load(nil)
    local sharded, peak_s, held_s = load(pg)
    local sb = sharded.model._sharded_base
    T.ok(sb ~= nil, "the loader sharded the base")
    local b = sb.bytes
    T.eq(held_s - held_w, b.shards + b.buffers - b.unsharded, "held after loading: shards and two buffers")
    -- while loading, a rank holds the shards cut so far and one whole layer, which the two
    -- buffers made at the end exceed: loading peaks where it ends, not at the whole base
    T.ok(peak_s - held_s < peak_w - held_w + b.unsharded / sharded.config.num_hidden_layers,
        ("load peaks: sharded %d (holds %d), whole %d (holds %d)"):format(peak_s, held_s, peak_w, held_w))
    print(("  loading: whole base peak %d, sharded peak %d; held %d vs %d; base %d, shards %d, buffers %d"):format(
        peak_w, peak_s, held_w, held_s, b.unsharded, b.shards, b.buffers))
    whole:eval()
    sharded:eval()
    local x = lt.randint(1, 200, 1, 16)
    T.ok(sharded:forward(x):equal(whole:forward(x)), "the same logits")
end)

T.test(("%d ranks: a bitsandbytes checkpoint is cut by byte range from its file mapping"):format(W), function()
    -- tests/fixtures/bnb_4bit: NF4 with double quantization, saved as transformers does. Its
    -- codes are used where the file maps them (quant.from_bnb shares, never copies), so a
    -- rank copies out only its range of each layer and no whole layer ever exists in memory
    local dir = "tests/fixtures/bnb_4bit"
    local function load(shard)
        local base = lt.memory.collect()
        lt.memory.reset_peak("cpu")
        local m = lt.llama.from_pretrained(dir, { shard = shard })
        local peak = lt.memory.stats("cpu").peak
        local held = lt.memory.collect()
        return m, peak - base, held - base, lt.memory.stats("cpu").mapped
    end
    local whole, _, held_w, mapped_w = load(nil)
    local sharded, peak_s, held_s, mapped_s = load(pg)
    local b = sharded.model._sharded_base.bytes
    -- the unsharded model leaves its codes in the mapping; the sharded one holds its shards
    T.eq(held_s - held_w, b.shards + b.buffers, "held: the unquantized weights, the shards and two buffers")
    T.eq(peak_s, held_s, "loading's peak is what it ends holding: no layer was copied whole")
    T.eq(mapped_s, mapped_w, "the sharded model keeps no view of the file (the unsharded one's mapping is all)")
    print(("  bitsandbytes: base %d bytes in the file, shards %d, buffers %d, held %d (unsharded %d + mapping %d)"):format(
        b.unsharded, b.shards, b.buffers, held_s, held_w, mapped_w))
    whole:eval()
    sharded:eval()
    local x = lt.randint(1, whole.config.vocab_size, 2, 12)
    T.ok(sharded:forward(x):equal(whole:forward(x)), "the same logits")
end)

lt.dist.shutdown()
T.done()
