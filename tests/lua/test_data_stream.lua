--[[
test_data_stream.lua - a tokenized dataset streams to disk while it is built. Here: the
spool (lt_spool) that writes its files commits whole or not at all, and an unnamed one is
never visible.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local ffi = require "ffi"

local core = require "luatrain.core"
local tensor = require "luatrain.tensor"
local C = core.C

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    lt.fs.make_dirs(d)
    return d
end

-- Names in a folder, hidden ones included, sorted.
local function list(dir)
    local p = io.popen("ls -A " .. T.shell_quote(dir))
    local names = {}
    for l in p:lines() do names[#names + 1] = l end
    p:close()
    table.sort(names)
    return names
end

local function file_size(path)
    local f = assert(io.open(path, "rb"))
    local n = f:seek("end")
    f:close()
    return n
end

-- ---- the spool -----------------------------------------------------------------------------

local function spool_open(path, tmp_dir)
    local h = ffi.new("lt_spool*[1]")
    core.check(C.lt_spool_open(h, path, tmp_dir))
    return h[0]
end

T.test("spool: a named file appears whole at finish, or not at all", function()
    local dir = tmpdir()
    local path = dir .. "/x.i64"
    local s = spool_open(path)
    local v = ffi.new("int64_t[3]", 5, 6, 2 ^ 40)
    core.check(C.lt_spool_write(s, v, 16))
    core.check(C.lt_spool_write(s, v + 2, 8))
    T.eq(tonumber(C.lt_spool_size(s)), 24)
    T.eq(list(dir)[1]:match("^%.x%.i64%.tmp%-") ~= nil, true, "written under a temporary name")
    local t = tensor.new_header()
    core.check(C.lt_spool_finish(s, t, C.LT_DTYPE_I64))
    T.eq(list(dir), { "x.i64" })
    T.eq(t:totable(), { 5, 6, 2 ^ 40 })
    t:free()
    -- a size that is not whole elements commits nothing; the old file stays
    local s2 = spool_open(path)
    core.check(C.lt_spool_write(s2, v, 12))
    local t2 = tensor.new_header()
    T.eq(C.lt_spool_finish(s2, t2, C.LT_DTYPE_I64) ~= 0, true)
    T.ok(core.last_error():find("12 bytes is not a whole number of i64 elements", 1, true), core.last_error())
    T.eq(list(dir), { "x.i64" })
    T.eq(file_size(path), 24)
    -- abort leaves the old file too
    local s3 = spool_open(path)
    core.check(C.lt_spool_write(s3, v, 8))
    C.lt_spool_abort(s3)
    T.eq(list(dir), { "x.i64" })
    T.eq(file_size(path), 24)
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("spool: an unnamed file is never visible and maps whole", function()
    local dir = tmpdir()
    local s = spool_open(nil, dir)
    T.eq(list(dir), {})
    local v = ffi.new("int32_t[4]", 1, -2, 3, 123456789)
    core.check(C.lt_spool_write(s, v, 16))
    local t = tensor.new_header()
    core.check(C.lt_spool_finish(s, t, C.LT_DTYPE_I32))
    local p = ffi.cast("int32_t*", t:data_ptr())
    T.eq({ t:numel(), p[0], p[1], p[2], p[3] }, { 4, 1, -2, 3, 123456789 }, "exact (not through f32)")
    T.eq(list(dir), {})
    t:free()
    local h = ffi.new("lt_spool*[1]")
    T.ok(C.lt_spool_open(h, nil, dir .. "/nope") ~= 0)
    T.ok(core.last_error():find("cannot create a temporary file in " .. dir .. "/nope", 1, true), core.last_error())
    local s2 = spool_open(nil, dir)
    T.ok(C.lt_spool_write(s2, nil, 4) ~= 0)
    T.ok(core.last_error():find("temporary file in " .. dir .. ": write from NULL", 1, true), core.last_error())
    C.lt_spool_abort(s2)
    T.eq(list(dir), {})
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.done()
