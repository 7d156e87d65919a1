--[[
report/table.lua - tables of results: columns and rows checked once, cells formatted for
people, the aligned console table and the HTML table of a page.
]]
local json = require "luatrain.json"
local format = require "luatrain.report.format"
local text = require "luatrain.report.text"

local M = {}

local floor, abs = math.floor, math.abs
local fmt = string.format
local finite, non_finite_text, exact_number = format.finite, format.non_finite_text, format.exact_number
local value_formatter = format.value_formatter
local esc, text_len = text.escape, text.text_len

-- Columns as records: { key, title, format (a function), best, numeric }. Errors here and in
-- check_rows are raised at level 3: the caller of the public function that checks them.
local function normalize_columns(columns, who)
    if type(columns) ~= "table" then error(who .. ": columns must be a list", 3) end
    local out = {}
    for i, c in ipairs(columns) do
        if type(c) == "string" then
            out[i] = { key = c, title = c }
        elseif type(c) == "table" and (c.key or c.title or c[1]) then
            local key = c.key or c[1] or c.title
            out[i] = { key = key, title = c.title or key, spec = c.format, best = c.best }
            if c.best ~= nil and c.best ~= "min" and c.best ~= "max" then
                error(("%s: column %s: best must be \"min\" or \"max\""):format(who, tostring(key)), 3)
            end
        else
            error(("%s: column %d must be a name or {key =, title =, format =}"):format(who, i), 3)
        end
        out[i].format = out[i].spec and value_formatter(out[i].spec, who, 3)
    end
    return out
end

-- Rows as given (nil is none); each must be a table.
local function check_rows(rows, who)
    if rows == nil then return {} end
    if type(rows) ~= "table" then error(who .. ": rows must be a list", 3) end
    for r, row in ipairs(rows) do
        if type(row) ~= "table" then error(("%s: row %d is a %s, not a table"):format(who, r, type(row)), 3) end
    end
    return rows
end

-- A row is keyed by column key or is a sequence in column order.
local function cell(row, col, i)
    local v = row[col.key]
    if v == nil then v = row[i] end
    return v
end

-- A cell as a person reads it: the column's format for numbers; without one, whole numbers
-- in full and others to 6 significant digits.
local function display(v, col)
    if v == nil or v == json.null then return "" end
    if col.format and type(v) == "number" then return col.format(v) end
    if type(v) == "number" then
        if not finite(v) then return non_finite_text(v) end
        if v == floor(v) and abs(v) < 1e15 then return fmt("%d", v) end
        return fmt("%.6g", v)
    end
    return tostring(v)
end

-- Per column: is every present value a number (so the column aligns right), and which rows
-- hold its best value.
local function column_facts(cols, rows)
    for i, col in ipairs(cols) do
        local numeric, any = true, false
        local best_v, best_rows = nil, {}
        for r, row in ipairs(rows) do
            local v = cell(row, col, i)
            if v ~= nil and v ~= json.null then
                any = true
                if type(v) ~= "number" then numeric = false end
                if col.best and finite(v) then
                    local better = best_v == nil or (col.best == "min" and v < best_v) or (col.best == "max" and v > best_v)
                    if better then
                        best_v, best_rows = v, { [r] = true }
                    elseif v == best_v then
                        best_rows[r] = true
                    end
                end
            end
        end
        col.numeric = numeric and any
        col.best_rows = best_rows
    end
end

-- An aligned plain-text table: numbers right-aligned, text left-aligned. cols and rows come
-- from normalize_columns and check_rows, called by the public function so that errors name
-- its caller.
local function text_table(cols, rows)
    column_facts(cols, rows)
    local cells, widths = {}, {}
    for i, col in ipairs(cols) do widths[i] = text_len(tostring(col.title)) end
    for r, row in ipairs(rows) do
        cells[r] = {}
        for i, col in ipairs(cols) do
            local s = display(cell(row, col, i), col)
            cells[r][i] = s
            widths[i] = math.max(widths[i], text_len(s))
        end
    end
    local function pad(s, i)
        local fill = string.rep(" ", widths[i] - text_len(s))
        return cols[i].numeric and (fill .. s) or (s .. fill)
    end
    local lines = {}
    local head, rule = {}, {}
    for i, col in ipairs(cols) do
        head[i] = pad(tostring(col.title), i)
        rule[i] = string.rep("-", widths[i])
    end
    lines[1] = table.concat(head, "  "):gsub("%s+$", "")
    lines[2] = table.concat(rule, "  ")
    for r = 1, #rows do
        local line = {}
        for i = 1, #cols do line[i] = pad(cells[r][i], i) end
        lines[#lines + 1] = table.concat(line, "  "):gsub("%s+$", "")
    end
    return table.concat(lines, "\n") .. "\n"
end

function M.format_table(columns, rows)
    local cols = normalize_columns(columns, "report.format_table")
    rows = check_rows(rows, "report.format_table")
    return text_table(cols, rows)
end

function M.print_table(columns, rows, file)
    local cols = normalize_columns(columns, "report.print_table")
    rows = check_rows(rows, "report.print_table")
    local out = file or io.stdout
    out:write(text_table(cols, rows))
    out:flush()
end

-- The table section of an HTML page, appended to h (a list of lines). cols and rows come from
-- normalize_columns and check_rows, called by the page so that errors name its caller; a
-- finite number keeps its exact value in data-value beside the formatted text.
function M.html_table(h, cols, rows, title)
    column_facts(cols, rows)
    h[#h + 1] = "<section>"
    h[#h + 1] = "<h2>" .. esc(title or "Results") .. "</h2>"
    h[#h + 1] = '<div class="lt-table-wrap"><table class="lt-table">'
    local head = {}
    for i, col in ipairs(cols) do
        head[i] = fmt('<th scope="col"%s>%s</th>', col.numeric and ' class="lt-num"' or "", esc(col.title))
    end
    h[#h + 1] = "<thead><tr>" .. table.concat(head) .. "</tr></thead>"
    h[#h + 1] = "<tbody>"
    for r, row in ipairs(rows) do
        local tds = {}
        for i, col in ipairs(cols) do
            local v = cell(row, col, i)
            local classes = {}
            if col.numeric then classes[#classes + 1] = "lt-num" end
            if col.best_rows[r] then classes[#classes + 1] = "lt-best" end
            local raw = type(v) == "number" and finite(v) and (' data-value="' .. exact_number(v) .. '"') or ""
            tds[i] = fmt("<td%s%s>%s</td>", #classes > 0 and (' class="' .. table.concat(classes, " ") .. '"') or "",
                raw, esc(display(v, col)))
        end
        h[#h + 1] = "<tr>" .. table.concat(tds) .. "</tr>"
    end
    h[#h + 1] = "</tbody></table></div>"
    h[#h + 1] = "</section>"
end

M.normalize_columns = normalize_columns
M.check_rows = check_rows
M.cell = cell

return M
