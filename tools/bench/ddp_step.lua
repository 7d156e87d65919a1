--[[
ddp_step.lua - one data-parallel training step of a stories15M-shaped Llama on the CPU,
timed: the luatrain side of tools/bench/ddp_cpu.sh (run it alone, or under mpirun).

    luatrain tools/bench/ddp_step.lua [mode=full|lora batch=8 seq=256 steps=5 warmup=2 threads=0]
    mpirun -np 2 --bind-to none luatrain tools/bench/ddp_step.lua batch=4 threads=1

`batch` is the sequences per rank per step: the job's step is batch x ranks sequences.
mode=full trains every weight (AdamW); mode=lora puts r=16 adapters on every linear layer
but the head and trains only them. Each step goes through lt.trainer's stages: DDP's
bucketed all-reduce overlaps the backward. Rank 0 prints one JSON line: tokens/s of the job
(median step), the step time, and the all-reduce of the trained gradients alone: its bytes,
median time and bandwidth (bytes / time), measured on the same communicator after training.
]]
local lt = require "luatrain"

local cfg = lt.config {
    mode = { "full", "what trains", choices = { "full", "lora" } },
    batch = { 8, "sequences per rank per step", type = "int", min = 1 },
    seq = { 256, "tokens per sequence", type = "int", min = 2 },
    steps = { 5, "timed steps", type = "int", min = 1 },
    warmup = { 2, "untimed steps first", type = "int", min = 0 },
    threads = { 0, "CPU threads per rank (0: this rank's share of the cores)", type = "int", min = 0 },
    json = { "", "also write the JSON line here" },
}

local pg = lt.dist.init()
lt.set_num_threads(cfg.threads)
lt.manual_seed(0)

local model = lt.llama.new({ vocab_size = 32000, hidden_size = 288, intermediate_size = 768,
    num_hidden_layers = 6, num_attention_heads = 6, num_key_value_heads = 6,
    max_position_embeddings = cfg.seq, rms_norm_eps = 1e-5, tie_word_embeddings = true })
if cfg.mode == "lora" then lt.lora.apply(model, { r = 16, alpha = 32, target = "all-linear" }) end

-- random tokens, different on every rank (each rank's share of the job's batch); the model
-- above was made from the same seed on every rank
lt.manual_seed(1000 + pg.rank)
local ids = lt.randint(0, 32000, { cfg.batch, cfg.seq })
local targets = lt.randint(0, 32000, { cfg.batch, cfg.seq })
local source = {
    world = pg.world,
    next = function()
        return { ids = ids, targets = targets, trained = ids:numel(), round_trained = ids:numel() * pg.world }
    end,
}

local tr = lt.trainer.new{ model = model, train = source, steps = cfg.warmup + cfg.steps, lr = 1e-4,
    betas = { 0.9, 0.95 }, weight_decay = 0.1, schedule = "constant" }
local res = tr:run()
local times = {}
for step = cfg.warmup + 1, cfg.warmup + cfg.steps do times[#times + 1] = res.step_times[step] end
table.sort(times)
local step_s = times[math.floor((#times + 1) / 2)]
-- every rank must see the same step time to agree on the numbers: the slowest rank's
step_s = pg:max_numbers({ step_s })[1]

-- the gradients' all-reduce alone, on this communicator
local grad_bytes, ar_s = 0, 0
local bufs = {}
for _, g in ipairs(model:flat_parameters()) do
    if g.grads then
        bufs[#bufs + 1] = g.grads
        grad_bytes = grad_bytes + g.grads:nbytes()
    end
end
if pg.world > 1 then
    local samples = {}
    for i = 1, 7 do
        pg:barrier()
        local t0 = lt.fs.now()
        for _, b in ipairs(bufs) do pg:all_reduce(b, "sum"):wait() end
        samples[i] = lt.fs.now() - t0
    end
    table.sort(samples)
    ar_s = pg:max_numbers({ samples[4] })[1]
end

local tokens = cfg.batch * cfg.seq * pg.world
local rec = { engine = "luatrain", mode = cfg.mode, ranks = pg.world, threads = lt.get_num_threads(),
    batch_per_rank = cfg.batch, seq = cfg.seq, step_s = step_s, tokens_per_s = tokens / step_s,
    trainable = model:num_parameters(true), grad_bytes = grad_bytes, allreduce_s = ar_s,
    allreduce_gbps = ar_s > 0 and grad_bytes / ar_s / 1e9 or nil, loss_last = res.last_loss }
if pg:is_main() then
    local line = lt.json.encode(rec)
    print(line)
    if cfg.json ~= "" then lt.fs.write_atomic(cfg.json, line .. "\n") end
end
lt.dist.shutdown()
