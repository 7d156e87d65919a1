--[[
json.lua - JSON for the Lua side (config.json, adapter_config.json, JSONL logs).

json.decode(text [, name]) -> value. Objects become tables, arrays become sequences with
json.is_array(t) true, null becomes json.null. A malformed document raises an error naming
`name`, the line and column, and what was expected. Nesting deeper than 512 is an error.
json.encode(value [, {indent = 2, sort_keys = true}]) -> text. Keys are sorted by default
so output is deterministic; non-finite numbers are an error (JSON has none).
]]
local M = {}

M.null = setmetatable({}, { __tostring = function() return "null" end })
local array_mt = { __json_array = true }

function M.is_array(t) return getmetatable(t) == array_mt end
function M.array(t) return setmetatable(t or {}, array_mt) end

local MAX_DEPTH = 512

local function position(text, i)
    local line, col = 1, 1
    for j = 1, i - 1 do
        if text:byte(j) == 10 then
            line, col = line + 1, 1
        else
            col = col + 1
        end
    end
    return line, col
end

function M.decode(text, name)
    if type(text) ~= "string" then error("json.decode: expected a string", 2) end
    name = name or "JSON"
    local i = 1
    local n = #text

    local function fail(msg)
        local line, col = position(text, i)
        error(("%s:%d:%d: %s"):format(name, line, col, msg), 0)
    end

    local function skip()
        while i <= n do
            local c = text:byte(i)
            if c == 32 or c == 9 or c == 10 or c == 13 then i = i + 1 else break end
        end
    end

    local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

    local function utf8(cp)
        if cp < 0x80 then return string.char(cp) end
        if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
        if cp < 0x10000 then
            return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
        end
        return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
            0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
    end

    local function parse_string()
        i = i + 1 -- opening quote
        local parts = {}
        local start = i
        while true do
            if i > n then fail("unterminated string") end
            local c = text:byte(i)
            if c == 34 then
                parts[#parts + 1] = text:sub(start, i - 1)
                i = i + 1
                return table.concat(parts)
            elseif c == 92 then
                parts[#parts + 1] = text:sub(start, i - 1)
                local e = text:sub(i + 1, i + 1)
                if e == "u" then
                    local hex = text:sub(i + 2, i + 5)
                    if not hex:match("^%x%x%x%x$") then fail("bad \\u escape") end
                    local cp = tonumber(hex, 16)
                    i = i + 6
                    if cp >= 0xD800 and cp <= 0xDBFF and text:sub(i, i + 1) == "\\u" then
                        local lo = tonumber(text:sub(i + 2, i + 5), 16)
                        if lo and lo >= 0xDC00 and lo <= 0xDFFF then
                            cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
                            i = i + 6
                        end
                    end
                    parts[#parts + 1] = utf8(cp)
                elseif escapes[e] then
                    parts[#parts + 1] = escapes[e]
                    i = i + 2
                else
                    fail("bad escape \\" .. e)
                end
                start = i
            elseif c < 32 then
                fail("control character in string")
            else
                i = i + 1
            end
        end
    end

    local parse_value

    local function parse_number()
        local s, e = text:find("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
        if not s then fail("bad number") end
        local str = text:sub(s, e)
        if str:match("^-?0%d") then fail("leading zero in number") end
        local v = tonumber(str)
        if v == nil then fail("bad number '" .. str .. "'") end
        i = e + 1
        return v
    end

    function parse_value(depth)
        if depth > MAX_DEPTH then fail("nesting deeper than " .. MAX_DEPTH) end
        skip()
        if i > n then fail("unexpected end of input") end
        local c = text:sub(i, i)
        if c == "{" then
            i = i + 1
            local obj = {}
            skip()
            if text:sub(i, i) == "}" then
                i = i + 1
                return obj
            end
            while true do
                skip()
                if text:sub(i, i) ~= '"' then fail("expected a string key") end
                local key = parse_string()
                skip()
                if text:sub(i, i) ~= ":" then fail("expected ':' after key \"" .. key .. "\"") end
                i = i + 1
                if obj[key] ~= nil then fail("duplicate key \"" .. key .. "\"") end
                obj[key] = parse_value(depth + 1)
                skip()
                local d = text:sub(i, i)
                i = i + 1
                if d == "}" then return obj end
                if d ~= "," then
                    i = i - 1
                    fail("expected ',' or '}' in object")
                end
            end
        elseif c == "[" then
            i = i + 1
            local arr = M.array({})
            skip()
            if text:sub(i, i) == "]" then
                i = i + 1
                return arr
            end
            while true do
                arr[#arr + 1] = parse_value(depth + 1)
                skip()
                local d = text:sub(i, i)
                i = i + 1
                if d == "]" then return arr end
                if d ~= "," then
                    i = i - 1
                    fail("expected ',' or ']' in array")
                end
            end
        elseif c == '"' then
            return parse_string()
        elseif c == "-" or c:match("%d") then
            return parse_number()
        elseif text:sub(i, i + 3) == "true" then
            i = i + 4
            return true
        elseif text:sub(i, i + 4) == "false" then
            i = i + 5
            return false
        elseif text:sub(i, i + 3) == "null" then
            i = i + 4
            return M.null
        end
        fail("unexpected character '" .. c .. "'")
    end

    local v = parse_value(1)
    skip()
    if i <= n then fail("trailing characters after the document") end
    return v
end

local function encode_string(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        local map = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
            ["\b"] = "\\b", ["\f"] = "\\f" }
        return map[c] or string.format("\\u%04x", c:byte())
    end) .. '"'
end

local function is_sequence(t)
    if M.is_array(t) then return true end
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    return n > 0 and n == #t
end

function M.encode(v, opts)
    opts = opts or {}
    local indent = opts.indent
    local sort = opts.sort_keys ~= false
    local out = {}
    local function enc(x, level, path)
        local t = type(x)
        if x == M.null or x == nil then
            out[#out + 1] = "null"
        elseif t == "boolean" then
            out[#out + 1] = tostring(x)
        elseif t == "number" then
            if x ~= x or x == math.huge or x == -math.huge then
                error(("json.encode: %s is %s, which JSON cannot represent"):format(path, tostring(x)), 0)
            end
            if x == math.floor(x) and math.abs(x) < 1e15 then
                out[#out + 1] = string.format("%d", x)
            else
                out[#out + 1] = string.format("%.17g", x)
            end
        elseif t == "string" then
            out[#out + 1] = encode_string(x)
        elseif t == "table" then
            local nl = indent and ("\n" .. string.rep(" ", indent * (level + 1))) or ""
            local close = indent and ("\n" .. string.rep(" ", indent * level)) or ""
            if is_sequence(x) then
                if #x == 0 then
                    out[#out + 1] = "[]"
                    return
                end
                out[#out + 1] = "["
                for k = 1, #x do
                    out[#out + 1] = (k > 1 and "," or "") .. nl
                    enc(x[k], level + 1, path .. "[" .. k .. "]")
                end
                out[#out + 1] = close .. "]"
            else
                local keys = {}
                for k in pairs(x) do
                    if type(k) ~= "string" then
                        error(("json.encode: %s has a non-string key %s"):format(path, tostring(k)), 0)
                    end
                    keys[#keys + 1] = k
                end
                if sort then table.sort(keys) end
                if #keys == 0 then
                    out[#out + 1] = "{}"
                    return
                end
                out[#out + 1] = "{"
                for idx, k in ipairs(keys) do
                    out[#out + 1] = (idx > 1 and "," or "") .. nl .. encode_string(k) .. (indent and ": " or ":")
                    enc(x[k], level + 1, path .. "." .. k)
                end
                out[#out + 1] = close .. "}"
            end
        else
            error(("json.encode: %s is a %s"):format(path, t), 0)
        end
    end
    enc(v, 0, "value")
    return table.concat(out)
end

-- Read and decode a whole file; errors name the file.
function M.read_file(path)
    local f, err = io.open(path, "rb")
    if not f then error(("cannot open %s: %s"):format(path, err), 0) end
    local text = f:read("*a")
    f:close()
    return M.decode(text, path)
end

return M
