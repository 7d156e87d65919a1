--[[
test_cuda_loader.lua - the CUDA backend is a library of its own, loaded on first use
(ARCHITECTURE.md, contract 12; src/core/cuda_loader.c).

libluatrain.so links no CUDA library; a run that does CPU work never maps the CUDA
runtime, cuBLASLt or the backend; the first CUDA call maps them in a build that has a
backend and says "built without CUDA" in one that has none; a backend that cannot load
(LT_CUDA_LIBRARY naming a broken file, one built from other headers, a library without
the entry point) leaves lt.cuda.is_available() false and every CUDA call failing with the
reason, while CPU work goes on. Runs in both builds; the cases that need a backend say
"skip" in the CPU-only one.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = T.lt

local BUILD = os.getenv("LT_BUILD_DIR") or "build"
local BACKEND = BUILD .. "/libluatrain_cuda.so"
local FAKES = BUILD .. "/tests/libfake_cuda_backend_"
-- file names only: the source tree's own path may contain "cuda"
local CUDA_LIBS = { "libcudart", "libcublasLt", "libcublas.", "libluatrain_cuda" }

local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end
local has_backend = exists(BACKEND)

local function cuda_libs_in(text)
    local found = {}
    for _, name in ipairs(CUDA_LIBS) do
        if text:find(name, 1, true) then found[#found + 1] = name end
    end
    return found
end

local function has(s, needle) return s:find(needle, 1, true) ~= nil end

T.test("libluatrain.so links no CUDA library", function()
    local out, code = T.run("ldd " .. T.shell_quote(BUILD .. "/libluatrain.so"))
    T.eq(code, 0, out)
    T.ok(has(out, "libc.so"), out)
    T.eq(cuda_libs_in(out), {}, "CUDA libraries ldd lists")
    T.ok(not has(out, "libcuda.so"), out)
end)

-- This must run before anything in this process asks for a GPU.
T.test("CPU work maps no CUDA library", function()
    lt.manual_seed(3)
    local x = lt.randn(33, 17)
    local y = x:matmul(x:t()):sum()
    T.ok(y:item() == y:item(), "a number")
    local q = lt.quant.quantize(lt.randn(4, 64), { type = "nf4" })
    T.eq(q:dequantize():shape(), { 4, 64 })
    -- reading device memory statistics is not using a GPU
    T.eq(lt.memory.stats("cuda:0").current, 0)
    T.eq(cuda_libs_in(T.slurp("/proc/self/maps")), {}, "CUDA libraries mapped")
end)

T.test("the first CUDA call loads the backend, once", function()
    local n = lt.cuda.device_count()
    local maps = T.slurp("/proc/self/maps")
    if has_backend then
        T.ok(has(maps, "libluatrain_cuda.so"), "the backend is not mapped")
        T.ok(has(maps, "libcudart"), "the CUDA runtime is not mapped")
        T.eq(lt.cuda.device_count(), n)
        T.eq(lt.cuda.is_available(), n > 0)
    else
        T.eq(n, 0)
        T.eq(lt.cuda.is_available(), false)
        T.eq(cuda_libs_in(maps), {}, "CUDA libraries mapped")
        T.raises(function() lt.cuda.device_info(0) end, "built without CUDA", true)
        T.raises(function() lt.zeros(2, { device = "cuda" }) end, "built without CUDA", true)
    end
end)

-- `luatrain -e code` with LT_CUDA_LIBRARY set (nil: unset); returns its output.
local CHILD = [[
local lt = require "luatrain"
print("available", lt.cuda.is_available(), lt.cuda.device_count())
local ok, err = pcall(lt.zeros, 2, { device = "cuda" })
print("zeros", ok, err)
ok, err = pcall(lt.cuda.set_device, 0)
print("set_device", ok, err)
print("cpu", lt.ones(3, 4):sum():item(), lt.randn(8, 5):matmul(lt.ones(5, 2)):shape()[1])
]]
local function child(library, code)
    local env = library and ("LT_CUDA_LIBRARY=" .. T.shell_quote(library) .. " ") or ""
    local out, rc = T.run(env .. T.shell_quote(T.luatrain()) .. " -e " .. T.shell_quote(code or CHILD))
    T.eq(rc, 0, out)
    return out
end

-- A backend that cannot be used: nothing available, every CUDA call says `why`, CPU fine.
local function refused(library, why)
    local out = child(library)
    T.ok(has(out, "available\tfalse\t0\n"), out)
    T.ok(out:match("zeros\tfalse\t[^\n]*" .. why), out)
    T.ok(out:match("set_device\tfalse\t[^\n]*" .. why), out)
    T.ok(has(out, "cpu\t12\t8\n"), out)
    return out
end

T.test("LT_CUDA_LIBRARY naming a file that is not a library: CUDA runtime not found", function()
    local junk = os.tmpname()
    T.write_file(junk, "this is not a shared library\n")
    local out = refused(junk, "CUDA runtime not found")
    os.remove(junk)
    T.ok(has(out, junk), "the message names the file: " .. out)
end)

T.test("LT_CUDA_LIBRARY naming no file: CUDA runtime not found, with the loader's reason", function()
    local out = refused("/nonexistent/libluatrain_cuda.so", "CUDA runtime not found")
    T.ok(has(out, "No such file"), out)
end)

T.test("a backend built from other headers is refused", function()
    local path = FAKES .. "old_version.so"
    T.ok(exists(path), path .. " is not built")
    local out = refused(path, "built from other headers")
    T.ok(has(out, "rebuild both"), out)
end)

T.test("a library without the entry point is refused", function()
    local path = FAKES .. "no_entry.so"
    T.ok(exists(path), path .. " is not built")
    refused(path, "is not a luatrain CUDA backend")
end)

T.test("LT_CUDA_LIBRARY naming the real backend loads it", function()
    if not has_backend then return print("skip: real backend (a build without CUDA)") end
    local out = child(BACKEND, [[
local lt = require "luatrain"
local n = lt.cuda.device_count()
local maps = io.open("/proc/self/maps"):read("*a")
print("mapped", maps:find("libluatrain_cuda.so", 1, true) ~= nil, n >= 0)
]])
    T.ok(has(out, "mapped\ttrue\ttrue\n"), out)
end)

T.test("the backend exports its entry point and no lt_ symbol else", function()
    if not has_backend then return print("skip: backend symbols (a build without CUDA)") end
    local out, rc = T.run("nm -D --defined-only " .. T.shell_quote(BACKEND))
    if rc == 127 then return print("skip: backend symbols (no nm)") end
    T.eq(rc, 0, out)
    local lt_syms = {}
    for name in out:gmatch("%s[A-Za-z]%s+([%w_]+)\n") do
        if name:match("^lt_") then lt_syms[#lt_syms + 1] = name end
    end
    T.eq(lt_syms, { "lt_cuda_backend_api" })
end)

T.test("an install tree puts the backend beside libluatrain.so and loads it from there", function()
    if not has_backend then return print("skip: installed backend (a build without CUDA)") end
    local has_cmake = os.execute("command -v cmake >/dev/null 2>&1")
    if has_cmake ~= 0 and has_cmake ~= true then return print("skip: installed backend (no cmake)") end
    local prefix = os.tmpname()
    os.remove(prefix)
    local out, rc = T.run(("cmake --install %s --prefix %s"):format(T.shell_quote(BUILD),
        T.shell_quote(prefix)))
    T.eq(rc, 0, out)
    out, rc = T.run(T.shell_quote(prefix .. "/bin/luatrain") .. " -e " .. T.shell_quote([[
require("luatrain").cuda.device_count()
print("backend " .. io.open("/proc/self/maps"):read("*a"):match("%S*libluatrain_cuda%.so"))
]]))
    os.execute("rm -rf " .. T.shell_quote(prefix))
    T.eq(rc, 0, out)
    local loaded = out:match("backend (%S+)")
    T.ok(loaded and loaded:sub(1, #prefix + 1) == prefix .. "/", "loaded from " .. tostring(loaded))
end)

T.done()
