--[[
test_plan.lua - the planner (lt.plan, `luatrain plan`) against what runs measure.

1. The grid: for each configuration, a process of its own (tests/lua/plan_child.lua) loads
   tiny_facts' model as the recipe does, trains two steps through lt.trainer and compares the
   peak_bytes its log records with lt.plan's peak.train (phase=eval: one held-out pass of the
   loaded model against peak.eval). Equal to the byte, except where the
   run's bytes depend on the data: int8's LLM.int8 outlier columns (the plan takes the most
   the kernel can ask for, so it may only be above) and, with gradient accumulation, the
   copies of each micro-batch's packed-sequence offsets (the plan estimates the sequences per
   row from the dataset's mean length); those must be within 0.5%.
2. `luatrain plan RECIPE --json` prints the plan of the recipe's settings without training;
   the recipe's own run (which evaluates before it trains, leaving the evaluation's few
   buffers behind) logs a peak within 0.5% of it.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local json = require "luatrain.json"

local bin = T.luatrain()

-- { settings, how the plan must match: "exact" | "bound" (plan >= run, within 0.5%) | "near" (0.5%) }
local GRID = {
    { "", "exact" }, { "quant=fp4", "exact" }, { "quant=int8", "bound" }, { "quant=none", "exact" },
    { "quant=none r=0", "exact" }, { "quant=none r=0 ck=false", "exact" }, { "ck=false", "exact" },
    { "offload=true", "exact" }, { "offload=true quant=fp4 r=16", "exact" }, { "optim=adamw_8bit", "exact" },
    { "optim=adamw_8bit r=64", "exact" }, { "optim=paged_adamw", "exact" }, { "optim=paged_adamw_8bit r=64", "exact" },
    { "precision=bf16", "exact" }, { "precision=bf16 ck=false", "exact" }, { "precision=bf16 quant=none", "exact" },
    { "r=32", "exact" }, { "r=1", "exact" }, { "batch=2 seq=64", "exact" }, { "batch=4 seq=96", "exact" },
    { "batch=1 seq=256", "exact" }, { "batch=16 seq=64", "exact" }, { "target=q_proj,v_proj", "exact" },
    { "target=q_proj", "exact" }, { "target=gate_proj,up_proj,down_proj", "exact" }, { "dropout=0", "exact" },
    { "threads=1", "exact" }, { "dq=false", "exact" }, { "blocksize=128", "exact" }, { "quant=int8 ck=false", "bound" },
    { "offload=true optim=paged_adamw precision=bf16", "exact" }, { "nvme=true", "exact" },
    { "nvme=true r=64 ck=false", "exact" }, { "host_optim=true", "exact" },
    { "host_optim=true optim=adamw_8bit r=64", "exact" }, { "accum=2", "near" },
    { "accum=3 ck=false quant=none r=0", "near" },
    -- evaluation (lt.trainer.eval_loss of the loaded model) against the plan's peak.eval
    { "phase=eval", "exact" }, { "phase=eval ck=false", "exact" }, { "phase=eval offload=true", "exact" },
    { "phase=eval quant=int8", "bound" }, { "phase=eval batch=2 seq=64", "exact" },
    { "phase=eval r=0 quant=none", "exact" }, { "phase=eval precision=bf16 quant=fp4 r=32", "exact" },
}

