--[[
report/page.lua - one self-contained HTML page: the charts, the table of numbers and notes,
styled by inline CSS.
]]
local text = require "luatrain.report.text"
local tables = require "luatrain.report.table"

local M = {}

local fmt = string.format
local esc, slug = text.escape, text.slug

local CSS = [[
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1f2328;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Liberation Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 26px; line-height: 1.25; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 12px; }
.lt-subtitle { color: #57606a; margin: 0 0 24px; }
.lt-charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 16px; }
.lt-figure { margin: 0; background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 8px;
  min-width: 0; }
.lt-figure.lt-wide { grid-column: 1 / -1; }
.lt-figure svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
.lt-figure.lt-wide svg { width: 100%; }
.lt-figure figcaption { color: #57606a; font-size: 13px; padding: 4px 8px 2px; }
.lt-table-wrap { overflow-x: auto; background: #fff; border: 1px solid #d8dee4; border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: 7px 14px; text-align: left; border-bottom: 1px solid #eaeef2; white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; }
tr:last-child td { border-bottom: none; }
.lt-num { text-align: right; font-variant-numeric: tabular-nums; }
td.lt-best { font-weight: 700; color: #0b5394; }
.lt-notes { color: #424a53; padding-left: 20px; }
footer { color: #6e7781; font-size: 12px; margin-top: 32px; }
@media print { body { background: #fff; } .lt-figure { break-inside: avoid; } }
]]

--[[
One self-contained HTML5 page: charts (inline SVG, no scripts, no external resources), a
table of the numbers and notes.
opts = { title, subtitle, charts = { {id, title, svg, caption, wide}, ... },
         table = { columns, rows, title }, notes = { "text", ... }, footer }
A wide chart spans the page's full width and is scaled to fill it; the others share rows,
two to a laptop screen, drawn at their own size (shrunk only when the window is narrower).
Charts of the default sizes (line 960 x 400, bar and scatter 560 x 340) fit that layout.
]]
function M.html_page(opts)
    local who = "report.html_page"
    if type(opts) ~= "table" then error(who .. ": expected an options table", 2) end
    local title = opts.title or "luatrain report"
    local h = {}
    h[#h + 1] = "<!DOCTYPE html>"
    h[#h + 1] = '<html lang="en">'
    h[#h + 1] = "<head>"
    h[#h + 1] = '<meta charset="utf-8"/>'
    h[#h + 1] = '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
    h[#h + 1] = "<title>" .. esc(title) .. "</title>"
    h[#h + 1] = "<style>\n" .. CSS .. "</style>"
    h[#h + 1] = "</head>"
    h[#h + 1] = "<body>"
    h[#h + 1] = "<main>"
    h[#h + 1] = "<header><h1>" .. esc(title) .. "</h1>"
    if opts.subtitle then h[#h + 1] = '<p class="lt-subtitle">' .. esc(opts.subtitle) .. "</p>" end
    h[#h + 1] = "</header>"
    local charts = opts.charts or {}
    if #charts > 0 then
        h[#h + 1] = '<section class="lt-charts">'
        for i, c in ipairs(charts) do
            if type(c) ~= "table" or type(c.svg) ~= "string" then
                error(("%s: chart %d needs an svg string"):format(who, i), 2)
            end
            local svg = c.svg:gsub("^%s*<%?xml[^>]*%?>%s*", "")
            h[#h + 1] = fmt('<figure class="lt-figure%s" id="chart-%s" aria-label="%s">', c.wide and " lt-wide" or "",
                esc(slug(c.id or c.title or i)), esc(c.title or c.id or ("chart " .. i)))
            h[#h + 1] = svg
            if c.caption then h[#h + 1] = "<figcaption>" .. esc(c.caption) .. "</figcaption>" end
            h[#h + 1] = "</figure>"
        end
        h[#h + 1] = "</section>"
    end
    local tbl = opts.table
    if tbl then
        -- Checked here, so that an error names the caller of html_page.
        local cols = tables.normalize_columns(tbl.columns, who)
        local rows = tables.check_rows(tbl.rows, who)
        tables.html_table(h, cols, rows, tbl.title)
    end
    if opts.notes and #opts.notes > 0 then
        h[#h + 1] = "<section><h2>Notes</h2><ul class=\"lt-notes\">"
        for _, n in ipairs(opts.notes) do h[#h + 1] = "<li>" .. esc(n) .. "</li>" end
        h[#h + 1] = "</ul></section>"
    end
    h[#h + 1] = "<footer>" .. esc(opts.footer or "Made with luatrain.") .. "</footer>"
    h[#h + 1] = "</main>"
    h[#h + 1] = "</body>"
    h[#h + 1] = "</html>"
    return table.concat(h, "\n") .. "\n"
end

return M
