--[[
qat.lua - quantization-aware training and post-training quantization (lt.qat).

    lt.qat.apply(model, { type = "int4" })      -- the decoder's linear layers fake-quantized
    -- ... train as usual (full fine-tuning, or LoRA on a fake-quantized frozen base) ...
    lt.qat.convert(model)                       -- the weights the training saw, for real
    local rows = lt.qat.ptq_report(model, eval_ds, { types = { "int8", "nf4", "int4" } })

Fake quantization: each forward of a FakeQuantLinear multiplies by fq(W) = the weight
quantized and dequantized, refreshed from the f32 weight every step; the backward takes
the gradient of fq(W) as W's (the straight-through estimator), so the weights learn to sit
where quantization keeps them. The quantizers are the real ones, so fq(W) is exactly what
the deployed weight dequantizes to:

  int8  per output channel (row): scale = absmax / 127, codes in [-127, 127] (lt.quant's int8,
        the LLM.int8 weight format)
  int4  group-wise, groups of 32 along a row: llama.cpp's Q4_0 (f16 scale = the value of
        largest magnitude / -8, codes 0..15 for -8..7), the GGUF type it converts to; a
        row's last group may be shorter (rows of 344), in the same convention
  nf4   blockwise NF4, blocks of 64, as lt.quant (the QLoRA base's format)

convert() replaces each fake-quantized layer by the real one: nf4 by lt.quant's quantized
layer (4-bit storage, its kernel dequantizes tile by tile: the same weights, float rounding
apart), int4 and int8 by a plain linear layer holding the dequantized weight, the values a
GGUF q4_0 export holds (lt.gguf) and the int8 codes times their row scale, exactly: a
deployment that also quantizes activations, as LLM.int8's kernel does, computes otherwise.

ptq_report quantizes a trained model's decoder linears each way after the fact (post-training
quantization) and reports, per type, the bytes of those weights and the held-out loss,
against bf16 weights.

Where it pays: as the last phase of a run. On tiny_facts (tests/lua/test_qat.lua), 60 steps
of full fine-tuning then 30 with fake int4 end at a held-out loss of 0.495 after real int4,
where the same run without that phase quantized after the fact ends at 0.547 (unquantized
0.522); fake int4 from the first step, by contrast, learned less in the same steps.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"
local layers = require "luatrain.nn.layers"

local C, check = core.C, core.check

local M = {}

M.TYPES = { int8 = true, int4 = true, nf4 = true }

-- One row's values [j0, j1) of int4 in Q4_0's convention into orow (f32 steps of a kernel).
local f16buf = ffi.new("uint16_t[1]")
local function int4_group(row, orow, j0, j1)
    local amax, vmax = 0, 0
    for j = j0, j1 - 1 do
        if math.abs(row[j]) > amax then amax, vmax = math.abs(row[j]), row[j] end
    end
    f16buf[0] = C.lt_f32_to_f16(vmax / -8)
    local d = C.lt_f16_to_f32(f16buf[0])
    local id = d ~= 0 and tonumber(ffi.new("float", 1 / d)) or 0
    for j = j0, j1 - 1 do
        local c = math.floor(row[j] * id + 0.5) + 8
        if c < 0 then c = 0 elseif c > 15 then c = 15 end
        orow[j] = (c - 8) * d
    end
end

-- fq(w) into out (both f32 (rows, cols)). group: int4's group size (32; 0: a whole row).
function M.fake_quantize(w, kind, out, group)
    local rows, cols = w:size(1), w:size(2)
    out = out or tensor.empty({ rows, cols })
    local wc = w.dtype == "f32" and w:contiguous() or w:to("f32"):contiguous()
    if kind == "int8" or kind == "nf4" then
        -- the real codec there and back (lt.quant): exactly what the converted layer holds
        local quant = require "luatrain.quant"
        local q = quant.quantize(wc, kind == "nf4" and { type = "nf4", blocksize = 64, double_quant = false }
            or { type = "int8" })
        local d = q:dequantize()
        out:copy_(d)
        d:free()
        q:free()
    elseif kind == "int4" then
        group = group or 32
        -- groups of 32 through the Q4_0 codec itself; other group sizes, and a row's last,
        -- shorter group (rows of 344), in the same convention here
        local k = group == 32 and cols - cols % 32 or 0
        if k > 0 then
            local head = k == cols and wc or wc:narrow(2, 1, k):contiguous()
            local deq = k == cols and out or tensor.empty({ rows, k })
            local rb = tonumber(C.lt_gguf_row_bytes(C.LT_GGUF_Q4_0, k))
            local buf = tensor.empty({ rows * rb }, { dtype = "u8" })
            check(C.lt_gguf_quantize(C.LT_GGUF_Q4_0, ffi.cast("const float *", head:data_ptr()), rows, k, buf:data_ptr()))
            check(C.lt_gguf_dequantize(C.LT_GGUF_Q4_0, buf:data_ptr(), rows, k, ffi.cast("float *", deq:data_ptr())))
            buf:free()
            if k < cols then
                out:narrow(2, 1, k):copy_(deq)
                head:free()
                deq:free()
            end
        end
        if k < cols then
            local g = group > 0 and group or cols
            local p, o = ffi.cast("const float *", wc:data_ptr()), ffi.cast("float *", out:data_ptr())
            for r = 0, rows - 1 do
                for j0 = k, cols - 1, g do int4_group(p + r * cols, o + r * cols, j0, math.min(cols, j0 + g)) end
            end
        end
    else
        error(("qat: type must be int8, int4 or nf4, got %s"):format(tostring(kind)), 2)
    end
    if wc ~= w then wc:free() end
    return out
end

-- ---- the fake-quantized linear layer --------------------------------------------------------

local FakeQuantLinear = layers.Linear:extend("FakeQuantLinear")
M.FakeQuantLinear = FakeQuantLinear

-- A FakeQuantLinear over linear layer `lin`'s weight (shared, not copied).
function M.wrap(lin, kind, group)
    if lin.bias then error("qat: linear layers with a bias are not fake-quantized yet (Llama's have none)", 2) end
    -- trainable as the layer was (a gradient buffer is what marks it)
    local m = FakeQuantLinear(lin.in_features, lin.out_features, { weight = lin.weight,
        trainable = lin._grads.weight ~= nil })
    m.qat_type, m.qat_group = kind, group
    return m
end

function FakeQuantLinear:extra_repr()
    return ("%d -> %d, fake %s"):format(self.in_features, self.out_features, self.qat_type)
end

-- the weight multiplied with: fq(W), made afresh from W every forward (kept for the backward)
function FakeQuantLinear:compute_weight(x)
    local fq = self:buffer("weight_fq", self.weight:shape(), "f32")
    M.fake_quantize(self.weight, self.qat_type, fq, self.qat_group)
    if x.dtype ~= "f32" then
        local wc = self:buffer("weight_cast", fq:shape(), x.dtype)
        wc:copy_(fq)
        return wc
    end
    return fq
end

function FakeQuantLinear:_forward_weight(dy)
    local wc = self._buffers.weight_cast
    if wc and wc.storage ~= nil and wc.dtype == dy.dtype and dy.dtype ~= "f32" then return wc end
    return self._buffers.weight_fq
end

-- ---- the model -------------------------------------------------------------------------------

local function decoder_linears(model)
    local out = {}
    for _, r in ipairs(model:named_modules()) do
        if r.parent and r.name:find("^model%.layers%.") and getmetatable(r.module) == layers.Linear then
            out[#out + 1] = r
        end
    end
    return out
end

--[[ Fake-quantize the decoder's linear layers (attention and MLP projections; embeddings,
norms and the head stay as they are). opts.type: "int8", "int4" or "nf4"; opts.group: int4's
group size (32, llama.cpp's Q4_0; 0: one scale per row). With LoRA
adapters already on the model their frozen bases are fake-quantized once, in place (they do
not train), so the adapters learn on the base as it will be deployed. Returns the number of
layers. ]]
function M.apply(model, opts)
    local kind = opts and opts.type
    if not M.TYPES[kind] then error(("qat.apply: type must be int8, int4 or nf4, got %s"):format(tostring(kind)), 2) end
    local n = 0
    for _, r in ipairs(decoder_linears(model)) do
        r.parent:add_module(r.key, M.wrap(r.module, kind, opts.group))
        n = n + 1
    end
    local nnlora = require "luatrain.nn.lora"
    for _, r in ipairs(model:named_modules()) do
        local m = r.module
        if getmetatable(m) == nnlora.LoRALinear and m.weight and not m.qweight then
            local fq = M.fake_quantize(m.weight, kind, nil, opts.group)
            m.weight:copy_(fq)
            fq:free()
            m.qat_type = kind
            n = n + 1
        end
    end
    if n == 0 then error("qat.apply: the model has no decoder linear layer to fake-quantize", 2) end
    model.qat = { type = kind }
    return n
end

--[[ Replace every fake-quantized layer by its real form (see the header); returns the
model. Its forward is the fake one's: the same dequantized weights. ]]
function M.convert(model)
    local quant = require "luatrain.quant"
    local nnlora = require "luatrain.nn.lora"
    for _, r in ipairs(model:named_modules()) do
        local m = r.module
        if getmetatable(m) == FakeQuantLinear then
            local real
            if m.qat_type ~= "nf4" then
                local w = M.fake_quantize(m.weight, m.qat_type, nil, m.qat_group)
                real = layers.Linear(m.in_features, m.out_features, { weight = w, trainable = false })
            else
                local q = quant.quantize(m.weight, { type = "nf4", blocksize = 64, double_quant = false })
                real = nnlora.QuantLinear(q, m.in_features, m.out_features)
            end
            r.parent:add_module(r.key, real)
        end
    end
    model.qat = nil
    return model
end

-- Bytes of a (rows, cols) weight stored as `kind` ("bf16": 2 per value).
function M.weight_bytes(kind, rows, cols, group)
    if kind == "bf16" then return 2 * rows * cols end
    if kind == "int8" then return rows * cols + 4 * rows end
    if kind == "int4" then
        -- half a byte a value and an f16 scale a group
        local g = (group or 32) > 0 and (group or 32) or cols
        return rows * (math.ceil(cols / 2) + 2 * math.ceil(cols / g))
    end
    if kind == "nf4" then return rows * cols / 2 + 4 * math.ceil(rows * cols / 64) end
    error("qat.weight_bytes: unknown type " .. tostring(kind), 2)
end

--[[ Post-training quantization of `model`'s decoder linears, each type in turn: rows
{ type, bytes (of those weights), loss (held-out, lt.trainer.eval_loss on ds), gap (over
bf16) }, bf16 first. int8 and nf4 run as lt.quant's quantized layers, int8 through LLM.int8's
kernel (activation columns above the outlier threshold, 6, in f32 against the dequantized
weight, the rest in int8); int4 as its dequantized weights. The model is left as it was.
opts: types ({ "int8", "nf4", "int4" }), group (int4's), batch_size, seq_len. ]]
function M.ptq_report(model, ds, opts)
    opts = opts or {}
    local trainer = require "luatrain.trainer"
    local quant = require "luatrain.quant"
    local nnlora = require "luatrain.nn.lora"
    local lins = decoder_linears(model)
    if #lins == 0 then error("qat.ptq_report: the model has no plain decoder linear layers (merge adapters first)", 2) end
    local saved = {}
    for i, r in ipairs(lins) do saved[i] = r.module.weight:clone() end
    local rows = {}
    local was = model.training
    model:eval()
    for _, kind in ipairs({ "bf16", unpack(opts.types or { "int8", "nf4", "int4" }) }) do
        local bytes, swapped = 0, {}
        for i, r in ipairs(lins) do
            local w = r.module.weight
            if kind == "int8" or kind == "nf4" then
                local q = quant.quantize(saved[i], kind == "nf4" and { type = "nf4", blocksize = 64, double_quant = false }
                    or { type = "int8" })
                swapped[i] = q
                r.parent:add_module(r.key, nnlora.QuantLinear(q, r.module.in_features, r.module.out_features,
                    { bias = r.module.bias }))
            elseif kind == "bf16" then
                local b = saved[i]:to("bf16")
                w:copy_(b)
                b:free()
            else
                M.fake_quantize(saved[i], kind, w, opts.group)
            end
            bytes = bytes + M.weight_bytes(kind, w:size(1), w:size(2), opts.group)
        end
        local loss = trainer.eval_loss(model, ds, { batch_size = opts.batch_size, seq_len = opts.seq_len })
        rows[#rows + 1] = { type = kind, bytes = bytes, loss = loss }
        for i, r in ipairs(lins) do
            if swapped[i] then
                r.parent:add_module(r.key, r.module)
                swapped[i]:free()
            end
        end
    end
    for i, r in ipairs(lins) do
        r.module.weight:copy_(saved[i])
        saved[i]:free()
    end
    if was then model:train() end
    for _, r in ipairs(rows) do r.gap = r.loss - rows[1].loss end
    return rows
end

return M
