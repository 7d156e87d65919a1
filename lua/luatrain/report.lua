--[[
report.lua - what a user reads after comparing runs: SVG charts, one self-contained HTML
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
Columns are names or { key =, title =, format =, best = "min"|"max" } (best marks the winning
cell in the HTML table); a row is a sequence in column order or a table keyed by column key.
CSV and JSONL hold the raw values; formats apply only to what a person reads (the HTML and
console tables). Files are written atomically, their directories made first.

The chart and text functions are plain Lua; only the file writers load the C core.
]]
local json = require "luatrain.json"

local M = {}

local floor, ceil, abs, log10 = math.floor, math.ceil, math.abs, math.log10
local huge = math.huge
local fmt = string.format

-- Okabe & Ito's palette, which stays distinguishable under the common colour-vision
-- deficiencies; yellow and black come last (yellow is faint on white, black reads as an
-- axis). Series past the eighth reuse the colours with a dash pattern.
M.palette = { "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000" }
local DASHES = { false, "7 4", "2 3", "9 3 2 3" }

function M.color(i)
    return M.palette[(i - 1) % #M.palette + 1]
end

local function dash(i)
    return DASHES[floor((i - 1) / #M.palette) % #DASHES + 1] or nil
end

local function finite(x)
    return type(x) == "number" and x == x and x ~= huge and x ~= -huge
end

-- ---- text ---------------------------------------------------------------------------------

-- Invalid UTF-8 becomes U+FFFD and control characters other than tab and newline are
-- dropped, so that any series name gives a well-formed XML document.
local REPLACEMENT = "\239\191\189"

local function clean_utf8(s)
    s = s:gsub("[%z\1-\8\11\12\14-\31]", "")
    if not s:find("[\128-\255]") then return s end
    local out, i, n = {}, 1, #s
    while i <= n do
        local c = s:byte(i)
        local len, lo, hi = 0, 0x80, 0xBF
        if c < 0x80 then
            len = 1
        elseif c >= 0xC2 and c <= 0xDF then
            len = 2
        elseif c >= 0xE0 and c <= 0xEF then
            len = 3
            if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
        elseif c >= 0xF0 and c <= 0xF4 then
            len = 4
            if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
        end
        local ok = len > 0 and i + len - 1 <= n
        if ok and len > 1 then
            local b = s:byte(i + 1)
            ok = b >= lo and b <= hi
            for k = i + 2, i + len - 1 do
                local bk = s:byte(k)
                ok = ok and bk >= 0x80 and bk <= 0xBF
            end
        end
        if ok then
            out[#out + 1] = s:sub(i, i + len - 1)
            i = i + len
        else
            out[#out + 1] = REPLACEMENT
            i = i + 1
        end
    end
    return table.concat(out)
end

local XML_ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

-- Text made safe for XML and HTML, in element content and in quoted attributes alike.
function M.escape(s)
    return (clean_utf8(tostring(s)):gsub("[&<>\"']", XML_ESCAPES))
end
local esc = M.escape

-- Characters, not bytes: UTF-8 continuation bytes do not count.
local function text_len(s)
    local _, cont = s:gsub("[\128-\191]", "")
    return #s - cont
end

-- Width of a label in pixels. There are no font metrics here; 0.6 em per character is a
-- little wider than the sans-serif fonts browsers pick, so estimates err on the roomy side.
local function text_width(s, size)
    return text_len(s) * size * 0.6
end

local function truncate(s, width, size)
    if text_width(s, size) <= width then return s end
    local keep = floor(width / (size * 0.6)) - 1
    if keep < 1 then return "…" end
    local out, count = {}, 0
    for ch in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do
        count = count + 1
        if count > keep then break end
        out[#out + 1] = ch
    end
    return table.concat(out) .. "…"
end

-- ---- numbers --------------------------------------------------------------------------------

-- Fixed decimals with trailing zeros (and a trailing point) removed; never "-0".
local function fixed(x, decimals)
    local s = fmt(fmt("%%.%df", decimals), x)
    if s:find("%.") then s = s:gsub("0+$", ""):gsub("%.$", "") end
    if s == "-0" then s = "0" end
    return s
end

-- Decimals that show `digits` significant digits of x (x ~= 0).
local function sig_decimals(x, digits)
    return math.max(0, digits - 1 - floor(log10(abs(x))))
end

local function non_finite_text(x)
    if x ~= x then return "NaN" end
    return x > 0 and "inf" or "-inf"
end

local SI = { { 1e12, "T" }, { 1e9, "G" }, { 1e6, "M" }, { 1e3, "k" } }

-- 1234567 -> "1.23M", 2.3456 -> "2.35", 0.01234 -> "0.0123", 3e-5 -> "3e-05";
-- `digits` significant digits (default 3).
function M.format_number(x, digits)
    if type(x) ~= "number" then error("report.format_number: expected a number, got " .. type(x), 2) end
    if not finite(x) then return non_finite_text(x) end
    digits = digits or 3
    if x == 0 then return "0" end
    local ax = abs(x)
    if ax < 1e-3 then
        local s = fmt(fmt("%%.%de", digits - 1), x)
        local mant, e = s:match("^(.-)e(.*)$")
        if mant:find("%.") then mant = mant:gsub("0+$", ""):gsub("%.$", "") end
        return mant .. "e" .. e
    end
    for _, u in ipairs(SI) do
        if ax >= u[1] * (1 - 0.5 * 10 ^ -digits) then
            local v = x / u[1]
            return fixed(v, sig_decimals(v, digits)) .. u[2]
        end
    end
    local d = sig_decimals(x, digits)
    local s = fixed(x, d)
    -- Rounding can carry into one more digit (999.7 -> "1000"); that is still right.
    return s
end

local BYTE_UNITS = { { 1024 ^ 4, "TiB" }, { 1024 ^ 3, "GiB" }, { 1024 ^ 2, "MiB" }, { 1024, "KiB" } }

-- 268435456 -> "256 MiB", 1.5 * 2^30 -> "1.5 GiB", 100 -> "100 B".
function M.format_bytes(n, digits)
    if type(n) ~= "number" then error("report.format_bytes: expected a number, got " .. type(n), 2) end
    if not finite(n) then return non_finite_text(n) end
    digits = digits or 3
    local an = abs(n)
    for _, u in ipairs(BYTE_UNITS) do
        if an >= u[1] then
            local v = n / u[1]
            return fixed(v, sig_decimals(v, digits)) .. " " .. u[2]
        end
    end
    return fixed(n, 0) .. " B"
end

local TIME_UNITS = { { 1, "s" }, { 1e-3, "ms" }, { 1e-6, "µs" }, { 1e-9, "ns" } }

-- Seconds: 0.1234 -> "123 ms", 2.5 -> "2.5 s", 4.2e-5 -> "42 µs".
function M.format_seconds(t, digits)
    if type(t) ~= "number" then error("report.format_seconds: expected a number, got " .. type(t), 2) end
    if not finite(t) then return non_finite_text(t) end
    digits = digits or 3
    if t == 0 then return "0 s" end
    local at = abs(t)
    for _, u in ipairs(TIME_UNITS) do
        if at >= u[1] * (1 - 0.5 * 10 ^ -digits) or u[1] == 1e-9 then
            local v = t / u[1]
            return fixed(v, sig_decimals(v, digits)) .. " " .. u[2]
        end
    end
end

-- Axis units per format: ticks are chosen in the unit that suits the axis's largest value,
-- so one axis reads 0, 0.5 GiB, 1 GiB rather than 0, 512 MiB, 1 GiB.
local AXIS_UNITS = {
    number = { { 1e12, "T" }, { 1e9, "G" }, { 1e6, "M" }, { 1e3, "k" }, { 1, "" } },
    bytes = { { 1024 ^ 4, " TiB" }, { 1024 ^ 3, " GiB" }, { 1024 ^ 2, " MiB" }, { 1024, " KiB" }, { 1, " B" } },
    seconds = { { 1, " s" }, { 1e-3, " ms" }, { 1e-6, " µs" }, { 1e-9, " ns" } },
}

local VALUE_FORMATS = { number = M.format_number, bytes = M.format_bytes, seconds = M.format_seconds }

-- A function turning one value into text, from a format spec.
local function value_formatter(spec, who)
    if spec == nil then return M.format_number end
    if type(spec) == "function" then return spec end
    if VALUE_FORMATS[spec] then return VALUE_FORMATS[spec] end
    if type(spec) == "string" and spec:find("%%") then
        return function(v) return fmt(spec, v) end
    end
    error(("%s: unknown format %s (use \"number\", \"bytes\", \"seconds\", a %%-pattern or a function)")
        :format(who, tostring(spec)), 3)
end

-- ---- ticks --------------------------------------------------------------------------------

-- Heckbert's "nice number": the 1, 2 or 5 times a power of ten nearest x (round) or at
-- least x (not round).
local function nice_num(x, round)
    local e = floor(log10(x))
    local f = x / 10 ^ e
    local nf
    if round then
        nf = f < 1.5 and 1 or f < 3 and 2 or f < 7 and 5 or 10
    else
        nf = f <= 1 and 1 or f <= 2 and 2 or f <= 5 and 5 or 10
    end
    return nf * 10 ^ e
end

-- Round tick values covering [lo, hi], about n of them (default 5): multiples of a step
-- that is 1, 2 or 5 times a power of ten, the first at or below lo and the last at or above
-- hi. Returns the ticks and the step. Equal bounds are widened so there is something to show.
function M.nice_ticks(lo, hi, n)
    if not (finite(lo) and finite(hi)) then
        error(("report.nice_ticks: bounds must be finite numbers, got %s and %s"):format(tostring(lo), tostring(hi)), 2)
    end
    n = math.max(2, n or 5)
    if lo > hi then lo, hi = hi, lo end
    if lo == hi then
        local d = abs(lo) * 0.1
        if d == 0 then d = 1 end
        lo, hi = lo - d, hi + d
    end
    if not finite(hi - lo) then
        error(("report.nice_ticks: the range %g..%g is too wide for a double"):format(lo, hi), 2)
    end
    local range = nice_num(hi - lo, false)
    local step = nice_num(range / (n - 1), true)
    local first, last = floor(lo / step + 1e-9), ceil(hi / step - 1e-9)
    -- Values are rebuilt from integers and rounded to the step's decimals, so 0.6 prints as 0.6.
    local decimals = math.max(0, -floor(log10(step) + 1e-9))
    local ticks = {}
    for k = first, last do
        local v = tonumber(fmt(fmt("%%.%df", math.min(decimals, 17)), k * step))
        if v == 0 then v = 0 end -- no -0
        ticks[#ticks + 1] = v
    end
    return ticks, step
end

-- Labels for linear ticks in one unit with the decimals the step needs, so labels line up:
-- 0, 0.5 GiB, 1 GiB, 1.5 GiB. `unit` is the one the ticks were made round in (bytes and
-- seconds); plain numbers take the largest SI unit the biggest tick reaches ten of.
local function linear_labels(ticks, step, spec, unit)
    local labels = {}
    if type(spec) == "function" or (type(spec) == "string" and spec:find("%%")) then
        local f = value_formatter(spec, "report")
        for i, t in ipairs(ticks) do labels[i] = f(t) end
        return labels
    end
    local units = AXIS_UNITS[spec or "number"]
    local big = 0
    for _, t in ipairs(ticks) do big = math.max(big, abs(t)) end
    if (spec or "number") == "number" and big > 0 and big < 1e-3 then
        -- Tiny values (learning rates) read best as mantissas of one power of ten.
        local e = floor(log10(big))
        local d = math.max(0, -floor(log10(step / 10 ^ e) + 1e-9))
        for i, t in ipairs(ticks) do
            labels[i] = t == 0 and "0" or (fixed(t / 10 ^ e, d) .. "e" .. e)
        end
        return labels
    end
    if not unit then
        unit = units[#units]
        for _, u in ipairs(units) do
            -- Plain numbers up to 9999 (a step axis reads 0, 500, ..., 3000), SI suffixes beyond.
            if big >= u[1] and (u[1] == 1 or big >= 10 * u[1]) then
                unit = u
                break
            end
        end
    end
    local d = math.max(0, -floor(log10(step / unit[1]) + 1e-9))
    for i, t in ipairs(ticks) do
        labels[i] = t == 0 and "0" or (fixed(t / unit[1], d) .. unit[2])
    end
    return labels
end

-- Ticks for a bytes or seconds axis are round in its display unit (100 MiB steps, not
-- 100 MB ones); returns the ticks, the step and that unit.
local function scaled_nice_ticks(lo, hi, n, spec)
    local units = AXIS_UNITS[spec]
    if spec ~= "bytes" and spec ~= "seconds" then
        local ticks, step = M.nice_ticks(lo, hi, n)
        return ticks, step, nil
    end
    local big = math.max(abs(lo), abs(hi))
    local unit = units[#units]
    for _, u in ipairs(units) do
        if big >= u[1] then
            unit = u
            break
        end
    end
    local ticks, step = M.nice_ticks(lo / unit[1], hi / unit[1], n)
    for i, t in ipairs(ticks) do ticks[i] = t * unit[1] end
    return ticks, step * unit[1], unit
end

-- Ticks for a log axis over [lo, hi] (both > 0): powers of ten, or 1-2-5 or 1..9 times them
-- when the range is too short for enough decades. The domain widens to the outer ticks.
local function log_ticks(lo, hi, n)
    if lo == hi then lo, hi = lo / 2, hi * 2 end
    local function candidates(mults)
        local out = {}
        for e = floor(log10(lo)) - 1, ceil(log10(hi)) + 1 do
            for _, m in ipairs(mults) do out[#out + 1] = m * 10 ^ e end
        end
        return out
    end
    local choice
    for _, mults in ipairs({ { 1 }, { 1, 2, 5 }, { 1, 2, 3, 4, 5, 6, 7, 8, 9 } }) do
        local c = candidates(mults)
        local inside = 0
        for _, v in ipairs(c) do
            if v >= lo * (1 - 1e-9) and v <= hi * (1 + 1e-9) then inside = inside + 1 end
        end
        choice = c
        if inside >= math.min(3, n) then break end
    end
    local dlo, dhi = choice[1], choice[#choice]
    for _, v in ipairs(choice) do
        if v <= lo * (1 + 1e-9) then dlo = v end
    end
    for i = #choice, 1, -1 do
        if choice[i] >= hi * (1 - 1e-9) then dhi = choice[i] end
    end
    local ticks = {}
    for _, v in ipairs(choice) do
        if v >= dlo * (1 - 1e-9) and v <= dhi * (1 + 1e-9) then
            ticks[#ticks + 1] = tonumber(fmt("%.12g", v))
        end
    end
    -- Too many (1..9 over several decades): keep the powers of ten, and 2 and 5 times them
    -- when that is still few enough.
    if #ticks > 2 * n then
        local kept = {}
        for _, v in ipairs(ticks) do
            local m = v / 10 ^ floor(log10(v) + 1e-9)
            if abs(m - 1) < 1e-9 or (#ticks <= 4 * n and (abs(m - 2) < 1e-9 or abs(m - 5) < 1e-9)) then
                kept[#kept + 1] = v
            end
        end
        ticks = kept
    end
    return ticks, dlo, dhi
end

-- ---- axes ---------------------------------------------------------------------------------

--[[
An axis maps data values to pixels over [p0, p1] (p0 may exceed p1: y grows downward).
axis = { lo, hi, log, ticks, labels, p0, p1 }; axis:map(v) -> pixel.
]]
local function make_axis(opts)
    value_formatter(opts.format, "report") -- an unknown format fails here, with its name
    local a = { log = opts.log }
    local lo, hi = opts.lo, opts.hi
    if opts.min and opts.max and not (opts.min < opts.max) then
        error(("report: axis bounds must satisfy min < max, got %s and %s"):format(opts.min, opts.max), 0)
    end
    if a.log and ((opts.min and opts.min <= 0) or (opts.max and opts.max <= 0)) then
        error("report: log axis bounds must be positive", 0)
    end
    if opts.ticks then
        a.ticks = {}
        for _, t in ipairs(opts.ticks) do
            if finite(t) and (not a.log or t > 0) then a.ticks[#a.ticks + 1] = t end
        end
        table.sort(a.ticks)
        if a.log then
            local pad = (lo == hi) and 2 or (hi / lo) ^ 0.06
            a.lo, a.hi = lo / pad, hi * pad
        else
            local pad = (lo == hi) and math.max(abs(lo) * 0.1, 1) or (hi - lo) * 0.06
            a.lo, a.hi = lo - pad, hi + pad
        end
        local f = value_formatter(opts.format, "report")
        a.labels = {}
        for i, t in ipairs(a.ticks) do a.labels[i] = f(t) end
    elseif a.log then
        a.ticks, a.lo, a.hi = log_ticks(lo, hi, opts.n)
        local f = value_formatter(opts.format, "report")
        a.labels = {}
        for i, t in ipairs(a.ticks) do a.labels[i] = f(t) end
    else
        local step, unit
        a.ticks, step, unit = scaled_nice_ticks(lo, hi, opts.n, opts.format)
        a.lo, a.hi = a.ticks[1], a.ticks[#a.ticks]
        a.labels = linear_labels(a.ticks, step, opts.format, unit)
    end
    -- Explicit bounds win over the tick extent; ticks outside them are dropped.
    if opts.min or opts.max then
        a.lo, a.hi = opts.min or a.lo, opts.max or a.hi
        local t, l = {}, {}
        for i, v in ipairs(a.ticks) do
            if v >= a.lo - 1e-12 * abs(a.lo) and v <= a.hi + 1e-12 * abs(a.hi) then
                t[#t + 1], l[#l + 1] = v, a.labels[i]
            end
        end
        a.ticks, a.labels = t, l
    end
    if a.log then
        a.llo, a.lhi = log10(a.lo), log10(a.hi)
    end
    function a:map(v)
        local f
        if self.log then
            f = (log10(v) - self.llo) / (self.lhi - self.llo)
        else
            f = (v - self.lo) / (self.hi - self.lo)
        end
        return self.p0 + f * (self.p1 - self.p0)
    end
    return a
end

-- Fewer ticks until neighbouring x labels leave room between them.
local function fit_x_axis(opts, p0, p1, size)
    local n = math.max(2, math.min(10, floor(abs(p1 - p0) / 70)))
    local a
    while true do
        opts.n = n
        a = make_axis(opts)
        a.p0, a.p1 = p0, p1
        local fits = true
        for i = 2, #a.ticks do
            local gap = abs(a:map(a.ticks[i]) - a:map(a.ticks[i - 1]))
            local need = (text_width(a.labels[i], size) + text_width(a.labels[i - 1], size)) / 2 + 8
            if gap < need then fits = false end
        end
        if fits or n <= 2 or opts.ticks or opts.log then break end
        n = n - 1
    end
    -- Fixed tick sets (log or data ticks) cannot be re-chosen: drop labels that would collide.
    a.show = {}
    local right = -huge
    for i, t in ipairs(a.ticks) do
        local x = a:map(t)
        local w = text_width(a.labels[i], size)
        if x - w / 2 >= right + 6 then
            a.show[i] = true
            right = x + w / 2
        end
    end
    return a
end

-- ---- SVG frame ----------------------------------------------------------------------------

local FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, 'Liberation Sans', sans-serif"
local TICK_SIZE, LABEL_SIZE, TITLE_SIZE, LEGEND_SIZE = 11, 12, 15, 12

local chart_counter = 0

-- A name usable in an id or data attribute: "Peak memory (GiB)" -> "peak-memory-gib".
local function slug(s)
    s = tostring(s or ""):lower():gsub("[^%w]+", "-"):gsub("^%-+", ""):gsub("%-+$", "")
    return s ~= "" and s or "chart"
end

local function num(v) return fixed(v, 1) end

-- level: the error level that names the user's call.
local function check_size(opts, who, dw, dh, level)
    local w, h = opts.width or dw, opts.height or dh
    if not (finite(w) and finite(h)) or w < 160 or h < 120 then
        error(("%s: width and height must be numbers of at least 160 x 120, got %s x %s")
            :format(who, tostring(opts.width), tostring(opts.height)), level)
    end
    return floor(w), floor(h)
end

-- The root element, a white background (a standalone file stays readable in a dark viewer)
-- and the title. Returns the parts so far (a list of strings), the chart's id and the y
-- below the title.
local function begin_svg(opts, kind, width, height)
    chart_counter = chart_counter + 1
    local id = opts.id or slug(opts.title)
    local parts = {}
    local title = opts.title and esc(opts.title) or ""
    parts[#parts + 1] = fmt('<svg xmlns="http://www.w3.org/2000/svg" class="lt-chart" data-chart="%s" ' ..
        'data-kind="%s" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s" ' ..
        'font-family="%s" font-size="%d">', esc(id), kind, width, height, width, height,
        title ~= "" and title or esc(id), FONT, TICK_SIZE)
    if title ~= "" then parts[#parts + 1] = "<title>" .. title .. "</title>" end
    parts[#parts + 1] = fmt('<rect class="lt-background" width="%d" height="%d" fill="#ffffff"/>', width, height)
    if title ~= "" then
        parts[#parts + 1] = fmt('<text class="lt-title" x="16" y="24" font-size="%d" font-weight="600" ' ..
            'fill="#1f2328">%s</text>', TITLE_SIZE, title)
    end
    return parts, id, title ~= "" and 36 or 12
end

-- Legend items ({name, color, dash, marker}) in rows under the title, wrapping at the width.
local function legend(parts, items, width, top)
    if #items == 0 then return top end
    local x, y = 16, top + 12
    local row_h = 18
    parts[#parts + 1] = '<g class="lt-legend">'
    for _, it in ipairs(items) do
        local label = truncate(it.name, width - 60, LEGEND_SIZE)
        local w = 24 + text_width(label, LEGEND_SIZE) + 18
        if x + w > width - 12 and x > 16 then
            x, y = 16, y + row_h
        end
        -- A 4 px band on whole pixels, so its colour comes out exact in a screenshot.
        local swatch
        if it.marker then
            swatch = fmt('<rect x="%d" y="%d" width="10" height="10" fill="%s"/>', x + 4, y - 9, it.color)
        else
            swatch = fmt('<rect x="%d" y="%d" width="18" height="4" fill="%s"/>', x, y - 6, it.color)
            if it.dash then
                swatch = fmt('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3" ' ..
                    'stroke-dasharray="%s"/>', x, y - 4, x + 18, y - 4, it.color, it.dash)
            end
        end
        parts[#parts + 1] = fmt('<g class="lt-legend-item" data-series="%s">%s<text x="%d" y="%d" ' ..
            'font-size="%d" fill="#1f2328">%s</text></g>', esc(it.name), swatch, x + 24, y, LEGEND_SIZE, esc(label))
        x = floor(x + w)
    end
    parts[#parts + 1] = "</g>"
    return y + 10
end

-- Grid, axis lines, tick labels and axis titles for a plot area.
local function draw_axes(parts, xa, ya, box, opts, x_categorical)
    parts[#parts + 1] = '<g class="lt-grid" stroke="#e6e8eb" stroke-width="1">'
    for _, t in ipairs(ya.ticks) do
        local y = floor(ya:map(t)) + 0.5
        parts[#parts + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s"/>', num(box.x0), num(y), num(box.x1), num(y))
    end
    if xa and not x_categorical then
        for _, t in ipairs(xa.ticks) do
            local x = floor(xa:map(t)) + 0.5
            parts[#parts + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#f0f1f3"/>',
                num(x), num(box.y0), num(x), num(box.y1))
        end
    end
    parts[#parts + 1] = "</g>"
    parts[#parts + 1] = fmt('<g class="lt-axes" stroke="#57606a" stroke-width="1" fill="none">' ..
        '<line x1="%s" y1="%s" x2="%s" y2="%s"/><line x1="%s" y1="%s" x2="%s" y2="%s"/></g>',
        num(box.x0 - 0.5), num(box.y1 + 0.5), num(box.x1), num(box.y1 + 0.5),
        num(box.x0 - 0.5), num(box.y0), num(box.x0 - 0.5), num(box.y1 + 0.5))
    parts[#parts + 1] = '<g class="lt-ticks" fill="#57606a" font-size="' .. TICK_SIZE .. '">'
    for i, t in ipairs(ya.ticks) do
        parts[#parts + 1] = fmt('<text x="%s" y="%s" text-anchor="end" dominant-baseline="middle">%s</text>',
            num(box.x0 - 8), num(ya:map(t)), esc(ya.labels[i]))
    end
    if xa and not x_categorical then
        for i, t in ipairs(xa.ticks) do
            if xa.show[i] then
                parts[#parts + 1] = fmt('<text x="%s" y="%s" text-anchor="middle">%s</text>',
                    num(xa:map(t)), num(box.y1 + 18), esc(xa.labels[i]))
            end
        end
    end
    parts[#parts + 1] = "</g>"
    if opts.x_label then
        parts[#parts + 1] = fmt('<text class="lt-axis-label" x="%s" y="%s" text-anchor="middle" ' ..
            'font-size="%d" fill="#1f2328">%s</text>', num((box.x0 + box.x1) / 2), num(box.y1 + (box.label_offset or 38)),
            LABEL_SIZE, esc(opts.x_label))
    end
    if opts.y_label then
        local cx, cy = 16, (box.y0 + box.y1) / 2
        parts[#parts + 1] = fmt('<text class="lt-axis-label" transform="translate(%s %s) rotate(-90)" ' ..
            'text-anchor="middle" font-size="%d" fill="#1f2328">%s</text>', num(cx + 4), num(cy),
            LABEL_SIZE, esc(opts.y_label))
    end
end

-- A grey line of small print under the plot: dropped points and the like.
local function footnote(parts, text, width, height)
    if text then
        parts[#parts + 1] = fmt('<text class="lt-note" x="%d" y="%d" text-anchor="end" font-size="10" ' ..
            'fill="#6e7781">%s</text>', width - 12, height - 6, esc(text))
    end
end

local function no_data(parts, width, top, height)
    parts[#parts + 1] = fmt('<text class="lt-nodata" x="%s" y="%s" text-anchor="middle" font-size="14" ' ..
        'fill="#6e7781">no data</text>', num(width / 2), num((top + height) / 2))
    parts[#parts + 1] = "</svg>"
    return table.concat(parts, "\n")
end

-- Left margin: room for the widest y label and the rotated y title.
local function left_margin(ya, opts)
    local w = 0
    for _, l in ipairs(ya.labels) do w = math.max(w, text_width(l, TICK_SIZE)) end
    return floor(w + 14 + (opts.y_label and 26 or 8))
end

local function dropped_note(dropped, log_axis)
    if dropped == 0 then return nil end
    return ("%d %s not drawn (%s)"):format(dropped, dropped == 1 and "point" or "points",
        log_axis and "NaN, inf or <= 0 on a log axis" or "NaN or inf")
end

-- Notes joined into one footnote; nil when there are none.
local function join_notes(...)
    local out = {}
    for i = 1, select("#", ...) do
        local n = select(i, ...)
        if n then out[#out + 1] = n end
    end
    return #out > 0 and table.concat(out, " · ") or nil
end

-- ---- thinning -----------------------------------------------------------------------------

--[[
Thin a polyline for drawing: split the x range into `columns` equal buckets and keep, in
order, the first, lowest, highest and last point of each. At one bucket per pixel column the
drawn picture is the same as with every point (the M4 method of Jugel et al., VLDB 2014).
Points are {x, y} with x not decreasing; shorter inputs come back as they are.
]]
function M.thin(points, columns)
    local n = #points
    if n <= 4 * columns or columns < 1 then return points end
    local x0, x1 = points[1][1], points[n][1]
    local span = x1 - x0
    if not (span > 0) then return points end
    local out = {}
    local i = 1
    while i <= n do
        local b = floor((points[i][1] - x0) / span * columns)
        if b >= columns then b = columns - 1 end
        local first, last, lo, hi = i, i, i, i
        local j = i + 1
        while j <= n do
            local bj = floor((points[j][1] - x0) / span * columns)
            if bj >= columns then bj = columns - 1 end
            if bj ~= b then break end
            last = j
            if points[j][2] < points[lo][2] then lo = j end
            if points[j][2] > points[hi][2] then hi = j end
            j = j + 1
        end
        local keep = { first, lo, hi, last }
        table.sort(keep)
        local prev
        for _, k in ipairs(keep) do
            if k ~= prev then out[#out + 1] = points[k] end
            prev = k
        end
        i = last + 1
    end
    return out
end

-- The exponential moving average TensorBoard draws, debiased so the start is not pulled
-- toward zero: weight 0.9 averages over roughly the last ten points.
function M.smooth(points, weight)
    local out, last = {}, 0
    for k, p in ipairs(points) do
        last = last * weight + (1 - weight) * p[2]
        out[k] = { p[1], last / (1 - weight ^ k) }
    end
    return out
end

-- ---- line chart ---------------------------------------------------------------------------

-- Points of a series that can be drawn, and how many could not.
local function drawable(points, who, log_x, log_y)
    local out, dropped = {}, 0
    if type(points) ~= "table" then error(who .. ": a series needs a points table", 4) end
    for i, p in ipairs(points) do
        if type(p) ~= "table" then error(("%s: point %d is a %s, not {x, y}"):format(who, i, type(p)), 4) end
        local x, y = p[1] or p.x, p[2] or p.y
        if type(x) ~= "number" or type(y) ~= "number" then
            error(("%s: point %d needs numbers x and y, got %s and %s"):format(who, i, type(x), type(y)), 4)
        end
        if finite(x) and finite(y) and (not log_x or x > 0) and (not log_y or y > 0) then
            out[#out + 1] = { x, y, label = p.label }
        else
            dropped = dropped + 1
        end
    end
    return out, dropped
end

local function data_range(all, k)
    local lo, hi = huge, -huge
    for _, pts in ipairs(all) do
        for _, p in ipairs(pts) do
            if p[k] < lo then lo = p[k] end
            if p[k] > hi then hi = p[k] end
        end
    end
    return lo, hi
end

local function check_series(opts, who)
    local series = opts.series
    if series == nil and opts.points then series = { { name = opts.name or opts.y_label or "", points = opts.points } } end
    if type(series) ~= "table" then error(who .. ": opts.series must be a list of {name =, points =}", 4) end
    return series
end

local function coords(px)
    local out = {}
    for i, p in ipairs(px) do out[i] = num(p[1]) .. "," .. num(p[2]) end
    return table.concat(out, " ")
end

local function polyline(parts, s, px, color, dsh, width)
    parts[#parts + 1] = fmt('<polyline class="lt-series" data-series="%s" points="%s" fill="none" ' ..
        'stroke="%s" stroke-width="%s" stroke-linejoin="round" stroke-linecap="round"%s/>',
        esc(s.name or ""), coords(px), color, width or "2",
        dsh and (' stroke-dasharray="' .. dsh .. '"') or "")
end

-- Shared body of line and scatter charts. kind: "line" (polylines, markers only on short
-- series) or "scatter" (markers, optional connecting lines and labels).
local function xy_chart(opts, kind, who)
    if type(opts) ~= "table" then error(who .. ": expected an options table", 3) end
    local width, height = check_size(opts, who, kind == "line" and 960 or 560, kind == "line" and 400 or 340, 4)
    local series = check_series(opts, who)
    local smooth = opts.smooth
    if smooth ~= nil and not (kind == "line" and type(smooth) == "number" and smooth >= 0 and smooth < 1) then
        error(who .. ": smooth must be a number in [0, 1) (the EMA weight), on a line chart", 3)
    end
    if smooth == 0 then smooth = nil end
    local log_x, log_y = opts.log_x and true or false, opts.log_y and true or false
    local all, dropped = {}, 0
    for i, s in ipairs(series) do
        if type(s) ~= "table" then error(("%s: series %d is a %s, not {name =, points =}"):format(who, i, type(s)), 3) end
        local pts, d = drawable(s.points, who, log_x, log_y)
        all[i], dropped = pts, dropped + d
    end
    local parts, id, top = begin_svg(opts, kind, width, height)

    local items = {}
    if #series > 1 or opts.legend then
        for i, s in ipairs(series) do
            local name = tostring(s.name or ("series " .. i))
            if #all[i] == 0 then name = name .. " (no data)" end
            items[#items + 1] = { name = name, color = s.color or M.color(i), dash = not s.color and dash(i) or nil,
                marker = kind == "scatter" and opts.connect == false }
        end
    end
    top = legend(parts, items, width, top) + 10

    local xlo, xhi = data_range(all, 1)
    local ylo, yhi = data_range(all, 2)
    if xlo > xhi then
        footnote(parts, dropped_note(dropped, log_x or log_y), width, height)
        return no_data(parts, width, top, height)
    end
    if opts.y_zero and not log_y then ylo, yhi = math.min(ylo, 0), math.max(yhi, 0) end

    local note = join_notes(smooth and ("lines smoothed (EMA %g), raw values faint"):format(smooth),
        dropped_note(dropped, log_x or log_y))

    local bottom = height - (opts.x_label and 50 or 32) - (note and 8 or 0)
    local ya = make_axis({ lo = ylo, hi = yhi, log = log_y, format = opts.y_format,
        n = math.max(2, math.min(8, floor((bottom - top) / 45))), min = opts.y_min, max = opts.y_max })
    ya.p0, ya.p1 = bottom, top
    local box = { x0 = left_margin(ya, opts), x1 = width - 20, y0 = top, y1 = bottom }
    local x_ticks = opts.x_ticks
    if x_ticks == "data" then
        local seen, list = {}, {}
        for _, pts in ipairs(all) do
            for _, p in ipairs(pts) do
                if not seen[p[1]] then seen[p[1]], list[#list + 1] = true, p[1] end
            end
        end
        x_ticks = list
    end
    local xa = fit_x_axis({ lo = xlo, hi = xhi, log = log_x, format = opts.x_format, ticks = x_ticks,
        min = opts.x_min, max = opts.x_max }, box.x0, box.x1, TICK_SIZE)
    -- Scatter markers sit inside the frame, not on its edges.
    if kind == "scatter" and not x_ticks and not log_x then
        local pad = 10 / (box.x1 - box.x0) * (xa.hi - xa.lo)
        if xlo - xa.lo < pad then xa.lo = xa.lo - pad end
        if xa.hi - xhi < pad then xa.hi = xa.hi + pad end
    end
    draw_axes(parts, xa, ya, box, opts)

    -- Lines may leave the plot only when y_min/y_max/x_min/x_max cut the data.
    local clip = fmt("lt-clip-%s-%d", slug(id), chart_counter)
    parts[#parts + 1] = fmt('<clipPath id="%s"><rect x="%s" y="%s" width="%s" height="%s"/></clipPath>',
        clip, num(box.x0 - 6), num(box.y0 - 6), num(box.x1 - box.x0 + 12), num(box.y1 - box.y0 + 12))
    parts[#parts + 1] = fmt('<g class="lt-plot" clip-path="url(#%s)">', clip)
    for i, s in ipairs(series) do
        local pts = all[i]
        local monotonic_x = true
        for k = 2, #pts do
            if pts[k][1] < pts[k - 1][1] then monotonic_x = false end
        end
        local function to_pixels(list)
            local px = {}
            for k, p in ipairs(list) do px[k] = { xa:map(p[1]), ya:map(p[2]) } end
            -- One bucket per pixel column draws the same picture with far fewer points.
            if kind == "line" and monotonic_x then px = M.thin(px, floor(box.x1 - box.x0)) end
            return px
        end
        local color = s.color or M.color(i)
        local dsh = not s.color and dash(i) or nil
        if kind == "line" then
            local px = to_pixels(pts)
            if smooth and #pts > 1 then
                parts[#parts + 1] = fmt('<polyline class="lt-series-raw" data-series="%s" points="%s" fill="none" ' ..
                    'stroke="%s" stroke-opacity="0.25" stroke-width="1" stroke-linejoin="round"/>',
                    esc(s.name or ""), coords(px), color)
                px = to_pixels(M.smooth(pts, smooth))
            end
            if #px > 0 then polyline(parts, s, px, color, dsh) end
            if #pts <= 25 then
                parts[#parts + 1] = fmt('<g class="lt-points" data-series="%s" fill="%s">', esc(s.name or ""), color)
                for _, p in ipairs(pts) do
                    parts[#parts + 1] = fmt('<circle cx="%s" cy="%s" r="%s"/>', num(xa:map(p[1])), num(ya:map(p[2])),
                        #pts == 1 and "4" or "2.5")
                end
                parts[#parts + 1] = "</g>"
            end
        else
            local px = to_pixels(pts)
            if opts.connect ~= false and #px > 0 then polyline(parts, s, px, color, dsh, "1.5") end
            parts[#parts + 1] = fmt('<g class="lt-points" data-series="%s" fill="%s" stroke="#ffffff" ' ..
                'stroke-width="1.5">', esc(s.name or ""), color)
            for _, p in ipairs(px) do
                parts[#parts + 1] = fmt('<circle class="lt-point" cx="%s" cy="%s" r="4.5"/>', num(p[1]), num(p[2]))
            end
            parts[#parts + 1] = "</g>"
        end
    end
    parts[#parts + 1] = "</g>"
    if kind == "scatter" then
        -- Labels go above each point (below when it is near the top), shifted sideways to
        -- stay inside the plot.
        local vf = value_formatter(opts.y_format, who)
        parts[#parts + 1] = '<g class="lt-point-labels" font-size="11" fill="#1f2328" text-anchor="middle">'
        for i in ipairs(series) do
            for _, p in ipairs(all[i]) do
                local text = p.label
                if opts.value_labels then text = (text and (text .. ": ") or "") .. vf(p[2]) end
                if text then
                    local x, y = xa:map(p[1]), ya:map(p[2])
                    local half = text_width(text, 11) / 2
                    x = math.max(box.x0 + half + 4, math.min(box.x1 - half, x))
                    local ly = y - 10 < box.y0 + 10 and y + 18 or y - 10
                    parts[#parts + 1] = fmt('<text x="%s" y="%s">%s</text>', num(x), num(ly), esc(text))
                end
            end
        end
        parts[#parts + 1] = "</g>"
    end
    footnote(parts, note, width, height)
    parts[#parts + 1] = "</svg>"
    return table.concat(parts, "\n")
end

-- Not tail calls: errors raised inside xy_chart count this frame to name the user's line.
function M.line_chart(opts)
    local svg = xy_chart(opts, "line", "report.line_chart")
    return svg
end

-- Points for metric-against-rank plots; on a log x axis the ticks default to the data's x
-- values (the ranks themselves).
function M.scatter_chart(opts)
    if type(opts) == "table" and opts.log_x and opts.x_ticks == nil then
        opts = setmetatable({ x_ticks = "data" }, { __index = opts })
    end
    local svg = xy_chart(opts, "scatter", "report.scatter_chart")
    return svg
end

-- ---- bar chart ----------------------------------------------------------------------------

function M.bar_chart(opts)
    local who = "report.bar_chart"
    if type(opts) ~= "table" then error(who .. ": expected an options table", 2) end
    local width, height = check_size(opts, who, 560, 340, 3)
    local bars = opts.bars
    if type(bars) ~= "table" then error(who .. ": opts.bars must be a list of {label =, value =}", 2) end
    local lo, hi, dropped = 0, 0, 0
    for i, b in ipairs(bars) do
        if type(b) ~= "table" or type(b.value) ~= "number" then
            error(("%s: bar %d needs a number value"):format(who, i), 2)
        end
        if finite(b.value) then
            lo, hi = math.min(lo, b.value), math.max(hi, b.value)
        else
            dropped = dropped + 1
        end
    end
    local parts, _, top = begin_svg(opts, "bar", width, height)
    top = top + 14
    if #bars == 0 then return no_data(parts, width, top, height) end
    local vf = value_formatter(opts.y_format, who)
    -- Labels too wide for their bars' slots are turned 35 degrees (the usual reading angle)
    -- and the plot gives up height for them; the slot estimate assumes a 60 px left margin.
    local label_max = 0
    for i, b in ipairs(bars) do label_max = math.max(label_max, text_width(tostring(b.label or i), TICK_SIZE)) end
    local rotate = label_max > (width - 80) / #bars - 4
    local drop = 0
    if rotate then
        label_max = math.min(label_max, height * 0.3)
        drop = floor(label_max * 0.574 + TICK_SIZE * 0.82 - 12)
    end
    local bottom = height - (opts.x_label and 50 or 32) - drop - (dropped > 0 and 8 or 0)
    -- Headroom for the value printed above the tallest bar.
    local head = (hi - lo) * 0.1
    local ya = make_axis({ lo = lo < 0 and lo - head or lo, hi = hi > 0 and hi + head or hi,
        format = opts.y_format, n = math.max(2, math.min(8, floor((bottom - top) / 45))),
        min = opts.y_min, max = opts.y_max })
    ya.p0, ya.p1 = bottom, top
    local box = { x0 = left_margin(ya, opts), x1 = width - 20, y0 = top, y1 = bottom, label_offset = 38 + drop }
    draw_axes(parts, nil, ya, box, opts, true)
    local band = (box.x1 - box.x0) / #bars
    local bw = math.min(band * 0.7, 90)
    local y_zero = ya:map(math.max(ya.lo, math.min(ya.hi, 0)))
    parts[#parts + 1] = '<g class="lt-bars">'
    local labels = {}
    for i, b in ipairs(bars) do
        local cx = box.x0 + band * (i - 0.5)
        local label = tostring(b.label or i)
        if rotate then
            labels[#labels + 1] = fmt('<text x="%s" y="%s" text-anchor="end" transform="rotate(-35 %s %s)">%s</text>',
                num(cx + 4), num(box.y1 + 14), num(cx + 4), num(box.y1 + 14), esc(truncate(label, label_max, TICK_SIZE)))
        else
            labels[#labels + 1] = fmt('<text x="%s" y="%s" text-anchor="middle">%s</text>', num(cx), num(box.y1 + 18),
                esc(label))
        end
        if finite(b.value) then
            local yv = ya:map(math.max(ya.lo, math.min(ya.hi, b.value)))
            local y0, y1 = math.min(yv, y_zero), math.max(yv, y_zero)
            -- Whole pixels, so the fill colour is exact in a screenshot and edges are crisp.
            local x0 = floor(cx - bw / 2 + 0.5)
            local ry0, ry1 = floor(y0 + 0.5), floor(y1 + 0.5)
            parts[#parts + 1] = fmt('<rect class="lt-bar" data-label="%s" x="%d" y="%d" width="%d" height="%d" ' ..
                'fill="%s"><title>%s: %s</title></rect>', esc(label), x0, ry0, floor(bw + 0.5), math.max(ry1 - ry0, 1),
                b.color or opts.color or M.color(1), esc(label), esc(vf(b.value)))
            local ty = b.value >= 0 and y0 - 5 or y1 + 14
            labels[#labels + 1] = fmt('<text x="%s" y="%s" text-anchor="middle" fill="#1f2328">%s</text>',
                num(cx), num(ty), esc(truncate(vf(b.value), band, TICK_SIZE)))
        else
            labels[#labels + 1] = fmt('<text x="%s" y="%s" text-anchor="middle" fill="#6e7781">n/a</text>',
                num(cx), num(y_zero - 5))
        end
    end
    parts[#parts + 1] = "</g>"
    parts[#parts + 1] = '<g class="lt-ticks" fill="#57606a" font-size="' .. TICK_SIZE .. '">'
    for _, l in ipairs(labels) do parts[#parts + 1] = l end
    parts[#parts + 1] = "</g>"
    footnote(parts, dropped > 0 and (("%d %s NaN or inf"):format(dropped, dropped == 1 and "value is" or "values are"))
        or nil, width, height)
    parts[#parts + 1] = "</svg>"
    return table.concat(parts, "\n")
end

-- ---- tables -------------------------------------------------------------------------------

-- Columns as records: { key, title, format (a function), best, numeric }.
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
        out[i].format = out[i].spec and value_formatter(out[i].spec, who)
    end
    return out
end

local function check_rows(rows, who)
    if rows == nil then return {} end
    if type(rows) ~= "table" then error(who .. ": rows must be a list", 3) end
    for r, row in ipairs(rows) do
        if type(row) ~= "table" then error(("%s: row %d is a %s, not a table"):format(who, r, type(row)), 3) end
    end
    return rows
end

local function cell(row, col, i)
    local v = row[col.key]
    if v == nil then v = row[i] end
    return v
end

-- Shortest text that reads back as the same number.
local function exact_number(x)
    if not finite(x) then return x ~= x and "nan" or (x > 0 and "inf" or "-inf") end
    if x == floor(x) and abs(x) < 2 ^ 53 then return fmt("%d", x) end
    for p = 15, 17 do
        local s = fmt(fmt("%%.%dg", p), x)
        if tonumber(s) == x then return s end
    end
end

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

-- An aligned plain-text table: numbers right-aligned, text left-aligned.
function M.format_table(columns, rows)
    local cols = normalize_columns(columns, "report.format_table")
    rows = check_rows(rows, "report.format_table")
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

function M.print_table(columns, rows, file)
    local out = file or io.stdout
    out:write(M.format_table(columns, rows))
    out:flush()
end

-- ---- HTML ---------------------------------------------------------------------------------

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
        local cols = normalize_columns(tbl.columns, who)
        local rows = check_rows(tbl.rows, who)
        column_facts(cols, rows)
        h[#h + 1] = "<section>"
        h[#h + 1] = "<h2>" .. esc(tbl.title or "Results") .. "</h2>"
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

-- ---- files --------------------------------------------------------------------------------

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
