--[[
plan_child.lua - one configuration of tests/lua/test_plan.lua, in a process of its own (the
peak counts everything the process holds): load tiny_facts' model as the recipe does, train
two steps through lt.trainer, and print the log's peak_bytes next to lt.plan's prediction.

    luatrain tests/lua/plan_child.lua quant=nf4 r=8 batch=8 seq=128 ck=true ...

device=cuda (a GPU session, tools/gpu/run.sh more) trains on the GPU in bf16 and compares
the tensors' peak lt.memory counts there with the plan's tensors (its kernel scratch apart).
]]
local lt = require "luatrain"
local json = require "luatrain.json"
local A = {}
for _, a in ipairs(arg) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if v == "false" then A[k] = false elseif v == "true" then A[k] = true else A[k] = tonumber(v) or v end
end
local function list(t)
    if t == nil or t == "all-linear" then return t end
    local out = {}
    for x in t:gmatch("[^,]+") do out[#out + 1] = x end
    return out
end
local quant, r = A.quant or "nf4", A.r or 8
local B, T = A.batch or 8, A.seq or 128
local ck = A.ck ~= false
local threads = A.threads or 2
local dq = A.dq ~= false and quant ~= "int8"
local blocksize = A.blocksize or 64
local target = list(A.target) or "all-linear"
local dropout = A.dropout or 0.1
lt.set_num_threads(threads)
lt.manual_seed(1)
local dir = "recipes/assets/tiny_facts"
local q = quant ~= "none" and { type = quant, blocksize = blocksize, double_quant = dq } or nil
local model = lt.llama.from_pretrained(dir .. "/model", { quant = q, dtype = q and "bf16" or "f32" })
local tok = lt.tokenizer.load(dir .. "/model")
if ck then model:gradient_checkpointing(true, { offload = A.offload }) end
if r > 0 then lt.lora.apply(model, { r = r, alpha = 16, dropout = dropout, target = target }) end
local device = A.device or "cpu"
if device ~= "cpu" then
    model:to(device)
    model:set_compute_dtype("bf16")
elseif A.precision == "bf16" then
    lt.set_cpu_matmul_precision("bf16")
end
local ds = lt.data.build(dir .. "/train.jsonl", tok, { template = "llama3", train_on = "completion", max_len = T })
local function plan()
    return lt.plan.train{ config = model.config, quant = quant, blocksize = blocksize, double_quant = dq, r = r,
        dropout = dropout, target = target, batch_size = B, seq_len = T, gradient_checkpointing = ck,
        offload_activations = A.offload, optim = A.optim, threads = threads, device = device:match("^cuda") and "cuda" or "cpu",
        precision = device ~= "cpu" and "bf16" or A.precision, scratch = device == "cpu",
        train_samples = ds.n, eval_samples = ds.n, grad_accum = A.accum, segments = math.ceil(B * T / (ds.total / ds.n)),
        offload = A.nvme and "nvme" or (A.host_optim and "cpu") or nil }
end
if A.phase == "eval" then
    -- phase=eval: one held-out pass of the loaded model against the plan's evaluation peak
    lt.memory.collect()
    lt.memory.reset_peak(device)
    lt.trainer.eval_loss(model, ds, { batch_size = B, seq_len = T })
    print(json.encode({ measured = lt.memory.stats(device).peak, planned = plan().peak.eval }))
    return
end
local log = os.tmpname()
-- nvme=true: AdamW's moments in a file (offload = "nvme")
local nvme_dir = A.nvme and os.tmpname() .. ".d" or nil
lt.trainer.finetune{ model = model, train = ds, batch_size = B, seq_len = T, steps = 2, lr = 1e-3,
    optim = A.optim or "adamw", grad_accum = A.accum or 1, log = log, eval_every = 0, on_step = function() end,
    offload = A.nvme and "nvme" or (A.host_optim and "cpu") or nil, offload_dir = nvme_dir }
if nvme_dir then os.execute("rm -rf " .. nvme_dir) end
local measured
for line in io.lines(log) do measured = json.decode(line).peak_bytes end
os.remove(log)
print(json.encode({ measured = measured, planned = plan().peak.train }))
