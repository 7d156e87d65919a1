--[[
pretrained.lua - Llama models from and to Hugging Face folders (lt.llama, also lt.pretrained);
the architecture itself is nn/llama.lua.

    local model = lt.llama.from_pretrained("path/to/folder")      -- f32 trainable weights
    local model = lt.llama.new(config_table)                        -- random init
    lt.llama.save_pretrained(model, "out/folder", { dtype = "bf16" })

A folder holds config.json and model.safetensors, or shards listed in
model.safetensors.index.json. Weights are read through mmap and copied (converting dtype)
into the model's parameters one tensor at a time, so loading needs the model's size plus
one tensor.
]]
local json = require "luatrain.json"
local safetensors = require "luatrain.safetensors"
local nnllama = require "luatrain.nn.llama"


local M = {}

-- config.json fields the architecture reads, with the JSON type each must have, in the
-- order they are checked (so the first problem reported is always the same one).
local CONFIG_FIELDS = {
    { "vocab_size", "integer" }, { "hidden_size", "integer" }, { "intermediate_size", "integer" },
    { "num_hidden_layers", "integer" }, { "num_attention_heads", "integer" },
    { "num_key_value_heads", "integer?" }, { "head_dim", "integer?" }, { "rms_norm_eps", "number?" },
    { "rope_theta", "number?" }, { "rope_scaling", "object?" }, { "max_position_embeddings", "integer?" },
    { "tie_word_embeddings", "boolean?" }, { "initializer_range", "number?" },
}

local function file_exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

