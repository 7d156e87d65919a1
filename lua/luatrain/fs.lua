--[[
fs.lua - file-system helpers over the C core: directories, atomic writes, the clock.
]]
local core = require "luatrain.core"

local C, check = core.C, core.check

local M = {}

function M.make_dirs(path) check(C.lt_make_dirs(path)) end

-- Write text to path atomically (temporary file, fsync, rename).
function M.write_atomic(path, text) check(C.lt_write_file_atomic(path, text, #text)) end

function M.exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

-- Seconds on a monotonic clock.
function M.now() return C.lt_now() end

return M
