--[[
nn/layers.lua - Linear, Embedding, RMSNorm.

Shapes: x (..., in) -> (..., out) for Linear; ids (...) -> (..., C) for Embedding;
x (..., C) -> (..., C) for RMSNorm. Every output and gradient lives in a buffer the module
owns (see nn/module.lua).
]]
local tensor = require "luatrain.tensor"
local F = require "luatrain.ops.nn"
local ops = require "luatrain.ops.elementwise"
local Module = require("luatrain.nn.module").Module

local M = {}

-- ---- Linear ----------------------------------------------------------------------------

-- y = x @ weight^T (+ bias). weight (out, in): f32 when trainable; a frozen one may be
-- bf16/f16 (matmul converts it panel by panel).
local Linear = Module:extend("Linear")
M.Linear = Linear

-- opts: bias (false), dtype ("f32"), device ("cpu"), trainable (true), weight (a tensor to
-- use as is)
function Linear:init(in_features, out_features, opts)
    opts = opts or {}
    self.in_features, self.out_features = in_features, out_features
    local w = opts.weight
    if w == nil then
        -- PyTorch's default: uniform in +-1/sqrt(in)
        local bound = 1 / math.sqrt(in_features)
        w = tensor.empty({ out_features, in_features }, { dtype = opts.dtype, device = opts.device })
        w:uniform_(-bound, bound)
    end
    self:register_parameter("weight", w, { trainable = opts.trainable })
    if opts.bias then
        self:register_parameter("bias", tensor.zeros({ out_features }, { device = opts.device }),
            { trainable = opts.trainable })
    end
end

function Linear:extra_repr()
    return ("%d -> %d%s, %s"):format(self.in_features, self.out_features,
        self.bias and ", bias" or "", self.weight.dtype)
end

local function out_shape(x, last)
    local s = x:shape()
    s[#s] = last
    return s
end

-- The weight to multiply x with: the weight itself, or, when x is in a lower precision
-- than an f32 weight (set_compute_dtype("bf16") with f32 master weights), a copy cast to
-- x's dtype, refreshed every forward and kept for the backward: (out, in) in x's dtype.
function Linear:compute_weight(x)
    local w = self.weight
    if x.dtype == w.dtype or w.dtype ~= "f32" or x.dtype == "f32" then return w end
    local wc = self:buffer("weight_cast", w:shape(), x.dtype)
    wc:copy_(w)
    return wc
end

-- The weight the last forward multiplied with (see compute_weight).
function Linear:_forward_weight(dy)
    local wc = self._buffers.weight_cast
    if wc and wc.storage ~= nil and wc.dtype == dy.dtype and self.weight.dtype ~= dy.dtype then return wc end
    return self.weight
end

function Linear:forward(x)
    local out = self:buffer("output", out_shape(x, self.out_features))
    F.linear(x, self:compute_weight(x), out)
    if self.bias then
        -- out (N, out) += bias (out) broadcast over rows
        tensor.methods.add_(out, self.bias)
    end
    self.output = out
    return out
end

function Linear:backward(x, dy)
    local dx = self:buffer("grad_input", x:shape())
    local dw = self._grads.weight or false
    F.linear_backward(dy, x, self:_forward_weight(dy), { dx = dx, dw = dw })
    local db = self._grads.bias
    if db then
        -- db (out) += dy summed over every leading dim, through an owned (1, out) buffer in
        -- the bias gradient's dtype
        local dy2 = self:view_of("dy2", dy, { -1, self.out_features })
        local colsum = self:buffer("bias_colsum", { 1, self.out_features }, db.dtype)
        ops.reduce_forward("sum", dy2, { 1 }, true, colsum)
        tensor.methods.add_(db, self:view_of("bias_colsum_flat", colsum, { self.out_features }))
    end
    self.grad_input = dx
    return dx
end

-- ---- Embedding --------------------------------------------------------------------------

local Embedding = Module:extend("Embedding")
M.Embedding = Embedding

function Embedding:init(num_embeddings, dim, opts)
    opts = opts or {}
    self.num_embeddings, self.dim = num_embeddings, dim
    local w = opts.weight or tensor.randn({ num_embeddings, dim }, { dtype = opts.dtype, device = opts.device })
    self:register_parameter("weight", w, { trainable = opts.trainable })
end

function Embedding:extra_repr()
    return ("%d x %d, %s"):format(self.num_embeddings, self.dim, self.weight.dtype)
end

function Embedding:forward(ids)
    local s = ids:shape()
    s[#s + 1] = self.dim
    local out = self:buffer("output", s)
    F.embedding(self.weight, ids, out)
    self.output = out
    return out
end

-- Accumulates the weight gradient; ids have no gradient (returns nil).
function Embedding:backward(ids, dout)
    local dw = self._grads.weight
    if dw then F.embedding_backward(dout, ids, dw) end
    return nil
end

-- ---- RMSNorm ----------------------------------------------------------------------------

local RMSNorm = Module:extend("RMSNorm")
M.RMSNorm = RMSNorm

function RMSNorm:init(dim, eps, opts)
    opts = opts or {}
    self.dim, self.eps = dim, eps or 1e-6
    self:register_parameter("weight", opts.weight or tensor.ones({ dim }, { device = opts.device }),
        { trainable = opts.trainable })
end

function RMSNorm:extra_repr()
    return ("%d, eps=%g"):format(self.dim, self.eps)
end

function RMSNorm:forward(x)
    if x:dim() == 0 or x:size(-1) ~= self.dim then
        error(("RMSNorm(%d): the input's last dim is %s, not %d"):format(self.dim,
            x:dim() > 0 and tostring(x:size(-1)) or "missing (0-dim input)", self.dim), 2)
    end
    local out = self:buffer("output", x:shape())
    local rows = x:numel() / self.dim
    local rstd = self:buffer("rstd", { rows }, "f32")
    F.rmsnorm(x, self.weight, self.eps, out, rstd)
    self.output = out
    return out
end

function RMSNorm:backward(x, dy)
    local dx = self:buffer("grad_input", x:shape())
    F.rmsnorm_backward(dy, x, self.weight, self._buffers.rstd, dx, self._grads.weight or false)
    self.grad_input = dx
    return dx
end

return M
