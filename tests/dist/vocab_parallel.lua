--[[
vocab_parallel.lua - the embedding and LM head split by vocabulary rows over the ranks
(dist/vocab_parallel.lua): loss, LoRA gradients and logits equal the single-rank model's
within f32 rounding, tied and untied, and each rank holds its rows (+ one) of each matrix
(run at 2 and 3 ranks).
]]
package.path = "tests/lua/?.lua;tests/dist/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local vocab_parallel = require "luatrain.dist.vocab_parallel"

local pg = lt.dist.init({ timeout = 30 })
local W = pg.world
T.ok(W >= 2, "run under mpirun with 2 or more ranks")
lt.set_num_threads(1)

local function model(tied)
    lt.manual_seed(21)
    local cfg = { vocab_size = 101, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2,
        num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64, tie_word_embeddings = tied }
    local m = lt.nn.LlamaForCausalLM(cfg, { dtype = "bf16", trainable = false })
    m:gradient_checkpointing(true)
    lt.lora.apply(m, { r = 4, alpha = 8, dropout = 0 })
    for _, r in ipairs(m:parameters()) do
        if r.name:find("lora_B") then r.param:normal_(0, 0.05) end
    end
    return m
end

local ids = lt.randint(0, 101, 2, 20)
local targets = lt.randint(0, 101, 2, 20)
targets:set(3, -100) -- an ignored position

local function run(m)
    m:eval()
    local logits = m:forward(ids):clone()
    local eval_loss = m:loss(ids, targets)
    m:train()
    local loss = m:forward_backward(ids, targets, { normalizer = 37 })
    local grads = {}
    for _, r in ipairs(m:parameters()) do grads[r.name] = r.grad:clone() end
    return logits, eval_loss, loss, grads
end

for _, tied in ipairs({ true, false }) do
    T.test(("%d ranks, %s embeddings: the single-rank loss, gradients and logits within f32 rounding"):format(W,
        tied and "tied" or "untied"), function()
        local l0, e0, loss0, g0 = run(model(tied))
        local m = model(tied)
        local vocab_before = m.model.embed_tokens.weight:nbytes() * (tied and 1 or 2)
        local vp = vocab_parallel.new(m, pg)
        local P = math.ceil(101 / W)
        local rows = math.min(101, (pg.rank + 1) * P) - math.min(101, pg.rank * P)
        T.eq(vp:bytes(), (rows + 1) * 32 * 2 * (tied and 1 or 2), "this rank's rows and the zero row, bf16")
        T.ok(vp:bytes() < vocab_before, "less than the whole vocabulary")
        local l1, e1, loss1, g1 = run(m)
        T.close(l1, l0, 1e-6, 1e-6, "logits")
        T.ok(math.abs(e1 - e0) <= 1e-6 * math.abs(e0), ("held-out loss %.9g vs %.9g"):format(e1, e0))
        T.ok(math.abs(loss1 - loss0) <= 1e-6 * math.abs(loss0), ("loss %.9g vs %.9g"):format(loss1, loss0))
        for name, g in pairs(g0) do T.close(g1[name], g, 1e-4, 1e-7, name) end
    end)
end

lt.dist.shutdown()
T.done()
