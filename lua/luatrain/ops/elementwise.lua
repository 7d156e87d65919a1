--[[
ops/elementwise.lua - elementwise maps, reductions and softmax: the Tensor methods and the
functional forms (with optional output buffers) that nn modules call.

    local x = lt.randn(3, 4)
    local y = (x * 2 + 1):exp() / x:abs():sum(-1, true)   -- broadcasting like numpy
    local vals, idx = y:max(2)                             -- values (3) f32, indices (3) i64
    x:add_(y, 0.5)                                         -- x += 0.5 * y, in place

Conventions:
  - Dims are 1-based; negative ones count from the end (-1 is the last).
  - Results are new f32 tensors. Inputs of another dtype (i64, bf16, ...) are converted to
    f32 first (a temporary copy), so lt.arange(5) * 2 is an f32 tensor. In-place methods
    (add_, mul_, exp_, ...) need a float `self` (f32, bf16 or f16: computed in f32 and
    rounded once to its dtype, on the CPU as on CUDA) and raise an error otherwise.
  - Binary ops broadcast like numpy. A Lua number may stand on either side of an operator.
  - sum/mean/max/min/amax/amin without a dim reduce everything to a 0-dim tensor (torch's
    behaviour); with dims they drop the reduced dims unless keepdim is true.
  - Scalars are rounded to f32 (the kernels compute in f32).

Functional forms (the lead exposes them as lt.ops.*) take op names ("mul", "exp", "sum")
or the C enum values and an optional `out` tensor to write into:
  unary_forward(op, x, out)                 unary_backward(op, dout, x, dx)
  binary_forward(op, a, b, out)             binary_backward(op, dout, a, b, da, db)
  scalar_forward(op, x, s, reversed, out)   scalar_backward(op, dout, x, s, reversed, dx)
  reduce_forward(op, x, dims, keepdim, out) reduce_backward(op, dout, x, out, dims, dx)
  softmax_forward(x, out)  softmax_backward(dout, y, dx)   (and log_softmax_*)
  axpby(y, alpha, x, beta), argmax(x, dim, keepdim), argmin(...), sum_squares(x),
  has_nonfinite(x); unary/binary/scalar/reduce are short aliases of the *_forward names.
In binary_backward, da/db may be a tensor (written), nil (allocated) or false (skipped);
a number for a or b routes to the scalar form.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"

local C, check = core.C, core.check
local methods, is_tensor, cdim = tensor.methods, tensor.is_tensor, tensor.cdim
local new_header = tensor.new_header

local F32, I64 = C.LT_DTYPE_F32, C.LT_DTYPE_I64
local FLOAT = { [C.LT_DTYPE_F32] = true, [C.LT_DTYPE_BF16] = true, [C.LT_DTYPE_F16] = true }
local MAX_DIMS = C.LT_MAX_DIMS

local M = {}

-- ---- op names ---------------------------------------------------------------------------

local UNARY = {
    neg = C.LT_UNARY_NEG, exp = C.LT_UNARY_EXP, log = C.LT_UNARY_LOG,
    sqrt = C.LT_UNARY_SQRT, rsqrt = C.LT_UNARY_RSQRT, abs = C.LT_UNARY_ABS,
    square = C.LT_UNARY_SQUARE, reciprocal = C.LT_UNARY_RECIPROCAL,
    sigmoid = C.LT_UNARY_SIGMOID, silu = C.LT_UNARY_SILU, tanh = C.LT_UNARY_TANH,
    relu = C.LT_UNARY_RELU, gelu = C.LT_UNARY_GELU, sin = C.LT_UNARY_SIN, cos = C.LT_UNARY_COS,
}
local BINARY = {
    add = C.LT_BINARY_ADD, sub = C.LT_BINARY_SUB, mul = C.LT_BINARY_MUL,
    div = C.LT_BINARY_DIV, max = C.LT_BINARY_MAX, maximum = C.LT_BINARY_MAX,
    min = C.LT_BINARY_MIN, minimum = C.LT_BINARY_MIN, pow = C.LT_BINARY_POW,
}
local REDUCE = {
    sum = C.LT_REDUCE_SUM, mean = C.LT_REDUCE_MEAN, max = C.LT_REDUCE_MAX, min = C.LT_REDUCE_MIN,
}
M.unary_ops, M.binary_ops, M.reduce_ops = UNARY, BINARY, REDUCE

local function op_id(tbl, op, kind)
    if type(op) == "number" then return op end
    local id = tbl[op]
    if id == nil then error(("unknown %s op %s"):format(kind, tostring(op)), 3) end
    return id
end

-- ---- helpers ----------------------------------------------------------------------------

-- Scratch C arrays for shapes and dims (the C side copies what it needs).
local shape_buf = ffi.new("int64_t[?]", MAX_DIMS)
local dims_buf = ffi.new("int32_t[?]", MAX_DIMS)

-- A new contiguous f32 tensor of the given shape (x's by default) on x's device.
local function empty_like(x, ndim, sizes, dtype)
    local t = new_header()
    local st = x.storage
    local devt, devi = C.LT_DEVICE_CPU, 0
    if st ~= nil then devt, devi = st.device_type, st.device_index end
    check(C.lt_tensor_empty(t, dtype or F32, ndim or x.ndim, sizes or x.sizes, devt, devi))
    return t
end

-- x itself when it is f32, else an f32 copy (second result true: free it after use).
local function as_f32(x, what)
    if not is_tensor(x) then
        error(("%s: expected a tensor, got %s"):format(what, type(x)), 3)
    end
    if x.dtype_id == F32 or x.storage == nil then return x, false end
    local t = empty_like(x)
    check(C.lt_tensor_copy(t, x))
    return t, true
end

local function need_float(t, what)
    if not is_tensor(t) then error(("%s: expected a tensor, got %s"):format(what, type(t)), 3) end
    if not FLOAT[tonumber(t.dtype_id)] then
        error(("%s: in-place ops need an f32, bf16 or f16 tensor, got %s"):format(what, t.dtype), 3)
    end
end

local function shape_string(ndim, sizes)
    local p = {}
    for i = 0, ndim - 1 do p[#p + 1] = tostring(tonumber(sizes[i])) end
    return "(" .. table.concat(p, ", ") .. ")"
end

-- The numpy broadcast of a's and b's shapes, into shape_buf; returns its rank.
local function broadcast_shape(a, b, what)
    local na, nb = a.ndim, b.ndim
    local n = na > nb and na or nb
    for i = 0, n - 1 do
        local ia, ib = na - n + i, nb - n + i
        local sa = ia >= 0 and tonumber(a.sizes[ia]) or 1
        local sb = ib >= 0 and tonumber(b.sizes[ib]) or 1
        if sa == sb or sb == 1 then
            shape_buf[i] = sa
        elseif sa == 1 then
            shape_buf[i] = sb
        else
            error(("%s: shapes %s and %s do not broadcast (dim %d: %d vs %d)"):format(what,
                shape_string(na, a.sizes), shape_string(nb, b.sizes), i + 1, sa, sb), 0)
        end
    end
    return n
end

-- ---- unary ------------------------------------------------------------------------------

function M.unary_forward(op, x, out)
    op = op_id(UNARY, op, "unary")
    local xf, tmp = as_f32(x, "unary_forward")
    out = out or empty_like(xf)
    check(C.lt_unary_forward(out, xf, op))
    if tmp then xf:free() end
    return out
end

function M.unary_backward(op, dout, x, dx)
    op = op_id(UNARY, op, "unary")
    local xf, tmp = as_f32(x, "unary_backward")
    dx = dx or empty_like(xf)
    check(C.lt_unary_backward(dx, dout, xf, op))
    if tmp then xf:free() end
    return dx
end

for name, op in pairs(UNARY) do
    methods[name] = function(t) return M.unary_forward(op, t) end
    local iname = name .. "_"
    methods[iname] = function(t)
        need_float(t, iname)
        check(C.lt_unary_forward(t, t, op))
        return t
    end
end

-- ---- scalar and binary ------------------------------------------------------------------

function M.scalar_forward(op, x, s, reversed, out)
    op = op_id(BINARY, op, "binary")
    local xf, tmp = as_f32(x, "scalar_forward")
    out = out or empty_like(xf)
    check(C.lt_scalar_forward(out, xf, s, op, reversed and 1 or 0))
    if tmp then xf:free() end
    return out
end

function M.scalar_backward(op, dout, x, s, reversed, dx)
    op = op_id(BINARY, op, "binary")
    local xf, tmp = as_f32(x, "scalar_backward")
    dx = dx or empty_like(xf)
    check(C.lt_scalar_backward(dx, dout, xf, s, op, reversed and 1 or 0))
    if tmp then xf:free() end
    return dx
end

-- a op b; either may be a Lua number (then the scalar kernel runs).
function M.binary_forward(op, a, b, out)
    local id = op_id(BINARY, op, "binary")
    if type(b) == "number" then return M.scalar_forward(id, a, b, false, out) end
    if type(a) == "number" then return M.scalar_forward(id, b, a, true, out) end
    local what = type(op) == "string" and op or "binary_forward"
    local af, ta = as_f32(a, what)
    local bf, tb = as_f32(b, what)
    if out == nil then
        local nd = broadcast_shape(af, bf, what)
        out = empty_like(af, nd, shape_buf)
    end
    check(C.lt_binary_forward(out, af, bf, id))
    if ta then af:free() end
    if tb then bf:free() end
    return out
end

function M.binary_backward(op, dout, a, b, da, db)
    local id = op_id(BINARY, op, "binary")
    if type(b) == "number" then
        if da == false then return nil, nil end
        return M.scalar_backward(id, dout, a, b, false, da), nil
    end
    if type(a) == "number" then
        if db == false then return nil, nil end
        return nil, M.scalar_backward(id, dout, b, a, true, db)
    end
    local af, ta = as_f32(a, "binary_backward")
    local bf, tb = as_f32(b, "binary_backward")
    if da == nil then da = empty_like(af) end
    if db == nil then db = empty_like(bf) end
    check(C.lt_binary_backward(da or nil, db or nil, dout, af, bf, id))
    if ta then af:free() end
    if tb then bf:free() end
    return da or nil, db or nil
end

M.unary, M.binary, M.scalar = M.unary_forward, M.binary_forward, M.scalar_forward

-- y = alpha * x + beta * y in place (x broadcasts to y); a zero coefficient leaves its
-- operand unread. Returns y.
function M.axpby(y, alpha, x, beta)
    need_float(y, "axpby")
    local xf, tmp = as_f32(x, "axpby")
    check(C.lt_axpby(y, alpha, xf, beta))
    if tmp then xf:free() end
    return y
end

local function binary_method(name, op)
    return function(t, other)
        if type(other) == "number" then return M.scalar_forward(op, t, other, false) end
        if not is_tensor(other) then
            error(("%s: expected a tensor or a number, got %s"):format(name, type(other)), 2)
        end
        return M.binary_forward(name, t, other)
    end
end

-- Reversed forms for `number op tensor` (the metatype's operators call these).
local function reversed_method(op)
    return function(t, s) return M.scalar_forward(op, t, s, true) end
end

methods.mul = binary_method("mul", C.LT_BINARY_MUL)
methods.div = binary_method("div", C.LT_BINARY_DIV)
methods.pow = binary_method("pow", C.LT_BINARY_POW)
methods.maximum = binary_method("maximum", C.LT_BINARY_MAX)
methods.minimum = binary_method("minimum", C.LT_BINARY_MIN)
methods.rsub = reversed_method(C.LT_BINARY_SUB)
methods.rdiv = reversed_method(C.LT_BINARY_DIV)
methods.rpow = reversed_method(C.LT_BINARY_POW)

-- add(other [, alpha]) = self + alpha * other; sub likewise (torch's signature).
local plain_add, plain_sub = binary_method("add", C.LT_BINARY_ADD), binary_method("sub", C.LT_BINARY_SUB)
local function add_or_sub(name, plain)
    return function(t, other, alpha)
        if alpha == nil or alpha == 1 then return plain(t, other) end
        if type(other) == "number" then return plain(t, other * alpha) end
        local scaled = M.scalar_forward(C.LT_BINARY_MUL, other, alpha, false)
        local out = M.binary_forward(name, t, scaled)
        scaled:free()
        return out
    end
end
methods.add = add_or_sub("add", plain_add)
methods.sub = add_or_sub("sub", plain_sub)

-- In place: self = self op other (other broadcasts to self's shape).
local function inplace_method(name, op)
    return function(t, other)
        need_float(t, name)
        if type(other) == "number" then
            check(C.lt_scalar_forward(t, t, other, op, 0))
        else
            local of, tmp = as_f32(other, name)
            check(C.lt_binary_forward(t, t, of, op))
            if tmp then of:free() end
        end
        return t
    end
end
local plain_add_, plain_sub_ = inplace_method("add_", C.LT_BINARY_ADD), inplace_method("sub_", C.LT_BINARY_SUB)
methods.mul_ = inplace_method("mul_", C.LT_BINARY_MUL)
methods.div_ = inplace_method("div_", C.LT_BINARY_DIV)
methods.pow_ = inplace_method("pow_", C.LT_BINARY_POW)
methods.maximum_ = inplace_method("maximum_", C.LT_BINARY_MAX)
methods.minimum_ = inplace_method("minimum_", C.LT_BINARY_MIN)

-- add_(other [, alpha]): self += alpha * other (one axpby pass when alpha is given).
function methods.add_(t, other, alpha)
    if alpha == nil or alpha == 1 then return plain_add_(t, other) end
    if type(other) == "number" then return plain_add_(t, other * alpha) end
    need_float(t, "add_")
    return M.axpby(t, alpha, other, 1)
end

function methods.sub_(t, other, alpha)
    if alpha == nil or alpha == 1 then return plain_sub_(t, other) end
    if type(other) == "number" then return plain_sub_(t, other * alpha) end
    need_float(t, "sub_")
    return M.axpby(t, -alpha, other, 1)
end

-- axpby_(alpha, x [, beta]): self = alpha * x + beta * self (beta defaults to 1).
function methods.axpby_(t, alpha, x, beta)
    return M.axpby(t, alpha, x, beta == nil and 1 or beta)
end

-- clamp(lo, hi): either bound may be nil. NaN stays NaN.
function methods.clamp(t, lo, hi)
    local out
    if lo ~= nil then
        out = M.scalar_forward(C.LT_BINARY_MAX, t, lo, false)
    else
        local xf, tmp = as_f32(t, "clamp")
        out = tmp and xf or methods.clone(xf)
    end
    if hi ~= nil then check(C.lt_scalar_forward(out, out, hi, C.LT_BINARY_MIN, 0)) end
    return out
end

function methods.clamp_(t, lo, hi)
    need_float(t, "clamp_")
    if lo ~= nil then check(C.lt_scalar_forward(t, t, lo, C.LT_BINARY_MAX, 0)) end
    if hi ~= nil then check(C.lt_scalar_forward(t, t, hi, C.LT_BINARY_MIN, 0)) end
    return t
end

-- ---- reductions -------------------------------------------------------------------------

-- dims: nil (all), a number or a table of numbers (1-based, negative from the end).
-- Fills dims_buf with 0-based dims and returns their count.
local function parse_dims(t, dims, what)
    if dims == nil then
        for i = 0, t.ndim - 1 do dims_buf[i] = i end
        return t.ndim
    end
    if type(dims) == "number" then
        dims_buf[0] = cdim(t, dims, what)
        return 1
    end
    if type(dims) ~= "table" then
        error(("%s: dim must be a number or a table of numbers, got %s"):format(what, type(dims)), 3)
    end
    if #dims > t.ndim then
        error(("%s: %d dims given for a %d-dim tensor"):format(what, #dims, t.ndim), 3)
    end
    local seen = {}
    for i = 1, #dims do
        local z = cdim(t, dims[i], what)
        if seen[z] then
            error(("%s: dim %d is listed twice (it is dim %d)"):format(what, dims[i], z + 1), 3)
        end
        seen[z] = true
        dims_buf[i - 1] = z
    end
    return #dims
end

-- The keepdim shape of x reduced over dims_buf[0..nd) into shape_buf.
local function keepdim_shape(x, nd)
    for i = 0, x.ndim - 1 do shape_buf[i] = x.sizes[i] end
    for i = 0, nd - 1 do shape_buf[dims_buf[i]] = 1 end
end

-- A view of a keepdim-form result without the reduced dims.
local function drop_dims(r, x, nd)
    local reduced = {}
    for i = 0, nd - 1 do reduced[dims_buf[i]] = true end
    local shape = {}
    for i = 0, x.ndim - 1 do
        if not reduced[i] then shape[#shape + 1] = tonumber(x.sizes[i]) end
    end
    return r:view(shape)
end

function M.reduce_forward(op, x, dims, keepdim, out)
    local id = op_id(REDUCE, op, "reduce")
    local what = type(op) == "string" and op or "reduce_forward"
    local xf, tmp = as_f32(x, what)
    local nd = parse_dims(xf, dims, what)
    local fresh = out == nil
    if fresh then
        keepdim_shape(xf, nd)
        out = empty_like(xf, xf.ndim, shape_buf)
    end
    check(C.lt_reduce_forward(out, xf, nd, dims_buf, id))
    local r = out
    if not keepdim then
        r = drop_dims(out, xf, nd)
        if fresh then out:free() end
    end
    if tmp then xf:free() end
    return r
end
M.reduce = M.reduce_forward

-- Gradient of a reduction. dout (and out, the forward result, needed for max/min) may be
-- in keepdim form or with the reduced dims dropped; `dims` says which were reduced (nil:
-- all) when they were dropped.
function M.reduce_backward(op, dout, x, out, dims, dx)
    local id = op_id(REDUCE, op, "reduce")
    local what = (type(op) == "string" and op or "reduce") .. "_backward"
    local xf, tmp = as_f32(x, what)
    local function keepdim_view(t)
        if t == nil or t.ndim == xf.ndim then return t, false end
        local nd = parse_dims(xf, dims, what)
        keepdim_shape(xf, nd)
        local v = new_header()
        check(C.lt_tensor_reshape(v, t, xf.ndim, shape_buf))
        return v, true
    end
    local dk, fd = keepdim_view(dout)
    local ok, fo = keepdim_view(out)
    dx = dx or empty_like(xf)
    check(C.lt_reduce_backward(dx, dk, xf, ok, id))
    if fd then dk:free() end
    if fo then ok:free() end
    if tmp then xf:free() end
    return dx
end

-- i64 indices of the max along dim (first of ties; NaN counts as the largest). Without a
-- dim: the flat index over all elements, as a 0-dim tensor.
function M.argmax(x, dim, keepdim)
    local xf, tmp = as_f32(x, "argmax")
    local r
    if dim == nil then
        local flat = methods.reshape(xf, -1)
        shape_buf[0] = 1
        local out = empty_like(flat, 1, shape_buf, I64)
        check(C.lt_argmax(out, flat, 0))
        r = out:view({})
        out:free()
        flat:free()
    else
        local z = cdim(xf, dim, "argmax")
        for i = 0, xf.ndim - 1 do shape_buf[i] = xf.sizes[i] end
        shape_buf[z] = 1
        local out = empty_like(xf, xf.ndim, shape_buf, I64)
        check(C.lt_argmax(out, xf, z))
        r = out
        if not keepdim then
            dims_buf[0] = z
            r = drop_dims(out, xf, 1)
            out:free()
        end
    end
    if tmp then xf:free() end
    return r
end

-- argmin through argmax of -x: negation is exact, so ties and their order are kept.
function M.argmin(x, dim, keepdim)
    local n = M.unary_forward(C.LT_UNARY_NEG, x)
    local r = M.argmax(n, dim, keepdim)
    n:free()
    return r
end

local sum_buf = ffi.new("double[1]")
local flag_buf = ffi.new("int32_t[1]")

-- Sum of squares of every element, in f64 (a Lua number).
function M.sum_squares(x)
    local xf, tmp = as_f32(x, "sum_squares")
    check(C.lt_sum_squares(xf, sum_buf))
    if tmp then xf:free() end
    return sum_buf[0]
end

-- true when any element is inf or NaN.
function M.has_nonfinite(x)
    local xf, tmp = as_f32(x, "has_nonfinite")
    check(C.lt_has_nonfinite(xf, flag_buf))
    if tmp then xf:free() end
    return flag_buf[0] ~= 0
end

function methods.sum(t, dim, keepdim) return M.reduce_forward("sum", t, dim, keepdim) end
function methods.mean(t, dim, keepdim) return M.reduce_forward("mean", t, dim, keepdim) end
-- amax/amin: values only, over any set of dims.
function methods.amax(t, dim, keepdim) return M.reduce_forward("max", t, dim, keepdim) end
function methods.amin(t, dim, keepdim) return M.reduce_forward("min", t, dim, keepdim) end

-- max(): 0-dim max of all; max(dim [, keepdim]): values and i64 indices along one dim;
-- max(tensor): the elementwise maximum (torch.max(a, b)).
local function extremum(name, op, arg)
    return function(t, dim, keepdim)
        if is_tensor(dim) then return methods[name == "max" and "maximum" or "minimum"](t, dim) end
        if dim ~= nil and type(dim) ~= "number" then
            error(("%s: dim must be one number (use a%s for several dims)"):format(name, name), 2)
        end
        local values = M.reduce_forward(op, t, dim, keepdim)
        if dim == nil then return values end
        return values, arg(t, dim, keepdim)
    end
end
methods.max = extremum("max", "max", M.argmax)
methods.min = extremum("min", "min", M.argmin)
function methods.argmax(t, dim, keepdim) return M.argmax(t, dim, keepdim) end
function methods.argmin(t, dim, keepdim) return M.argmin(t, dim, keepdim) end

-- 2-norm of all elements as a Lua number (computed in f64).
function methods.norm(t) return math.sqrt(M.sum_squares(t)) end
function methods.sum_squares(t) return M.sum_squares(t) end
function methods.has_nonfinite(t) return M.has_nonfinite(t) end

-- allclose(other [, rtol [, atol]]): |self - other| <= atol + rtol * |other| everywhere
-- (other broadcasts, or is a number). NaN anywhere gives false.
function methods.allclose(t, other, rtol, atol)
    rtol, atol = rtol or 1e-5, atol or 1e-8
    local diff = M.binary_forward("sub", t, other)
    methods.abs_(diff)
    if type(other) == "number" then
        methods.sub_(diff, rtol * math.abs(other))
    else
        local mag = M.unary_forward("abs", other)
        local n = broadcast_shape(diff, mag, "allclose")
        if n ~= diff.ndim then
            error(("allclose: other %s has more dims than self %s"):format(
                shape_string(mag.ndim, mag.sizes), shape_string(t.ndim, t.sizes)), 2)
        end
        M.axpby(diff, -rtol, mag, 1)
        mag:free()
    end
    if diff:numel() == 0 then
        diff:free()
        return true
    end
    local worst = M.reduce_forward("max", diff)
    local v = worst:item()
    worst:free()
    diff:free()
    return v <= atol
end

-- ---- softmax ----------------------------------------------------------------------------

function M.softmax_forward(x, out)
    local xf, tmp = as_f32(x, "softmax")
    out = out or empty_like(xf)
    check(C.lt_softmax_forward(out, xf))
    if tmp then xf:free() end
    return out
end

function M.softmax_backward(dout, y, dx)
    dx = dx or empty_like(y)
    check(C.lt_softmax_backward(dx, dout, y))
    return dx
end

function M.log_softmax_forward(x, out)
    local xf, tmp = as_f32(x, "log_softmax")
    out = out or empty_like(xf)
    check(C.lt_log_softmax_forward(out, xf))
    if tmp then xf:free() end
    return out
end

function M.log_softmax_backward(dout, y, dx)
    dx = dx or empty_like(y)
    check(C.lt_log_softmax_backward(dx, dout, y))
    return dx
end

-- softmax(dim): over the last dim directly; over another dim through a contiguous
-- transposed copy (the result is contiguous either way).
local function softmax_method(name, fwd)
    return function(t, dim)
        dim = dim or -1
        if t.ndim == 0 then return fwd(t) end
        local z = cdim(t, dim, name)
        if z == t.ndim - 1 then return fwd(t) end
        local tt = methods.transpose(t, z + 1, -1)
        local xc = methods.contiguous(tt)
        local y = fwd(xc)
        local yt = methods.transpose(y, z + 1, -1)
        local r = methods.contiguous(yt)
        tt:free()
        xc:free()
        y:free()
        yt:free()
        return r
    end
end
methods.softmax = softmax_method("softmax", M.softmax_forward)
methods.log_softmax = softmax_method("log_softmax", M.log_softmax_forward)

-- The functional table also carries every method (lt.ops.exp(x), lt.ops.sum(x, 1), ...).
local method_names = {
    "add", "sub", "rsub", "mul", "div", "rdiv", "pow", "rpow", "maximum", "minimum", "clamp",
    "sum", "mean", "amax", "amin", "max", "min", "norm", "allclose",
}
for name in pairs(UNARY) do method_names[#method_names + 1] = name end
for _, name in ipairs(method_names) do
    if M[name] == nil then M[name] = methods[name] end
end
M.softmax = methods.softmax
M.log_softmax = methods.log_softmax

return M
