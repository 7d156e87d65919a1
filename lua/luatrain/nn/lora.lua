--[[
nn/lora.lua - LoRA: a frozen linear layer plus a trained low-rank update,
    y = x W^T + s * B A dropout(x),   A (r, in), B (out, r),
with s = alpha / r, or alpha / sqrt(r) for rsLoRA. A starts Kaiming-uniform (PEFT's
default, bound 1/sqrt(in)) or Gaussian (std 1/r), B starts at zero, so a fresh adapter
changes nothing. The base W may be f32, bf16, f16 or a quantized weight (NF4, FP4, int8
from lt.quant); it is never trained and never expanded whole to f32.

With DoRA the weight is also split into a direction and a trained magnitude m (out):
    y = (m / ||W + s B A||_row) * (x W^T + s x A^T B^T)
where, as in the DoRA paper and PEFT, the row norm is treated as a constant in backward.
The norm comes without expanding W: ||W_i + s (BA)_i||^2 = ||W_i||^2 (computed once) +
2 s B_i . (A W^T)_:,i + s^2 B_i (A A^T) B_i^T, where A W^T is the base layer applied to the
rows of A (a product with r rows).

Names follow PEFT: a wrapped q_proj has parameters q_proj.weight (the frozen base),
q_proj.lora_A.weight, q_proj.lora_B.weight (and q_proj.lora_magnitude_vector with DoRA).
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"
local F = require "luatrain.ops.nn"
local modmod = require "luatrain.nn.module"
local layers = require "luatrain.nn.layers"

local C, check = core.C, core.check
local Module, Linear = modmod.Module, layers.Linear
local ew = require "luatrain.ops.elementwise"

local M = {}

local LoRALinear = Module:extend("LoRALinear")
M.LoRALinear = LoRALinear

local function quant()
    return require "luatrain.quant"
end

-- base: an nn.Linear (its weight becomes the frozen base) or a QuantLinear.
-- opts: r (8), alpha (16), dropout (0), rslora (false), init ("kaiming" | "gaussian"),
--       dora (false)
function LoRALinear:init(base, opts)
    opts = opts or {}
    local r = opts.r or 8
    if type(r) ~= "number" or r < 1 or r ~= math.floor(r) then
        error(("LoRA: r must be a positive integer, got %s"):format(tostring(r)), 3)
    end
    self.in_features, self.out_features = base.in_features, base.out_features
    self.r, self.alpha = r, opts.alpha or 16
    self.rslora = opts.rslora and true or false
    self.scaling = self.rslora and self.alpha / math.sqrt(r) or self.alpha / r
    self.dropout = opts.dropout or 0
    if not (self.dropout >= 0 and self.dropout < 1) then
        error(("LoRA: dropout must be in [0, 1), got %s"):format(tostring(self.dropout)), 3)
    end
    self.merged = false
    if base.qweight then
        self.qweight = base.qweight -- quantized base: no tensor parameter to register
        self.base_dtype = base.qweight.type
    else
        self:register_parameter("weight", base.weight, { trainable = false })
        self.base_dtype = base.weight.dtype
    end
    -- a biased base (Qwen2's q, k, v) keeps its bias, frozen, added after the base product
    if base.bias then
        if opts.dora then error("LoRA: DoRA over a layer with a bias is not supported", 3) end
        self:register_parameter("bias", base.bias, { trainable = false })
    end
    self:add_module("lora_A", Linear(self.in_features, r))
    self:add_module("lora_B", Linear(r, self.out_features, { weight = tensor.zeros(self.out_features, r) }))
    if opts.init == "gaussian" then
        self.lora_A.weight:normal_(0, 1 / r)
    elseif opts.init == "olora" or opts.init == "pissa" then
        if opts.dora then
            error(("LoRA: init=%s and DoRA do not combine (DoRA's magnitude is of the base the adapter "
                .. "rewrites)"):format(opts.init), 3)
        end
        self:_principal_init(opts.init, opts.pissa_niter or 16)
    elseif opts.init ~= nil and opts.init ~= "kaiming" then
        error(("LoRA: init must be \"kaiming\", \"gaussian\", \"olora\" or \"pissa\", got %q"):format(
            tostring(opts.init)), 3)
    end
    self.dora = opts.dora and true or false
    if self.dora then
        -- ||W_i||^2 once; the magnitude starts at ||W_i|| (B = 0 at the start)
        -- kept as state, not as a buffer: buffers are scratch that checkpointing shares and
        -- model:to releases
        local w = self:_base_f32()
        local sq = tensor.empty({ self.out_features, 1 }, { device = w.device })
        ew.reduce_forward("sum", w:square_(), { 2 }, true, sq)
        w:free()
        self._dora_base_sq = sq
        self:register_parameter("lora_magnitude_vector", sq:sqrt():view(self.out_features))
    end
end

-- ---- OLoRA and PiSSA: adapters that start from the weight's own directions ------------------

-- Rows of m (k, n) made orthonormal in place, in order (modified Gram-Schmidt over rows,
-- each step a matrix product against the rows before it); a row that vanishes stays zero.
local function orthonormal_rows(m)
    local k = m:size(1)
    for i = 1, k do
        local row = m:narrow(1, i, 1)
        if i > 1 then
            local prev = m:narrow(1, 1, i - 1)
            for _ = 1, 2 do -- twice: orthogonal to working precision
                local h = F.matmul(row, prev, { trans_b = true })          -- (1, i - 1)
                F.matmul(h, prev, { out = row, alpha = -1, beta = 1 })     -- row -= h prev
                h:free()
            end
            prev:free()
        end
        local nn = F.matmul(row, row, { trans_b = true })                   -- (1, 1)
        local n = math.sqrt(nn[1][1])
        nn:free()
        if n > 0 then row:mul_(1 / n) end
        row:free()
    end
    return m
end

-- SVD of a small square matrix m (r x r Lua table) by one-sided Jacobi rotations on its
-- columns: m = U diag(S) V^T with S descending. Returns U, S, V as tables (U[i][j] = column j).
local function small_svd(m, r)
    local a, v = {}, {}
    for i = 1, r do
        a[i], v[i] = {}, {}
        for j = 1, r do a[i][j], v[i][j] = m[i][j], i == j and 1 or 0 end
    end
    for _ = 1, 60 do
        local rotated = false
        for p = 1, r - 1 do
            for q = p + 1, r do
                local al, be, ga = 0, 0, 0
                for i = 1, r do
                    local x, y = a[i][p], a[i][q]
                    al, be, ga = al + x * x, be + y * y, ga + x * y
                end
                if math.abs(ga) > 1e-15 * math.sqrt(al * be) and ga ~= 0 then
                    rotated = true
                    local zeta = (be - al) / (2 * ga)
                    local t = (zeta >= 0 and 1 or -1) / (math.abs(zeta) + math.sqrt(1 + zeta * zeta))
                    local c = 1 / math.sqrt(1 + t * t)
                    local sn = c * t
                    for i = 1, r do
                        local x, y = a[i][p], a[i][q]
                        a[i][p], a[i][q] = c * x - sn * y, sn * x + c * y
                        x, y = v[i][p], v[i][q]
                        v[i][p], v[i][q] = c * x - sn * y, sn * x + c * y
                    end
                end
            end
        end
        if not rotated then break end
    end
    local order, norms = {}, {}
    for j = 1, r do
        local n = 0
        for i = 1, r do n = n + a[i][j] * a[i][j] end
        norms[j], order[j] = math.sqrt(n), j
    end
    table.sort(order, function(x, y) return norms[x] > norms[y] end)
    local U, S, V = {}, {}, {}
    for i = 1, r do U[i], V[i] = {}, {} end
    for k, j in ipairs(order) do
        S[k] = norms[j]
        for i = 1, r do
            U[i][k] = norms[j] > 0 and a[i][j] / norms[j] or 0
            V[i][k] = v[i][j]
        end
    end
    return U, S, V
end

--[[ OLoRA (init = "olora"): W = Q R, B = Q's first r columns (orthonormal), A = their rows
of R (A = B^T W). PiSSA (init = "pissa"): W's top r singular triplets, found by subspace
iteration (niter rounds) and a Rayleigh-Ritz step: B = U sqrt(S / s), A = sqrt(S / s) V^T.
Either way the base becomes W - s B A, so the model computes what it did before training; lt.lora.save turns the
trained pair back into an adapter for the original W (see the peft module). Needs an
unquantized base: the base changes. ]]
function LoRALinear:_principal_init(kind, niter)
    if self.qweight then
        error(("LoRA: init=%s rewrites the base weight, which a quantized base cannot take; load the base "
            .. "unquantized"):format(kind), 4)
    end
    local r, s = self.r, self.scaling
    local W = self:_base_f32() -- (out, in), worked on in host memory once
    if W.device ~= "cpu" then
        local h = W:cpu()
        W:free()
        W = h
    end
    local A, B
    if kind == "olora" then
        -- B^T: W's first r columns as rows, made orthonormal (Q's first columns, transposed)
        local bt = W:narrow(2, 1, r):t():contiguous()                      -- (r, out)
        orthonormal_rows(bt)
        A = F.matmul(bt, W)                                                -- (r, in) = B^T W
        B = bt:t():contiguous()                                            -- (out, r)
        bt:free()
    else
        -- subspace iteration: V (r, in) rows span W's top right singular vectors. The start
        -- comes from its own fixed seed, so building the model again (a resume) gives the
        -- same split of W, and the default stream is left as it was.
        local V = tensor.empty({ r, self.in_features })
        local g = ffi.new("lt_rng")
        C.lt_rng_seed(g, 0x915A + r)
        V:normal_(0, 1, g)
        orthonormal_rows(V)
        local U
        for _ = 1, niter do
            if U then U:free() end
            U = F.matmul(V, W, { trans_b = true })                         -- (r, out) = V W^T
            orthonormal_rows(U)
            local V2 = F.matmul(U, W)                                      -- (r, in) = U W
            V:free()
            V = orthonormal_rows(V2)
        end
        -- Rayleigh-Ritz: U W V^T (r, r) = Us diag(S) Vs^T, so the rows Us^T U and Vs^T V are
        -- W's singular vectors within the subspaces (the iteration alone only finds the
        -- subspaces quickly; single vectors come at the rate S_(i+1) / S_i)
        local UW = F.matmul(U, W)
        local Mt = F.matmul(UW, V, { trans_b = true })                     -- (r, r)
        UW:free()
        local m = {}
        for i = 1, r do
            m[i] = {}
            for j = 1, r do m[i][j] = Mt[i][j] end
        end
        Mt:free()
        local us, sv, vs = small_svd(m, r)                                 -- sorted, S >= 0
        local ut, vt = {}, {}
        for j = 1, r do
            local k = math.sqrt(sv[j] / s)
            ut[j], vt[j] = {}, {}
            for i = 1, r do ut[j][i], vt[j][i] = us[i][j] * k, vs[i][j] * k end
        end
        local UT, VT = tensor.tensor(ut), tensor.tensor(vt)                -- (r, r) each
        A = F.matmul(VT, V)                                                -- (r, in) = sqrt(S/s) V^T
        local Bt = F.matmul(UT, U)                                         -- (r, out)
        B = Bt:t():contiguous()                                            -- (out, r) = U sqrt(S/s)
        for _, t in ipairs({ UT, VT, Bt, U, V }) do t:free() end
    end
    self.lora_A.weight:copy_(A)
    self.lora_B.weight:copy_(B)
    -- the base without what the adapter now holds: W - s B A
    F.matmul(B, A, { out = W, alpha = -s, beta = 1 })
    self.weight:copy_(W)
    W:free()
    -- the starting pair, for turning the trained one into an adapter of the original base
    self.init_A, self.init_B = A, B
    self.init_kind = kind
end

-- The adapter as one for the layer's original base, and its rank: (A (r', in), B (out, r'),
-- r'). For OLoRA and PiSSA the trained pair (A, B) sits on W - s B0 A0, so the adapter of W is
-- the pair stacked with the starting one, A' = [A; A0] (2r, in) and B' = [B, -B0] (out, 2r):
-- s B' A' = s B A - s B0 A0 (fresh f32 host tensors). Otherwise the layer's own weights.
function LoRALinear:plain_pair()
    local A, B = self.lora_A.weight, self.lora_B.weight
    if not self.init_A then return A, B, self.r end
    local r = self.r
    local A2 = tensor.empty({ 2 * r, self.in_features })
    local B2 = tensor.empty({ self.out_features, 2 * r })
    local function put(dst, src, neg)
        dst:copy_(src)
        if neg then dst:mul_(-1) end
        dst:free()
    end
    put(A2:narrow(1, 1, r), A)
    put(A2:narrow(1, r + 1, r), self.init_A)
    put(B2:narrow(2, 1, r), B)
    put(B2:narrow(2, r + 1, r), self.init_B, true)
    return A2, B2, 2 * r
end

-- ---- several adapters on one layer -----------------------------------------------------------
--
-- The layer's adapter is its lora_A and lora_B children (what training, saving and merging
-- see). More adapters wait in self.slots by name, each { lora_A, lora_B, r, alpha, scaling,
-- rslora, dropout, empty }; use(name) swaps one in, the current one going to its slot, so
-- switching costs no copy. An empty slot is "no adapter on this layer" (an adapter that
-- does not target it). row_slots (a name per batch row) runs each row of a batch through
-- its own adapter, for serving several adapters at once (inference only).

