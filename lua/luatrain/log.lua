--[[
log.lua - run logs: JSONL records on disk and one compact line per step on the console.

    local log = lt.log.open("runs/x/log.jsonl")   -- nil path: console only
    log:write({ step = 1, loss = 2.3 })           -- one JSON object per line, flushed
    log:close()
]]
local json = require "luatrain.json"

local M = {}
local Log = {}
Log.__index = Log

function M.open(path)
    local self = setmetatable({ path = path }, Log)
    if path then
        local dir = path:match("^(.*)/[^/]*$")
        if dir then require("luatrain.fs").make_dirs(dir) end
        local f, err = io.open(path, "w")
        if not f then error(("cannot open log %s: %s"):format(path, err), 0) end
        self.file = f
    end
    return self
end

function Log:write(record)
    if self.file then
        self.file:write(json.encode(record), "\n")
        self.file:flush()
    end
end

function Log:close()
    if self.file then
        self.file:close()
        self.file = nil
    end
end

-- "step   10 | loss 2.3456 | lr 3.00e-04 | ..." from ordered {label, value, format} triples.
function M.line(fields)
    local parts = {}
    for i, f in ipairs(fields) do
        parts[i] = f[1] .. " " .. string.format(f[3] or "%s", f[2])
    end
    return table.concat(parts, " | ")
end

return M
