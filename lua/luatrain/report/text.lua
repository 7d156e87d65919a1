--[[
report/text.lua - text for SVG and HTML: escaping (with invalid UTF-8 repaired), the width a
label takes, truncation to a width, and slugs for ids.
]]
local M = {}

local floor = math.floor

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

-- At most `width` pixels of s, cut at a character and ended with an ellipsis when shortened.
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

-- A name usable in an id or data attribute: "Peak memory (GiB)" -> "peak-memory-gib".
local function slug(s)
    s = tostring(s or ""):lower():gsub("[^%w]+", "-"):gsub("^%-+", ""):gsub("%-+$", "")
    return s ~= "" and s or "chart"
end

M.text_len = text_len
M.text_width = text_width
M.truncate = truncate
M.slug = slug

return M
