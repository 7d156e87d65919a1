--[[
config.lua - a recipe's settings: one table of defaults with one-line docs, overridden
by key=value arguments on the command line. Exposed as lt.config.

    local cfg = lt.config {
        steps = { 300, "number of optimizer steps", type = "int" },
        lr = { 3e-4, "peak learning rate" },
        data = { "", "text file to train on (empty: built-in corpus)" },
        schedule = { "cosine", "learning-rate schedule", choices = { "constant", "linear", "cosine" } },
        compile = { false, "compile the model" },
        resume = { nil, "checkpoint to resume from", type = "string" },
    }
    -- luatrain train.lua steps=50 lr=1e-3 --compile schedule=linear
    print(cfg.steps, cfg.lr)            -- 50  0.001
    cfg.stpes                           -- error: unknown setting 'stpes' (did you mean 'steps'?)

Arguments (the global arg[1..], or opts.args): "key=value" or "--key=value"; '-' in a key
reads as '_' (batch-size=8); a boolean may be given bare, "--compile" / "--no-compile".
The last of repeated keys wins. "--help" or "-h" prints the settings, sorted by name (a
table constructor keeps no declaration order), and exits 0.

Ranges. A number may declare min / max (inclusive) and above / below (exclusive):
`dropout = { 0.1, "...", min = 0, below = 1 }`; a string nonempty = true. A value outside is
a usage error naming the setting and the range ("batch_size must be at least 1, got 0"),
raised when the arguments are read, before the recipe loads anything; --help shows ranges.

Types. Declared with type = "number" | "int" | "string" | "boolean", or inferred from the
default: a boolean, a string, or a number. A number default always infers "number", even
when it is whole: `weight_decay = { 0, ... }` must accept 0.01, and a whole default cannot
tell a count from a coefficient. Declare type = "int" for counts (steps, ranks, sizes) and
"steps=2.5" is refused. A setting whose default is nil must declare its type; its value is
nil until given. choices = { ... } restricts the values (the default must be one of them).
Booleans read true/false, 1/0, yes/no, on/off (any case). Numbers read what tonumber
reads, plus inf and -inf.

The result is a plain table of the final values (pairs() works on it), guarded by a
metatable: reading or assigning an undeclared key is an error naming the closest declared
one. The recipe may assign declared settings (derived values); that is not type-checked.
lt.config.values(cfg) copies it to a plain table for logging, overrides(cfg) gives the
settings the command line changed, help(cfg) the --help text, tostring(cfg) the settings
as "key=value ..." arguments that reproduce them.

Errors. A mistake on the command line (unknown key, bad value, no '=') is the user's, not
the recipe's: it is raised as a usage error object (config.usage_error: a table with
message, exit_status = 2 and __tostring), which the host prints as "luatrain: <message>"
with no Lua traceback and exits 2; pcall and tostring(err) see the message. A mistake in
the declaration itself, or reading an undeclared key, is the recipe author's: a plain
error with the recipe's position and a traceback.
]]
local M = {}

local TYPES = { number = true, int = true, string = true, boolean = true }
local ENTRY_FIELDS = { type = true, choices = true, min = true, max = true, above = true, below = true,
    nonempty = true }

-- ---- usage errors ----------------------------------------------------------------------

local UsageError = {}
UsageError.__index = UsageError
UsageError.__tostring = function(e) return e.message end

function M.usage_error(message)
    return setmetatable({ message = message, exit_status = 2 }, UsageError)
end

function M.is_usage_error(e)
    return getmetatable(e) == UsageError
end

local function fail(message)
    error(M.usage_error(message), 0)
end

-- ---- suggestions -----------------------------------------------------------------------

-- Optimal-string-alignment distance: Levenshtein plus adjacent transpositions, the most
-- common typo ("stpes").
local function distance(a, b)
    local la, lb = #a, #b
    local d = {}
    for i = 0, la do d[i] = { [0] = i } end
    for j = 1, lb do d[0][j] = j end
    for i = 1, la do
        local ca = a:byte(i)
        for j = 1, lb do
            local cb = b:byte(j)
            local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                d[i - 1][j - 1] + (ca == cb and 0 or 1))
            if i > 1 and j > 1 and ca == b:byte(j - 1) and a:byte(i - 1) == cb then
                v = math.min(v, d[i - 2][j - 2] + 1)
            end
            d[i][j] = v
        end
    end
    return d[la][lb]
