--[[
test_run_checkpoint.lua - run checkpoints (lt.checkpoint) and adapter folders (lt.lora.save)
as folders that commit as one unit.

Checkpoints: numbered checkpoint-<step> folders in a run folder, restored exactly;
keep_last; loading from a run folder skips a damaged newest checkpoint for the one before
(with a warning) while naming it directly is an error naming the file; leftovers of a
crashed save are removed by the next save and never loaded; a checkpoint the fallback had
moved aside is put back; NaN and infinities in a checkpoint are errors naming the tensor
and the file, found before anything is changed. Adapters: a save replaces the folder as a
whole, keeps the user's other files, and cleans up after a crash. The recipes: train_tiny's
resume=auto and keep_last.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local CFG = { vocab_size = 256, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2,
    num_attention_heads = 2, num_key_value_heads = 1, max_position_embeddings = 16, tie_word_embeddings = true }

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    return d
end

local function names(dir)
    local out = {}
    for _, e in ipairs(lt.fs.list(dir)) do out[#out + 1] = e.name end
    return out
end

-- A model, its optimizer and a loader, after `steps` training steps.
local function trained(steps)
    lt.manual_seed(3)
    local model = lt.llama.new(CFG)
    local opt = lt.optim.AdamW(model:parameters(), { lr = 1e-2 })
    local loader = lt.data.windows(lt.data.byte_stream(lt.data.tiny_stories(20, 1)), 2, 16, 5)
    local function step()
        local ids, tg = loader:next()
        opt:zero_grad()
        model:forward_backward(ids, tg)
        opt:step()
    end
    for _ = 1, steps do step() end
    return { model = model, optimizer = opt, loader = loader, step_fn = step }
end

local function same_weights(a, b, what)
    local sa, sb = a:state_dict(), b:state_dict()
    for name, t in pairs(sa) do T.ok(sb[name]:equal(t), (what or "") .. name) end
end

-- Capture checkpoint warnings while fn runs.
local function warnings_of(fn)
    local got, warn = {}, lt.checkpoint.warn
    lt.checkpoint.warn = function(msg) got[#got + 1] = msg end
    local ok, err = pcall(fn)
    lt.checkpoint.warn = warn
    if not ok then error(err, 0) end
    return got
end

local function truncate(path, keep)
    local text = T.slurp(path)
    T.write_file(path, text:sub(1, keep))
end

T.test("checkpoint-<step> folders in a run folder; a load continues the run exactly", function()
    local run = tmpdir()
    local a = trained(2)
    for s = 1, 3 do
        T.eq(lt.checkpoint.save(run, { model = a.model, optimizer = a.optimizer, loader = a.loader, step = s,
            extra = { note = "s" .. s } }), run .. "/checkpoint-" .. s)
    end
    T.eq(names(run), { "checkpoint-1", "checkpoint-2", "checkpoint-3" })
    T.eq(names(run .. "/checkpoint-3"), { "model.safetensors", "optimizer.safetensors", "state.json" })
    local list = lt.checkpoint.list(run)
    T.eq(#list, 3)
    T.eq({ list[1].step, list[3].step, list[3].path }, { 1, 3, run .. "/checkpoint-3" })
    T.eq({ lt.checkpoint.latest(run) }, { run .. "/checkpoint-3", 3 })
    -- the numbers sort as numbers
    lt.checkpoint.save(run, { model = a.model, step = 10 })
    T.eq({ lt.checkpoint.latest(run) }, { run .. "/checkpoint-10", 10 })
    lt.fs.remove_tree(run .. "/checkpoint-10")

    -- two more steps straight on, against a fresh model resumed from the run folder
    a.step_fn()
    a.step_fn()
    local b = trained(0)
    local st = lt.checkpoint.load(run .. "/", { model = b.model, optimizer = b.optimizer, loader = b.loader })
    T.eq({ st.step, st.extra.note, st.path }, { 3, "s3", run .. "/checkpoint-3" })
    b.step_fn()
    b.step_fn()
    same_weights(b.model, a.model, "resumed: ")
    -- a checkpoint folder named directly
    local c = trained(0)
    T.eq(lt.checkpoint.load(run .. "/checkpoint-1", { model = c.model }).step, 1)
    lt.fs.remove_tree(run)
end)

T.test("keep_last removes older checkpoints once the new one is committed", function()
    local run = tmpdir()
    local a = trained(0)
    for s = 1, 5 do lt.checkpoint.save(run, { model = a.model, step = s, keep_last = 2 }) end
    T.eq(names(run), { "checkpoint-4", "checkpoint-5" })
    -- 0 (the default) keeps all
    for s = 6, 7 do lt.checkpoint.save(run, { model = a.model, step = s }) end
    T.eq(names(run), { "checkpoint-4", "checkpoint-5", "checkpoint-6", "checkpoint-7" })
    -- a damaged older checkpoint does not count as one kept
    truncate(run .. "/checkpoint-6/model.safetensors", 20)
    lt.checkpoint.save(run, { model = a.model, step = 8, keep_last = 3 })
    T.eq(names(run), { "checkpoint-5", "checkpoint-7", "checkpoint-8" })
    -- a run resumed from an earlier step: later numbers are left for it to replace
    lt.checkpoint.save(run, { model = a.model, step = 6, keep_last = 1 })
    T.eq(names(run), { "checkpoint-6", "checkpoint-7", "checkpoint-8" })
    lt.fs.remove_tree(run)
end)

T.test("saving a step again replaces its checkpoint as a whole", function()
    local run = tmpdir()
    local a = trained(0)
    lt.checkpoint.save(run, { model = a.model, optimizer = a.optimizer, step = 4 })
    a.step_fn()
    lt.checkpoint.save(run, { model = a.model, step = 4, extra = { again = true } })
    T.eq(names(run), { "checkpoint-4" })
    T.eq(names(run .. "/checkpoint-4"), { "model.safetensors", "state.json" }, "no stale optimizer file")
    local b = trained(0)
    T.eq(lt.checkpoint.load(run, { model = b.model }).extra.again, true)
    same_weights(b.model, a.model)
    lt.fs.remove_tree(run)
end)

T.test("a damaged newest checkpoint: the run folder falls back, naming it is an error", function()
    local run = tmpdir()
    local a = trained(1)
    lt.checkpoint.save(run, { model = a.model, optimizer = a.optimizer, step = 1 })
    local want = a.model:state_dict()["model.embed_tokens.weight"]:clone()
    a.step_fn()
    lt.checkpoint.save(run, { model = a.model, optimizer = a.optimizer, step = 2 })
    a.step_fn()
    lt.checkpoint.save(run, { model = a.model, optimizer = a.optimizer, step = 3 })
    -- 3: a truncated model file; 2: a missing state.json
    truncate(run .. "/checkpoint-3/model.safetensors", 100)
    os.remove(run .. "/checkpoint-2/state.json")
    local b = trained(0)
    local st
    local w = warnings_of(function()
        st = lt.checkpoint.load(run, { model = b.model, optimizer = b.optimizer })
    end)
    T.eq(st.step, 1)
    T.ok(b.model:state_dict()["model.embed_tokens.weight"]:equal(want), "the weights of step 1")
    T.eq(#w, 2, table.concat(w, "\n"))
    T.ok(w[1]:find(run .. "/checkpoint-3: skipped", 1, true) and w[1]:find("model.safetensors", 1, true), w[1])
    T.ok(w[2]:find(run .. "/checkpoint-2: skipped", 1, true) and w[2]:find("state.json", 1, true), w[2])
    warnings_of(function() T.eq({ lt.checkpoint.latest(run) }, { run .. "/checkpoint-1", 1 }) end)
    -- named directly: an error naming the file
    T.raises(function() lt.checkpoint.load(run .. "/checkpoint-3", { model = b.model }) end,
        run .. "/checkpoint-3/model.safetensors", true)
    T.raises(function() lt.checkpoint.load(run .. "/checkpoint-2", { model = b.model }) end,
        run .. "/checkpoint-2/state.json", true)
    T.write_file(run .. "/checkpoint-1/state.json", '{"version": 1, "step": ')
    T.raises(function() lt.checkpoint.load(run .. "/checkpoint-1", { model = b.model }) end,
        run .. "/checkpoint-1/state.json", true)
    -- nothing complete left
    T.raises(function() warnings_of(function() lt.checkpoint.load(run, { model = b.model }) end) end,
        run .. ": the run folder holds no complete checkpoint", true)
    T.raises(function() lt.checkpoint.load(run .. "/nothing", { model = b.model }) end,
        run .. "/nothing: no such checkpoint or run folder", true)
    T.eq(lt.checkpoint.latest(run .. "/nothing"), nil)
    lt.fs.remove_tree(run)
end)

T.test("leftovers of a crashed save: never loaded, removed by the next save", function()
    local run = tmpdir()
    local a = trained(0)
    lt.checkpoint.save(run, { model = a.model, optimizer = a.optimizer, step = 1 })
    -- a complete checkpoint under a temporary name (killed just before its rename), one
    -- being removed, and a file another program keeps in the run folder
    os.execute(("cp -r %s/checkpoint-1 %s/.checkpoint-2.tmp-99-0-1"):format(run, run))
    os.execute(("cp -r %s/checkpoint-1 %s/.checkpoint-0.del-99-0-2"):format(run, run))
    T.write_file(run .. "/log.jsonl", "{}\n")
    T.eq({ lt.checkpoint.latest(run) }, { run .. "/checkpoint-1", 1 })
    T.eq(#lt.checkpoint.list(run), 1)
    lt.checkpoint.save(run, { model = a.model, step = 2 })
    T.eq(names(run), { "checkpoint-1", "checkpoint-2", "log.jsonl" })
    -- the fallback's window: checkpoint-2 moved aside, the new one not yet in
    os.rename(run .. "/checkpoint-2", run .. "/.checkpoint-2.old-99-0-3")
    lt.checkpoint.save(run, { model = a.model, step = 3 })
    T.eq(names(run), { "checkpoint-1", "checkpoint-2", "checkpoint-3", "log.jsonl" })
    lt.fs.remove_tree(run)
end)

T.test("NaN or infinity in a checkpoint: an error naming the tensor and the file, nothing changed", function()
    local run = tmpdir()
    local a = trained(1)
    lt.checkpoint.save(run, { model = a.model, optimizer = a.optimizer, step = 1 })
    local dir = run .. "/checkpoint-1"
    local sd = lt.safetensors.load(dir .. "/model.safetensors")
    local bad = {}
    for name, t in pairs(sd) do bad[name] = t:clone() end
    bad["model.norm.weight"][3] = 0 / 0
    lt.safetensors.save(dir .. "/model.safetensors", bad)
    local b = trained(0)
    local before = b.model:state_dict()["model.embed_tokens.weight"]:clone()
    T.raises(function() lt.checkpoint.load(run, { model = b.model }) end,
        dir .. "/model.safetensors: tensor 'model.norm.weight' holds NaN or infinite values", true)
    T.ok(b.model:state_dict()["model.embed_tokens.weight"]:equal(before), "the model was not touched")
    -- the optimizer's moments too
    lt.checkpoint.save(run, { model = a.model, optimizer = a.optimizer, step = 1 })
    local o = lt.safetensors.load(dir .. "/optimizer.safetensors")
    local key = next(o)
    local obad = {}
    for name, t in pairs(o) do obad[name] = t:clone() end
    obad[key]:view(-1)[1] = math.huge
    lt.safetensors.save(dir .. "/optimizer.safetensors", obad)
    T.raises(function() lt.checkpoint.load(dir, { model = b.model, optimizer = b.optimizer }) end,
        dir .. "/optimizer.safetensors: tensor '" .. key .. "' holds NaN or infinite values", true)
    T.ok(b.model:state_dict()["model.embed_tokens.weight"]:equal(before), "the model was not touched")
    lt.fs.remove_tree(run)
end)

T.test("save: bad arguments are errors", function()
    local a = trained(0)
    T.raises(function() lt.checkpoint.save(tmpdir(), { model = a.model }) end, "step must be a whole number", true)
    T.raises(function() lt.checkpoint.save(tmpdir(), { model = a.model, step = 1.5 }) end, "step must be", true)
    T.raises(function() lt.checkpoint.save(tmpdir(), { model = a.model, step = 1, keep_last = -1 }) end,
        "keep_last must be", true)
    T.raises(function() lt.checkpoint.save(tmpdir(), { step = 1 }) end, "needs { model", true)
    T.raises(function() lt.checkpoint.save("", { model = a.model, step = 1 }) end, "non-empty string", true)
    -- a save that fails halfway leaves the run folder as it was
    local run = tmpdir()
    lt.checkpoint.save(run, { model = a.model, step = 1 })
    local broken = { state_dict = function() error("no state today", 0) end }
    T.raises(function() lt.checkpoint.save(run, { model = broken, step = 2, keep_last = 1 }) end, "no state today", true)
    T.eq(names(run), { "checkpoint-1" })
    lt.fs.remove_tree(run)
end)

-- ---- adapters -----------------------------------------------------------------------------

local function adapted(v)
    lt.manual_seed(1)
    local m = lt.llama.new(CFG)
    lt.lora.apply(m, { r = 2, alpha = 4, target = { "q_proj", "v_proj" } })
    for _, t in pairs(lt.lora.adapter_state(m)) do t:fill_(v) end
    return m
end

T.test("lt.lora.save swaps the whole folder in, keeping the user's other files", function()
    local dir = tmpdir()
    lt.lora.save(adapted(1), dir, { base_model_name_or_path = "one" })
    T.eq(names(dir), { "adapter_config.json", "adapter_model.safetensors" })
    T.write_file(dir .. "/README.md", "notes\n")
    lt.fs.make_dirs(dir .. "/extra/deeper")
    T.write_file(dir .. "/extra/deeper/f.txt", "deep\n")
    lt.lora.save(adapted(2), dir .. "/", { base_model_name_or_path = "two" })
    T.eq(names(dir), { "README.md", "adapter_config.json", "adapter_model.safetensors", "extra" })
    T.eq(T.slurp(dir .. "/README.md"), "notes\n")
    T.eq(T.slurp(dir .. "/extra/deeper/f.txt"), "deep\n")
    T.eq(lt.json.read_file(dir .. "/adapter_config.json").base_model_name_or_path, "two")
    local fresh = lt.llama.new(CFG)
    lt.lora.load(fresh, dir)
    for name, t in pairs(lt.lora.adapter_state(fresh)) do
        T.ok(t:amin():item() == 2 and t:amax():item() == 2, name)
    end
    -- nothing beside it
    local parent, base = lt.fs.split(dir)
    for _, e in ipairs(lt.fs.list(parent)) do T.ok(e.name:sub(1, #base + 2) ~= "." .. base .. ".", e.name) end

    -- after a crash: a half-written temporary folder is removed by the next save; a folder
    -- the fallback moved aside is put back by lt.lora.load
    lt.fs.make_dirs(parent .. "/." .. base .. ".tmp-99-0-1")
    T.write_file(parent .. "/." .. base .. ".tmp-99-0-1/adapter_config.json", "{")
    lt.lora.save(adapted(3), dir, { base_model_name_or_path = "three" })
    T.eq(lt.fs.kind(parent .. "/." .. base .. ".tmp-99-0-1"), "missing")
    os.rename(dir, parent .. "/." .. base .. ".old-99-0-2")
    local again = lt.llama.new(CFG)
    lt.lora.load(again, dir)
    T.eq(lt.json.read_file(dir .. "/adapter_config.json").base_model_name_or_path, "three")
    lt.fs.remove_tree(dir)
end)

T.test("lt.lora.save: a folder that cannot be replaced is an error, and stays as it was", function()
    local parent = tmpdir()
    lt.fs.make_dirs(parent)
    T.write_file(parent .. "/adapter", "a file, not a folder")
    T.raises(function() lt.lora.save(adapted(1), parent .. "/adapter") end, parent .. "/adapter", true)
    T.eq(T.slurp(parent .. "/adapter"), "a file, not a folder")
    T.eq(names(parent), { "adapter" }, "no temporary folder left")
    lt.fs.remove_tree(parent)
end)

-- ---- the recipe ---------------------------------------------------------------------------

T.test("train_tiny: checkpoint-<step> folders, keep_last, resume=auto", function()
    local small = "dim=32 n_layers=1 n_heads=2 n_kv_heads=1 ffn_dim=48 vocab_size=260 seq_len=16 " ..
        "batch_size=2 log_every=100 save=false warmup=1 threads=1"
    local out = tmpdir()
    local text, code = T.run(("%s recipes/train_tiny.lua %s steps=6 save_every=2 keep_last=2 resume=auto out=%s"):format(
        T.luatrain(), small, out))
    T.eq(code, 0, text)
    T.ok(not text:find("resumed"), "nothing to resume yet:\n" .. text)
    T.eq(names(out), { "checkpoint-4", "checkpoint-6", "log.jsonl", "report.html", "run_config.json" })
    text, code = T.run(("%s recipes/train_tiny.lua %s steps=8 save_every=2 keep_last=2 resume=auto out=%s"):format(
        T.luatrain(), small, out))
    T.eq(code, 0, text)
    T.ok(text:find("resumed from " .. out .. "/checkpoint-6 at step 6", 1, true), text)
    T.eq(names(out), { "checkpoint-6", "checkpoint-8", "log.jsonl", "report.html", "run_config.json" })
    lt.fs.remove_tree(out)
end)

T.done()