T.test(("the plan equals the measured peak over %d configurations"):format(#GRID), function()
    local bad = {}
    for _, g in ipairs(GRID) do
        local out, code = T.run(("%s tests/lua/plan_child.lua %s"):format(bin, g[1]))
        T.eq(code, 0, g[1] .. ": " .. out)
        local r = json.decode(out:match("{.*}"))
        local d = r.planned - r.measured
        local ok
        if g[2] == "exact" then ok = d == 0
        elseif g[2] == "bound" then ok = d >= 0 and d <= 0.005 * r.measured
        else ok = math.abs(d) <= 0.005 * r.measured end
        print(("  %-48s measured %10d planned %10d  %+d"):format(g[1] == "" and "(default)" or g[1], r.measured,
            r.planned, d))
        if not ok then bad[#bad + 1] = ("%s: measured %d, planned %d (%s)"):format(g[1], r.measured, r.planned, g[2]) end
    end
    T.eq(bad, {}, "configurations off the plan")
end)

T.test("luatrain plan RECIPE --json: the recipe's settings, no training, the run within 0.5%", function()
    local dir = os.tmpname()
    os.remove(dir)
    -- an evaluation after step 1 joins the peak (eval_every below steps)
    local args = "steps=2 eval_every=1 eval_samples=1 max_new_tokens=2 batch_size=4 r=16 output_dir=" .. dir
    local out, code = T.run(("%s plan recipes/qlora_llama.lua %s --json"):format(bin, args))
    T.eq(code, 0, out)
    local plan = json.decode(out)
    T.ok(plan.peak.train > 0 and #plan.at_peak > 3, out)
    T.ok(not io.open(dir .. "/log.jsonl"), "planning trained")
    local text, code2 = T.run(("%s plan recipes/qlora_llama.lua %s"):format(bin, args))
    T.eq(code2, 0, text)
    T.ok(text:find("peak of a training step", 1, true), text)
    local run, code3 = T.run(("%s recipes/qlora_llama.lua %s"):format(bin, args))
    T.eq(code3, 0, run)
    local peak
    for line in io.lines(dir .. "/log.jsonl") do peak = json.decode(line).peak_bytes or peak end
    print(("  recipe: measured %d, planned %d (%+.3f%%)"):format(peak, plan.peak.train,
        100 * (plan.peak.train - peak) / peak))
    T.eq(plan.peak.train, peak, "the recipe's log peak_bytes, to the byte")
    -- loading: the plan bounds the recipe's own figure ("loading peaked at 530.83 KiB") within 0.5%
    local v, unit = run:match("loading peaked at ([%d.]+) (%a+)")
    local load = tonumber(v) * ({ B = 1, KiB = 1024, MiB = 2 ^ 20, GiB = 2 ^ 30 })[unit]
    T.ok(plan.peak.load >= load - 0.01 * 1024 and plan.peak.load <= 1.005 * load,
        ("loading: measured about %d, planned %d"):format(load, plan.peak.load))
    T.run("rm -rf " .. dir)
    local bad, code4 = T.run(("%s plan recipes/qlora_llama.lua dora=true"):format(bin))
    T.ok(code4 ~= 0 and bad:find("dora=true is not planned yet", 1, true), bad)
    local none, code5 = T.run(("%s plan"):format(bin))
    T.ok(code5 == 2 and none:find("usage: luatrain plan RECIPE", 1, true), none)
end)

T.test("auto_fit under memory_limit: the fastest settings that fit, and the run stays in the budget", function()
    local dir = os.tmpname()
    os.remove(dir)
    local args = "auto_fit=true memory_limit=20MB steps=2 eval_every=0 eval_samples=1 max_new_tokens=2 output_dir=" .. dir
    local plan, pc = T.run(("%s plan recipes/qlora_llama.lua %s"):format(bin, args))
    T.eq(pc, 0, plan)
    local out, code = T.run(("%s recipes/qlora_llama.lua %s"):format(bin, args))
    T.eq(code, 0, out)
    local chosen = out:match("auto_fit: (batch_size=%d+ grad_accum=%d+ gradient_checkpointing=%a+ optim=[%w_]+ "
        .. "offload_activations=%a+)")
    T.ok(chosen, out)
    T.ok(plan:find(chosen, 1, true), "plan and run choose alike:\n" .. plan)
    -- 8 x 1 at 128 tokens does not fit 20 MB: the micro-batch shrinks, the effective batch stays 8
    local b, a = chosen:match("batch_size=(%d+) grad_accum=(%d+)")
    T.ok(tonumber(b) < 8 and tonumber(b) * tonumber(a) == 8, chosen)
    local peak
    for line in io.lines(dir .. "/log.jsonl") do peak = json.decode(line).peak_bytes or peak end
    T.ok(peak <= 20e6, ("peak %d within the budget"):format(peak))
    T.run("rm -rf " .. dir)
    local none, nc = T.run(("%s recipes/qlora_llama.lua auto_fit=true memory_limit=5MB output_dir=%s"):format(bin, dir))
    T.ok(nc == 2 and none:find("auto_fit: nothing fits memory_limit=5MB: the smallest plan", 1, true), none)
    local need, nc2 = T.run(("%s recipes/qlora_llama.lua auto_fit=true output_dir=%s"):format(bin, dir))
    T.ok(nc2 == 2 and need:find("auto_fit=true needs memory_limit=", 1, true), need)
end)

-- The CUDA plan cannot be measured here (tools/gpu/run.sh more does that); what it must
-- keep is the arithmetic of its parts.
T.test("the CUDA plan: bf16 activations, paging and offload move what they should", function()
    local lt = require "luatrain"
    local cfg = lt.llama.read_config("recipes/assets/tiny_facts/model/config.json")
    local function plan(o)
        local base = { config = cfg, quant = "nf4", r = 8, batch_size = 8, seq_len = 128, device = "cuda",
            precision = "bf16", threads = 2 }
        for k, v in pairs(o) do base[k] = v end
        local p = lt.plan.train(base)
        local rows = {}
        for _, r in ipairs(p.rows) do rows[r[1]] = r[2] end
        return p, rows
    end
    local N, C = 8 * 128, cfg.hidden_size
    local cpu, cpu_rows = plan({ device = "cpu", precision = "f32" })
    local gpu, gpu_rows = plan({})
    T.ok(gpu_rows.activations < 0.6 * cpu_rows.activations, "bf16 activations")
    T.eq(gpu.outside_allocator, 32 * 2 ^ 20, "cuBLASLt's workspace")
    T.eq(gpu_rows["checkpointed layer outputs"], (cfg.num_hidden_layers + 2) * N * C * 2,
        "a bf16 output per layer, two input gradients")
    local paged, paged_rows = plan({ optim = "paged_adamw" })
    T.eq(paged_rows["optimizer state"], nil, "paged moments leave the device")
    T.eq(paged.host.paged, gpu_rows["optimizer state"], "and go to the host pool")
    local _, off_rows = plan({ offload_activations = true })
    T.eq(off_rows["checkpointed layer outputs"], 6 * N * C * 2, "offload: two passing, two restore, two gradient buffers")
    T.ok(cpu.peak.train > gpu.peak.train, "the CPU's f32 step holds more")
end)

T.test("tools/what_fits.lua: every shape and card, the QLoRA paper's two claims among them", function()
    local out, code = T.run(("%s tools/what_fits.lua out="):format(bin))
    T.eq(code, 0, out)
    local n = 0
    for _ in out:gmatch("\n| [^|]+ | [%d.]+ GiB | %d+ | %d+ | [%d.]+ |") do n = n + 1 end
    T.eq(n, 36, "9 models x 4 settings:\n" .. out)
    T.ok(out:find("| LLaMA 33B | [%d.]+ GiB | 16 | 1024 | [%d.]+ | %- | fits |"), "33B on a 24 GB card")
    T.ok(out:find("| LLaMA 65B | [%d.]+ GiB | 16 | 1024 | [%d.]+ | %- | %- | fits |"), "65B on a 48 GB card")
end)

T.done()
