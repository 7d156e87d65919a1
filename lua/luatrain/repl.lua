--[[
repl.lua - the interactive session behind `luatrain` and `luatrain -i recipe.lua`.

    local repl = require "luatrain.repl"
    local code = repl.run()                     -- what the host does: exit(code) or nil at EOF

    local s = repl.session { out = write, err = write }   -- the same logic, driven by hand
    s:feed("x = 1 + 1")  s:feed("x")           -- writes "2\n" through out

What it does with a line:
  - an expression is printed: the line is first tried as an expression (and "= expr"
    always is one), and every value it gives is shown (tensors through tostring, which
    summarises large ones; tables as {a = 1, ...}; strings as they are);
  - otherwise it runs as a statement, in the global environment, so a recipe run with -i
    leaves its globals here; `lt` is preloaded (local lt = require "luatrain" in a recipe
    does not make a global);
  - an incomplete chunk (its syntax error is at '<eof>') waits for more lines, prompting
    ">> ", so functions and tables can be typed over several lines;
  - an error is reported with its message and a short traceback (only the frames of the
    code typed here and what it called), and the session goes on; Ctrl-C interrupts a
    running statement the same way;
  - a statement that took longer than half a second reports its wall time (on a terminal).

exit() or exit(code), os.exit(), or end of input (Ctrl-D) leave. On a terminal the host's
libedit gives line editing, history in ~/.luatrain_history (LUATRAIN_HISTORY overrides;
an empty value keeps none) and TAB completion of globals, fields and methods
(M.complete). When stdin is not a terminal, lines are read plainly with no prompts, so the
REPL can be driven through a pipe.
]]
local M = {}

-- The host's C helpers (libedit, isatty, clock, interruptible xpcall); absent when this
-- file is loaded by a plain luajit, where the REPL still works without line editing.
local has_host, host = pcall(require, "luatrain.host")
if not has_host then host = nil end

local function now()
    if host then return host.now() end
    return os.clock()
end

local protected_call = host and host.xpcall or xpcall

-- The Tensor metatype's method table, for completing and printing tensors. Loaded lazily:
-- the REPL must come up even when the core library cannot be loaded.
local tensor_mod
local function tensor_module()
    if tensor_mod == nil then
        local ok, t = pcall(require, "luatrain.tensor")
        tensor_mod = ok and t or false
    end
    return tensor_mod or nil
end

local function is_tensor(v)
    if type(v) ~= "cdata" then return false end
    local t = tensor_module()
    return t ~= nil and t.is_tensor(v)
end

local function pack(...)
    return { n = select("#", ...), ... }
end

-- ---- printing values -----------------------------------------------------------------

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
    repeat return then true until while]]):gmatch("%a+") do
    KEYWORDS[w] = true
end

local function is_identifier(s)
    return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil and not KEYWORDS[s]
end

local function quote(s)
    return (("%q"):format(s):gsub("\\\n", "\\n"))
end

-- Width a table may take on one line; top-level and nested entry limits keep printing
-- _G or a model's parameter table quick and readable.
local WIDTH, MAX_DEPTH, MAX_TOP_ITEMS, MAX_NESTED_ITEMS = 80, 2, 200, 40

