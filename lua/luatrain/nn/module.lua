--[[
nn/module.lua - the Module base class and the containers.

The contract every module keeps (ARCHITECTURE.md, contract 6):
  forward(input) -> output
  backward(input, grad_output) -> grad_input   (parameter gradients accumulate)
  parameters(), named_parameters(), train(), eval(), state_dict() with Hugging Face names.

A module owns its output and gradient buffers and reuses them across calls
(self:buffer(name, shape) resizes in place, reallocating only to grow), and keeps its view
headers too (self:view_of), so after the first step a training step allocates no storage.

Parameters are registered with register_parameter; a trainable one gets a gradient buffer
of its shape (f32, zeroed), a frozen one none.
]]
local tensor = require "luatrain.tensor"
local core = require "luatrain.core"

local C, check = core.C, core.check

local Module = {}
Module.__index = Module
Module.__name = "Module"

-- Subclassing: local Linear = Module:extend("Linear"); function Linear:init(...) end
function Module:extend(name)
    local cls = setmetatable({}, { __index = self, __call = function(c, ...) return c.new(...) end })
    cls.__index = cls
    cls.__name = name
    cls.__tostring = Module.__tostring
    cls.__call = function(obj, ...) return obj:forward(...) end
    cls.new = function(...)
        local obj = setmetatable({}, cls)
        Module._setup(obj)
        if cls.init then cls.init(obj, ...) end
        return obj
    end
    return cls
end

function Module:_setup()
    self.training = true
    self._param_names = {}
    self._params = {}
    self._grads = {}
    self._children = {}
    self._child_names = {}
    self._buffers = {}
    self._views = {}
end

Module.new = function()
    local obj = setmetatable({}, Module)
    obj:_setup()
    return obj
end

-- ---- parameters and children --------------------------------------------------------

