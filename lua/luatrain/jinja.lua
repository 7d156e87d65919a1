--[[
jinja - the subset of Jinja that Hugging Face chat templates use, rendered as transformers
renders them (trim_blocks and lstrip_blocks on).

    local jinja = require "luatrain.jinja"
    local t = jinja.compile(tokenizer_config.chat_template, "tokenizer_config.json")
    local text = t:render({ messages = msgs, add_generation_prompt = true, bos_token = "<s>" })

Statements: if / elif / else, for (one name or a tuple; loop.index, index0, first, last,
length, revindex, revindex0; an else branch; an inline if filter), set (a name, or an
attribute of a namespace()), {%- -%} whitespace control, comments. Expressions: literals
(strings, numbers, true/false/none in either case, lists, dicts), attribute and item access,
slices, calls, filters, tests (is / is not), not / and / or, in / not in, comparisons,
+ - * / // %, ~, and the inline if-else. Globals: raise_exception, namespace, range.
Methods of strings (strip, lstrip, rstrip, split, startswith, endswith, upper, lower, title,
replace) and dicts (items, keys, values, get). Filters: trim, upper, lower, capitalize,
title, length, count, first, last, join, default (d), tojson, string, int, float, list,
reverse, items, replace, selectattr, rejectattr, map (attribute=). Tests: defined,
undefined, none, string, number, integer, float, boolean, mapping, iterable, sequence,
true, false, odd, even, eq / equalto, ne, gt, lt, ge, le, in.

Values: Lua strings, numbers, booleans; lists are tables marked with json.array, dicts
plain tables; none is jinja.none; a missing name or key is undefined (renders as ""; calling
or indexing deeper through it is an error naming the template line).
]]
local json = require "luatrain.json"

local M = {}

local NONE = setmetatable({}, { __tostring = function() return "None" end })
local UNDEF = setmetatable({}, { __tostring = function() return "" end })
M.none, M.undefined = NONE, UNDEF

local function is_list(v) return type(v) == "table" and json.is_array(v) end
-- ---- errors -----------------------------------------------------------------------------

local function fail(src, line, msg)
    error(("%s:%d: %s"):format(src, line or 0, msg), 0)
end

