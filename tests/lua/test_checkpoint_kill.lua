--[[
test_checkpoint_kill.lua - run checkpoints survive SIGKILL at any moment.

A child (tests/lua/crash_train.lua) trains a tiny Llama, saving a checkpoint after every
step with keep_last = 2, and resumes from its run folder's newest complete checkpoint. It is
killed again and again:
  - at chosen steps of a checkpoint commit: the child pauses there when LUATRAIN_TEST_PAUSE
    names the point (lua/luatrain/fs.lua, test_point), and is killed as it says so. The
    points cycle through: leftovers cleaned, model written, optimizer written, state
    written (all in the hidden temporary folder), committed (renamed into place), and an
    old checkpoint pruned;
  - at random moments: a random delay of up to three steps' time (measured by the
    uninterrupted run) after it starts training, which lands anywhere in a step, in a file
    being written, in an fsync or in a removal.
After every kill, every checkpoint-<n> folder is complete, the newest never goes back, it is
what the kill point implies, and it loads into a fresh model; the next child resumes from
it. At the end the run, finished without a kill, has the same weights, bit for bit, as a
run never interrupted.

LT_KILL_SEED picks the random draws (the default is fixed); the output says how many kills
landed where.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local Child = require "child"

local STEPS = 80
local KILLS = 24
local PHASES = { "cleaned", "model", "optimizer", "state", "committed", "pruned" }
-- what crash_train.lua builds
local CFG = { vocab_size = 256, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2,
    num_attention_heads = 2, num_key_value_heads = 1, max_position_embeddings = 16, tie_word_embeddings = true }

local seed = tonumber(os.getenv("LT_KILL_SEED") or "") or 20240611
math.randomseed(seed)

local base = os.tmpname()
os.remove(base)
local straight, killed = base .. ".straight", base .. ".killed"

local function driver(run, env)
    return Child.spawn({ T.luatrain(), "tests/lua/crash_train.lua", run, tostring(STEPS) }, env)
end

-- Every checkpoint folder of the run is complete; returns the newest step (0: none).
local function check_run(run, why)
    local warnings = {}
    local warn = lt.checkpoint.warn
    lt.checkpoint.warn = function(msg) warnings[#warnings + 1] = msg end
    local path, step = lt.checkpoint.latest(run)
    lt.checkpoint.warn = warn
    T.eq(warnings, {}, why .. ": no damaged checkpoint")
    for _, c in ipairs(lt.checkpoint.list(run)) do
        local ok, err = pcall(lt.checkpoint.load, c.path, {})
        T.ok(ok, why .. ": " .. tostring(err))
    end
    if not path then return 0 end
    -- and it loads: model, optimizer, all of it
    local m = lt.llama.new(CFG)
    local o = lt.optim.AdamW(m:parameters(), { lr = 1e-3 })
    local st = lt.checkpoint.load(run, { model = m, optimizer = o })
    T.eq(st.step, step, why)
    return step
end

-- Seconds one step takes here (startup included, so an overestimate), measured by the
-- uninterrupted run: random kills land within a few steps of where training is, however
-- fast or slow the machine, so the run never finishes before the last kill.
local step_seconds = 0.01

T.test("an uninterrupted run", function()
    local t0 = lt.fs.now()
    local c = driver(straight)
    T.eq(c:expect("^(done)$", 300), "done", c.output)
    T.eq({ c:wait(30) }, { "exited", 0 }, c.output)
    step_seconds = math.max((lt.fs.now() - t0) / STEPS, 1e-3)
end)

T.test(("killed %d times, at the steps of a commit and at random moments, the run resumes " ..
    "and ends with the same weights"):format(KILLS), function()
    local kills, at_points, at_random, with_leftovers = 0, {}, 0, 0
    local newest = 0
    local round = 0
    while kills < KILLS do
        round = round + 1
        T.ok(newest < STEPS - 4, "the run must not finish before the last kill (raise STEPS)")
        local why, want
        local c
        if round % 2 == 1 then
            -- pause at a chosen point of a commit a few steps ahead, and kill there
            local phase = PHASES[(#at_points % #PHASES) + 1]
            local s = newest + math.random(1, 2)
            local point
            if phase == "pruned" then
                s = math.max(s, 3)
                point = ("checkpoint %d pruned %d"):format(s, s - 2)
            else
                point = ("checkpoint %d %s"):format(s, phase)
            end
            c = driver(killed, { LUATRAIN_TEST_PAUSE = point })
            T.eq(c:expect("^luatrain%-test%-pause (.*)$", 120), point, c.output)
            c:kill()
            why = "killed at '" .. point .. "'"
            -- before the rename the new checkpoint does not exist; from it on, it is there
            want = (phase == "committed" or phase == "pruned") and s or s - 1
            at_points[#at_points + 1] = point
        else
            c = driver(killed)
            T.ok(c:expect("^(%a+)", 120), c.output) -- "fresh" or "resumed <n>"
            local delay = math.random() * 3 * step_seconds
            Child.sleep(delay)
            c:kill()
            why = ("killed %.0f ms into training"):format(delay * 1000)
        end
        local how, code = c:wait(60)
        T.ok(how == "killed" or how == "exited", why .. ": " .. how .. "\n" .. c.output)
        if how == "killed" then
            kills = kills + 1
            if not want then at_random = at_random + 1 end
            T.eq(code, 9, why)
        else
            T.ok(code == 0, why .. ": the child failed:\n" .. c.output)
        end
        local step = check_run(killed, why)
        T.ok(step >= newest, ("%s: the newest checkpoint went back from %d to %d"):format(why, newest, step))
        if want then T.eq(step, want, why .. ": newest checkpoint") end
        newest = step
        for _, e in ipairs(lt.fs.list(killed)) do
            if e.name:sub(1, 1) == "." then
                with_leftovers = with_leftovers + 1
                break
            end
        end
    end
    -- finish without a kill: leftovers go, the weights are those of the straight run
    local c = driver(killed)
    T.eq(c:expect("^resumed (%d+)$", 120), tostring(newest), c.output)
    T.eq(c:expect("^(done)$", 300), "done", c.output)
    T.eq({ c:wait(30) }, { "exited", 0 }, c.output)
    local names = {}
    for _, e in ipairs(lt.fs.list(killed)) do names[#names + 1] = e.name end
    T.eq(names, { "checkpoint-" .. (STEPS - 1), "checkpoint-" .. STEPS, "final.safetensors" })
    local a = lt.safetensors.load(straight .. "/final.safetensors")
    local b = lt.safetensors.load(killed .. "/final.safetensors")
    local n = 0
    for name, t in pairs(a) do
        T.ok(b[name] and b[name]:equal(t), name .. " equals the uninterrupted run's, bit for bit")
        n = n + 1
    end
    T.ok(n > 10)
    print(("seed %d: %d kills (%d at commit points: %s; %d at random moments), %d left leftovers, " ..
        "resumed from step %d at the end"):format(seed, kills, #at_points, table.concat(at_points, ", "),
        at_random, with_leftovers, newest))
end)

lt.fs.remove_tree(straight)
lt.fs.remove_tree(killed)
T.done()