function Module:register_parameter(name, t, opts)
    opts = opts or {}
    if not tensor.is_tensor(t) then
        error(("register_parameter(%q): not a tensor"):format(name), 2)
    end
    if self._params[name] == nil then
        self._param_names[#self._param_names + 1] = name
    end
    self._params[name] = t
    self[name] = t
    local trainable = opts.trainable ~= false
    if trainable then
        -- f32 gradients (master precision), on the parameter's device
        self._grads[name] = opts.grad or tensor.zeros(t:shape(), { device = t.device })
    else
        self._grads[name] = nil
    end
    return t
end

-- Share another module's parameter (and its gradient): tied weights.
function Module:tie_parameter(name, owner, owner_name)
    local t = owner._params[owner_name]
    if not t then error(("tie_parameter: %s has no parameter %q"):format(owner.__name, owner_name), 2) end
    self:register_parameter(name, t, { trainable = owner._grads[owner_name] ~= nil,
        grad = owner._grads[owner_name] })
    self._tied = self._tied or {}
    self._tied[name] = true
end

function Module:grad(name) return self._grads[name] end

function Module:add_module(name, child)
    name = tostring(name)
    if self._children[name] == nil then
        self._child_names[#self._child_names + 1] = name
    end
    self._children[name] = child
    if not name:match("^%d+$") then self[name] = child end
    return child
end

function Module:children()
    local out = {}
    for i, n in ipairs(self._child_names) do out[i] = self._children[n] end
    return out
end

-- ---- the module tree -------------------------------------------------------------------
--
-- torch/nn's traversal: children, named_children, modules, named_modules, apply, replace,
-- get_submodule. Names are Hugging Face's ("model.layers.0.self_attn.q_proj"). A wrapper
-- that keeps the module it wraps in `inner` and shares that module's parameters and
-- children (nn.GradCheckpoint) is transparent for names: its children are named as the
-- wrapped module's, and the wrapped module itself is visited right after the wrapper,
-- under the same name, so whatever it holds besides (buffers, device) is reached too.

-- The module whose children table `m` holds: the innermost wrapped module.
local function owner_of(m)
    local inner = rawget(m, "inner")
    while inner do
        m = inner
        inner = rawget(m, "inner")
    end
    return m
end

-- Direct children as records { name = key, module = child }, in registration order.
function Module:named_children()
    local out = {}
    for i, n in ipairs(self._child_names) do out[i] = { name = n, module = self._children[n] } end
    return out
end

-- This module and every module below it, depth first in registration order, each once,
-- as records { name = full name ("" for this one), module = m, parent = p, key = the name
-- p holds m under }. parent is the module whose children table holds m (for a child of a
-- wrapper: the wrapped module), so parent:add_module(key, other) replaces m in place.
function Module:named_modules(prefix)
    local out, seen = {}, {}
    local function walk(m, name, parent, key)
        if seen[m] then return end
        seen[m] = true
        out[#out + 1] = { name = name, module = m, parent = parent, key = key }
        local inner = rawget(m, "inner")
        if inner then walk(inner, name, parent, key) end
        local owner = owner_of(m)
        for _, n in ipairs(m._child_names) do
            walk(m._children[n], name == "" and n or (name .. "." .. n), owner, n)
        end
    end
    walk(self, prefix or "", nil, nil)
    return out
end

-- The modules of named_modules, in the same order.
function Module:modules()
    local out = {}
    for i, r in ipairs(self:named_modules()) do out[i] = r.module end
    return out
end

-- fn(m) for this module and every module below it, children before their parent (as
-- PyTorch's apply). Returns self.
function Module:apply(fn)
    local list = self:modules()
    for i = #list, 1, -1 do fn(list[i]) end
    return self
end

-- The module named `name` below this one ("model.layers.0.mlp"); an error naming the
-- first part that does not exist.
function Module:get_submodule(name)
    if name == "" then return self end
    local m, path = self, ""
    for part in name:gmatch("[^%.]+") do
        local child = m._children[part]
        path = path == "" and part or (path .. "." .. part)
        if child == nil then error(("get_submodule: %s has no module %q"):format(self.__name, path), 2) end
        m = child
    end
    return m
end

-- Replace modules in place: fn(m, name) is called for every module below this one, depth
-- first, parents before children; when it returns a module other than m, that module
-- takes m's place (under the same name, in the module that held m) and m's subtree is not
-- visited further. Returns the list of names replaced.
function Module:replace(fn)
    local replaced = {}
    local function walk(m, name)
        local owner = owner_of(m)
        for _, n in ipairs(m._child_names) do
            local child = m._children[n]
            local full = name == "" and n or (name .. "." .. n)
            local new = fn(child, full)
            if new ~= nil and new ~= child then
                owner:add_module(n, new)
                replaced[#replaced + 1] = full
            else
                walk(child, full)
            end
        end
    end
    walk(self, "")
    return replaced
end

-- The modules of the tree that hold parameters, once each, as { module, prefix = its name
-- and "." }: a wrapper and the module it wraps share one parameter table, seen once.
local function param_holders(root)
    local out, seen = {}, {}
    for _, r in ipairs(root:named_modules()) do
        local m = r.module
        if not seen[m._params] then
            seen[m._params] = true
            out[#out + 1] = { module = m, prefix = r.name == "" and "" or (r.name .. ".") }
        end
    end
    return out
end

-- Every parameter below this module as records { name, param, grad, module, key },
-- depth first in registration order. Tied parameters appear once, under their first name.
function Module:named_parameters()
    local out, seen = {}, {}
    for _, h in ipairs(param_holders(self)) do
        local m = h.module
        for _, n in ipairs(m._param_names) do
            local p = m._params[n]
            local key = tostring(p.storage) .. ":" .. tostring(p.offset)
            if not seen[key] then
                seen[key] = true
                out[#out + 1] = { name = h.prefix .. n, param = p, grad = m._grads[n], module = m, key = n }
            end
        end
    end
    return out
end

-- Trainable parameters: records with a gradient.
function Module:parameters()
    local out = {}
    for _, r in ipairs(self:named_parameters()) do
        if r.grad then out[#out + 1] = r end
    end
    return out
end

function Module:num_parameters(trainable_only)
    local n = 0
    for _, r in ipairs(self:named_parameters()) do
        if r.grad or not trainable_only then n = n + r.param:numel() end
    end
    return n
end

-- Every (module, key) slot holding a parameter below this module, tied copies included.
function Module:_param_slots()
    local out = {}
    for _, h in ipairs(param_holders(self)) do
        for _, n in ipairs(h.module._param_names) do out[#out + 1] = { module = h.module, key = n } end
    end
    return out
end

-- Freeze (no gradient buffer) or unfreeze every parameter below this module. A parameter
-- shared by several modules (tied embeddings) gets one gradient, seen by all of them.
function Module:requires_grad(flag)
    local grad_of = {} -- parameter storage key -> the gradient its slots share
    for _, slot in ipairs(self:_param_slots()) do
        local m, k = slot.module, slot.key
        local p = m._params[k]
        local id = tostring(p.storage) .. ":" .. tostring(p.offset)
        if flag then
            if grad_of[id] == nil then grad_of[id] = m._grads[k] or tensor.zeros(p:shape(), { device = p.device }) end
            m._grads[k] = grad_of[id]
        elseif m._grads[k] then
            if grad_of[id] == nil then
                m._grads[k]:free()
                grad_of[id] = true
            end
            m._grads[k] = nil
        end
    end
    return self
end

function Module:zero_grad()
    -- a flat gradient buffer is one fill; gradients outside one (made after flattening)
    -- are zeroed one by one
    local flat = {}
    for _, g in ipairs(rawget(self, "_flat") or {}) do
        if g.grads then
            g.grads:zero_()
            for _, e in ipairs(g.entries) do flat[e.record.grad] = true end
        end
    end
    for _, r in ipairs(self:parameters()) do
        if not flat[r.grad] then r.grad:zero_() end
    end
end

-- ---- flat parameters -------------------------------------------------------------------
--
-- model:flatten_parameters() puts the parameters of each (dtype, device, trainable) group
-- into one contiguous 1-D buffer, and their gradients into one f32 buffer of the same
-- layout, and makes every parameter and gradient a view into them, in named_parameters
-- order, each starting at a multiple of FLAT_ALIGN elements (the gaps are zeros). The
-- tensors keep their identity: the same headers are re-pointed, so modules, optimizer
-- records and anything else holding them stay valid, and nothing moves during training.
-- DDP's buckets and ZeRO's shards are slices of these buffers; zero_grad is one fill.
--
-- opts.trainable_only: flatten only the trainable groups (a frozen base, which needs no
-- gradient traffic, is left as it is; flattening a group briefly holds it twice).
-- opts.pad_multiple = W: each buffer's length is a multiple of W x 64 elements (zeros at
-- the end), so it splits into W equal, aligned shards (ZeRO; data parallelism over W ranks).
-- Returns the groups, also kept as model:flat_parameters():
--   { key = "f32:cpu:trainable", dtype, device, trainable, numel (with the gaps),
--     params = (numel) buffer, grads = (numel) f32 buffer or nil,
--     entries = { { name, record, offset (0-based elements), numel }, ... } }
-- Called again after the parameters changed (adapters added, parameters frozen), it
-- flattens afresh; with nothing changed it returns the same groups.

local FLAT_ALIGN = 64 -- elements: 256 bytes of f32, 16-byte aligned for vector loads in any dtype

local function flat_signature(records, trainable_only, pad)
    local parts = { trainable_only and "t" or "a", tostring(pad) }
    for _, r in ipairs(records) do
        parts[#parts + 1] = tostring(r.param.storage) .. ":" .. tostring(r.grad and r.grad.storage)
    end
    return table.concat(parts, ",")
end

function Module:flat_parameters() return rawget(self, "_flat") end

function Module:flatten_parameters(opts)
    opts = opts or {}
    local records = {}
    for _, r in ipairs(self:named_parameters()) do
        if r.grad or not opts.trainable_only then records[#records + 1] = r end
    end
    local pad = opts.pad_multiple or 1
    if type(pad) ~= "number" or pad < 1 or pad ~= math.floor(pad) then
        error(("flatten_parameters: pad_multiple must be a positive integer, got %s"):format(tostring(pad)), 2)
    end
    local old = rawget(self, "_flat")
    -- opts.per_layer: each decoder layer's parameters a group of their own (ZeRO-3 gathers
    -- and shards layer by layer); g.layer is its 1-based index
    local sig = flat_signature(records, opts.trainable_only, pad) .. (opts.per_layer and ",per_layer" or "")
    if old and old.signature == sig then return old end
    local groups, by_key = {}, {}
    for _, r in ipairs(records) do
        local p = r.param
        local layer = opts.per_layer and tonumber(r.name:match("^model%.layers%.(%d+)%.")) or nil
        local key = ("%s:%s:%s%s"):format(p.dtype, p.device, r.grad and "trainable" or "frozen",
            layer and (":layer" .. layer) or "")
        local g = by_key[key]
        if not g then
            g = { key = key, dtype = p.dtype, device = p.device, trainable = r.grad ~= nil, numel = 0,
                entries = {}, layer = layer and layer + 1 or nil }
            by_key[key] = g
            groups[#groups + 1] = g
        end
        local n = p:numel()
        g.entries[#g.entries + 1] = { name = r.name, record = r, offset = g.numel, numel = n }
        g.numel = g.numel + math.ceil(math.max(n, 1) / FLAT_ALIGN) * FLAT_ALIGN
    end
    for _, g in ipairs(groups) do
        local unit = pad * FLAT_ALIGN
        g.numel = math.ceil(g.numel / unit) * unit
        g.params = tensor.zeros({ g.numel }, { dtype = g.dtype, device = g.device })
        if g.trainable then g.grads = tensor.zeros({ g.numel }, { device = g.device }) end
        for _, e in ipairs(g.entries) do
            local r = e.record
            local shape = r.param:shape()
            local pv = g.params:narrow(1, e.offset + 1, e.numel):view(shape)
            pv:copy_(r.param)
            r.param:set_(pv) -- the old storage goes with its last reference
            pv:free()
            if g.grads then
                local gv = g.grads:narrow(1, e.offset + 1, e.numel):view(shape)
                gv:copy_(r.grad)
                r.grad:set_(gv)
                gv:free()
            end
        end
    end
    -- the parameters now live in the flat buffers: the signature of what was made
    groups.signature = flat_signature(records, opts.trainable_only, pad) .. (opts.per_layer and ",per_layer" or "")
    groups.trainable_only = opts.trainable_only and true or false
    rawset(self, "_flat", groups)
    return groups
end

function Module:train(flag)
    if flag == nil then flag = true end
    self.training = flag
    for _, c in ipairs(self:children()) do c:train(flag) end
    return self
end

function Module:eval() return self:train(false) end

-- ---- state dicts ---------------------------------------------------------------------

-- { {name, tensor}, ... } for every parameter in module order (tied copies left out),
-- with the names Hugging Face uses for the same model.
function Module:state_list()
    local list = {}
    for _, h in ipairs(param_holders(self)) do
        local m = h.module
        for _, n in ipairs(m._param_names) do
            if not (m._tied and m._tied[n]) then list[#list + 1] = { h.prefix .. n, m._params[n] } end
        end
    end
    return list
end

-- name -> tensor (see state_list).
function Module:state_dict()
    local sd = {}
    for _, e in ipairs(self:state_list()) do sd[e[1]] = e[2] end
    return sd
end

-- Copy values in (converting dtypes). strict (default true): every parameter must be
-- present and nothing else. Returns the lists of missing and unexpected names.
function Module:load_state_dict(sd, strict)
    if strict == nil then strict = true end
    local own = self:state_dict()
    local missing, unexpected = {}, {}
    for name, t in pairs(own) do
        local src = sd[name]
        if src == nil then
            missing[#missing + 1] = name
        elseif not tensor.is_tensor(src) then
            error(("load_state_dict: entry %s is a %s, not a tensor"):format(name, type(src)), 2)
        else
            local a, b = t:shape(), src:shape()
            local same = #a == #b
            for i = 1, #a do same = same and a[i] == b[i] end
            if not same then
                error(("load_state_dict: %s has shape (%s) but the model expects (%s)"):format(
                    name, table.concat(b, ", "), table.concat(a, ", ")), 2)
            end
            t:copy_(src)
        end
    end
    for name in pairs(sd) do
        if own[name] == nil then unexpected[#unexpected + 1] = name end
    end
    table.sort(missing)
    table.sort(unexpected)
    if strict and (#missing > 0 or #unexpected > 0) then
        local msg = {}
        if #missing > 0 then msg[#msg + 1] = "missing: " .. table.concat(missing, ", ") end
        if #unexpected > 0 then msg[#msg + 1] = "unexpected: " .. table.concat(unexpected, ", ") end
        error("load_state_dict: " .. table.concat(msg, "; "), 2)
    end
    return missing, unexpected
end

-- ---- owned buffers -------------------------------------------------------------------

-- A buffer of this module resized to `shape` (contiguous; storage kept when big enough),
-- on the module's device (model:to).
function Module:buffer(name, shape, dtype)
    local b = self._buffers[name]
    if b == nil then
        b = tensor.new_header()
        self._buffers[name] = b
    end
    dtype = dtype or self._act_dtype
    if dtype == nil and self._device == nil then return b:resize_(shape) end
    return b:resize_(shape, { dtype = dtype or "f32", device = self._device })
end


-- ---- compute precision -----------------------------------------------------------------

local COMPUTE_DTYPES = { f32 = true, bf16 = true, f16 = true }

-- Activations and their gradients in `dtype` ("f32", "bf16" or "f16") for this module and
-- every module under it: buffers made without an explicit dtype take it, and layers whose
-- weights are in another dtype multiply with a copy cast to it (see Linear). Parameters
-- stay as they are, so trainable ones keep f32 master weights, f32 gradients and f32
-- optimizer state; statistics that need the range (RMSNorm's rstd, attention's lse, the
-- loss) stay f32. Both devices compute in it: CUDA's kernels read and write bf16/f16, the
-- CPU's convert to f32, compute and round back (src/ops/lowp.h). model:to("cpu") goes back
-- to f32 (call this again after the move to keep low precision on the host).
function Module:set_compute_dtype(dtype)
    local dt = dtype
    if dt == "float32" or dt == "float" then dt = "f32" end
    if dt == "bfloat16" then dt = "bf16" end
    if dt == "float16" or dt == "half" then dt = "f16" end
    if not COMPUTE_DTYPES[dt] then
        error(("set_compute_dtype: dtype must be \"f32\", \"bf16\" or \"f16\", got %s"):format(
            tostring(dtype)), 2)
    end
    for _, m in ipairs(self:modules()) do
        m:free_buffers()
        m._act_dtype = dt ~= "f32" and dt or nil
    end
    return self
end

-- The dtype activations are computed in: "f32" unless set_compute_dtype said otherwise.
function Module:compute_dtype() return self._act_dtype or "f32" end

-- ---- devices -------------------------------------------------------------------------

-- The device of this module's parameters: "cpu" or "cuda:N".
function Module:device() return self._device or "cpu" end

-- Move every parameter and gradient (and what modules keep besides, through their
-- _move_extras hook) to `device` ("cpu", "cuda", "cuda:1"), in place: the Module, its
-- parameter records and the parameter and gradient tensors themselves stay the same
-- objects (their headers are re-pointed at the new storage), and flat parameter buffers
-- move whole, their parameters still views into them. Buffers are released and come back
-- on the new device at the next forward. An optimizer's state stays where it was made:
-- build the optimizer after moving.
function Module:to(device)
    local devt, devi = core.parse_device(device)
    local dev = core.device_string(devt, devi)
    local moved = {} -- tensor -> true once re-pointed (tied parameters and shared gradients move once)
    -- flat buffers first: their views are re-pointed into the moved buffer
    for _, g in ipairs(rawget(self, "_flat") or {}) do
        for _, which in ipairs({ "params", "grads" }) do
            local buf = g[which]
            if buf and buf.device ~= dev then
                local nb = buf:to(dev)
                for _, e in ipairs(g.entries) do
                    local t = which == "params" and e.record.param or e.record.grad
                    local v = nb:narrow(1, e.offset + 1, e.numel):view(t:shape())
                    t:set_(v)
                    v:free()
                    moved[t] = true
                end
                buf:set_(nb)
                nb:free()
            end
        end
        g.device = dev
        g.key = ("%s:%s:%s"):format(g.dtype, dev, g.trainable and "trainable" or "frozen")
    end
    local function move(t)
        if t == nil then return nil end
        if not moved[t] then
            local n = t:to(dev)
            if n ~= t then
                t:set_(n)
                n:free()
            end
            moved[t] = true
        end
        return t
    end
    for _, m in ipairs(self:modules()) do
        m:free_buffers()
        for _, name in ipairs(m._param_names) do
            local p = move(m._params[name])
            m._params[name] = p
            m[name] = p
            if m._grads[name] then m._grads[name] = move(m._grads[name]) end
        end
        if m._move_extras then m:_move_extras(dev, move) end
        m._device = dev ~= "cpu" and dev or nil
        -- back on the host, back to f32: a model that leaves its device for the host is
        -- usually being evaluated or saved there (set_compute_dtype again to train in bf16)
        if dev == "cpu" then m._act_dtype = nil end
    end
    return self
end

local view_sizes = require("ffi").new("int64_t[?]", C.LT_MAX_DIMS)

-- A view of src with `shape` in a header this module keeps under `name`.
function Module:view_of(name, src, shape)
    local v = self._views[name]
    if v == nil then
        v = tensor.new_header()
        self._views[name] = v
    end
    for i = 1, #shape do view_sizes[i - 1] = shape[i] end
    check(C.lt_tensor_reshape(v, src, #shape, view_sizes))
    return v
end

-- Release every owned buffer and view (memory comes back now, not at the next GC).
function Module:free_buffers()
    for _, b in pairs(self._buffers) do b:free() end
    for _, v in pairs(self._views) do v:free() end
    for _, c in ipairs(self:children()) do c:free_buffers() end
end

-- ---- defaults ------------------------------------------------------------------------

-- forward(input) and backward(input, grad_output): every module defines its own.
function Module:forward()
    error(self.__name .. ":forward is not implemented", 2)
end

function Module:backward()
    error(self.__name .. ":backward is not implemented", 2)
end


function Module:__tostring()
    local lines = {}
    local function walk(m, name, indent)
        local desc = m.extra_repr and m:extra_repr() or ""
        lines[#lines + 1] = ("%s%s%s%s"):format(indent, name and (name .. ": ") or "", m.__name,
            desc ~= "" and ("(" .. desc .. ")") or "")
        for _, n in ipairs(m._child_names) do walk(m._children[n], n, indent .. "  ") end
    end
    walk(self, nil, "")
    return table.concat(lines, "\n")
end

-- ---- containers ----------------------------------------------------------------------

-- Modules applied in order; backward runs them in reverse with each one's saved input.
local Sequential = Module:extend("Sequential")

function Sequential:init(...)
    local mods = select("#", ...) == 1 and type((...)) == "table" and not (...).forward and ... or { ... }
    for i, m in ipairs(mods) do self:add_module(i - 1, m) end
end

function Sequential:add(m)
    return self:add_module(#self._child_names, m)
end

function Sequential:forward(input)
    self._inputs = self._inputs or {}
    local x = input
    for i, m in ipairs(self:children()) do
        self._inputs[i] = x
        x = m:forward(x)
    end
    self.output = x
    return x
end

function Sequential:backward(_, grad_output)
    local kids = self:children()
    local g = grad_output
    for i = #kids, 1, -1 do
        g = kids[i]:backward(self._inputs[i], g)
    end
    self.grad_input = g
    return g
end

-- A list of modules named "0", "1", ... (Hugging Face's layer numbering), run by its owner.
local ModuleList = Module:extend("ModuleList")

function ModuleList:init(mods)
    for i, m in ipairs(mods or {}) do self:add_module(i - 1, m) end
end

function ModuleList:append(m) return self:add_module(#self._child_names, m) end
function ModuleList:get(i) return self._children[tostring(i - 1)] end
function ModuleList:len() return #self._child_names end

return { Module = Module, Sequential = Sequential, ModuleList = ModuleList }
