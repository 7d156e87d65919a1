--[[
report/axes.lua - where the ticks go and what they say: round linear ticks in one display
unit per axis, log ticks, and axes that map data values to pixels.
]]
local format = require "luatrain.report.format"
local text = require "luatrain.report.text"

local M = {}

local floor, ceil, abs, log10 = math.floor, math.ceil, math.abs, math.log10
local huge = math.huge
local fmt = string.format
local finite, fixed, value_formatter = format.finite, format.fixed, format.value_formatter
local text_width = text.text_width

-- Axis units per format: ticks are chosen in the unit that suits the axis's largest value,
-- so one axis reads 0, 0.5 GiB, 1 GiB rather than 0, 512 MiB, 1 GiB.
local AXIS_UNITS = {
    number = { { 1e12, "T" }, { 1e9, "G" }, { 1e6, "M" }, { 1e3, "k" }, { 1, "" } },
    bytes = { { 1024 ^ 4, " TiB" }, { 1024 ^ 3, " GiB" }, { 1024 ^ 2, " MiB" }, { 1024, " KiB" }, { 1, " B" } },
    seconds = { { 1, " s" }, { 1e-3, " ms" }, { 1e-6, " µs" }, { 1e-9, " ns" } },
}

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

--[[
An axis maps data values to pixels over [p0, p1] (p0 may exceed p1: y grows downward).
axis = { lo, hi, log, ticks, labels, p0, p1 }; axis:map(v) -> pixel.
]]
local function make_axis(opts)
    value_formatter(opts.format, "report") -- a backstop: the charts check formats first
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

M.make_axis = make_axis
M.fit_x_axis = fit_x_axis

return M
