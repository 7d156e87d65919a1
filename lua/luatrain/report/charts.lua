--[[
report/charts.lua - line, scatter and bar charts, each a standalone SVG document (see
report/init.lua for the options).
]]
local format = require "luatrain.report.format"
local text = require "luatrain.report.text"
local axes = require "luatrain.report.axes"
local points = require "luatrain.report.points"
local svg = require "luatrain.report.svg"

local M = {}

local floor = math.floor
local fmt = string.format
local finite, value_formatter = format.finite, format.value_formatter
local esc, text_width, truncate, slug = text.escape, text.text_width, text.truncate, text.slug
local make_axis, fit_x_axis = axes.make_axis, axes.fit_x_axis
local drawable, data_range = points.drawable, points.data_range
local num, check_size, begin_svg, legend, draw_axes = svg.num, svg.check_size, svg.begin_svg, svg.legend, svg.draw_axes
local footnote, no_data, left_margin = svg.footnote, svg.no_data, svg.left_margin
local dropped_note, join_notes, dash = svg.dropped_note, svg.join_notes, svg.dash
local TICK_SIZE = svg.TICK_SIZE

-- The chart's series; `points` alone makes one, named by `name` or the y label. Errors are
-- raised at level 4: the caller of report.line_chart or report.scatter_chart.
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
    local parts, id, top, serial = begin_svg(opts, kind, width, height)

    local items = {}
    if #series > 1 or opts.legend then
        for i, s in ipairs(series) do
            local name = tostring(s.name or ("series " .. i))
            if #all[i] == 0 then name = name .. " (no data)" end
            items[#items + 1] = { name = name, color = s.color or svg.color(i), dash = not s.color and dash(i) or nil,
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
    -- Formats are checked here rather than in make_axis, one frame deeper, so that an unknown
    -- one names the user's call and the chart function.
    value_formatter(opts.y_format, who, 3)
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
    value_formatter(opts.x_format, who, 3)
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
    local clip = fmt("lt-clip-%s-%d", slug(id), serial)
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
            if kind == "line" and monotonic_x then px = points.thin(px, floor(box.x1 - box.x0)) end
            return px
        end
        local color = s.color or svg.color(i)
        local dsh = not s.color and dash(i) or nil
        if kind == "line" then
            local px = to_pixels(pts)
            if smooth and #pts > 1 then
                parts[#parts + 1] = fmt('<polyline class="lt-series-raw" data-series="%s" points="%s" fill="none" ' ..
                    'stroke="%s" stroke-opacity="0.25" stroke-width="1" stroke-linejoin="round"/>',
                    esc(s.name or ""), coords(px), color)
                px = to_pixels(points.smooth(pts, smooth))
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
                local label = p.label
                if opts.value_labels then label = (label and (label .. ": ") or "") .. vf(p[2]) end
                if label then
                    local x, y = xa:map(p[1]), ya:map(p[2])
                    local half = text_width(label, 11) / 2
                    x = math.max(box.x0 + half + 4, math.min(box.x1 - half, x))
                    local ly = y - 10 < box.y0 + 10 and y + 18 or y - 10
                    parts[#parts + 1] = fmt('<text x="%s" y="%s">%s</text>', num(x), num(ly), esc(label))
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
    local doc = xy_chart(opts, "line", "report.line_chart")
    return doc
end

-- Points for metric-against-rank plots; on a log x axis the ticks default to the data's x
-- values (the ranks themselves).
function M.scatter_chart(opts)
    if type(opts) == "table" and opts.log_x and opts.x_ticks == nil then
        opts = setmetatable({ x_ticks = "data" }, { __index = opts })
    end
    local doc = xy_chart(opts, "scatter", "report.scatter_chart")
    return doc
end

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
                b.color or opts.color or svg.color(1), esc(label), esc(vf(b.value)))
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

return M
