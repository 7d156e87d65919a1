--[[
browser.lua - headless Chromium for the tests that check what a person sees: run it with a
fresh profile, measure where charts, series and bars were laid out, decode its
screenshots, and read the start tags of the DOM it dumps.

    local B = require "browser"
    if not B.which("chromium") then ... skip ... end
    local layout = B.layout(html, dir)   -- charts[id] = {x, y, w, h}, series = {...}, bars[label]
]]
local T = require "harness"
local ffi = require "ffi"

local B = {}

local function tmpdir()
    local out, code = T.run("mktemp -d")
    assert(code == 0, out)
    return (out:gsub("%s+$", ""))
end

function B.unescape(s)
    return (s:gsub("&(#?%w+);", function(e)
        local map = { amp = "&", lt = "<", gt = ">", quot = '"', apos = "'", nbsp = "\194\160" }
        if map[e] then return map[e] end
        local d = e:match("^#(%d+)$")
        if d and tonumber(d) < 128 then return string.char(tonumber(d)) end
        return "&" .. e .. ";"
    end))
end

-- Every start tag <name ...> in a document, as { name =, attrs = {k = unescaped value} }.
function B.elements(doc, want)
    local out = {}
    for name, rest in doc:gmatch("<([%a][%w:%-]*)(%s[^>]*)>") do
        if not want or name == want then
            local attrs = {}
            for k, _, v in rest:gmatch("([%a_][%w:_%-%.]*)%s*=%s*([\"'])(.-)%2") do attrs[k] = B.unescape(v) end
            out[#out + 1] = { name = name, attrs = attrs }
        end
    end
    return out
end

function B.classes(el)
    local set = {}
    for c in (el.attrs.class or ""):gmatch("%S+") do set[c] = true end
    return set
end


function B.which(name)
    local out, code = T.run("command -v " .. name)
    if code ~= 0 then return nil end
    return (out:gsub("%s+$", ""))
end

-- Run Chromium headless with a fresh profile; never more than 60 s.
function B.chromium(args, url)
    local profile = tmpdir()
    local cmd = ("timeout -k 5 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run " ..
        "--disable-background-networking --disable-component-update --disable-sync --hide-scrollbars " ..
        "--force-device-scale-factor=1 --window-size=1280,2000 --user-data-dir=%s %s %s 2>/dev/null")
        :format(T.shell_quote(profile), args, T.shell_quote(url))
    local out, code = T.run(cmd)
    os.execute("rm -rf " .. T.shell_quote(profile))
    return out, code
end

-- ---- PNG decoding (8-bit RGB/RGBA, non-interlaced) through the system zlib ----------------

pcall(ffi.cdef, [[
int uncompress(uint8_t *dest, unsigned long *destLen, const uint8_t *source, unsigned long sourceLen);
]])

function B.load_zlib()
    for _, name in ipairs({ "z", "libz.so.1" }) do
        local ok, lib = pcall(ffi.load, name)
        if ok then return lib end
    end
    error("zlib not found")
end

function B.be32(s, i)
    local a, b, c, d = s:byte(i, i + 3)
    return ((a * 256 + b) * 256 + c) * 256 + d
end

-- Returns width, height, channels and a 0-based uint8 array of rows of pixels.
function B.decode_png(data)
    assert(data:sub(1, 8) == "\137PNG\r\n\26\n", "not a PNG")
    local pos, idat = 9, {}
    local w, h, depth, ctype, interlace
    while pos <= #data do
        local len = B.be32(data, pos)
        local kind = data:sub(pos + 4, pos + 7)
        local body = data:sub(pos + 8, pos + 7 + len)
        if kind == "IHDR" then
            w, h = B.be32(body, 1), B.be32(body, 5)
            depth, ctype, interlace = body:byte(9), body:byte(10), body:byte(13)
        elseif kind == "IDAT" then
            idat[#idat + 1] = body
        elseif kind == "IEND" then
            break
        end
        pos = pos + 12 + len
    end
    assert(depth == 8 and (ctype == 2 or ctype == 6) and interlace == 0,
        ("unsupported PNG: depth %s, colour type %s, interlace %s"):format(tostring(depth), tostring(ctype), tostring(interlace)))
    local ch = ctype == 6 and 4 or 3
    local stride = w * ch
    local raw_len = h * (stride + 1)
    local raw = ffi.new("uint8_t[?]", raw_len)
    local len = ffi.new("unsigned long[1]", raw_len)
    local src = table.concat(idat)
    local rc = B.load_zlib().uncompress(raw, len, src, #src)
    assert(rc == 0 and len[0] == raw_len, "zlib uncompress failed: " .. rc)
    local px = ffi.new("uint8_t[?]", h * stride)
    for y = 0, h - 1 do
        local filter = raw[y * (stride + 1)]
        local line, out, prev = y * (stride + 1) + 1, y * stride, (y - 1) * stride
        for x = 0, stride - 1 do
            local a = x >= ch and px[out + x - ch] or 0
            local b = y > 0 and px[prev + x] or 0
            local c = (x >= ch and y > 0) and px[prev + x - ch] or 0
            local v = raw[line + x]
            if filter == 1 then
                v = v + a
            elseif filter == 2 then
                v = v + b
            elseif filter == 3 then
                v = v + math.floor((a + b) / 2)
            elseif filter == 4 then
                local p = a + b - c
                local pa, pb, pc = math.abs(p - a), math.abs(p - b), math.abs(p - c)
                v = v + ((pa <= pb and pa <= pc) and a or (pb <= pc and b or c))
            elseif filter ~= 0 then
                error("bad PNG filter " .. filter)
            end
            px[out + x] = v % 256
        end
    end
    return w, h, ch, px
end

function B.hex_rgb(hex)
    return tonumber(hex:sub(2, 3), 16), tonumber(hex:sub(4, 5), 16), tonumber(hex:sub(6, 7), 16)
end


-- Render `page` (HTML text) with a probe script that records the box of every chart
-- (svg.lt-chart), series (.lt-series) and bar (.lt-bar); the page itself needs no script.
-- Writes probe.html and dom.html into dir. Returns
--   { dom = text, charts = { [id] = {x, y, w, h} }, series = { {name, points, box}, ... },
--     bars = { [label] = {x, y, w, h} } }
function B.layout(page, dir)
    local probe = page:gsub("</body>", [[<script>
for (const el of document.querySelectorAll("svg.lt-chart, .lt-series, .lt-bar")) {
    const r = el.getBoundingClientRect();
    el.setAttribute("data-probe", [r.left, r.top, r.width, r.height].map(Math.round).join(" "));
}
</script>
</body>]])
    local f = assert(io.open(dir .. "/probe.html", "wb"))
    f:write(probe)
    f:close()
    local dom, code = B.chromium("--dump-dom", "file://" .. dir .. "/probe.html")
    T.eq(code, 0, "chromium --dump-dom failed:\n" .. dom:sub(1, 2000))
    f = assert(io.open(dir .. "/dom.html", "wb"))
    f:write(dom)
    f:close()
    local function box(el)
        local x, y, w, h = (el.attrs["data-probe"] or ""):match("^(%S+) (%S+) (%S+) (%S+)$")
        return x and { tonumber(x), tonumber(y), tonumber(w), tonumber(h) } or nil
    end
    local out = { dom = dom, charts = {}, series = {}, bars = {} }
    for _, el in ipairs(B.elements(dom)) do
        local c = B.classes(el)
        if el.name == "svg" and c["lt-chart"] then
            out.charts[el.attrs["data-chart"]] = box(el)
        elseif c["lt-series"] then
            local _, n = (el.attrs.points or ""):gsub("[%d.-]+,[%d.-]+", "")
            out.series[#out.series + 1] = { name = el.attrs["data-series"], points = n, box = box(el) }
        elseif c["lt-bar"] then
            out.bars[el.attrs["data-label"]] = box(el)
        end
    end
    return out
end

-- Pixels within `tol` of colour `hex` ("#rrggbb") inside box {x, y, w, h} of a decoded image.
function B.count_colour(w, h, ch, px, bx, hex, tol)
    tol = tol or 8
    local r, g, b = B.hex_rgb(hex)
    local n = 0
    for y = math.max(0, bx[2]), math.min(h - 1, bx[2] + bx[4] - 1) do
        for x = math.max(0, bx[1]), math.min(w - 1, bx[1] + bx[3] - 1) do
            local o = (y * w + x) * ch
            if math.abs(px[o] - r) <= tol and math.abs(px[o + 1] - g) <= tol and math.abs(px[o + 2] - b) <= tol then
                n = n + 1
            end
        end
    end
    return n
end

B.tmpdir = tmpdir
return B
