--[[
tests/dist/common.lua - what the multi-process tests share: a small untied Llama, a dataset
of samples with different trained counts, and one training run on a given process group.

Untied embeddings: a tied embedding gets two contributions per micro-batch (the head's and
the lookup's), and one process accumulating micro-batches adds them in another order than
ranks that sum whole micro-batch gradients, so their last bits differ; every other
gradient is added once per micro-batch and agrees bit for bit.
]]
local lt = require "luatrain"

local M = {}

M.CFG = { vocab_size = 61, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 3,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 32 }

function M.dataset()
    local samples = {}
    for i = 1, 90 do
        local n = 4 + (i * 5) % 9
        local ids, train = {}, {}
        for j = 1, n do
            ids[j] = (i * 13 + j * 7) % 60 + 1
            train[j] = j > 1 + i % 3
        end
        samples[i] = { ids = ids, train = train }
    end
    return lt.data.tokens.from_samples(samples)
end

-- Train on `group` (lt.dist.local_group() for one process). opts: steps, accum, optim
-- ("adamw", "paged_adamw", "nvme_adamw" (moments in files), "cpu_adamw" (in host memory) or
-- "sgd"), zero, offload_params ("cpu": ZeRO-3's layer shards in host memory, as a GPU's
-- are with cpu_adamw), grad_clip, checkpoint_dir, save_every, resume, grads_at (the
-- step whose summed gradients are returned, cloned after reduce_gradients).
-- Returns { losses = loss_curve, grads = {name = tensor}, model, result }.
function M.train(group, opts)
    lt.set_num_threads(1) -- one thread per rank, whatever share of the cores a rank has
    lt.manual_seed(7)
    local model
    if opts.lora then
        -- QLoRA: an NF4 base (frozen, with its embeddings and norms) and LoRA on every linear
        model = lt.nn.LlamaForCausalLM(M.CFG, { quant = { type = "nf4", blocksize = 64, double_quant = true } })
        lt.lora.apply(model, { r = 4, alpha = 8, dropout = 0 })
        for _, r in ipairs(model:parameters()) do
            if r.name:find("lora_B") then r.param:normal_(0, 0.02) end
        end
    else
        model = lt.llama.new(M.CFG)
    end
    local optimizer
    if opts.optim == "sgd" then
        optimizer = lt.optim.SGD(model:parameters(), { lr = 0.05 })
    else
        -- "paged_adamw": the same AdamW with its moments in the paged pool
        optimizer = lt.optim.AdamW(model:parameters(), { lr = 5e-3, weight_decay = 0.1,
            paged = opts.optim == "paged_adamw",
            offload = opts.optim == "nvme_adamw" and "nvme" or (opts.optim == "cpu_adamw" and "cpu") or nil,
            offload_dir = opts.optim == "nvme_adamw" and (os.getenv("TMPDIR") or "/tmp") .. "/lt_nvme_test" or nil,
            page_mb = opts.optim == "nvme_adamw" and 0.01 or nil })
    end
    local tr = lt.trainer.new{ model = model, train = M.dataset(), group = group, grad_accum = opts.accum or 1,
        batch_size = 2, seq_len = 12, steps = opts.steps or 4, optimizer = optimizer, schedule = "constant",
        grad_clip = opts.grad_clip or 0.5, zero = opts.zero or 0, seed = 3, checkpoint_dir = opts.checkpoint_dir,
        save_every = opts.save_every, resume = opts.resume, offload_params = opts.offload_params }
    local out = { model = model }
    if opts.grads_at then
        tr:hook("reduce_gradients", function(_, st)
            if st.step == opts.grads_at then
                out.grads = {}
                for _, r in ipairs(model:parameters()) do out.grads[r.name] = r.grad:clone() end
            end
        end)
    end
    out.result = tr:run()
    out.losses = out.result.loss_curve
    out.trainer = tr
    return out
end

-- Relative L2 difference of two tensors.
function M.rel(a, b)
    local d = (a - b):norm()
    local n = b:norm()
    return n > 0 and d / n or d
end

return M
