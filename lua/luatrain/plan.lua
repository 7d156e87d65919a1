--[[
plan.lua - what a fine-tuning run will hold in memory, per device, before it starts.

    local p = lt.plan.train{ config = llama_config, quant = "nf4", r = 8, batch_size = 8,
        seq_len = 128, gradient_checkpointing = true, optim = "adamw", threads = 2 }
    p.peak.train         -- bytes: the training step's peak on the device (log.jsonl's peak_bytes)
    p.rows               -- { { what, bytes }, ... } what is held at that peak, by kind
    print(lt.plan.format(p))

The planner does not guess: it replays, allocation by allocation, what the model code and
the kernels it calls allocate, in the order they allocate it, through a ledger that counts
bytes the way lt.memory does (owned tensor storage and kernel scratch; file mappings and
the paged pool apart). Module buffers are kept and grown (never shrunk) under the same keys
the modules use (nn/module.lua), so a checkpointed model's shared arena, the second step's
reuse and the growth of a buffer (new one made before the old one goes) come out as they
happen. Kernel scratch is a transient at the point the kernel runs; its size follows the
kernel's own rule (each rule names the C function it mirrors). On the CPU the prediction is
exact to the byte; tests/lua/test_plan.lua holds it to that over a grid of configurations.

The quantities: everything is in bytes; `N` below is the tokens of a micro-batch (batch_size
x seq_len: the loader packs a micro-batch into one row), C the hidden size, F the MLP's, H
and Hkv the heads, D the head dim, V the vocabulary, L the layers.

Settings (train): config (a Hugging Face Llama config table), quant ("none", "nf4", "fp4",
"int8"), blocksize (64), double_quant (true), r (LoRA rank; 0 or lora = false: full
fine-tuning), target ("all-linear" or a list of names), dropout (LoRA dropout, 0.1), batch_size,
seq_len, grad_accum (1), gradient_checkpointing (true), offload_activations (false), optim
("adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"), precision ("f32" or "bf16": the
CPU's bf16 matmuls), threads (the CPU threads the kernels use), train_samples (the size of
the dataset, for the loader's order; 0 when unknown), segments (packed sequences per
micro-batch, for attention's bookkeeping; default batch_size), base_dtype (the frozen
weights' dtype when quant is "none" and LoRA trains: "f32" or "bf16"; default f32);
across ranks world, rank, zero (0 to 3), shard_base, vocab_parallel; offload ("cpu": the
moments in host memory, reported under host.paged; "nvme": in a file, and at zero=3 the
layers' parameter shards too, reported under disk.nvme).
]]
local M = {}

local DTYPE_BYTES = { f32 = 4, bf16 = 2, f16 = 2, i64 = 8, i32 = 4, u8 = 1 }

-- ---- the ledger -------------------------------------------------------------------------

local Ledger = {}
Ledger.__index = Ledger

local function ledger()
    return setmetatable({ current = 0, peak = 0, by_kind = {}, buffers = {}, at_peak = nil,
        trace = nil, scratch_peak = 0 }, Ledger)
end

function Ledger:_note_peak(extra, what)
    local now = self.current + extra
    if now > self.peak then
        self.peak = now
        local snap = {}
        for k, v in pairs(self.by_kind) do snap[k] = v end
        if extra > 0 then snap["workspace (" .. what .. ")"] = extra end
        self.at_peak = snap
    end
end

function Ledger:alloc(kind, n)
    self.current = self.current + n
    self.by_kind[kind] = (self.by_kind[kind] or 0) + n
    if self.trace then self.trace[#self.trace + 1] = n end
    self:_note_peak(0)
end

function Ledger:free(kind, n)
    self.current = self.current - n
    self.by_kind[kind] = self.by_kind[kind] - n
    if self.trace then self.trace[#self.trace + 1] = -n end
end

-- A buffer kept under `key` and grown to n bytes (nn/module.lua's Module:buffer): the new
-- storage is made before the old one is released (lt_tensor_resize).
function Ledger:buffer(kind, key, n)
    local b = self.buffers[key]
    if b and b.n >= n then return end
    self:alloc(kind, n)
    if b then self:free(b.kind, b.n) end
    self.buffers[key] = { kind = kind, n = n }
end

-- Kernel scratch: sizes allocated one after another and all released when the kernel
-- returns.
function Ledger:scratch(what, ...)
    if self.no_scratch then return end
    local sum = 0
    for i = 1, select("#", ...) do
        local n = select(i, ...)
        if n and n > 0 then
            sum = sum + n
            if self.trace then self.trace[#self.trace + 1] = n end
        end
    end
    if self.trace then
        for i = select("#", ...), 1, -1 do
            local n = select(i, ...)
            if n and n > 0 then self.trace[#self.trace + 1] = -n end
        end
    end
    if sum > self.scratch_peak then self.scratch_peak = sum end
    self:_note_peak(sum, what)
end

-- ---- the kernels' scratch (CPU) -----------------------------------------------------------

-- Constants of the C kernels (the names are theirs).
local K = {
    BF16_GEMM_MIN = 2 ^ 18,   -- src/ops/dnnl.h: smaller products stay in f32
    QPANEL_FLOATS = 2 ^ 20,   -- src/ops/quant_linear.c
    QGEMM_PAR_MIN = 2 ^ 21,   -- src/ops/quant_linear.c
    PANEL_FLOATS = 2 ^ 20,    -- src/ops/matmul.c
    ATTN_SEG = 40, ATTN_BLOCK = 16, FWD_BQ = 64, FWD_BK = 256, BWD_BQ = 64, BWD_BK = 64, LANES = 16,
}

local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min

-- src/ops/matmul.c gemm2d: c (M, N) = op(a) (M, K) @ op(b) (K, N). Under the bf16 precision
-- both operands are rounded into bf16 scratch; an f32 product of f32 operands needs none; a
-- low-precision operand is widened panel by panel.
local function matmul(L, s, what, Mr, Nc, Kd, a_dtype, b_dtype)
    -- CUDA: cuBLASLt in the context's own workspace (outside the allocator)
    if Mr == 0 or Nc == 0 or Kd == 0 or s.device == "cuda" then return end
    if s.precision == "bf16" and Mr * Nc * Kd >= K.BF16_GEMM_MIN then
        return L:scratch(what, Mr * Kd * 2, Kd * Nc * 2)
    end
    local pa, pb
    if a_dtype ~= "f32" then pa = min(max(floor(K.PANEL_FLOATS / Kd), 16), Mr) * Kd * 4 end
    if b_dtype ~= "f32" then pb = min(max(floor(K.PANEL_FLOATS / Kd), 16), Nc) * Kd * 4 end
    if pa or pb then L:scratch(what, pa, pb) end
end

-- src/ops/quant_linear.c split_threads
local function split_threads(s, extent, macs)
    local nt = macs >= K.QGEMM_PAR_MIN and s.threads or 1
    if nt > floor(extent / 16) then nt = floor(extent / 16) > 0 and floor(extent / 16) or 1 end
    return nt
end

local function panel_rows(R)
    if R < 1 then R = 1 end
    if R >= 16 then R = floor(R / 16) * 16 end
    return R
end

-- src/ops/quant_linear.c lt_quant_linear_forward / _backward on N rows of a quantized
-- (out, in) weight: the 4-bit and int8 weights are dequantized into per-thread panels (or,
-- under the bf16 precision, into one bf16 panel with the activations rounded to bf16).
-- cuda/quant_linear.cu band_size: rows (or columns) of a band within 32 MiB, multiples of 64.
local function band_size(along, esz, total)
    local b = floor(32 * 2 ^ 20 / (along * esz))
    b = b >= 64 and floor(b / 64) * 64 or max(b, 1)
    return min(b, total)
end

local function quant_linear(L, s, N, out_f, in_f, backward)
    local macs = N * out_f * in_f
    if N == 0 or out_f == 0 or in_f == 0 then return end
    if s.device == "cuda" then
        -- up to 8 rows: GEMV kernels reading the codes; beyond: bands of the weight
        -- dequantized into x's dtype for cuBLASLt (forward: rows of W, backward: columns)
        if N <= 8 then return end
        if backward then
            return L:scratch("dequantized band", band_size(out_f, s.ab, in_f) * out_f * s.ab)
        end
        if s.quant == "int8" then
            local R = band_size(in_f, 2, out_f)
            return L:scratch("int8 linear", in_f * 4, N * 4, N * in_f * 2, R * in_f * 2, min(N, 256) * R * 4)
        end
        return L:scratch("dequantized band", band_size(in_f, s.ab, out_f) * in_f * s.ab)
    end
    if s.quant == "int8" and not backward then
        -- forward_int8: R weight rows and mc activation rows per thread, within the panel
        -- budget. The outlier columns (inputs past the threshold) depend on the data: the
        -- plan takes every column as one, the most the kernel can ask for
        local n_out = in_f
        local nt = split_threads(s, out_f, macs)
        local per = floor(K.QPANEL_FLOATS / nt)
        local R = min(panel_rows(floor(per / 2 / (in_f + n_out))), out_f)
        local mc = min(max(floor(per / 2 / R), 16), N)
        -- is_out (in), cols (in x 8), sx (N x 4), xq (N, in) f32, xo (N, n_out), panels
        return L:scratch("int8 linear", in_f, in_f * 8, N * 4, N * in_f * 4, N * n_out * 4,
            nt * (R * (in_f + n_out) + mc * R) * 4)
    end
    if s.precision == "bf16" and macs >= K.BF16_GEMM_MIN then
        local R = panel_rows(floor(K.QPANEL_FLOATS / in_f))
        if R > out_f then R = out_f end
        local xw = backward and out_f or in_f
        return L:scratch("4-bit linear (bf16)", N * xw * 2, R * in_f * 2, s.threads * in_f * 4)
    end
    if not backward then
        local nt = split_threads(s, out_f, macs)
        local R = panel_rows(floor(K.QPANEL_FLOATS / nt / in_f))
        return L:scratch("dequantized panels", nt * R * in_f * 4)
    end
    local nt = split_threads(s, in_f, macs)
    local width = floor((in_f + nt - 1) / nt) + 16
    local R = panel_rows(floor(K.QPANEL_FLOATS / nt / width))
    return L:scratch("dequantized panels", nt * R * width * 4)
end

-- ---- the model's shapes ---------------------------------------------------------------------

-- The byte sizes of a quantized weight's pieces in lt_quant_state's order (packed, absmax,
-- absmax2, code, nested_code): what dist/shard_base.lua lays out in a layer's blob.
local function quant_pieces(s, out_f, in_f)
    local n = out_f * in_f
    if s.quant == "int8" then return { n, out_f * 4 } end
    local blocks = ceil(n / s.blocksize)
    if s.double_quant then return { ceil(n / 2), blocks, ceil(blocks / 256) * 4, 64, 1024 } end
    return { ceil(n / 2), blocks * 4, 64 }
end

-- A quantized weight's bytes (lt_quant_nbytes): its pieces together.
local function quant_bytes(s, out_f, in_f)
    local n = 0
    for _, b in ipairs(quant_pieces(s, out_f, in_f)) do n = n + b end
    return n
end

local function is_target(s, name)
    if s.r == 0 then return false end
    local t = s.target
    if t == "all-linear" then return true end
    if type(t) == "string" then return name:match(t) ~= nil end
    for _, x in ipairs(t) do if x == name then return true end end
    return false
end

-- The linear layers of a decoder layer in module order: { name, path, in, out }.
local function decoder_linears(c)
    local C, F = c.hidden_size, c.intermediate_size
    local H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    return {
        { "q_proj", "self_attn.q_proj", C, H * D }, { "k_proj", "self_attn.k_proj", C, Hkv * D },
        { "v_proj", "self_attn.v_proj", C, Hkv * D }, { "o_proj", "self_attn.o_proj", H * D, C },
        { "gate_proj", "mlp.gate_proj", C, F }, { "up_proj", "mlp.up_proj", C, F },
        { "down_proj", "mlp.down_proj", F, C },
    }
end

-- ---- the training step --------------------------------------------------------------------

local ACT = "activations"

-- A decoder linear layer's forward (kind: "lora", "quant", "linear"); key: where its
-- buffers live.
local function linear_forward(L, s, lin, key, N)
    local in_f, out_f = lin[3], lin[4]
    L:buffer(ACT, key .. "/output", N * out_f * s.ab)
    if lin.kind == "linear" then
        -- a trained f32 weight multiplies low-precision activations through a cast copy
        if s.ab == 2 and lin.wdtype == "f32" then L:buffer(ACT, key .. "/weight_cast", out_f * in_f * 2) end
        return matmul(L, s, "linear", N, out_f, in_f, "f32", lin.wdtype)
    end
    if lin.quantized then quant_linear(L, s, N, out_f, in_f, false)
    else matmul(L, s, "linear", N, out_f, in_f, "f32", lin.wdtype) end
    if lin.kind == "quant" then return end
    local r = s.r
    if s.dropout > 0 and not s.evaluating then
        L:buffer(ACT, key .. "/x_drop", N * in_f * s.ab)
        L:buffer(ACT, key .. "/drop_mask", N * in_f)
        -- src/ops/dropout.c: uniform draws, then the mask
        if s.device == "cpu" then L:scratch("dropout draws", N * in_f * 4) end
    end
    L:buffer(ACT, key .. ".lora_A/output", N * r * s.ab)
    -- f32 adapters meet low-precision activations through cast copies (nn.Linear)
    if s.ab == 2 then L:buffer(ACT, key .. ".lora_A/weight_cast", r * in_f * 2) end
    matmul(L, s, "lora A", N, r, in_f, "f32", "f32")
    if s.ab == 2 then L:buffer(ACT, key .. ".lora_B/weight_cast", out_f * r * 2) end
    matmul(L, s, "lora B", N, out_f, r, "f32", "f32")
end

local function linear_backward(L, s, lin, key, N)
    local in_f, out_f = lin[3], lin[4]
    L:buffer(ACT, key .. "/grad_input", N * in_f * s.ab)
    if lin.kind == "linear" then
        matmul(L, s, "linear backward", N, in_f, out_f, "f32", lin.wdtype)
        if lin.trainable then matmul(L, s, "weight gradient", out_f, in_f, N, "f32", "f32") end
        return
    end
    if lin.quantized then quant_linear(L, s, N, out_f, in_f, true)
    else matmul(L, s, "linear backward", N, in_f, out_f, "f32", lin.wdtype) end
    if lin.kind == "quant" then return end
    local r = s.r
    matmul(L, s, "lora B gradient", out_f, r, N, "f32", "f32")
    L:buffer(ACT, key .. "/d_h", N * r * s.ab)
    matmul(L, s, "lora backward", N, r, out_f, "f32", "f32")
    L:buffer(ACT, key .. ".lora_A/grad_input", N * in_f * s.ab)
    matmul(L, s, "lora backward", N, in_f, r, "f32", "f32")
    matmul(L, s, "lora A gradient", r, in_f, N, "f32", "f32")
end

local function rmsnorm_forward(L, s, key, N)
    local C = s.config.hidden_size
    L:buffer(ACT, key .. "/output", N * C * s.ab)
    L:buffer(ACT, key .. "/rstd", N * 4)
    if s.norm_dtype ~= "f32" and s.device == "cpu" then L:scratch("norm weight", C * 4) end -- rmsnorm.c weight_f32
end

local function rmsnorm_backward(L, s, key, N, trainable)
    local C = s.config.hidden_size
    L:buffer(ACT, key .. "/grad_input", N * C * s.ab)
    if s.device == "cpu" then
        L:scratch("norm backward", s.norm_dtype ~= "f32" and C * 4 or nil, trainable and s.threads * C * 4 or nil)
    end
end

-- src/ops/attention.c: the segments, the query blocks and per-thread tiles.
local function attention_forward_scratch(L, s, N)
    if s.device == "cuda" then return end -- a few bytes of segment offsets
    local c = s.config
    local segs = s.segments
    local nblk = 0
    local len = N / segs
    for _ = 1, segs do nblk = nblk + ceil(len / K.FWD_BQ) end
    local D = c.head_dim
    local per = D * K.FWD_BK + K.FWD_BQ * K.FWD_BK + K.FWD_BQ * D + K.FWD_BQ + K.FWD_BQ * K.LANES
    L:scratch("attention", segs * K.ATTN_SEG, nblk * K.ATTN_BLOCK, s.threads * per * 4)
end

local function attention_backward_scratch(L, s)
    if s.device == "cuda" then return end
    local D = s.config.head_dim
    local per = 2 * D * K.BWD_BK + 3 * K.BWD_BQ * K.BWD_BK + 2 * K.BWD_BK * D
    L:scratch("attention backward", s.segments * K.ATTN_SEG, s.threads * per * 4)
end

local function decoder_forward(L, s, lins, key, N)
    local c = s.config
    local C, F, H, D = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.head_dim
    rmsnorm_forward(L, s, key .. "input_layernorm", N)
    for i = 1, 3 do linear_forward(L, s, lins[i], key .. lins[i][2], N) end
    L:buffer(ACT, key .. "self_attn/attn", N * H * D * s.ab)
    L:buffer(ACT, key .. "self_attn/lse", H * N * 4)
    attention_forward_scratch(L, s, N)
    linear_forward(L, s, lins[4], key .. lins[4][2], N)
    L:buffer(ACT, key .. "/resid", N * C * s.ab)
    rmsnorm_forward(L, s, key .. "post_attention_layernorm", N)
    linear_forward(L, s, lins[5], key .. lins[5][2], N)
    linear_forward(L, s, lins[6], key .. lins[6][2], N)
    L:buffer(ACT, key .. "mlp/act", N * F * s.ab)
    linear_forward(L, s, lins[7], key .. lins[7][2], N)
    L:buffer(ACT, key .. "/output", N * C * s.ab)
end

local function decoder_backward(L, s, lins, key, N)
    local c = s.config
    local C, F, H, Hkv, D = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads,
        c.head_dim
    linear_backward(L, s, lins[7], key .. lins[7][2], N)
    L:buffer(ACT, key .. "mlp/d_gate", N * F * s.ab)
    L:buffer(ACT, key .. "mlp/d_up", N * F * s.ab)
    linear_backward(L, s, lins[5], key .. lins[5][2], N)
    linear_backward(L, s, lins[6], key .. lins[6][2], N)
    L:buffer(ACT, key .. "mlp/grad_input", N * C * s.ab)
    rmsnorm_backward(L, s, key .. "post_attention_layernorm", N, s.norms_trainable)
    L:buffer(ACT, key .. "/d_resid", N * C * s.ab)
    linear_backward(L, s, lins[4], key .. lins[4][2], N)
    L:buffer(ACT, key .. "self_attn/d_q", N * H * D * s.ab)
    L:buffer(ACT, key .. "self_attn/d_k", N * Hkv * D * s.ab)
    L:buffer(ACT, key .. "self_attn/d_v", N * Hkv * D * s.ab)
    attention_backward_scratch(L, s)
    for i = 1, 3 do linear_backward(L, s, lins[i], key .. lins[i][2], N) end
    L:buffer(ACT, key .. "self_attn/grad_input", N * C * s.ab)
    rmsnorm_backward(L, s, key .. "input_layernorm", N, s.norms_trainable)
    L:buffer(ACT, key .. "/grad_input", N * C * s.ab)
end

-- LlamaModel:forward: the embedding, the decoder layers (checkpointed: each wrapper keeps its
-- output, or with offload passes it through two shared buffers), the final norm.
local function model_forward(L, s, lins, N)
    local c = s.config
    local C, nl = c.hidden_size, c.num_hidden_layers
    L:buffer(ACT, "embed/output", N * C * s.ab)
    -- vocab_parallel: the ids pointed at this rank's rows (VP:_local_ids)
    if s.vocab_parallel then L:buffer(ACT, "vp/ids", N * 8) end
    local ck = s.gradient_checkpointing
    local CKPT = "checkpointed layer outputs"
    for i = 1, nl do
        -- checkpointed layers share one arena (keys without the layer's index)
        local key = ck and "arena." or ("layer" .. i .. ".")
        decoder_forward(L, s, lins, key, N)
        if ck and s.offload then
            L:buffer(CKPT, (i % 2 == 1) and "arena/pass_a" or "arena/pass_b", N * C * s.ab)
        elseif ck then
            L:buffer(CKPT, "ckpt" .. i .. "/output", N * C * s.ab)
        end
    end
    rmsnorm_forward(L, s, "norm", N)
end

local HEAD = "LM head logit blocks"

-- src/ops/cross_entropy.c lmhead_run on the CPU over `rows` vocabulary rows: R rows of logits
-- at a time (R x rows f32, within 8M floats), each block's logits GEMM, and in a backward its
-- dh GEMM (and dw's when the head trains).
local function cpu_head(L, s, N, rows, backward, head_grad)
    local C = s.config.hidden_size
    local R = min(max(floor(2 ^ 23 / rows), 1), N)
    L:alloc(HEAD, R * rows * 4)
    for r0 = 0, N - 1, R do
        local rr = min(R, N - r0)
        matmul(L, s, "LM head", rr, rows, C, "f32", s.head_dtype)
        if backward then matmul(L, s, "LM head backward", rr, C, rows, "f32", s.head_dtype) end
        if head_grad then matmul(L, s, "LM head gradient", rows, C, rr, "f32", "f32") end
    end
    L:free(HEAD, R * rows * 4)
end

-- cuda/cross_entropy.cu choose_chunks: R rows x vc vocabulary within 256 MiB at `per` bytes
-- an element.
local function cuda_chunks(N, V, per)
    local E = floor(256 * 2 ^ 20 / per)
    local rows_min = max(min(N, 256), 1)
    local vc = V
    if V > E / rows_min then vc = min(max(floor(E / rows_min / 128) * 128, 128), V) end
    local R = max(floor(E / vc), 1)
    if R < N and R >= 64 then R = floor(R / 64) * 64 end
    return min(R, N), vc
end

-- dist/vocab_parallel.lua: this rank's vocabulary rows.
local function vp_rows(s)
    local V = s.config.vocab_size
    local P = ceil(V / s.world)
    return min(V, (s.rank + 1) * P) - min(V, s.rank * P), P
end

-- The forward statistics over this rank's rows (VP:_targets, VP:_stats): the rank's targets
-- two ways, per-row log-sum-exps and losses, the fused head's forward over the rows, then the
-- combination's buffers.
local function vp_stats(L, s, N)
    local rows = vp_rows(s)
    L:buffer(ACT, "vp/own", N * 8)
    L:buffer(ACT, "vp/ext", N * 8)
    L:buffer(ACT, "vp/lse_r", N * 4)
    L:buffer(ACT, "vp/rl", N * 4)
    L:buffer(ACT, "vp/loss_tmp", 4)
    cpu_head(L, s, N, rows, false, false)
    for _, k in ipairs({ "m", "e", "xt", "lse" }) do L:buffer(ACT, "vp/" .. k, N * 4) end
end

-- The backward over this rank's rows and the zero row, with the global log-sum-exp.
local function vp_backward(L, s, N)
    local C = s.config.hidden_size
    local V1 = vp_rows(s) + 1
    L:buffer(ACT, "head/d_hidden", N * C * 4)
    cpu_head(L, s, N, V1, true, false)
end

-- lt.trainer.eval_loss over one batch: its loader, the forward in eval mode (no dropout),
-- LlamaForCausalLM:loss's head (the log-sum-exps kept, the logits a block at a time).
local function evaluation(L, s, lins, N)
    local c = s.config
    local C, V = c.hidden_size, c.vocab_size
    local loader = s.eval_samples * 8 + 3 * N * 8 + (N + 1) * 4
    L:alloc("evaluation batches", loader)
    -- two batches: the first grows the buffers, the second runs with all of them held (a
    -- held-out set of one batch peaks lower: the plan is then a bound)
    for _ = 1, 2 do
        s.evaluating = true
        model_forward(L, s, lins, N)
        s.evaluating = false
        if s.vocab_parallel then
            vp_stats(L, s, N)
        else
            L:buffer(ACT, "head/loss", 4)
            L:buffer(ACT, "head/lse", N * 4)
            if s.device == "cuda" then
                local R, vc = cuda_chunks(N, V, 4)
                local cz = DTYPE_BYTES[s.head_dtype]
                L:scratch(HEAD, N * 4, R * vc * 4, s.ab ~= cz and R * C * cz or nil, N * 4, N * 4, N * 4)
            else
                cpu_head(L, s, N, V, false, false)
            end
        end
    end
    L:free("evaluation batches", loader)
end

-- One micro-batch: LlamaForCausalLM:forward_backward.
local function forward_backward(L, s, lins, N)
    local c = s.config
    local C, nl = c.hidden_size, c.num_hidden_layers
    model_forward(L, s, lins, N)
    local ck = s.gradient_checkpointing
    local CKPT = "checkpointed layer outputs"
    if s.vocab_parallel then
        vp_stats(L, s, N)
        vp_backward(L, s, N)
    else
        L:buffer(ACT, "head/loss", 4)
        L:buffer(ACT, "head/d_hidden", N * C * s.dh_bytes)
        -- the fused head: each block's logits, loss, logit gradient, dh rows and dw in turn
        local V = c.vocab_size
        if s.device == "cuda" then
            -- a separate low-precision logit gradient when the head is not f32
            local cz = DTYPE_BYTES[s.head_dtype]
            local R, vc = cuda_chunks(N, V, 4 + (s.head_dtype ~= "f32" and cz or 0))
            L:scratch(HEAD, N * 4, R * vc * 4, s.head_dtype ~= "f32" and R * vc * cz or nil,
                s.ab ~= cz and R * C * cz or nil, N * 4, N * 4, N * 4)
        else
            cpu_head(L, s, N, V, true, s.r == 0)
        end
        if s.dh_bytes ~= s.ab then L:buffer(ACT, "head/d_hidden_act", N * C * s.ab) end
    end
    rmsnorm_backward(L, s, "norm", N, s.norms_trainable)
    for i = nl, 1, -1 do
        local key = ck and "arena." or ("layer" .. i .. ".")
        -- offload: inputs come back into two alternating buffers, the next one prefetched
        if ck and s.offload then
            L:buffer(CKPT, "arena/restored_a", N * C * s.ab)
            if nl > 1 then L:buffer(CKPT, "arena/restored_b", N * C * s.ab) end
        end
        -- the recomputation (the arena holds the last layer's activations already)
        if ck and i ~= nl then decoder_forward(L, s, lins, key, N) end
        decoder_backward(L, s, lins, key, N)
        -- the wrappers' input gradients alternate between two shared buffers
        if ck then L:buffer(CKPT, (nl - i) % 2 == 0 and "arena/grad_a" or "arena/grad_b", N * C * s.ab) end
    end
end

-- ---- the plan -------------------------------------------------------------------------------

local function settings(opts)
    local llama = require "luatrain.nn.llama"
    local s = {}
    for k, v in pairs(opts) do s[k] = v end
    s.config = llama.normalize_config(opts.config)
    s.quant = s.quant or "none"
    s.blocksize = s.blocksize or 64
    if s.double_quant == nil then s.double_quant = true end
    if s.quant == "int8" then s.double_quant = false end
    if s.lora == false then s.r = 0 end
    s.r = s.r or 8
    s.target = s.target or "all-linear"
    s.dropout = s.r > 0 and (s.dropout or 0.1) or 0
    s.batch_size, s.seq_len = s.batch_size or 8, s.seq_len or 128
    s.grad_accum = s.grad_accum or 1
    if s.gradient_checkpointing == nil then s.gradient_checkpointing = true end
    s.offload = s.offload_activations and s.gradient_checkpointing or false
    s.optim = s.optim or "adamw"
    s.precision = s.precision or "f32"
    s.threads = s.threads or 1
    s.train_samples = s.train_samples or 0
    s.eval_samples = s.eval_samples or 0
    s.eval_every, s.steps = s.eval_every or 0, s.steps or 0
    s.segments = s.segments or s.batch_size
    s.base_dtype = s.base_dtype or "f32"
    -- data parallelism: the ranks, this one's index, ZeRO's stage, a base sharded over them
    s.world, s.rank, s.zero = s.world or 1, s.rank or 0, s.zero or 0
    s.shard_base = s.shard_base and true or false
    s.vocab_parallel = (s.vocab_parallel and s.world > 1) and true or false
    -- offload = "nvme": AdamW's moments in a file, paged through the same two buffer sets;
    -- "cpu": in host memory (the paged pool), updated there
    s.nvme = opts.offload == "nvme"
    s.host_optim = opts.offload == "cpu"
    -- a quantized base loads its other weights in bf16 (recipes: from_pretrained's dtype)
    s.frozen_dtype = s.quant ~= "none" and "bf16" or s.base_dtype
    s.norm_dtype = "f32" -- RMSNorm weights are made in f32 whatever the load dtype
    s.norms_trainable = s.r == 0
    s.head_dtype = s.r > 0 and s.frozen_dtype or "f32"
    s.device = s.device or "cpu"
    if s.device ~= "cpu" and s.device ~= "cuda" then error(("plan: device must be cpu or cuda, got %s"):format(s.device), 2) end
    -- activations: f32 on the CPU (bf16 there means bf16 matmuls), the compute dtype on CUDA
    s.ab = (s.device == "cuda" and s.precision ~= "f32") and 2 or 4
    -- the hidden state's gradient from the fused head: f32 or the head's dtype
    local act = s.ab == 2 and s.precision or "f32"
    s.dh_bytes = (act == "f32" or act == s.head_dtype) and s.ab or 4
    return s
end

-- The trainable tensors in named_parameters order, as element counts.
local function trainable_numels(s, lins)
    local c = s.config
    local out = {}
    if s.r == 0 then
        local C, V = c.hidden_size, c.vocab_size
        out[#out + 1] = V * C
        for _ = 1, c.num_hidden_layers do
            for _, l in ipairs(lins) do
                if l[1] == "gate_proj" then out[#out + 1] = C end -- input_layernorm ... order below
                out[#out + 1] = l[3] * l[4]
            end
            out[#out + 1] = C
        end
        out[#out + 1] = C
        if not c.tie_word_embeddings then out[#out + 1] = V * C end
        return out
    end
    for _ = 1, c.num_hidden_layers do
        for _, l in ipairs(lins) do
            if l.kind == "lora" then
                out[#out + 1] = s.r * l[3]
                out[#out + 1] = l[4] * s.r
            end
        end
    end
    return out
end

-- ZeRO-3's flat groups: { layer = i or nil, numels = { ... } } in named_parameters order
-- (flatten_parameters{per_layer}: a group per decoder layer and one for the rest, in the order
-- their first parameters come).
local function zero3_groups(s, lins)
    local c = s.config
    local groups = {}
    local rest = { numels = {} }
    if s.r == 0 then rest.numels[#rest.numels + 1] = c.vocab_size * c.hidden_size end
    for i = 1, c.num_hidden_layers do
        local g = { layer = i, numels = {} }
        for _, l in ipairs(lins) do
            if s.r == 0 then
                g.numels[#g.numels + 1] = l[3] * l[4]
            elseif l.kind == "lora" then
                g.numels[#g.numels + 1] = s.r * l[3]
                g.numels[#g.numels + 1] = l[4] * s.r
            end
        end
        if s.r == 0 then
            g.numels[#g.numels + 1] = c.hidden_size
            g.numels[#g.numels + 1] = c.hidden_size
        end
        groups[#groups + 1] = g
    end
    if s.r == 0 then
        rest.numels[#rest.numels + 1] = c.hidden_size
        if not c.tie_word_embeddings then rest.numels[#rest.numels + 1] = c.vocab_size * c.hidden_size end
    end
    if #rest.numels > 0 then table.insert(groups, 1, rest) end
    return groups
end

-- Optimizer state bytes on the device (the paged pool is host memory outside it).
local function optimizer_bytes(s, numels)
    local dev, paged_pool = 0, 0
    local eight = s.optim == "adamw_8bit" or s.optim == "paged_adamw_8bit"
    local paged = s.optim == "paged_adamw" or s.optim == "paged_adamw_8bit" or s.nvme or s.host_optim
    local maps = false
    for _, n in ipairs(numels) do
        local b
        if eight and n >= 4096 then
            b = 2 * n + 8 * ceil(n / 256)
            maps = true
        else
            b = 8 * n
        end
        if paged then paged_pool = paged_pool + b else dev = dev + b end
    end
    -- the two 256-entry maps live beside the 8-bit state's update: on the host with offload=cpu
    if maps and not (s.host_optim and s.device ~= "cpu") then dev = dev + 2 * 256 * 4 end
    return dev, paged_pool
end

-- The paged update's page buffers (lt.optim: two sets of 4 MiB pages, whole blocks for
-- 8-bit, alternating page by page).
local function page_buffers(L, s, numels, in_file)
    local eight = s.optim == "paged_adamw_8bit"
    local page = floor(8 * 2 ^ 20 / 4 / 2)
    if eight then page = max(256, floor(page / 256) * 256) end
    local set = 0
    local have = {}
    -- a buffer that grows: the paged update allocates the new one while the old one's views
    -- live; the NVMe update lets the old one's views go first, so its bytes are given back
    -- before the new ones are taken
    local function buf(key, n)
        if (have[key] or 0) >= n then return end
        if s.nvme and have[key] then L:free("optimizer page buffers", have[key]) end
        L:alloc("optimizer page buffers", n)
        if not s.nvme and have[key] then L:free("optimizer page buffers", have[key]) end
        have[key] = n
    end
    for i, n in ipairs(numels) do
        for start = 1, n, page do
            local len = min(page, n - start + 1)
            set = set % 2 + 1
            if eight and n >= 4096 then
                buf("mc" .. set, len)
                buf("ma" .. set, ceil(len / 256) * 4)
                buf("vc" .. set, len)
                buf("va" .. set, ceil(len / 256) * 4)
            else
                buf("m" .. set, len * 4)
                buf("v" .. set, len * 4)
                -- a parameter that lives in the file too (ZeRO-3 with offload=nvme)
                if in_file and in_file[i] then buf("p" .. set, len * 4) end
            end
        end
    end
    for _, n in pairs(have) do L:free("optimizer page buffers", n) end
end

-- The bytes of offload=nvme's file: per piece two moment regions (and its parameters' when
-- they live there too), each rounded up to 4096-byte blocks (lt_aio_align).
local function nvme_file_bytes(numels, in_file)
    local n = 0
    for i, k in ipairs(numels) do
        local region = ceil(k * 4 / 4096) * 4096
        n = n + (in_file and in_file[i] and 3 or 2) * region
    end
    return n
end

-- opts: see the header; also evaluates / generates (the run evaluates, or generates, before
-- it trains: the recipes do). Returns { peak = { train = bytes }, rows, settings, host = { paged } }.
function M.train(opts)
    local s = settings(opts)
    local c = s.config
    local L = ledger()
    if opts.trace then L.trace = {} end
    -- scratch = false: tensors only (what lt.memory counts on CUDA, where kernels take their
    -- scratch from the caching allocator outside its counters)
    L.no_scratch = opts.scratch == false
    local lins = decoder_linears(c)
    for _, l in ipairs(lins) do
        local lora = is_target(s, l[1])
        l.quantized = s.quant ~= "none"
        l.kind = lora and "lora" or (l.quantized and "quant" or "linear")
        l.wdtype = l.quantized and "q" or (s.r > 0 and s.frozen_dtype or "f32")
        l.trainable = s.r == 0
    end
    local C, V, nl = c.hidden_size, c.vocab_size, c.num_hidden_layers
    local B, T = s.batch_size, s.seq_len
    local N = B * T

    -- what is held before the first step
    local fb = DTYPE_BYTES[s.r > 0 and s.frozen_dtype or "f32"]
    local base_q, base_plain = 0, 0
    for _, l in ipairs(lins) do
        if l.quantized then base_q = base_q + quant_bytes(s, l[4], l[3]) * nl
        else base_plain = base_plain + l[3] * l[4] * fb * nl end
    end
    local norms = (2 * nl + 1) * C * DTYPE_BYTES[s.norm_dtype]
    local embed = V * C * fb * (c.tie_word_embeddings and 1 or 2)
    -- vocab_parallel: this rank's rows and a zero row of each vocabulary matrix
    if s.vocab_parallel then embed = (vp_rows(s) + 1) * C * fb * (c.tie_word_embeddings and 1 or 2) end
    local function hold_base(P)
        if base_q > 0 and s.shard_base and s.world > 1 then
            -- dist/shard_base.lua: each layer's pieces at multiples of 64 bytes, padded to
            -- world x 64 and cut in world ranges; two buffers of the largest layer's blob
            local off = 0
            for _, l in ipairs(lins) do
                for _, b in ipairs(quant_pieces(s, l[4], l[3])) do off = ceil((off + b) / 64) * 64 end
            end
            local Sq = ceil(off / (64 * s.world)) * 64
            P:alloc("quantized base (this rank's shards)", Sq * nl)
            P:alloc("quantized base (two layer buffers)", 2 * Sq * s.world)
        elseif base_q > 0 then
            P:alloc("quantized base", base_q)
        end
    end
    hold_base(L)
    L:alloc("weights (not quantized)", base_plain + norms + embed)
    local rows0 = min(c.max_position_embeddings, 256)
    L:alloc("rotary tables", c.head_dim / 2 * 4 + 2 * rows0 * c.head_dim / 2 * 4)
    local numels = trainable_numels(s, lins)
    -- flat parameters and gradients: each tensor starts at a multiple of 64 elements, the
    -- buffer a multiple of world x 64 (equal shards)
    local flat = 0
    local offsets = {}
    for i, n in ipairs(numels) do
        offsets[i] = flat
        flat = flat + ceil(n / 64) * 64
    end
    -- a split vocabulary makes the ranks one model: no data parallelism, no padding for it
    local dp = s.vocab_parallel and 1 or s.world
    flat = ceil(flat / (64 * dp)) * 64 * dp
    local adapters = s.r > 0
    if s.r == 0 and flat ~= 0 then
        -- full fine-tuning: the weights above are the trainable ones, now flat
        L.by_kind["weights (not quantized)"] = L.by_kind["weights (not quantized)"] - (base_plain + norms + embed)
        L.current = L.current - (base_plain + norms + embed)
    end
    local opt_numels, opt_in_file, opt_host_shard = numels, nil, nil
    local host_shards = 0 -- ZeRO-3 on a GPU with offload=cpu: the layers' shards in host memory
    local S = flat / s.world
    local z3_shards = {}
    if s.zero == 3 then
        -- ZeRO-3 (dist/zero.lua): a flat group per decoder layer and one for the rest; a layer
        -- group keeps this rank's shard of its parameters, gradients and a scratch, the rest
        -- stays whole with a shard of gradients and a send buffer; two parameter buffers and a
        -- gradient buffer of the largest layer; AdamW over the pieces each shard holds
        local groups = zero3_groups(s, lins)
        local held, biggest, biggest_shard = 0, 0, 0
        -- where a layer's parameter shard lives between uses when not here: the optimizer's
        -- file (offload=nvme), or a GPU's in host memory (offload=cpu)
        local away = s.nvme or (s.host_optim and s.device ~= "cpu")
        opt_numels, opt_in_file, opt_host_shard = {}, {}, {}
        for _, g in ipairs(groups) do
            local off, offs = 0, {}
            for i, n in ipairs(g.numels) do
                offs[i] = off
                off = off + ceil(n / 64) * 64
            end
            local numel = ceil(off / (64 * s.world)) * 64 * s.world
            local Sg = numel / s.world
            z3_shards[#z3_shards + 1] = Sg
            if g.layer then
                held = held + (away and 2 or 3) * Sg * 4
                if away and not s.nvme then host_shards = host_shards + Sg * 4 end
                biggest = max(biggest, numel)
                biggest_shard = max(biggest_shard, Sg)
            else
                held = held + 2 * numel * 4 + 2 * Sg * 4
            end
            local lo, hi = s.rank * Sg, (s.rank + 1) * Sg
            for i, n in ipairs(g.numels) do
                local a, b = max(lo, offs[i]), min(hi, offs[i] + n)
                if b > a then
                    opt_numels[#opt_numels + 1] = b - a
                    opt_in_file[#opt_numels] = s.nvme and g.layer ~= nil
                    opt_host_shard[#opt_numels] = away and not s.nvme and g.layer ~= nil
                end
            end
        end
        L:alloc(adapters and "adapters (ZeRO-3 shards)" or "trained weights (ZeRO-3 shards)", held)
        -- two staging buffers the layers' shards are read or copied into
        if away then L:alloc("ZeRO-3 staging buffers", 2 * biggest_shard * 4) end
        L:alloc("ZeRO-3 layer buffers", 3 * biggest * 4)
    else
        if adapters then
            L:alloc("adapters", flat * 4)
        elseif flat ~= 0 then
            L:alloc("trained weights", flat * 4)
        end
        L:alloc("gradients", flat * 4)
    end
    -- ZeRO (dist/zero.lua): this rank's shard of the gradients (and a send buffer; stage 2 a
    -- scratch), and AdamW over the pieces of the parameters the shard holds
    if s.zero == 1 or s.zero == 2 then
        L:alloc("ZeRO shard buffers", (s.zero == 2 and 3 or 2) * S * 4)
        local lo, hi = s.rank * S, (s.rank + 1) * S
        opt_numels = {}
        for i, n in ipairs(numels) do
            local a, b = max(lo, offsets[i]), min(hi, offsets[i] + n)
            if b > a then opt_numels[#opt_numels + 1] = b - a end
        end
    end
    local opt_dev, opt_paged = optimizer_bytes(s, opt_numels)
    -- offload=cpu on a GPU: each piece's host gradient, and an f32 master copy of those whose
    -- weights stay on the device (lt.optim's host_copies), beside the layers' host shards
    if s.host_optim and s.device ~= "cpu" then
        for i, n in ipairs(opt_numels) do
            opt_paged = opt_paged + (opt_host_shard and opt_host_shard[i] and 4 or 8) * n
        end
        opt_paged = opt_paged + host_shards
    end
    if opt_dev > 0 then L:alloc("optimizer state", opt_dev) end
    -- the loader: the sample order and one packed row of ids, targets, positions, offsets
    local host_batches = s.train_samples * 8 + 3 * N * 8 + (N + 1) * 4
    if s.grad_accum > 1 then
        -- the trainer holds a copy of each micro-batch (ids, targets, positions, offsets)
        host_batches = host_batches + s.grad_accum * (3 * N * 8 + (s.segments + 1) * 4)
    end
    if s.device == "cpu" then
        L:alloc("batches", host_batches)
    else
        -- the batches stay on the host; the model copies each into its own input buffers
        L:alloc("batches", 3 * N * 8 + (s.segments + 1) * 4)
    end
    local before = L.current
    L.peak = L.current

    -- what evaluation and generation before training leave in the model: the head's
    -- per-token log-sum-exps (LlamaForCausalLM:loss) and the last position's logits
    -- (a split vocabulary's own loss keeps its statistics in its own buffers)
    if s.evaluates and not s.vocab_parallel then L:buffer(ACT, "head/lse", N * 4) end
    if s.generates then
        L:buffer(ACT, "lm_head/output", V * (s.vocab_parallel and 4 or s.ab))
        if s.vocab_parallel then
            -- the head's gathered logits of the last position (VP:_logits)
            local _, P = vp_rows(s)
            L:buffer(ACT, "vp/logits_mine", P * 4)
            L:buffer(ACT, "vp/logits_all", s.world * P * 4)
        end
    end
    -- the rotary tables grow, on the first forward, to the positions a row holds (planned as
    -- seq_len: packed samples restart their positions, so a run may need fewer)
    if T > rows0 then
        local rows = max(T, 2 * rows0)
        L:alloc("rotary tables", 2 * rows * c.head_dim / 2 * 4)
        L:free("rotary tables", 2 * rows0 * c.head_dim / 2 * 4)
    end
    -- two steps: the first grows every buffer, the second is every later step
    for _ = 1, 2 do
        for _ = 1, s.grad_accum do forward_backward(L, s, lins, N) end
        -- the gradient norm: src/ops/reduce.c sums each flat buffer in chunks of 16384
        if s.zero == 3 then
            for _, Sg in ipairs(z3_shards) do
                if Sg > 16384 then L:scratch("gradient norm", ceil(Sg / 16384) * 8) end
            end
        else
            local normed = s.zero > 0 and S or flat
            if normed > 16384 then L:scratch("gradient norm", ceil(normed / 16384) * 8) end
        end
        if s.optim == "paged_adamw" or s.optim == "paged_adamw_8bit" or s.nvme then
            page_buffers(L, s, opt_numels, opt_in_file)
        end
    end
    -- an evaluation between steps (eval_every below steps) joins the run's peak
    if s.eval_every > 0 and s.eval_every < s.steps then evaluation(L, s, lins, N) end

    -- the other phases, each from the model as loaded (adapters unflattened), on a ledger
    -- of its own
    local unflat = 0
    for _, n in ipairs(numels) do unflat = unflat + n * 4 end
    local function loaded()
        local P = ledger()
        P.no_scratch = L.no_scratch
        hold_base(P)
        P:alloc(s.r > 0 and "weights (not quantized)" or "trained weights", base_plain + norms + embed)
        P:alloc("rotary tables", c.head_dim / 2 * 4 + 2 * rows0 * c.head_dim / 2 * 4)
        return P
    end
    -- loading: the weights as they end, and while a layer is quantized, its block scales in
    -- f32 before their own quantization (the largest layer's: a bound)
    local Pl = loaded()
    local qmax = 0
    for _, l in ipairs(lins) do
        if l.quantized and s.quant ~= "int8" then qmax = max(qmax, ceil(l[3] * l[4] / s.blocksize) * 4) end
    end
    Pl:scratch("quantizing a layer", qmax)
    -- evaluation of the loaded model with its adapters (held-out loss, one batch at a time)
    local Pe = loaded()
    if opts.trace then Pe.trace = {} end
    if s.r > 0 then Pe:alloc("adapters", unflat) end
    Pe:alloc("gradients", unflat)
    evaluation(Pe, s, lins, N)
    -- generation: a prompt of up to seq_len tokens, then max_new_tokens more through the
    -- key/value cache (lt.generate: (1, prompt + new, Hkv, D) per layer, k and v, f32 on the
    -- host, the compute dtype on a device)
    local Pg = loaded()
    if s.r > 0 then Pg:alloc("adapters", unflat) end
    Pg:alloc("gradients", unflat)
    local positions = T + (s.max_new_tokens or 64)
    Pg:alloc("key/value cache", nl * 2 * positions * c.num_key_value_heads * c.head_dim * s.ab)
    s.evaluating = true
    model_forward(Pg, s, lins, T)
    s.evaluating = false
    Pg:buffer(ACT, "lm_head/output", V * s.ab)

    local rows = {}
    for k, v in pairs(L.at_peak or {}) do
        if v ~= 0 then rows[#rows + 1] = { k, v } end
    end
    table.sort(rows, function(a, b) return a[2] > b[2] end)
    -- CUDA: what the context holds outside the allocator (cuBLASLt's workspace, cuda/context.cu)
    local outside = s.device == "cuda" and 32 * 2 ^ 20 or 0
    return {
        peak = { train = L.peak, load = Pl.peak, eval = Pe.peak, generate = Pg.peak },
        outside_allocator = outside,
        before_train = before,
        steady = L.current,
        rows = rows,
        -- host memory beside the device's: the paged optimizer state (offload=cpu's too), the
        -- offloaded layer inputs
        host = { paged = s.nvme and 0 or opt_paged, offload = s.offload and nl * N * C * s.ab or 0 },
        -- offload=nvme: the optimizer's file in offload_dir (each piece's moments, and at
        -- ZeRO-3 the layers' parameter shards, in regions of whole 4096-byte blocks)
        disk = { nvme = s.nvme and nvme_file_bytes(opt_numels, opt_in_file) or 0 },
        settings = s,
        trace = L.trace, trace_eval = Pe.trace,
    }
end

-- A plan from a recipe's settings (lt.config values with the recipes' names: model, quant,
-- blocksize, double_quant, r, target, dropout, batch_size, seq_len, gradient_checkpointing,
-- offload_activations, grad_accum, optim, precision, threads, device, dataset).
function M.from_settings(st)
    local llama = require "luatrain.pretrained"
    local function get(k, default)
        local v = st[k]
        if v == nil then return default end
        return v
    end
    local config = llama.read_config(st.model .. "/config.json")
    local device = tostring(get("device", "cpu"))
    local precision = get("precision", "auto")
    if precision == "auto" then precision = device == "cpu" and "f32" or "bf16" end
    local kind = device:match("^cuda") and "cuda" or device
    if kind ~= "cpu" and kind ~= "cuda" then error(("plan: device=%s is not cpu, cuda or cuda:N"):format(device), 0) end
    if kind == "cpu" and precision ~= "f32" and precision ~= "bf16" then
        error(("plan: precision=%s is not planned yet on the CPU (f32, bf16)"):format(precision), 0)
    end
    if get("dora", false) then error("plan: dora=true is not planned yet", 0) end
    -- under mpirun: the ranks (st.world, st.rank: the recipe's process group, or luatrain plan
    -- --world=N --rank=R)
    local world, rank = get("world", 1), get("rank", 0)

    local target = get("target", "all-linear")
    if target ~= "all-linear" and (target:find(",") or target:match("^[%w_]+$")) then
        local list = {}
        for t in target:gmatch("[^,%s]+") do list[#list + 1] = t end
        target = list
    end
    local threads = get("threads", 0)
    if threads == 0 then threads = tonumber(require("luatrain").get_num_threads()) end
    -- the loaders' sample orders: one i64 per record
    local function records(path)
        local n = 0
        local f = path and io.open(path)
        if not f then return 0 end
        for line in f:lines() do if line:find("%S") then n = n + 1 end end
        f:close()
        return n
    end
    local samples = records(st.dataset)
    local eval_samples = records(get("eval_dataset", ""))
    if get("eval_dataset", "") == "" then
        local every = math.max(2, math.floor(1 / math.max(get("eval_split", 0.1), 1e-6) + 0.5))
        eval_samples = math.floor(samples / every)
        samples = samples - eval_samples
    end
    local p = M.train{ config = config, quant = get("quant", "none"), blocksize = get("blocksize", 64),
        double_quant = get("double_quant", true), r = get("r", 8), target = target, dropout = get("dropout", 0.1),
        batch_size = get("batch_size", 8), seq_len = get("seq_len", 128),
        gradient_checkpointing = get("gradient_checkpointing", true),
        offload_activations = get("offload_activations", false), grad_accum = get("grad_accum", 1),
        optim = get("optim", "adamw"), precision = precision, threads = threads, train_samples = samples,
        device = kind, evaluates = true, generates = true, eval_samples = eval_samples,
        base_dtype = require("luatrain.amp").policy(precision, kind).frozen,
        eval_every = get("eval_every", 0), steps = get("steps", 0), max_new_tokens = get("max_new_tokens", 64),
        world = world, rank = rank, zero = get("zero", 0), shard_base = get("shard_base", false) and world > 1,
        vocab_parallel = get("vocab_parallel", false), offload = get("offload", "none") }
    p.settings.device = device
    p.settings.describe = ("%s base, LoRA r=%d, batch %d x %d, checkpointing %s, %s, %s, %d threads"):format(
        p.settings.quant, p.settings.r, p.settings.batch_size, p.settings.seq_len,
        p.settings.gradient_checkpointing and "on" or "off", p.settings.optim, precision, threads)
    return p
end

-- auto_fit: the settings (a copy) changed so that the plan's training step fits `limit`
-- bytes, and that plan; or nil and the smallest plan tried. It keeps the effective batch
-- (batch_size x grad_accum) and tries, fastest first: the micro-batch as given, then halved
-- (accumulation doubled) down to 1; at each, gradient checkpointing off then on; the
-- optimizer as given then its paged form; activation offload off then on.
function M.fit(st, limit)
    local effective = (st.batch_size or 8) * (st.grad_accum or 1)
    local optim = st.optim or "adamw"
    local optims = { optim }
    if not optim:match("^paged_") then optims[2] = "paged_" .. optim end
    local best
    local b = st.batch_size or 8
    while b >= 1 do
        if effective % b == 0 then
            for _, ck in ipairs({ false, true }) do
                for _, o in ipairs(optims) do
                    for _, off in ipairs(ck and { false, true } or { false }) do
                        local try = {}
                        for k, v in pairs(st) do try[k] = v end
                        try.batch_size, try.grad_accum = b, effective / b
                        try.gradient_checkpointing, try.optim, try.offload_activations = ck, o, off
                        local p = M.from_settings(try)
                        if p.peak.train <= limit then return try, p end
                        if not best or p.peak.train < best.peak.train then best = p end
                    end
                end
            end
        end
        b = math.floor(b / 2)
    end
    return nil, best
end

-- The plan as one JSON-ready table: peak.train (bytes), rows at the peak, host bytes.
function M.to_json(p)
    local rows = {}
    for _, r in ipairs(p.rows) do rows[#rows + 1] = { what = r[1], bytes = r[2] } end
    return { device = p.settings.device or "cpu", peak = { train = p.peak.train, load = p.peak.load,
        eval = p.peak.eval, generate = p.peak.generate },
        before_train = p.before_train, at_peak = rows, host = { paged_bytes = p.host.paged,
            offload_bytes = p.host.offload }, disk = { nvme_bytes = p.disk.nvme } }
end

-- The plan as a table of lines.
function M.format(p)
    local mb = require("luatrain.memory").format_bytes
    local out = {}
    for _, r in ipairs(p.rows) do out[#out + 1] = ("    %-40s %12s"):format(r[1], mb(r[2])) end
    out[#out + 1] = ("    %-40s %12s"):format("peak of a training step", mb(p.peak.train))
    out[#out + 1] = ("    %-40s %12s"):format("peak while loading (a bound)", mb(p.peak.load))
    out[#out + 1] = ("    %-40s %12s"):format("peak of an evaluation", mb(p.peak.eval))
    out[#out + 1] = ("    %-40s %12s"):format("peak of a generation (seq_len prompt)", mb(p.peak.generate))
    if p.host.paged > 0 then
        out[#out + 1] = ("    %-40s %12s"):format("host: paged optimizer state", mb(p.host.paged))
    end
    if p.host.offload > 0 then
        out[#out + 1] = ("    %-40s %12s"):format("host: offloaded layer inputs", mb(p.host.offload))
    end
    if p.disk.nvme > 0 then
        out[#out + 1] = ("    %-40s %12s"):format("disk: the optimizer's file (offload_dir)", mb(p.disk.nvme))
    end
    return table.concat(out, "\n")
end

return M
