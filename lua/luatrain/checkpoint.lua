--[[
checkpoint.lua - run checkpoints: everything a run needs to continue the same trajectory,
in numbered folders that survive a crash at any moment.

    lt.checkpoint.save("runs/x", { model = model, optimizer = opt, loader = loader,
                                   step = step, keep_last = 3, scaler = scaler, extra = { ... } })
        -- writes runs/x/checkpoint-<step>; keeps the 3 newest complete checkpoints
    local st = lt.checkpoint.load("runs/x", { model = model, optimizer = opt, loader = loader })
        -- the run's newest complete checkpoint (or name one: "runs/x/checkpoint-200");
        -- returns state.json's table: st.step, st.extra, and st.path, the folder it read
    local path, step = lt.checkpoint.latest("runs/x")     -- nil when the run has none

A checkpoint is a folder: model.safetensors (the parameters, Hugging Face names: all of
them, or only the trainable ones when part of the model is frozen, as with LoRA on a
quantized base, whose weights come back from their source folder on resume),
optimizer.safetensors (AdamW moments by group and position) and state.json (step counts
and hyperparameters, the data loader's position, the loss scaler's state, the RNG state,
the caller's extra fields).

Saving step s into a run folder:
  1. what an earlier crash left is put right: a checkpoint the fallback had moved aside is
     put back, and every hidden ".checkpoint-*" sibling (tmp-, old-, del-) is removed;
  2. the files are written into a new hidden sibling ".checkpoint-<s>.tmp-...", a name no
     reader takes for a checkpoint;
  3. in C (fs.commit_dir): every file and the folder are fsynced, the folder is renamed to
     checkpoint-<s> (exchanged with a previous checkpoint-<s>, if there is one), and the run
     folder is fsynced;
  4. only then, with keep_last = K, older checkpoints beyond the K newest complete ones are
     removed (each renamed to a hidden name before its files go).
A crash at any moment leaves every checkpoint-<n> folder complete. Loading from a run folder
takes the newest complete one; one that is damaged all the same (a truncated or missing
file) is skipped with a warning in favour of the one before. One process saves into a
run folder at a time.
]]
local json = require "luatrain.json"
local fs = require "luatrain.fs"
local safetensors = require "luatrain.safetensors"
local tensor = require "luatrain.tensor"

local M = {}
M.VERSION = 1

-- Where warnings go (a checkpoint skipped for a damaged one); tests replace it.
function M.warn(msg) io.stderr:write("warning: ", msg, "\n") end

local function strip(path)
    if type(path) ~= "string" or path == "" then error("checkpoint: path must be a non-empty string", 3) end
    return (path:gsub("(.)/+$", "%1"))
end

local function step_of(name)
    local s = name:match("^checkpoint%-(%d+)$")
    return s and tonumber(s)
end

-- Every checkpoint-<n> folder of a run, complete or not, by step: { { path, step }, ... }.
function M.list(run_dir)
    run_dir = strip(run_dir)
    local out = {}
    if fs.kind(run_dir) ~= "dir" then return out end
    for _, e in ipairs(fs.list(run_dir)) do
        local step = e.kind == "dir" and step_of(e.name)
        if step then out[#out + 1] = { path = run_dir .. "/" .. e.name, step = step } end
    end
    table.sort(out, function(a, b) return a.step < b.step end)
    return out
end

-- state.json's table when every file of the checkpoint is there and readable (headers
-- checked, tensors not read); otherwise nil and an error naming the file.
local function inspect(dir)
    local ok, res = pcall(function()
        local state = json.read_file(dir .. "/state.json")
        if type(state) ~= "table" or state.version ~= M.VERSION then
            error(("%s/state.json: not a luatrain checkpoint (version %s)"):format(dir,
                tostring(type(state) == "table" and state.version or nil)), 0)
        end
        if type(state.step) ~= "number" then error(dir .. "/state.json: no step", 0) end
        safetensors.open(dir .. "/model.safetensors"):close()
        if state.optimizer then safetensors.open(dir .. "/optimizer.safetensors"):close() end
        return state
    end)
    if ok then return res end
    return nil, tostring(res)
end

-- The newest complete checkpoint of a run folder: its path and step, or nil when there is
-- none. Damaged ones on the way are skipped with a warning.
function M.latest(run_dir)
    local list = M.list(run_dir)
    for i = #list, 1, -1 do
        local state, err = inspect(list[i].path)
        if state then return list[i].path, list[i].step end
        M.warn(("%s: skipped, not a complete checkpoint: %s"):format(list[i].path, err))
    end
    return nil
end

-- ---- saving ----------------------------------------------------------------------------

-- Put right what a crashed save left in the run folder (step 1 above).
local function clean(run_dir)
    local function leftovers()
        local out = {}
        for _, e in ipairs(fs.list(run_dir)) do
            local name, tag = e.name:match("^%.(checkpoint%-%d+)%.(%l+)%-")
            if name and (tag == "tmp" or tag == "old" or tag == "del") then
                out[#out + 1] = { entry = e.name, name = name, tag = tag }
            end
        end
        return out
    end
    for _, l in ipairs(leftovers()) do
        if l.tag == "old" then fs.restore_dir(run_dir .. "/" .. l.name) end
    end
    for _, l in ipairs(leftovers()) do fs.remove_tree(run_dir .. "/" .. l.entry) end
end

local function write_contents(dir, parts, step)
    local point = ("checkpoint %d "):format(step)
    -- ZeRO-3 keeps each layer in shards (and its layers' parameters share two buffers, which
    -- name walks would take for tied weights): whole for the save, sharded again after
    local z3 = parts.optimizer and parts.optimizer.layer_shards and parts.optimizer
    if z3 then z3:gather_params() end
    local all = parts.model:state_dict()
    local trainable = {}
    local n_all, n_train = 0, 0
    for _ in pairs(all) do n_all = n_all + 1 end
    for _, r in ipairs(parts.model:parameters()) do
        trainable[r.name] = r.param
        n_train = n_train + 1
    end
    local frozen = n_train < n_all or (parts.model.quant_layers and #parts.model:quant_layers() > 0)
    safetensors.save(dir .. "/model.safetensors", frozen and trainable or all, { format = "pt" })
    if z3 then z3:reshard() end
    fs.test_point(point .. "model")
    local state = { version = M.VERSION, step = step, extra = parts.extra or {},
        rng = tensor.get_rng_state(), model_params = frozen and "trainable" or "all" }
    if parts.optimizer then
        local sd = parts.optimizer:state_dict()
        safetensors.save(dir .. "/optimizer.safetensors", sd.tensors, { format = "pt" })
        state.optimizer = { params = sd.params, groups = sd.groups }
        fs.test_point(point .. "optimizer")
    end
    if parts.loader then state.loader = parts.loader:state() end
    if parts.scaler then state.scaler = parts.scaler:state_dict() end
    fs.write_atomic(dir .. "/state.json", json.encode(state, { indent = 2 }) .. "\n")
    fs.test_point(point .. "state")
end

-- keep_last = K: the new checkpoint and the K - 1 newest complete ones before it stay;
-- the others before it go. Checkpoints numbered after `step` (left by a run that was
-- resumed from an earlier one) are not touched: saving reaches and replaces them.
local function prune(run_dir, step, keep_last)
    local kept = 1
    local list = M.list(run_dir)
    for i = #list, 1, -1 do
        local c = list[i]
        if c.step < step then
            if kept < keep_last and inspect(c.path) then
                kept = kept + 1
            else
                fs.remove_tree(c.path)
                fs.test_point(("checkpoint %d pruned %d"):format(step, c.step))
            end
        end
    end
end

-- Save parts (model required; optimizer, loader, extra optional) as checkpoint-<step> in
-- run_dir; returns the checkpoint's path.
function M.save(run_dir, parts)
    run_dir = strip(run_dir)
    if type(parts) ~= "table" or not parts.model then error("checkpoint.save: needs { model = ... }", 2) end
    local step = parts.step
    if type(step) ~= "number" or step < 0 or step % 1 ~= 0 then
        error("checkpoint.save: step must be a whole number >= 0, got " .. tostring(step), 2)
    end
    local keep_last = parts.keep_last or 0
    if type(keep_last) ~= "number" or keep_last < 0 or keep_last % 1 ~= 0 then
        error("checkpoint.save: keep_last must be a whole number >= 0 (0: keep all), got " .. tostring(keep_last), 2)
    end
    if fs.kind(run_dir) == "missing" then
        fs.make_dirs(run_dir)
        -- a new run folder's own name must survive a power loss too
        fs.fsync_dir((fs.split(run_dir)))
    end
    clean(run_dir)
    fs.test_point(("checkpoint %d cleaned"):format(step))
    local final = ("%s/checkpoint-%d"):format(run_dir, step)
    local tmp = fs.make_temp_dir(final)
    local ok, err = pcall(write_contents, tmp, parts, step)
    if ok then ok, err = pcall(fs.commit_dir, tmp, final) end
    if not ok then
        -- the failure being reported is the one that matters; the leftover, if any, goes at
        -- the next save
        pcall(fs.remove_tree, tmp)
        error(err, 0)
    end
    fs.test_point(("checkpoint %d committed"):format(step))
    if keep_last > 0 then prune(run_dir, step, keep_last) end
    return final
end

-- ---- loading ---------------------------------------------------------------------------

local FLOAT = { f32 = true, bf16 = true, f16 = true }

-- Every tensor of a checkpoint file, refusing NaN and infinities (a checkpoint saved from a
-- run that had diverged, or damaged bytes): an error naming the tensor and the file.
local function read_tensors(path)
    local sd = safetensors.load(path)
    local names = {}
    for name in pairs(sd) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
        local t = sd[name]
        if FLOAT[t.dtype] and t:has_nonfinite() then
            error(("%s: tensor '%s' holds NaN or infinite values"):format(path, name), 0)
        end
    end
    return sd
end

-- A checkpoint folder itself (not a run folder): named checkpoint-<n>, or holding state.json.
local function is_checkpoint(path)
    local base = path:match("([^/]+)$") or path
    return step_of(base) ~= nil or fs.kind(path .. "/state.json") ~= "missing"
end

-- Restore into the given objects from `path`, a checkpoint folder or a run folder (its
-- newest complete checkpoint). A checkpoint named directly that is not complete is an
-- error naming the file. Everything is read and checked before anything is changed.
-- Returns state.json's table (step, extra, ...) with path, the folder read.
function M.load(path, parts)
    path = strip(path)
    parts = parts or {}
    local dir = path
    if not is_checkpoint(path) then
        if fs.kind(path) ~= "dir" then error(("%s: no such checkpoint or run folder"):format(path), 0) end
        dir = M.latest(path)
        if not dir then error(("%s: the run folder holds no complete checkpoint"):format(path), 0) end
    end
    local state, err = inspect(dir)
    if not state then error(err, 0) end
    local model_sd, opt_tensors
    if parts.model then model_sd = read_tensors(dir .. "/model.safetensors") end
    if parts.optimizer then
        if not state.optimizer then error(dir .. ": the checkpoint has no optimizer state", 0) end
        opt_tensors = read_tensors(dir .. "/optimizer.safetensors")
    end
    if parts.loader and not state.loader then error(dir .. ": the checkpoint has no data loader position", 0) end
    -- ZeRO-3: the layers whole while the weights go in, sharded again after
    local z3 = parts.model and parts.optimizer and parts.optimizer.layer_shards and parts.optimizer
    if z3 then z3:gather_params() end
    if parts.model then
        if state.model_params == "trainable" then
            -- the frozen base came from its own folder: restore what trained, all of it
            local missing = {}
            for _, r in ipairs(parts.model:parameters()) do
                if not model_sd[r.name] then missing[#missing + 1] = r.name end
            end
            if #missing > 0 then
                error(("%s/model.safetensors: no saved value for trainable parameters %s"):format(dir,
                    table.concat(missing, ", ")), 0)
            end
            for _, r in ipairs(parts.model:parameters()) do r.param:copy_(model_sd[r.name]) end
        else
            parts.model:load_state_dict(model_sd, true)
        end
    end
    if z3 then z3:reshard() end
    if parts.optimizer then
        parts.optimizer:load_state_dict({ tensors = opt_tensors, params = state.optimizer.params,
            groups = state.optimizer.groups })
    end
    if parts.loader then parts.loader:set_state(state.loader) end
    -- a run with loss scaling resumes with the scale it had; one saved without scaling keeps
    -- the fresh scaler's
    if parts.scaler and state.scaler then parts.scaler:load_state_dict(state.scaler) end
    if state.rng then tensor.set_rng_state(state.rng) end
    state.path = dir
    return state
end

return M
