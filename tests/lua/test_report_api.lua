--[[
test_report_api.lua - luatrain.report as its callers see it: the public table (one module
assembled from the files under lua/luatrain/report/) and errors that name the caller's line,
however deep inside report they are raised.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local report = require "luatrain.report"

local THIS_FILE = debug.getinfo(1, "S").short_src

-- The error fn raises, which must carry this file's position and then `message`.
local function raises_here(fn, message)
    local err = T.raises(fn, message, true)
    T.ok(err:sub(1, #THIS_FILE + 1) == THIS_FILE .. ":", "error names the caller's line: " .. err)
end

T.test("the public table: every name report has, and no more", function()
    local expected = {
        palette = "table", color = "function", escape = "function",
        format_number = "function", format_bytes = "function", format_seconds = "function",
        nice_ticks = "function", thin = "function", smooth = "function",
        line_chart = "function", scatter_chart = "function", bar_chart = "function",
        format_table = "function", print_table = "function", html_page = "function",
        write_text = "function", write_csv = "function", write_jsonl = "function",
        write_run_report = "function", run_notes = "function",
    }
    for name, kind in pairs(expected) do T.eq(type(report[name]), kind, "report." .. name) end
    for name in pairs(report) do T.ok(expected[name] ~= nil, "unexpected report." .. name) end
    T.ok(lt.report == report, "lt.report is the same module")
end)

T.test("the palette is the one charts draw with", function()
    local first = report.palette[1]
    report.palette[1] = "#123456"
    local ok, svg = pcall(report.line_chart, { series = { { name = "a", points = { { 0, 1 }, { 1, 2 } } } } })
    report.palette[1] = first
    T.ok(ok, tostring(svg))
    T.ok(svg:find('stroke="#123456"', 1, true), "an edited palette entry colours the first series")
    T.eq(report.color(1), first)
    T.eq(report.color(9), first, "colours repeat after the eighth")
end)

T.test("errors raised deep inside report name the caller's line", function()
    raises_here(function() report.line_chart{ series = { { name = "a", points = { { 1, "2" } } } } } end,
        "report.line_chart: point 1 needs numbers")
    raises_here(function() report.scatter_chart{ series = { { name = "a" } } } end,
        "report.scatter_chart: a series needs a points table")
    raises_here(function() report.line_chart{ series = "x" } end, "report.line_chart: opts.series")
    raises_here(function() report.bar_chart{ bars = {}, width = 10 } end, "report.bar_chart: width and height")
    raises_here(function() report.format_table({ 5 }, {}) end, "report.format_table: column 1 must be")
    raises_here(function() report.print_table("x", {}) end, "report.print_table: columns must be a list")
    raises_here(function() report.html_page{ table = { columns = { "a" }, rows = { 1 } } } end,
        "report.html_page: row 1 is a number")
    raises_here(function() report.write_csv("unused.csv", { "a" }, 5) end, "report.write_csv: rows must be a list")
    raises_here(function() report.nice_ticks(0, 0 / 0) end, "report.nice_ticks: bounds must be finite")
end)

T.test("an unknown format names the caller's line and the function called", function()
    local pts = { { name = "a", points = { { 1, 2 }, { 2, 3 } } } }
    raises_here(function() report.line_chart{ series = pts, y_format = "furlongs" } end,
        "report.line_chart: unknown format furlongs")
    raises_here(function() report.line_chart{ series = pts, x_format = "furlongs" } end,
        "report.line_chart: unknown format furlongs")
    raises_here(function() report.scatter_chart{ series = pts, x_format = "furlongs" } end,
        "report.scatter_chart: unknown format furlongs")
    raises_here(function() report.bar_chart{ bars = { { label = "a", value = 1 } }, y_format = "furlongs" } end,
        "report.bar_chart: unknown format furlongs")
    local columns = { { key = "a", format = "furlongs" } }
    raises_here(function() report.format_table(columns, {}) end, "report.format_table: unknown format furlongs")
    raises_here(function() report.print_table(columns, {}) end, "report.print_table: unknown format furlongs")
    raises_here(function() report.html_page{ table = { columns = columns, rows = {} } } end,
        "report.html_page: unknown format furlongs")
    raises_here(function() report.write_csv("unused.csv", columns, {}) end, "report.write_csv: unknown format furlongs")
end)

T.done()
