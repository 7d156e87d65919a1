--[[
test_abi.lua - the FFI sees every public struct exactly as the C compiler lays it out.

abi_dump (generated from the headers by tools/gen_cdef.lua --abi-c and compiled with the
core's flags) prints "struct size" and "struct.field offset" lines; each must equal what
ffi.sizeof / ffi.offsetof report for the generated cdef. The staleness of the cdef itself
is the ctest `cdef_fresh`.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
require "luatrain"
local ffi = require "ffi"

local dump = os.getenv("LT_ABI_DUMP") or ((os.getenv("LT_BUILD_DIR") or "build") .. "/tests/abi_dump")

T.test("struct sizes and field offsets match the C compiler", function()
    local text, code = T.run(dump)
    T.eq(code, 0, "abi_dump failed: " .. text)
    local structs, fields = 0, 0
    for line in text:gmatch("[^\n]+") do
        local sname, field, value = line:match("^([%w_]+)%.([%w_]+) (%d+)$")
        if sname then
            T.eq(ffi.offsetof(sname, field), tonumber(value), sname .. "." .. field .. " offset")
            fields = fields + 1
        else
            local name, size = line:match("^([%w_]+) (%d+)$")
            T.ok(name, "unexpected line: " .. line)
            T.eq(ffi.sizeof(name), tonumber(size), name .. " size")
            structs = structs + 1
        end
    end
    T.ok(structs >= 6 and fields >= 30, ("only %d structs / %d fields checked"):format(structs, fields))
end)

T.test("enum constants are visible to Lua", function()
    local C = require("luatrain.core").C
    T.eq(C.LT_DTYPE_COUNT, 7)
    T.eq(C.LT_MAX_DIMS, 8)
    T.eq(C.LT_ERR_INTERNAL, 10)
end)

T.done()