-- Parse and check a config.json; errors name the file and the field.
function M.read_config(path)
    local raw = json.read_file(path)
    if type(raw) ~= "table" or json.is_array(raw) then
        error(("%s: expected a JSON object"):format(path), 0)
    end
    local cfg = {}
    for _, field in ipairs(CONFIG_FIELDS) do
        local key, want = field[1], field[2]
        local v = raw[key]
        local optional = want:sub(-1) == "?"
        local kind = optional and want:sub(1, -2) or want
        if v == nil or v == json.null then
            if not optional then error(("%s: missing field %q"):format(path, key), 0) end
        else
            local ok
            if kind == "integer" then
                ok = type(v) == "number" and v == math.floor(v) and v > 0 and v < 2 ^ 31
            elseif kind == "number" then
                ok = type(v) == "number"
            elseif kind == "boolean" then
                ok = type(v) == "boolean"
            else
                ok = type(v) == "table" and not json.is_array(v)
            end
            if not ok then
                local shown = type(v) == "number" and tostring(v) or
                    (type(v) == "table" and (json.is_array(v) and "an array" or "an object")) or json.encode(v)
                local wanted = ({ integer = "a positive integer", number = "a number", boolean = "true or false",
                    object = "an object" })[kind]
                error(("%s: field %q must be %s, got %s"):format(path, key, wanted, shown), 0)
            end
            cfg[key] = v
        end
    end
    -- Mistral is Llama with a sliding window; Qwen3 adds an RMSNorm over each head of q and k
    -- Qwen2 (and 2.5) adds biases to q, k and v
    local family = { llama = true, mistral = true, qwen2 = true, qwen3 = true }
    if raw.model_type and not family[raw.model_type] then
        error(("%s: model_type %q is not a Llama-family model (llama, mistral, qwen2, qwen3)"):format(path,
            tostring(raw.model_type)), 0)
    end
    if raw.model_type == "qwen3" then cfg.qk_norm = true end
    if raw.model_type == "qwen2" then cfg.qkv_bias = true end
    -- what the architecture does not have must be refused, not silently dropped
    if raw.hidden_act ~= nil and raw.hidden_act ~= "silu" then
        error(("%s: hidden_act %s is not supported (silu)"):format(path, json.encode(raw.hidden_act)), 0)
    end
    for _, key in ipairs({ "attention_bias", "mlp_bias" }) do
        if raw[key] ~= nil and raw[key] ~= false and raw[key] ~= json.null then
            error(("%s: %s = %s is not supported (Llama's linears have no bias)"):format(path, key,
                json.encode(raw[key])), 0)
        end
    end
    -- transformers 5 writes the rotary settings as one object, rope_parameters = {rope_type,
    -- rope_theta, factor, ...}, in place of rope_theta and rope_scaling (4.x); either is read
    local rp = raw.rope_parameters
    if rp ~= nil and rp ~= json.null then
        if type(rp) ~= "table" or json.is_array(rp) then
            error(("%s: field \"rope_parameters\" must be an object"):format(path), 0)
        end
        local theta = rp.rope_theta
        if theta ~= nil and type(theta) ~= "number" then
            error(("%s: rope_parameters.rope_theta must be a number, got %s"):format(path, json.encode(theta)), 0)
        end
        if theta and cfg.rope_theta and cfg.rope_theta ~= theta then
            error(("%s: rope_theta (%s) and rope_parameters.rope_theta (%s) disagree"):format(path,
                tostring(cfg.rope_theta), tostring(theta)), 0)
        end
        cfg.rope_theta = cfg.rope_theta or theta
        if cfg.rope_scaling and (rp.rope_type or rp.type or "default") ~= "default" then
            error(("%s: give rope_scaling or a scaled rope_parameters, not both"):format(path), 0)
        end
        if not cfg.rope_scaling then cfg.rope_scaling = rp end
    end
    -- values that change the math: refused when out of their range, not silently used
    local function positive_finite(key)
        local v = cfg[key]
        if v ~= nil and not (v > 0 and v < math.huge) then
            error(("%s: %s must be a positive finite number, got %s"):format(path, key, tostring(v)), 0)
        end
    end
    positive_finite("rms_norm_eps")
    positive_finite("rope_theta")
    if cfg.initializer_range ~= nil and not (cfg.initializer_range >= 0 and cfg.initializer_range < math.huge) then
        error(("%s: initializer_range must be a finite number >= 0, got %s"):format(path,
            tostring(cfg.initializer_range)), 0)
    end
    -- sliding-window attention (Mistral) is not implemented: the window is kept, and a
    -- sequence longer than it is refused at forward time (below it nothing changes)
    local sw = raw.sliding_window
    if raw.use_sliding_window == false then sw = nil end -- Qwen's switch: the field is then unused
    if sw ~= nil and sw ~= json.null then
        if type(sw) ~= "number" or sw < 1 or sw ~= math.floor(sw) then
            error(("%s: sliding_window must be a positive integer or null, got %s"):format(path, json.encode(sw)), 0)
        end
        cfg.sliding_window = sw
    end
    local rs = cfg.rope_scaling
    if rs then
        for _, key in ipairs({ "rope_type", "type" }) do
            if rs[key] ~= nil and type(rs[key]) ~= "string" then
                error(("%s: rope_scaling.%s must be a string, got %s"):format(path, key, json.encode(rs[key])), 0)
            end
        end
        local ty = rs.rope_type or rs.type or "default"
        if ty ~= "llama3" and ty ~= "linear" and ty ~= "default" then
            error(("%s: rope_scaling type %q is not supported (llama3, linear)"):format(path, tostring(ty)), 0)
        end
        if ty == "default" then
            cfg.rope_scaling = nil
        else
            cfg.rope_scaling = { type = ty, factor = rs.factor, low_freq_factor = rs.low_freq_factor,
                high_freq_factor = rs.high_freq_factor,
                original_max_position_embeddings = rs.original_max_position_embeddings }
            if type(rs.factor) ~= "number" or not (rs.factor > 0 and rs.factor < math.huge) then
                error(("%s: rope_scaling.factor must be a positive number, got %s"):format(path,
                    json.encode(rs.factor == nil and json.null or rs.factor)), 0)
            end
            if ty == "llama3" then
                for _, key in ipairs({ "low_freq_factor", "high_freq_factor", "original_max_position_embeddings" }) do
                    local v = rs[key]
                    if type(v) ~= "number" or not (v > 0 and v < math.huge) then
                        error(("%s: rope_scaling.%s must be a positive number for llama3 scaling, got %s"):format(
                            path, key, json.encode(v == nil and json.null or v)), 0)
                    end
                end
                if not (rs.high_freq_factor > rs.low_freq_factor) then
                    error(("%s: rope_scaling.high_freq_factor (%s) must exceed low_freq_factor (%s)"):format(path,
                        tostring(rs.high_freq_factor), tostring(rs.low_freq_factor)), 0)
                end
            end
        end
    end
    cfg.raw = raw
    local ok, res = pcall(nnllama.normalize_config, cfg)
    if not ok then error(path .. ": " .. tostring(res):gsub("^llama config: ", ""), 0) end
    return res
end

