--[[
data/records.lua - JSONL datasets as a stream of training records.

    local r = records.open("train.jsonl.gz", { format = "auto", fields = {}, skip_bad_lines = false })
    for rec, lineno in r:iter() do ... end
    print(r.bad_lines)              -- lines skipped (only with skip_bad_lines)
    r:close()

Files are read line by line through the C line reader (plain or gzip), so memory holds
one line, not the file. Each line is a JSON object in one of the shapes people use:
  alpaca             {"instruction", "input" (optional), "output"}
  messages           {"messages": [{"role", "content"}, ...]}
  sharegpt           {"conversations": [{"from", "value"}, ...]} (ShareGPT; the messages
                     shape under those names, found by format = "auto" too)
  text               {"text"}
  prompt_completion  {"prompt", "completion"}
format = "auto" picks the shape from the first record's keys. `fields` renames keys, e.g.
{ messages = "conversations", role = "from", content = "value" }. Roles "human"/"gpt"
are read as "user"/"assistant".

Every record becomes one of:
  { kind = "text", text = "..." }
  { kind = "pair", prompt = "...", completion = "..." }   (alpaca, prompt/completion)
  { kind = "chat", messages = { { role = "user", content = "..." }, ... } }
opts.split = { every = k, part = "train" | "eval" } reads one part of a file whose every k-th
non-blank line is held out, the other lines passed over unread; errors still name the
file's own lines.

A bad line (not JSON, wrong types, missing fields) is an error naming file:line and the
problem; with skip_bad_lines it is counted in r.bad_lines (and its first messages kept in
r.bad_examples) and the stream moves on.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local json = require "luatrain.json"

local C, check = core.C, core.check

local M = {}

M.formats = { "alpaca", "messages", "sharegpt", "text", "prompt_completion" }

-- ShareGPT's keys for the messages shape
local SHAREGPT = { messages = "conversations", role = "from", content = "value" }

local ROLE_ALIASES = { human = "user", user = "user", gpt = "assistant", assistant = "assistant",
    bot = "assistant", model = "assistant", system = "system" }

local function field(fields, name) return fields[name] or name end

local function detect(obj, fields)
    if obj[field(fields, "messages")] ~= nil then return "messages" end
    if next(fields) == nil and obj.conversations ~= nil then return "sharegpt" end
    if obj[field(fields, "instruction")] ~= nil then return "alpaca" end
    if obj[field(fields, "prompt")] ~= nil then return "prompt_completion" end
    if obj[field(fields, "text")] ~= nil then return "text" end
    return nil
end

-- Raises "<where>: <problem>" (a plain string error, level 0) for a malformed record.
local function need_string(obj, key, where)
    local v = obj[key]
    if v == nil or v == json.null then error(("%s: missing field %q"):format(where, key), 0) end
    if type(v) ~= "string" then
        error(("%s: field %q must be a string, got %s"):format(where, key,
            type(v) == "table" and (json.is_array(v) and "an array" or "an object") or type(v)), 0)
    end
    return v
end

local function optional_string(obj, key, where)
    local v = obj[key]
    if v == nil or v == json.null then return "" end
    if type(v) ~= "string" then
        error(("%s: field %q must be a string, got %s"):format(where, key, type(v)), 0)
    end
    return v
end

-- One decoded JSON object -> a record.
function M.convert(obj, format, fields, where)
    fields = fields or {}
    if format == "sharegpt" then
        -- ShareGPT: the messages shape under its own names (fields given still win)
        local f = {}
        for k, v in pairs(SHAREGPT) do f[k] = fields[k] or v end
        fields, format = f, "messages"
    end
    if type(obj) ~= "table" or json.is_array(obj) then
        error(("%s: expected a JSON object"):format(where), 0)
    end
    if format == "alpaca" then
        local instruction = need_string(obj, field(fields, "instruction"), where)
        local input = optional_string(obj, field(fields, "input"), where)
        local output = need_string(obj, field(fields, "output"), where)
        return { kind = "pair", prompt = input ~= "" and (instruction .. "\n\n" .. input) or instruction,
            completion = output, instruction = instruction, input = input }
    elseif format == "prompt_completion" then
        return { kind = "pair", prompt = need_string(obj, field(fields, "prompt"), where),
            completion = need_string(obj, field(fields, "completion"), where) }
    elseif format == "text" then
        return { kind = "text", text = need_string(obj, field(fields, "text"), where) }
    elseif format == "messages" then
        local key = field(fields, "messages")
        local list = obj[key]
        if type(list) ~= "table" or not json.is_array(list) then
            error(("%s: field %q must be an array of messages"):format(where, key), 0)
        end
        if #list == 0 then error(("%s: field %q is empty"):format(where, key), 0) end
        local rk, ck = field(fields, "role"), field(fields, "content")
        local msgs = {}
        for i, m in ipairs(list) do
            local w = ("%s: %s[%d]"):format(where, key, i)
            if type(m) ~= "table" or json.is_array(m) then error(w .. ": expected an object", 0) end
            local role = need_string(m, rk, w)
            local canon = ROLE_ALIASES[role:lower()]
            if not canon then
                error(("%s: unknown role %q (system, user, assistant; or human, gpt)"):format(w, role), 0)
            end
            msgs[i] = { role = canon, content = need_string(m, ck, w) }
        end
        return { kind = "chat", messages = msgs }
    end
    error(("unknown dataset format %q (%s or auto)"):format(tostring(format), table.concat(M.formats, ", ")), 0)
end

local Reader = {}
Reader.__index = Reader

function M.open(path, opts)
    opts = opts or {}
    local format = opts.format or "auto"
    if format ~= "auto" then
        local ok = false
        for _, f in ipairs(M.formats) do ok = ok or f == format end
        if not ok then
            error(("unknown dataset format %q (%s or auto)"):format(format, table.concat(M.formats, ", ")), 2)
        end
    end
    local h = ffi.new("lt_lines*[1]")
    check(C.lt_lines_open(h, path))
    local split = opts.split
    if split ~= nil and (type(split) ~= "table" or type(split.every) ~= "number" or split.every < 2
        or (split.part ~= "train" and split.part ~= "eval")) then
        error("records.open: split must be { every = k >= 2, part = \"train\" | \"eval\" }", 2)
    end
    local self = setmetatable({
        path = path, format = format, fields = opts.fields or {}, skip = opts.skip_bad_lines, split = split,
        seen = 0,
        handle = ffi.gc(h[0], C.lt_lines_close),
        line = ffi.new("const char*[1]"), len = ffi.new("int64_t[1]"), no = ffi.new("int64_t[1]"),
        has = ffi.new("int32_t[1]"),
        bad_lines = 0, bad_examples = {}, records = 0, lines = 0,
    }, Reader)
    return self
end

-- The next record and its line number, or nil at the end. Blank lines are passed over.
function Reader:next()
    while true do
        check(C.lt_lines_next(self.handle, self.line, self.len, self.no, self.has))
        if self.has[0] == 0 then return nil end
        self.lines = self.lines + 1
        local lineno = tonumber(self.no[0])
        local text = ffi.string(self.line[0], self.len[0])
        local mine = true
        if self.split and text:find("%S") then
            -- every k-th non-blank line is held out (eval), the others train: the part not
            -- wanted is passed over unread, and line numbers stay the file's own
            self.seen = self.seen + 1
            mine = (self.seen % self.split.every == 0) == (self.split.part == "eval")
        end
        if mine and text:find("%S") then
            local where = ("%s:%d"):format(self.path, lineno)
            local ok, rec = pcall(function()
                local obj = json.decode(text, where)
                if self.format == "auto" then
                    if type(obj) ~= "table" or json.is_array(obj) then
                        error(where .. ": expected a JSON object", 0)
                    end
                    local f = detect(obj, self.fields)
                    if not f then
                        local keys = {}
                        for k in pairs(obj) do keys[#keys + 1] = k end
                        table.sort(keys)
                        error(("%s: cannot tell the dataset format from the keys {%s}; set format= (%s) or fields="):format(
                            where, table.concat(keys, ", "), table.concat(M.formats, ", ")), 0)
                    end
                    self.format = f
                end
                return M.convert(obj, self.format, self.fields, where)
            end)
            if ok then
                self.records = self.records + 1
                return rec, lineno
            end
            -- json.decode reports "path:line:col: ..." with the column inside the line; make
            -- it name the file line instead
            local msg = tostring(rec):gsub("^" .. where:gsub("%p", "%%%0") .. ":%d+:(%d+):", where .. ": column %1:")
            if not self.skip then
                self:close()
                error(msg, 0)
            end
            self.bad_lines = self.bad_lines + 1
            if #self.bad_examples < 5 then self.bad_examples[#self.bad_examples + 1] = msg end
        end
    end
end

function Reader:iter()
    return function() return self:next() end
end

-- Fraction of the file consumed (compressed bytes for gzip), for progress bars.
function Reader:progress()
    if self.handle == nil then return 1 end
    local size = tonumber(C.lt_lines_file_size(self.handle))
    return size > 0 and tonumber(C.lt_lines_offset(self.handle)) / size or 1
end

function Reader:close()
    if self.handle ~= nil then
        C.lt_lines_close(ffi.gc(self.handle, nil))
        self.handle = nil
    end
end

return M
