--[[
dist/shard_base.lua - a quantized base sharded over the ranks: QLoRA across devices.

    local sb = require("luatrain.dist.shard_base").new(model, pg)
    -- the model trains and evaluates as before; each rank holds 1/world of the 4-bit base

Each decoder layer's quantized weights (every QuantLinear's and quantized LoRALinear's packed
codes, block scales, double-quantization constants and code tables) are laid out as one byte
blob, each piece at a multiple of 64 bytes, padded to a multiple of world x 64 bytes, and cut
into `world` equal ranges: rank r keeps bytes [r*S, (r+1)*S) of every layer and lets the rest
go. Before a layer runs (its forward, and again before its backward, which recomputes a
checkpointed layer), the ranks all-gather its blob as bytes into one of two layer buffers and
its weights become views of the pieces there (lt_tensor_view_bytes), so the layer computes on
exactly the bytes it was quantized to: logits and gradients are the unsharded model's, bit for
bit. While a layer computes, the next one's gather is already under way into the other buffer
(the forward prefetches layer i + 1, the backward layer i - 1).

A rank holds its shards (base bytes / world, plus the padding) and the two layer buffers (each
the largest layer's blob). sb.bytes = { shards, buffers, unsharded } says so. The base cannot be
saved or merged while sharded (gather() first puts every layer back whole on every rank).
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"

local C, check = core.C, core.check

local M = {}
local Sharded = {}
Sharded.__index = Sharded

local FIELDS = { "packed", "absmax", "absmax2", "code", "nested_code" }
local ALIGN = 64
local sizes_buf = ffi.new("int64_t[8]")

local function align(n, a) return math.ceil(n / a) * a end

-- The quantized weights of a decoder layer, in module order: { q = the lt.quant weight, name }.
local function layer_quants(layer)
    local out = {}
    for _, r in ipairs(layer:named_modules()) do
        local q = rawget(r.module, "qweight")
        if q and not out[q] then
            out[q] = true
            out[#out + 1] = { q = q, name = r.name }
        end
    end
    return out
end

-- pg: the process group (lt.dist). The model's layers must be on one device and hold quantized
-- weights (lt.llama.from_pretrained with quant, or LlamaForCausalLM{quant}). opts.deferred:
-- shard nothing yet; the loader calls shard_layer(i) as each layer's weights arrive, then
-- install() (lt.llama.from_pretrained{shard = pg}: no rank ever holds the whole base).
function M.new(model, pg, opts)
    local lm = model.model or model
    local kids = lm.layers and lm.layers:children()
    if not kids or #kids == 0 then error("shard_base: a Llama model with decoder layers", 2) end
    local self = setmetatable({ model = model, lm = lm, pg = pg, layers = {}, pending = nil, n = #kids,
        bufs = {}, unhook = {}, bytes = { shards = 0, buffers = 0, unsharded = 0 } }, Sharded)
    lm._sharded_base = self
    if not (opts and opts.deferred) then
        for i = 1, #kids do self:shard_layer(i) end
        self:install()
    end
    return self
end

-- Cut layer i: this rank keeps its range of the layer's blob; the whole pieces go.
function Sharded:shard_layer(i)
    local W, r = self.pg.world, self.pg.rank
    local layer = self.lm.layers:children()[i]
    local pieces, off = {}, 0
    for _, e in ipairs(layer_quants(layer.inner or layer)) do
        local s = e.q:cdata()
        for _, f in ipairs(FIELDS) do
            local t = s[f]
            if t.storage ~= nil then
                if C.lt_tensor_is_contiguous(t) == 0 then
                    error(("shard_base: layer %d: %s's %s is not contiguous"):format(i, e.name, f), 2)
                end
                local dt = tensor.new_header()
                check(C.lt_tensor_share(dt, t))
                self.device = self.device or dt.device
                local sizes = {}
                for d = 0, t.ndim - 1 do sizes[#sizes + 1] = tonumber(t.sizes[d]) end
                local nbytes = dt:nbytes()
                pieces[#pieces + 1] = { state = s, field = f, dtype = t.dtype_id, sizes = sizes,
                    nbytes = nbytes, off = off, whole = dt }
                off = align(off + nbytes, ALIGN)
            end
        end
        -- the weight's bytes are the sharder's now: q:to() leaves it to it
        rawset(e.q, "_sharded", self)
    end
    if #pieces == 0 then error(("shard_base: layer %d holds no quantized weight"):format(i), 2) end
    local S = align(off, W * ALIGN) / W
    local shard = tensor.empty({ S }, { dtype = "u8", device = self.device })
    shard:zero_()
    -- this rank's range of the blob, piece by piece
    local lo, hi = r * S, (r + 1) * S
    for _, p in ipairs(pieces) do
        local a, b = math.max(lo, p.off), math.min(hi, p.off + p.nbytes)
        if b > a then
            local src = tensor.new_header()
            sizes_buf[0] = b - a
            check(C.lt_tensor_view_bytes(src, p.whole, C.LT_DTYPE_U8, 1, sizes_buf, a - p.off))
            shard:narrow(1, a - lo + 1, b - a):copy_(src)
            src:free()
        end
        self.bytes.unsharded = self.bytes.unsharded + p.nbytes
    end
    -- the whole pieces go: the state's tensors and the copies made above
    for _, p in ipairs(pieces) do
        p.whole:free()
        p.whole = nil
        C.lt_tensor_release(p.state[p.field])
    end
    self.layers[i] = { pieces = pieces, S = S, shard = shard }
    self.bytes.shards = self.bytes.shards + S
end

-- The two layer buffers and the hooks, once every layer is cut.
function Sharded:install()
    if #self.unhook > 0 then return self end
    local biggest = 0
    for i = 1, self.n do
        if not self.layers[i] then error(("shard_base: layer %d was never sharded"):format(i), 2) end
        biggest = math.max(biggest, self.layers[i].S * self.pg.world)
    end
    self.bufs = { tensor.empty({ biggest }, { dtype = "u8", device = self.device }),
        tensor.empty({ biggest }, { dtype = "u8", device = self.device }) }
    self.bytes.buffers = 2 * biggest
    -- gather before a layer runs; the next one in that direction comes meanwhile
    self.unhook = {
        self.lm:add_layer_hook("pre_forward", function(i) self:_ensure(i, i + 1) end),
        self.lm:add_layer_hook("pre_backward", function(i) self:_ensure(i, i - 1) end),
    }
    return self
end

-- model:to(device): the shards and the buffers move; the weights' views are let go (the next
-- gather points them at the new buffers).
function Sharded:to(device)
    if device == self.device then return self end
    if self.pending then
        self.pending.work:wait()
        self.pending = nil
    end
    for _, L in pairs(self.layers) do
        local moved = L.shard:to(device)
        L.shard:free()
        L.shard = moved
        for _, p in ipairs(L.pieces) do C.lt_tensor_release(p.state[p.field]) end
    end
    for k, b in ipairs(self.bufs) do
        local n = b:numel()
        b:free()
        self.bufs[k] = tensor.empty({ n }, { dtype = "u8", device = device })
    end
    self.device = device
    return self
end

-- Start (async) or do the all-gather of layer i's blob into its buffer.
function Sharded:_gather(i, async)
    local L = self.layers[i]
    local buf = self.bufs[i % 2 + 1]
    local out = buf:narrow(1, 1, L.S * self.pg.world)
    return self.pg:all_gather(out, L.shard, { async = async }), buf
end

-- Point layer i's quantized weights at their pieces in `buf`.
function Sharded:_point(i, buf)
    for _, p in ipairs(self.layers[i].pieces) do
        for d, n in ipairs(p.sizes) do sizes_buf[d - 1] = n end
        check(C.lt_tensor_view_bytes(p.state[p.field], buf, p.dtype, #p.sizes, sizes_buf, p.off))
    end
end

-- Layer i's bytes present and its weights pointing at them; then layer `nxt`'s gather begins.
function Sharded:_ensure(i, nxt)
    local p = self.pending
    self.pending = nil
    local buf
    if p and p.layer == i then
        p.work:wait()
        buf = p.buf
    else
        -- a prefetch of another layer (an evaluation that stopped early) finishes first:
        -- it may be filling the buffer wanted now
        if p then p.work:wait() end
        local w
        w, buf = self:_gather(i, false)
        w:wait()
    end
    self:_point(i, buf)
    if nxt >= 1 and nxt <= self.n then
        local w, b = self:_gather(nxt, true)
        self.pending = { layer = nxt, work = w, buf = b }
    end
end

-- Every layer whole again on every rank (each piece its own tensor, as before sharding), and
-- the hooks removed: for saving, merging or exporting.
function Sharded:gather()
    if self.pending then
        self.pending.work:wait()
        self.pending = nil
    end
    for i = 1, self.n do
        local w, buf = self:_gather(i, false)
        w:wait()
        for _, p in ipairs(self.layers[i].pieces) do
            for d, n in ipairs(p.sizes) do sizes_buf[d - 1] = n end
            local view = tensor.new_header()
            check(C.lt_tensor_view_bytes(view, buf, p.dtype, #p.sizes, sizes_buf, p.off))
            -- a storage of its own, so the buffers can go
            local own = tensor.empty(p.sizes, { dtype = ffi.string(C.lt_dtype_info(p.dtype).name),
                device = self.device })
            own:copy_(view)
            check(C.lt_tensor_share(p.state[p.field], own))
            own:free()
            view:free()
        end
        self.layers[i].shard:free()
    end
    for _, b in ipairs(self.bufs) do b:free() end
    for _, f in ipairs(self.unhook) do f() end
    for _, layer in ipairs(self.lm.layers:children()) do
        for _, e in ipairs(layer_quants(layer.inner or layer)) do rawset(e.q, "_sharded", nil) end
    end
    self.lm._sharded_base = nil
    self.layers, self.bufs, self.unhook = {}, {}, {}
end

return M
