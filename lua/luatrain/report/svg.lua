--[[
report/svg.lua - the frame every chart shares: palette and dash patterns, the root element
and title, legend, grid and axes, footnotes and the "no data" message.
]]
local format = require "luatrain.report.format"
local text = require "luatrain.report.text"

local M = {}

local floor = math.floor
local fmt = string.format
local finite, fixed = format.finite, format.fixed
local esc, text_width, truncate, slug = text.escape, text.text_width, text.truncate, text.slug

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

local FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, 'Liberation Sans', sans-serif"
local TICK_SIZE, LABEL_SIZE, TITLE_SIZE, LEGEND_SIZE = 11, 12, 15, 12

-- Charts drawn so far in this process: ids inside an SVG (its clip path) carry the count,
-- so two charts with the same id on one page do not share them.
local chart_counter = 0

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
-- and the title. Returns the parts so far (a list of strings), the chart's id, the y below
-- the title and the chart's serial number.
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
    return parts, id, title ~= "" and 36 or 12, chart_counter
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
            LABEL_SIZE, esc(opts.x_label .. (xa and xa.log and " (log scale)" or "")))
    end
    if opts.y_label then
        local cx, cy = 16, (box.y0 + box.y1) / 2
        parts[#parts + 1] = fmt('<text class="lt-axis-label" transform="translate(%s %s) rotate(-90)" ' ..
            'text-anchor="middle" font-size="%d" fill="#1f2328">%s</text>', num(cx + 4), num(cy),
            LABEL_SIZE, esc(opts.y_label .. (ya and ya.log and " (log scale)" or "")))
    end
end

-- A grey line of small print under the plot: dropped points and the like.
local function footnote(parts, note, width, height)
    if note then
        parts[#parts + 1] = fmt('<text class="lt-note" x="%d" y="%d" text-anchor="end" font-size="10" ' ..
            'fill="#6e7781">%s</text>', width - 12, height - 6, esc(note))
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

M.dash = dash
M.TICK_SIZE = TICK_SIZE
M.num = num
M.check_size = check_size
M.begin_svg = begin_svg
M.legend = legend
M.draw_axes = draw_axes
M.footnote = footnote
M.no_data = no_data
M.left_margin = left_margin
M.dropped_note = dropped_note
M.join_notes = join_notes

return M
