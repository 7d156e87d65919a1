--[[
peft.lua - put LoRA adapters on a model, and save and load them in PEFT's layout (lt.lora,
also lt.peft); the adapter layer itself is nn/lora.lua.

    lt.lora.apply(model, { r = 8, alpha = 32, dropout = 0.1, target = "all-linear" })
    ... train: only adapter parameters have gradients ...
    lt.lora.save(model, "out/adapter")          -- adapter_config.json + adapter_model.safetensors
    lt.lora.load(model, "out/adapter")          -- onto a fresh base model
    lt.lora.export_merged(model, "out/merged")  -- a Hugging Face folder, bf16, adapters merged

Targets (as PEFT chooses them):
  "all-linear"          every linear layer but the output head (lm_head)
  { "q_proj", "v_proj" } modules whose name is, or ends with ".", one of these
  any other string      a Lua pattern the whole module name must match
                        ("model%.layers%.%d+%.self_attn%.[qv]_proj")
layers_to_transform = { 0, 3 } keeps only those decoder layers (0-based, as in Hugging
Face names). Every other parameter of the model is frozen.

Files: adapter_config.json holds peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
lora_dropout, target_modules, use_rslora, use_dora, bias "none",
base_model_name_or_path and the other keys PEFT writes; adapter_model.safetensors holds
base_model.model.<module>.lora_A.weight (r, in), ...lora_B.weight (out, r) and, with DoRA,
...lora_magnitude_vector (out), with {"format": "pt"} metadata. The folder commits as one
unit (M.save).
]]
local json = require "luatrain.json"
local fs = require "luatrain.fs"
local safetensors = require "luatrain.safetensors"
local nnlora = require "luatrain.nn.lora"
local layers = require "luatrain.nn.layers"

local M = {}

local PREFIX = "base_model.model."

local function is_linear(m)
    return getmetatable(m) == layers.Linear or getmetatable(m) == nnlora.QuantLinear
end


local function layer_index(name)
    local i = name:match("%.layers%.(%d+)%.") or name:match("^layers%.(%d+)%.")
    return i and tonumber(i)
end

