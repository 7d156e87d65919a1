--[[
plan_ranks.lua - the planner per rank (lt.plan.train{world, rank, zero, shard_base}) against
what each rank of an mpirun job measures: QLoRA on tiny_facts' model under DDP, ZeRO-1 and
ZeRO-2 (resident and paged moments) and a base sharded over the ranks, two training steps
each, and ZeRO-3; every rank's peak equals its plan to the byte (run at 2 and 3 ranks).
]]
package.path = "tests/lua/?.lua;tests/dist/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local pg = lt.dist.init({ timeout = 60 })
local W, R = pg.world, pg.rank
T.ok(W >= 2, "run under mpirun with 2 or more ranks")
lt.set_num_threads(1)

local DIR = "recipes/assets/tiny_facts"
local tok = lt.tokenizer.load(DIR .. "/model")
local B, S = 4, 96
local ds = lt.data.build(DIR .. "/train.jsonl", tok, { template = "llama3", train_on = "completion", max_len = S })

local function measure(zero, optim, shard, vp)
    lt.manual_seed(1)
    local q = { type = "nf4", blocksize = 64, double_quant = true }
    local model = lt.llama.from_pretrained(DIR .. "/model", { quant = q, dtype = "bf16", shard = shard and pg or nil })
    model:gradient_checkpointing(true)
    lt.lora.apply(model, { r = 8, alpha = 16, dropout = 0.1 })
    -- a split vocabulary: the ranks are one model, each with a trainer of its own
    if vp then require("luatrain.dist.vocab_parallel").new(model, pg) end
    local res = lt.trainer.finetune{ model = model, train = ds, batch_size = B, seq_len = S, steps = 2, lr = 1e-3,
        optim = optim, zero = zero, eval_every = 0, group = vp and lt.dist.local_group() or pg,
        on_step = function() end }
    local plan = lt.plan.train{ config = model.config, quant = "nf4", r = 8, dropout = 0.1, batch_size = B,
        seq_len = S, gradient_checkpointing = true, optim = optim, threads = 1, train_samples = ds.n,
        world = W, rank = R, zero = zero, shard_base = shard, vocab_parallel = vp }
    local measured, planned = res.peak_bytes, plan.peak.train
    -- the model goes before the next case, or the next run's peak would count it (the trainer
    -- flushes compiled traces, which could hold it too, when it starts)
    model, res, plan = nil, nil, nil -- luacheck: ignore 311
    return measured, planned
end

local CASES = {
    { 0, "adamw", false }, { 1, "adamw", false }, { 2, "adamw", false }, { 1, "paged_adamw", false },
    { 0, "adamw", true }, { 2, "adamw", true }, { 0, "adamw", false, true }, { 0, "adamw", true, true },
    { 3, "adamw", false }, { 3, "adamw", true },
}
for _, c in ipairs(CASES) do
    T.test(("%d ranks, zero=%d, %s%s%s: each rank's peak is its plan"):format(W, c[1], c[2],
        c[3] and ", sharded base" or "", c[4] and ", split vocabulary" or ""), function()
        local measured, planned = measure(c[1], c[2], c[3], c[4])
        if R == 0 then print(("  rank 0: measured %d, planned %d"):format(measured, planned)) end
        T.eq(planned, measured, ("rank %d"):format(R))
    end)
end

lt.dist.shutdown()
T.done()