-- ---- lexing: text, {{ }}, {% %}, {# #} with trim_blocks and lstrip_blocks ---------------

local function split_template(text, src)
    local parts = {}
    local pos, line = 1, 1
    local n = #text
    local trim_next = false -- after -%}, -}} or -#}: all leading whitespace goes
    local block_nl = false  -- after %} or #}: one newline goes (trim_blocks)
    local function lead(chunk)
        if trim_next then return (chunk:gsub("^%s+", "")) end
        if block_nl then return (chunk:gsub("^\n", "")) end
        return chunk
    end
    while pos <= n do
        local s, e, open = text:find("{([{%%#])", pos)
        if not s then
            parts[#parts + 1] = { kind = "text", value = lead(text:sub(pos)), line = line }
            break
        end
        local raw = text:sub(pos, s - 1)
        local close = ({ ["{"] = "}}", ["%"] = "%}", ["#"] = "#}" })[open]
        local strip_left = text:sub(e + 1, e + 1) == "-"
        if strip_left then
            raw = raw:gsub("%s+$", "")
        elseif open ~= "{" then
            -- lstrip_blocks: spaces and tabs between a line's start and a block or comment tag
            local head = raw:match("^(.*\n)[ \t]*$")
            if head then
                raw = head
            elseif pos == 1 and raw:match("^[ \t]*$") then
                raw = ""
            end
        end
        parts[#parts + 1] = { kind = "text", value = lead(raw), line = line }
        trim_next, block_nl = false, false
        for _ in text:sub(pos, s - 1):gmatch("\n") do line = line + 1 end
        local body_start = e + 1 + (strip_left and 1 or 0)
        local cs, ce
        if open == "#" then
            cs, ce = text:find("#}", body_start, true)
        else
            -- the close tag, skipping quoted strings inside the tag
            local i = body_start
            while i <= n do
                local c = text:sub(i, i)
                if c == "'" or c == '"' then
                    local j = i + 1
                    while j <= n and text:sub(j, j) ~= c do
                        if text:sub(j, j) == "\\" then j = j + 1 end
                        j = j + 1
                    end
                    i = j + 1
                elseif text:sub(i, i + 1) == close then
                    cs, ce = i, i + 1
                    break
                else
                    i = i + 1
                end
            end
        end
        if not cs then fail(src, line, ("a {%s tag is not closed"):format(open)) end
        local strip_right = cs - 1 >= body_start and text:sub(cs - 1, cs - 1) == "-"
        local body = text:sub(body_start, strip_right and cs - 2 or cs - 1)
        if open ~= "#" then parts[#parts + 1] = { kind = open == "{" and "expr" or "stmt", value = body, line = line } end
        for _ in text:sub(s, ce):gmatch("\n") do line = line + 1 end
        pos = ce + 1
        if strip_right then trim_next = true elseif open ~= "{" then block_nl = true end
    end
    return parts
end

-- ---- expression tokens ------------------------------------------------------------------

local KEYWORDS = { ["and"] = true, ["or"] = true, ["not"] = true, ["in"] = true, ["is"] = true, ["if"] = true,
    ["else"] = true }

local function tokenize(s, src, line)
    local toks, i, n = {}, 1, #s
    while i <= n do
        local c = s:sub(i, i)
        if c:match("%s") then
            i = i + 1
        elseif c == "'" or c == '"' then
            local j, buf = i + 1, {}
            while true do
                local d = s:sub(j, j)
                if d == "" then fail(src, line, "a string is not closed") end
                if d == c then break end
                if d == "\\" then
                    local e = s:sub(j + 1, j + 1)
                    buf[#buf + 1] = ({ n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ["'"] = "'", ['"'] = '"' })[e]
                        or ("\\" .. e)
                    j = j + 2
                else
                    buf[#buf + 1] = d
                    j = j + 1
                end
            end
            toks[#toks + 1] = { t = "str", v = table.concat(buf) }
            i = j + 1
        elseif c:match("%d") then
            local num = s:match("^%d+%.?%d*", i)
            toks[#toks + 1] = { t = "num", v = tonumber(num) }
            i = i + #num
        elseif c:match("[%a_]") then
            local name = s:match("^[%w_]+", i)
            toks[#toks + 1] = { t = KEYWORDS[name] and "kw" or "name", v = name }
            i = i + #name
        else
            local two = s:sub(i, i + 1)
            if two == "==" or two == "!=" or two == "<=" or two == ">=" or two == "//" or two == "**" then
                toks[#toks + 1] = { t = "op", v = two }
                i = i + 2
            elseif ("+-*/%~<>()[]{}.,:|="):find(c, 1, true) then
                toks[#toks + 1] = { t = "op", v = c }
                i = i + 1
            else
                fail(src, line, ("unexpected character %q"):format(c))
            end
        end
    end
    toks[#toks + 1] = { t = "eof" }
    return toks
end

-- ---- expression parser (-> AST tables) ---------------------------------------------------

local Parser = {}
Parser.__index = Parser

local function parser(s, src, line)
    return setmetatable({ toks = tokenize(s, src, line), i = 1, src = src, line = line }, Parser)
end

function Parser:peek(k) return self.toks[self.i + (k or 0)] end
function Parser:next() local t = self.toks[self.i]; self.i = self.i + 1; return t end
function Parser:is(t, v) local x = self:peek(); return x.t == t and (v == nil or x.v == v) end
function Parser:accept(t, v) if self:is(t, v) then return self:next() end end
function Parser:expect(t, v)
    local x = self:next()
    if x.t ~= t or (v ~= nil and x.v ~= v) then
        fail(self.src, self.line, ("expected %s, found %s"):format(v or t, tostring(x.v or x.t)))
    end
    return x
end
function Parser:done() if not self:is("eof") then fail(self.src, self.line, "unexpected " .. tostring(self:peek().v)) end end

function Parser:expr()
    local e = self:or_()
    if self:accept("kw", "if") then
        local cond = self:or_()
        local alt = nil
        if self:accept("kw", "else") then alt = self:expr() end
        return { "cond", cond, e, alt }
    end
    return e
end

function Parser:or_()
    local e = self:and_()
    while self:accept("kw", "or") do e = { "or", e, self:and_() } end
    return e
end

function Parser:and_()
    local e = self:not_()
    while self:accept("kw", "and") do e = { "and", e, self:not_() } end
    return e
end

function Parser:not_()
    if self:accept("kw", "not") then return { "not", self:not_() } end
    return self:compare()
end

local CMP = { ["=="] = true, ["!="] = true, ["<"] = true, [">"] = true, ["<="] = true, [">="] = true }

function Parser:compare()
    local e = self:concat()
    while true do
        local t = self:peek()
        if t.t == "op" and CMP[t.v] then
            self:next()
            e = { "cmp", t.v, e, self:concat() }
        elseif t.t == "kw" and t.v == "in" then
            self:next()
            e = { "in", e, self:concat() }
        elseif t.t == "kw" and t.v == "not" and self:peek(1).t == "kw" and self:peek(1).v == "in" then
            self:next(); self:next()
            e = { "not", { "in", e, self:concat() } }
        elseif t.t == "kw" and t.v == "is" then
            self:next()
            local neg = self:accept("kw", "not") ~= nil
            local name = self:next()
            if name.t ~= "name" and name.t ~= "kw" then fail(self.src, self.line, "a test name is wanted after 'is'") end
            local args = {}
            if self:accept("op", "(") then
                args = self:args(")")
            elseif self:is("str") or self:is("num") or self:is("name") then
                args = { self:concat() }
            end
            e = { "test", name.v, e, args, neg }
        else
            return e
        end
    end
end

function Parser:concat()
    local e = self:additive()
    while self:accept("op", "~") do e = { "concat", e, self:additive() } end
    return e
end

function Parser:additive()
    local e = self:mult()
    while self:is("op", "+") or self:is("op", "-") do
        local op = self:next().v
        e = { "arith", op, e, self:mult() }
    end
    return e
end

function Parser:mult()
    local e = self:unary()
    while self:is("op", "*") or self:is("op", "/") or self:is("op", "//") or self:is("op", "%") do
        local op = self:next().v
        e = { "arith", op, e, self:unary() }
    end
    return e
end

function Parser:unary()
    if self:accept("op", "-") then return { "neg", self:unary() } end
    if self:accept("op", "+") then return self:unary() end
    return self:postfix(self:primary())
end

-- call arguments up to `close`: positional and name=value
function Parser:args(close)
    local args = {}
    if self:accept("op", close) then return args end
    repeat
        if self:is("name") and self:peek(1).t == "op" and self:peek(1).v == "=" then
            local k = self:next().v
            self:next()
            args.kw = args.kw or {}
            args.kw[k] = self:expr()
        else
            args[#args + 1] = self:expr()
        end
    until not self:accept("op", ",")
    self:expect("op", close)
    return args
end

function Parser:postfix(e)
    while true do
        if self:accept("op", ".") then
            e = { "attr", e, self:expect("name").v }
        elseif self:accept("op", "[") then
            local a, b, sliced = nil, nil, false
            if not self:is("op", ":") then a = self:expr() end
            if self:accept("op", ":") then
                sliced = true
                if not self:is("op", "]") then b = self:expr() end
            end
            self:expect("op", "]")
            e = sliced and { "slice", e, a, b } or { "item", e, a }
        elseif self:accept("op", "(") then
            e = { "call", e, self:args(")") }
        elseif self:accept("op", "|") then
            local name = self:expect("name").v
            local args = {}
            if self:accept("op", "(") then args = self:args(")") end
            e = { "filter", name, e, args }
        else
            return e
        end
    end
end

local LITERALS = { ["true"] = true, ["True"] = true, ["false"] = false, ["False"] = false }

function Parser:primary()
    local t = self:next()
    if t.t == "str" then
        local s = t.v
        while self:is("str") do s = s .. self:next().v end -- adjacent strings join
        return { "lit", s }
    elseif t.t == "num" then
        return { "lit", t.v }
    elseif t.t == "name" then
        if LITERALS[t.v] ~= nil then return { "lit", LITERALS[t.v] } end
        if t.v == "none" or t.v == "None" then return { "lit", NONE } end
        return { "name", t.v }
    elseif t.t == "op" and t.v == "(" then
        local e = self:expr()
        if self:accept("op", ",") then -- a tuple: a list here
            local items = { e }
            if not self:is("op", ")") then
                repeat items[#items + 1] = self:expr() until not self:accept("op", ",") or self:is("op", ")")
            end
            self:expect("op", ")")
            return { "list", items }
        end
        self:expect("op", ")")
        return e
    elseif t.t == "op" and t.v == "[" then
        local items = {}
        if not self:accept("op", "]") then
            repeat
                if self:is("op", "]") then break end
                items[#items + 1] = self:expr()
            until not self:accept("op", ",")
            self:expect("op", "]")
        end
        return { "list", items }
    elseif t.t == "op" and t.v == "{" then
        local pairs_ = {}
        if not self:accept("op", "}") then
            repeat
                if self:is("op", "}") then break end
                local k = self:expr()
                self:expect("op", ":")
                pairs_[#pairs_ + 1] = { k, self:expr() }
            until not self:accept("op", ",")
            self:expect("op", "}")
        end
        return { "dict", pairs_ }
    end
    fail(self.src, self.line, ("unexpected %s in an expression"):format(tostring(t.v or t.t)))
end

-- ---- statements -> a tree ----------------------------------------------------------------

local function parse_template(parts, src)
    local i = 0
    local function block(stops)
        local body = {}
        while true do
            i = i + 1
            local p = parts[i]
            if not p then
                if stops then fail(src, parts[#parts] and parts[#parts].line, "the template ends inside a block (missing "
                    .. table.concat(stops, " or ") .. ")") end
                return body, nil
            end
            if p.kind == "text" then
                if p.value ~= "" then body[#body + 1] = { "text", p.value } end
            elseif p.kind == "expr" then
                local ps = parser(p.value, src, p.line)
                local e = ps:expr()
                ps:done()
                body[#body + 1] = { "out", e, p.line }
            else
                local ps = parser(p.value, src, p.line)
                local kw = ps:next()
                local word = kw.v
                if stops then
                    for _, s in ipairs(stops) do
                        if word == s then return body, word, ps, p end
                    end
                end
                if word == "if" then
                    local node = { "if", branches = {}, line = p.line }
                    local cond = ps:expr()
                    ps:done()
                    while true do
                        local b, stop, ps2 = block({ "elif", "else", "endif" })
                        node.branches[#node.branches + 1] = { cond, b }
                        if stop == "endif" then break end
                        if stop == "else" then
                            local eb, stop2 = block({ "endif" })
                            node.branches[#node.branches + 1] = { nil, eb }
                            assert(stop2 == "endif")
                            break
                        end
                        cond = ps2:expr()
                        ps2:done()
                    end
                    body[#body + 1] = node
                elseif word == "for" then
                    local names = { ps:expect("name").v }
                    while ps:accept("op", ",") do names[#names + 1] = ps:expect("name").v end
                    ps:expect("kw", "in")
                    local iter = ps:or_()
                    local filt = nil
                    if ps:accept("kw", "if") then filt = ps:or_() end
                    ps:done()
                    local b, stop = block({ "else", "endfor" })
                    local eb = nil
                    if stop == "else" then eb = block({ "endfor" }) end
                    body[#body + 1] = { "for", names, iter, filt, b, eb, line = p.line }
                elseif word == "set" then
                    local target = ps:expect("name").v
                    local attr = nil
                    if ps:accept("op", ".") then attr = ps:expect("name").v end
                    if ps:accept("op", "=") then
                        local e = ps:expr()
                        ps:done()
                        body[#body + 1] = { "set", target, attr, e, line = p.line }
                    else
                        ps:done()
                        local b = block({ "endset" })
                        body[#body + 1] = { "setblock", target, b, line = p.line }
                    end
                elseif word == "generation" then
                    local b = block({ "endgeneration" }) -- training masks: rendered as its content
                    for _, x in ipairs(b) do body[#body + 1] = x end
                else
                    fail(src, p.line, ("{%% %s %%} is not supported"):format(tostring(word)))
                end
            end
        end
    end
    local body = block(nil)
    return body
end

-- ---- evaluation --------------------------------------------------------------------------

local function truthy(v)
    if v == nil or v == false or v == NONE or v == UNDEF or v == 0 or v == "" then return false end
    if type(v) == "table" and rawget(v, "__namespace") == nil and next(v) == nil then return false end
    return true
end

local function num_text(v)
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
    return (("%.17g"):format(v))
end

local tojson

local function to_text(v)
    if v == nil or v == UNDEF then return "" end
    if v == NONE then return "None" end
    if type(v) == "boolean" then return v and "True" or "False" end
    if type(v) == "number" then return num_text(v) end
    if type(v) == "string" then return v end
    if type(v) == "table" then
        -- Python's repr of lists and dicts, roughly
        if is_list(v) then
            local parts = {}
            for i, x in ipairs(v) do parts[i] = type(x) == "string" and ("'" .. x .. "'") or to_text(x) end
            return "[" .. table.concat(parts, ", ") .. "]"
        end
        return tojson(v)
    end
    return tostring(v)
end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do if k ~= "__namespace" then keys[#keys + 1] = k end end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    return keys
end

-- JSON as Python's json.dumps writes it (", " and ": "; with indent, one item per line);
-- dict keys keep their insertion order where the table recorded one (__order), else sorted
tojson = function(v, indent, depth)
    depth = depth or 0
    if v == nil or v == NONE or v == UNDEF then return "null" end
    if type(v) == "boolean" then return v and "true" or "false" end
    if type(v) == "number" then return num_text(v) end
    if type(v) == "string" then return json.encode(v) end
    local nl, pad, pad_in = "", "", ""
    if indent then
        nl = "\n"
        pad, pad_in = string.rep(" ", indent * depth), string.rep(" ", indent * (depth + 1))
    end
    if is_list(v) then
        if #v == 0 then return "[]" end
        local parts = {}
        for i, x in ipairs(v) do parts[i] = pad_in .. tojson(x, indent, depth + 1) end
        return "[" .. nl .. table.concat(parts, indent and ",\n" or ", ") .. nl .. pad .. "]"
    end
    local keys = rawget(v, "__order") or sorted_keys(v)
    if #keys == 0 then return "{}" end
    local parts = {}
    for _, k in ipairs(keys) do
        parts[#parts + 1] = pad_in .. json.encode(tostring(k)) .. ": " .. tojson(v[k], indent, depth + 1)
    end
    return "{" .. nl .. table.concat(parts, indent and ",\n" or ", ") .. nl .. pad .. "}"
end
M.tojson = tojson

local function length(v)
    if type(v) == "string" then return #v end
    if type(v) == "table" then
        if is_list(v) then return #v end
        return #sorted_keys(v)
    end
    return 0
end

local function list_of(v)
    if is_list(v) then return v end
    if type(v) == "string" then
        local out = json.array({})
        for ch in v:gmatch(".") do out[#out + 1] = ch end
        return out
    end
    if type(v) == "table" and v ~= NONE and v ~= UNDEF then
        return json.array(sorted_keys(v))
    end
    return json.array({})
end

local Env = {}
Env.__index = Env

local function new_scope(parent) return setmetatable({}, { __index = parent }) end

function Env:fail(line, msg) fail(self.src, line or self.line, msg) end

function Env:getattr(obj, key, line)
    if obj == UNDEF or obj == nil then
        self:fail(line, ("cannot read %q of an undefined value"):format(tostring(key)))
    end
    if obj == NONE then self:fail(line, ("cannot read %q of None"):format(tostring(key))) end
    if type(obj) == "table" then
        if is_list(obj) then
            if type(key) == "number" then
                local i = key < 0 and #obj + key + 1 or key + 1
                local v = obj[i]
                if v == nil then return UNDEF end
                return v
            end
        else
            local v = obj[key]
            if v ~= nil then return v end
        end
    elseif type(obj) == "string" and type(key) == "number" then
        local i = key < 0 and #obj + key + 1 or key + 1
        if i < 1 or i > #obj then return UNDEF end
        return obj:sub(i, i)
    end
    -- methods
    if type(key) == "string" then
        local m = self:method(obj, key, line)
        if m then return m end
    end
    return UNDEF
end

local function title_case(s) return (s:gsub("(%a)([%w]*)", function(a, b) return a:upper() .. b:lower() end)) end
local function capitalized(s) return s:sub(1, 1):upper() .. s:sub(2):lower() end

local function strip_chars(chars)
    if not chars or chars == NONE then return "%s" end
    return "[" .. chars:gsub("[%]%^%-%%]", "%%%0") .. "]"
end

function Env:method(obj, key)
    if type(obj) == "string" then
        local s = obj
        local methods = {
            strip = function(c) local p = strip_chars(c); return (s:gsub("^" .. p .. "+", ""):gsub(p .. "+$", "")) end,
            lstrip = function(c) return (s:gsub("^" .. strip_chars(c) .. "+", "")) end,
            rstrip = function(c) return (s:gsub(strip_chars(c) .. "+$", "")) end,
            upper = function() return s:upper() end,
            lower = function() return s:lower() end,
            title = function() return title_case(s) end,
            capitalize = function() return capitalized(s) end,
            startswith = function(p) return s:sub(1, #p) == p end,
            endswith = function(p) return p == "" or s:sub(-#p) == p end,
            replace = function(a, b) return (s:gsub(a:gsub("%p", "%%%0"), (b:gsub("%%", "%%%%")))) end,
            split = function(sep)
                local out = json.array({})
                if sep == nil or sep == NONE then
                    for w in s:gmatch("%S+") do out[#out + 1] = w end
                    return out
                end
                local pos = 1
                while true do
                    local a, b = s:find(sep, pos, true)
                    if not a then out[#out + 1] = s:sub(pos); break end
                    out[#out + 1] = s:sub(pos, a - 1)
                    pos = b + 1
                end
                return out
            end,
        }
        local f = methods[key]
        if f then return { __builtin = f } end
    elseif type(obj) == "table" and not is_list(obj) and obj ~= NONE and obj ~= UNDEF then
        local d = obj
        local methods = {
            items = function()
                local out = json.array({})
                for _, k in ipairs(rawget(d, "__order") or sorted_keys(d)) do out[#out + 1] = json.array({ k, d[k] }) end
                return out
            end,
            keys = function() return json.array(rawget(d, "__order") or sorted_keys(d)) end,
            values = function()
                local out = json.array({})
                for _, k in ipairs(rawget(d, "__order") or sorted_keys(d)) do out[#out + 1] = d[k] end
                return out
            end,
            get = function(k, default)
                local v = d[k]
                if v == nil then return default == nil and NONE or default end
                return v
            end,
        }
        local f = methods[key]
        if f then return { __builtin = f } end
    end
    return nil
end

local FILTERS
local TESTS

function Env:call(fn, args, line)
    if type(fn) == "table" and fn.__builtin then return fn.__builtin(unpack(args)) end
    if type(fn) == "function" then return fn(args, line) end
    self:fail(line, "this value cannot be called")
end

function Env:eval(e, scope)
    local kind = e[1]
    if kind == "lit" then return e[2] end
    if kind == "name" then
        local v = scope[e[2]]
        if v == nil then return UNDEF end
        return v
    end
    if kind == "attr" then return self:getattr(self:eval(e[2], scope), e[3]) end
    if kind == "item" then return self:getattr(self:eval(e[2], scope), self:eval(e[3], scope)) end
    if kind == "slice" then
        local obj = self:eval(e[2], scope)
        local n = length(obj)
        local a = e[3] and self:eval(e[3], scope) or 0
        local b = e[4] and self:eval(e[4], scope) or n
        if a < 0 then a = math.max(0, n + a) end
        if b < 0 then b = math.max(0, n + b) end
        if type(obj) == "string" then return obj:sub(a + 1, b) end
        local out = json.array({})
        for i = a + 1, math.min(b, n) do out[#out + 1] = obj[i] end
        return out
    end
    if kind == "call" then
        local fn = self:eval(e[2], scope)
        local args = {}
        for i, a in ipairs(e[3]) do args[i] = self:eval(a, scope) end
        if e[3].kw then
            args.kw = {}
            for k, a in pairs(e[3].kw) do args.kw[k] = self:eval(a, scope) end
        end
        return self:call(fn, args, self.line)
    end
    if kind == "filter" then
        local f = FILTERS[e[2]]
        if not f then self:fail(nil, ("the filter %q is not supported"):format(e[2])) end
        local args = {}
        for i, a in ipairs(e[4]) do args[i] = self:eval(a, scope) end
        if e[4].kw then
            args.kw = {}
            for k, a in pairs(e[4].kw) do args.kw[k] = self:eval(a, scope) end
        end
        return f(self, self:eval(e[3], scope), args)
    end
    if kind == "test" then
        local t = TESTS[e[2]]
        if not t then self:fail(nil, ("the test %q is not supported"):format(e[2])) end
        local args = {}
        for i, a in ipairs(e[4]) do args[i] = self:eval(a, scope) end
        local r = t(self:eval(e[3], scope), args[1])
        if e[5] then return not r end
        return r
    end
    if kind == "not" then return not truthy(self:eval(e[2], scope)) end
    if kind == "and" then
        local a = self:eval(e[2], scope)
        if not truthy(a) then return a end
        return self:eval(e[3], scope)
    end
    if kind == "or" then
        local a = self:eval(e[2], scope)
        if truthy(a) then return a end
        return self:eval(e[3], scope)
    end
    if kind == "cond" then
        if truthy(self:eval(e[2], scope)) then return self:eval(e[3], scope) end
        if e[4] then return self:eval(e[4], scope) end
        return UNDEF
    end
    if kind == "concat" then return to_text(self:eval(e[2], scope)) .. to_text(self:eval(e[3], scope)) end
    if kind == "neg" then return -self:eval(e[2], scope) end
    if kind == "arith" then
        local a, b = self:eval(e[3], scope), self:eval(e[4], scope)
        local op = e[2]
        if op == "+" then
            if type(a) == "string" and type(b) == "string" then return a .. b end
            if is_list(a) and is_list(b) then
                local out = json.array({})
                for _, x in ipairs(a) do out[#out + 1] = x end
                for _, x in ipairs(b) do out[#out + 1] = x end
                return out
            end
            if type(a) ~= "number" or type(b) ~= "number" then self:fail(nil, "+ needs two numbers, strings or lists") end
            return a + b
        end
        if type(a) ~= "number" or type(b) ~= "number" then self:fail(nil, op .. " needs two numbers") end
        if op == "-" then return a - b end
        if op == "*" then return a * b end
        if op == "/" then return a / b end
        if op == "//" then return math.floor(a / b) end
        if op == "%" then return a % b end
    end
    if kind == "cmp" then
        local a, b = self:eval(e[3], scope), self:eval(e[4], scope)
        local op = e[2]
        if op == "==" then return a == b end
        if op == "!=" then return a ~= b end
        if type(a) ~= type(b) or (type(a) ~= "number" and type(a) ~= "string") then
            self:fail(nil, ("%s compares two numbers or two strings"):format(op))
        end
        if op == "<" then return a < b end
        if op == ">" then return a > b end
        if op == "<=" then return a <= b end
        if op == ">=" then return a >= b end
    end
    if kind == "in" then
        local a, b = self:eval(e[2], scope), self:eval(e[3], scope)
        if type(b) == "string" then return type(a) == "string" and b:find(a, 1, true) ~= nil end
        if is_list(b) then
            for _, x in ipairs(b) do if x == a then return true end end
            return false
        end
        if type(b) == "table" and b ~= NONE and b ~= UNDEF then return b[a] ~= nil end
        return false
    end
    if kind == "list" then
        local out = json.array({})
        for i, x in ipairs(e[2]) do out[i] = self:eval(x, scope) end
        return out
    end
    if kind == "dict" then
        local out, order = {}, {}
        for _, kv in ipairs(e[2]) do
            local k = self:eval(kv[1], scope)
            if out[k] == nil then order[#order + 1] = k end
            out[k] = self:eval(kv[2], scope)
        end
        out.__order = order
        return out
    end
    self:fail(nil, "cannot evaluate " .. tostring(kind))
end

function Env:exec(body, scope, out)
    for _, node in ipairs(body) do
        local kind = node[1]
        if kind == "text" then
            out[#out + 1] = node[2]
        elseif kind == "out" then
            self.line = node[3]
            out[#out + 1] = to_text(self:eval(node[2], scope))
        elseif kind == "if" then
            self.line = node.line
            for _, br in ipairs(node.branches) do
                if br[1] == nil or truthy(self:eval(br[1], scope)) then
                    self:exec(br[2], scope, out)
                    break
                end
            end
        elseif kind == "for" then
            self.line = node.line
            local names, seq = node[2], self:eval(node[3], scope)
            local items = {}
            if is_list(seq) or type(seq) == "string" then
                for _, x in ipairs(list_of(seq)) do items[#items + 1] = x end
            elseif type(seq) == "table" and seq ~= NONE and seq ~= UNDEF then
                for _, k in ipairs(rawget(seq, "__order") or sorted_keys(seq)) do items[#items + 1] = k end
            elseif seq ~= UNDEF and seq ~= NONE then
                self:fail(node.line, "a for loop needs a list, a string or a dict")
            end
            local function bind(sc, x)
                if #names == 1 then
                    sc[names[1]] = x
                else
                    for i, n in ipairs(names) do sc[n] = type(x) == "table" and x[i] or UNDEF end
                end
            end
            if node[4] then -- the inline filter runs before loop counts
                local kept = {}
                for _, x in ipairs(items) do
                    local sc = new_scope(scope)
                    bind(sc, x)
                    if truthy(self:eval(node[4], sc)) then kept[#kept + 1] = x end
                end
                items = kept
            end
            if #items == 0 then
                if node[6] then self:exec(node[6], scope, out) end
            else
                local n = #items
                for i, x in ipairs(items) do
                    local sc = new_scope(scope)
                    bind(sc, x)
                    sc.loop = { index = i, index0 = i - 1, first = i == 1, last = i == n, length = n,
                        revindex = n - i + 1, revindex0 = n - i,
                        previtem = i > 1 and items[i - 1] or UNDEF, nextitem = i < n and items[i + 1] or UNDEF }
                    self:exec(node[5], sc, out)
                    -- set inside a loop stays in the loop (Jinja's scoping); namespaces carry out
                end
            end
        elseif kind == "set" then
            self.line = node.line
            local v = self:eval(node[4], scope)
            if node[3] then
                local ns = scope[node[2]]
                if type(ns) ~= "table" or rawget(ns, "__namespace") == nil then
                    self:fail(node.line, ("set %s.%s: %s is not a namespace()"):format(node[2], node[3], node[2]))
                end
                ns[node[3]] = v
            else
                rawset(scope, node[2], v)
            end
        elseif kind == "setblock" then
            local buf = {}
            self:exec(node[3], scope, buf)
            rawset(scope, node[2], table.concat(buf))
        end
    end
end

-- ---- filters and tests --------------------------------------------------------------------

local function attr_of(env, x, name)
    local v = x
    for part in tostring(name):gmatch("[^%.]+") do v = env:getattr(v, tonumber(part) or part) end
    return v
end

-- select/reject (attr nil: the item itself) and selectattr/rejectattr: the items whose value
-- passes test a[2] (with argument a[3]), or is truthy without a test; keep = false inverts.
local function pick(env, v, a, attr, keep)
    local out = json.array({})
    for _, x in ipairs(list_of(v)) do
        local val = x
        if attr then val = attr_of(env, x, attr) end
        local ok
        if a[2] == nil then ok = truthy(val) else ok = TESTS[a[2]](val, a[3]) end
        if ok == keep then out[#out + 1] = x end
    end
    return out
end

FILTERS = {
    trim = function(_, v) return (to_text(v):gsub("^%s+", ""):gsub("%s+$", "")) end,
    upper = function(_, v) return to_text(v):upper() end,
    lower = function(_, v) return to_text(v):lower() end,
    capitalize = function(_, v) return capitalized(to_text(v)) end,
    title = function(_, v) return title_case(to_text(v)) end,
    length = function(_, v) return length(v) end,
    count = function(_, v) return length(v) end,
    first = function(_, v) local l = list_of(v); return l[1] == nil and UNDEF or l[1] end,
    last = function(_, v) local l = list_of(v); return l[#l] == nil and UNDEF or l[#l] end,
    join = function(_, v, a)
        local parts = {}
        for i, x in ipairs(list_of(v)) do parts[i] = to_text(x) end
        return table.concat(parts, a[1] or "")
    end,
    default = function(_, v, a)
        if v == UNDEF or v == nil or (a[2] and not truthy(v)) then return a[1] == nil and "" or a[1] end
        return v
    end,
    tojson = function(_, v, a) return tojson(v, a.kw and a.kw.indent or a[1]) end,
    string = function(_, v) return to_text(v) end,
    int = function(_, v) return math.floor(tonumber(v) or 0) end,
    float = function(_, v) return tonumber(v) or 0 end,
    list = function(_, v) local out = json.array({}); for i, x in ipairs(list_of(v)) do out[i] = x end; return out end,
    reverse = function(_, v)
        if type(v) == "string" then return v:reverse() end
        local l, out = list_of(v), json.array({})
        for i = #l, 1, -1 do out[#out + 1] = l[i] end
        return out
    end,
    items = function(env, v) return env:method(v, "items").__builtin() end,
    replace = function(_, v, a) return (to_text(v):gsub(a[1]:gsub("%p", "%%%0"), (a[2]:gsub("%%", "%%%%")))) end,
    selectattr = function(env, v, a) return pick(env, v, a, a[1], true) end,
    rejectattr = function(env, v, a) return pick(env, v, a, a[1], false) end,
    select = function(env, v, a) return pick(env, v, { a[1], a[1], a[2] }, nil, true) end,
    reject = function(env, v, a) return pick(env, v, { a[1], a[1], a[2] }, nil, false) end,
    map = function(env, v, a)
        local name = a.kw and a.kw.attribute
        local out = json.array({})
        for _, x in ipairs(list_of(v)) do
            if name then
                out[#out + 1] = attr_of(env, x, name)
            else
                local f = FILTERS[a[1]]
                if not f then env:fail(nil, ("map: the filter %q is not supported"):format(tostring(a[1]))) end
                out[#out + 1] = f(env, x, {})
            end
        end
        return out
    end,
}
FILTERS.d = FILTERS.default

TESTS = {
    defined = function(v) return v ~= UNDEF and v ~= nil end,
    undefined = function(v) return v == UNDEF or v == nil end,
    none = function(v) return v == NONE end,
    string = function(v) return type(v) == "string" end,
    number = function(v) return type(v) == "number" end,
    integer = function(v) return type(v) == "number" and v == math.floor(v) end,
    float = function(v) return type(v) == "number" and v ~= math.floor(v) end,
    boolean = function(v) return type(v) == "boolean" end,
    ["true"] = function(v) return v == true end,
    ["false"] = function(v) return v == false end,
    mapping = function(v) return type(v) == "table" and v ~= NONE and v ~= UNDEF and not is_list(v) end,
    iterable = function(v) return type(v) == "string" or (type(v) == "table" and v ~= NONE and v ~= UNDEF) end,
    sequence = function(v) return type(v) == "string" or is_list(v) end,
    odd = function(v) return type(v) == "number" and v % 2 == 1 end,
    even = function(v) return type(v) == "number" and v % 2 == 0 end,
    eq = function(v, x) return v == x end,
    ne = function(v, x) return v ~= x end,
    gt = function(v, x) return v > x end,
    lt = function(v, x) return v < x end,
    ge = function(v, x) return v >= x end,
    le = function(v, x) return v <= x end,
    ["in"] = function(v, x)
        for _, y in ipairs(list_of(x)) do if y == v then return true end end
        return false
    end,
}
TESTS.equalto, TESTS["=="] = TESTS.eq, TESTS.eq

-- ---- the public API ----------------------------------------------------------------------

local Template = {}
Template.__index = Template

-- A JSON-decoded value as the template sees it: json.null as none, objects keep their order
-- where known.
local function from_json(v)
    if v == json.null then return NONE end
    if type(v) ~= "table" then return v end
    if json.is_array(v) then
        local out = json.array({})
        for i, x in ipairs(v) do out[i] = from_json(x) end
        return out
    end
    local out = {}
    for k, x in pairs(v) do out[k] = from_json(x) end
    return out
end
M.from_json = from_json

function M.compile(text, src)
    src = src or "template"
    if type(text) ~= "string" then error(("%s: the template must be a string"):format(src), 2) end
    local body = parse_template(split_template(text, src), src)
    return setmetatable({ body = body, src = src }, Template)
end

-- vars: the context (messages, add_generation_prompt, bos_token, ...). Returns the text, or
-- raises "<src>:<line>: ..." (raise_exception's message among them).
function Template:render(vars)
    local env = setmetatable({ src = self.src, line = 0 }, Env)
    local globals = {
        raise_exception = function(args, line)
            fail(self.src, line, "the template raised: " .. to_text(args[1]))
        end,
        namespace = function(args)
            local ns = { __namespace = true }
            for k, v in pairs(args.kw or {}) do ns[k] = v end
            return ns
        end,
        range = function(args)
            local a, b, step = args[1], args[2], args[3] or 1
            if b == nil then a, b = 0, a end
            local out = json.array({})
            for i = a, b - 1, step do out[#out + 1] = i end
            return out
        end,
        strftime_now = function(args) return os.date(args[1]) end,
    }
    local scope = new_scope(globals)
    for k, v in pairs(vars or {}) do scope[k] = v end
    local out = {}
    env:exec(self.body, scope, out)
    return table.concat(out)
end

return M
