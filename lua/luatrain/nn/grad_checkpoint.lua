--[[
nn/grad_checkpoint.lua - gradient checkpointing: a wrapper that keeps only a module's
output and re-runs its forward in backward. (Run checkpoints, what a run saves to resume,
are checkpoint.lua.)

Modules own their activation buffers (nn/module.lua), so "dropping activations" means
sharing them: every GradCheckpoint made with the same arena points the buffers of its wrapped
module at one set, keyed by the buffer's path inside the module. Identical layers (the
decoder layers of a Llama) then hold one layer's activations between them instead of one
set each; the backward of each layer first re-runs its forward to refill the arena. A
wrapper keeps its own output (the next layer's input) and input gradient.

    model:gradient_checkpointing(true)   -- LlamaForCausalLM / LlamaModel: every decoder layer

    model:gradient_checkpointing(true, { offload = true })   -- and inputs kept on the host

Activation offload (offload = true on the arena): each wrapper keeps its layer's input in
the paged pool (host memory outside the device's budget; page-locked once the CUDA backend
is loaded) instead of keeping its output on the device. Outputs then pass from layer to
layer through two device buffers the arena owns (layer i reads one and writes the other),
and the backward brings inputs back into two more, alternating: layer i's input is
prefetched while layer i + 1 runs its backward. Device memory for L layers falls from
L + 1 (B, T, C) tensors to 4; the host holds L. (Input gradients pass the same way in every
mode: two shared buffers.) The numbers are the same bits. On CUDA the transfers run on the
device's copy stream (lt_tensor_copy_async) beside the compute stream's kernels: a layer's
input goes to the host while the layer computes, and the compute stream waits for a
transfer only where a kernel is about to overwrite its source (the passing buffer two
layers on) or read its result (the recomputation). On a CPU the same steps run as plain
copies: they buy nothing there but show the mechanics and the accounting.

Names stay transparent: a checkpointed layer's parameters keep the wrapped module's names
(model.layers.0.self_attn.q_proj.weight), so state dicts and adapters are unchanged.
Memory per checkpointed layer falls from all of its activations to one (B, T, C) tensor (its
output), for one extra forward of the layer in backward; the input gradients pass through two
buffers the wrappers share. Results are bit-identical to running
without checkpointing (the recomputation is the same arithmetic on the same inputs).
]]
local Module = require("luatrain.nn.module").Module

local tensor = require "luatrain.tensor"

local GradCheckpoint = Module:extend("GradCheckpoint")

-- Point the buffers and views of m and of every module below it at the arena's sets for
-- their paths inside m.
local function share_buffers(m, arena)
    for _, r in ipairs(m:named_modules()) do
        local slot = arena.slots[r.name]
        if slot == nil then
            slot = { buffers = {}, views = {} }
            arena.slots[r.name] = slot
        end
        r.module._buffers, r.module._views = slot.buffers, slot.views
    end
end

-- A new arena to pass to several GradCheckpoints that should share activations.
function GradCheckpoint.arena(opts)
    -- reading: the passing buffer's pending transfer to the host (its ticket)
    return { slots = {}, owner = nil, offload = opts and opts.offload and true or false, reading = {} }
end

-- An arena buffer (a device tensor of the given shape and dtype, on `device`), reused while
-- the shape holds.
local function arena_buffer(arena, name, shape, dtype, device)
    local b = arena[name]
    if b == nil then
        b = tensor.new_header()
        arena[name] = b
    end
    return b:resize_(shape, { dtype = dtype, device = device })
end

function GradCheckpoint:init(inner, arena)
    self.inner = inner
    self.arena = arena or GradCheckpoint.arena()
    -- transparent for names and parameter walks: the wrapped module's parameters and
    -- children appear as this module's own
    self._param_names, self._params, self._grads = inner._param_names, inner._params, inner._grads
    self._child_names, self._children = inner._child_names, inner._children
    self._tied = inner._tied
    -- its own buffers (output, grad_input) on the wrapped module's device and precision
    self._device, self._act_dtype = inner._device, inner._act_dtype
    share_buffers(inner, self.arena)
end

-- Point the wrapped module's buffers at the arena again: needed after a descendant was
-- replaced (lt.lora.apply swaps Linears for LoRALinears, whose buffers start private).
function GradCheckpoint:reshare()
    share_buffers(self.inner, self.arena)
    self.arena.owner = nil
    return self
end

