--[[
plan_ranks.lua - the planner per rank (lt.plan.train{world, rank, zero, shard_base, offload})
against what each rank of an mpirun job measures: QLoRA on tiny_facts' model under DDP,
ZeRO-1 and ZeRO-2 (moments resident, paged, in files), a base sharded over the ranks, a
split vocabulary, ZeRO-3 (also with offload=cpu, and offload=nvme with the layers' shards in
the file), and full fine-tuning at ZeRO-3 with and without offload=nvme; two training steps
each. Every rank's peak equals its plan to the byte, and offload=nvme's file its disk figure
(run at 2 and 3 ranks).
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

local OFFLOAD_DIR = (os.getenv("TMPDIR") or "/tmp") .. "/lt_plan_ranks_nvme"

-- full: full fine-tuning of the f32 model (no quantization, no adapters)
local function measure(zero, optim, shard, vp, offload, full)
    lt.manual_seed(1)
    local q = not full and { type = "nf4", blocksize = 64, double_quant = true } or nil
    local model = lt.llama.from_pretrained(DIR .. "/model", { quant = q, dtype = not full and "bf16" or nil,
        shard = shard and pg or nil })
    model:gradient_checkpointing(true)
    if not full then lt.lora.apply(model, { r = 8, alpha = 16, dropout = 0.1 }) end
    -- a split vocabulary: the ranks are one model, each with a trainer of its own
    if vp then require("luatrain.dist.vocab_parallel").new(model, pg) end
    local res = lt.trainer.finetune{ model = model, train = ds, batch_size = B, seq_len = S, steps = 2, lr = 1e-3,
        optim = optim, zero = zero, eval_every = 0, group = vp and lt.dist.local_group() or pg,
        offload = offload, offload_dir = offload == "nvme" and OFFLOAD_DIR or nil,
        on_step = function() end }
    local plan = lt.plan.train{ config = model.config, quant = full and "none" or "nf4", r = full and 0 or 8,
        dropout = full and 0 or 0.1, batch_size = B,
        seq_len = S, gradient_checkpointing = true, optim = optim, threads = 1, train_samples = ds.n,
        world = W, rank = R, zero = zero, shard_base = shard, vocab_parallel = vp, offload = offload }
    local measured, planned = res.peak_bytes, plan.peak.train
    if offload == "nvme" then
        -- the optimizer's file: the plan's disk figure is its layout, region by region
        local opt = res.optimizer.inner or res.optimizer
        T.eq(plan.disk.nvme, opt.nvme.size, "the optimizer's file in offload_dir")
        T.eq(plan.host.paged, 0, "nothing of the optimizer in host memory")
    end
    -- the model goes before the next case, or the next run's peak would count it (the trainer
    -- flushes compiled traces, which could hold it too, when it starts)
    model, res, plan = nil, nil, nil -- luacheck: ignore 311
    return measured, planned
end

local CASES = {
    { 0, "adamw", false }, { 1, "adamw", false }, { 2, "adamw", false }, { 1, "paged_adamw", false },
    { 0, "adamw", true }, { 2, "adamw", true }, { 0, "adamw", false, true }, { 0, "adamw", true, true },
    { 3, "adamw", false }, { 3, "adamw", true },
    -- the moments in files (and at stage 3 the layers' parameter shards) or in host memory
    { 2, "adamw", false, false, "nvme" }, { 3, "adamw", false, false, "nvme" }, { 3, "adamw", true, false, "cpu" },
    -- full fine-tuning, where the step's page buffers make the peak
    { 3, "adamw", false, false, nil, true }, { 3, "adamw", false, false, "nvme", true },
}
for _, c in ipairs(CASES) do
    T.test(("%d ranks, zero=%d, %s%s%s%s: each rank's peak is its plan"):format(W, c[1], c[2],
        c[3] and ", sharded base" or "", c[4] and ", split vocabulary" or "", c[5] and ", offload=" .. c[5] or "")
        .. (c[6] and ", full fine-tuning" or ""), function()
        local measured, planned = measure(c[1], c[2], c[3], c[4], c[5], c[6])
        if R == 0 then print(("  rank 0: measured %d, planned %d"):format(measured, planned)) end
        T.eq(planned, measured, ("rank %d"):format(R))
    end)
end

lt.dist.shutdown()
T.done()
