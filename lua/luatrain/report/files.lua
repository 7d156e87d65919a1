--[[
report/files.lua - the files a run leaves behind: text written atomically, CSV and JSONL
holding raw values. Only these functions load the C core (through luatrain.fs, on first use).
]]
local json = require "luatrain.json"
local format = require "luatrain.report.format"
local tables = require "luatrain.report.table"

local M = {}

local finite, exact_number = format.finite, format.exact_number
local normalize_columns, check_rows, cell = tables.normalize_columns, tables.check_rows, tables.cell

-- Write text atomically, making the parent directories first.
function M.write_text(path, text)
    local fs = require "luatrain.fs"
    local dir = path:match("^(.*)/[^/]*$")
    if dir and dir ~= "" then fs.make_dirs(dir) end
    fs.write_atomic(path, text)
end

-- RFC 4180: a field holding a comma, quote, CR or LF is quoted, quotes doubled; CRLF ends
-- each record. Numbers are written exactly (they read back equal).
local function csv_field(v)
    local s
    if v == nil or v == json.null then
        s = ""
    elseif type(v) == "number" then
        s = exact_number(v)
    else
        s = tostring(v)
    end
    if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
    return s
end

-- A header of column keys, then one record per row (raw values, not formatted).
function M.write_csv(path, columns, rows)
    local cols = normalize_columns(columns, "report.write_csv")
    local lines = {}
    local head = {}
    for i, col in ipairs(cols) do head[i] = csv_field(col.key) end
    lines[1] = table.concat(head, ",")
    for _, row in ipairs(check_rows(rows, "report.write_csv")) do
        local f = {}
        for i, col in ipairs(cols) do f[i] = csv_field(cell(row, col, i)) end
        lines[#lines + 1] = table.concat(f, ",")
    end
    M.write_text(path, table.concat(lines, "\r\n") .. "\r\n")
end

-- JSON has no NaN or infinity: they become null, so a diverged run still gets its record.
local function json_safe(v)
    if type(v) == "number" and not finite(v) then return json.null end
    if type(v) ~= "table" or v == json.null then return v end
    local out = {}
    for k, x in pairs(v) do out[k] = json_safe(x) end
    return setmetatable(out, getmetatable(v))
end

-- One JSON object per line.
function M.write_jsonl(path, records)
    if type(records) ~= "table" then error("report.write_jsonl: records must be a list", 2) end
    local lines = {}
    for i, r in ipairs(records) do lines[i] = json.encode(json_safe(r)) end
    M.write_text(path, #lines > 0 and (table.concat(lines, "\n") .. "\n") or "")
end

return M
