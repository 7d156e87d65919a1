--[[
dist/vocab_parallel.lua - the embedding and the LM head split by vocabulary rows over the
ranks, for large vocabularies (Llama 3's 128k rows are 2 GiB in bf16 per matrix at 8k wide).

    require("luatrain.dist.vocab_parallel").new(model, pg)
    -- the model trains, evaluates and generates as before; rank r holds rows
    -- [r*P, min(V, (r+1)*P)) of each vocabulary matrix, P = ceil(V / world)

Each rank's slice carries one more row, of zeros (the "elsewhere" row). The embedding looks up
ids outside the slice there, so every rank's (N, C) output is zero except the rows it owns,
and an all-reduce sum gives every rank the whole, exactly (one rank adds to each row). The
head's log-sum-exp over the vocabulary combines the slices' own: lse = m + log sum_r
exp(lse_r - m) with m the largest, and the target's logit comes from the rank that owns it
(lse_r - its row loss). The backward reuses the fused head's kernel with that global lse:
rows whose target lives on another rank point at the elsewhere row, whose zero weights keep
the one-hot out of dh, while the softmax part of every row is the rank's own; the ranks' dh
are summed. Loss and gradients equal the single-rank head's up to f32 rounding of the
log-sum-exp combination.

The vocabulary matrices must be frozen (QLoRA; LoRA on the linear layers is unaffected), and
the model on the CPU for now (the ids are mapped to each rank's rows on the host).
model:forward gathers the logits' slices, so generation works on every rank (each runs it).
]]
local ffi = require "ffi"
local tensor = require "luatrain.tensor"
local F = require "luatrain.ops.nn"

local M = {}
local VP = {}
VP.__index = VP

local IGNORE = -100

-- The rank's rows of w (V, C) plus a zero row: (rows + 1, C) in w's dtype.
local function slice(w, lo, rows)
    local C = w:size(2)
    local t = tensor.zeros({ rows + 1, C }, { dtype = w.dtype, device = w.device })
    t:narrow(1, 1, rows):copy_(w:narrow(1, lo + 1, rows))
    return t
end

function M.new(model, pg)
    local lm = model.model
    local emb, head = lm.embed_tokens, model.lm_head
    if (model.device and model:device() or "cpu") ~= "cpu" then
        error("vocab_parallel: CPU models only for now (ids and targets are mapped to each rank's rows on the host)", 2)
    end
    if model._grads.weight or emb._grads.weight or (head and head._grads.weight) then
        error("vocab_parallel: the embedding and the head must be frozen (QLoRA)", 2)
    end
    local V, C = model.config.vocab_size, model.config.hidden_size
    local W, r = pg.world, pg.rank
    local P = math.ceil(V / W)
    local lo = math.min(V, r * P)
    local rows = math.min(V, lo + P) - lo
    local self = setmetatable({ model = model, pg = pg, V = V, C = C, P = P, lo = lo, rows = rows,
        tied = model.config.tie_word_embeddings and true or false, bufs = {} }, VP)
    local ew = slice(emb.weight, lo, rows)
    local hw = self.tied and ew or slice(head.weight, lo, rows)
    emb.weight:free()
    emb.weight, emb._params.weight = ew, ew
    if not self.tied then head.weight:free() end
    head.weight, head._params.weight = hw, hw
    self.emb_w, self.head_w = ew, hw
    -- the head's own rows (no elsewhere row), for the forward statistics and the logits
    self.head_rows = hw:narrow(1, 1, rows)
    local vp = self
    emb.forward = function(m, ids)
        local s = ids:shape()
        s[#s + 1] = C
        local out = m:buffer("output", s)
        F.embedding(m.weight, vp:_local_ids(ids), out)
        pg:all_reduce(out, "sum"):wait()
        m.output = out
        return out
    end
    emb.backward = function() return nil end
    model.forward_backward = function(m, ids, targets, opts) return vp:_forward_backward(m, ids, targets, opts) end
    model.loss = function(m, ids, targets, opts) return vp:_loss(m, ids, targets, opts) end
    model.forward = function(m, ids, opts) return vp:_forward(m, ids, opts) end
    -- the head alone (generation calls it on the last position)
    head.forward = function(m, x)
        local s = x:shape()
        s[#s] = V
        m.output = vp:_logits(x, m:buffer("output", s, "f32"))
        return m.output
    end
    return self
end

-- A buffer this object keeps: (n) of `dtype`.
function VP:_buf(name, shape, dtype)
    local b = self.bufs[name]
    if b == nil then
        b = tensor.new_header()
        self.bufs[name] = b
    end
    return b:resize_(shape, { dtype = dtype or "f32" })
end

-- ids with those outside this rank's rows pointed at the elsewhere row.
function VP:_local_ids(ids)
    local c = ids:contiguous():to("i64")
    local n = c:numel()
    local out = self:_buf("ids", c:shape(), "i64")
    local p, q = ffi.cast("int64_t*", c:data_ptr()), ffi.cast("int64_t*", out:data_ptr())
    local lo, hi = self.lo, self.lo + self.rows
    for i = 0, n - 1 do
        local v = p[i]
        q[i] = (v >= lo and v < hi) and v - lo or self.rows
    end
    if c ~= ids then c:free() end
    return out
end

-- Targets two ways: `own` (this rank's index, IGNORE elsewhere and where ignored) for the
-- statistics, `ext` (the elsewhere row for other ranks' targets) for the backward.
function VP:_targets(targets)
    local c = targets:contiguous():to("i64")
    local n = c:numel()
    local own, ext = self:_buf("own", { n }, "i64"), self:_buf("ext", { n }, "i64")
    local p = ffi.cast("int64_t*", c:data_ptr())
    local po, pe = ffi.cast("int64_t*", own:data_ptr()), ffi.cast("int64_t*", ext:data_ptr())
    local lo, hi = self.lo, self.lo + self.rows
    for i = 0, n - 1 do
        local v = p[i]
        if v == IGNORE then
            po[i], pe[i] = IGNORE, IGNORE
        elseif v >= lo and v < hi then
            po[i], pe[i] = v - lo, v - lo
        else
            po[i], pe[i] = IGNORE, self.rows
        end
    end
    if c ~= targets then c:free() end
    return own, ext, p, n, c
end

-- The vocabulary-wide log-sum-exp of each row (n), and the summed loss over targeted rows.
function VP:_stats(h2, targets)
    local n = h2:size(1)
    local own, ext = self:_targets(targets)
    local lse_r, rl = self:_buf("lse_r", { n }), self:_buf("rl", { n })
    local tmp = self:_buf("loss_tmp", {})
    F.linear_cross_entropy(h2, self.head_rows, own, { loss = tmp, lse = lse_r, row_loss = rl })
    -- m = max over ranks, then sum of exp(lse_r - m); the owner's target logit
    local m, e, xt = self:_buf("m", { n }), self:_buf("e", { n }), self:_buf("xt", { n })
    m:copy_(lse_r)
    self.pg:all_reduce(m, "max"):wait()
    local pl, pm, pe = ffi.cast("float*", lse_r:data_ptr()), ffi.cast("float*", m:data_ptr()),
        ffi.cast("float*", e:data_ptr())
    local pr, px, po = ffi.cast("float*", rl:data_ptr()), ffi.cast("float*", xt:data_ptr()),
        ffi.cast("int64_t*", own:data_ptr())
    for i = 0, n - 1 do
        pe[i] = math.exp(pl[i] - pm[i])
        px[i] = po[i] ~= IGNORE and pl[i] - pr[i] or 0
    end
    self.pg:all_reduce(e, "sum"):wait()
    self.pg:all_reduce(xt, "sum"):wait()
    local lse = self:_buf("lse", { n })
    local pg_lse = ffi.cast("float*", lse:data_ptr())
    local pt = ffi.cast("int64_t*", ext:data_ptr())
    local total, count = 0, 0
    for i = 0, n - 1 do
        pg_lse[i] = pm[i] + math.log(pe[i])
        if pt[i] ~= IGNORE then
            total = total + (pg_lse[i] - px[i])
            count = count + 1
        end
    end
    return lse, ext, total, count
end

function VP:_forward_backward(model, ids, targets, opts)
    opts = opts or {}
    ids, targets, opts = model:_inputs(ids, targets, opts)
    local h = model.model:forward(ids, opts)
    local N, C = h:numel() / h:size(-1), h:size(-1)
    local h2 = model:view_of("h2", h, { N, C })
    local lse, ext, total, count = self:_stats(h2, targets)
    local norm = opts.normalizer or count
    local dh = model:buffer("d_hidden", { N, C }, h.dtype)
    F.linear_cross_entropy_backward(h2, self.head_w, ext, lse, opts.scale or 1,
        { dh = dh, dw = false, normalizer = norm })
    self.pg:all_reduce(dh, "sum"):wait()
    model.model:backward(ids, model:view_of("d_hidden3", dh, h:shape()))
    return norm > 0 and total / norm or 0
end

function VP:_loss(model, ids, targets, opts)
    opts = opts or {}
    ids, targets, opts = model:_inputs(ids, targets, opts)
    local h = model.model:forward(ids, opts)
    local h2 = model:view_of("h2", h, { h:numel() / h:size(-1), h:size(-1) })
    local _, _, total, count = self:_stats(h2, targets)
    local norm = opts.normalizer or count
    return norm > 0 and total / norm or 0
end

-- Logits (..., V) in f32 of hidden states h (..., C) into out: each rank's slice, gathered.
function VP:_logits(h, out)
    local N, C = h:numel() / h:size(-1), h:size(-1)
    local h2 = h:contiguous():view(N, C)
    local W, P = self.pg.world, self.P
    local mine = self:_buf("logits_mine", { N, P })
    mine:zero_()
    F.matmul(h2, self.head_rows, { trans_b = true, out = mine:narrow(2, 1, self.rows) })
    local all = self:_buf("logits_all", { W, N, P })
    self.pg:all_gather(all, mine):wait()
    local o2 = out:view(N, self.V)
    for k = 0, W - 1 do
        local lo = k * P
        local cols = math.min(self.V, lo + P) - lo
        if cols > 0 then o2:narrow(2, lo + 1, cols):copy_(all:select(1, k + 1):narrow(2, 1, cols)) end
    end
    return out
end

function VP:_forward(model, ids, opts)
    local _
    ids, _, opts = model:_inputs(ids, nil, opts)
    local h = model.model:forward(ids, opts)
    local s = h:shape()
    s[#s] = self.V
    model.output = self:_logits(h, model:buffer("logits_f32", s, "f32"))
    return model.output
end

-- Bytes of the vocabulary matrices this rank holds.
function VP:bytes()
    local n = self.emb_w:nbytes()
    if not self.tied then n = n + self.head_w:nbytes() end
    return n
end

return M
