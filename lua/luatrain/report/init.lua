--[[
report - what a user reads after comparing runs: SVG charts, one self-contained HTML
page, CSV and JSONL files, and an aligned console table.

    local report = require "luatrain.report"
    local loss = report.line_chart{ id = "loss-curves", title = "Training loss",
        x_label = "step", y_label = "loss",
        series = { { name = "r=8", points = { {1, 2.9}, {2, 2.7} } } } }
    local mem = report.bar_chart{ id = "peak-memory", title = "Peak memory", y_format = "bytes",
        bars = { { label = "r=8", value = 3 * 2^30 } } }
    local page = report.html_page{ title = "LoRA rank sweep",
        charts = { { id = "loss-curves", svg = loss, wide = true }, { id = "peak-memory", svg = mem } },
        table = { columns = { "rank", { key = "peak", title = "peak memory", format = "bytes" } },
                  rows = { { 8, 3 * 2^30 } } } }
    report.write_text("runs/sweep/report.html", page)

Charts
    report.line_chart{ title, x_label, y_label, series = { {name, points = {{x, y}, ...}, color = ?}, ... },
        width, height, log_y, smooth, x_format, y_format, y_min, y_max, x_min, x_max, id, legend }
    report.scatter_chart{ ..., series = { {name, points = {{x, y, label = ?}, ...}} } or points = {...},
        connect = true, log_x, x_ticks, y_zero, value_labels }
    report.bar_chart{ ..., bars = { {label, value, color = ?}, ... }, y_format }
Each returns a standalone SVG document as a string: <svg class="lt-chart" data-chart=ID
data-kind=KIND>; a line or connected scatter series is <polyline class="lt-series"
data-series=NAME>, a bar is <rect class="lt-bar" data-label=LABEL>. Series get the palette's
colours in order (report.color(i)). Points with a NaN or infinite coordinate (and
non-positive ones on a log axis) are not drawn, and the chart says how many were dropped. A
line series with more than four points per pixel column is thinned to the first, lowest,
highest and last point of each column (report.thin), which draws the same picture.
line_chart's smooth = 0.9 draws TensorBoard's EMA (report.smooth) over the faint raw line;
y_min/y_max (x_min/x_max) fix an axis's bounds, e.g. to cut off a first-step loss spike.

Formats (x_format, y_format, table columns): "number" (SI suffixes: 12.3k, 4.5M), "bytes"
(binary units: 256 MiB), "seconds" (ms, µs), a string.format pattern, or a function(v) ->
text. Axis ticks are round numbers in one unit per axis (0, 0.5 GiB, 1 GiB, 1.5 GiB).

Page and files
    report.html_page{ title, subtitle, charts = { {id, title, svg, caption, wide}, ... },
        table = { columns, rows, title }, notes = { "text", ... }, footer } -> HTML text
    report.write_text(path, text), report.write_csv(path, columns, rows),
    report.write_jsonl(path, records), report.print_table(columns, rows [, file]),
    report.format_table(columns, rows) -> text
    report.write_run_report(dir) -> dir/report.html: one run's loss, lr, grad norm, memory
        and throughput over steps from dir/log.jsonl (and dir/run_config.json), see report/run.lua
Columns are names or { key =, title =, format =, best = "min"|"max" } (best marks the winning
cell in the HTML table); a row is a sequence in column order or a table keyed by column key.
CSV and JSONL hold the raw values; formats apply only to what a person reads (the HTML and
console tables). Files are written atomically, their directories made first.

The chart and text functions are plain Lua; only the file writers load the C core.

One file per concern: report/format.lua (numbers and format specs), text.lua (escaping,
label widths), axes.lua (ticks and axes), points.lua (thin, smooth, undrawable points),
svg.lua (palette and the chart frame), charts.lua, table.lua (console and HTML tables),
page.lua (the HTML page) and files.lua (the writers).
]]
local format = require "luatrain.report.format"
local text = require "luatrain.report.text"
local axes = require "luatrain.report.axes"
local points = require "luatrain.report.points"
local svg = require "luatrain.report.svg"
local charts = require "luatrain.report.charts"
local tables = require "luatrain.report.table"
local page = require "luatrain.report.page"
local files = require "luatrain.report.files"

-- The public functions themselves, not wrappers around them: their errors count stack levels
-- to name the user's line, and a wrapper would add a frame.
return {
    palette = svg.palette,
    color = svg.color,
    escape = text.escape,
    format_number = format.format_number,
    format_bytes = format.format_bytes,
    format_seconds = format.format_seconds,
    nice_ticks = axes.nice_ticks,
    thin = points.thin,
    smooth = points.smooth,
    line_chart = charts.line_chart,
    scatter_chart = charts.scatter_chart,
    bar_chart = charts.bar_chart,
    format_table = tables.format_table,
    print_table = tables.print_table,
    html_page = page.html_page,
    write_text = files.write_text,
    write_csv = files.write_csv,
    write_jsonl = files.write_jsonl,
    write_run_report = require("luatrain.report.run").write,
    run_notes = require("luatrain.report.run").notes,
}
