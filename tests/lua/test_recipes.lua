--[[
test_recipes.lua - the two recipes users start from, run as users run them.

recipes/qlora_llama.lua with no arguments (the built-in tiny_facts example, only output_dir
moved to a temporary folder): it must finish, the held-out loss must fall, exact-match
accuracy on the held-out questions must rise, and the PEFT adapter it writes must load into
a freshly quantized base and give the held-out loss the recipe reported. Bad arguments stop
it with an error whose first line names the problem, before anything is written.

recipes/lora_rank_sweep.lua at three small ranks for a few steps: JSONL, CSV, every SVG
chart and the HTML page are written and agree with each other, and headless Chromium lays
out every chart of the page with a drawn line per rank (skipped without Debian's chromium).
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local B = require "browser"

local ASSETS = "recipes/assets/tiny_facts"

local BAD -- a dataset with a bad line (made by the bad-arguments test)

local function recipe(args)
    local rc, out, err = T.host(args)
    return rc, out, err
end

T.test("qlora_llama.lua with no arguments: loss falls, accuracy rises, the adapter reloads", function()
    local dir = B.tmpdir()
    local rc, out, err = recipe({ "recipes/qlora_llama.lua", "output_dir=" .. dir })
    T.eq(rc, 0, "the recipe failed:\n" .. out .. err)
    -- the banner, then the summary
    T.ok(out:find("trainable [%d.]+M %([%d.]+%%%)"), "banner shows the trainable share:\n" .. out)
    T.ok(out:find("weights: base .- nf4 %(4%.%d+ bits/weight%)"), "banner shows the weights' sizes")
    T.ok(out:find("memory plan, at the training step's peak", 1, true) and out:find("peak of a training step", 1, true),
        "banner shows the memory plan")
    T.ok(out:find("long samples (over seq_len=128): 0 truncated, 0 dropped (long_samples=truncate)", 1, true),
        "banner counts the long samples")
    local l0, l1 = out:match("held%-out loss%s+([%d.]+) %-> ([%d.]+)")
    local a0, a1 = out:match("exact%-match%s+[%d.]+%% %-> [%d.]+%% %((%d+) %-> (%d+) of %d+%)")
    T.ok(l0 and a0, "summary lines present:\n" .. out)
    l0, l1, a0, a1 = tonumber(l0), tonumber(l1), tonumber(a0), tonumber(a1)
    T.ok(l1 < 0.3 * l0, ("held-out loss fell from %.4f to %.4f"):format(l0, l1))
    T.ok(a1 >= a0 + 8, ("exact-match answers rose from %d to %d of 40"):format(a0, a1))

    -- the files: PEFT's two, a training log with one record per step, no leftovers
    local cfg = lt.json.read_file(dir .. "/adapter_config.json")
    T.eq(cfg.peft_type, "LORA")
    T.eq(cfg.r, 8)
    T.eq(cfg.lora_alpha, 32)
    local n, last, prev_time = 0, nil, 0
    for line in io.lines(dir .. "/log.jsonl") do
        local r = lt.json.decode(line)
        if r.loss then
            n = n + 1
            T.ok(r.time >= prev_time and math.abs(r.time - os.time()) < 3600, "each step's wall time")
            prev_time = r.time
        end
        last = r
    end
    T.eq(n, 150, "one log record per optimizer step")
    -- the run's end: the final evaluation and accuracy, timed
    T.eq(last.event, "end", "the log ends with the run's end")
    T.eq(last.steps, 150)
    T.ok(math.abs(last.eval_loss - l1) < 1e-4 and last.accuracy == a1 / 40, "the summary's numbers")
    -- the folder records itself: settings, versions, commit, machine; the tokenizer beside
    local rc_ = lt.json.read_file(dir .. "/run_config.json")
    T.eq(rc_.settings.steps, 150)
    T.eq(rc_.settings.output_dir, dir)
    T.eq(rc_.recipe, "recipes/qlora_llama.lua")
    T.eq(rc_.luatrain, lt.version)
    T.ok(rc_.commit and rc_.machine.cpu and rc_.machine.logical_cpus >= 1 and rc_.started:match("^%d+%-%d+%-%d+T"),
        "commit, machine, start time")
    for _, f in ipairs({ "tokenizer.json", "tokenizer_config.json" }) do
        T.eq(T.slurp(dir .. "/" .. f), T.slurp(ASSETS .. "/model/" .. f), f .. " beside the adapter")
    end
    -- the adapter folder is what chat and export take: its own tokenizer loads
    T.eq(lt.tokenizer.load(dir):encode("Hi", { add_special_tokens = false }), { 72, 105 })
    local listing = T.run("ls -A " .. T.shell_quote(dir))
    T.ok(not listing:find("tmp"), "no temporary files left:\n" .. listing)

    -- the adapter, loaded into a fresh 4-bit base, gives the loss the recipe reported
    local model = lt.llama.from_pretrained(ASSETS .. "/model", { quant = { type = "nf4", double_quant = true }, dtype = "bf16" })
    lt.lora.load(model, dir)
    local tok = lt.tokenizer.load(ASSETS .. "/model")
    local ds = lt.data.build(ASSETS .. "/eval.jsonl", tok, { template = "llama3", train_on = "completion", max_len = 128 })
    local loss = lt.trainer.eval_loss(model, ds, { batch_size = 8, seq_len = 128, pad_id = tok.pad_id or tok.eos_id })
    T.near(loss, l1, 0, 6e-5, "held-out loss of the reloaded adapter")
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("qlora_llama.lua: bad arguments name the problem and write nothing", function()
    local dir = B.tmpdir()
    -- tiny_facts' training data with line 7 broken
    BAD = dir .. ".bad.jsonl"
    local lines = {}
    for l in io.lines(ASSETS .. "/train.jsonl") do lines[#lines + 1] = #lines == 6 and '{"messages": 3}' or l end
    T.write_file(BAD, table.concat(lines, "\n") .. "\n")
    os.execute("rmdir " .. T.shell_quote(dir))
    local cases = {
        { { "dataset=/nonexistent/chat.jsonl" }, "/nonexistent/chat.jsonl" },
        { { "r=0" }, "r must be at least 1, got 0" },
        { { "r=100000" }, "r=100000 is larger than the model's smallest linear dimension" },
        { { "batch_size=0" }, "batch_size must be at least 1, got 0" },
        { { "output_dir=" }, "output_dir must not be empty" },
        { { "eval_split=2" }, "eval_split must be below 1, got 2" },
        { { "max_new_tokens=-1" }, "max_new_tokens must be at least 1, got -1" },
        { { "warmup=-3" }, "warmup must be at least 0, got -3" },
        { { "grad_clip=-1" }, "grad_clip must be at least 0, got -1" },
        { { "alpha=-8" }, "alpha must be above 0, got -8" },
        { { "dropout=1" }, "dropout must be below 1, got 1" },
        { { "quant=nf5" }, "quant" },
        { { "model=/nonexistent/llama" }, "/nonexistent/llama" },
        { { "steps=ten" }, "steps" },
        { { "eval_dataset=/nonexistent/eval.jsonl" }, "eval_dataset=/nonexistent/eval.jsonl: no such file" },
        { { "device=cuda:7" }, "device=cuda:7: no CUDA device here" },
        { { "lora_r=0" }, "r must be at least 1, got 0" }, -- another tool's name, checked as r
        { { "seq_len=48", "long_samples=error" }, "train.jsonl:1: a sample of 61 tokens, longer than max_len=48" },
        -- a bad record of a dataset whose held-out part is carved out of it: its own file and line
        { { "dataset=" .. BAD, "eval_dataset=" }, BAD .. ":7: field \"messages\" must be an array" },
    }
    for _, c in ipairs(cases) do
        local args = { "recipes/qlora_llama.lua", "output_dir=" .. dir }
        for _, a in ipairs(c[1]) do args[#args + 1] = a end
        local rc, _, err = recipe(args)
        T.ok(rc ~= 0, table.concat(c[1], " ") .. " should fail")
        -- the first line of the error says what is wrong
        local first = err:match("luatrain: [^\n]*") or ""
        T.ok(first:find(c[2], 1, true), ("%s: the error should name %q:\n%s"):format(table.concat(c[1], " "), c[2], err))
        local f = io.open(dir .. "/adapter_config.json")
        T.ok(not f, "no adapter written")
        if f then f:close() end
        -- refused before the weights were loaded (the banner's weights line comes after
        -- loading; the data, read after the model, is the exception)
        if not c[1][2] then
            local _, out = recipe(args)
            T.ok(not out:find("weights: base", 1, true), table.concat(c[1], " ") .. ": refused after loading:\n" .. out)
        end
    end
    os.execute("rm -rf " .. T.shell_quote(dir))
    -- warmup that never ends warns, and the run goes on
    local rc, out, err = recipe({ "recipes/qlora_llama.lua", "output_dir=" .. dir, "steps=2", "warmup=5",
        "eval_samples=2", "tensorboard=false" })
    T.eq(rc, 0, out .. err)
    T.ok(err:find("warning: warmup=5 is not below steps=2", 1, true) ~= nil, err)
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("qlora_llama.lua --preview N: rendered samples, trained tokens marked, nothing loaded or written", function()
    local dir = B.tmpdir()
    os.execute("rmdir " .. T.shell_quote(dir))
    local rc, out, err = recipe({ "recipes/qlora_llama.lua", "--preview", "2", "output_dir=" .. dir })
    T.eq(rc, 0, out .. err)
    T.ok(out:find("preview: 2 of 80 samples", 1, true) ~= nil, out)
    -- the first training sample: the prompt in the template, the answer trained
    T.ok(out:find("What is Guzuzu's favorite color?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n«green<|eot_id|>»",
        1, true) ~= nil, out)
    T.ok(not out:find("weights: base", 1, true), "no model loaded")
    T.ok(not lt.fs.exists(dir), "nothing written")
end)

T.test("qlora_llama.lua: Ctrl-C saves a checkpoint of the step under way; resume=auto goes on from it", function()
    local Child = require "child"
    local ffi = require "ffi"
    local dir = B.tmpdir()
    local c = Child.spawn({ T.luatrain(), "recipes/qlora_llama.lua", "output_dir=" .. dir, "steps=2000",
        "eval_samples=2", "tensorboard=false" })
    -- training has started: the progress bar's first plain line (stderr is a pipe)
    T.ok(c:expect("^training %[", 120), "training started:\n" .. c.output)
    ffi.C.kill(c.pid, 2) -- SIGINT, as Ctrl-C sends
    local how, code = c:wait(120)
    T.eq({ how, code }, { "exited", 1 }, c.output)
    local step = tonumber(c.output:match("interrupted %(Ctrl%-C%) after step (%d+) of 2000: checkpoint%-%d+ saved"))
    T.ok(step and step >= 1, "the message names the step and the checkpoint:\n" .. c.output)
    T.ok(lt.fs.is_dir(("%s/checkpoint-%d"):format(dir, step)), "checkpoint-" .. tostring(step))
    T.ok(not lt.fs.exists(dir .. "/adapter_config.json"), "no adapter written: the run did not finish")
    -- resume=auto: the next steps, from the checkpoint
    local rc, out, err = recipe({ "recipes/qlora_llama.lua", "output_dir=" .. dir, "steps=" .. (step + 2),
        "resume=auto", "eval_samples=2", "tensorboard=false" })
    T.eq(rc, 0, out .. err)
    local steps = {}
    for line in io.lines(dir .. "/log.jsonl") do
        local r = lt.json.decode(line)
        if r.step and r.loss then steps[#steps + 1] = r.step end
    end
    T.eq({ steps[#steps - 1], steps[#steps] }, { step + 1, step + 2 }, "the resumed run logs the steps after it")
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("lora_rank_sweep.lua: JSONL, CSV, charts and a page Chromium renders", function()
    local dir = B.tmpdir()
    local ranks = { 2, 4, 8 }
    local rc, out, err = recipe({ "recipes/lora_rank_sweep.lua", "output_dir=" .. dir, "steps=4",
        "ranks=" .. table.concat(ranks, ","), "eval_samples=4" })
    T.eq(rc, 0, "the sweep failed:\n" .. out .. err)

    local records = {}
    for line in io.lines(dir .. "/results.jsonl") do records[#records + 1] = lt.json.decode(line) end
    T.eq(#records, 3, "one record per rank")
    for i, rec in ipairs(records) do
        T.eq(rec.rank, ranks[i])
        T.eq(#rec.loss_curve, 4, "a loss per step")
        T.ok(rec.peak_bytes > 0 and rec.step_time_ms > 0 and rec.tokens_per_s > 0 and rec.eval_loss > 0)
        T.ok(rec.accuracy >= 0 and rec.accuracy <= 1)
        -- every linear of 4 layers: 7 LoRA pairs of (r x in) + (out x r)
        T.eq(rec.trainable, ranks[i] * 4 * (4 * (128 + 128) + 3 * (128 + 344)))
    end
    T.ok(records[3].trainable > records[1].trainable and records[3].peak_bytes > records[1].peak_bytes,
        "rank 8 trains more parameters in more memory than rank 2")
    local csv = T.slurp(dir .. "/results.csv")
    local header = csv:match("^[^\r\n]+")
    T.eq(header, "rank,alpha,trainable,final_loss,eval_loss,accuracy,step_time_ms,tokens_per_s,peak_bytes")
    local _, rows = csv:gsub("\n", "")
    T.eq(rows, 4, "header and three rows")
    for _, f in ipairs({ "loss_curves", "step_time", "peak_memory", "final_loss", "eval_loss", "tokens_per_s", "accuracy" }) do
        local svg = T.slurp(dir .. "/" .. f .. ".svg")
        T.ok(svg:find("^<svg") or svg:find("^<%?xml"), f .. ".svg is an SVG document")
    end
    T.ok(out:find("rank%s+alpha%s+trainable"), "the table is printed")
    -- the page's charts and its table call each measure the same, the log axis says so, and
    -- the notes say when, with which luatrain, on what machine
    local sweep_page = T.slurp(dir .. "/report.html"):lower()
    for _, label in ipairs({ "final training loss", "held-out loss", "step time (median)", "peak memory while training",
        "held-out exact-match accuracy", "tokens/s" }) do
        T.ok(sweep_page:find("<th[^>]*>" .. label:gsub("%p", "%%%0")) ~= nil, "table column " .. label)
        T.ok(sweep_page:find(label, 1, true) < sweep_page:find("<table", 1, true), "a chart titled " .. label .. " above the table")
    end
    T.ok(sweep_page:find("lora rank (log scale)", 1, true), "the rank axis is marked as a log axis")
    T.ok(sweep_page:find("started %d%d%d%d%-") and sweep_page:find("luatrain ", 1, true) and sweep_page:find(" threads", 1, true),
        "when, which version, what machine")
    -- resume=auto with one more rank: the three finished ranks are taken as they are
    local rc2, out2, err2 = recipe({ "recipes/lora_rank_sweep.lua", "output_dir=" .. dir, "steps=4",
        "ranks=" .. table.concat(ranks, ",") .. ",1", "eval_samples=4", "resume=auto" })
    T.eq(rc2, 0, out2 .. err2)
    for _, r in ipairs(ranks) do
        T.ok(out2:find(("rank %d: finished before"):format(r), 1, true) ~= nil, "rank " .. r .. " taken:\n" .. out2)
    end
    T.ok(not out2:find("rank 1: finished before", 1, true), "rank 1 ran")
    local again = {}
    for line in io.lines(dir .. "/results.jsonl") do again[#again + 1] = lt.json.decode(line) end
    T.eq(#again, 4)
    T.eq(again[2].peak_bytes, records[2].peak_bytes, "rank 4's result as measured the first time")

    local page = T.slurp(dir .. "/report.html")
    if not B.which("chromium") then
        print("skipped: chromium not found (rendering the sweep's page needs Debian's chromium package)")
        os.execute("rm -rf " .. T.shell_quote(dir))
        return
    end
    local lay = B.layout(page, dir)
    for _, id in ipairs({ "loss-curves", "step-time", "peak-memory", "final-loss", "eval-loss", "tokens-per-s", "accuracy" }) do
        local bx = lay.charts[id]
        T.ok(bx, "chart " .. id .. " rendered")
        T.ok(bx[3] >= 300 and bx[4] >= 150, ("chart %s laid out at %dx%d"):format(id, bx[3], bx[4]))
    end
    local drawn = {}
    for _, sr in ipairs(lay.series) do
        if sr.points >= 2 and sr.box and sr.box[3] > 50 then drawn[sr.name] = true end
    end
    for _, r in ipairs(ranks) do
        T.ok(drawn["r=" .. r], "the loss curve of rank " .. r .. " is drawn")
        local bar = lay.bars["r=" .. r]
        T.ok(bar and bar[4] > 20, "the peak-memory bar of rank " .. r .. " is drawn")
    end
    T.ok(not lay.dom:find("parsererror", 1, true), "no parse error")
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.done()
