--[[
report/run.lua - one training run on one page: report.html beside the run's log.jsonl.

    require("luatrain.report.run").write(dir) -> path of dir/report.html

Reads dir/log.jsonl (a record per step: step, loss, lr, grad_norm, current_bytes,
peak_bytes, tokens_per_s, eval_loss every eval_every steps, loss_scale with fp16; then an
"end" record) and dir/run_config.json when it is there (settings, version, commit, machine),
and draws loss (training and held-out), learning rate, gradient norm, memory and throughput
over steps, with the end record as a table and the settings as notes. A resumed run logs
some steps twice: the later record of a step wins, as it is the one the run went on from.
]]
local charts = require "luatrain.report.charts"
local page = require "luatrain.report.page"
local files = require "luatrain.report.files"
local svg = require "luatrain.report.svg"
local json = require "luatrain.json"

local M = {}

-- log.jsonl -> steps (sorted records with a step), the last "end" record
local function read_log(path)
    local f, err = io.open(path, "rb")
    if not f then error(("run report: cannot read %s (%s)"):format(path, err), 3) end
    local by_step, last_end = {}, nil
    local n = 0
    for line in f:lines() do
        n = n + 1
        if line:find("%S") then
            local ok, rec = pcall(json.decode, line, ("%s:%d"):format(path, n))
            if not ok then
                f:close()
                error(("run report: %s"):format(rec), 3)
            end
            if rec.event == "end" then
                last_end = rec
            elseif type(rec.step) == "number" then
                by_step[rec.step] = rec
            end
        end
    end
    f:close()
    local steps = {}
    for _, rec in pairs(by_step) do steps[#steps + 1] = rec end
    table.sort(steps, function(a, b) return a.step < b.step end)
    return steps, last_end
end

-- points { step, rec[key] } for the records that have the key
local function series(steps, key, scale)
    local pts = {}
    for _, rec in ipairs(steps) do
        local v = rec[key]
        if type(v) == "number" then pts[#pts + 1] = { rec.step, v * (scale or 1) } end
    end
    return pts
end

local function setting_text(v)
    if type(v) == "table" then return json.encode(v) end
    return tostring(v)
end

-- One line from run_config.json's table (lt.runinfo.describe): when, which luatrain, on
-- what machine (CPU, threads, GPU), with which settings.
function M.notes(info)
    local s, m = info.settings or {}, info.machine or {}
    local keys = {}
    for k in pairs(s) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. setting_text(s[k]) end
    local gpu = info.gpu and (", GPU " .. tostring(info.gpu.name)) or ", no GPU"
    return ("started %s, luatrain %s (%s); machine: %s, %s threads%s; settings: %s"):format(
        tostring(info.started or "?"), tostring(info.luatrain or "?"), tostring(info.commit or "?"),
        tostring(m.cpu or "?"), tostring(m.threads or "?"), gpu, table.concat(parts, " "))
end

function M.write(dir, opts)
    opts = opts or {}
    dir = dir:gsub("(.)/+$", "%1")
    local steps, fin = read_log(dir .. "/log.jsonl")
    if #steps == 0 then error(("run report: %s/log.jsonl has no step records"):format(dir), 2) end
    local info = nil
    local rf = io.open(dir .. "/run_config.json", "rb")
    if rf then
        rf:close()
        local ok, v = pcall(json.read_file, dir .. "/run_config.json")
        if ok then info = v end
    end
    local smooth = #steps >= 100 and 0.8 or nil
    local loss_series = { { name = "training", points = series(steps, "loss"), color = svg.color(1) } }
    local evals = series(steps, "eval_loss")
    if fin and type(fin.eval_loss) == "number" then evals[#evals + 1] = { fin.steps or steps[#steps].step, fin.eval_loss } end
    if #evals > 0 then loss_series[2] = { name = "held-out", points = evals, color = svg.color(2) } end
    local list = {
        { id = "loss", title = "Loss", wide = true, svg = charts.line_chart{ id = "loss", title = "Loss by step",
            x_label = "step", y_label = "loss", series = loss_series, smooth = smooth } },
        { id = "lr", title = "Learning rate", svg = charts.line_chart{ id = "lr", title = "Learning rate",
            x_label = "step", y_label = "lr", y_format = "%.2g", series = { { name = "lr", points = series(steps, "lr") } },
            legend = false } },
        { id = "grad-norm", title = "Gradient norm", svg = charts.line_chart{ id = "grad-norm",
            title = "Gradient norm (before clipping)", x_label = "step", y_label = "norm",
            series = { { name = "grad norm", points = series(steps, "grad_norm") } }, smooth = smooth, legend = false } },
        { id = "memory", title = "Memory", svg = charts.line_chart{ id = "memory", title = "Memory in use",
            x_label = "step", y_label = "bytes", y_format = "bytes", y_zero = true,
            series = { { name = "peak", points = series(steps, "peak_bytes"), color = svg.color(3) },
                { name = "current", points = series(steps, "current_bytes"), color = svg.color(4) } } } },
        { id = "throughput", title = "Throughput", svg = charts.line_chart{ id = "throughput",
            title = "Throughput", x_label = "step", y_label = "tokens / s",
            series = { { name = "tokens/s", points = series(steps, "tokens_per_s") } }, smooth = smooth, legend = false } },
    }
    local scale = series(steps, "loss_scale")
    if #scale > 0 then
        list[#list + 1] = { id = "loss-scale", title = "fp16 loss scale", svg = charts.line_chart{ id = "loss-scale",
            title = "fp16 loss scale", x_label = "step", y_label = "scale", log_y = true,
            series = { { name = "loss scale", points = scale } }, legend = false } }
    end
    -- the summary table: the end record's numbers, else the last step's
    local rows = {}
    local function row(what, v, fmt)
        if v ~= nil then rows[#rows + 1] = { what, fmt and fmt(v) or setting_text(v) } end
    end
    local last = steps[#steps]
    row("steps", fin and fin.steps or last.step)
    row("final training loss", last.loss, function(v) return ("%.4f"):format(v) end)
    if fin then
        row("held-out loss before", fin.eval_loss_before, function(v) return ("%.4f"):format(v) end)
        row("held-out loss after", fin.eval_loss, function(v) return ("%.4f"):format(v) end)
        row("accuracy before", fin.accuracy_before, function(v) return ("%.1f%%"):format(100 * v) end)
        row("accuracy after", fin.accuracy, function(v) return ("%.1f%%"):format(100 * v) end)
        row("training time", fin.train_time, function(v) return ("%.1f s"):format(v) end)
    end
    local peak = 0
    for _, rec in ipairs(steps) do peak = math.max(peak, rec.peak_bytes or 0) end
    if peak > 0 then row("peak memory", ("%.2f MiB"):format(peak / 2 ^ 20)) end
    local subtitle, notes = opts.subtitle, {}
    if info then
        local s = info.settings or {}
        subtitle = subtitle or ("%s; %s"):format(tostring(info.recipe or "a run"), tostring(s.model or ""))
        notes[1] = M.notes(info)
    end
    notes[#notes + 1] = "every number comes from log.jsonl in this folder; a resumed step shows its later record"
    local path = dir .. "/report.html"
    files.write_text(path, page.html_page{ title = opts.title or "Training run", subtitle = subtitle, charts = list,
        table = { columns = { "measure", "value" }, rows = rows }, notes = notes })
    return path
end

return M
