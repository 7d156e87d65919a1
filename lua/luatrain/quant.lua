--[[
quant.lua - quantized weights: NF4 / FP4 blockwise in bitsandbytes' layout (optionally
double-quantized scales) and int8 row-wise (LLM.int8), with the linear layer that uses them.

    local quant = require "luatrain.quant"                  -- also lt.quant
    local q = quant.quantize(w, { type = "nf4", blocksize = 64, double_quant = true })
    print(q, q:bits_per_param())                            -- 4.127... for a large weight
    local y = quant.linear_forward(x, q)                    -- x (..., in) -> y (..., out)
    local dx = quant.linear_backward(dy, q)                 -- dy (..., out) -> dx (..., in)
    local w2 = q:dequantize()                               -- f32, the weight's shape
    st.save(path, quant.to_bnb(q, "model.layers.0.mlp.up_proj"))
    local q2 = quant.from_bnb(st.load(path), "model.layers.0.mlp.up_proj")
    q:free()

A quantized weight q is a Lua object around the C state (lt_quant_state). Fields:
q.type ("nf4" | "fp4" | "int8"), q.blocksize (0 for int8), q.double_quant, q.shape (the
logical shape, a table), q.dtype (the dtype it was quantized from). Accessors, each a new
Tensor view that shares (and keeps alive) the state's storage: q.packed (u8 codes, two per
byte; i8 (out, in) for int8), q.absmax (f32 per-block scales, dequantized when double
quantized), q.code (f32 16), and with double quantization q.absmax_q (u8 codes of the
scales), q.absmax2 (f32 per 256 scales), q.nested_code (f32 256) and q.offset (a number).
Views taken before q:free() stay valid; reading an accessor after it raises an error.
q:cdata() is the lt_quant_state for C calls. The C side (src/lt_quant.h) documents the
layout and the exact rounding rules.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"
local json = require "luatrain.json"

local C, check = core.C, core.check

local M = {}

local type_id = { nf4 = C.LT_QUANT_NF4, fp4 = C.LT_QUANT_FP4, int8 = C.LT_QUANT_INT8 }
local type_name = { [tonumber(C.LT_QUANT_NF4)] = "nf4", [tonumber(C.LT_QUANT_FP4)] = "fp4",
    [tonumber(C.LT_QUANT_INT8)] = "int8" }

-- torch dtype names in bitsandbytes' quant_state JSON <-> ours
local torch_dtype = { f32 = "float32", bf16 = "bfloat16", f16 = "float16" }
local from_torch = { float32 = "f32", bfloat16 = "bf16", float16 = "f16" }

local function fail(level, fmt, ...)
    error(fmt:format(...), level + 1)
end

local function parse_type(t, fn)
    local id = type_id[type(t) == "string" and t:lower() or t]
    if id == nil then
        fail(3, "%s: unknown quantization type %s (expected \"nf4\", \"fp4\" or \"int8\")", fn,
            tostring(t))
    end
    return id
end

-- ---- code books -------------------------------------------------------------------------