-- name -> shard file for a folder (single file or sharded index).
local function weight_files(folder)
    local single = folder .. "/model.safetensors"
    local index = folder .. "/model.safetensors.index.json"
    if file_exists(single) then return { files = { single }, map = nil } end
    if file_exists(index) then
        local idx = json.read_file(index)
        if type(idx) ~= "table" or type(idx.weight_map) ~= "table" then
            error(index .. ": missing the weight_map object", 0)
        end
        local files, seen, map = {}, {}, {}
        for name, shard in pairs(idx.weight_map) do
            if type(shard) ~= "string" or shard:find("/", 1, true) or shard:find("..", 1, true) then
                error(("%s: weight_map[%q] must be a file name in the folder"):format(index, name), 0)
            end
            local path = folder .. "/" .. shard
            map[name] = path
            if not seen[path] then
                seen[path] = true
                files[#files + 1] = path
            end
        end
        table.sort(files)
        return { files = files, map = map, index = index }
    end
    error(("%s: no model.safetensors or model.safetensors.index.json"):format(folder), 0)
end

-- Tensors Hugging Face checkpoints carry that are not parameters.
local function ignorable(name)
    return name:match("rotary_emb%.inv_freq$") ~= nil
end

-- Suffixes of the extra tensors bitsandbytes stores beside a quantized "<prefix>.weight".
local BNB_SUFFIXES = { ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
    ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4", ".SCB", ".weight_format" }

local function bnb_owner(name)
    for _, suf in ipairs(BNB_SUFFIXES) do
        if name:sub(-#suf) == suf then return name:sub(1, -#suf - 1) end
    end
    return nil
end

-- Copy every parameter from the folder's safetensors into `model`, tensor by tensor from
-- the file mappings. A quantized layer (model built with quant) is quantized straight from
-- its mapped weight, so no f32 copy of it ever exists; a layer stored by bitsandbytes is
-- taken as it is (its codes stay in the mapping).
-- opts.on_quantized(name): called after each quantized layer's weight is in place.
function M.load_weights(model, folder, opts)
    local quant = require "luatrain.quant"
    local wf = weight_files(folder)
    local params = model:state_dict()
    local qmods = {}
    for _, e in ipairs(model.quant_layers and model:quant_layers() or {}) do qmods[e[1] .. ".weight"] = e[2] end
    local tied = model.config.tie_word_embeddings
    -- name -> file, across shards
    local where, order, files = {}, {}, {}
    for _, path in ipairs(wf.files) do
        local f = safetensors.open(path)
        files[path] = f
        for _, name in ipairs(f:keys()) do
            if where[name] then
                for _, g in pairs(files) do g:close() end
                error(("%s: tensor %s is in both %s and %s"):format(folder, name, where[name], path), 0)
            end
            if wf.map and wf.map[name] and wf.map[name] ~= path then
                for _, g in pairs(files) do g:close() end
                error(("%s: tensor %s is in %s but the index lists %s"):format(folder, name, path, wf.map[name]), 0)
            end
            where[name] = path
            order[#order + 1] = name
        end
    end
    local function get(name) return files[where[name]]:get(name) end
    local loaded = {}
    local ok, err = pcall(function()
        for _, name in ipairs(order) do
            local p, qm = params[name], qmods[name]
            if p then
                local src = get(name)
                local a, b = p:shape(), src:shape()
                if table.concat(a, ",") ~= table.concat(b, ",") then
                    error(("%s: tensor %s has shape (%s) but config.json implies (%s)"):format(where[name], name,
                        table.concat(b, ", "), table.concat(a, ", ")), 0)
                end
                p:copy_(src)
                src:free()
                files[where[name]]:drop_pages(name)
                loaded[name] = true
            elseif qm then
                local q
                if where[name .. ".quant_state.bitsandbytes__nf4"] or where[name .. ".quant_state.bitsandbytes__fp4"]
                    or where[name .. ".SCB"] then
                    local group = { [name] = get(name) }
                    for _, suf in ipairs(BNB_SUFFIXES) do
                        if where[name .. suf] then group[name .. suf] = get(name .. suf) end
                    end
                    q = quant.from_bnb(group, name:sub(1, -#".weight" - 1))
                else
                    local src = get(name)
                    local shape = src:shape()
                    if #shape ~= 2 or shape[1] ~= qm.out_features or shape[2] ~= qm.in_features then
                        error(("%s: tensor %s has shape (%s) but config.json implies (%d, %d)"):format(where[name],
                            name, table.concat(shape, ", "), qm.out_features, qm.in_features), 0)
                    end
                    q = quant.quantize(src, model.quant_opts)
                    src:free()
                    -- the file's pages of this weight are read: give them back, so the
                    -- process holds the quantized model, not that plus the file
                    files[where[name]]:drop_pages(name)
                end
                qm:set_qweight(q)
                loaded[name] = true
                if opts and opts.on_quantized then opts.on_quantized(name, qm) end
            elseif bnb_owner(name) and params[bnb_owner(name)] and not qmods[bnb_owner(name)] then
                error(("%s: %s is a bitsandbytes-quantized layer; load it with quant options (the folder's "
                    .. "config.json has no quantization_config)"):format(where[name], bnb_owner(name)), 0)
            -- (a bitsandbytes layer's pieces beside a quantized module were read with its weight)
            elseif not (ignorable(name) or (tied and name == "lm_head.weight") or
                (bnb_owner(name) and qmods[bnb_owner(name)])) then
                error(("%s: unexpected tensor %s (not a parameter of this Llama config)"):format(where[name], name), 0)
            end
        end
    end)
    for _, f in pairs(files) do f:close() end
    if not ok then error(err, 0) end
    local missing = {}
    for name in pairs(params) do
        if not loaded[name] then missing[#missing + 1] = name end
    end
    for name in pairs(qmods) do
        if not loaded[name] then missing[#missing + 1] = name end
    end
    table.sort(missing)
    if #missing > 0 then
        error(("%s: missing tensors: %s"):format(folder, table.concat(missing, ", ")), 0)
    end
end

-- The quantization a folder's config.json declares (transformers + bitsandbytes), or nil.
local function declared_quant(cfg, path)
    local qc = cfg.raw and cfg.raw.quantization_config
    if qc == nil or qc == json.null then return nil end
    if type(qc) ~= "table" then error(path .. ": quantization_config must be an object", 0) end
    if qc.quant_method ~= "bitsandbytes" then
        error(("%s: quantization method %q is not supported (bitsandbytes 4-bit and 8-bit are)"):format(
            path, tostring(qc.quant_method)), 0)
    end
    if qc.load_in_4bit then
        return { type = qc.bnb_4bit_quant_type or "fp4", double_quant = qc.bnb_4bit_use_double_quant == true }
    elseif qc.load_in_8bit then
        return { type = "int8", blocksize = 0, double_quant = false }
    end
    error(path .. ": quantization_config sets neither load_in_4bit nor load_in_8bit", 0)
end

-- A model from a Hugging Face folder. opts: dtype of the unquantized parameters ("f32";
-- "bf16" halves a frozen base), trainable, quant ("nf4" | "fp4" | "int8" | { type,
-- blocksize, double_quant }: quantize the decoder's linear layers while loading). A
-- folder saved by transformers with bitsandbytes loads quantized as it is.
function M.from_pretrained(folder, opts)
    opts = opts or {}
    folder = folder:gsub("/+$", "")
    local cfg = M.read_config(folder .. "/config.json")
    local q = declared_quant(cfg, folder .. "/config.json") or opts.quant
    if q == "none" then q = nil end
    local model = nnllama.LlamaForCausalLM(cfg, { init = false, dtype = opts.dtype,
        trainable = opts.trainable, quant = q })
    -- opts.shard (a process group of several ranks): each decoder layer is cut into the
    -- ranks' shards as soon as its quantized weights are in (dist/shard_base.lua), so no rank
    -- ever holds the whole base
    local sb, lw = nil, {}
    if opts.shard and opts.shard.world > 1 and q then
        sb = require("luatrain.dist.shard_base").new(model, opts.shard, { deferred = true })
        local want, got = {}, {}
        local function layer_of(name) return tonumber(name:match("^model%.layers%.(%d+)%.")) end
        for _, e in ipairs(model:quant_layers()) do
            local i = layer_of(e[1])
            if i then want[i + 1] = (want[i + 1] or 0) + 1 end
        end
        lw.on_quantized = function(name)
            local i = layer_of(name)
            if not i then return end
            got[i + 1] = (got[i + 1] or 0) + 1
            if got[i + 1] == want[i + 1] then sb:shard_layer(i + 1) end
        end
    end
    M.load_weights(model, folder, lw)
    if sb then sb:install() end
    model.source = folder
    return model
end

function M.new(cfg, opts)
    return nnllama.LlamaForCausalLM(cfg, opts)
end

-- The config.json Hugging Face writes for this model.
function M.hf_config(model, dtype)
    local c = model.config
    local out = {}
    if c.raw then for k, v in pairs(c.raw) do out[k] = v end end
    for _, field in ipairs(CONFIG_FIELDS) do
        if c[field[1]] ~= nil then out[field[1]] = c[field[1]] end
    end
    if c.rope_scaling then
        out.rope_scaling = { rope_type = c.rope_scaling.type, factor = c.rope_scaling.factor,
            low_freq_factor = c.rope_scaling.low_freq_factor,
            high_freq_factor = c.rope_scaling.high_freq_factor,
            original_max_position_embeddings = c.rope_scaling.original_max_position_embeddings }
    else
        out.rope_scaling = json.null
    end
    out.quantization_config = nil -- the weights written here are plain tensors
    for _, key in ipairs({ "bos_token_id", "eos_token_id", "pad_token_id" }) do
        if out[key] == nil and type(c[key]) == "number" then out[key] = c[key] end
    end
    -- a Mistral stays a Mistral (its sliding window kept); anything else is written as Llama
    if c.raw and c.raw.model_type == "mistral" then
        out.architectures = json.array({ "MistralForCausalLM" })
        out.model_type = "mistral"
        out.sliding_window = c.sliding_window or json.null
    elseif c.qk_norm then
        out.architectures = json.array({ "Qwen3ForCausalLM" })
        out.model_type = "qwen3"
        out.attention_bias = false
    elseif c.qkv_bias then
        out.architectures = json.array({ "Qwen2ForCausalLM" })
        out.model_type = "qwen2"
    else
        out.architectures = json.array({ "LlamaForCausalLM" })
        out.model_type = "llama"
        out.attention_bias = false
        out.mlp_bias = false
    end
    out.hidden_act = "silu"
    out.torch_dtype = ({ f32 = "float32", bf16 = "bfloat16", f16 = "float16" })[dtype or "f32"]
    out.tie_word_embeddings = c.tie_word_embeddings
    return out
end

-- Write config.json and the weights, each file atomically. opts.dtype: "f32" (default),
-- "bf16" or "f16". opts.max_shard_bytes: above this the weights go to
-- model-0000i-of-0000n.safetensors shards listed in model.safetensors.index.json, as
-- Hugging Face writes them (default 5e9, their 5GB). The layout not written is removed
-- afterwards, so a later load cannot pick up a stale file.
function M.save_pretrained(model, folder, opts)
    opts = opts or {}
    local dtype = opts.dtype or "f32"
    local max_shard = opts.max_shard_bytes or 5e9
    folder = folder:gsub("/+$", "")
    local fs = require "luatrain.fs"
    fs.make_dirs(folder)
    -- group tensors into shards in module order, converting dtype shard by shard
    local shards, current, current_bytes, total = {}, {}, 0, 0
    for _, e in ipairs(model:state_list()) do
        local t = e[2]
        local bytes = t:numel() * (dtype == "f32" and 4 or 2)
        if #current > 0 and current_bytes + bytes > max_shard then
            shards[#shards + 1] = current
            current, current_bytes = {}, 0
        end
        current[#current + 1] = e
        current_bytes = current_bytes + bytes
        total = total + bytes
    end
    if #current > 0 or #shards == 0 then shards[#shards + 1] = current end
    local function write_shard(path, entries)
        local out, converted = {}, {}
        for _, e in ipairs(entries) do
            local t = e[2]
            if t.dtype ~= dtype then
                t = t:to(dtype)
                converted[#converted + 1] = t
            end
            out[#out + 1] = { e[1], t }
        end
        safetensors.save(path, out, { format = "pt" })
        for _, c in ipairs(converted) do c:free() end
    end
    local single = folder .. "/model.safetensors"
    local index = folder .. "/model.safetensors.index.json"
    if #shards == 1 then
        write_shard(single, shards[1])
        if fs.exists(index) then
            -- the shards of the previous save go with its index
            local ok, old = pcall(json.read_file, index)
            if ok and type(old) == "table" and type(old.weight_map) == "table" then
                for _, file in pairs(old.weight_map) do
                    if type(file) == "string" and file:match("^model%-%d+%-of%-%d+%.safetensors$") then
                        os.remove(folder .. "/" .. file)
                    end
                end
            end
            os.remove(index)
        end
    else
        local weight_map = {}
        for i, entries in ipairs(shards) do
            local file = ("model-%05d-of-%05d.safetensors"):format(i, #shards)
            write_shard(folder .. "/" .. file, entries)
            for _, e in ipairs(entries) do weight_map[e[1]] = file end
        end
        local text = json.encode({ metadata = { total_size = total }, weight_map = weight_map }, { indent = 2 }) .. "\n"
        fs.write_atomic(index, text)
        os.remove(single)
    end
    local text = json.encode(M.hf_config(model, dtype), { indent = 2 }) .. "\n"
    fs.write_atomic(folder .. "/config.json", text)
end

return M