local SLOT_FIELDS = { "r", "alpha", "scaling", "rslora", "dropout", "empty" }

function LoRALinear:_slot_now()
    local s = { lora_A = self.lora_A, lora_B = self.lora_B }
    for _, k in ipairs(SLOT_FIELDS) do s[k] = self[k] end
    return s
end

-- Add adapter `name`: opts r, alpha, rslora, dropout; opts.empty for a layer it leaves alone.
-- Its B starts at zero. Returns the slot (its lora_A and lora_B to fill).
function LoRALinear:add_slot(name, opts)
    if self.dora then error("LoRA: a DoRA layer holds one adapter", 2) end
    self.slots = self.slots or {}
    self.active = self.active or "default"
    if name == self.active or self.slots[name] then error(("LoRA: adapter %q is already loaded"):format(name), 2) end
    local r = opts.r or 8
    local s = { r = r, alpha = opts.alpha or 16, rslora = opts.rslora and true or false, dropout = opts.dropout or 0,
        empty = opts.empty or false }
    s.scaling = s.rslora and s.alpha / math.sqrt(r) or s.alpha / r
    if not s.empty then
        local dev = self:device()
        s.lora_A = Linear(self.in_features, r)
        s.lora_B = Linear(r, self.out_features, { weight = tensor.zeros(self.out_features, r) })
        if dev ~= "cpu" then
            s.lora_A:to(dev)
            s.lora_B:to(dev)
        end
        s.lora_A:requires_grad(false)
        s.lora_B:requires_grad(false)
    end
    self.slots[name] = s
    return s
