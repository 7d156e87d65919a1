--[[
dist/ddp.lua - data-parallel gradients: every rank holds the whole model; before the
optimizer step the gradients of all ranks' micro-batches are summed.

    local ddp = require("luatrain.dist.ddp").new(model, pg, { bucket_mb = 25 })
    ddp:arm()                      -- before the step's last micro-batch's backward
    model:forward_backward(...)    -- buckets' all-reduces start during the backward
    ddp:finish()                   -- the rest started; all waited for (reduce_gradients)

Buckets. The flat gradient buffers (Module:flatten_parameters) are cut into buckets in
reverse parameter order, the order the backward completes them: each bucket is a
contiguous slice of its buffer, about bucket_mb (25 MB), the first one about first_mb (1 MB)
so communication starts early. Each parameter has a point of the backward after which its
gradient is complete: the head and the final norm before the last decoder layer's backward,
decoder layer i after its own backward, the embeddings (and anything else) only at the end.
On the last micro-batch of a step a bucket's all-reduce starts at the first such point at
which all its parameters are complete (the decoder's layer hooks, nn/llama.lua), and MPI is
given progress at every later point, so the reductions overlap the rest of the backward.
Micro-batches before the last accumulate locally and communicate nothing.

The reduction is a sum, not a mean: the trainer divides every micro-batch's loss by the
trained-token count of the whole step on all ranks, so the sum is the step's gradient.
]]
local M = {}
local DDP = {}
DDP.__index = DDP

local MB = 1024 * 1024

-- When the backward has completed parameter `name` of a model with L decoder layers:
-- 0 before any layer's backward (head, final norm), L - i + 1 after layer i (1-based),
-- L + 1 at the end (embeddings, and names this does not know).
local function ready_at(name, L)
    local k = name:match("^model%.layers%.(%d+)%.")
    if k then return L - (tonumber(k) + 1) + 1 end
    if name:match("^lm_head%.") or name:match("^model%.norm%.") then return 0 end
    return L + 1
end

-- opts: bucket_mb (25), first_mb (1).
function M.new(model, pg, opts)
    opts = opts or {}
    local groups = model:flat_parameters()
    if not groups then error("ddp: flatten the model's parameters first (Module:flatten_parameters)", 2) end
    local decoder = model.model and model.model.add_layer_hook and model.model or nil
    local L = decoder and decoder.layers:len() or 0
    local self = setmetatable({ model = model, pg = pg, buckets = {}, armed = false, hooks = {} }, DDP)
    local target, first = (opts.bucket_mb or 25) * MB, (opts.first_mb or 1) * MB
    for _, g in ipairs(groups) do
        if g.grads then
            local esize = g.grads:nbytes() / math.max(g.numel, 1)
            -- entries from the last: a bucket grows until it holds about its target
            local hi, ready, limit = g.numel, 0, first
            for i = #g.entries, 1, -1 do
                local e = g.entries[i]
                local r = decoder and ready_at(e.name, L) or 1
                ready = math.max(ready, r)
                local bytes = (hi - e.offset) * esize
                if bytes >= limit or i == 1 then
                    local lo = i == 1 and 0 or e.offset
                    self.buckets[#self.buckets + 1] = { view = g.grads:narrow(1, lo + 1, hi - lo), lo = lo,
                        hi = hi, ready = ready, group = g }
                    hi, ready, limit = lo, 0, target
                end
            end
        end
    end
    if decoder then
        self.hooks[#self.hooks + 1] = decoder:add_layer_hook("pre_backward", function(i)
            if i == L then self:_launch(0) end
            self.pg:progress()
        end)
        self.hooks[#self.hooks + 1] = decoder:add_layer_hook("post_backward", function(i)
            self:_launch(L - i + 1)
            self.pg:progress()
        end)
    end
    return self
end

-- Start the all-reduce of every bucket complete at backward point `point`, if armed.
function DDP:_launch(point)
    if not self.armed then return end
    for _, b in ipairs(self.buckets) do
        if not b.work and b.ready <= point and b.hi > b.lo then
            b.work = self.pg:all_reduce(b.view, "sum", { async = true })
        end
    end
end

-- The next backward is the step's last micro-batch: its buckets communicate.
function DDP:arm()
    self.armed = true
end

-- Start what the backward did not (or everything, when the model has no layer hooks),
-- then wait for every bucket: after this, every rank holds the summed gradients.
function DDP:finish()
    self.armed = true
    self:_launch(math.huge)
    for _, b in ipairs(self.buckets) do
        if b.work then
            b.work:wait()
            b.work = nil
        end
    end
    self.armed = false
end

-- Remove the layer hooks (the model trains alone again).
function DDP:close()
    for _, remove in ipairs(self.hooks) do remove() end
    self.hooks = {}
end

-- The buckets as { lo, hi, ready } (tests, logs).
function DDP:layout()
    local out = {}
    for i, b in ipairs(self.buckets) do out[i] = { lo = b.lo, hi = b.hi, ready = b.ready } end
    return out
end

return M
