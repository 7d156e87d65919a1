--[[
checkpoint.lua - training checkpoints: everything a run needs to continue the same
trajectory, written atomically.

    lt.checkpoint.save("runs/x/checkpoint", { model = model, optimizer = opt, loader = loader,
                                              step = step, extra = { ... } })
    local st = lt.checkpoint.load("runs/x/checkpoint", { model = model, optimizer = opt,
                                                         loader = loader })   -- st.step, st.extra

A checkpoint is a folder: model.safetensors (the parameters, Hugging Face names: all of
them, or only the trainable ones when part of the model is frozen, as with LoRA on a
quantized base, whose weights come back from their source folder on resume),
optimizer.safetensors (AdamW moments by group and position) and state.json (step counts
and hyperparameters, the data loader's position, the RNG state, the caller's extra
fields). It is written into a temporary sibling folder and renamed into place (the
previous checkpoint is moved aside first and removed last), so a crash at any point
leaves either the old checkpoint or the new one, never a mixture.
]]
local json = require "luatrain.json"
local fs = require "luatrain.fs"
local safetensors = require "luatrain.safetensors"
local tensor = require "luatrain.tensor"

local M = {}
M.VERSION = 1

local function rm_rf(path)
    -- only our own temporary folders, whose names we made
    os.execute("rm -rf '" .. path:gsub("'", "'\\''") .. "'")
end

function M.save(dir, parts)
    if type(parts) ~= "table" or not parts.model then error("checkpoint.save: needs { model = ... }", 2) end
    dir = dir:gsub("/+$", "")
    local tmp = ("%s.tmp-%d"):format(dir, math.floor(fs.now() * 1e6) % 1e9)
    rm_rf(tmp)
    fs.make_dirs(tmp)
    local all = parts.model:state_dict()
    local trainable, frozen = {}, false
    local n_all, n_train = 0, 0
    for _ in pairs(all) do n_all = n_all + 1 end
    for _, r in ipairs(parts.model:parameters()) do
        trainable[r.name] = r.param
        n_train = n_train + 1
    end
    frozen = n_train < n_all or (parts.model.quant_layers and #parts.model:quant_layers() > 0)
    safetensors.save(tmp .. "/model.safetensors", frozen and trainable or all, { format = "pt" })
    local state = { version = M.VERSION, step = parts.step or 0, extra = parts.extra or {},
        rng = tensor.get_rng_state(), model_params = frozen and "trainable" or "all" }
    if parts.optimizer then
        local sd = parts.optimizer:state_dict()
        safetensors.save(tmp .. "/optimizer.safetensors", sd.tensors, { format = "pt" })
        state.optimizer = { params = sd.params, groups = sd.groups }
    end
    if parts.loader then state.loader = parts.loader:state() end
    fs.write_atomic(tmp .. "/state.json", json.encode(state, { indent = 2 }) .. "\n")
    local old = dir .. ".old"
    rm_rf(old)
    if fs.exists(dir .. "/state.json") then
        local ok, err = os.rename(dir, old)
        if not ok then error("checkpoint.save: cannot move the previous checkpoint aside: " .. tostring(err), 0) end
    end
    local ok, err = os.rename(tmp, dir)
    if not ok then error("checkpoint.save: cannot put the checkpoint in place: " .. tostring(err), 0) end
    rm_rf(old)
end

-- Restore into the given objects; returns state.json's table (step, extra, ...).
function M.load(dir, parts)
    dir = dir:gsub("/+$", "")
    local state = json.read_file(dir .. "/state.json")
    if type(state) ~= "table" or state.version ~= M.VERSION then
        error(dir .. "/state.json: not a luatrain checkpoint (version " .. tostring(state and state.version) .. ")", 0)
    end
    if parts.model then
        local sd = safetensors.load(dir .. "/model.safetensors")
        if state.model_params == "trainable" then
            -- the frozen base came from its own folder: restore what trained, all of it
            local missing = {}
            for _, r in ipairs(parts.model:parameters()) do
                local t = sd[r.name]
                if not t then
                    missing[#missing + 1] = r.name
                else
                    r.param:copy_(t)
                end
            end
            if #missing > 0 then
                error(("%s/model.safetensors: no saved value for trainable parameters %s"):format(dir,
                    table.concat(missing, ", ")), 0)
            end
        else
            parts.model:load_state_dict(sd, true)
        end
    end
    if parts.optimizer then
        if not state.optimizer then error(dir .. ": the checkpoint has no optimizer state", 0) end
        local tensors = safetensors.load(dir .. "/optimizer.safetensors")
        parts.optimizer:load_state_dict({ tensors = tensors, params = state.optimizer.params,
            groups = state.optimizer.groups })
    end
    if parts.loader then
        if not state.loader then error(dir .. ": the checkpoint has no data loader position", 0) end
        parts.loader:set_state(state.loader)
    end
    if state.rng then tensor.set_rng_state(state.rng) end
    return state
end

return M
