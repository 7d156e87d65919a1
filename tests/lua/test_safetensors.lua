-- test_safetensors.lua - luatrain.safetensors from Lua: round trips with metadata, zero-copy
-- views on a private mapping, strided and bf16 tensors, error messages for bad files and
-- bad arguments, and atomic saves that leave the old file in place when they fail.
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local st = require "luatrain.safetensors"
local ffi = require "ffi"
local C = require("luatrain.core").C

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "'"))
local function path(name) return dir .. "/" .. name end

local function read_file(p)
    local f = assert(io.open(p, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

local function write_file(p, s)
    local f = assert(io.open(p, "wb"))
    f:write(s)
    f:close()
end

-- A little-endian u64 as 8 bytes (exact for n < 2^53).
local function u64le(n)
    local b = {}
    for i = 1, 8 do
        b[i] = string.char(n % 256)
        n = math.floor(n / 256)
    end
    return table.concat(b)
end

-- Names of files in dir that the atomic writer would leave behind on a failure.
local function temp_files()
    local found = {}
    local p = io.popen("ls -a '" .. dir .. "'")
    for name in p:lines() do
        if name:find(".tmp-", 1, true) then found[#found + 1] = name end
    end
    p:close()
    return found
end

local function keys_of(t)
    local k = {}
    for name in pairs(t) do k[#k + 1] = name end
    table.sort(k)
    return k
end

T.test("round trip with metadata", function()
    local a = lt.randn(3, 4)
    local ids = lt.tensor({ { 1, -2, 3 }, { 2 ^ 40, 5, -6 } }, "i64")
    local bytes = lt.tensor({ 0, 7, 255 }, "u8")
    local scalar = lt.tensor(2.5)
    local empty = lt.zeros(0, 3)
    local p = path("rt.safetensors")
    st.save(p, { a = a, ids = ids, bytes = bytes, scalar = scalar, empty = empty },
        { note = "hello", step = "100" })
    local t, meta = st.load(p)
    T.eq(keys_of(t), { "a", "bytes", "empty", "ids", "scalar" })
    T.eq(meta, { note = "hello", step = "100", format = "pt" })
    T.ok(t.a:equal(a), "a")
    T.eq(t.ids.dtype, "i64")
    T.eq(t.ids:totable(), { { 1, -2, 3 }, { 2 ^ 40, 5, -6 } })
    T.eq(t.bytes.dtype, "u8")
    T.eq(t.bytes:totable(), { 0, 7, 255 })
    T.eq(t.scalar:shape(), {})
    T.eq(t.scalar:item(), 2.5)
    T.eq(t.empty:shape(), { 0, 3 })
    -- A given format is kept.
    st.save(p, { a = a }, { format = "np" })
    local _, meta2 = st.load(p)
    T.eq(meta2, { format = "np" })
end)

T.test("loaded tensors are zero-copy views on a private mapping", function()
    local p = path("view.safetensors")
    local x = lt.arange(12, { dtype = "f32" }):view(3, 4)
    st.save(p, { x = x })
    local before = read_file(p)
    local t = st.load(p)
    T.eq(t.x.storage.kind, C.LT_STORAGE_MAPPED)
    T.ok(t.x:is_contiguous())
    T.ok(t.x:equal(x))
    -- Writing through the view copies the page; the file is unchanged.
    t.x:fill_(-1)
    T.eq(t.x:get(5), -1)
    T.eq(read_file(p), before)
    local again = st.load(p)
    T.ok(again.x:equal(x), "reloaded values")
end)

T.test("drop_pages gives a read tensor's pages back; reading again gives the file's values", function()
    local p = path("drop.safetensors")
    -- big enough to span several pages, with a small neighbour on each side
    local big = lt.randn(64, 1024)
    st.save(p, { a = lt.randn(7), big = big, z = lt.randn(5) })
    local f = st.open(p)
    local v = f:get("big")
    local copy = v:clone()
    local a = f:get("a")
    local a_copy = a:clone()
    v:free()
    f:drop_pages("big")
    T.ok(f:get("big"):equal(big), "values come back from the file")
    T.ok(a:equal(a_copy), "the neighbour's bytes are untouched")
    T.ok(copy:equal(big))
    T.raises(function() f:drop_pages("nope") end, "no tensor named 'nope'", true)
    f:close()
    T.raises(function() f:drop_pages("big") end, "is closed", true)
end)

T.test("open: keys in file order, get, metadata, close", function()
    local p = path("open.safetensors")
    st.save(p, { w = lt.randn(2, 2), b = lt.randn(2), step = lt.tensor(3, "i64"),
        h = lt.randn(4):to("f16") }, { run = "x" })
    local f = st.open(p)
    -- The reference writer's order: I64, F32 (by name), F16.
    T.eq(f:keys(), { "step", "b", "w", "h" })
    T.eq(f:metadata(), { run = "x", format = "pt" })
    T.ok(tostring(f):find("4 tensors", 1, true))
    local w = f:get("w")
    T.raises(function() f:get("nope") end, "no tensor named 'nope'", true)
    T.raises(function() f:get(1) end, "tensor name must be a string", true)
    f:close()
    f:close() -- twice is harmless
    T.eq(w:shape(), { 2, 2 }) -- a view outlives its file
    T.ok(w:sum():item() == w:sum():item())
    T.raises(function() f:get("w") end, "is closed", true)
    T.raises(function() f:keys() end, "is closed", true)
    T.ok(tostring(f):find("closed", 1, true))
end)

T.test("saving a transposed (non-contiguous) tensor", function()
    local x = lt.randn(3, 5)
    local xt = x:t()
    T.ok(not xt:is_contiguous())
    local sliced = lt.randn(4, 6):slice(2, 1, 6, 2) -- (4, 3), stride 2
    local p = path("strided.safetensors")
    st.save(p, { xt = xt, sliced = sliced })
    local t = st.load(p)
    T.eq(t.xt:shape(), { 5, 3 })
    T.ok(t.xt:equal(xt), "transposed values")
    T.ok(t.sliced:equal(sliced), "sliced values")
end)

T.test("bf16 tensors", function()
    local x = lt.randn(24):view(4, 6):to("bf16")
    local p = path("bf16.safetensors")
    st.save(p, { w = x, wt = x:t() })
    local t = st.load(p)
    T.eq(t.w.dtype, "bf16")
    T.ok(t.w:equal(x), "bf16 values exact")
    T.ok(t.wt:equal(x:t()), "bf16 transposed")
    -- The file holds the raw bf16 bits.
    local raw = read_file(p)
    local hlen = raw:byte(1) + raw:byte(2) * 256
    local v = ffi.cast("const uint16_t*", C.lt_tensor_data(x:contiguous()))
    local first = raw:byte(9 + hlen) + raw:byte(10 + hlen) * 256
    T.eq(first, tonumber(v[0]))
end)

T.test("an array of {name, tensor} pairs", function()
    local a, b = lt.randn(2), lt.randn(3)
    local p = path("pairs.safetensors")
    st.save(p, { { "z", a }, { "y", b } })
    local t = st.load(p)
    T.ok(t.z:equal(a) and t.y:equal(b))
    T.raises(function() st.save(p, { { "z", a }, { "z", b } }) end, "tensor name 'z' given twice",
        true)
    T.raises(function() st.save(p, { { "z", a }, "y" }) end,
        "entry 2 must be a {name, tensor} pair", true)
end)

T.test("malformed files raise the C message", function()
    local p = path("bad.safetensors")
    local function bad(header, data)
        write_file(p, u64le(#header) .. header .. (data or ""))
    end
    bad('{"x.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}}', ("\0"):rep(12))
    local err = T.raises(function() st.load(p) end,
        "tensor 'x.weight': data_offsets [0, 12] hold 12 bytes but F32 (2, 3) needs 24", true)
    T.ok(err:sub(1, #p) == p, "the message starts with the path: " .. err)
    T.raises(function() st.open(p) end, "needs 24", true)
    bad('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' ..
        '"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}', ("\0"):rep(6))
    T.raises(function() st.load(p) end, "overlap tensor 'a'", true)
    bad("[1, 2]")
    T.raises(function() st.load(p) end, "header is an array, not a JSON object", true)
    bad('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}')
    T.raises(function() st.load(p) end, "shape entry 1 is -1, not a non-negative integer", true)
    bad('{"__metadata__":{"k":1}}')
    T.raises(function() st.load(p) end, "__metadata__: value of 'k' is a number, not a string",
        true)
    write_file(p, "\255\255\255\255\255\255\255\255{}")
    T.raises(function() st.load(p) end, "above the 100000000-byte limit", true)
    write_file(p, "abc")
    T.raises(function() st.load(p) end, "too short for the 8-byte header length", true)
    T.raises(function() st.load(path("missing.safetensors")) end, "cannot open", true)
    T.raises(function() st.load(42) end, "path must be a string", true)
end)

T.test("a failed save leaves the old file and no temporary file", function()
    local p = path("keep.safetensors")
    st.save(p, { w = lt.ones(3) })
    local old = read_file(p)
    local function unchanged(what)
        T.eq(read_file(p), old, what)
        T.eq(temp_files(), {}, what .. ": temporary files")
    end
    T.raises(function() st.save(p, { a = lt.randn(2), b = "oops" }) end,
        "'b' is a string, not a Tensor", true)
    unchanged("non-tensor value")
    T.raises(function() st.save(p, { a = lt.randn(2), b = { 1, 2 } }) end,
        "'b' is a table, not a Tensor", true)
    unchanged("table value")
    local gone = lt.randn(2)
    gone:free()
    T.raises(function() st.save(p, { g = gone }) end, "'g' is a released tensor", true)
    unchanged("released tensor")
    T.raises(function() st.save(p, { lt.randn(2) }) end, "tensor names must be strings", true)
    unchanged("array of tensors")
    T.raises(function() st.save(p, { w = lt.ones(3) }, { n = 1 }) end,
        "metadata must map strings to strings", true)
    unchanged("non-string metadata")
    T.raises(function() st.save(p, { ["__metadata__"] = lt.ones(3) }) end, "reserved", true)
    unchanged("reserved name")
    T.raises(function() st.save(p, lt.ones(3)) end, "tensors must be a table", true)
    unchanged("a tensor, not a table")
    T.raises(function() st.save(dir .. "/no/such/dir/x.safetensors", { w = lt.ones(3) }) end,
        "cannot create a temporary file", true)
    -- A successful save replaces the file whole.
    st.save(p, { w = lt.zeros(5) })
    T.eq(st.load(p).w:shape(), { 5 })
    T.eq(temp_files(), {})
end)

T.test("saving over the file the views are mapped from", function()
    local p = path("inplace.safetensors")
    st.save(p, { w = lt.full({ 4 }, 1.5) })
    local t = st.load(p)
    st.save(p, { w = lt.full({ 4 }, 2.5) })
    T.eq(t.w:totable(), { 1.5, 1.5, 1.5, 1.5 }) -- the old mapping lives on
    T.eq(st.load(p).w:totable(), { 2.5, 2.5, 2.5, 2.5 })
end)

T.test("files from the reference fixtures load and save back with the same values", function()
    local fixtures = { "tests/fixtures/llama_tiny_mha/model.safetensors",
        "tests/fixtures/llama_tiny_mha_sharded_bf16/model-00001-of-00002.safetensors" }
    local seen = 0
    for _, fp in ipairs(fixtures) do
        local probe = io.open(fp, "rb")
        if probe then
            probe:close()
            seen = seen + 1
            local t, meta = st.load(fp)
            T.eq(meta.format, "pt")
            local out = path("resaved.safetensors")
            st.save(out, t, meta)
            local back = st.load(out)
            T.eq(keys_of(back), keys_of(t))
            for name, v in pairs(t) do T.ok(back[name]:equal(v), name) end
            T.eq(#read_file(out), #read_file(fp), "same size")
        end
    end
    if seen == 0 then print("fixture files absent; reference-file check skipped") end
end)

os.execute("rm -rf '" .. dir .. "'")
T.done()
