--[[
tensor.lua - the Tensor metatype: construction, views, conversion, indexing, printing.

A Tensor is an ffi.new'd lt_tensor header (shape, strides, offset, dtype) holding one
reference on refcounted C storage. The header is Lua memory; the storage is released by
t:free(), or by the header's finaliser as a safety net.

Lua-facing dims and indices are 1-based, as everywhere in Lua; negative ones count from
the end (-1 is the last). Math methods (add, matmul, sum, ...) are added by ops.lua.
]]
local ffi = require "ffi"
local core = require "luatrain.core"

local C, check = core.C, core.check
local dtype_name, to_dtype = core.dtype_name, core.to_dtype

local M = {}
local methods = {}
M.methods = methods

-- Scratch arrays for passing shapes to C (the C side copies what it needs).
local sizes_buf = ffi.new("int64_t[?]", C.LT_MAX_DIMS)
local perm_buf = ffi.new("int32_t[?]", C.LT_MAX_DIMS)

local Tensor -- the ctype, set below

local function is_tensor(x)
    return type(x) == "cdata" and ffi.istype(Tensor, x)
end
M.is_tensor = is_tensor

local function new_header()
    return Tensor()
end
M.new_header = new_header

-- Shape arguments: (2, 3), ({2, 3}), or a tensor's :shape(); an options table may follow.
-- allow_infer: one entry may be -1 (view/reshape); otherwise sizes must be >= 0.
local function parse_shape_impl(allow_infer, ...)
    local n = select("#", ...)
    local first = ...
    local shape, opts
    if type(first) == "table" then
        shape, opts = first, select(2, ...)
    else
        shape = {}
        for i = 1, n do
            local v = select(i, ...)
            if type(v) == "table" then
                opts = v
                break
            end
            shape[#shape + 1] = v
        end
    end
    if #shape > C.LT_MAX_DIMS then
        error(("shape has %d dims; at most %d are supported"):format(#shape, C.LT_MAX_DIMS), 3)
    end
    for i = 1, #shape do
        local v = shape[i]
        if type(v) ~= "number" or v ~= math.floor(v) then
            error(("shape entry %d is %s, not an integer"):format(i, tostring(v)), 4)
        end
        if v < 0 and not (allow_infer and v == -1) then
            error(("shape entry %d is %d: a negative size"):format(i, v), 4)
        end
        sizes_buf[i - 1] = v
    end
    if opts ~= nil and type(opts) ~= "table" then
        error(("expected an options table after the shape, got %s"):format(type(opts)), 4)
    end
    return shape, opts or {}
end

local function parse_shape(...) return parse_shape_impl(false, ...) end
local function parse_view_shape(...) return parse_shape_impl(true, ...) end
M.parse_shape = parse_shape

-- 1-based (negative from the end) dim -> 0-based.
local function cdim(t, d, what)
    local nd = t.ndim
    if type(d) ~= "number" then
        error(("%s: dim must be a number, got %s"):format(what or "dim", tostring(d)), 3)
    end
    local z = d < 0 and nd + d or d - 1
    if z < 0 or z >= nd then
        error(("%s: dim %d out of range for a %d-dim tensor (dims are 1..%d or -%d..-1)"):format(
            what or "dim", d, nd, nd, nd), 3)
    end
    return z
end
M.cdim = cdim

-- "cpu" or "cuda:N" of a tensor.
local function properties_device(t)
    if t.storage == nil then return "cpu" end
    return core.device_string(t.storage.device_type, t.storage.device_index)
end

-- The device new CUDA tensors go to when a bare "cuda" is given.
function M.current_cuda_device()
    local out = ffi.new("int32_t[1]")
    if C.lt_cuda_get_device(out) ~= 0 then return 0 end
    return out[0]
end

-- ---- construction ---------------------------------------------------------------------

-- opts: dtype ("f32"), device ("cpu", "cuda", "cuda:N"), pin (page-locked host memory, for
-- batches bound for a device; CUDA builds only), paged (the paged pool: host memory outside
-- every device's budget, zero-filled, for state that visits a device in pages).
function M.empty(...)
    local shape, opts = parse_shape(...)
    local dt = to_dtype(opts.dtype, "empty")
    local devt, devi = core.parse_device(opts.device)
    local t = new_header()
    if opts.paged then
        if devt ~= C.LT_DEVICE_CPU then error("empty: the paged pool is host memory", 2) end
        check(C.lt_tensor_empty_paged(t, dt, #shape, sizes_buf))
        return t
    end
    if opts.pin then
        if devt ~= C.LT_DEVICE_CPU then error("empty: pin is for host tensors", 2) end
        check(C.lt_tensor_empty_pinned(t, dt, #shape, sizes_buf))
        return t
    end
    check(C.lt_tensor_empty(t, dt, #shape, sizes_buf, devt, devi))
    return t
end

function M.zeros(...)
    local shape, opts = parse_shape(...)
    if opts.pin then
        local t = M.empty(shape, opts)
        check(C.lt_tensor_fill(t, 0))
        return t
    end
    local dt = to_dtype(opts.dtype, "zeros")
    local devt, devi = core.parse_device(opts.device)
    local t = new_header()
    check(C.lt_tensor_zeros(t, dt, #shape, sizes_buf, devt, devi))
    return t
end

-- lt.full({2, 3}, value [, opts]): the shape is a table here, since the value follows it.
function M.full(shape, value, opts)
    if type(shape) ~= "table" then
        error("lt.full(shape, value [, opts]): shape must be a table such as {2, 3}", 2)
    end
    if type(value) ~= "number" then
        error(("lt.full: the fill value must be a number, got %s"):format(type(value)), 2)
    end
    local t = M.empty(shape, opts)
    check(C.lt_tensor_fill(t, value))
    return t
end

function M.ones(...)
    local t = M.empty(...)
    check(C.lt_tensor_fill(t, 1))
    return t
end

-- Default generator; lt.manual_seed reseeds it. Its (seed, offset) pair is its whole state.
M.default_rng = ffi.new("lt_rng")
C.lt_rng_seed(M.default_rng, 0x5eed)

function M.manual_seed(seed)
    C.lt_rng_seed(M.default_rng, seed)
end

function M.get_rng_state()
    return { seed = tonumber(M.default_rng.seed), offset = tonumber(M.default_rng.offset) }
end

function M.set_rng_state(s)
    M.default_rng.seed = s.seed
    M.default_rng.offset = s.offset
end

local function rng_of(opts)
    return opts.generator or M.default_rng
end

function M.randn(...)
    local _, opts = parse_shape(...)
    local t = M.empty(...)
    check(C.lt_tensor_normal(t, opts.mean or 0, opts.std or 1, rng_of(opts)))
    return t
end

function M.rand(...)
    local _, opts = parse_shape(...)
    local t = M.empty(...)
    check(C.lt_tensor_uniform(t, opts.low or 0, opts.high or 1, rng_of(opts)))
    return t
end

-- lt.randint(low, high, shape... [, opts]): integers in [low, high), i64 unless opts.dtype.
function M.randint(low, high, ...)
    local shape, opts = parse_shape(...)
    local t = M.empty(shape, { dtype = opts.dtype or "i64", device = opts.device })
    check(C.lt_tensor_randint(t, low, high, rng_of(opts)))
    return t
end

-- arange(n) = 0..n-1; arange(a, b[, step]) = a, a+step, ... < b.
function M.arange(a, b, step, opts)
    if type(b) == "table" then b, opts = nil, b end
    if type(step) == "table" then step, opts = nil, step end
    local start, stop = a, b
    if stop == nil then start, stop = 0, a end
    step = step or 1
    if step == 0 then error("arange: step must not be 0", 2) end
    local n = math.max(0, math.ceil((stop - start) / step))
    opts = opts or {}
    local allint = start == math.floor(start) and stop == math.floor(stop) and step == math.floor(step)
    local t = M.empty({ n }, { dtype = opts.dtype or (allint and "i64" or "f32"), device = opts.device })
    for i = 0, n - 1 do check(C.lt_tensor_set(t, i, start + i * step)) end
    return t
end

-- lt.tensor(nested_table [, dtype]): shape from the nesting, f32 unless told otherwise.
function M.tensor(data, dtype)
    if is_tensor(data) then return data:clone() end
    if type(dtype) == "table" then dtype = dtype.dtype end
    if type(data) == "number" then
        local t = M.empty({}, { dtype = dtype })
        check(C.lt_tensor_set(t, 0, data))
        return t
    end
    if type(data) ~= "table" then
        error("lt.tensor: expected a number or a nested table of numbers, got " .. type(data), 2)
    end
    local shape = {}
    local probe = data
    while type(probe) == "table" do
        shape[#shape + 1] = #probe
        probe = probe[1]
    end
    local flat = {}
    -- returns an error message, so the error is raised at the caller's line below
    local function walk(x, depth, path)
        if depth > #shape then
            if type(x) ~= "number" then
                return ("lt.tensor: element %s is %s, not a number"):format(path, type(x))
            end
            flat[#flat + 1] = x
            return nil
        end
        if type(x) ~= "table" or #x ~= shape[depth] then
            return ("lt.tensor: ragged nesting at %s (expected %d entries)"):format(
                path == "" and "the top" or path, shape[depth])
        end
        for i = 1, #x do
            local err = walk(x[i], depth + 1, path .. "[" .. i .. "]")
            if err then return err end
        end
        return nil
    end
    local err = walk(data, 1, "")
    if err then error(err, 2) end
    local dt = to_dtype(dtype, "lt.tensor")
    local t = M.empty(shape, { dtype = dt })
    local n = #flat
    if dt == C.LT_DTYPE_F32 then
        local p = ffi.cast("float*", C.lt_tensor_data(t))
        for i = 1, n do p[i - 1] = flat[i] end
    else
        for i = 1, n do check(C.lt_tensor_set(t, i - 1, flat[i])) end
    end
    return t
end

-- ---- queries --------------------------------------------------------------------------

function methods.shape(t)
    local s = {}
    for i = 0, t.ndim - 1 do s[i + 1] = tonumber(t.sizes[i]) end
    return s
end

function methods.size(t, d)
    if d == nil then return methods.shape(t) end
    return tonumber(t.sizes[cdim(t, d, "size")])
end

function methods.stride(t, d)
    if d == nil then
        local s = {}
        for i = 0, t.ndim - 1 do s[i + 1] = tonumber(t.strides[i]) end
        return s
    end
    return tonumber(t.strides[cdim(t, d, "stride")])
end

function methods.dim(t) return t.ndim end
function methods.numel(t)
    if t.storage == nil then return 0 end
    return tonumber(C.lt_tensor_numel(t))
end
function methods.is_contiguous(t) return C.lt_tensor_is_contiguous(t) ~= 0 end
-- The host address of the first element. A device tensor has none to give: Lua code that
-- reads memory directly must copy it to the host first.
function methods.data_ptr(t)
    if t.storage ~= nil and t.storage.device_type ~= C.LT_DEVICE_CPU then
        error(("data_ptr: the tensor is on %s; copy it to the host with :cpu() first"):format(
            properties_device(t)), 2)
    end
    return C.lt_tensor_data(t)
end

-- The device address (for passing to other CUDA code); a host tensor gives its host address.
function methods.device_ptr(t) return C.lt_tensor_data(t) end
function methods.nbytes(t)
    local n = ffi.new("int64_t[1]")
    check(C.lt_dtype_nbytes(t.dtype_id, C.lt_tensor_numel(t), n))
    return tonumber(n[0])
end
function methods.is_empty(t) return t.storage == nil end

-- Same shape and every element equal (values compared, dtypes may differ).
local equal_buf = ffi.new("int[1]")
function methods.equal(t, u)
    check(C.lt_tensor_equal(t, u, equal_buf))
    return equal_buf[0] ~= 0
end
function methods.same_storage(t, u) return t.storage == u.storage end

-- ---- views ----------------------------------------------------------------------------

local function view_into(src, fn, ...)
    local dst = new_header()
    check(fn(dst, src, ...))
    return dst
end

-- view(2, -1) / view({2, -1}): a view; an error if the strides do not allow one.
function methods.view(t, ...)
    local shape = parse_view_shape(...)
    return view_into(t, C.lt_tensor_reshape, #shape, sizes_buf)
end

-- reshape: a view when possible, else a contiguous copy.
function methods.reshape(t, ...)
    local shape = parse_view_shape(...)
    local dst = new_header()
    if C.lt_tensor_reshape(dst, t, #shape, sizes_buf) == 0 then return dst end
    local c = t:contiguous()
    parse_view_shape(shape)
    check(C.lt_tensor_reshape(dst, c, #shape, sizes_buf))
    c:free()
    return dst
end

function methods.permute(t, ...)
    local perm = type(...) == "table" and ... or { ... }
    if #perm ~= t.ndim then
        error(("permute: %d entries for a %d-dim tensor"):format(#perm, t.ndim), 2)
    end
    local seen = {}
    for i = 1, #perm do
        local z = cdim(t, perm[i], "permute")
        if seen[z] then
            error(("permute: dim %d appears twice in (%s)"):format(z + 1, table.concat(perm, ", ")), 2)
        end
        seen[z] = true
        perm_buf[i - 1] = z
    end
    return view_into(t, C.lt_tensor_permute, perm_buf)
end

function methods.transpose(t, d0, d1)
    return view_into(t, C.lt_tensor_transpose, cdim(t, d0, "transpose"), cdim(t, d1, "transpose"))
end

-- t:t(): the transpose of a 2-D tensor.
function methods.t(t)
    if t.ndim ~= 2 then error("t(): expects a 2-D tensor, got " .. t.ndim .. " dims", 2) end
    return view_into(t, C.lt_tensor_transpose, 0, 1)
end

-- narrow(dim, start, length), start 1-based.
function methods.narrow(t, d, start, length)
    local z = cdim(t, d, "narrow")
    local n = tonumber(t.sizes[z])
    if start < 0 then start = n + start + 1 end
    if start < 1 or length < 0 or start - 1 + length > n then
        error(("narrow: elements %d..%d are outside dim %d of size %d"):format(start,
            start + length - 1, d, n), 2)
    end
    return view_into(t, C.lt_tensor_narrow, z, start - 1, length)
end

-- slice(dim, i, j [, step]): elements i..j inclusive (1-based, negative from the end).
function methods.slice(t, d, i, j, step)
    local z = cdim(t, d, "slice")
    local n = tonumber(t.sizes[z])
    i = i or 1
    j = j or n
    if i == 0 or j == 0 then
        error("slice: indices are 1-based (negative from the end); 0 is not an index", 2)
    end
    if i < 0 then i = n + i + 1 end
    if j < 0 then j = n + j + 1 end
    return view_into(t, C.lt_tensor_slice, z, i - 1, j, step or 1)
end

-- select(dim, i): drops dim, keeping its i-th element (1-based).
function methods.select(t, d, i)
    local z = cdim(t, d, "select")
    local n = tonumber(t.sizes[z])
    if i < 0 then i = n + i + 1 end
    if i < 1 or i > n then
        error(("select: index %d out of range for dim %d of size %d"):format(i, d, n), 2)
    end
    return view_into(t, C.lt_tensor_select, z, i - 1)
end

function methods.expand(t, ...)
    local shape = parse_view_shape(...)
    return view_into(t, C.lt_tensor_expand, #shape, sizes_buf)
end

function methods.unsqueeze(t, d)
    local nd = t.ndim
    local z = d < 0 and nd + 1 + d or d - 1
    if z < 0 or z > nd then error(("unsqueeze: dim %d out of range"):format(d), 2) end
    local shape = methods.shape(t)
    table.insert(shape, z + 1, 1)
    return t:view(shape)
end

function methods.squeeze(t, d)
    local shape = methods.shape(t)
    local out = {}
    local z = d and cdim(t, d, "squeeze")
    for i = 1, #shape do
        if not (shape[i] == 1 and (z == nil or z == i - 1)) then out[#out + 1] = shape[i] end
    end
    return t:reshape(out)
end

function methods.flatten(t)
    return t:reshape(-1)
end

-- ---- copies and conversion ------------------------------------------------------------

function methods.contiguous(t)
    return view_into(t, C.lt_tensor_contiguous, -1)
end

function methods.clone(t)
    local dst = M.empty(methods.shape(t), { dtype = t.dtype_id, device = properties_device(t) })
    check(C.lt_tensor_copy(dst, t))
    return dst
end

-- to("bf16"), to("cpu"), to("cuda:1"), to({dtype=, device=}): a new tensor, or t itself
-- when nothing changes.
function methods.to(t, what)
    local dt, dev
    if type(what) == "table" then
        dt, dev = what.dtype, what.device
    elseif type(what) == "string" and (what == "cpu" or what == "cuda" or what:match("^cuda:")) then
        dev = what
    else
        dt = what
    end
    local id = dt ~= nil and to_dtype(dt, "to") or t.dtype_id
    local cur = properties_device(t)
    if dev ~= nil then
        local devt, devi = core.parse_device(dev)
        dev = core.device_string(devt, devi)
    else
        dev = cur
    end
    if id == t.dtype_id and dev == cur then return t end
    local dst = M.empty(methods.shape(t), { dtype = id, device = dev })
    check(C.lt_tensor_copy(dst, t))
    return dst
end

-- t:cuda([index]) and t:cpu(): copies to a device or to the host (t itself when already there).
function methods.cuda(t, index) return methods.to(t, "cuda:" .. tostring(index or M.current_cuda_device())) end
function methods.cpu(t) return methods.to(t, "cpu") end
function methods.is_cuda(t) return t.storage ~= nil and t.storage.device_type == C.LT_DEVICE_CUDA end

function methods.float(t) return t:to("f32") end
function methods.bf16(t) return t:to("bf16") end
function methods.half(t) return t:to("f16") end
function methods.long(t) return t:to("i64") end
function methods.int(t) return t:to("i32") end

-- In-place copy from a tensor (broadcast, converting) or a nested table.
function methods.copy_(t, src)
    if not is_tensor(src) then src = M.tensor(src) end
    check(C.lt_tensor_copy(t, src))
    return t
end

-- t <- src; between host memory and a CUDA device (contiguous, one dtype) on the device's
-- copy stream, alongside its kernels. Returns a ticket for M.copy_wait (0: already done).
-- Both tensors must live until the ticket is waited for.
local ticket_buf = ffi.new("int64_t[1]")
function methods.copy_async_(t, src)
    check(C.lt_tensor_copy_async(t, src, ticket_buf))
    return tonumber(ticket_buf[0])
end

-- Wait for transfer `ticket` of `device` ("cpu", "cuda", "cuda:N"): the device's later
-- kernels (on_host false) or this thread (on_host true). A ticket of 0 waits for nothing.
function M.copy_wait(device, ticket, on_host)
    if not ticket or ticket == 0 then return end
    local dt, di = core.parse_device(device)
    check(C.lt_copy_wait(dt, di, ticket, on_host and 1 or 0))
end

function methods.fill_(t, v)
    check(C.lt_tensor_fill(t, v))
    return t
end

function methods.zero_(t)
    check(C.lt_tensor_fill(t, 0))
    return t
end

function methods.normal_(t, mean, std, gen)
    check(C.lt_tensor_normal(t, mean or 0, std or 1, gen or M.default_rng))
    return t
end

function methods.uniform_(t, low, high, gen)
    check(C.lt_tensor_uniform(t, low or 0, high or 1, gen or M.default_rng))
    return t
end

-- Release the storage now instead of waiting for the garbage collector.
function methods.free(t)
    C.lt_tensor_release(t)
end

-- Make t a view of src (same storage, shape, strides) without a new header.
function methods.set_(t, src)
    check(C.lt_tensor_share(t, src))
    return t
end

-- Resize in place to a contiguous shape, keeping the storage when it is large enough.
function methods.resize_(t, ...)
    local shape, opts = parse_shape(...)
    local dt = opts.dtype and to_dtype(opts.dtype, "resize_") or (t.storage ~= nil and t.dtype_id or C.LT_DTYPE_F32)
    local devt, devi = core.parse_device(opts.device)
    check(C.lt_tensor_resize(t, dt, #shape, sizes_buf, devt, devi))
    return t
end

-- ---- elements -------------------------------------------------------------------------

local get_buf = ffi.new("double[1]")

function methods.item(t)
    if t.storage == nil then error("item(): this tensor was released (t:free()); it holds no data", 2) end
    local n = tonumber(C.lt_tensor_numel(t))
    if n ~= 1 then error(("item(): tensor has %d elements, not 1"):format(n), 2) end
    check(C.lt_tensor_get(t, 0, get_buf))
    return get_buf[0]
end

-- Flat (row-major) element read, 1-based.
function methods.get(t, i)
    check(C.lt_tensor_get(t, i - 1, get_buf))
    return get_buf[0]
end

function methods.set(t, i, v)
    check(C.lt_tensor_set(t, i - 1, v))
    return t
end

function methods.totable(t)
    if t.ndim == 0 then return methods.item(t) end
    local c = t
    if not (t.dtype_id == C.LT_DTYPE_F32 and C.lt_tensor_is_contiguous(t) ~= 0) then
        c = M.empty(methods.shape(t), { dtype = "f32" })
        if t.dtype_id == C.LT_DTYPE_I64 then
            -- i64 above 2^24 does not survive f32; go through get().
            local shape = methods.shape(t)
            local idx = 0
            local function build(d)
                local r = {}
                for i = 1, shape[d] do
                    if d == #shape then
                        check(C.lt_tensor_get(t, idx, get_buf))
                        idx = idx + 1
                        r[i] = get_buf[0]
                    else
                        r[i] = build(d + 1)
                    end
                end
                return r
            end
            local out = build(1)
            c:free()
            return out
        end
        check(C.lt_tensor_copy(c, t))
    end
    local p = ffi.cast("float*", C.lt_tensor_data(c))
    local shape = methods.shape(t)
    local idx = 0
    local function build(d)
        local r = {}
        for i = 1, shape[d] do
            if d == #shape then
                r[i] = p[idx]
                idx = idx + 1
            else
                r[i] = build(d + 1)
            end
        end
        return r
    end
    local out = build(1)
    if c ~= t then c:free() end
    return out
end

-- ---- printing -------------------------------------------------------------------------

local SUMMARY_THRESHOLD, EDGE = 1000, 3

local function format_values(t)
    -- Pick one format for all shown numbers so columns line up.
    local n = tonumber(C.lt_tensor_numel(t))
    local isint = core.dtype_name[t.dtype_id]:match("^[iu]") ~= nil
    local maxabs, minabs, allint, nonfinite = 0, math.huge, true, false
    local step = n > 100000 and math.floor(n / 100000) or 1
    for i = 0, n - 1, step do
        C.lt_tensor_get(t, i, get_buf)
        local v = get_buf[0]
        if v ~= v or v == math.huge or v == -math.huge then
            nonfinite = true
        else
            local a = math.abs(v)
            if a > maxabs then maxabs = a end
            if a > 0 and a < minabs then minabs = a end
            if v ~= math.floor(v) then allint = false end
        end
    end
    if isint or (allint and maxabs < 1e9) then
        return function(v)
            if v ~= v then return "nan" end
            if v == math.huge then return "inf" elseif v == -math.huge then return "-inf" end
            return isint and string.format("%d", v) or string.format("%.0f.", v)
        end
    end
    local sci = maxabs >= 1e5 or (minabs < 1e-3 and minabs ~= math.huge)
    local fmt = sci and "%.4e" or "%.4f"
    local _ = nonfinite
    return function(v)
        if v ~= v then return "nan" end
        if v == math.huge then return "inf" elseif v == -math.huge then return "-inf" end
        return string.format(fmt, v)
    end
end

function M.format(t)
    if t.storage == nil then return "<released tensor>" end
    if t.storage.device_type ~= C.LT_DEVICE_CPU then
        -- read once from the device, print the host copy, name the device
        local text = M.format(methods.cpu(t))
        return (text:gsub("on cpu%]$", "on " .. properties_device(t) .. "]"))
    end
    local shape = methods.shape(t)
    local n = tonumber(C.lt_tensor_numel(t))
    local summarize = n > SUMMARY_THRESHOLD
    local fmt = format_values(t)
    local strides = {}
    local s = 1
    for d = #shape, 1, -1 do
        strides[d] = s
        s = s * shape[d]
    end
    -- Render every shown value first to find the column width.
    local cells, width = {}, 1
    local function indices(d)
        local size = shape[d]
        if summarize and size > 2 * EDGE then
            local r = {}
            for i = 1, EDGE do r[#r + 1] = i end
            r[#r + 1] = false
            for i = size - EDGE + 1, size do r[#r + 1] = i end
            return r
        end
        local r = {}
        for i = 1, size do r[i] = i end
        return r
    end
    local function cell(flat)
        local c = cells[flat]
        if not c then
            C.lt_tensor_get(t, flat, get_buf)
            c = fmt(get_buf[0])
            cells[flat] = c
            if #c > width then width = #c end
        end
        return c
    end
    local function collect(d, base)
        if d > #shape then cell(base) return end
        for _, i in ipairs(indices(d)) do
            if i then collect(d + 1, base + (i - 1) * strides[d]) end
        end
    end
    if #shape > 0 then collect(1, 0) end
    local function render(d, base, indent)
        if d > #shape then
            local c = cell(base)
            return string.rep(" ", width - #c) .. c
        end
        local parts = {}
        for _, i in ipairs(indices(d)) do
            if i then
                parts[#parts + 1] = render(d + 1, base + (i - 1) * strides[d], indent .. " ")
            else
                parts[#parts + 1] = "..."
            end
        end
        if d == #shape then return "[" .. table.concat(parts, ", ") .. "]" end
        local sep = "," .. string.rep("\n", #shape - d) .. indent .. " "
        return "[" .. table.concat(parts, sep) .. "]"
    end
    local body
    if #shape == 0 then
        body = cell(0)
    else
        body = render(1, 0, "")
    end
    local dims = {}
    for i = 1, #shape do dims[i] = tostring(shape[i]) end
    local dev = core.device_string(t.storage.device_type, t.storage.device_index)
    return ("%s\n[%s tensor of shape (%s) on %s]"):format(body, core.dtype_name[t.dtype_id],
        table.concat(dims, ", "), dev)
end

-- ---- the metatype ---------------------------------------------------------------------

local properties = {
    dtype = function(t) return dtype_name[t.dtype_id] end,
    device = function(t)
        if t.storage == nil then return "cpu" end
        return core.device_string(t.storage.device_type, t.storage.device_index)
    end,
}

local mt = {}

mt.__index = function(t, k)
    local m = methods[k]
    if m ~= nil then return m end
    if type(k) == "number" then
        if t.storage == nil then error("this tensor was released (t:free()); it holds no data", 2) end
        if t.ndim == 1 then
            local n = tonumber(t.sizes[0])
            local i = k < 0 and n + k + 1 or k
            if i < 1 or i > n then
                error(("index %d out of range for a tensor of size %d"):format(k, n), 2)
            end
            check(C.lt_tensor_get(t, i - 1, get_buf))
            return get_buf[0]
        end
        if t.ndim == 0 then error("a 0-dim tensor cannot be indexed; use :item()", 2) end
        local n = tonumber(t.sizes[0])
        if k == 0 or k > n or k < -n then
            error(("index %d out of range for dim 1 of size %d"):format(k, n), 2)
        end
        return methods.select(t, 1, k)
    end
    local p = properties[k]
    if p then return p(t) end
    return nil
end

mt.__newindex = function(t, k, v)
    if type(k) ~= "number" then
        error(("cannot set field %q on a tensor"):format(tostring(k)), 2)
    end
    if t.storage == nil then error("this tensor was released (t:free()); it holds no data", 2) end
    if t.ndim == 0 then error("a 0-dim tensor cannot be indexed; use :fill_(v)", 2) end
    local n0 = tonumber(t.sizes[0])
    if k == 0 or k > n0 or k < -n0 then
        error(("index %d out of range for %s of size %d"):format(k,
            t.ndim == 1 and "a tensor" or "dim 1", n0), 2)
    end
    if t.ndim == 1 and type(v) == "number" then
        local n = tonumber(t.sizes[0])
        local i = k < 0 and n + k + 1 or k
        if i < 1 or i > n then
            error(("index %d out of range for a tensor of size %d"):format(k, n), 2)
        end
        check(C.lt_tensor_set(t, i - 1, v))
        return
    end
    local row = methods.select(t, 1, k)
    if type(v) == "number" then
        check(C.lt_tensor_fill(row, v))
    else
        methods.copy_(row, v)
    end
    row:free()
end

mt.__len = function(t)
    if t.ndim == 0 then return 0 end
    return tonumber(t.sizes[0])
end

mt.__tostring = M.format

-- Arithmetic operators dispatch to the methods ops.lua installs (looked up per call, since
-- a metatype's metatable is fixed once ffi.metatype has seen it). A number may stand on
-- either side.
local function binary_op(name, rname)
    return function(a, b)
        if type(a) == "number" then return methods[rname](b, a) end
        return methods[name](a, b)
    end
end
mt.__add = binary_op("add", "add")
mt.__sub = binary_op("sub", "rsub")
mt.__mul = binary_op("mul", "mul")
mt.__div = binary_op("div", "rdiv")
mt.__pow = binary_op("pow", "rpow")
mt.__unm = function(a) return methods.neg(a) end

mt.__gc = function(t)
    C.lt_tensor_release(t)
end

M.metatable = mt

Tensor = ffi.metatype("lt_tensor", mt)
M.Tensor = Tensor

return M
