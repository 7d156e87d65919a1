--[[
safetensors.lua - read and write .safetensors files (the Hugging Face weight format).

    local st = require "luatrain.safetensors"
    local tensors, meta = st.load("model.safetensors")   -- name -> Tensor, key -> value
    st.save("adapter.safetensors", { ["lora_A.weight"] = a }, { note = "step 100" })

    local f = st.open("model.safetensors")                -- lazy: one tensor at a time
    for _, name in ipairs(f:keys()) do print(name, f:get(name):shape()) end
    f:close()

Loaded tensors are zero-copy views on a private memory map of the file: nothing is read
until it is touched, writing to them never changes the file, and each keeps the map alive
after the file is closed. The C core checks every header strictly (src/lt_io.h); a bad file
raises an error naming the file, the tensor and the field.

Saving writes "format": "pt" metadata unless told otherwise, orders the tensors as the
reference writer does (dtype, then name), accepts any strides, and replaces the file
atomically: a failed save leaves the previous file as it was.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"

local C, check = core.C, core.check
local is_tensor = tensor.is_tensor

local M = {}

-- ---- reading --------------------------------------------------------------------------

local File = {}
File.__index = File

local function handle(self)
    local h = self._h
    if h == nil then error(("safetensors: %s is closed"):format(self.path), 3) end
    return h
end

local function check_path(path, fn)
    if type(path) ~= "string" then
        error(("safetensors.%s: path must be a string, got %s"):format(fn, type(path)), 3)
    end
end

-- A file object: :keys(), :get(name), :metadata(), :close(). The handle is closed by its
-- finaliser if :close() is never called.
function M.open(path)
    check_path(path, "open")
    local box = ffi.new("lt_safetensors*[1]")
    check(C.lt_safetensors_open(box, path))
    local h = ffi.gc(box[0], C.lt_safetensors_close)
    return setmetatable({ _h = h, path = path }, File)
end

-- Tensor names in the order of their data in the file.
function File:keys()
    local h = handle(self)
    local out = {}
    for i = 0, tonumber(C.lt_safetensors_count(h)) - 1 do
        out[i + 1] = ffi.string(C.lt_safetensors_name(h, i))
    end
    return out
end

local index_buf = ffi.new("int64_t[1]")

-- A view of the named tensor (raises "no tensor named ..." for an unknown name).
function File:get(name)
    local h = handle(self)
    if type(name) ~= "string" then
        error(("safetensors: tensor name must be a string, got %s"):format(type(name)), 2)
    end
    check(C.lt_safetensors_find(h, name, index_buf))
    local t = tensor.new_header()
    check(C.lt_safetensors_tensor(h, index_buf[0], t))
    return t
end

-- Hand the resident pages of the named tensor back to the file after it has been read
-- (copied, converted or quantized). Views of it that are still in use would see the file's
-- bytes again, so call this only once none is.
function File:drop_pages(name)
    local h = handle(self)
    check(C.lt_safetensors_find(h, name, index_buf))
    check(C.lt_safetensors_drop_pages(h, index_buf[0]))
end

-- The __metadata__ table (string -> string); empty when the file has none.
function File:metadata()
    local h = handle(self)
    local out = {}
    for i = 0, tonumber(C.lt_safetensors_metadata_count(h)) - 1 do
        out[ffi.string(C.lt_safetensors_metadata_key(h, i))] =
            ffi.string(C.lt_safetensors_metadata_value(h, i))
    end
    return out
end

-- Release the file's index now. Tensors already taken stay valid.
function File:close()
    local h = self._h
    if h == nil then return end
    self._h = nil
    ffi.gc(h, nil)
    C.lt_safetensors_close(h)
end

function File:__tostring()
    if self._h == nil then return ("<safetensors %s (closed)>"):format(self.path) end
    return ("<safetensors %s: %d tensors>"):format(self.path,
        tonumber(C.lt_safetensors_count(self._h)))
end

-- Every tensor (name -> Tensor) and the metadata (key -> value).
function M.load(path)
    check_path(path, "load")
    local f = M.open(path)
    local h = f._h
    local out = {}
    for i = 0, tonumber(C.lt_safetensors_count(h)) - 1 do
        local t = tensor.new_header()
        local st = C.lt_safetensors_tensor(h, i, t)
        if st ~= 0 then
            f:close()
            check(st)
        end
        out[ffi.string(C.lt_safetensors_name(h, i))] = t
    end
    local meta = f:metadata()
    f:close()
    return out, meta
end

-- ---- writing --------------------------------------------------------------------------

local function describe(v)
    if type(v) == "cdata" then return "a cdata of type " .. tostring(ffi.typeof(v)) end
    return "a " .. type(v)
end

-- (name, tensor) pairs from either form, checked; names sorted for a stable error order.
local function collect(tensors)
    if type(tensors) ~= "table" then
        error(("safetensors.save: tensors must be a table (name -> Tensor, or an array of " ..
            "{name, tensor} pairs), got %s"):format(describe(tensors)), 3)
    end
    local names, list = {}, {}
    if #tensors > 0 and type(tensors[1]) == "table" then
        for k in pairs(tensors) do
            if type(k) ~= "number" or k < 1 or k > #tensors or k ~= math.floor(k) then
                error(("safetensors.save: an array of {name, tensor} pairs must have only " ..
                    "entries 1..%d, found key %s"):format(#tensors, tostring(k)), 3)
            end
        end
        for i = 1, #tensors do
            local pair = tensors[i]
            if type(pair) ~= "table" or type(pair[1]) ~= "string" then
                error(("safetensors.save: entry %d must be a {name, tensor} pair"):format(i), 3)
            end
            names[i], list[i] = pair[1], pair[2]
        end
    else
        for k in pairs(tensors) do
            if type(k) ~= "string" then
                error(("safetensors.save: tensor names must be strings, got %s key %s"):format(
                    type(k), tostring(k)), 3)
            end
            names[#names + 1] = k
        end
        table.sort(names)
        for i, name in ipairs(names) do list[i] = tensors[name] end
    end
    for i, name in ipairs(names) do
        local t = list[i]
        if not is_tensor(t) then
            error(("safetensors.save: '%s' is %s, not a Tensor"):format(name, describe(t)), 3)
        end
        if t.storage == nil then
            error(("safetensors.save: '%s' is a released tensor"):format(name), 3)
        end
    end
    return names, list
end

-- Metadata pairs in key order (the file keeps this order).
local function collect_metadata(meta)
    if meta == nil then return {} end
    if type(meta) ~= "table" then
        error(("safetensors.save: metadata must be a table of strings, got %s"):format(
            describe(meta)), 3)
    end
    local keys = {}
    for k, v in pairs(meta) do
        if type(k) ~= "string" or type(v) ~= "string" then
            error(("safetensors.save: metadata must map strings to strings, got %s = %s"):format(
                tostring(k), describe(v)), 3)
        end
        keys[#keys + 1] = k
    end
    table.sort(keys)
    return keys
end

-- save(path, tensors [, metadata]). tensors: name -> Tensor, or an array of {name, tensor}
-- pairs; metadata: string -> string. Everything is checked before the file is touched.
-- The file's tensor order is the reference writer's whatever the form given.
function M.save(path, tensors, metadata)
    check_path(path, "save")
    local names, list = collect(tensors)
    local keys = collect_metadata(metadata)
    -- tensors on a device are written from host copies (made here, freed after the write)
    local copies = {}
    for i = 1, #list do
        local t = list[i]
        if tensor.is_tensor(t) and t.storage ~= nil and t.device ~= "cpu" then
            list[i] = t:cpu()
            copies[#copies + 1] = list[i]
        end
    end
    local n, m = #names, #keys
    local entries = ffi.new("lt_safetensors_entry[?]", math.max(n, 1))
    local kv = ffi.new("const char *[?]", math.max(2 * m, 1))
    -- The arrays now get pointers to Lua strings and tensors. Nothing below allocates before
    -- the call returns, so no garbage collection step can run while C holds those pointers.
    for i = 1, n do
        entries[i - 1].name = names[i]
        entries[i - 1].tensor = list[i]
    end
    for i = 1, m do
        kv[2 * i - 2] = keys[i]
        kv[2 * i - 1] = metadata[keys[i]]
    end
    local st = C.lt_safetensors_save(path, entries, n, kv, m)
    for _, c in ipairs(copies) do c:free() end
    check(st)
end

return M
