--[[
cmd/plan.lua - `luatrain plan RECIPE [key=value ...] [--json] [--world=N --rank=R]`: what
the recipe's run will hold in memory, printed without loading the weights or training (for
rank R of an mpirun job of N ranks: zero=, shard_base= shard what each holds).

The recipe is started with the same arguments until its settings are read (lt.config), then
stopped; the plan comes from those settings and the model's config.json (lt.plan). --json
prints one JSON object whose peak.train is the predicted training-step peak of device 0 in
bytes, the quantity log.jsonl records as peak_bytes.
]]
local lt = require "luatrain"
local json = require "luatrain.json"

local args, as_json, world, rank = {}, false, 1, 0
for i = 1, #arg do
    local w, r = arg[i]:match("^%-%-world=(%d+)$"), arg[i]:match("^%-%-rank=(%d+)$")
    if arg[i] == "--json" then as_json = true
    elseif w then world = tonumber(w)
    elseif r then rank = tonumber(r)
    else args[#args + 1] = arg[i] end
end
if world < 1 or rank >= world then
    error(lt.config.usage_error(("plan: --rank=%d is not below --world=%d"):format(rank, world)), 0)
end
local recipe = table.remove(args, 1)
if not recipe then
    error(lt.config.usage_error("usage: luatrain plan RECIPE [key=value ...] [--json]"), 0)
end
local chunk, err = loadfile(recipe)
if not chunk then error(lt.config.usage_error(("plan: %s"):format(err)), 0) end

-- run the recipe up to its settings
local STOP = {}
local settings
lt.config.on_settings = function(cfg)
    settings = lt.config.values(cfg)
    error(STOP, 0)
end
_G.arg = { [0] = recipe }
for i, a in ipairs(args) do _G.arg[i] = a end
local ok, e = pcall(chunk, unpack(args))
lt.config.on_settings = nil
if not ok and e ~= STOP then error(e, 0) end
if not settings then
    error(lt.config.usage_error(("plan: %s reads no settings through lt.config, so there is nothing to plan"):format(
        recipe)), 0)
end
settings.world, settings.rank = world, rank
if not settings.model then
    error(lt.config.usage_error(("plan: %s has no model setting (a Hugging Face folder)"):format(recipe)), 0)
end

local p
if settings.auto_fit and settings.memory_limit and settings.memory_limit ~= "" then
    -- what the recipe's auto_fit would choose (it leaves 2% of the budget)
    local limit = lt.memory.parse_bytes(settings.memory_limit, "memory_limit")
    local fit
    fit, p = lt.plan.fit(settings, math.floor(limit * 0.98))
    if not fit then
        error(("plan: auto_fit: nothing fits memory_limit=%s; the smallest plan needs %s"):format(
            settings.memory_limit, lt.memory.format_bytes(p.peak.train)), 0)
    end
    if not as_json then
        print(("auto_fit: batch_size=%d grad_accum=%d gradient_checkpointing=%s optim=%s offload_activations=%s"):format(
            fit.batch_size, fit.grad_accum, tostring(fit.gradient_checkpointing), fit.optim,
            tostring(fit.offload_activations)))
    end
else
    p = lt.plan.from_settings(settings)
end
if as_json then
    print(json.encode(lt.plan.to_json(p)))
else
    print(("plan: %s on %s (%s)"):format(recipe, p.settings.device, p.settings.describe))
    print(lt.plan.format(p))
end
