--[[
recipes.lua - where the bundled recipes and their assets are (lt.recipes).

    lt.recipes.dir()                    -- the recipes folder: beside lua/ in the source tree,
                                        -- share/luatrain/recipes in an install
    lt.recipes.list()                   -- { { name, path, summary }, ... } sorted by name
    local here = lt.recipes.here()      -- the folder of the file that calls it
    lt.recipes.path(here .. "/assets")  -- relative to the working directory when it is
                                        -- inside it, else absolute

A recipe finds its assets beside its own file, so it runs from any working directory.
]]
local ffi = require "ffi"

local M = {}

pcall(ffi.cdef, [[
char *realpath(const char *path, char *resolved);
char *getcwd(char *buf, size_t size);
]])
local buf = ffi.new("char[4096]")

local function real(p)
    local r = ffi.C.realpath(p, buf)
    return r ~= nil and ffi.string(r) or nil
end

local function cwd()
    local r = ffi.C.getcwd(buf, 4096)
    return r ~= nil and ffi.string(r) or nil
end

-- p relative to the working directory when it is inside it, else absolute; p itself when
-- it does not exist.
function M.path(p)
    local r = real(p)
    if not r then return p end
    local c = cwd()
    if c and r:sub(1, #c + 1) == c .. "/" then return r:sub(#c + 2) end
    if c and r == c then return "." end
    return r
end

-- The folder of the file calling here() (level 2 by default).
function M.here(level)
    local src = debug.getinfo(level or 2, "S").source
    local file = src:match("^@(.*)$")
    if not file then return "." end
    return file:match("^(.*)/[^/]*$") or "."
end

-- The bundled recipes folder: lua/'s sibling (this file is lua/luatrain/recipes.lua).
function M.dir()
    local lua = debug.getinfo(1, "S").source:match("^@(.*)/luatrain/recipes%.lua$") or "lua"
    return M.path((real(lua) or lua) .. "/../recipes")
end

-- The bundled recipes: name, path and the first line of each file's header.
function M.list()
    local fs = require "luatrain.fs"
    local dir = M.dir()
    local out = {}
    if not fs.is_dir(dir) then return out end
    for _, e in ipairs(fs.list(dir)) do
        local name = e.name:match("^(.-)%.lua$")
        if name and e.kind == "file" then
            local f = io.open(dir .. "/" .. e.name, "r")
            local head = f and f:read(600) or ""
            if f then f:close() end
            local summary = head:match("^%-%-%[%[%s*[%w_%.]+%s+%-%s+([^\n]*)") or ""
            out[#out + 1] = { name = name, path = dir .. "/" .. e.name, summary = summary }
        end
    end
    table.sort(out, function(a, b) return a.name < b.name end)
    return out
end

return M
