--[[
lora_rank_sweep.lua - the same QLoRA fine-tune at several LoRA ranks, compared.

    luatrain recipes/lora_rank_sweep.lua                  # ranks 8, 128, 256 on the built-in example
    luatrain recipes/lora_rank_sweep.lua ranks=4,16,64 steps=300 model=... dataset=...

For each rank the base is loaded (and quantized) afresh, LoRA is applied with that rank
and the same seed, and the fine-tune runs for the same number of steps on the same
batches. Recorded per rank: the training loss curve, the held-out loss, exact-match
accuracy on the held-out questions, the median step time, tokens per second, trainable
parameters and peak memory. Written to output_dir:
  results.jsonl         one record per rank (with its loss curve)
  results.csv           the table
  loss_curves.svg       training loss against step, one line per rank
  step_time.svg, peak_memory.svg, final_loss.svg, eval_loss.svg, tokens_per_s.svg, accuracy.svg
                        each metric against rank
  report.html           one self-contained page with every chart and the table
and the table is printed at the end.

alpha follows the rank (alpha = alpha_ratio * r) so that the scaling alpha / r is the
same at every rank; set alpha_ratio=0 to keep alpha fixed instead.
]]
local lt = require "luatrain"

-- the built-in example beside this file, wherever the run starts
local ASSETS = lt.recipes.path(lt.recipes.here() .. "/assets/tiny_facts")

local cfg = lt.config {
    model = { ASSETS .. "/model", "Hugging Face Llama folder" },
    dataset = { ASSETS .. "/train.jsonl", "training data (JSONL)" },
    eval_dataset = { ASSETS .. "/eval.jsonl", "held-out data (JSONL)" },
    template = { "llama3", "chat template", choices = { "none", "llama2", "llama3", "chatml" } },
    quant = { "nf4", "base weight format", choices = { "nf4", "fp4", "int8", "none" } },
    ranks = { "8,128,256", "LoRA ranks to compare (comma list)", nonempty = true },
    alpha_ratio = { 2, "alpha = alpha_ratio * r (0: use alpha)", min = 0 },
    alpha = { 32, "LoRA alpha when alpha_ratio is 0", above = 0 },
    dropout = { 0.05, "LoRA dropout", min = 0, below = 1 },
    target = { "all-linear", "adapted layers" },
    gradient_checkpointing = { true, "gradient checkpointing (one decoder layer's activations held)" },
    offload_activations = { false, "with gradient checkpointing: keep each layer's input in host memory, not on the "
        .. "device (bit-identical; less device memory for copies)" },
    batch_size = { 8, "sequences per step (packed)", type = "int", min = 1 },
    seq_len = { 128, "tokens per sequence slot", type = "int", min = 2 },
    steps = { 60, "optimizer steps per rank", type = "int", min = 1 },
    lr = { 2e-3, "peak learning rate", above = 0 },
    warmup = { 5, "warm-up steps", type = "int", min = 0 },
    accuracy = { true, "score exact-match answers on the held-out questions" },
    eval_samples = { 0, "questions scored (0: all)", type = "int", min = 0 },
    output_dir = { "runs/rank_sweep", "where the results, charts and report go", nonempty = true },
    resume = { "", "auto: ranks a previous run of this sweep finished (output_dir/rank-R.json) are taken as they "
        .. "are, the others run", choices = { "", "auto" } },
    seed = { 1234, "seed (the same for every rank)", type = "int" },
    threads = { 0, "CPU threads (0: one per CPU this process may run on)", type = "int" },
    device = { "cpu", "where training runs: cpu, cuda or cuda:N" },
}

lt.set_num_threads(cfg.threads)
local report = lt.report

