--[[
report/format.lua - numbers as people read them (3 significant digits, SI suffixes, binary
byte units, time units), the format specs that charts and tables accept, and the exact text
of a number where the raw value is kept (CSV, the HTML table's data-value).
]]
local M = {}

local floor, abs, log10 = math.floor, math.abs, math.log10
local huge = math.huge
local fmt = string.format

-- A number that is neither NaN nor infinite.
local function finite(x)
    return type(x) == "number" and x == x and x ~= huge and x ~= -huge
end

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

local VALUE_FORMATS = { number = M.format_number, bytes = M.format_bytes, seconds = M.format_seconds }

-- A function turning one value into text, from a format spec. An unknown spec is an error at
-- `level` as the caller would pass it to error (default 2: the caller's caller), named `who`.
local function value_formatter(spec, who, level)
    if spec == nil then return M.format_number end
    if type(spec) == "function" then return spec end
    if VALUE_FORMATS[spec] then return VALUE_FORMATS[spec] end
    if type(spec) == "string" and spec:find("%%") then
        return function(v) return fmt(spec, v) end
    end
    error(("%s: unknown format %s (use \"number\", \"bytes\", \"seconds\", a %%-pattern or a function)")
        :format(who, tostring(spec)), (level or 2) + 1)
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

M.finite = finite
M.fixed = fixed
M.non_finite_text = non_finite_text
M.value_formatter = value_formatter
M.exact_number = exact_number

return M