-- The 16 values of the NF4 or FP4 code book, in code order (bitsandbytes' get_4bit_type).
function M.codebook(name)
    local buf = ffi.new("float[16]")
    local id = parse_type(name, "quant.codebook")
    if id == C.LT_QUANT_INT8 then
        error("quant.codebook: int8 has no code book (it is linear)", 2)
    end
    check(C.lt_quant_codebook(id, buf))
    local out = {}
    for i = 0, 15 do out[i + 1] = buf[i] end
    return out
end

-- The 256 values of bitsandbytes' 8-bit dynamic map, sorted: signed (the default; double
-- quantization's map and the 8-bit optimizers' first moment) or, with signed = false,
-- unsigned (the 8-bit optimizers' second moment).
function M.dynamic_map(signed)
    local buf = ffi.new("float[256]")
    if signed == false then
        check(C.lt_quant_dynamic_map_unsigned(buf))
    else
        check(C.lt_quant_dynamic_map(buf))
    end
    local out = {}
    for i = 0, 255 do out[i + 1] = buf[i] end
    return out
end

-- ---- the quantized-weight object ----------------------------------------------------------

local Q = {}
local Q_mt = {}

local function state_of(q, what)
    local s = rawget(q, "_s")
    if s == nil then
        error(("quantized weight: %s after q:free(); take views before freeing, or keep q"):format(
            what), 3)
    end
    return s
end

local function view_of(s, field)
    local t = tensor.new_header()
    check(C.lt_tensor_share(t, s[field]))
    return t
end

local accessors = {
    packed = function(s) return view_of(s, "packed") end,
    code = function(s)
        if s.type == C.LT_QUANT_INT8 then return nil end
        return view_of(s, "code")
    end,
    absmax = function(s)
        if s.double_quant == 0 then return view_of(s, "absmax") end
        local st = s.absmax.storage
        local out = tensor.empty({ tonumber(C.lt_tensor_numel(s.absmax)) },
            { device = core.device_string(st.device_type, st.device_index) })
        check(C.lt_quant_absmax(out, s))
        return out
    end,
    absmax_q = function(s) return s.double_quant ~= 0 and view_of(s, "absmax") or nil end,
    absmax2 = function(s) return s.double_quant ~= 0 and view_of(s, "absmax2") or nil end,
    nested_code = function(s) return s.double_quant ~= 0 and view_of(s, "nested_code") or nil end,
    offset = function(s) return s.double_quant ~= 0 and tonumber(s.offset) or nil end,
    -- "cpu" or "cuda:N": where the packed codes (and every other buffer) live
    device = function(s)
        local st = s.packed.storage
        return core.device_string(st.device_type, st.device_index)
    end,
}

Q_mt.__index = function(q, k)
    local m = Q[k]
    if m ~= nil then return m end
    -- a sharded weight's pieces come and go with its layer; its sharder knows the device
    if k == "device" and rawget(q, "_sharded") then return rawget(q, "_sharded").device end
    local acc = accessors[k]
    if acc ~= nil then return acc(state_of(q, "q." .. k)) end
    return nil
end

Q_mt.__tostring = function(q)
    local s = rawget(q, "_s")
    local desc = ("%s (%s)"):format(q.type, table.concat(q.shape, ", "))
    if s == nil then return ("<quantized %s, freed>"):format(desc) end
    local extra = q.type == "int8" and "row-wise" or ("block %d%s"):format(q.blocksize,
        q.double_quant and ", double-quantized scales" or "")
    return ("<quantized %s, %s, %.3f bits/param>"):format(desc, extra, q:bits_per_param())
end

-- Wrap a filled lt_quant_state (owned: released by q:free() or the finaliser).
local function wrap(s)
    ffi.gc(s, C.lt_quant_state_release)
    local shape = {}
    for i = 0, s.ndim - 1 do shape[i + 1] = tonumber(s.sizes[i]) end
    return setmetatable({
        _s = s,
        type = type_name[tonumber(s.type)],
        blocksize = tonumber(s.blocksize),
        double_quant = s.double_quant ~= 0,
        shape = shape,
        dtype = core.dtype_name[tonumber(s.orig_dtype)],
    }, Q_mt)
end

function M.is_quantized(x)
    return type(x) == "table" and getmetatable(x) == Q_mt
end

-- The C state, for passing to C functions (errors once freed).
function Q.cdata(q) return state_of(q, "q:cdata()") end

function Q.is_freed(q) return rawget(q, "_s") == nil end

function Q.numel(q)
    local n = 1
    for _, v in ipairs(q.shape) do n = n * v end
    return n
end

-- Bytes of codes, scales and maps.
function Q.nbytes(q) return tonumber(C.lt_quant_nbytes(state_of(q, "q:nbytes()"))) end

function Q.bits_per_param(q)
    local n = q:numel()
    return n > 0 and 8 * q:nbytes() / n or 0
end

-- The whole weight as a new Tensor of the logical shape (f32 unless dtype is given).
function Q.dequantize(q, dtype)
    local s = state_of(q, "q:dequantize()")
    local out = tensor.empty(q.shape, { dtype = core.to_dtype(dtype or "f32", "dequantize"),
        device = q.device })
    check(C.lt_dequantize(out, s))
    return out
end

-- Rows first..first+count-1 (1-based) of a 2-D weight, dequantized: one panel at a time.
function Q.dequantize_rows(q, first, count, dtype)
    local s = state_of(q, "q:dequantize_rows()")
    if #q.shape ~= 2 then error("q:dequantize_rows: the weight is 1-D; use q:dequantize()", 2) end
    if type(first) ~= "number" or type(count) ~= "number" or first < 1 or count < 0 then
        error("q:dequantize_rows(first, count [, dtype]): first >= 1 and count >= 0", 2)
    end
    local dt = core.to_dtype(dtype or "f32", "dequantize_rows")
    local out = tensor.empty({ count, q.shape[2] }, { dtype = dt, device = q.device })
    check(C.lt_dequantize_rows(out, s, first - 1))
    return out
end

-- Release the state's storage now (views taken earlier keep theirs).
function Q.free(q)
    local s = rawget(q, "_s")
    if s == nil then return end
    rawset(q, "_s", nil)
    ffi.gc(s, nil)
    C.lt_quant_state_release(s)
end

function Q.to_bnb(q, prefix) return M.to_bnb(q, prefix) end

-- q:to("cuda") / q:to("cpu"): the same weight with every buffer on that device (q itself
-- when it is already there). The codes and scales are copied byte for byte, so the moved
-- weight dequantizes to the same bits.
function Q.to(q, device)
    -- a weight sharded over ranks (dist/shard_base.lua) moves with its sharder
    if rawget(q, "_sharded") then return q end
    local s = state_of(q, "q:to()")
    local devt, devi = core.parse_device(device)
    if core.device_string(devt, devi) == q.device then return q end
    local d = ffi.new("lt_quant_state")
    check(C.lt_quant_state_to(d, s, devt, devi))
    return wrap(d)
end
function Q.cuda(q, index) return Q.to(q, index and ("cuda:" .. index) or "cuda") end
function Q.cpu(q) return Q.to(q, "cpu") end

-- ---- quantize -----------------------------------------------------------------------------

-- quantize(w, {type = "nf4"|"fp4"|"int8", blocksize = 64, double_quant = false}): w is a 1-D
-- or 2-D f32/bf16/f16 Tensor (out, in). double_quant defaults to true for nf4 (QLoRA's
-- setting) and false otherwise; blocksize is ignored for int8.
function M.quantize(w, opts)
    if not tensor.is_tensor(w) then error("quant.quantize(w, opts): w must be a Tensor", 2) end
    opts = opts or {}
    if type(opts) ~= "table" then error("quant.quantize: opts must be a table", 2) end
    local id = parse_type(opts.type or "nf4", "quant.quantize")
    local bs, dq = 0, 0
    if id ~= C.LT_QUANT_INT8 then
        bs = opts.blocksize or 64
        local want = opts.double_quant
        if want == nil then want = id == C.LT_QUANT_NF4 end
        dq = want and 1 or 0
    elseif opts.double_quant then
        error("quant.quantize: double_quant applies to the 4-bit types, not int8", 2)
    end
    local s = ffi.new("lt_quant_state")
    check(C.lt_quantize(s, w, id, bs, dq))
    return wrap(s)
end

-- ---- the linear layer ----------------------------------------------------------------------

local function out_shape(t, last)
    local s = t:shape()
    s[#s] = last
    return s
end

-- y (..., out) = x (..., in) @ W^T (+ beta * y). opts: out (a preallocated y), beta (0),
-- outlier_threshold (int8 only: 6.0 as in LLM.int8; 0 turns the decomposition off).
function M.linear_forward(x, q, opts)
    opts = opts or {}
    local s = state_of(q, "quant.linear_forward")
    if #q.shape ~= 2 then error("quant.linear_forward: the weight must be 2-D (out, in)", 2) end
    local y = opts.out or tensor.empty(out_shape(x, q.shape[1]), { device = q.device })
    local th = opts.outlier_threshold
    if th == nil then th = 6.0 end
    check(C.lt_quant_linear_forward(y, x, s, opts.beta or 0, th))
    return y
end

-- dx (..., in) = dy (..., out) @ W (+ beta * dx). opts: out (a preallocated dx), beta (0).
function M.linear_backward(dy, q, opts)
    opts = opts or {}
    local s = state_of(q, "quant.linear_backward")
    if #q.shape ~= 2 then error("quant.linear_backward: the weight must be 2-D (out, in)", 2) end
    local dx = opts.out or tensor.empty(out_shape(dy, q.shape[2]), { device = q.device })
    check(C.lt_quant_linear_backward(dx, dy, s, opts.beta or 0))
    return dx
end

-- ---- bitsandbytes checkpoints -----------------------------------------------------------

-- A getter over a name -> Tensor table or a safetensors file object (st.open).
local function getter(src)
    if type(src) == "table" and type(src.get) == "function" and type(src.keys) == "function" then
        local names = {}
        for _, k in ipairs(src:keys()) do names[k] = true end
        return function(name) return names[name] and src:get(name) or nil end,
            function() return src:keys() end
    end
    if type(src) ~= "table" then
        error("quant.from_bnb(tensors, prefix): tensors must be a table of name -> Tensor " ..
            "(safetensors.load) or a file from safetensors.open", 3)
    end
    return function(name) return src[name] end, function()
        local ks = {}
        for k in pairs(src) do ks[#ks + 1] = k end
        return ks
    end
end

local function tensor_string(t)
    local c = t:contiguous()
    local s = ffi.string(c:data_ptr(), c:numel())
    if c ~= t then c:free() end
    return s
end

local function need(get, name, what, prefix)
    local t = get(name)
    if t == nil then
        error(("quant.from_bnb('%s'): no tensor '%s' (%s)"):format(prefix, name, what), 3)
    end
    return t
end

local function int_field(qs, key, prefix)
    local v = qs[key]
    if type(v) ~= "number" or v ~= math.floor(v) then
        error(("quant.from_bnb('%s'): quant_state \"%s\" must be an integer, got %s"):format(
            prefix, key, tostring(v)), 3)
    end
    return v
end

-- A quantized weight from a bitsandbytes checkpoint as transformers saves it: the state
-- of the Linear module named `prefix` ("model.layers.0.self_attn.q_proj").
--   4-bit: prefix.weight (U8 packed), .weight.absmax, .weight.quant_map,
--          .weight.quant_state.bitsandbytes__nf4|fp4 (U8 JSON), and when double-quantized
--          .weight.nested_absmax, .weight.nested_quant_map
--   int8:  prefix.weight (I8 (out, in)), prefix.SCB (F32 (out)), prefix.weight_format (0)
-- The tensors are shared, not copied.
function M.from_bnb(tensors, prefix)
    if type(prefix) ~= "string" then
        error("quant.from_bnb(tensors, prefix): prefix must be a string", 2)
    end
    local get, keys = getter(tensors)
    local wname = prefix .. ".weight"
    local w = need(get, wname, "the module's packed weight", prefix)
    local s = ffi.new("lt_quant_state")
    local scb = get(prefix .. ".SCB")
    if scb ~= nil then
        local fmt = get(prefix .. ".weight_format")
        if fmt ~= nil and fmt:numel() == 1 and fmt:item() ~= 0 then
            error(("quant.from_bnb('%s'): weight_format %d is not the row-major format (0)"):format(
                prefix, fmt:item()), 2)
        end
        if w:dim() ~= 2 then
            error(("quant.from_bnb('%s'): an int8 weight must be 2-D, got (%s)"):format(prefix,
                table.concat(w:shape(), ", ")), 2)
        end
        local sizes = ffi.new("int64_t[2]", w:size(1), w:size(2))
        local st = C.lt_quant_state_init(s, C.LT_QUANT_INT8, 0, 2, sizes, C.LT_DTYPE_F16, w, scb,
            nil, nil, nil, 0)
        if st ~= 0 then error(("quant.from_bnb('%s'): %s"):format(prefix, core.last_error()), 2) end
        return wrap(s)
    end

    local qs_prefix = wname .. ".quant_state.bitsandbytes__"
    local qs_name
    for _, k in ipairs(keys()) do
        if k:sub(1, #qs_prefix) == qs_prefix then
            if qs_name then
                error(("quant.from_bnb('%s'): two quant_state entries, '%s' and '%s'"):format(
                    prefix, qs_name, k), 2)
            end
            qs_name = k
        end
    end
    if qs_name == nil then
        error(("quant.from_bnb('%s'): no tensor '%snf4' or '...fp4' (not a bitsandbytes 4-bit " ..
            "Linear, and no '%s.SCB' for an int8 one)"):format(prefix, qs_prefix, prefix), 2)
    end
    local suffix = qs_name:sub(#qs_prefix + 1)
    if suffix ~= "nf4" and suffix ~= "fp4" then
        error(("quant.from_bnb('%s'): unknown quantization type '%s' in '%s'"):format(prefix,
            suffix, qs_name), 2)
    end
    local ok, qs = pcall(json.decode, tensor_string(get(qs_name)), qs_name)
    if not ok or type(qs) ~= "table" then
        error(("quant.from_bnb('%s'): '%s' does not hold a JSON object: %s"):format(prefix,
            qs_name, tostring(qs)), 2)
    end
    if qs.quant_type ~= suffix then
        error(("quant.from_bnb('%s'): quant_type \"%s\" in '%s' does not match its name"):format(
            prefix, tostring(qs.quant_type), qs_name), 2)
    end
    local bs = int_field(qs, "blocksize", prefix)
    local dt = from_torch[qs.dtype]
    if dt == nil then
        error(("quant.from_bnb('%s'): quant_state dtype \"%s\" is not float32, bfloat16 or " ..
            "float16"):format(prefix, tostring(qs.dtype)), 2)
    end
    local shape = qs.shape
    if type(shape) ~= "table" or #shape < 1 or #shape > 2 then
        error(("quant.from_bnb('%s'): quant_state shape must list 1 or 2 sizes"):format(prefix), 2)
    end
    local sizes = ffi.new("int64_t[2]")
    for i = 1, #shape do sizes[i - 1] = int_field(shape, i, prefix) end
    if w.dtype_id ~= C.LT_DTYPE_U8 then
        error(("quant.from_bnb('%s'): '%s' is %s; only bnb_4bit_quant_storage=uint8 is " ..
            "supported"):format(prefix, wname, core.dtype_name[w.dtype_id]), 2)
    end
    local absmax = need(get, wname .. ".absmax", "the block scales", prefix)
    local code = need(get, wname .. ".quant_map", "the code book", prefix)
    local nested_absmax, nested_map, offset = get(wname .. ".nested_absmax"), nil, 0
    if nested_absmax ~= nil or qs.nested_offset ~= nil then
        nested_absmax = need(get, wname .. ".nested_absmax", "double quantization", prefix)
        nested_map = need(get, wname .. ".nested_quant_map", "double quantization", prefix)
        if type(qs.nested_offset) ~= "number" then
            error(("quant.from_bnb('%s'): quant_state lacks a numeric \"nested_offset\""):format(
                prefix), 2)
        end
        if int_field(qs, "nested_blocksize", prefix) ~= 256 then
            error(("quant.from_bnb('%s'): nested_blocksize %d is not supported (256 only)"):format(
                prefix, qs.nested_blocksize), 2)
        end
        if qs.nested_dtype ~= nil and qs.nested_dtype ~= "float32" then
            error(("quant.from_bnb('%s'): nested_dtype \"%s\" is not float32"):format(prefix,
                tostring(qs.nested_dtype)), 2)
        end
        offset = qs.nested_offset
    end
    local st = C.lt_quant_state_init(s, type_id[suffix], bs, #shape, sizes, core.dtype_id[dt], w,
        absmax, code, nested_absmax, nested_map, offset)
    if st ~= 0 then error(("quant.from_bnb('%s'): %s"):format(prefix, core.last_error()), 2) end
    return wrap(s)
end

-- The shortest decimal that reads back as v (Python's repr for the floats it writes).
local function number_repr(v)
    if v == math.floor(v) and math.abs(v) < 1e15 then return ("%.1f"):format(v) end
    for p = 1, 17 do
        local s = ("%." .. p .. "g"):format(v)
        if tonumber(s) == v then return s end
    end
    return ("%.17g"):format(v)
end

local function u8_of_string(str)
    local t = tensor.empty({ #str }, { dtype = "u8" })
    if #str > 0 then ffi.copy(t:data_ptr(), str, #str) end
    return t
end

-- The tensors of a bitsandbytes checkpoint for q under the module name `prefix`, as
-- transformers saves a Linear4bit (or Linear8bitLt): name -> Tensor, views sharing q's
-- storage. The quant_state JSON keeps QuantState.as_dict's key order.
function M.to_bnb(q, prefix)
    if not M.is_quantized(q) then
        error("quant.to_bnb(q, prefix): q must be a quantized weight", 2)
    end
    if type(prefix) ~= "string" then error("quant.to_bnb(q, prefix): prefix must be a string", 2) end
    local s = state_of(q, "quant.to_bnb")
    local out = {}
    local w = prefix .. ".weight"
    if q.type == "int8" then
        out[w] = view_of(s, "packed")
        out[prefix .. ".SCB"] = view_of(s, "absmax")
        local fmt = tensor.empty({}, { dtype = "u8" })
        fmt:fill_(0)
        out[prefix .. ".weight_format"] = fmt
        return out
    end
    local packed = view_of(s, "packed")
    out[w] = packed:view(packed:numel(), 1)
    packed:free()
    out[w .. ".absmax"] = view_of(s, "absmax")
    out[w .. ".quant_map"] = view_of(s, "code")
    local parts = {
        ('"quant_type": "%s"'):format(q.type),
        ('"blocksize": %d'):format(q.blocksize),
        ('"dtype": "%s"'):format(torch_dtype[q.dtype] or "float32"),
        ('"shape": [%s]'):format(table.concat(q.shape, ", ")),
    }
    if q.double_quant then
        out[w .. ".nested_absmax"] = view_of(s, "absmax2")
        out[w .. ".nested_quant_map"] = view_of(s, "nested_code")
        parts[#parts + 1] = ('"nested_blocksize": %d'):format(tonumber(s.nested_blocksize))
        parts[#parts + 1] = '"nested_dtype": "float32"'
        parts[#parts + 1] = ('"nested_offset": %s'):format(number_repr(tonumber(s.offset)))
    end
    local text = "{" .. table.concat(parts, ", ") .. "}"
    out[w .. ".quant_state.bitsandbytes__" .. q.type] = u8_of_string(text)
    return out
end

return M