end
M.distance = distance

-- The candidate closest to word, or nil when none is plausibly what was meant: about one
-- edit per three letters, so a one-letter word is never "corrected". A word of three or
-- more letters that starts a candidate ("sched" -> "schedule") counts as close.
function M.closest(word, candidates)
    local lw = tostring(word):lower()
    local best, best_d
    for _, c in ipairs(candidates) do
        local lc = tostring(c):lower()
        local d = distance(lw, lc)
        if #lw >= 3 and lc:sub(1, #lw) == lw then d = math.min(d, 1) end
        if best_d == nil or d < best_d then best, best_d = c, d end
    end
    if best_d and best_d <= math.floor((#lw + 1) / 3) then return best end
    return nil
end

-- ---- values ----------------------------------------------------------------------------

local function is_int(v)
    return type(v) == "number" and v % 1 == 0 and v == v and v ~= math.huge and v ~= -math.huge
end

local function has_type(v, ty)
    if ty == "int" then return is_int(v) end
    return type(v) == ty
end

local TYPE_WORDS = {
    number = "a number", int = "an integer", string = "a string",
    boolean = "a boolean (true/false, 1/0, yes/no, on/off)",
}

local BOOLEANS = {
    ["true"] = true, ["1"] = true, yes = true, on = true,
    ["false"] = false, ["0"] = false, no = false, off = false,
}

-- Command-line text -> a value of type ty, or nil.
local function convert(text, ty)
    if ty == "string" then return text end
    if ty == "boolean" then return BOOLEANS[text:lower()] end
    local s = text:lower():gsub("^%s+", ""):gsub("%s+$", "")
    local v = tonumber(s)
    if v == nil and ty == "number" then
        if s == "inf" or s == "+inf" then v = math.huge elseif s == "-inf" then v = -math.huge end
    end
    if v == nil or v ~= v then return nil end
    if ty == "int" and not is_int(v) then return nil end
    return v
end

local function format_number(v)
    if v == math.huge then return "inf" elseif v == -math.huge then return "-inf" end
    if is_int(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
    return ("%.14g"):format(v)
end

-- As --help shows a value: strings quoted so "" and "8" read as strings.
local function show(v)
    if v == nil then return "(none)" end
    if type(v) == "string" then return ("%q"):format(v) end
    if type(v) == "number" then return format_number(v) end
    return tostring(v)
end

-- As a key=value argument shows it: strings bare unless empty or holding spaces/quotes.
local function show_arg(v)
    if type(v) == "string" then
        if v == "" or v:find("[%s\"'\\]") then return ("%q"):format(v) end
        return v
    end
    if type(v) == "number" then return format_number(v) end
    return tostring(v)
end

-- ---- declaration -----------------------------------------------------------------------

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    return keys
end

-- Checks one spec entry and returns its normalised record. Errors here are the recipe
-- author's: level 3 points at the lt.config { ... } call (lt.config(...) tail-calls new).
local function declare(name, entry)
    local level = 3
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
        error(("lt.config: setting names must be identifiers, got %s"):format(tostring(name)), level)
    end
    if type(entry) ~= "table" then
        error(("lt.config: setting '%s' must be { default, \"doc\" [, type = ..., choices = {...}] }")
            :format(name), level)
    end
    for k in pairs(entry) do
        if k ~= 1 and k ~= 2 and not ENTRY_FIELDS[k] then
            local near = type(k) == "string" and M.closest(k, { "type", "choices" })
            error(("lt.config: setting '%s' has an unknown field '%s'%s"):format(name, tostring(k),
                near and (" (did you mean '" .. near .. "'?)") or ""), level)
        end
    end
    local default, doc, ty = entry[1], entry[2], entry.type
    if type(doc) ~= "string" then
        error(("lt.config: setting '%s' needs a one-line doc string as its second entry")
            :format(name), level)
    end
    if ty ~= nil and not TYPES[ty] then
        error(("lt.config: setting '%s' has unknown type '%s' (types: number, int, string, boolean)")
            :format(name, tostring(ty)), level)
    end
    if ty == nil then
        if default == nil then
            error(("lt.config: setting '%s' has no default; declare its type (type = \"string\", ...)")
                :format(name), level)
        end
        ty = type(default)
        if not TYPES[ty] then
            error(("lt.config: setting '%s' has a %s default; settings are numbers, strings or booleans")
                :format(name, ty), level)
        end
    elseif default ~= nil and not has_type(default, ty) then
        error(("lt.config: setting '%s' is declared %s but its default %s is not %s")
            :format(name, ty, show(default), TYPE_WORDS[ty]), level)
    end
    local choices = entry.choices
    if choices ~= nil then
        if type(choices) ~= "table" or #choices == 0 then
            error(("lt.config: setting '%s': choices must be a non-empty list"):format(name), level)
        end
        local found = default == nil
        for _, c in ipairs(choices) do
            if not has_type(c, ty) then
                error(("lt.config: setting '%s': choice %s is not %s")
                    :format(name, show(c), TYPE_WORDS[ty]), level)
            end
            if c == default then found = true end
        end
        if not found then
            error(("lt.config: setting '%s': default %s is not one of its choices")
                :format(name, show(default)), level)
        end
    end
    local e = { name = name, default = default, doc = doc, type = ty, choices = choices, min = entry.min,
        max = entry.max, above = entry.above, below = entry.below, nonempty = entry.nonempty }
    for _, k in ipairs({ "min", "max", "above", "below" }) do
        if e[k] ~= nil and (type(e[k]) ~= "number" or (ty ~= "number" and ty ~= "int")) then
            error(("lt.config: setting '%s': %s needs a number setting and a number bound"):format(name, k), level)
        end
    end
    if e.nonempty ~= nil and ty ~= "string" then
        error(("lt.config: setting '%s': nonempty is for string settings"):format(name), level)
    end
    if default ~= nil then
        local why = M.out_of_range(e, default)
        if why then error(("lt.config: setting '%s': its default %s"):format(name, why), level) end
    end
    return e
end

-- nil when v is inside the entry's range, else "must be ..., got v".
function M.out_of_range(e, v)
    local function got() return (", got %s"):format(show_arg(v)) end
    if e.nonempty and v == "" then return "must not be empty" end
    if type(v) ~= "number" then return nil end
    if e.min ~= nil and not (v >= e.min) then return ("must be at least %s%s"):format(show_arg(e.min), got()) end
    if e.above ~= nil and not (v > e.above) then return ("must be above %s%s"):format(show_arg(e.above), got()) end
    if e.max ~= nil and not (v <= e.max) then return ("must be at most %s%s"):format(show_arg(e.max), got()) end
    if e.below ~= nil and not (v < e.below) then return ("must be below %s%s"):format(show_arg(e.below), got()) end
    return nil
end

-- "in [0, 1)", "at least 1", ... for --help; nil when unbounded.
local function range_text(e)
    if e.nonempty then return "not empty" end
    local lo = e.min ~= nil and ("[" .. show_arg(e.min)) or (e.above ~= nil and ("(" .. show_arg(e.above)) or nil)
    local hi = e.max ~= nil and (show_arg(e.max) .. "]") or (e.below ~= nil and (show_arg(e.below) .. ")") or nil)
    if lo and hi then return ("in %s, %s"):format(lo, hi) end
    if e.min ~= nil then return "at least " .. show_arg(e.min) end
    if e.above ~= nil then return "above " .. show_arg(e.above) end
    if e.max ~= nil then return "at most " .. show_arg(e.max) end
    if e.below ~= nil then return "below " .. show_arg(e.below) end
    return nil
end

-- ---- the result ------------------------------------------------------------------------

-- The state behind each cfg lives in its metatable, so the cfg itself holds only the
-- settings and pairs(cfg) lists exactly them.
local function state_of(cfg)
    local mt = getmetatable(cfg)
    local st = type(mt) == "table" and rawget(mt, "__config")
    if not st then error("lt.config: not a config table", 3) end
    return st
end

local function unknown_message(st, key)
    local to = M.ALIASES and M.ALIASES[key]
    if to then
        return ("unknown setting '%s' (luatrain calls it '%s', which %s does not take)"):format(key, to, st.name)
    end
    local near = M.closest(key, st.names)
    if near then
        return ("unknown setting '%s' (did you mean '%s'?)"):format(tostring(key), near)
    end
    return ("unknown setting '%s' (settings: %s)"):format(tostring(key), table.concat(st.names, ", "))
end

local function choices_text(entry)
    local shown = {}
    for i, c in ipairs(entry.choices) do shown[i] = show_arg(c) end
    return table.concat(shown, ", ")
end

local function make_cfg(st)
    local mt = { __config = st }
    mt.__index = function(_, key)
        if st.entries[key] then return nil end -- declared, value nil
        error(unknown_message(st, key), 2)
    end
    -- Only reached for keys the table does not hold: undeclared ones and nil settings.
    -- Assignments the recipe makes are trusted, not type-checked (that would need a proxy,
    -- and pairs() on a proxy does not work in LuaJIT).
    mt.__newindex = function(t, key, value)
        if not st.entries[key] then error(unknown_message(st, key), 2) end
        rawset(t, key, value)
    end
    mt.__tostring = function(t)
        local parts = {}
        for _, name in ipairs(st.names) do
            local v = rawget(t, name)
            if v ~= nil then parts[#parts + 1] = name .. "=" .. show_arg(v) end
        end
        return table.concat(parts, " ")
    end
    local cfg = {}
    for _, name in ipairs(st.names) do cfg[name] = st.entries[name].default end
    return setmetatable(cfg, mt)
end

-- ---- help ------------------------------------------------------------------------------

local function help_text(st)
    local rows = { { "setting", "type", "default", "description" } }
    for _, name in ipairs(st.names) do
        local e = st.entries[name]
        local doc = e.doc
        if e.choices then doc = doc .. " (one of: " .. choices_text(e) .. ")" end
        local range = range_text(e)
        if range then doc = doc .. " (" .. range .. ")" end
        rows[#rows + 1] = { name, e.type, show(e.default), doc }
    end
    local width = { 0, 0, 0 }
    for _, r in ipairs(rows) do
        for c = 1, 3 do width[c] = math.max(width[c], #r[c]) end
    end
    local out = { ("usage: luatrain %s [key=value ...]"):format(st.script) }
    if st.description then out[#out + 1] = st.description end
    out[#out + 1] = ""
    out[#out + 1] = ("settings of %s (key=value or --key=value; a boolean also --key or --no-key):")
        :format(st.name)
    for _, r in ipairs(rows) do
        local line = "  "
        for c = 1, 3 do line = line .. r[c] .. string.rep(" ", width[c] - #r[c] + 2) end
        out[#out + 1] = (line .. r[4]):gsub("%s+$", "")
    end
    return table.concat(out, "\n") .. "\n"
end

-- ---- parsing ---------------------------------------------------------------------------

local function global_args()
    local list = {}
    local a = rawget(_G, "arg")
    if type(a) == "table" then
        for i = 1, #a do list[i] = tostring(a[i]) end
    end
    return list
end

-- The names Hugging Face's Trainer, PEFT, axolotl and torchtune give luatrain's settings:
-- a recipe that declares the luatrain name takes the other as the same setting.
M.ALIASES = {
    learning_rate = "lr", lora_r = "r", lora_rank = "r", lora_alpha = "alpha", lora_dropout = "dropout",
    max_steps = "steps", num_epochs = "epochs", num_train_epochs = "epochs", epochs_count = "epochs",
    per_device_train_batch_size = "batch_size", micro_batch_size = "batch_size",
    gradient_accumulation_steps = "grad_accum", resume_from_checkpoint = "resume", warmup_steps = "warmup",
    max_seq_length = "seq_len", sequence_len = "seq_len", max_seq_len = "seq_len", model_name_or_path = "model",
    base_model = "model", max_grad_norm = "grad_clip", output = "output_dir", out = "output_dir",
    save_steps = "save_every", save_total_limit = "keep_last",
    eval_steps = "eval_every", logging_steps = "log_every", lr_scheduler_type = "schedule",
}

-- The declared setting `key` stands for: itself, or the setting an alias names.
local function resolve(st, key)
    if st.entries[key] then return key, st.entries[key] end
    local to = M.ALIASES[key]
    if to and st.entries[to] then return to, st.entries[to] end
    -- output_dir / out: whichever this recipe declares
    if key == "output_dir" and st.entries.out then return "out", st.entries.out end
    return key, nil
end

local function apply(st, cfg, args)
    local hint = ("\n  (luatrain %s --help lists the settings)"):format(st.script)
    local i = 0
    while i < #args do
        i = i + 1
        local a = args[i]
        local body = a:match("^%-%-(.*)$") or a
        local key, text = body:match("^([^=]*)=(.*)$")
        if key == nil then
            -- A bare boolean flag: --compile, --no-compile; or --key value (the next argument)
            local k = body:gsub("-", "_")
            local neg = k:match("^no_(.+)$")
            local name, e = resolve(st, k)
            local nname, ne = resolve(st, neg or "")
            if a:sub(1, 2) == "--" and e and e.type == "boolean" then
                key, text = name, "true"
            elseif a:sub(1, 2) == "--" and ne and ne.type == "boolean" then
                key, text = nname, "false"
            elseif a:sub(1, 2) == "--" and e and args[i + 1] ~= nil and not args[i + 1]:match("^%-%-") then
                key, text = name, args[i + 1]
                i = i + 1
            else
                fail(("malformed argument '%s' (expected key=value)"):format(a) .. hint)
            end
        end
        key = key:gsub("-", "_")
        local given = key
        local e
        key, e = resolve(st, key)
        if not e then fail(unknown_message(st, key) .. hint) end
        if given ~= key then st.aliased[given] = key end
        local v = convert(text, e.type)
        if v == nil then
            fail(("invalid value '%s' for %s (expected %s)"):format(text, key, TYPE_WORDS[e.type]))
        end
        if e.choices then
            local ok = false
            for _, c in ipairs(e.choices) do
                if c == v then ok = true end
            end
            if not ok then
                local near = type(v) == "string" and M.closest(v, e.choices)
                fail(("invalid value '%s' for %s (%sone of: %s)"):format(text, key,
                    near and ("did you mean '" .. show_arg(near) .. "'? ") or "", choices_text(e)))
            end
        end
        local why = M.out_of_range(e, v)
        if why then fail(("%s %s"):format(key, why)) end
        rawset(cfg, key, v)
        st.overridden[key] = true
    end
end

-- lt.config(spec [, opts]) -> cfg.
-- opts.args: the argument list to read instead of the global arg[1..] (tests, sweeps);
-- opts.name: the recipe's name in --help (default: arg[0]'s file name);
-- opts.description: a line --help prints under the usage.
function M.new(spec, opts)
    if type(spec) ~= "table" then
        error("lt.config: expected a table of settings { name = { default, \"doc\" }, ... }", 2)
    end
    opts = opts or {}
    local script = type(rawget(_G, "arg")) == "table" and rawget(_G, "arg")[0]
    script = type(script) == "string" and script or "recipe.lua"
    local st = {
        entries = {},
        names = sorted_keys(spec),
        overridden = {},
        aliased = {}, -- other tools' names given for a setting: name -> luatrain's
        script = script,
        name = opts.name or script:match("[^/]*$"),
        description = opts.description,
    }
    for _, name in ipairs(st.names) do st.entries[name] = declare(name, spec[name]) end
    local args = opts.args or global_args()
    for _, a in ipairs(args) do
        if a == "--help" or a == "-h" then
            io.stdout:write(help_text(st))
            io.stdout:flush()
            os.exit(0)
        end
    end
    local cfg = make_cfg(st)
    apply(st, cfg, args)
    -- `luatrain plan` reads a recipe's settings without running it (luatrain/cmd/plan.lua)
    if M.on_settings then M.on_settings(cfg) end
    return cfg
end

-- A plain copy of the settings (no guard), e.g. for a JSON log line.
function M.values(cfg)
    state_of(cfg)
    local out = {}
    for k, v in pairs(cfg) do out[k] = v end
    return out
end

-- The settings the arguments set, with their values now.
function M.overrides(cfg)
    local st = state_of(cfg)
    local out = {}
    for k in pairs(st.overridden) do out[k] = rawget(cfg, k) end
    return out
end

-- The --help text.
-- One setting of cfg, as --help lists it: "name (type, default d): doc ...", its current
-- value beside; nil when cfg has no such setting (another tool's name resolves).
function M.describe(cfg, name)
    local st = state_of(cfg)
    local key, e = resolve(st, tostring(name))
    if not e then return nil end
    local doc = e.doc
    if e.choices then doc = doc .. " (one of: " .. choices_text(e) .. ")" end
    local range = range_text(e)
    if range then doc = doc .. " (" .. range .. ")" end
    return ("%s (%s, default %s, now %s): %s"):format(key, e.type, show(e.default), show(rawget(cfg, key)), doc)
end

function M.help(cfg)
    return help_text(state_of(cfg))
end

return setmetatable(M, {
    __call = function(_, spec, opts) return M.new(spec, opts) end,
})