-- Does the module `name` match `target`?
local function targeted(target, name)
    if target == "all-linear" then
        return name ~= "lm_head" and not name:match("%.lm_head$")
    end
    if type(target) == "table" then
        for _, t in ipairs(target) do
            if name == t or name:sub(-#t - 1) == "." .. t then return true end
        end
        return false
    end
    if type(target) == "string" then return name:match("^" .. target .. "$") ~= nil end
    error("lora: target must be \"all-linear\", a list of module names or a Lua pattern", 3)
end

-- PEFT's per-module keys (rank_pattern, alpha_pattern, exclude_modules): a key names a module
-- by its full name or a dotted tail of it ("q_proj", "layers.0.self_attn.q_proj"), as PEFT's
-- match of (.*\.)?key$ does for literal keys. The value of the longest matching key, or nil.
local function pattern_value(map, name)
    local best, len
    for key, v in pairs(map or {}) do
        if (name == key or name:sub(-#key - 1) == "." .. key) and (not len or #key > len) then best, len = v, #key end
    end
    return best
end

local function python_regex_escape(s)
    return (s:gsub("[%.%^%$%*%+%?%(%)%[%]%{%}%|\\]", "\\%0"))
end

-- Replace the targeted linear layers with LoRALinear. Returns the list of full names.
-- opts: r, alpha, dropout, rslora, dora, init, target ("all-linear"), layers_to_transform,
-- rank_pattern and alpha_pattern ({ [name] = r or alpha }: a module's own, by its full name or
-- a dotted tail, as PEFT's keys), exclude ({ names }: modules left out whatever target says),
-- modules_to_save ({ names }: modules trained whole and saved with the adapter, e.g. lm_head
-- and embed_tokens for new tokens; with tied embeddings both names reach the one tensor).
function M.apply(model, opts)
    opts = opts or {}
    local target = opts.target or "all-linear"
    local allowed
    if opts.layers_to_transform then
        allowed = {}
        for _, i in ipairs(opts.layers_to_transform) do allowed[i] = true end
    end
    local chosen = {}
    for _, r in ipairs(model:named_modules()) do
        if r.parent and is_linear(r.module) and targeted(target, r.name) then
            local li = layer_index(r.name)
            if not allowed or (li and allowed[li]) then
                chosen[#chosen + 1] = { parent = r.parent, name = r.key, full = r.name, module = r.module }
            end
        end
    end
    if #chosen == 0 then
        error(("lora: the target %s matches no linear layer"):format(
            type(target) == "table" and ("{" .. table.concat(target, ", ") .. "}") or ("%q"):format(target)), 2)
    end
    -- exclude_modules: names (or dotted tails) kept out whatever target says
    if opts.exclude then
        local ex = {}
        for _, e in ipairs(opts.exclude) do ex[e] = true end
        local kept = {}
        for _, c in ipairs(chosen) do
            if not pattern_value(ex, c.full) then kept[#kept + 1] = c end
        end
        chosen = kept
        if #chosen == 0 then error("lora: exclude_modules leaves no layer to adapt", 2) end
    end
    -- every adapter is checked before any is made: a wrong rank fails without allocating
    local r = opts.r or 8
    if type(r) ~= "number" or r < 1 or r ~= math.floor(r) then
        error(("lora: r must be a positive integer, got %s"):format(tostring(r)), 2)
    end
    for _, c in ipairs(chosen) do
        local m = c.module
        local smallest = math.min(m.in_features, m.out_features)
        local rm = pattern_value(opts.rank_pattern, c.full) or r
        if type(rm) ~= "number" or rm < 1 or rm ~= math.floor(rm) then
            error(("lora: rank_pattern gives %s r=%s; a positive integer is wanted"):format(c.full, tostring(rm)), 2)
        end
        if rm > smallest then
            error(("lora: r=%d is larger than %s's smaller dimension (in %d, out %d): a rank above it adds parameters, not expressiveness"):format(
                rm, c.full, m.in_features, m.out_features), 2)
        end
    end
    local alpha = opts.alpha or 16
    if type(alpha) ~= "number" or not (alpha > 0) or alpha == math.huge then
        error(("lora: alpha must be a positive number, got %s"):format(tostring(alpha)), 2)
    end
    local dropout = opts.dropout or 0
    if type(dropout) ~= "number" or not (dropout >= 0 and dropout < 1) then
        error(("lora: dropout must be in [0, 1), got %s"):format(tostring(dropout)), 2)
    end
    -- modules_to_save: modules trained whole beside the adapters (PEFT's key: a name or a
    -- dotted tail, e.g. lm_head, embed_tokens), resolved and checked before anything changes
    local whole = {}
    if opts.modules_to_save then
        local picked = {}
        for _, c in ipairs(chosen) do picked[c.full] = true end
        for _, want in ipairs(opts.modules_to_save) do
            local found = false
            for _, e in ipairs(model:named_modules()) do
                if e.name == want or e.name:sub(-(#want + 1)) == "." .. want then
                    found = true
                    if picked[e.name] then
                        error(("lora: modules_to_save names %s, which LoRA adapts too; a module is adapted or "
                            .. "trained whole, not both (leave it out of target or exclude it)"):format(e.name), 2)
                    end
                    if #e.module:named_parameters() == 0 then
                        error(("lora: modules_to_save names %s, which has no trainable weights (a quantized layer: "
                            .. "load it unquantized)"):format(e.name), 2)
                    end
                    whole[#whole + 1] = e
                end
            end
            if not found then
                error(("lora: modules_to_save names %q, which is no module of the model"):format(tostring(want)), 2)
            end
        end
    end
    model:requires_grad(false)
    for _, e in ipairs(whole) do e.module:requires_grad(true) end
    local names, short = {}, {}
    for _, c in ipairs(chosen) do
        -- rank_pattern / alpha_pattern: this module's own r and alpha (PEFT's per-module keys)
        local o = opts
        local rm, am = pattern_value(opts.rank_pattern, c.full), pattern_value(opts.alpha_pattern, c.full)
        if rm or am then
            o = {}
            for k, v in pairs(opts) do o[k] = v end
            o.r, o.alpha = rm or opts.r, am or opts.alpha
        end
        local lora = nnlora.LoRALinear(c.module, o)
        -- adapters start where the layer they wrap is, in its precision
        local dev = c.module:device()
        if dev ~= "cpu" then lora:to(dev) end
        if c.module._act_dtype then lora:set_compute_dtype(c.module._act_dtype) end
        c.parent:add_module(c.name, lora)
        names[#names + 1] = c.full
        short[c.full:match("([^%.]+)$")] = true
    end
    -- adapters put inside checkpointed layers must share those layers' activation arena
    local GradCheckpoint = require("luatrain.nn.grad_checkpoint")
    model:apply(function(m)
        if getmetatable(m) == GradCheckpoint then m:reshare() end
    end)
    -- the targets as PEFT reads them: short names when they say exactly what was chosen,
    -- else an anchored regular expression over the full names
    local target_modules
    if target == "all-linear" or type(target) == "table" then
        target_modules = {}
        for s in pairs(short) do target_modules[#target_modules + 1] = s end
        table.sort(target_modules)
    else
        local alts = {}
        for i, n in ipairs(names) do alts[i] = python_regex_escape(n) end
        target_modules = "^(" .. table.concat(alts, "|") .. ")$"
    end
    model.lora_config = {
        r = opts.r or 8, lora_alpha = opts.alpha or 16, lora_dropout = opts.dropout or 0,
        use_rslora = opts.rslora and true or false, use_dora = opts.dora and true or false,
        target_modules = target_modules, layers_to_transform = opts.layers_to_transform,
        init = opts.init, rank_pattern = opts.rank_pattern, alpha_pattern = opts.alpha_pattern,
        exclude_modules = opts.exclude, modules_to_save = opts.modules_to_save,
    }
    model._whole_modules = {}
    for i, e in ipairs(whole) do model._whole_modules[i] = e.name end
    return names
end

-- The adapter parameters: name -> tensor, PEFT's names without the base_model prefix.
-- With modules_to_save, those modules' own parameters too (lm_head.weight: PEFT's file names
-- them without its wrapper).
function M.adapter_state(model)
    local out = {}
    local whole = model._whole_modules or {}
    for _, r in ipairs(model:named_parameters()) do
        if r.name:find("%.lora_[AB]%.weight$") or r.name:find("%.lora_magnitude_vector$") then
            out[r.name] = r.param
        else
            for _, w in ipairs(whole) do
                if r.name:sub(1, #w + 1) == w .. "." then out[r.name] = r.param end
            end
        end
    end
    return out
end

-- An OLoRA/PiSSA adapter is saved as a plain one of twice the rank, alpha raised to keep
-- each layer's scale (alpha / r, or alpha / sqrt(r) with rsLoRA).
local function principal_config(c)
    local k = c.use_rslora and math.sqrt(2) or 2
    local function scaled(map, f)
        if not map then return nil end
        local o = {}
        for key, v in pairs(map) do o[key] = f(v) end
        return o
    end
    local o = {}
    for key, v in pairs(c) do o[key] = v end
    o.r, o.lora_alpha, o.init = 2 * c.r, k * c.lora_alpha, nil
    o.rank_pattern = scaled(c.rank_pattern, function(v) return 2 * v end)
    o.alpha_pattern = scaled(c.alpha_pattern, function(v) return k * v end)
    return o
end

local function peft_config(model, opts)
    local c = model.lora_config
    if c.init == "olora" or c.init == "pissa" then c = principal_config(c) end
    local lt_list = c.layers_to_transform and json.array(c.layers_to_transform) or json.null
    return {
        peft_type = "LORA", task_type = "CAUSAL_LM", r = c.r, lora_alpha = c.lora_alpha,
        lora_dropout = c.lora_dropout, use_rslora = c.use_rslora, use_dora = c.use_dora,
        target_modules = type(c.target_modules) == "table" and json.array(c.target_modules) or c.target_modules,
        bias = "none", fan_in_fan_out = false, inference_mode = true,
        init_lora_weights = c.init == "gaussian" and "gaussian" or true,
        base_model_name_or_path = opts.base_model_name_or_path or model.source or json.null,
        layers_to_transform = lt_list, layers_pattern = json.null,
        modules_to_save = c.modules_to_save and json.array(c.modules_to_save) or json.null,
        rank_pattern = c.rank_pattern or {}, alpha_pattern = c.alpha_pattern or {},
        exclude_modules = c.exclude_modules and json.array(c.exclude_modules) or json.null,
        revision = json.null, megatron_config = json.null,
        megatron_core = "megatron.core", loftq_config = {}, layer_replication = json.null,
    }
end

local saves = 0

-- Save the adapter in PEFT's layout. opts.base_model_name_or_path overrides the model's
-- source folder in adapter_config.json.
--
-- The folder commits as one unit, so weights and config always belong together: both files
-- are written into a hidden sibling, the other entries of the existing folder (a log, a
-- README) are hard-linked into it, and it takes the folder's place in one exchange
-- (fs.commit_dir). A crash at any moment leaves the previous adapter or the new one.
function M.save(model, dir, opts)
    opts = opts or {}
    if not model.lora_config then error("lora.save: the model has no LoRA adapters (lt.lora.apply first)", 2) end
    dir = dir:gsub("(.)/+$", "%1")
    fs.make_dirs((fs.split(dir)))
    fs.clean_leftovers(dir)
    saves = saves + 1
    local point = ("adapter %d "):format(saves)
    local tmp = fs.make_temp_dir(dir)
    local ok, err = pcall(function()
        local tensors, owned = {}, {}
        for name, t in pairs(M.adapter_state(model)) do tensors[PREFIX .. name] = t end
        -- OLoRA/PiSSA layers are written as adapters of the original base (see plain_pair)
        for _, e in ipairs(M.layers(model)) do
            local m = e[2]
            if m.init_A then
                local A, B = m:plain_pair()
                tensors[PREFIX .. e[1] .. ".lora_A.weight"], tensors[PREFIX .. e[1] .. ".lora_B.weight"] = A, B
                owned[#owned + 1], owned[#owned + 2] = A, B
            end
        end
        safetensors.save(tmp .. "/adapter_model.safetensors", tensors, { format = "pt" })
        for _, t in ipairs(owned) do t:free() end
        fs.test_point(point .. "weights")
        fs.write_atomic(tmp .. "/adapter_config.json", json.encode(peft_config(model, opts), { indent = 2 }) .. "\n")
        fs.test_point(point .. "config")
        fs.carry_over(dir, tmp)
        fs.test_point(point .. "carried")
        fs.commit_dir(tmp, dir)
    end)
    if not ok then
        pcall(fs.remove_tree, tmp)
        error(err, 0)
    end
    fs.test_point(point .. "committed")
end

-- Read a PEFT adapter folder's config, checking what luatrain supports.
function M.read_config(dir)
    local path = dir .. "/adapter_config.json"
    local c = json.read_file(path)
    if type(c) ~= "table" or json.is_array(c) then error(path .. ": expected a JSON object", 0) end
    if c.peft_type ~= "LORA" then
        error(("%s: peft_type is %s; only LORA adapters are supported"):format(path, tostring(c.peft_type)), 0)
    end
    local function num(key, default, ok, what)
        local v = c[key]
        if v == nil or v == json.null then return default end
        if type(v) ~= "number" or not ok(v) then
            error(("%s: %s must be %s, got %s"):format(path, key, what, json.encode(v)), 0)
        end
        return v
    end
    for _, key in ipairs({ "use_rslora", "use_dora" }) do
        if c[key] ~= nil and c[key] ~= json.null and type(c[key]) ~= "boolean" then
            error(("%s: %s must be true or false, got %s"):format(path, key, json.encode(c[key])), 0)
        end
    end
    if c.bias ~= nil and type(c.bias) ~= "string" then
        error(("%s: bias must be a string, got %s"):format(path, json.encode(c.bias)), 0)
    end
    if c.bias and c.bias ~= "none" then
        error(("%s: bias %q is not supported (only \"none\")"):format(path, tostring(c.bias)), 0)
    end
    -- per-module ranks and alphas: keys naming modules (literal names or dotted tails)
    local patterns = {}
    for _, key in ipairs({ "rank_pattern", "alpha_pattern" }) do
        local v = c[key]
        if v ~= nil and v ~= json.null then
            if type(v) ~= "table" or (json.is_array(v) and next(v) ~= nil) then
                error(("%s: %s must be an object of module name -> number"):format(path, key), 0)
            end
            for k, n in pairs(v) do
                if type(n) ~= "number" or not (n > 0) then
                    error(("%s: %s[%q] must be a positive number, got %s"):format(path, key, k, json.encode(n)), 0)
                end
                if k:find("[%^%$%*%+%?%(%)%[%]%{%}%|\\]") then
                    error(("%s: %s key %q is a regular expression luatrain cannot read; name the module"):format(
                        path, key, k), 0)
                end
            end
            if next(v) ~= nil then patterns[key] = v end
        end
    end
    local exclude
    if c.exclude_modules ~= nil and c.exclude_modules ~= json.null then
        local v = c.exclude_modules
        if type(v) == "string" then v = { v } end
        if type(v) ~= "table" then error(path .. ": exclude_modules must be a list of module names", 0) end
        exclude = {}
        for i, e in ipairs(v) do
            if type(e) ~= "string" or e:find("[%^%$%*%+%?%(%)%[%]%{%}%|\\]") then
                error(("%s: exclude_modules[%d] must be a module name, got %s"):format(path, i, json.encode(e)), 0)
            end
            exclude[i] = e
        end
        if #exclude == 0 then exclude = nil end
    end
    local whole
    if c.modules_to_save ~= nil and c.modules_to_save ~= json.null then
        local v = c.modules_to_save
        if type(v) == "string" then v = { v } end
        if type(v) ~= "table" then error(path .. ": modules_to_save must be a list of module names", 0) end
        whole = {}
        for i, e in ipairs(v) do
            if type(e) ~= "string" or e == "" then
                error(("%s: modules_to_save[%d] must be a module name, got %s"):format(path, i, json.encode(e)), 0)
            end
            whole[i] = e
        end
        if #whole == 0 then whole = nil end
    end
    -- newer PEFT settings that change what the adapter computes: refused when set, since
    -- ignoring one would give other logits than PEFT's with no word said
    local function set(v)
        if v == nil or v == json.null or v == false then return false end
        if type(v) == "table" then return next(v) ~= nil end
        return true
    end
    for _, key in ipairs({ "lora_bias", "target_parameters", "trainable_token_indices",
        "layer_replication", "use_qalora", "alora_invocation_tokens" }) do
        if set(c[key]) then
            error(("%s: %s = %s is not supported"):format(path, key, json.encode(c[key])), 0)
        end
    end
    local target = c.target_modules
    if type(target) == "table" and json.is_array(target) then
        local list = {}
        for i, t in ipairs(target) do
            if type(t) ~= "string" or t == "" then
                error(("%s: target_modules[%d] must be a module name, got %s"):format(path, i, json.encode(t)), 0)
            end
            list[i] = t
        end
        if #list == 0 then error(path .. ": target_modules is empty", 0) end
        target = list
    elseif type(target) ~= "string" then
        error(("%s: target_modules must be a list of names or a regular expression, got %s"):format(path,
            target == nil and "nothing" or json.encode(target)), 0)
    end
    local layers_list = c.layers_to_transform
    if type(layers_list) == "number" then layers_list = { layers_list } end
    if layers_list == json.null then layers_list = nil end
    if layers_list ~= nil then
        local ok = type(layers_list) == "table" and json.is_array(layers_list)
        for _, i in ipairs(ok and layers_list or {}) do
            ok = ok and type(i) == "number" and i >= 0 and i == math.floor(i)
        end
        if not ok then
            error(("%s: layers_to_transform must be a layer index or a list of them (0-based), got %s"):format(path,
                json.encode(c.layers_to_transform)), 0)
        end
    end
    local function posint(v) return v >= 1 and v == math.floor(v) and v < 2 ^ 31 end
    local function positive(v) return v > 0 and v < math.huge end
    local function prob(v) return v >= 0 and v < 1 end
    return {
        r = num("r", 8, posint, "a positive integer"), alpha = num("lora_alpha", 8, positive, "a positive number"),
        dropout = num("lora_dropout", 0, prob, "in [0, 1)"),
        rslora = c.use_rslora == true, dora = c.use_dora == true, target = target,
        layers_to_transform = layers_list, modules_to_save = whole, rank_pattern = patterns.rank_pattern, alpha_pattern = patterns.alpha_pattern,
        exclude = exclude, raw = c,
    }
end

-- A Python regular expression from adapter_config.json as a Lua pattern, for the
-- anchored alternations of literal names that save() writes; anything else is refused.
local function regex_to_names(rx, path)
    local body = rx:match("^%^?%((.*)%)%$?$") or rx:match("^%^(.*)%$$") or rx
    local names = {}
    for alt in (body .. "|"):gmatch("(.-)|") do
        local literal = alt:gsub("\\(.)", "%1")
        if literal:find("[%^%$%*%+%?%(%)%[%]%{%}%|\\]") then
            error(("%s: target_modules %q is a regular expression luatrain cannot read; give a list of names"):format(
                path, rx), 0)
        end
        names[#names + 1] = literal
    end
    return names
end

-- Apply an adapter folder's LoRA config to `model` and load its weights. opts.name: on a
-- model that has adapters already, load this one beside them under that name (see
-- M.set_adapter); the first adapter is "default".
function M.load(model, dir, opts)
    dir = dir:gsub("/+$", "")
    fs.restore_dir(dir) -- a save's fallback cut short by a crash (lt.lora.save)
    if #M.layers(model) > 0 then
        if opts and opts.name then return M.add_adapter(model, opts.name, dir) end
        error(("lora.load: %s: the model has adapters already (%s); give this one a name to load it beside them: "
            .. "lt.lora.load(model, dir, { name = ... })"):format(dir, table.concat(M.adapter_names(model), ", ")), 2)
    end
    local cfg = M.read_config(dir)
    local target = cfg.target
    if type(target) == "string" and target ~= "all-linear" then
        -- exact full names: match them as a list of whole names
        local names = regex_to_names(target, dir .. "/adapter_config.json")
        local set = {}
        for _, n in ipairs(names) do set[n] = true end
        target = {}
        for n in pairs(set) do target[#target + 1] = n end
    end
    M.apply(model, { r = cfg.r, alpha = cfg.alpha, dropout = cfg.dropout, rslora = cfg.rslora,
        dora = cfg.dora, target = target, layers_to_transform = cfg.layers_to_transform,
        rank_pattern = cfg.rank_pattern, alpha_pattern = cfg.alpha_pattern, exclude = cfg.exclude,
        modules_to_save = cfg.modules_to_save })
    local file = dir .. "/adapter_model.safetensors"
    local tensors = safetensors.load(file)
    local own = M.adapter_state(model)
    local seen = {}
    -- check every tensor before copying any (sorted, so the first problem reported is
    -- always the same one)
    local keys = {}
    for key in pairs(tensors) do keys[#keys + 1] = key end
    table.sort(keys)
    for _, key in ipairs(keys) do
        local t = tensors[key]
        local name = key:sub(1, #PREFIX) == PREFIX and key:sub(#PREFIX + 1) or key
        local p = own[name]
        if not p then error(("%s: tensor %s does not match any adapter parameter of the model"):format(file, key), 0) end
        local a, b = p:shape(), t:shape()
        if table.concat(a, ",") ~= table.concat(b, ",") then
            error(("%s: %s has shape (%s) but the model's adapter expects (%s)"):format(file, key,
                table.concat(b, ", "), table.concat(a, ", ")), 0)
        end
        seen[name] = key
    end
    local missing = {}
    for name in pairs(own) do
        if not seen[name] then missing[#missing + 1] = name end
    end
    table.sort(missing)
    if #missing > 0 then error(("%s: missing adapter tensors: %s"):format(file, table.concat(missing, ", ")), 0) end
    for name, key in pairs(seen) do own[name]:copy_(tensors[key]) end
    return model
end

-- The full names of the linear layers an adapter folder's config targets, in model order.
local function targets_of(model, cfg, dir)
    local target = cfg.target
    if type(target) == "string" and target ~= "all-linear" then
        target = regex_to_names(target, dir .. "/adapter_config.json")
    end
    local allowed
    if cfg.layers_to_transform then
        allowed = {}
        for _, i in ipairs(cfg.layers_to_transform) do allowed[i] = true end
    end
    local out = {}
    for _, r in ipairs(model:named_modules()) do
        local m = r.module
        local linear = is_linear(m) or getmetatable(m) == nnlora.LoRALinear
        if r.parent and linear and targeted(target, r.name) then
            local li = layer_index(r.name)
            if not allowed or (li and allowed[li]) then out[#out + 1] = r.name end
        end
    end
    return out
end

--[[ Load the adapter folder `dir` as adapter `name` beside the ones the model has: every
adapted layer gets a slot for it (empty where it does not target the layer; a layer only it
targets is wrapped, with an empty slot for the others). The active adapter stays as it was;
M.set_adapter switches. The base is not touched or reloaded. ]]
function M.add_adapter(model, name, dir)
    if type(name) ~= "string" or name == "" or name == "none" then
        error(("lora.add_adapter: the name must be a non-empty string other than \"none\", got %s"):format(
            tostring(name)), 2)
    end
    dir = dir:gsub("/+$", "")
    local cfg = M.read_config(dir)
    if cfg.dora then error(("%s: DoRA adapters cannot share a model with others"):format(dir), 0) end
    if cfg.modules_to_save then
        error(("%s: an adapter with modules_to_save (%s) replaces those modules whole, so it cannot share a model "
            .. "with others; load it alone"):format(dir, table.concat(cfg.modules_to_save, ", ")), 0)
    end
    local lay = M.layers(model)
    if #lay == 0 then error("lora.add_adapter: the model has no adapter yet; lt.lora.load the first one", 2) end
    local active = lay[1][2].active or "default"
    for _, e in ipairs(lay) do
        if (e[2].active or "default") == name or (e[2].slots and e[2].slots[name]) then
            error(("lora.add_adapter: adapter %q is already loaded"):format(name), 2)
        end
    end
    local want = {}
    for _, n in ipairs(targets_of(model, cfg, dir)) do want[n] = true end
    if next(want) == nil then error(("%s: its targets match no linear layer of the model"):format(dir), 0) end
    -- wrap the layers only this adapter targets; their other adapters are empty
    for _, r in ipairs(model:named_modules()) do
        if want[r.name] and is_linear(r.module) then
            local lora = nnlora.LoRALinear(r.module, { r = cfg.r })
            lora:requires_grad(false)
            lora.empty = true
            for _, e in ipairs(lay) do
                for other in pairs(e[2].slots or {}) do
                    if other ~= (lora.active or "default") and not (lora.slots and lora.slots[other]) then
                        lora:add_slot(other, { empty = true })
                    end
                end
            end
            if active ~= "default" then lora:add_slot(active, { empty = true }); lora:use(active) end
            r.parent:add_module(r.key, lora)
        end
    end
    local tensors = safetensors.load(dir .. "/adapter_model.safetensors")
    local used = {}
    for _, e in ipairs(M.layers(model)) do
        local full, m = e[1], e[2]
        local s = m:add_slot(name, { r = pattern_value(cfg.rank_pattern, full) or cfg.r,
            alpha = pattern_value(cfg.alpha_pattern, full) or cfg.alpha, rslora = cfg.rslora, empty = not want[full] })
        if not s.empty then
            for _, part in ipairs({ "A", "B" }) do
                local key = PREFIX .. full .. ".lora_" .. part .. ".weight"
                local t = tensors[key]
                local dst = s["lora_" .. part].weight
                if not t then error(("%s/adapter_model.safetensors: missing %s"):format(dir, key), 0) end
                if table.concat(t:shape(), ",") ~= table.concat(dst:shape(), ",") then
                    error(("%s/adapter_model.safetensors: %s has shape (%s), the layer needs (%s)"):format(dir, key,
                        table.concat(t:shape(), ", "), table.concat(dst:shape(), ", ")), 0)
                end
                dst:copy_(t)
                used[key] = true
            end
        end
    end
    for key in pairs(tensors) do
        if not used[key] then
            error(("%s/adapter_model.safetensors: tensor %s does not match any adapted layer"):format(dir, key), 0)
        end
    end
    return model
end

-- The adapters loaded on the model: the active one first, then the others sorted.
function M.adapter_names(model)
    local lay = M.layers(model)
    if #lay == 0 then return {} end
    local m = lay[1][2]
    local out = { m.active or "default" }
    local rest = {}
    for n in pairs(m.slots or {}) do rest[#rest + 1] = n end
    table.sort(rest)
    for _, n in ipairs(rest) do out[#out + 1] = n end
    return out
end

-- Make adapter `name` the active one on every layer ("none": run the base alone).
function M.set_adapter(model, name)
    local known = false
    for _, n in ipairs(M.adapter_names(model)) do known = known or n == name end
    if name == "none" then
        for _, e in ipairs(M.layers(model)) do e[2].disabled = true end
        return model
    end
    if not known then
        error(("lora.set_adapter: no adapter %q (loaded: %s)"):format(tostring(name),
            table.concat(M.adapter_names(model), ", ")), 2)
    end
    for _, e in ipairs(M.layers(model)) do
        e[2].disabled = nil
        e[2]:use(name)
    end
    return model
end

-- Free adapter `name` from every layer (it must not be the active one).
function M.unload_adapter(model, name)
    local lay = M.layers(model)
    if lay[1] and (lay[1][2].active or "default") == name then
        error(("lora.unload_adapter: %q is the active adapter; switch to another first"):format(name), 2)
    end
    for _, e in ipairs(lay) do e[2]:remove_slot(name) end
    return model
end

-- Run each row of the next batches through its own adapter: names[b] for row b ("none":
-- the base alone); nil goes back to the active adapter for every row. Inference only.
function M.set_row_adapters(model, names)
    for _, e in ipairs(M.layers(model)) do e[2].row_slots = names end
    return model
end

-- Every LoRALinear below the model, as { name, module }.
function M.layers(model)
    local out = {}
    for _, r in ipairs(model:named_modules()) do
        if getmetatable(r.module) == nnlora.LoRALinear then out[#out + 1] = { r.name, r.module } end
    end
    return out
end

function M.merge(model)
    for _, e in ipairs(M.layers(model)) do e[2]:merge() end
end

function M.unmerge(model)
    for _, e in ipairs(M.layers(model)) do e[2]:unmerge() end
end

-- Write a Hugging Face folder of the model with every adapter merged into its (dequantized)
-- base weight, in opts.dtype ("bf16" by default); adapters themselves are left out.
function M.export_merged(model, dir, opts)
    opts = opts or {}
    local dtype = opts.dtype or "bf16"
    local llama = require "luatrain.pretrained"
    -- Build the merged state in module order; a LoRA or quantized layer contributes one
    -- "<name>.weight".
    local entries, scratch = {}, {}
    local function visit(m, prefix)
        if getmetatable(m) == nnlora.LoRALinear or getmetatable(m) == nnlora.QuantLinear then
            local w = getmetatable(m) == nnlora.LoRALinear and m:merged_weight() or m.qweight:dequantize("f32")
            local t = w:to(dtype)
            if t ~= w then w:free() end
            scratch[#scratch + 1] = t
            entries[#entries + 1] = { prefix .. "weight", t }
            if m.bias then -- Qwen2's q, k, v
                local b = m.bias:to(dtype)
                if b ~= m.bias then scratch[#scratch + 1] = b end
                entries[#entries + 1] = { prefix .. "bias", b }
            end
            return
        end
        for _, n in ipairs(m._param_names) do
            if not (m._tied and m._tied[n]) then
                local p = m._params[n]
                local t = p.dtype == dtype and p or p:to(dtype)
                if t ~= p then scratch[#scratch + 1] = t end
                entries[#entries + 1] = { prefix .. n, t }
            end
        end
        for _, c in ipairs(m:named_children()) do visit(c.module, prefix .. c.name .. ".") end
    end
    visit(model, "")
    dir = dir:gsub("/+$", "")
    fs.make_dirs(dir)
    safetensors.save(dir .. "/model.safetensors", entries, { format = "pt" })
    for _, t in ipairs(scratch) do t:free() end
    fs.write_atomic(dir .. "/config.json", json.encode(llama.hf_config(model, dtype), { indent = 2 }) .. "\n")
end

return M