local function key_order(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
end

-- A value as the REPL shows it. depth 0 is a result itself: strings unquoted, tensors in
-- full. Inside tables strings are quoted and tensors summarised to dtype and shape.
function M.repr(v, depth, path)
    depth = depth or 0
    local tv = type(v)
    if tv == "string" then return depth == 0 and v or quote(v) end
    if tv == "cdata" and is_tensor(v) then
        if depth == 0 or v.storage == nil then return tostring(v) end
        return ("<%s tensor (%s)>"):format(v.dtype, table.concat(v:shape(), ", "))
    end
    if tv ~= "table" then return tostring(v) end
    local mt = getmetatable(v)
    if type(mt) == "table" and rawget(mt, "__tostring") then return tostring(v) end
    path = path or {}
    if path[v] then return "<cycle>" end
    if depth > MAX_DEPTH then return "{...}" end
    path[v] = true
    local n = #v
    local keys = {}
    for k in pairs(v) do
        if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then
            keys[#keys + 1] = k
        end
    end
    table.sort(keys, key_order)
    local limit = depth == 0 and MAX_TOP_ITEMS or MAX_NESTED_ITEMS
    local parts, total = {}, n + #keys
    for i = 1, n do
        if #parts >= limit then break end
        parts[#parts + 1] = M.repr(v[i], depth + 1, path)
    end
    for _, k in ipairs(keys) do
        if #parts >= limit then break end
        local name = is_identifier(k) and k or ("[" .. M.repr(k, 1, path) .. "]")
        parts[#parts + 1] = name .. " = " .. M.repr(v[k], depth + 1, path)
    end
    path[v] = nil
    if total > #parts then parts[#parts + 1] = ("... (%d more)"):format(total - #parts) end
    local line = "{" .. table.concat(parts, ", ") .. "}"
    if #line <= WIDTH and not line:find("\n", 1, true) then return line end
    if depth > 0 then return ("{... %d entries}"):format(total) end
    return "{\n  " .. table.concat(parts, ",\n  ") .. "\n}"
end

-- ---- completion ----------------------------------------------------------------------

-- A field lookup that never runs code: __index is followed only when it is a table, so
-- TAB cannot trigger a lazy loader or a proxy's side effects.
local function peek(v, k, depth)
    depth = depth or 0
    if type(v) == "table" then
        local x = rawget(v, k)
        if x ~= nil or depth > 8 then return x end
        local mt = getmetatable(v)
        -- a module loaded on first use (lt.llama): completing past it loads it
        local lazy = type(mt) == "table" and rawget(mt, "__lazy") or nil
        if type(lazy) == "table" and lazy[k] then return v[k] end
        local idx = type(mt) == "table" and rawget(mt, "__index") or nil
        if type(idx) == "table" then return peek(idx, k, depth + 1) end
        return nil
    end
    if type(v) == "string" then return string[k] end
    if is_tensor(v) then return tensor_module().methods[k] end
    return nil
end

local function is_callable(x)
    if type(x) == "function" then return true end
    local mt = type(x) == "table" and getmetatable(x)
    return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

-- Names reachable from v with '.' (any field) or ':' (methods only), through table
-- __index chains (classes), the string library for strings and the Tensor methods for
-- tensors.
local function field_names(v, methods_only, out, depth)
    out = out or {}
    depth = depth or 0
    if type(v) == "table" then
        for k, x in pairs(v) do
            if is_identifier(k) and (not methods_only or is_callable(x)) then out[k] = true end
        end
        local mt = getmetatable(v)
        local lazy = type(mt) == "table" and rawget(mt, "__lazy") or nil
        if type(lazy) == "table" and not methods_only then
            for k in pairs(lazy) do out[k] = true end
        end
        local idx = type(mt) == "table" and rawget(mt, "__index") or nil
        if type(idx) == "table" and depth < 8 then field_names(idx, methods_only, out, depth + 1) end
    elseif type(v) == "string" then
        for k in pairs(string) do out[k] = true end
    elseif is_tensor(v) then
        for k in pairs(tensor_module().methods) do out[k] = true end
        if not methods_only then
            out.dtype, out.device = true, true
        end
    end
    return out
end

-- Completions for the word that ends line_or_word ("lt.ze", "print(t:sh"): the full
-- replacement words ("lt.zeros", "t:shape"), sorted. Globals come from env (default _G)
-- and the Lua keywords; names starting with '_' only when the typed part does.
function M.complete(line_or_word, env)
    env = env or _G
    local word = line_or_word:match("[%w_%.:]*$")
    if word == "" or word:match("^%d") then return {} end
    local path, sep, prefix = word:match("^(.-)([%.:])([%w_]*)$")
    local names
    if path then
        if not path:match("^[%a_][%w_]*$") and not path:match("^[%a_][%w_%.]*[%w_]$") then
            return {}
        end
        local v = env
        for part in path:gmatch("[^%.]+") do
            if not is_identifier(part) then return {} end
            v = peek(v, part)
            if v == nil then return {} end
        end
        names = field_names(v, sep == ":")
    else
        prefix = word
        names = field_names(env, false)
        for k in pairs(KEYWORDS) do names[k] = true end
    end
    local show_private = prefix:sub(1, 1) == "_"
    local out = {}
    for name in pairs(names) do
        if name:sub(1, #prefix) == prefix and (show_private or name:sub(1, 1) ~= "_") then
            out[#out + 1] = path and (path .. sep .. name) or name
        end
    end
    table.sort(out)
    return out
end

-- The function libedit calls on TAB: text is the word libedit will replace, line the
-- input up to the cursor. The host breaks words at the same characters complete() does,
-- so text is normally the whole word; if it is shorter, the candidates are cut to match.
function M.readline_completer(env)
    return function(text, line)
        local word = line:match("[%w_%.:]*$")
        if #text > #word or word:sub(#word - #text + 1) ~= text then return {} end
        local cut = #word - #text
        local out = {}
        for _, c in ipairs(M.complete(line, env)) do out[#out + 1] = c:sub(cut + 1) end
        return out
    end
end

-- ---- help(x) ------------------------------------------------------------------------

local function read_lines(path)
    local f = io.open(path, "r")
    if not f then return nil end
    local lines = {}
    for l in f:lines() do lines[#lines + 1] = l end
    f:close()
    return lines
end

-- The comment lines right above line n of a source file (-- lines, or a --[[ ]] block).
local function comment_above(lines, n)
    local out, i = {}, n - 1
    while i >= 1 and lines[i]:match("^%s*%-%-") and not lines[i]:match("^%s*%-%-%[%[") do
        table.insert(out, 1, (lines[i]:gsub("^%s*%-%-%s?", "")))
        i = i - 1
    end
    if #out == 0 and i >= 1 and lines[i]:match("%]%]%s*$") then
        -- a --[[ ... ]] block ending right above
        local j = i
        while j >= 1 and not lines[j]:match("%-%-%[%[") do j = j - 1 end
        for k = j, i do out[#out + 1] = (lines[k]:gsub("^%s*%-%-%[%[%s?", ""):gsub("%]%]%s*$", "")) end
    end
    return out
end

--[[ help(x): a function's documentation (the comment above its definition in its source
file, and where that is), a module's (the header comment of its file: help(lt.llama)), or,
for a setting's name, the recipe's declaration of it (after `luatrain -i recipe.lua`). ]]
function M.help_text(x, env)
    if type(x) == "function" then
        local info = debug.getinfo(x, "S")
        if info.what == "C" then return "a built-in (C) function" end
        local path = info.source:match("^@(.*)$")
        local lines = path and read_lines(path)
        if not lines then return ("a function defined at %s:%d"):format(info.short_src, info.linedefined) end
        local doc = comment_above(lines, info.linedefined)
        doc[#doc + 1] = lines[info.linedefined]:gsub("^%s+", "")
        return table.concat(doc, "\n") .. ("\n  (%s:%d)"):format(path, info.linedefined)
    end
    if type(x) == "table" then
        -- a module: find its file among package.loaded's
        for name, mod in pairs(package.loaded) do
            if mod == x and type(name) == "string" then
                local path = package.searchpath and package.searchpath(name, package.path)
                local lines = path and read_lines(path)
                if lines and lines[1] and lines[1]:match("^%-%-%[%[") then
                    local out = {}
                    for i = 1, #lines do
                        local l = lines[i]:gsub("^%-%-%[%[", "")
                        if l:match("^%]%]") then break end
                        out[#out + 1] = l
                    end
                    return table.concat(out, "\n") .. ("\n  (%s)"):format(path)
                end
                return ("module %s (%s)"):format(name, path or "?")
            end
        end
        local keys = {}
        for k in pairs(x) do if type(k) == "string" then keys[#keys + 1] = k end end
        table.sort(keys)
        return ("a table with %d fields: %s"):format(#keys, table.concat(keys, ", "))
    end
    if type(x) == "string" then
        local cfg = env and rawget(env, "config")
        local ok, d = pcall(function() return cfg and require("luatrain.config").describe(cfg, x) end)
        if ok and d then return d end
        return ("no setting %q in the recipe's config (help works on functions, modules and settings)"):format(x)
    end
    return ("a %s: %s"):format(type(x), M.repr(x))
end

-- ---- a session -----------------------------------------------------------------------

local Session = {}
Session.__index = Session

-- The session whose statement is running, for exit().
local current

-- exit([code]): leave the REPL after the current statement with that status (true = 0,
-- false = 1). Raises to unwind the statement; if user code catches that with pcall, the
-- session still ends once the statement returns.
local EXIT = setmetatable({}, { __tostring = function() return "exit" end })
function M.exit(code)
    if code == nil or code == true then
        code = 0
    elseif code == false then
        code = 1
    end
    if current then current.exit_code = tonumber(code) or 0 end
    error(EXIT, 0)
end

-- opts: env (default _G), out(text) and err(text) writers (default stdout, stderr),
-- chunkname (default "=stdin"), time_threshold (seconds; nil: never report timings).
function M.session(opts)
    opts = opts or {}
    local s = setmetatable({
        env = opts.env or _G,
        out = opts.out or function(text)
            io.stdout:write(text)
            io.stdout:flush()
        end,
        err = opts.err or function(text)
            io.stdout:flush()
            io.stderr:write(text)
            io.stderr:flush()
        end,
        chunkname = opts.chunkname or "=stdin",
        time_threshold = opts.time_threshold,
        buffer = nil,     -- the lines of an unfinished chunk
        exit_code = nil,  -- set by exit()
    }, Session)
    if rawget(s.env, "exit") == nil then rawset(s.env, "exit", M.exit) end
    if rawget(s.env, "help") == nil then
        rawset(s.env, "help", function(x) s.out(M.help_text(x, s.env) .. "\n") end)
    end
    return s
end

local function is_incomplete(msg)
    return msg:sub(-7) == "'<eof>'"
end

-- An expression, else a statement. Returns fn and whether it is an expression, or nil and
-- the statement's syntax error. An expression is compiled as an argument list of the
-- packing function the chunk receives, not as "return <expr>": a returned call would be a
-- tail call, and its errors would lose the line's position and traceback.
function Session:compile(src)
    local expr = src:match("^%s*=(.*)$")   -- Lua 5.1's "= expr" shorthand
    local fn, err = loadstring("local pack__ = ... return pack__(" .. (expr or src) .. "\n)",
        self.chunkname)
    if fn then return fn, true end
    if expr then return nil, err end
    return loadstring(src, self.chunkname)
end

-- The frames between the error and the typed chunk, innermost first, at most 12. The
-- frames of the REPL itself are noise, and so are the message handler and the 'error'
-- builtin. Frames are found by identity, not by counting levels: LuaJIT calls the
-- handler one level lower for runtime errors than for error().
local function short_traceback(msg, chunk, handler)
    local frames = {}
    local level, started = 1, false
    while #frames < 12 do
        local info = debug.getinfo(level, "Slnf")
        if not info then break end
        level = level + 1
        local skip = not started
        if info.func == handler then
            started = true
        elseif started and #frames == 0 and info.what == "C"
            and (info.name == "error" or info.name == "assert") then
            skip = true
        end
        if not skip then
            local where
            if info.what == "main" then
                where = "in main chunk"
            elseif info.name then
                where = ("in function '%s'"):format(info.name)
            elseif info.what == "C" then
                where = "?"
            else
                where = ("in function <%s:%d>"):format(info.short_src, info.linedefined)
            end
            if info.what == "C" then
                frames[#frames + 1] = "\t[C]: " .. where
            else
                frames[#frames + 1] = ("\t%s:%d: %s"):format(info.short_src, info.currentline, where)
            end
            if info.func == chunk then break end
        end
    end
    -- An error raised directly by the typed line: its message already says where.
    if #frames <= 1 then return msg end
    return msg .. "\nstack traceback:\n" .. table.concat(frames, "\n")
end

function Session:report(err)
    if err == EXIT then return end
    if type(err) == "string" or type(err) == "number" then
        self.err(tostring(err) .. "\n")
        return
    end
    local mt = getmetatable(err)
    if type(mt) == "table" and rawget(mt, "__tostring") then
        self.err(tostring(err) .. "\n")
    else
        self.err(("(error object is a %s value)\n"):format(type(err)))
    end
end

-- Runs a compiled line; an expression's values come back packed (see compile).
function Session:execute(fn, is_expression)
    setfenv(fn, self.env)
    local handler
    handler = function(err)
        if type(err) ~= "string" then return err end
        local tb = short_traceback(err, fn, handler)
        return tb
    end
    local previous = current
    current = self
    local t0 = now()
    local r = pack(protected_call(function() return fn(pack) end, handler))
    local elapsed = now() - t0
    current = previous
    if not r[1] then
        self:report(r[2])
    else
        -- A statement's values are those of an explicit "return ..." typed at the prompt.
        local values = is_expression and r[2] or { n = r.n - 1, unpack(r, 2, r.n) }
        -- _ is the last result shown
        if values.n > 0 then rawset(self.env, "_", values[1]) end
        if values.n > 0 then
            local shown = {}
            for i = 1, values.n do shown[i] = M.repr(values[i]) end
            self.out(table.concat(shown, "\t") .. "\n")
        end
    end
    if self.time_threshold and elapsed >= self.time_threshold and not self.exit_code then
        self.out(("[%.2f s]\n"):format(elapsed))
    end
end

-- Feeds one line of input. Returns true when the chunk is incomplete and more lines are
-- wanted (the caller prompts ">> ").
function Session:feed(line)
    line = line:gsub("\r$", "")
    local src = self.buffer and (self.buffer .. "\n" .. line) or line
    local fn, err = self:compile(src)
    if not fn and is_incomplete(err) then
        self.buffer = src
        return true
    end
    self.buffer = nil
    if not fn then
        self:report(err)
        return false
    end
    self:execute(fn, err == true)
    return false
end

-- End of input: an unfinished chunk is reported, since nothing more will complete it.
function Session:finish()
    if self.buffer then
        local _, err = loadstring(self.buffer, self.chunkname)
        self.buffer = nil
        if err then self:report(err) end
    end
end

-- ---- the loop ------------------------------------------------------------------------

local function history_path()
    local p = os.getenv("LUATRAIN_HISTORY")
    if p then return p ~= "" and p or nil end
    local home = os.getenv("HOME")
    return home and (home .. "/.luatrain_history") or nil
end

-- opts: env, interactive (default: stdin is a terminal and the host is there), plus the
-- session options. Returns the code given to exit(), or nothing at end of input (the host
-- then keeps the status of what ran before, e.g. a failed recipe under -i).
function M.run(opts)
    opts = opts or {}
    local interactive = opts.interactive
    if interactive == nil then interactive = host ~= nil and host.isatty(0) end
    local s = M.session {
        env = opts.env,
        out = opts.out,
        err = opts.err,
        chunkname = opts.chunkname,
        time_threshold = opts.time_threshold or (interactive and 0.5 or nil),
    }
    if rawget(s.env, "lt") == nil then
        local ok, lt = pcall(require, "luatrain")
        if ok then
            rawset(s.env, "lt", lt)
        else
            s.err("luatrain: the library did not load; lt is not defined:\n" .. tostring(lt) .. "\n")
        end
    end
    -- after `luatrain -i recipe.lua`: what the recipe left in lt.last_run (its model,
    -- tokenizer, config, results) as globals
    local ltm = rawget(s.env, "lt")
    local run = type(ltm) == "table" and rawget(ltm, "last_run") or nil
    if type(run) == "table" then
        local names = {}
        for k, v in pairs(run) do
            if type(k) == "string" and rawget(s.env, k) == nil then
                rawset(s.env, k, v)
                names[#names + 1] = k
            end
        end
        table.sort(names)
        if #names > 0 then s.out(("the recipe's %s are defined (help(\"setting\") for a setting)\n"):format(
            table.concat(names, ", "))) end
    end

    local read
    if interactive and host then
        local lt = rawget(s.env, "lt")
        s.out(("luatrain %s  (%s)  lt is loaded; exit() or Ctrl-D to leave\n"):format(
            type(lt) == "table" and tostring(lt.version) or "?", jit and jit.version or _VERSION))
        local hist = history_path()
        if hist then host.read_history(hist, 1000) end
        host.set_completer(M.readline_completer(s.env))
        read = function(prompt)
            local line = host.readline(prompt)
            -- Ctrl-C at the prompt drops the line (and any unfinished chunk), as a shell does.
            while line == false do
                s.buffer = nil
                s.out("\n")
                line = host.readline("> ")
            end
            if line and line:find("%S") then
                host.add_history(line)
                -- Written every line, so os.exit() or a crash loses nothing.
                if hist then host.write_history(hist) end
            end
            return line
        end
    else
        read = function() return io.read("*l") end
    end

    while true do
        local line = read(s.buffer and ">> " or "> ")
        if line == nil then
            if interactive then
                s.out("\n")
            else
                s:finish()
            end
            break
        end
        s:feed(line)
        if s.exit_code then break end
    end
    if host and interactive then host.set_completer(nil) end
    return s.exit_code
end

return M
