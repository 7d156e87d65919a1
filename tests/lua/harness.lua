--[[
harness.lua - the Lua tests' assertions and summary.

    package.path = "tests/lua/?.lua;" .. package.path
    local T = require "harness"
    T.test("views share storage", function()
        T.eq(x:t():shape(), {3, 2})
    end)
    T.done()   -- prints "N passed, N failed" and exits nonzero on failure

Each T.test runs in pcall: a failing assertion or error fails that test and the file goes
on. Assertions raise with the caller's position.
]]
local lt = require "luatrain"

local T = { passed = 0, failed = 0, current = nil }

local function fmt(v)
    if type(v) == "table" then
        local parts = {}
        for i = 1, #v do parts[i] = fmt(v[i]) end
        return "{" .. table.concat(parts, ", ") .. "}"
    end
    return tostring(v)
end

local function deep_eq(a, b)
    if type(a) ~= type(b) then return false end
    if type(a) ~= "table" then return a == b end
    if #a ~= #b then return false end
    for k, v in pairs(a) do
        if not deep_eq(v, b[k]) then return false end
    end
    for k in pairs(b) do
        if a[k] == nil then return false end
    end
    return true
end

function T.test(name, fn)
    T.current = name
    local ok, err = xpcall(fn, debug.traceback)
    if ok then
        T.passed = T.passed + 1
    else
        T.failed = T.failed + 1
        io.stderr:write(("FAIL %s: %s\n"):format(name, tostring(err)))
    end
    T.current = nil
end

function T.ok(cond, msg)
    if not cond then error(msg or "assertion failed", 2) end
end

function T.eq(a, b, msg)
    if not deep_eq(a, b) then
        error(("%sexpected %s, got %s"):format(msg and (msg .. ": ") or "", fmt(b), fmt(a)), 2)
    end
end

-- |a - b| <= atol + rtol * |b|
function T.near(a, b, rtol, atol, msg)
    rtol, atol = rtol or 1e-6, atol or 0
    if not (math.abs(a - b) <= atol + rtol * math.abs(b)) then
        error(("%sexpected %.9g, got %.9g (rtol %g, atol %g)"):format(
            msg and (msg .. ": ") or "", b, a, rtol, atol), 2)
    end
end

-- fn must raise an error whose message matches the Lua pattern (plain find if plain).
function T.raises(fn, pattern, plain)
    local ok, err = pcall(fn)
    if ok then error("expected an error matching '" .. tostring(pattern) .. "'", 2) end
    err = tostring(err)
    if pattern and not err:find(pattern, 1, plain) then
        error(("error '%s' does not match '%s'"):format(err, pattern), 2)
    end
    return err
end

-- Largest |a - b| and the relative error ||a - b|| / ||b|| of two tensors (compared in f64).
function T.diff(a, b)
    local ta, tb = a:contiguous():float(), b:contiguous():float()
    if ta:numel() ~= tb:numel() then
        error(("tensor sizes differ: %d vs %d elements"):format(ta:numel(), tb:numel()), 2)
    end
    local pa = require("ffi").cast("float*", ta:data_ptr())
    local pb = require("ffi").cast("float*", tb:data_ptr())
    local maxabs, num, den = 0, 0, 0
    for i = 0, ta:numel() - 1 do
        local d = pa[i] - pb[i]
        if d ~= d then return math.huge, math.huge end
        local ad = math.abs(d)
        if ad > maxabs then maxabs = ad end
        num = num + d * d
        den = den + pb[i] * pb[i]
    end
    return maxabs, den > 0 and math.sqrt(num / den) or math.sqrt(num)
end

-- Tensors close elementwise: |a - b| <= atol + rtol * |b| everywhere.
function T.close(a, b, rtol, atol, msg)
    rtol, atol = rtol or 1e-5, atol or 1e-6
    T.eq(a:shape(), b:shape(), (msg and (msg .. ": ") or "") .. "shape")
    local ta, tb = a:contiguous():float(), b:contiguous():float()
    local ffi = require "ffi"
    local pa, pb = ffi.cast("float*", ta:data_ptr()), ffi.cast("float*", tb:data_ptr())
    for i = 0, ta:numel() - 1 do
        local x, y = pa[i], pb[i]
        if not (math.abs(x - y) <= atol + rtol * math.abs(y)) then
            error(("%selement %d: got %.9g, expected %.9g (rtol %g, atol %g)"):format(
                msg and (msg .. ": ") or "", i + 1, x, y, rtol, atol), 2)
        end
    end
end

-- Run a shell command; returns its combined output and exit code. (LuaJIT's popen:close()
-- does not report the exit status, so the command echoes it.)
function T.run(cmd)
    local p = io.popen(cmd .. ' 2>&1; echo "__exit=$?"')
    local text = p:read("*a")
    p:close()
    local code = tonumber(text:match("__exit=(%d+)%s*$"))
    return text:gsub("__exit=%d+%s*$", ""), code
end

-- The luatrain binary of the build under test: LT_BUILD_DIR's (set by ctest), else the
-- binary running this file.
function T.luatrain()
    local dir = os.getenv("LT_BUILD_DIR")
    if dir then return dir .. "/luatrain" end
    return arg and arg[-1] or "build/luatrain"
end

function T.shell_quote(s)
    return "'" .. s:gsub("'", "'\\''") .. "'"
end

function T.slurp(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

function T.write_file(path, text)
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
end

-- Run `program` (default: the luatrain binary) with a list of arguments and `stdin` text,
-- history off; returns the exit status, stdout and stderr.
function T.host(args, stdin, program)
    local inp, errf = os.tmpname(), os.tmpname()
    T.write_file(inp, stdin or "")
    local parts = { T.shell_quote(program or T.luatrain()) }
    for _, a in ipairs(args) do parts[#parts + 1] = T.shell_quote(a) end
    local cmd = ("LUATRAIN_HISTORY= %s <%s 2>%s; echo \"__rc=$?\""):format(
        table.concat(parts, " "), inp, errf)
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    local err = T.slurp(errf)
    os.remove(inp)
    os.remove(errf)
    local rc = tonumber(out:match("__rc=(%d+)%s*$"))
    return rc, (out:gsub("__rc=%d+%s*$", "")), err
end

function T.done()
    print(("%d passed, %d failed"):format(T.passed, T.failed))
    os.exit(T.failed == 0 and 0 or 1)
end

T.lt = lt
return T
