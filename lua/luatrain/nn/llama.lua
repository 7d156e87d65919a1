--[[
nn/llama.lua - the Llama architecture: MLP, Attention, DecoderLayer, LlamaModel and
LlamaForCausalLM, with Hugging Face's parameter names and math.

Shapes: B batch, T positions, C hidden size, H query heads, Hkv key/value heads, D head
dim, F intermediate size, V vocabulary.

Rotary tables live in one context shared by every attention layer (ctx.cos, ctx.sin:
(max_positions, D/2)). For the current batch, ctx.positions (when set) holds (B, T) or (T)
position ids, and ctx.cu_seqlens the offsets of packed sequences: samples packed into one
row restart their positions and never attend to each other.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local F = require "luatrain.ops.nn"
local modmod = require "luatrain.nn.module"
local layers = require "luatrain.nn.layers"

local C, check = core.C, core.check
local Module, ModuleList = modmod.Module, modmod.ModuleList
local Linear, Embedding, RMSNorm = layers.Linear, layers.Embedding, layers.RMSNorm

local M = {}

-- out = a + b (same shape), into an owned buffer.
local function add_into(out, a, b)
    check(C.lt_binary_forward(out, a, b, C.LT_BINARY_ADD))
    return out
end

-- A decoder linear layer: a Linear, or (opts.quant) a QuantLinear whose weight the loader
-- quantizes, so the f32 weight never exists.
local function linear(in_f, out_f, opts, bias)
    if opts and opts.quant then
        return require("luatrain.nn.lora").QuantLinear(nil, in_f, out_f, { bias = bias })
    end
    if bias then
        local o = { bias = true }
        for k, v in pairs(opts or {}) do o[k] = v end
        opts = o
    end
    return Linear(in_f, out_f, opts)
end

-- ---- MLP --------------------------------------------------------------------------------

-- down(silu(gate(x)) * up(x)); x (B, T, C) -> (B, T, C) through (B, T, F).
local MLP = Module:extend("LlamaMLP")
M.MLP = MLP

function MLP:init(hidden, intermediate, opts)
    self:add_module("gate_proj", linear(hidden, intermediate, opts))
    self:add_module("up_proj", linear(hidden, intermediate, opts))
    self:add_module("down_proj", linear(intermediate, hidden, opts))
end

function MLP:forward(x)
    local g = self.gate_proj:forward(x)
    local u = self.up_proj:forward(x)
    local a = self:buffer("act", g:shape())
    F.swiglu(g, u, a)
    self.output = self.down_proj:forward(a)
    return self.output
end

function MLP:backward(x, dy)
    local a = self._buffers.act
    local da = self.down_proj:backward(a, dy)
    local g, u = self.gate_proj.output, self.up_proj.output
    local dg = self:buffer("d_gate", g:shape())
    local du = self:buffer("d_up", u:shape())
    F.swiglu_backward(da, g, u, dg, du)
    local dxg = self.gate_proj:backward(x, dg)
    local dxu = self.up_proj:backward(x, du)
    self.grad_input = add_into(self:buffer("grad_input", x:shape()), dxg, dxu)
    return self.grad_input
end

-- ---- Attention --------------------------------------------------------------------------

local Attention = Module:extend("LlamaAttention")
M.Attention = Attention

-- cfg: hidden_size, num_attention_heads, num_key_value_heads, head_dim; ctx: rotary tables
function Attention:init(cfg, ctx, opts)
    local Cdim, H, Hkv, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    self.H, self.Hkv, self.D, self.ctx = H, Hkv, D, ctx
    self.scale = 1 / math.sqrt(D)
    self.causal = true
    -- Qwen2: q, k and v carry biases (o does not)
    local b = cfg.qkv_bias or nil
    self:add_module("q_proj", linear(Cdim, H * D, opts, b))
    self:add_module("k_proj", linear(Cdim, Hkv * D, opts, b))
    self:add_module("v_proj", linear(Cdim, Hkv * D, opts, b))
    self:add_module("o_proj", linear(H * D, Cdim, opts))
    if cfg.qk_norm then
        -- Qwen3: each head's q and k (D values) RMS-normalised before RoPE, weights (D)
        self:add_module("q_norm", RMSNorm(D, cfg.rms_norm_eps, opts))
        self:add_module("k_norm", RMSNorm(D, cfg.rms_norm_eps, opts))
    end
end

function Attention:extra_repr()
    return ("heads %d, kv heads %d, head dim %d"):format(self.H, self.Hkv, self.D)
end

function Attention:forward(x)
    local B, T = x:size(1), x:size(2)
    local H, Hkv, D, ctx = self.H, self.Hkv, self.D, self.ctx
    -- rotate q and k in place in the projections' outputs: their backward does not read them
    local q = self:view_of("q", self.q_proj:forward(x), { B, T, H, D })
    local k = self:view_of("k", self.k_proj:forward(x), { B, T, Hkv, D })
    local v = self:view_of("v", self.v_proj:forward(x), { B, T, Hkv, D })
    if self.q_norm then
        -- the norms' outputs (B, T, heads, D) are rotated in place: their backward reads
        -- their inputs (the views q and k) and rstd, not their outputs
        q = self.q_norm:forward(q)
        k = self.k_norm:forward(k)
    end
    self._q_rot, self._k_rot = q, k -- what the attention reads, for its backward
    F.rope(q, ctx.cos, ctx.sin, ctx.positions, q)
    F.rope(k, ctx.cos, ctx.sin, ctx.positions, k)
    local kv = ctx.kv
    if kv then
        -- generation: append this step's keys and values to the layer's cache and attend
        -- over everything cached so far (bottom-right causal: the new queries are the
        -- last T of S positions)
        local ck, cv, start = kv.k[self.layer_index], kv.v[self.layer_index], kv.start
        -- the views are let go after the copy: held, they would keep the cache's storage
        -- alive after generation frees it
        self:view_of("ck_new", ck:narrow(2, start + 1, T), { B, T, Hkv, D }):copy_(k):free()
        self:view_of("cv_new", cv:narrow(2, start + 1, T), { B, T, Hkv, D }):copy_(v):free()
        k = ck:narrow(2, 1, start + T)
        v = cv:narrow(2, 1, start + T)
    end
    local attn = self:buffer("attn", { B, T, H, D })
    local lse = self:buffer("lse", { B, H, T }, "f32")
    F.flash_attention(q, k, v, { out = attn, lse = lse, scale = self.scale, causal = self.causal,
        cu_seqlens = ctx.cu_seqlens })
    -- which kernel ran, for LlamaForCausalLM:attention_paths(): src/ops/attention.c on the
    -- host, cuda/attention.cu on a device
    self.attention_path = q:is_cuda() and "cuda-flash" or "cpu-flash"
    local flat = self:view_of("attn_flat", attn, { B, T, H * D })
    self.output = self.o_proj:forward(flat)
    return self.output
end

function Attention:backward(x, dy)
    local B, T = x:size(1), x:size(2)
    local H, Hkv, D, ctx = self.H, self.Hkv, self.D, self.ctx
    local dflat = self.o_proj:backward(self._views.attn_flat, dy)
    local dattn = self:view_of("d_attn", dflat, { B, T, H, D })
    local dq = self:buffer("d_q", { B, T, H, D })
    local dk = self:buffer("d_k", { B, T, Hkv, D })
    local dv = self:buffer("d_v", { B, T, Hkv, D })
    local v = self._views
    F.attention_backward(dattn, self._q_rot, self._k_rot, v.v, self._buffers.attn, self._buffers.lse,
        { dq = dq, dk = dk, dv = dv, scale = self.scale, causal = self.causal,
            cu_seqlens = ctx.cu_seqlens })
    F.rope_backward(dq, ctx.cos, ctx.sin, ctx.positions, dq)
    F.rope_backward(dk, ctx.cos, ctx.sin, ctx.positions, dk)
    if self.q_norm then
        dq = self.q_norm:backward(v.q, dq)
        dk = self.k_norm:backward(v.k, dk)
    end
    local dxq = self.q_proj:backward(x, self:view_of("d_q_flat", dq, { B, T, H * D }))
    local dxk = self.k_proj:backward(x, self:view_of("d_k_flat", dk, { B, T, Hkv * D }))
    local dxv = self.v_proj:backward(x, self:view_of("d_v_flat", dv, { B, T, Hkv * D }))
    local dx = self:buffer("grad_input", x:shape())
    add_into(dx, dxq, dxk)
    add_into(dx, dx, dxv)
    self.grad_input = dx
    return dx
end

-- ---- decoder layer ------------------------------------------------------------------------

-- x + attn(norm(x)), then + mlp(norm(.)): the pre-norm residual block.
local DecoderLayer = Module:extend("LlamaDecoderLayer")
M.DecoderLayer = DecoderLayer

function DecoderLayer:init(cfg, ctx, opts)
    self:add_module("self_attn", Attention(cfg, ctx, opts))
    self:add_module("mlp", MLP(cfg.hidden_size, cfg.intermediate_size, opts))
    self:add_module("input_layernorm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, opts))
    self:add_module("post_attention_layernorm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, opts))
end

function DecoderLayer:forward(x)
    local h1 = self.input_layernorm:forward(x)
    local a = self.self_attn:forward(h1)
    local r1 = add_into(self:buffer("resid", x:shape()), x, a)
    local h2 = self.post_attention_layernorm:forward(r1)
    local m = self.mlp:forward(h2)
    self.output = add_into(self:buffer("output", x:shape()), r1, m)
    return self.output
end

function DecoderLayer:backward(x, dy)
    local r1 = self._buffers.resid
    local dh2 = self.mlp:backward(self.post_attention_layernorm.output, dy)
    local dr1 = self.post_attention_layernorm:backward(r1, dh2)
    local d_resid = add_into(self:buffer("d_resid", x:shape()), dr1, dy)
    local dh1 = self.self_attn:backward(self.input_layernorm.output, d_resid)
    local dx0 = self.input_layernorm:backward(x, dh1)
    self.grad_input = add_into(self:buffer("grad_input", x:shape()), dx0, d_resid)
    return self.grad_input
end

-- ---- the model --------------------------------------------------------------------------

-- Fill in derived fields and check the ones the architecture needs.
function M.normalize_config(cfg)
    local c = {}
    for k, v in pairs(cfg) do c[k] = v end
    local function need(key)
        local v = c[key]
        if type(v) ~= "number" or v <= 0 or v ~= math.floor(v) then
            error(("llama config: %s must be a positive integer, got %s"):format(key, tostring(v)), 3)
        end
    end
    for _, key in ipairs({ "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads" }) do need(key) end
    c.num_key_value_heads = c.num_key_value_heads or c.num_attention_heads
    need("num_key_value_heads")
    if c.num_attention_heads % c.num_key_value_heads ~= 0 then
        error(("llama config: num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)"):format(
            c.num_attention_heads, c.num_key_value_heads), 2)
    end
    if c.head_dim == nil then
        if c.hidden_size % c.num_attention_heads ~= 0 then
            error(("llama config: hidden_size (%d) is not a multiple of num_attention_heads (%d); give head_dim"):format(
                c.hidden_size, c.num_attention_heads), 2)
        end
        c.head_dim = c.hidden_size / c.num_attention_heads
    end
    need("head_dim")
    if c.head_dim % 2 ~= 0 then error(("llama config: head_dim must be even, got %d"):format(c.head_dim), 2) end
    c.rms_norm_eps = c.rms_norm_eps or 1e-6
    c.rope_theta = c.rope_theta or 10000
    c.max_position_embeddings = c.max_position_embeddings or 2048
    need("max_position_embeddings")
    if c.tie_word_embeddings == nil then c.tie_word_embeddings = false end
    c.initializer_range = c.initializer_range or 0.02
    return c
end

local LlamaModel = Module:extend("LlamaModel")
M.LlamaModel = LlamaModel

-- The rotary tables cover the positions used so far, not max_position_embeddings: they
-- start at min(max_position_embeddings, ROPE_FIRST_ROWS) rows and double when a batch
-- reaches further, so a config promising 2^30 positions costs nothing until such
-- positions come. The tables are made on the host (from the f32 inverse frequencies, D/2)
-- and live where the model does.
local ROPE_FIRST_ROWS = 256

function LlamaModel:init(cfg, opts)
    self.config = cfg
    self.rope_inv_freq = F.rope_inv_freq(cfg.head_dim, { theta = cfg.rope_theta, scaling = cfg.rope_scaling })
    self.rope = { cos = nil, sin = nil, rows = 0, positions = nil, cu_seqlens = nil }
    self._device = opts and opts.device ~= "cpu" and opts.device or nil
    self:rope_reserve(math.min(cfg.max_position_embeddings, ROPE_FIRST_ROWS))
    self:add_module("embed_tokens", Embedding(cfg.vocab_size, cfg.hidden_size, opts))
    local list = ModuleList()
    for i = 1, cfg.num_hidden_layers do
        local layer = DecoderLayer(cfg, self.rope, opts)
        layer.self_attn.layer_index = i
        list:append(layer)
    end
    self:add_module("layers", list)
    self:add_module("norm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, opts))
end

-- Make the rotary tables (cos, sin: (rows, D/2) f32) cover positions 0..n-1.
function LlamaModel:rope_reserve(n)
    local r = self.rope
    if r.rows >= n then return end
    local rows = math.max(n, 2 * r.rows)
    local cos, sin = F.rope_table(self.rope_inv_freq, rows)
    local dev = self._device
    if dev then
        local dc, ds = cos:to(dev), sin:to(dev)
        cos:free()
        sin:free()
        cos, sin = dc, ds
    end
    if r.cos then
        -- re-point the shared headers: every attention layer holds this same table
        r.cos:set_(cos)
        r.sin:set_(sin)
        cos:free()
        sin:free()
    else
        r.cos, r.sin = cos, sin
    end
    r.rows = rows
end

-- model:to(device): the rotary tables every attention layer shares move too.
function LlamaModel:_move_extras(device, move)
    self.rope.cos = move(self.rope.cos)
    self.rope.sin = move(self.rope.sin)
    -- a base sharded over ranks: its shards and layer buffers
    if self._sharded_base then self._sharded_base:to(device) end
end

-- The largest position a forward will use, plus one: opts.max_position when the caller
-- knows it, else the positions' maximum (read on the host), else T (+ the cache's start).
local function fire(list, i, layer)
    for _, fn in ipairs(list) do fn(i, layer) end
end

function M.positions_needed(ids, opts)
    if opts and opts.max_position then return opts.max_position end
    local pos = opts and opts.positions
    if pos then
        if pos.device ~= "cpu" then pos = pos:cpu() end
        local c = pos:contiguous():to("i64")
        local p = ffi.cast("int64_t*", c:data_ptr())
        local m = -1
        for i = 0, c:numel() - 1 do
            if p[i] > m then m = tonumber(p[i]) end
        end
        if c ~= opts.positions then c:free() end
        return m + 1
    end
    local T = ids:size(-1)
    return (opts and opts.kv and opts.kv.start or 0) + T
end

-- ids (B, T) i32/i64 -> final hidden states (B, T, C). opts.positions: (B, T) or (T) ids;
-- opts.cu_seqlens: i32 offsets of packed sequences (see ops/nn.lua attention);
-- opts.max_position: the largest position + 1, when the caller knows it (saves a scan).
function LlamaModel:forward(ids, opts)
    local need = M.positions_needed(ids, opts)
    local window = self.config.sliding_window
    if window and need > window then
        error(("llama: positions up to %d exceed config.json's sliding_window (%d), which luatrain's "
            .. "attention does not implement: keep sequences within %d tokens"):format(need - 1, window, window), 2)
    end
    self:rope_reserve(need)
    self.rope.positions = opts and opts.positions or nil
    self.rope.cu_seqlens = opts and opts.cu_seqlens or nil
    self.rope.kv = opts and opts.kv or nil
    local h = self.embed_tokens:forward(ids)
    self._layer_inputs = self._layer_inputs or {}
    local hooks = self._layer_hooks
    for i, layer in ipairs(self.layers:children()) do
        self._layer_inputs[i] = h
        if hooks then fire(hooks.pre_forward, i, layer) end
        h = layer:forward(h)
        if hooks then fire(hooks.post_forward, i, layer) end
    end
    self._last = h
    self.output = self.norm:forward(h)
    return self.output
end

function LlamaModel:backward(ids, dy)
    local g = self.norm:backward(self._last, dy)
    local kids = self.layers:children()
    local hooks = self._layer_hooks
    for i = #kids, 1, -1 do
        -- around the layer's whole backward, recomputation included (gradient
        -- checkpointing): a hook that gathers sharded weights sees them used there too
        if hooks then fire(hooks.pre_backward, i, kids[i]) end
        g = kids[i]:backward(self._layer_inputs[i], g)
        if hooks then fire(hooks.post_backward, i, kids[i]) end
    end
    self.embed_tokens:backward(ids, g)
    return nil
end

-- Hooks around each decoder layer: fn(i, layer) with the 1-based layer index, for kind
-- "pre_forward", "post_forward", "pre_backward" or "post_backward" (post_backward of layer
-- i: every gradient of layers i..L, the final norm and the head is complete). Data
-- parallelism starts a bucket's reduction there; ZeRO-3 gathers and frees a layer's
-- weights around it. Returns a function that removes the hook.
local HOOK_KINDS = { pre_forward = true, post_forward = true, pre_backward = true, post_backward = true }

function LlamaModel:add_layer_hook(kind, fn)
    if not HOOK_KINDS[kind] then
        error(("add_layer_hook: unknown kind %q (pre_forward, post_forward, pre_backward, post_backward)"):format(
            tostring(kind)), 2)
    end
    self._layer_hooks = self._layer_hooks or { pre_forward = {}, post_forward = {}, pre_backward = {},
        post_backward = {} }
    local list = self._layer_hooks[kind]
    list[#list + 1] = fn
    return function()
        for i, f in ipairs(list) do
            if f == fn then
                table.remove(list, i)
                break
            end
        end
    end
end

-- GradCheckpoint every decoder layer (flag true) or stop (false). The layers share one arena
-- of activation buffers; see nn/grad_checkpoint.lua.
function LlamaModel:gradient_checkpointing(flag, opts)
    local GradCheckpoint = require "luatrain.nn.grad_checkpoint"
    local list = self.layers
    local arena = flag and GradCheckpoint.arena(opts) or nil
    for _, c in ipairs(list:named_children()) do
        local layer = c.module
        local inner = layer.inner or layer
        if layer.inner then layer:free_buffers() end
        if flag then
            -- a fresh arena: drop whatever buffers the layer had
            inner:free_buffers()
            list:add_module(c.name, GradCheckpoint(inner, arena))
        elseif layer.inner then
            -- back to private buffers for each layer
            inner:apply(function(m) m._buffers, m._views = {}, {} end)
            list:add_module(c.name, inner)
        end
    end
    self._layer_inputs = nil
    return self
end

local LlamaForCausalLM = Module:extend("LlamaForCausalLM")
M.LlamaForCausalLM = LlamaForCausalLM

-- cfg: a Hugging Face Llama config table (see normalize_config). opts: dtype, trainable,
-- device (parameters made there directly), quant, init (default true: Hugging Face's
-- normal(0, initializer_range) initialisation).
function LlamaForCausalLM:init(cfg, opts)
    opts = opts or {}
    cfg = M.normalize_config(cfg)
    self.config = cfg
    if opts.quant then
        local q = opts.quant
        if type(q) == "string" then q = { type = q } end
        local ty = q.type or "nf4"
        local four_bit = ty ~= "int8"
        self.quant_opts = { type = ty, blocksize = four_bit and (q.blocksize or 64) or 0,
            double_quant = four_bit and q.double_quant ~= false, outlier_threshold = q.outlier_threshold }
        -- a quantized base is frozen: its norms and embeddings get no gradients either
        -- (for a 7B model the two vocabulary matrices' f32 gradients alone are 1 GiB)
        local trainable = opts.trainable
        if trainable == nil then trainable = false end
        opts = setmetatable({ quant = self.quant_opts, trainable = trainable }, { __index = opts })
    end
    self:add_module("model", LlamaModel(cfg, opts))
    local head_opts = { dtype = opts.dtype, trainable = opts.trainable, device = opts.device } -- the head stays unquantized
    if cfg.tie_word_embeddings then
        local head = Linear(cfg.hidden_size, cfg.vocab_size,
            { weight = self.model.embed_tokens.weight, trainable = false })
        head:tie_parameter("weight", self.model.embed_tokens, "weight")
        self:add_module("lm_head", head)
    else
        self:add_module("lm_head", Linear(cfg.hidden_size, cfg.vocab_size, head_opts))
    end
    if opts.init ~= false then self:init_weights(opts.device) end
    -- built on a device (opts.device): every module's buffers go there too
    if opts.device and opts.device ~= "cpu" then self:to(opts.device) end
end

-- normal(0, initializer_range) for every matrix, ones for norms. Quantized layers draw
-- their f32 weight on `device` (default the host) one layer at a time and quantize it there.
function LlamaForCausalLM:init_weights(device)
    local std = self.config.initializer_range
    for _, r in ipairs(self:named_parameters()) do
        if r.param:dim() >= 2 then r.param:normal_(0, std) else r.param:fill_(1) end
    end
    local quant = require "luatrain.quant"
    for _, e in ipairs(self:quant_layers()) do
        if not e[2].qweight then
            local w = require("luatrain.tensor").randn(e[2].out_features, e[2].in_features,
                { std = std, device = device })
            e[2]:set_qweight(quant.quantize(w, self.quant_opts))
            w:free()
        end
    end
end

-- { full name, QuantLinear } for every quantized linear layer, in module order.
function LlamaForCausalLM:quant_layers()
    local QuantLinear = require("luatrain.nn.lora").QuantLinear
    local out = {}
    for _, r in ipairs(self:named_modules()) do
        if getmetatable(r.module) == QuantLinear then out[#out + 1] = { r.name, r.module } end
    end
    return out
end

-- opts.offload: keep each checkpointed layer's input in host memory (nn/grad_checkpoint.lua).
function LlamaForCausalLM:gradient_checkpointing(flag, opts)
    self.model:gradient_checkpointing(flag, opts)
    return self
end

-- The attention kernels the layers ran on their last forward ("cpu-flash", ...), each
-- once, sorted; empty before the first forward.
function LlamaForCausalLM:attention_paths()
    local seen, out = {}, {}
    for _, m in ipairs(self:modules()) do
        local p = rawget(m, "attention_path")
        if p and not seen[p] then
            seen[p] = true
            out[#out + 1] = p
        end
    end
    table.sort(out)
    return out
end

function LlamaForCausalLM:extra_repr()
    local c = self.config
    return ("layers %d, hidden %d, heads %d/%d, vocab %d"):format(c.num_hidden_layers,
        c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size)
end

-- ids (B, T) -> logits (B, T, V) in f32. For inference and tests: training goes through
-- forward_backward, which never holds the full logits.
function LlamaForCausalLM:forward(ids, opts)
    local _
    ids, _, opts = self:_inputs(ids, nil, opts)
    local h = self.model:forward(ids, opts)
    local logits = self.lm_head:forward(h)
    -- logits in f32 whatever the compute dtype
    if logits.dtype ~= "f32" then logits = self:buffer("logits_f32", logits:shape(), "f32"):copy_(logits) end
    self.output = logits
    return self.output
end

function LlamaForCausalLM:backward(ids, dlogits)
    ids = self:_input("ids", ids)
    local act = self.model.output.dtype
    if dlogits.dtype ~= act then
        dlogits = self:buffer("d_logits_act", dlogits:shape(), act):copy_(dlogits)
    end
    local dh = self.lm_head:backward(self.model.output, dlogits)
    self.model:backward(ids, dh)
    return nil
end

local function flat_targets(self, targets)
    return self:view_of("targets", targets, { targets:numel() })
end

-- Inputs made on the host (the data loader's batches) reach a model on a device through
-- buffers the model owns, refilled each step: recipes stay device-agnostic and a step
-- allocates nothing. Tensors already on the model's device pass as they are.
local INPUT_OPTS = { "positions", "cu_seqlens" }

function LlamaForCausalLM:_input(name, t)
    if t == nil or self._device == nil or t.device == self._device then return t end
    local b = self:buffer("in_" .. name, t:shape(), t.dtype)
    b:copy_(t)
    return b
end

function LlamaForCausalLM:_inputs(ids, targets, opts)
    if self._device == nil then return ids, targets, opts end
    ids = self:_input("ids", ids)
    targets = self:_input("targets", targets)
    if opts then
        local o = {}
        for k, v in pairs(opts) do o[k] = v end
        -- the rotary table's reach, read from the host positions before they move
        if opts.positions and not opts.max_position then o.max_position = M.positions_needed(ids, opts) end
        for _, k in ipairs(INPUT_OPTS) do o[k] = self:_input(k, opts[k]) end
        opts = o
    end
    return ids, targets, opts
end

-- Mean cross-entropy of targets (B, T) (aligned with ids; -100 ignored), without logits.
-- opts: positions, normalizer (divide the summed loss by this instead of the count).
function LlamaForCausalLM:loss(ids, targets, opts)
    ids, targets, opts = self:_inputs(ids, targets, opts or {})
    local h = self.model:forward(ids, opts)
    local h2 = self:view_of("h2", h, { h:numel() / h:size(-1), h:size(-1) })
    local loss = self:buffer("loss", {}, "f32")
    local lse = self:buffer("lse", { h2:size(1) }, "f32")
    F.linear_cross_entropy(h2, self.lm_head.weight, flat_targets(self, targets),
        { loss = loss, lse = lse, normalizer = opts.normalizer, row_loss = opts.row_loss })
    return loss:item()
end

-- One training pass: the loss (a number), and every trainable gradient accumulated for
-- d(loss)/d(params) * opts.scale (grad accumulation and loss scaling fold in here).
function LlamaForCausalLM:forward_backward(ids, targets, opts)
    ids, targets, opts = self:_inputs(ids, targets, opts or {})
    local h = self.model:forward(ids, opts)
    local N, Cdim = h:numel() / h:size(-1), h:size(-1)
    local h2 = self:view_of("h2", h, { N, Cdim })
    local loss = self:buffer("loss", {}, "f32")
    -- dh comes out in f32 or the head weight's dtype; the layers below take it in theirs
    local w = self.lm_head.weight
    local act = h.dtype
    local dh = self:buffer("d_hidden", { N, Cdim }, (act == "f32" or act == w.dtype) and act or "f32")
    F.linear_cross_entropy_fused(h2, w, flat_targets(self, targets),
        opts.scale or 1, { loss = loss, dh = dh, dw = self.lm_head._grads.weight or false,
            normalizer = opts.normalizer, row_loss = opts.row_loss })
    if dh.dtype ~= act then dh = self:buffer("d_hidden_act", { N, Cdim }, act):copy_(dh) end
    self.model:backward(ids, self:view_of("d_hidden3", dh, h:shape()))
    return loss:item()
end

return M
