--[[
ops/nn.lua - functional forms of the neural-network kernels, each a forward/backward pair.

Every function takes its inputs, an optional table of options, and optional preallocated
outputs (opts.out, opts.dx, ...): modules pass their own buffers so a training step
allocates nothing; interactive use leaves them out and gets new tensors. Activation
gradients are written; parameter gradients accumulate into what is passed (opts.dw, ...)
or into a new zeroed tensor.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"

local C, check = core.C, core.check
local empty, zeros = tensor.empty, tensor.zeros

local M = {}

-- New outputs go where the inputs are. On the host they are f32 (the CPU kernels compute
-- in f32); on a device they take the dtype of `ref`, the input they are computed from
-- (CUDA kernels compute in f32 and round to the output's dtype), unless `dtype` says
-- otherwise (f32 statistics: lse, rstd, losses; f32 weight gradients).
local function new(ref, shape, dtype)
    local dev = ref.device
    if dtype == nil then dtype = dev ~= "cpu" and ref.dtype or "f32" end
    return empty(shape, { dtype = dtype, device = dev })
end

local function new_zeros(ref, shape, dtype)
    return zeros(shape, { dtype = dtype or "f32", device = ref.device })
end

-- A buffer of `shape`: the given one (C checks its shape), or a new one like `ref`.
local function out_or_new(given, shape, ref)
    if given ~= nil then return given end
    return new(ref, shape)
end

-- ---- matmul ---------------------------------------------------------------------------

-- c = alpha * op(a) @ op(b) + beta * c; opts: trans_a, trans_b, alpha, beta, out.
function M.matmul(a, b, opts)
    opts = opts or {}
    local ta, tb = opts.trans_a and 1 or 0, opts.trans_b and 1 or 0
    local out = opts.out
    local sa, sb = a:shape(), b:shape()
    if #sa < 2 or #sb < 2 then error("matmul: operands need at least 2 dims", 2) end
    local ka = ta == 1 and sa[#sa - 1] or sa[#sa]
    local kb = tb == 1 and sb[#sb] or sb[#sb - 1]
    if ka ~= kb then
        error(("matmul: inner dims differ: a (%s)%s has %d columns, b (%s)%s has %d rows"):format(
            table.concat(sa, ", "), ta == 1 and " transposed" or "", ka,
            table.concat(sb, ", "), tb == 1 and " transposed" or "", kb), 2)
    end
    if out == nil then
        local m = ta == 1 and sa[#sa] or sa[#sa - 1]
        local n = tb == 1 and sb[#sb - 1] or sb[#sb]
        local batch = #sa >= #sb and sa or sb
        local shape = {}
        for i = 1, #batch - 2 do shape[i] = batch[i] end
        shape[#shape + 1] = m
        shape[#shape + 1] = n
        -- mixed operand dtypes multiply in f32
        out = new(a, shape, a.dtype ~= b.dtype and "f32" or nil)
    end
    check(C.lt_matmul(out, a, b, ta, tb, opts.alpha or 1, opts.beta or 0))
    return out
end

-- Gradients of c = op(a) @ op(b): returns da, db (each written unless opts.accumulate_a/b).
function M.matmul_backward(dc, a, b, opts)
    opts = opts or {}
    local da = opts.da or (opts.need_a ~= false and new(dc, a:shape()) or nil)
    local db = opts.db or (opts.need_b ~= false and new(dc, b:shape()) or nil)
    check(C.lt_matmul_backward(da, db, dc, a, b, opts.trans_a and 1 or 0, opts.trans_b and 1 or 0,
        opts.accumulate_a and 1 or 0, opts.accumulate_b and 1 or 0))
    return da, db
end

-- y (..., out) = x (..., in) @ w^T, w (out, in) in f32/bf16/f16.
function M.linear(x, w, out)
    if out == nil then
        local s = x:shape()
        s[#s] = w:size(1)
        out = new(x, s, x.dtype ~= w.dtype and "f32" or nil)
    end
    check(C.lt_matmul(out, x, w, 0, 1, 1, 0))
    return out
end

-- dx (=) and dw (+=) of y = x @ w^T. opts: dx, dw (either may be false to skip).
function M.linear_backward(dy, x, w, opts)
    opts = opts or {}
    local dx, dw = opts.dx, opts.dw
    if dx == nil then dx = new(dy, x:shape(), dy.dtype ~= w.dtype and "f32" or nil) end
    if dw == nil then dw = new_zeros(w, w:shape()) end
    if dx then check(C.lt_matmul(dx, dy, w, 0, 0, 1, 0)) end
    if dw then
        -- dw (out, in) += dy^T @ x over all leading dims flattened
        local dy2 = dy:view(-1, dy:size(-1))
        local x2 = x:view(-1, x:size(-1))
        check(C.lt_matmul(dw, dy2, x2, 1, 0, 1, 1))
    end
    return dx or nil, dw or nil
end

-- ---- embedding ------------------------------------------------------------------------

function M.embedding(weight, ids, out)
    if out == nil then
        local s = ids:shape()
        s[#s + 1] = weight:size(2)
        out = new(weight, s)
    end
    check(C.lt_embedding_forward(out, weight, ids))
    return out
end

-- dweight (+=): scatter-add of dout rows by ids.
function M.embedding_backward(dout, ids, dweight, vocab)
    if dweight == nil then dweight = new_zeros(dout, { vocab, dout:size(-1) }) end
    check(C.lt_embedding_backward(dweight, dout, ids))
    return dweight
end

-- ---- RMSNorm --------------------------------------------------------------------------

function M.rmsnorm(x, weight, eps, out, rstd)
    out = out_or_new(out, x:shape(), x)
    if rstd == nil then
        local c = x:size(-1)
        rstd = new(x, { c > 0 and x:numel() / c or 0 }, "f32")
    end
    check(C.lt_rmsnorm_forward(out, rstd or nil, x, weight, eps or 1e-6))
    return out, rstd
end

function M.rmsnorm_backward(dout, x, weight, rstd, dx, dweight)
    dx = out_or_new(dx, x:shape(), dout)
    if dweight == nil then dweight = new_zeros(weight, weight:shape()) end
    check(C.lt_rmsnorm_backward(dx, dweight or nil, dout, x, weight, rstd))
    return dx, dweight or nil
end

-- ---- rotary embeddings ----------------------------------------------------------------

local scaling_types = { none = 0, linear = 1, llama3 = 2 }

-- cfg: { theta =, scaling = nil | { type = "linear"|"llama3", factor =, low_freq_factor =,
--        high_freq_factor =, original_max_position_embeddings = } }
function M.rope_inv_freq(head_dim, cfg)
    cfg = cfg or {}
    local c = ffi.new("lt_rope_config")
    c.theta = cfg.theta or 10000
    local sc = cfg.scaling
    if sc then
        local ty = scaling_types[sc.type or sc.rope_type or "none"]
        if not ty then
            error(("rope scaling type %q is not supported (supported: linear, llama3)"):format(
                tostring(sc.type or sc.rope_type)), 2)
        end
        c.scaling_type = ty
        c.factor = sc.factor or 1
        c.low_freq_factor = sc.low_freq_factor or 1
        c.high_freq_factor = sc.high_freq_factor or 4
        c.original_max_position = sc.original_max_position_embeddings or 8192
    end
    local inv = empty(head_dim / 2)
    check(C.lt_rope_inv_freq(inv, head_dim, c))
    return inv
end

-- cos, sin (positions, D/2) for positions 0..positions-1.
function M.rope_table(inv_freq, positions, cos, sin)
    local half = inv_freq:numel()
    -- the tables stay f32 (bf16 activations rotate with f32 angles)
    cos = cos or new(inv_freq, { positions, half }, "f32")
    sin = sin or new(inv_freq, { positions, half }, "f32")
    check(C.lt_rope_table(cos, sin, inv_freq))
    return cos, sin
end

-- x (B, T, H, D); positions (B, T) or (T) i32/i64 or nil (0..T-1). out may be x.
function M.rope(x, cos, sin, positions, out)
    out = out_or_new(out, x:shape(), x)
    check(C.lt_rope_forward(out, x, cos, sin, positions))
    return out
end

function M.rope_backward(dout, cos, sin, positions, dx)
    dx = out_or_new(dx, dout:shape(), dout)
    check(C.lt_rope_backward(dx, dout, cos, sin, positions))
    return dx
end

-- ---- SiLU-gated unit ------------------------------------------------------------------

function M.swiglu(gate, up, out)
    out = out_or_new(out, gate:shape(), gate)
    check(C.lt_swiglu_forward(out, gate, up))
    return out
end

function M.swiglu_backward(dout, gate, up, dgate, dup)
    dgate = out_or_new(dgate, gate:shape(), dout)
    dup = out_or_new(dup, up:shape(), dout)
    check(C.lt_swiglu_backward(dgate, dup, dout, gate, up))
    return dgate, dup
end

-- ---- attention ------------------------------------------------------------------------

-- Softmax attention, FlashAttention-2 style on the CPU (src/ops/attention.c): key tiles with
-- an online softmax, so no T x S score matrix exists in the forward or the backward.
-- q (B, T, H, D), k, v (B, S, Hkv, D), f32, unit stride in D; H a multiple of Hkv (query
-- head h reads key/value head h / (H / Hkv): GQA, MQA, no copies of k and v).
-- opts:
--   causal      default true; bottom-right aligned: query t sees keys s <= t + (S - T), so
--               queries that are the last T of S keys (KV-cache prefill, decoding) work
--   scale       default 1/sqrt(D)
--   cu_seqlens  i32 (n + 1) offsets of packed sequences over the B * T positions (S == T):
--               each position attends only within its own sequence
--   out, lse    preallocated outputs, (B, T, H, D) and (B, H, T)
-- Returns out, lse (B, H, T): the log-sum-exp of each row of scaled scores (-inf and a zero
-- output for a query that sees no key), which the backward needs.
function M.attention(q, k, v, opts)
    opts = opts or {}
    local B, T, H, D = q:size(1), q:size(2), q:size(3), q:size(4)
    local out = out_or_new(opts.out, { B, T, H, D }, q)
    local lse = opts.lse
    if lse == nil then lse = new(q, { B, H, T }, "f32") end
    local causal = opts.causal ~= false
    check(C.lt_attention_forward(out, lse or nil, q, k, v, opts.cu_seqlens,
        opts.scale or 1 / math.sqrt(D), causal and 1 or 0))
    return out, lse or nil
end

-- dout, out (B, T, H, D) and lse from the forward. opts: causal, scale, cu_seqlens as given
-- to the forward; dq, dk, dv to write into (else new). Returns dq (like q) and dk, dv (like
-- k, v; summed over the query heads of each group). The probabilities are recomputed tile
-- by tile from lse; the result is the same bits on every run and for any thread count.
function M.attention_backward(dout, q, k, v, out, lse, opts)
    opts = opts or {}
    local dq = out_or_new(opts.dq, q:shape(), q)
    local dk = out_or_new(opts.dk, k:shape(), k)
    local dv = out_or_new(opts.dv, v:shape(), v)
    local causal = opts.causal ~= false
    check(C.lt_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, opts.cu_seqlens,
        opts.scale or 1 / math.sqrt(q:size(4)), causal and 1 or 0))
    return dq, dk, dv
end

-- The same two functions under the name of their algorithm:
-- flash_attention(q, k, v, opts) -> out, lse
-- flash_attention_backward(dout, q, k, v, out, lse, opts) -> dq, dk, dv
M.flash_attention = M.attention
M.flash_attention_backward = M.attention_backward

-- ---- cross-entropy --------------------------------------------------------------------

local function ce_opts(opts)
    opts = opts or {}
    return opts.ignore_index or -100, opts.normalizer or 0
end

-- logits (N, V), targets (N). Returns loss (a 0-dim tensor), lse (N), row_loss (N).
function M.cross_entropy(logits, targets, opts)
    opts = opts or {}
    local ignore, norm = ce_opts(opts)
    local N = logits:size(1)
    local loss = opts.loss or new(logits, {}, "f32")
    local lse = opts.lse or new(logits, { N }, "f32")
    local row_loss = opts.row_loss
    check(C.lt_cross_entropy_forward(loss, lse, row_loss, logits, targets, ignore, norm))
    return loss, lse, row_loss
end

function M.cross_entropy_backward(logits, targets, lse, dloss, opts)
    opts = opts or {}
    local ignore, norm = ce_opts(opts)
    local dlogits = out_or_new(opts.dlogits, logits:shape(), logits)
    check(C.lt_cross_entropy_backward(dlogits, logits, targets, lse, dloss or 1, ignore, norm))
    return dlogits
end

-- Fused LM head: h (N, C), w (V, C). Returns loss (0-dim), lse (N).
function M.linear_cross_entropy(h, w, targets, opts)
    opts = opts or {}
    local ignore, norm = ce_opts(opts)
    local loss = opts.loss or new(h, {}, "f32")
    local lse = opts.lse or new(h, { h:size(1) }, "f32")
    check(C.lt_linear_cross_entropy_forward(loss, lse, opts.row_loss, h, w, targets, ignore, norm))
    return loss, lse
end

-- dh (=) and dw (+=); opts.dh / opts.dw = false skips one.
function M.linear_cross_entropy_backward(h, w, targets, lse, dloss, opts)
    opts = opts or {}
    local ignore, norm = ce_opts(opts)
    local dh, dw = opts.dh, opts.dw
    -- dh in f32 or w's dtype (what the fused kernels write)
    if dh == nil then dh = new(h, h:shape(), h.dtype == w.dtype and nil or "f32") end
    if dw == nil then dw = new_zeros(w, w:shape()) end
    check(C.lt_linear_cross_entropy_backward(dh or nil, dw or nil, h, w, targets, lse,
        dloss or 1, ignore, norm))
    return dh or nil, dw or nil
end

-- Loss, dh (=) and dw (+=) in one pass (three GEMMs). Returns loss, dh, dw.
function M.linear_cross_entropy_fused(h, w, targets, dloss, opts)
    opts = opts or {}
    local ignore, norm = ce_opts(opts)
    local loss = opts.loss or new(h, {}, "f32")
    local dh, dw = opts.dh, opts.dw
    if dh == nil then dh = new(h, h:shape(), h.dtype == w.dtype and nil or "f32") end
    if dw == nil then dw = new_zeros(w, w:shape()) end
    check(C.lt_linear_cross_entropy_fused(loss, opts.row_loss, dh or nil, dw or nil, h, w,
        targets, dloss or 1, ignore, norm))
    return loss, dh or nil, dw or nil
end

-- ---- t:matmul(u) ----------------------------------------------------------------------

-- The matrix product with PyTorch's rules for the operand ranks: 1-D @ 1-D is a dot
-- product (0-dim), a 1-D operand is a row (left) or column (right) vector that is dropped
-- from the result, and N-D operands are batches of matrices whose batch dims broadcast.
function tensor.methods.matmul(a, b)
    if not tensor.is_tensor(b) then error("matmul: the right operand must be a tensor", 2) end
    local na, nb = a:dim(), b:dim()
    if na == 0 or nb == 0 then error("matmul: operands must have at least 1 dim (use * for scalars)", 2) end
    local a2 = na == 1 and a:view(1, a:size(1)) or a
    local b2 = nb == 1 and b:view(b:size(1), 1) or b
    local sa, sb = a2:shape(), b2:shape()
    if sa[#sa] ~= sb[#sb - 1] then
        error(("matmul: inner dims differ: (%s) @ (%s)"):format(table.concat(a:shape(), ", "),
            table.concat(b:shape(), ", ")), 2)
    end
    local out
    if #sa == 2 and #sb == 2 then
        out = M.matmul(a2, b2)
    else
        -- broadcast the batch dims, then one batched product
        local nd = math.max(#sa, #sb)
        local batch = {}
        for i = 1, nd - 2 do
            local x = sa[#sa - nd + i] or 1
            local y = sb[#sb - nd + i] or 1
            if x ~= y and x ~= 1 and y ~= 1 then
                error(("matmul: batch dims (%s) and (%s) do not broadcast"):format(
                    table.concat(sa, ", "), table.concat(sb, ", ")), 2)
            end
            batch[i] = math.max(x, y)
        end
        local function expanded(t, s)
            if #s == 2 and #batch > 0 then
                -- a shared matrix: matmul broadcasts a 2-D operand itself
                return t
            end
            local full = {}
            for i = 1, #batch do full[i] = batch[i] end
            full[#full + 1], full[#full + 2] = s[#s - 1], s[#s]
            return t:expand(full)
        end
        local ea, eb = expanded(a2, sa), expanded(b2, sb)
        local shape = {}
        for i = 1, #batch do shape[i] = batch[i] end
        shape[#shape + 1], shape[#shape + 2] = sa[#sa - 1], sb[#sb]
        out = M.matmul(ea, eb, { out = new(a2, shape, a2.dtype ~= b2.dtype and "f32" or nil) })
    end
    -- drop the dims that stood for vectors
    local s = out:shape()
    if nb == 1 then table.remove(s) end
    if na == 1 then table.remove(s, #s - (nb == 1 and 0 or 1)) end
    if #s == #out:shape() then return out end
    return out:view(s)
end

tensor.methods.mm = tensor.methods.matmul

-- ---- optimizer kernels ----------------------------------------------------------------

local adamw_params = ffi.new("lt_adamw_params")

-- h: { lr, beta1, beta2, eps, weight_decay, grad_scale, step }
function M.adamw_step(param, grad, exp_avg, exp_avg_sq, h)
    adamw_params.lr = h.lr
    adamw_params.beta1 = h.beta1 or 0.9
    adamw_params.beta2 = h.beta2 or 0.999
    adamw_params.eps = h.eps or 1e-8
    adamw_params.weight_decay = h.weight_decay or 0
    adamw_params.grad_scale = h.grad_scale or 1
    adamw_params.step = h.step
    check(C.lt_adamw_step(param, grad, exp_avg, exp_avg_sq, adamw_params))
end

-- The 8-bit form (bitsandbytes' blockwise 8-bit AdamW, src/lt_ops.h): state = { m_codes,
-- m_absmax, v_codes, v_absmax, m_map, v_map, block }; h as above.
function M.adamw8_step(param, grad, state, h)
    adamw_params.lr = h.lr
    adamw_params.beta1 = h.beta1 or 0.9
    adamw_params.beta2 = h.beta2 or 0.999
    adamw_params.eps = h.eps or 1e-8
    adamw_params.weight_decay = h.weight_decay or 0
    adamw_params.grad_scale = h.grad_scale or 1
    adamw_params.step = h.step
    check(C.lt_adamw8_step(param, grad, state.m_codes, state.m_absmax, state.v_codes, state.v_absmax,
        state.m_map, state.v_map, state.block, adamw_params))
end

local norm_out = ffi.new("double[1]")

-- sqrt of the sum of squares of every tensor in the list, in f64.
function M.global_norm(list)
    local n = #list
    local arr = ffi.new("const lt_tensor*[?]", n)
    for i = 1, n do arr[i - 1] = list[i] end
    check(C.lt_global_norm(arr, n, norm_out))
    return norm_out[0]
end

return M
