--[[
json.lua - JSON for the Lua side (config.json, adapter_config.json, state.json, JSONL logs
and datasets).

json.decode(text [, name]) -> value. Objects become tables, arrays become sequences with
json.is_array(t) true, null becomes json.null. The C core parses (src/io/json.c: a strict
check, then cJSON) and hands back the values as a flat list of nodes, which are turned into
tables here. Only RFC 8259 JSON is accepted (src/lt_io.h lists what is refused: invalid
UTF-8, lone surrogates, "01", text after the value, ...); a malformed document raises
"NAME:LINE:COL: what was expected", NAME being `name` or "JSON". Nesting deeper than 512
and a key given twice in one object are errors. Numbers beyond the double range read as
+-inf or 0, as Python's json reads them.

json.encode(value [, {indent = 2, sort_keys = true}]) -> text. Keys are sorted by default
so output is deterministic. An integral number below 2^53 in magnitude is written as an
integer; any other in the fewest significant digits that read back as the same double
(shortest round trip, as Python's repr), so decode(encode(x)) == x. Non-finite
numbers and strings that are not valid UTF-8 are errors naming where they are.
]]
local ffi = require "ffi"
local core = require "luatrain.core"

local C, check = core.C, core.check
local byte, find, format, gsub = string.byte, string.find, string.format, string.gsub
local floor, abs, frexp, huge = math.floor, math.abs, math.frexp, math.huge
local ffi_string = ffi.string
local ok_tnew, table_new = pcall(require, "table.new")
if not ok_tnew then table_new = function() return {} end end

local M = {}

M.null = setmetatable({}, { __tostring = function() return "null" end })
local array_mt = { __json_array = true }

function M.is_array(t) return getmetatable(t) == array_mt end
function M.array(t) return setmetatable(t or {}, array_mt) end

-- ---- decoding ---------------------------------------------------------------------------

local T_FALSE, T_TRUE = C.LT_JSON_FALSE, C.LT_JSON_TRUE
local T_NUMBER, T_STRING, T_ARRAY, T_OBJECT = C.LT_JSON_NUMBER, C.LT_JSON_STRING,
    C.LT_JSON_ARRAY, C.LT_JSON_OBJECT

local function new_doc()
    local p = ffi.new("lt_json_doc*[1]")
    check(C.lt_json_doc_new(p))
    return ffi.gc(p[0], C.lt_json_doc_free)
end

-- One document at a time is parsed into `shared`, whose buffers are reused. `busy` is set
-- while its nodes are being read: a decode that starts meanwhile (from a finaliser the
-- garbage collector runs) parses into a document of its own.
local shared = new_doc()
local busy = false
local nodes_out = ffi.new("const lt_json_node*[1]")
local count_out = ffi.new("int64_t[1]")

-- 1-based line and column (in bytes) of 0-based byte offset `at`, as the C side counts.
local function position(text, at)
    local before = text:sub(1, at)
    local _, newlines = gsub(before, "\n", "")
    local last = before:match(".*()\n")
    return newlines + 1, last and (at - last + 1) or (at + 1)
end

-- A key given twice: drop the document, then raise "NAME:LINE:COL: duplicate key".
local function duplicate(key, at, doc, text, name)
    local line, col = position(text, at)
    C.lt_json_doc_clear(doc)
    if doc == shared then busy = false end
    if #key > 64 then key = key:sub(1, 64) .. "..." end
    error(format("%s:%d:%d: duplicate key %q", name, line, col, key), 0)
end

-- The value at node i and the index of the node after it (and its children); doc, text and
-- name are for the duplicate-key message.
local function value(nodes, i, doc, text, name)
    local n = nodes[i]
    local t = n.type
    if t == T_STRING then return ffi_string(n.str, n.len), i + 1 end
    if t == T_NUMBER then return n.number, i + 1 end
    if t == T_OBJECT then
        local count = tonumber(n.len)
        local obj, j = table_new(0, count), i + 1
        for _ = 1, count do
            local m = nodes[j]
            local key = ffi_string(m.key, m.key_len)
            if obj[key] ~= nil then duplicate(key, tonumber(m.key_pos), doc, text, name) end
            obj[key], j = value(nodes, j, doc, text, name)
        end
        return obj, j
    end
    if t == T_ARRAY then
        local count = tonumber(n.len)
        local arr, j = setmetatable(table_new(count, 0), array_mt), i + 1
        for k = 1, count do arr[k], j = value(nodes, j, doc, text, name) end
        return arr, j
    end
    if t == T_TRUE then return true, i + 1 end
    if t == T_FALSE then return false, i + 1 end
    return M.null, i + 1
end

function M.decode(text, name)
    if type(text) ~= "string" then error("json.decode: expected a string", 2) end
    name = name and tostring(name) or "JSON"
    local doc = busy and new_doc() or shared
    check(C.lt_json_parse(doc, text, #text, name, nodes_out, count_out))
    local nodes = nodes_out[0]
    if doc == shared then busy = true end
    local v = value(nodes, 0, doc, text, name)
    C.lt_json_doc_clear(doc)
    if doc == shared then busy = false end
    return v
end

-- ---- encoding ---------------------------------------------------------------------------

local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
    ["\b"] = "\\b", ["\f"] = "\\f" }
local function escape(c) return escapes[c] or format("\\u%04x", byte(c)) end

-- 1-based index of the first byte of s that does not start a valid UTF-8 sequence (no
-- overlong forms, surrogates or code points above U+10FFFF, as the decoder requires), or nil.
local function utf8_fault(s)
    local i = find(s, "[\128-\255]")
    while i do
        local c = byte(s, i)
        local len, lo, hi
        lo, hi = 0x80, 0xBF
        if c >= 0xC2 and c <= 0xDF then
            len = 2
        elseif c >= 0xE0 and c <= 0xEF then
            len = 3
            if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
        elseif c >= 0xF0 and c <= 0xF4 then
            len = 4
            if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
        else
            return i
        end
        local c1 = byte(s, i + 1)
        if not c1 or c1 < lo or c1 > hi then return i end
        for k = 2, len - 1 do
            local ck = byte(s, i + k)
            if not ck or ck < 0x80 or ck > 0xBF then return i end
        end
        i = find(s, "[\128-\255]", i + len)
    end
    return nil
end

-- path: where s is (is_key: s is a key of the object there), for the message.
local function encode_string(s, path, is_key)
    local bad = utf8_fault(s)
    if bad then
        error(format("json.encode: %s%s is not valid UTF-8 (byte %d is 0x%02x)", is_key and "a key of " or "",
            path, bad, byte(s, bad)), 0)
    end
    return '"' .. gsub(s, '[%c"\\]', escape) .. '"'
end

local G = {}
for p = 1, 17 do G[p] = "%." .. p .. "g" end
local MIN_NORMAL = 2.2250738585072014e-308

-- The 16-digit decimal one step above x's nearest (in magnitude), as %.16g writes a number
-- with an exponent. A power of two reads back from twice as far above it as below, so
-- this one can read back when the nearest does not: 2^-1017 is 7.120236347223045e-307,
-- where %.16g gives ...044e-307, another double.
local function above16(x)
    local sign, lead, frac, exp = format("%.15e", x):match("^(%-?)(%d)%.(%d+)e([-+]%d+)$")
    local d = { byte(lead .. frac, 1, -1) }
    local i = #d
    while i > 0 and d[i] == 57 do -- '9' carries
        d[i] = 48
        i = i - 1
    end
    exp = tonumber(exp)
    if i == 0 then
        d[1], exp = 49, exp + 1
    else
        d[i] = d[i] + 1
    end
    local digits = string.char(unpack(d))
    local mant = (digits:sub(1, 1) .. "." .. digits:sub(2)):gsub("%.?0+$", "")
    return format("%s%se%s%02d", sign, mant, exp < 0 and "-" or "+", abs(exp))
end

-- The text of a finite number (see the top of the file).
local function encode_number(x)
    if x == floor(x) and abs(x) < 9007199254740992 then
        if x == 0 and 1 / x < 0 then return "-0" end
        return format("%d", x)
    end
    -- A normal double carries more than 15 significant digits, so %.15g already gives the
    -- fewest digits when at most 15 read back; a subnormal carries fewer. %.17g always reads
    -- back, and wins when fewer digits would need an exponent (19841818857864420 rather
    -- than 1.984181885786442e+16).
    local full = format(G[17], x)
    for p = abs(x) < MIN_NORMAL and 1 or 15, 16 do
        local s = format(G[p], x)
        if tonumber(s) == x then return #s <= #full and s or full end
    end
    -- Powers of two between 1e-4 and 1e16 have exact forms of at most 16 digits, so only
    -- those written with an exponent can need the decimal above the nearest.
    if abs(frexp(x)) == 0.5 and (abs(x) < 1e-4 or abs(x) >= 1e16) then
        local s = above16(x)
        if tonumber(s) == x then return s end
    end
    return full
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
            if x ~= x or x == huge or x == -huge then
                error(("json.encode: %s is %s, which JSON cannot represent"):format(path, tostring(x)), 0)
            end
            out[#out + 1] = encode_number(x)
        elseif t == "string" then
            out[#out + 1] = encode_string(x, path)
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
                    out[#out + 1] = (idx > 1 and "," or "") .. nl ..
                        encode_string(k, path, true) .. (indent and ": " or ":")
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
function M.read_file(path, opts)
    local f, err = io.open(path, "rb")
    if not f then
        -- opts.missing_ok: a file that cannot be opened is nil, not an error
        if opts and opts.missing_ok then return nil end
        error(("cannot open %s: %s"):format(path, err), 0)
    end
    local text = f:read("*a")
    f:close()
    return M.decode(text, path)
end

return M
