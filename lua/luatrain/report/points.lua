--[[
report/points.lua - a series' points on their way to the page: thinning a long polyline,
TensorBoard's smoothing, dropping the points that cannot be drawn, and their range.
]]
local format = require "luatrain.report.format"

local M = {}

local floor = math.floor
local huge = math.huge
local finite = format.finite

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

-- Points of a series that can be drawn, and how many could not. Errors are raised at level 4,
-- the caller of report.line_chart or report.scatter_chart (through xy_chart).
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

-- Lowest and highest coordinate k (1: x, 2: y) over lists of points; huge, -huge when empty.
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

M.drawable = drawable
M.data_range = data_range

return M