local ranks = {}
for r in cfg.ranks:gmatch("[^,%s]+") do
    local v = tonumber(r)
    if not v or v < 1 or v ~= math.floor(v) then
        error(("lora_rank_sweep: ranks must be positive integers, got %q"):format(r), 0)
    end
    ranks[#ranks + 1] = v
end
if #ranks == 0 then error("lora_rank_sweep: no ranks given", 0) end

local quant = cfg.quant ~= "none" and { type = cfg.quant } or nil
local tok = lt.tokenizer.load(cfg.model)
local data_opts = { template = cfg.template, max_len = cfg.seq_len }
local train_ds = lt.data.build(cfg.dataset, tok, data_opts)
local eval_ds = lt.data.build(cfg.eval_dataset, tok, data_opts)
local questions = cfg.accuracy and lt.trainer.questions(cfg.eval_dataset, cfg.template, cfg.eval_samples) or {}
local gen_opts = { max_new_tokens = 16, stop_ids = { lt.data.templates.end_of_turn(cfg.template, tok) } }
local pad_id = tok.pad_id or tok.eos_id or 0
lt.fs.make_dirs(cfg.output_dir)
local run_info = lt.runinfo.write(cfg.output_dir, cfg, { recipe = arg and arg[0], command = arg and { unpack(arg) } })

-- Give back everything a finished run holds, so the next rank's peak is its own.
local function release(model, result)
    for _, st in pairs(result.optimizer.state) do
        st.exp_avg:free()
        st.exp_avg_sq:free()
    end
    model:free_buffers()
    for _, r in ipairs(model:named_parameters()) do
        if r.grad then r.grad:free() end
        r.param:free()
    end
    for _, e in ipairs(model.quant_layers and model:quant_layers() or {}) do
        if e[2].qweight then e[2].qweight:free() end
    end
    lt.memory.collect()
end

print(("lora_rank_sweep: %s, ranks %s, %d steps each, %d training samples, %d held-out questions"):format(
    cfg.model, table.concat(ranks, ", "), cfg.steps, train_ds.n, #questions))

-- one rank's fine-tune, measured
local function train_rank(r)
    lt.manual_seed(cfg.seed)
    local model = lt.llama.from_pretrained(cfg.model, { quant = quant, dtype = quant and "bf16" or "f32" })
    if cfg.offload_activations and not cfg.gradient_checkpointing then
        error(lt.config.usage_error(
            "offload_activations=true needs gradient_checkpointing=true (it offloads the checkpointed inputs)"), 0)
    end
    if cfg.gradient_checkpointing then model:gradient_checkpointing(true, { offload = cfg.offload_activations }) end
    local alpha = cfg.alpha_ratio > 0 and cfg.alpha_ratio * r or cfg.alpha
    lt.lora.apply(model, { r = r, alpha = alpha, dropout = cfg.dropout, target = cfg.target })
    model:to(cfg.device)
    local bar = lt.log.progress(("rank %d"):format(r))
    local res = lt.trainer.finetune{ model = model, train = train_ds, eval = eval_ds,
        batch_size = cfg.batch_size, seq_len = cfg.seq_len, lr = cfg.lr, warmup = cfg.warmup, steps = cfg.steps,
        seed = cfg.seed, pad_id = pad_id,
        on_step = function(rec, total)
            bar:update(rec.step / total, ("loss %.4f  %.0f tok/s"):format(rec.loss, rec.tokens_per_s))
        end }
    local acc = #questions > 0 and lt.trainer.accuracy(model, tok, questions, gen_opts) or nil
    bar:finish(("loss %.4f -> %.4f, eval %.4f%s"):format(res.first_loss, res.last_loss, res.eval_loss,
        acc and (", accuracy %.1f%%"):format(100 * acc) or ""))
    -- final training loss: the mean over the last tenth of the steps (one batch is noisy)
    local tail, sum = math.max(1, math.floor(#res.loss_curve / 10)), 0
    for i = #res.loss_curve - tail + 1, #res.loss_curve do sum = sum + res.loss_curve[i] end
    local result = { rank = r, alpha = alpha, trainable = res.trainable, final_loss = sum / tail,
        eval_loss = res.eval_loss, accuracy = acc, step_time_ms = 1000 * res.step_time,
        tokens_per_s = res.tokens_per_s, peak_bytes = res.peak_bytes, loss_curve = res.loss_curve }
    release(model, res)
    return result
end

local results = {}
-- resume=auto: a rank's result, written when it finished, stands for its run
local function done_path(r) return ("%s/rank-%d.json"):format(cfg.output_dir, r) end
for _, r in ipairs(ranks) do
    local prev = cfg.resume == "auto" and io.open(done_path(r), "r")
    if prev then
        results[#results + 1] = lt.json.decode(prev:read("*a"), done_path(r))
        prev:close()
        print(("rank %d: finished before (%s), taken as it is"):format(r, done_path(r)))
    else
        results[#results + 1] = train_rank(r)
        lt.fs.write_atomic(done_path(r), lt.json.encode(results[#results]) .. "\n")
    end
end

-- ---- files --------------------------------------------------------------------------------
local out = cfg.output_dir
report.write_jsonl(out .. "/results.jsonl", results)
local columns = { "rank", "alpha", "trainable", "final_loss", "eval_loss", "accuracy", "step_time_ms",
    "tokens_per_s", "peak_bytes" }
local rows = {}
for i, res in ipairs(results) do
    rows[i] = {}
    for j, c in ipairs(columns) do rows[i][j] = res[c] == nil and "" or res[c] end
end
report.write_csv(out .. "/results.csv", columns, rows)

local curves = {}
for i, res in ipairs(results) do
    local pts = {}
    for step, loss in ipairs(res.loss_curve) do pts[step] = { step, loss } end
    curves[i] = { name = ("r=%d"):format(res.rank), points = pts, color = report.color(i) }
end
-- a metric against rank: one point per rank on a log axis (ranks are powers of two)
local function against_rank(id, key, title, y_label, y_format, scale)
    local pts = {}
    for i, res in ipairs(results) do
        local v = res[key]
        pts[i] = { res.rank, v and v * (scale or 1) or 0 / 0, label = ("r=%d"):format(res.rank) }
    end
    return report.scatter_chart{ id = id, title = title, x_label = "LoRA rank", y_label = y_label,
        points = pts, log_x = #ranks > 1 and ranks[#ranks] / ranks[1] >= 4, y_zero = true,
        value_labels = true, y_format = y_format }
end
local bars = {}
for i, res in ipairs(results) do
    bars[i] = { label = ("r=%d"):format(res.rank), value = res.peak_bytes, color = report.color(i) }
end
local charts = {
    { id = "loss-curves", file = "loss_curves.svg", wide = true, svg = report.line_chart{ id = "loss-curves",
        title = "Training loss by step", x_label = "step", y_label = "loss", series = curves,
        smooth = cfg.steps >= 100 and 0.8 or nil } },
    { id = "step-time", file = "step_time.svg", svg = against_rank("step-time", "step_time_ms", "Step time (median)",
        "time per step", "seconds", 1e-3) },
    { id = "peak-memory", file = "peak_memory.svg", svg = report.bar_chart{ id = "peak-memory",
        title = "Peak memory while training", y_label = "bytes", y_format = "bytes", bars = bars } },
    { id = "final-loss", file = "final_loss.svg", svg = against_rank("final-loss", "final_loss",
        "Final training loss", "loss") },
    { id = "eval-loss", file = "eval_loss.svg", svg = against_rank("eval-loss", "eval_loss", "Held-out loss", "loss") },
    { id = "tokens-per-s", file = "tokens_per_s.svg", svg = against_rank("tokens-per-s", "tokens_per_s", "Throughput (tokens/s)",
        "tokens / s") },
}
if #questions > 0 then
    charts[#charts + 1] = { id = "accuracy", file = "accuracy.svg", svg = against_rank("accuracy", "accuracy",
        "Held-out exact-match accuracy", "% right", "%.0f%%", 100) }
end
local written = {}
for _, ch in ipairs(charts) do
    report.write_text(out .. "/" .. ch.file, ch.svg)
    written[#written + 1] = ch.file
end

local table_cols = {
    { key = "rank", title = "rank" }, { key = "alpha", title = "alpha" },
    { key = "trainable", title = "trainable", format = "number" },
    { key = "final_loss", title = "final training loss", format = "%.4f", best = "min" },
    { key = "eval_loss", title = "held-out loss", format = "%.4f", best = "min" },
    { key = "accuracy", title = "held-out exact-match accuracy", format = function(v) return v and ("%.1f%%"):format(100 * v) or "-" end,
        best = "max" },
    { key = "step_time", title = "step time (median)", format = "seconds", best = "min" },
    { key = "tokens_per_s", title = "tokens/s", format = "%.0f", best = "max" },
    { key = "peak_bytes", title = "peak memory while training", format = "bytes", best = "min" },
}
local table_rows = {}
for i, res in ipairs(results) do
    table_rows[i] = { rank = res.rank, alpha = res.alpha, trainable = res.trainable, final_loss = res.final_loss,
        eval_loss = res.eval_loss, accuracy = res.accuracy, step_time = res.step_time_ms / 1000,
        tokens_per_s = res.tokens_per_s, peak_bytes = res.peak_bytes }
end
report.write_text(out .. "/report.html", report.html_page{
    title = "LoRA rank sweep",
    subtitle = ("%s, %s base, %d steps per rank, batch %d x %d tokens"):format(cfg.model, cfg.quant, cfg.steps,
        cfg.batch_size, cfg.seq_len),
    charts = charts,
    table = { columns = table_cols, rows = table_rows },
    notes = { ("alpha = %s"):format(cfg.alpha_ratio > 0 and (cfg.alpha_ratio .. " * r") or tostring(cfg.alpha)),
        "step time is the median over the run; peak memory is the allocator's high-water mark during training",
        "final loss is the mean training loss over the last tenth of the steps",
        "the same seed, batches and schedule at every rank",
        lt.report.run_notes(run_info) },
})
print()
report.print_table(table_cols, table_rows)
written[#written + 1] = "report.html"
print(("\nwrote %s/{results.jsonl, results.csv, %s}"):format(out, table.concat(written, ", ")))
-- for `luatrain -i recipes/lora_rank_sweep.lua`: the REPL's globals
lt.last_run = { config = cfg, results = results }