function GradCheckpoint:extra_repr()
    return self.inner.__name
end

function GradCheckpoint:train(flag)
    Module.train(self, flag)
    self.inner:train(flag)
    return self
end

function GradCheckpoint:forward(x)
    -- the random state the forward starts from, so the recomputation in backward draws
    -- the same dropout masks
    local rng = tensor.default_rng
    self.rng_seed, self.rng_offset = rng.seed, rng.offset
    local arena = self.arena
    if arena.offload then
        -- the input goes to the host pool (on a device: on its copy stream, while the layer
        -- computes); the backward brings it back
        local h = self.host_input
        if h == nil or h.dtype ~= x.dtype or table.concat(h:shape(), ",") ~= table.concat(x:shape(), ",") then
            if h then h:free() end
            h = tensor.empty(x:shape(), { dtype = x.dtype, paged = true })
            self.host_input = h
        end
        local ticket = h:copy_async_(x)
        -- the layer before this one in the forward (none when x is not a passing buffer: the
        -- first layer's input comes from the embedding), for the backward's prefetch
        local passing = x == arena.pass_a and "pass_a" or (x == arena.pass_b and "pass_b" or nil)
        self.prev = passing and arena.last or nil
        arena.last = self
        if passing then arena.reading[passing] = ticket end
    end
    local y = self.inner:forward(x)
    arena.owner = self
    local out
    if arena.offload then
        -- outputs alternate between the arena's two buffers: this layer's input is the other;
        -- the one written now was the previous layer's input, which must have reached the host
        arena.flip = arena.flip == "pass_a" and "pass_b" or "pass_a"
        out = arena_buffer(arena, arena.flip, y:shape(), y.dtype, y.device)
        tensor.copy_wait(y.device, arena.reading[arena.flip], false)
        arena.reading[arena.flip] = nil
    else
        out = self:buffer("output", y:shape(), y.dtype)
    end
    out:copy_(y)
    self.output = out
    return out
end

-- Start bringing this layer's input back from the host into one of the arena's two restore
-- buffers (on a device: on its copy stream, after the kernels already queued, which are the
-- last to read that buffer).
local function restore(self, device)
    local arena, h = self.arena, self.host_input
    arena.restore_flip = arena.restore_flip == "restored_a" and "restored_b" or "restored_a"
    local buf = arena_buffer(arena, arena.restore_flip, h:shape(), h.dtype, device)
    self.restoring = { buf = buf, ticket = buf:copy_async_(h) }
end

function GradCheckpoint:backward(x, dy)
    if self.arena.offload then
        -- the caller's x was one of the passing buffers, long overwritten: the input comes
        -- back from the host, prefetched while the layer after this one ran its backward; the
        -- layer before this one starts coming back now, while this one computes
        if not self.restoring then restore(self, dy.device) end
        local r = self.restoring
        self.restoring = nil
        if self.prev then restore(self.prev, dy.device) end
        tensor.copy_wait(dy.device, r.ticket, false)
        x = r.buf
    end
    -- the arena holds the activations of whichever wrapper ran forward last
    if self.arena.owner ~= self then
        local rng = tensor.default_rng
        local seed, offset = rng.seed, rng.offset
        rng.seed, rng.offset = self.rng_seed, self.rng_offset
        self.inner:forward(x)
        rng.seed, rng.offset = seed, offset
        self.arena.owner = self
    end
    local g = self.inner:backward(x, dy)
    -- the input gradient leaves the arena (the next layer's backward overwrites it) for one
    -- of two buffers the wrappers share: layer i's is read as dy by layer i - 1's backward,
    -- which writes the other, so two serve every layer
    self.arena.grad_flip = self.arena.grad_flip == "grad_a" and "grad_b" or "grad_a"
    local gi = arena_buffer(self.arena, self.arena.grad_flip, g:shape(), g.dtype, g.device)
    gi:copy_(g)
    self.grad_input = gi
    return gi
end

function GradCheckpoint:free_buffers()
    Module.free_buffers(self)
    if self.host_input then
        self.host_input:free()
        self.host_input = nil
    end
    self.restoring, self.prev = nil, nil
    for _, k in ipairs({ "pass_a", "pass_b", "restored_a", "restored_b", "grad_a", "grad_b" }) do
        if self.arena[k] then
            self.arena[k]:free()
            self.arena[k] = nil
        end
    end
    self.arena.owner = nil
end

return GradCheckpoint
