--[[
test_adapter_kill.lua - an adapter folder commits as one unit: a kill during lt.lora.save
never leaves weights and a config that disagree.

A child (tests/lua/crash_adapter.lua) saves an adapter into one folder again and again,
save k holding weights all equal to k and "save-k" in its config. The folder also holds a
file of the user's (notes.txt) that every save must keep. The child is killed at the steps
of the commit (weights written, config written, other files carried over, committed: the
child pauses where LUATRAIN_TEST_PAUSE says) and at random moments, first with the
exchange (renameat2) and then with the fallback forced (LUATRAIN_TEST_NO_EXCHANGE=1).
After every kill the folder holds one save's weights with that same save's config and
notes.txt (with the fallback, after lt.lora.load has put back a folder that the kill left
moved aside), the saves never go back, and lt.lora.load reads it.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local Child = require "child"

local PHASES = { "weights", "config", "carried", "committed" }
local CFG = { vocab_size = 64, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2,
    num_attention_heads = 2, num_key_value_heads = 1, max_position_embeddings = 16, tie_word_embeddings = true }

local seed = tonumber(os.getenv("LT_KILL_SEED") or "") or 20240611
math.randomseed(seed)

-- The save the folder holds (0: none yet), after checking that its files agree.
local function check_folder(dir, why)
    local saved = lt.fs.kind(dir .. "/adapter_config.json") ~= "missing"
    T.eq(lt.fs.kind(dir .. "/adapter_model.safetensors") ~= "missing", saved, why .. ": both files or neither")
    T.eq(T.slurp(dir .. "/notes.txt"), "the user's own file\n", why .. ": notes.txt kept")
    if not saved then return 0 end
    local cfg = lt.json.read_file(dir .. "/adapter_config.json")
    local k = tonumber(tostring(cfg.base_model_name_or_path):match("^save%-(%d+)$"))
    T.ok(k, why .. ": config names its save")
    local n = 0
    for name, t in pairs(lt.safetensors.load(dir .. "/adapter_model.safetensors")) do
        T.ok(t:amin():item() == k and t:amax():item() == k,
            ("%s: %s must hold save %d's weights, as the config says"):format(why, name, k))
        n = n + 1
    end
    T.ok(n > 0, why .. ": weights present")
    -- and PEFT-layout loading reads it
    local m = lt.llama.new(CFG)
    lt.lora.load(m, dir)
    return k
end

local function run(mode, kills_wanted)
    local env = mode == "fallback" and { LUATRAIN_TEST_NO_EXCHANGE = "1" } or {}
    local dir = os.tmpname()
    os.remove(dir)
    lt.fs.make_dirs(dir)
    T.write_file(dir .. "/notes.txt", "the user's own file\n")
    local newest, kills, at_points, restored, round = 0, 0, {}, 0, 0
    while kills < kills_wanted do
        round = round + 1
        local c, why, point
        local e = {}
        for k, v in pairs(env) do e[k] = v end
        if round % 2 == 1 then
            local phase = PHASES[(#at_points % #PHASES) + 1]
            point = ("adapter %d %s"):format(math.random(1, 3), phase)
            e.LUATRAIN_TEST_PAUSE = point
            c = Child.spawn({ T.luatrain(), "tests/lua/crash_adapter.lua", dir, tostring(newest + 1),
                tostring(newest + 1000) }, e)
            T.eq(c:expect("^luatrain%-test%-pause (.*)$", 120), point, c.output)
            c:kill()
            why = mode .. ", killed at '" .. point .. "'"
            at_points[#at_points + 1] = point
        else
            c = Child.spawn({ T.luatrain(), "tests/lua/crash_adapter.lua", dir, tostring(newest + 1),
                tostring(newest + 1000) }, e)
            T.eq(c:expect("^(started)$", 120), "started", c.output)
            local delay = math.random() * 0.15
            Child.sleep(delay)
            c:kill()
            why = ("%s, killed %.0f ms into saving"):format(mode, delay * 1000)
        end
        local how, code = c:wait(60)
        T.eq({ how, code }, { "killed", 9 }, why .. "\n" .. c.output)
        kills = kills + 1
        if mode == "exchange" then
            T.eq(lt.fs.kind(dir), "dir", why .. ": the folder is always there")
        elseif lt.fs.kind(dir) == "missing" then
            -- killed between the fallback's two renames: the previous folder is aside, and
            -- what lt.lora.load does first (fs.restore_dir) puts it back, before anything
            -- in it is read here
            T.ok(lt.fs.restore_dir(dir), why .. ": the folder moved aside is put back")
            restored = restored + 1
        end
        local k = check_folder(dir, why)
        T.ok(k >= newest, ("%s: went back from save %d to %d"):format(why, newest, k))
        if point and point:find("committed$") then
            T.ok(k > newest, why .. ": the committed save is there")
        end
        newest = k
    end
    -- the next save cleans up: nothing left beside the folder
    local c = Child.spawn({ T.luatrain(), "tests/lua/crash_adapter.lua", dir, tostring(newest + 1),
        tostring(newest + 1) }, env)
    T.eq({ c:wait(120) }, { "exited", 0 }, c.output)
    T.eq(check_folder(dir, mode .. ", finished"), newest + 1)
    local parent, base = lt.fs.split(dir)
    for _, en in ipairs(lt.fs.list(parent)) do
        T.ok(en.name:sub(1, #base + 2) ~= "." .. base .. ".", "leftover " .. en.name)
    end
    lt.fs.remove_tree(dir)
    print(("%s: %d kills (%d at commit points: %s), folder put back after %d; last save %d"):format(mode, kills,
        #at_points, table.concat(at_points, ", "), restored, newest + 1))
end

T.test("killed during lt.lora.save (exchange), the folder's weights and config always agree", function()
    run("exchange", 12)
end)

T.test("killed during lt.lora.save (fallback), the folder's weights and config always agree", function()
    run("fallback", 8)
end)

T.done()