end

-- Make adapter `name` the layer's own (lora_A, lora_B children); the current one waits.
function LoRALinear:use(name)
    self.active = self.active or "default"
    if name == self.active then return self end
    if self.merged then error("LoRA: unmerge before switching adapters", 2) end
    local s = self.slots and self.slots[name]
    if not s then error(("LoRA: no adapter %q on this layer"):format(tostring(name)), 2) end
    self.slots[self.active] = self:_slot_now()
    self.slots[name] = nil
    for _, k in ipairs(SLOT_FIELDS) do self[k] = s[k] end
    self.empty = s.empty or nil
    if s.lora_A then
        self:add_module("lora_A", s.lora_A)
        self:add_module("lora_B", s.lora_B)
    end
    self.active = name
    return self
end

-- Free adapter `name` (not the one in use).
function LoRALinear:remove_slot(name)
    if name == (self.active or "default") then error(("LoRA: adapter %q is in use; switch first"):format(name), 2) end
    local s = self.slots and self.slots[name]
    if not s then error(("LoRA: no adapter %q on this layer"):format(tostring(name)), 2) end
    if s.lora_A then
        s.lora_A.weight:free()
        s.lora_B.weight:free()
    end
    self.slots[name] = nil
end

-- The slot of adapter `name` (the layer's own when it is the active one).
function LoRALinear:slot(name)
    if name == (self.active or "default") then return self:_slot_now() end
    return self.slots and self.slots[name]
end

function LoRALinear:extra_repr()
    return ("%d -> %d, r=%d, alpha=%g%s%s, base %s%s"):format(self.in_features, self.out_features,
        self.r, self.alpha, self.rslora and ", rslora" or "", self.dora and ", dora" or "",
        tostring(self.base_dtype), self.merged and ", merged" or "")
end

-- ---- the base ------------------------------------------------------------------------------

-- out (..., out) = x @ W^T (beta 0) or += (beta 1)
function LoRALinear:_base_forward(x, out, beta)
    if self.qweight then
        quant().linear_forward(x, self.qweight, { out = out, beta = beta })
    else
        F.matmul(x, self.weight, { trans_b = true, out = out, beta = beta })
    end
end

function LoRALinear:_base_backward(dy, dx)
    if self.qweight then
        quant().linear_backward(dy, self.qweight, { out = dx })
    else
        F.matmul(dy, self.weight, { out = dx })
    end
end

-- The base weight in f32 (out, in): for merging and DoRA norms only (never on the
-- training hot path without DoRA).
-- model:to(device): the quantized base and DoRA's base norms move with the parameters.
function LoRALinear:_move_extras(device, move)
    if device == (self._device or "cpu") then return end
    if self.qweight then self.qweight = self.qweight:to(device) end
    if self._dora_base_sq then self._dora_base_sq = move(self._dora_base_sq) end
end

function LoRALinear:_base_f32()
    if self.qweight then return self.qweight:dequantize("f32") end
    if self.weight.dtype == "f32" then return self.weight:clone() end
    return self.weight:to("f32")
end

-- ||W + s B A|| per output row into an owned (out) buffer (see the header for the algebra).
function LoRALinear:_dora_norms()
    local r, out_f = self.r, self.out_features
    local A, B, s = self.lora_A.weight, self.lora_B.weight, self.scaling
    -- f32 throughout, whatever the compute dtype: the norms divide every output
    local aw = self:buffer("dora_aw", { r, out_f }, "f32")    -- A W^T
    self:_base_forward(A, aw, 0)
    local aat = self:buffer("dora_aat", { r, r }, "f32")       -- A A^T
    F.matmul(A, A, { trans_b = true, out = aat })
    local t = self:buffer("dora_t", { out_f, r }, "f32")       -- (A W^T)^T twice + s B A A^T
    F.matmul(B, aat, { out = t, alpha = s })
    ew.binary_forward("add", t, self:view_of("aw_t", aw, { r, out_f }):t(), t)
    ew.binary_forward("add", t, self:view_of("aw_t2", aw, { r, out_f }):t(), t)
    ew.binary_forward("mul", t, B, t)
    local norms = self:buffer("dora_norms", { out_f, 1 }, "f32")
    ew.reduce_forward("sum", t, { 2 }, true, norms)
    -- norm^2 = base^2 + s * rowsum(B . (2 W A^T + s B A A^T))
    ew.scalar_forward("mul", norms, s, false, norms)
    ew.binary_forward("add", norms, self._dora_base_sq, norms)
    ew.unary_forward("sqrt", norms, norms)
    return self:view_of("dora_norms_flat", norms, { out_f })
end

-- ---- forward / backward ----------------------------------------------------------------------

local function out_shape(x, n)
    local s = x:shape()
    s[#s] = n
    return s
end

-- Rows of x (B, ..., in) through the adapters row_slots names, added into out.
function LoRALinear:_rows_forward(x, out)
    local B = x:size(1)
    if #self.row_slots ~= B then
        error(("LoRA: row adapters name %d rows, the batch has %d"):format(#self.row_slots, B), 3)
    end
    for b = 1, B do
        local name = self.row_slots[b]
        local s = name ~= "none" and self:slot(name) or { empty = true }
        if not s then error(("LoRA: no adapter %q on this layer"):format(tostring(name)), 3) end
        if not s.empty then
            local xb, ob = x:narrow(1, b, 1), out:narrow(1, b, 1)
            local h = F.matmul(xb, s.lora_A.weight, { trans_b = true })
            F.matmul(h, s.lora_B.weight, { trans_b = true, out = ob, alpha = s.scaling, beta = 1 })
            h:free()
            xb:free()
            ob:free()
        end
    end
end

function LoRALinear:forward(x)
    local out = self:buffer("output", out_shape(x, self.out_features))
    self:_base_forward(x, out, 0)
    if self.bias then tensor.methods.add_(out, self.bias) end
    if self.row_slots then
        if self.training then error("LoRA: row adapters are for inference (model:eval())", 2) end
        if not self.merged then self:_rows_forward(x, out) end
        self.output = out
        return out
    end
    if self.merged or self.empty or self.disabled then
        self.output = out
        return out
    end
    local xin = x
    if self.dropout > 0 and self.training then
        xin = self:buffer("x_drop", x:shape())
        local mask = self:buffer("drop_mask", x:shape(), "u8")
        check(C.lt_dropout_forward(xin, mask, x, self.dropout, tensor.default_rng))
    end
    self._xin = xin
    local h = self.lora_A:forward(xin) -- (..., r)
    if self.dora then
        -- y = base * (m / norm) + (m / norm) * s * B h, norm constant for backward
        local coef = self:buffer("dora_coef", { self.out_features }, "f32")
        ew.binary_forward("div", self.lora_magnitude_vector, self:_dora_norms(), coef)
        local lora = self:buffer("dora_lora", out_shape(x, self.out_features))
        F.matmul(h, self.lora_B:compute_weight(h), { trans_b = true, out = lora, alpha = self.scaling })
        self._dora_base = self:buffer("dora_base", out:shape())
        self._dora_base:copy_(out)
        self._dora_lora = lora
        ew.binary_forward("add", out, lora, out)
        ew.binary_forward("mul", out, coef, out)
    else
        F.matmul(h, self.lora_B:compute_weight(h), { trans_b = true, out = out, alpha = self.scaling, beta = 1 })
    end
    self.output = out
    return out
end

function LoRALinear:backward(x, dy)
    local dx = self:buffer("grad_input", x:shape())
    if self.merged or self.empty or self.disabled then
        self:_base_backward(dy, dx)
        return dx
    end
    local g = dy
    if self.dora then
        local coef = self._buffers.dora_coef
        -- d magnitude += sum over rows of dy * (base + lora) / norm
        local dm = self._grads.lora_magnitude_vector
        if dm then
            -- d m_i += sum over rows of dy_i * (base_i + lora_i) / norm_i, and
            -- coef_i = m_i / norm_i, so 1 / norm_i = coef_i / m_i
            local both = self:buffer("dora_both", dy:shape())
            ew.binary_forward("add", self._dora_base, self._dora_lora, both)
            ew.binary_forward("mul", both, dy, both)
            local per_row = self:buffer("dora_rows", { 1, self.out_features }, "f32")
            ew.reduce_forward("sum", self:view_of("both2", both, { -1, self.out_features }), { 1 }, true, per_row)
            local flat = self:view_of("dora_rows_flat", per_row, { self.out_features })
            ew.binary_forward("mul", flat, coef, flat)
            ew.binary_forward("div", flat, self.lora_magnitude_vector, flat)
            ew.binary_forward("add", dm, flat, dm)
        end
        g = self:buffer("dora_g", dy:shape())
        ew.binary_forward("mul", dy, coef, g)
    end
    self:_base_backward(g, dx)
    local h = self.lora_A.output -- (..., r)
    local r = self.r
    local g2 = self:view_of("g2", g, { -1, self.out_features })
    local h2 = self:view_of("h2", h, { -1, r })
    -- dB (out, r) += s * g^T h
    local dB = self.lora_B._grads.weight
    if dB then check(C.lt_matmul(dB, g2, h2, 1, 0, self.scaling, 1)) end
    -- dh (..., r) = s * g B
    local dh = self:buffer("d_h", out_shape(x, r))
    F.matmul(g, self.lora_B:_forward_weight(g), { out = dh, alpha = self.scaling })
    local dxin = self.lora_A:backward(self._xin, dh) -- accumulates dA
    if self.dropout > 0 and self.training then
        check(C.lt_dropout_backward(dxin, dxin, self._buffers.drop_mask, self.dropout))
    end
    dx:add_(dxin)
    self.grad_input = dx
    return dx
end

-- ---- merging -------------------------------------------------------------------------------

-- W <- W + s B A (an f32/bf16/f16 base only: a quantized base is merged on export).
function LoRALinear:merge()
    if self.merged then return self end
    if self.qweight then error("LoRA merge: a quantized base cannot be merged in place; export a merged model instead", 2) end
    if self.dora then error("LoRA merge: DoRA layers are merged on export", 2) end
    local w = self:_base_f32()
    F.matmul(self.lora_B.weight, self.lora_A.weight, { out = w, alpha = self.scaling, beta = 1 })
    self.weight:copy_(w)
    w:free()
    self.merged = true
    return self
end

function LoRALinear:unmerge()
    if not self.merged then return self end
    local w = self:_base_f32()
    F.matmul(self.lora_B.weight, self.lora_A.weight, { out = w, alpha = -self.scaling, beta = 1 })
    self.weight:copy_(w)
    w:free()
    self.merged = false
    return self
end

-- The merged weight W + s B A (with DoRA: m * (W + s B A) / ||W + s B A||) as f32 (out, in).
function LoRALinear:merged_weight()
    local w = self:_base_f32()
    if not (self.merged or self.empty or self.disabled) then
        F.matmul(self.lora_B.weight, self.lora_A.weight, { out = w, alpha = self.scaling, beta = 1 })
    end
    if self.dora then
        local coef = tensor.empty(self.out_features, 1)
        ew.binary_forward("div", self.lora_magnitude_vector, self:_dora_norms(), coef:view(self.out_features))
        ew.binary_forward("mul", w, coef, w)
        coef:free()
    end
    return w
end

-- ---- a quantized linear layer (frozen) -------------------------------------------------------

local QuantLinear = Module:extend("QuantLinear")
M.QuantLinear = QuantLinear

-- qweight: a quantized (out, in) weight from lt.quant; or nil with in/out given, for a
-- layer whose weight the loader quantizes later (set_qweight).
-- opts.bias: true for a frozen (out) bias the loader fills, or the bias tensor itself.
function QuantLinear:init(qweight, in_features, out_features, opts)
    if qweight then
        local shape = qweight.shape
        self.out_features, self.in_features = shape[1], shape[2]
        self.qweight = qweight
    else
        self.in_features, self.out_features = in_features, out_features
    end
    local b = opts and opts.bias
    if b then
        self:register_parameter("bias", b == true and tensor.zeros({ self.out_features }) or b, { trainable = false })
    end
end

function QuantLinear:_move_extras(device)
    if device == (self._device or "cpu") then return end
    if self.qweight then self.qweight = self.qweight:to(device) end
end

function QuantLinear:set_qweight(q)
    local shape = q.shape
    if #shape ~= 2 or shape[1] ~= self.out_features or shape[2] ~= self.in_features then
        error(("QuantLinear: a (%s) weight for a %d -> %d layer"):format(table.concat(shape, ", "),
            self.in_features, self.out_features), 2)
    end
    if self.qweight and self.qweight ~= q then self.qweight:free() end
    self.qweight = q
end

function QuantLinear:extra_repr()
    if not self.qweight then return ("%d -> %d, not loaded"):format(self.in_features, self.out_features) end
    return ("%d -> %d, %s, %.3f bits/param"):format(self.in_features, self.out_features, self.qweight.type,
        self.qweight:bits_per_param())
end

function QuantLinear:forward(x)
    local out = self:buffer("output", out_shape(x, self.out_features))
    quant().linear_forward(x, self.qweight, { out = out })
    if self.bias then tensor.methods.add_(out, self.bias) end -- (..., out) += bias (out)
    self.output = out
    return out
end

function QuantLinear:backward(x, dy)
    local dx = self:buffer("grad_input", x:shape())
    quant().linear_backward(dy, self.qweight, { out = dx })
    self.grad_input = dx
    return dx
end

return M
