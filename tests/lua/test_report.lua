--[[
test_report.lua - the reporting layer: tick values, number formats, escaping, CSV and JSONL
that read back, thinning that keeps every extreme, charts for awkward data that are
well-formed XML, and a page that headless Chromium renders with every chart and series.

The browser part needs Debian's `chromium` on PATH; without it that part prints
"skipped: chromium not found" and the rest still runs. LT_REPORT_OUT=dir keeps the page,
the DOM and the screenshot there instead of in a temporary directory.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local report = require "luatrain.report"
local json = require "luatrain.json"

local function tmpdir()
    local out, code = T.run("mktemp -d")
    assert(code == 0, out)
    return (out:gsub("%s+$", ""))
end

-- ---- a small XML well-formedness checker ------------------------------------------------

local ENTITIES = { amp = true, lt = true, gt = true, quot = true, apos = true }

local function check_refs(text, where)
    local pos = 1
    while true do
        local a = text:find("&", pos, true)
        if not a then return end
        local ent = text:match("^&([#%w]+);", a)
        if not (ent and (ENTITIES[ent] or ent:match("^#%d+$") or ent:match("^#x%x+$"))) then
            error(("bad '&' in %s: %q"):format(where, text:sub(a, a + 12)), 0)
        end
        pos = a + 1
    end
end

--[[
Raises unless doc is one well-formed XML element (an optional XML declaration and HTML
doctype before it): tags balanced and properly nested, attributes quoted and unique, no raw
'<' or stray '&' in text or attribute values. Returns the root element's name and the
number of elements.
]]
local function xml_check(doc)
    local i, n, stack, root, count = 1, #doc, {}, nil, 0
    while i <= n do
        local lt = doc:find("<", i, true)
        local text = doc:sub(i, (lt or n + 1) - 1)
        if #stack == 0 and text:find("%S") then error("text outside the root element: " .. text:sub(1, 40), 0) end
        check_refs(text, "text")
        if not lt then break end
        if doc:sub(lt, lt + 3) == "<!--" then
            local e = doc:find("-->", lt + 4, true)
            if not e then error("unterminated comment", 0) end
            i = e + 3
        elseif doc:sub(lt, lt + 1) == "<?" then
            local e = doc:find("?>", lt + 2, true)
            if not e or root then error("misplaced processing instruction", 0) end
            i = e + 2
        elseif doc:sub(lt, lt + 8):upper() == "<!DOCTYPE" then
            if root then error("doctype after the root element", 0) end
            i = doc:find(">", lt, true) + 1
        elseif doc:sub(lt, lt + 1) == "</" then
            local name, e = doc:match("^</([%a_][%w:_%-%.]*)%s*>()", lt)
            if not name then error("bad end tag at byte " .. lt, 0) end
            local open = table.remove(stack)
            if open ~= name then error(("</%s> closes <%s>"):format(name, tostring(open)), 0) end
            i = e
        else
            local name, p = doc:match("^<([%a_][%w:_%-%.]*)()", lt)
            if not name then error("bad tag at byte " .. lt .. ": " .. doc:sub(lt, lt + 20), 0) end
            if #stack == 0 then
                if root then error("second root element <" .. name .. ">", 0) end
                root = name
            end
            count = count + 1
            local seen = {}
            while true do
                local ws, q = doc:match("^(%s*)()", p)
                p = q
                if doc:sub(p, p + 1) == "/>" then
                    p = p + 2
                    break
                elseif doc:sub(p, p) == ">" then
                    p = p + 1
                    stack[#stack + 1] = name
                    break
                end
                if #ws == 0 then error(("<%s>: attributes need space between them"):format(name), 0) end
                local an, _, val, after = doc:match("^([%a_][%w:_%-%.]*)%s*=%s*([\"'])(.-)%2()", p)
                if not an then error(("<%s>: bad attribute at %q"):format(name, doc:sub(p, p + 30)), 0) end
                if val:find("<", 1, true) then error(("<%s %s>: '<' in a value"):format(name, an), 0) end
                check_refs(val, "attribute " .. an)
                if seen[an] then error(("<%s>: attribute %s twice"):format(name, an), 0) end
                seen[an] = true
                p = after
            end
            i = p
        end
    end
    if #stack > 0 then error("unclosed <" .. stack[#stack] .. ">", 0) end
    if not root then error("no root element", 0) end
    return root, count
end

local B = require "browser"
local elements, classes = B.elements, B.classes
local which, chromium, decode_png = B.which, B.chromium, B.decode_png

local function count(s, plain)
    local c = 0
    local pos = 1
    while true do
        local a = s:find(plain, pos, true)
        if not a then return c end
        c, pos = c + 1, a + 1
    end
end

-- Deterministic noise: a loss curve falling from ~ln(V) with jitter.
local function loss_curve(steps, floor_loss, rate, seed)
    local pts, state = {}, seed
    for s = 1, steps do
        state = (state * 1103515245 + 12345) % 2147483648
        local noise = (state / 2147483648 - 0.5) * 0.25
        pts[s] = { s, floor_loss + (6.2 - floor_loss) * math.exp(-rate * s) + noise }
    end
    return pts
end

-- ---- ticks and formats --------------------------------------------------------------------

T.test("nice ticks: 0..1 gives 0, 0.2, ..., 1", function()
    local ticks, step = report.nice_ticks(0, 1, 5)
    T.eq(ticks, { 0, 0.2, 0.4, 0.6, 0.8, 1 })
    T.eq(step, 0.2)
    T.eq((report.nice_ticks(0, 1000, 5)), { 0, 200, 400, 600, 800, 1000 })
    T.eq((report.nice_ticks(-3, 7, 5)), { -4, -2, 0, 2, 4, 6, 8 })
end)

T.test("nice ticks are round multiples of 1, 2 or 5 x 10^k covering the range", function()
    local state = 7
    local function rnd()
        state = (state * 1103515245 + 12345) % 2147483648
        return state / 2147483648
    end
    for _ = 1, 2000 do
        local scale = 10 ^ (rnd() * 16 - 8)
        local a, b = (rnd() - 0.3) * scale, (rnd() - 0.3) * scale
        local n = 2 + math.floor(rnd() * 9)
        local ticks, step = report.nice_ticks(a, b, n)
        local lo, hi = math.min(a, b), math.max(a, b)
        local ctx = ("range %.17g..%.17g n=%d: %s"):format(a, b, n, table.concat(ticks, " "))
        T.ok(ticks[1] <= lo + 1e-12 * math.abs(lo) and ticks[#ticks] >= hi - 1e-12 * math.abs(hi), "cover " .. ctx)
        T.ok(#ticks >= 2 and #ticks <= 2 * n + 2, "count " .. ctx)
        local m = step / 10 ^ math.floor(math.log10(step) + 1e-9)
        T.ok(math.abs(m - 1) < 1e-9 or math.abs(m - 2) < 1e-9 or math.abs(m - 5) < 1e-9, "step " .. step .. " " .. ctx)
        for k, t in ipairs(ticks) do
            T.ok(math.abs(t / step - math.floor(t / step + 0.5)) < 1e-6, "multiple of the step " .. ctx)
            if k > 1 then T.ok(math.abs(t - ticks[k - 1] - step) < 1e-6 * step, "evenly spaced " .. ctx) end
            -- Round numbers print short: no 0.30000000000000004.
            T.ok(#string.format("%.15g", t) <= 12, "short text " .. ctx)
        end
    end
end)

T.test("nice ticks: equal bounds widen, bad bounds are an error", function()
    local t = report.nice_ticks(5, 5)
    T.ok(t[1] < 5 and t[#t] > 5, table.concat(t, " "))
    t = report.nice_ticks(0, 0)
    T.ok(t[1] < 0 and t[#t] > 0, table.concat(t, " "))
    T.raises(function() report.nice_ticks(0, 0 / 0) end, "finite")
    T.raises(function() report.nice_ticks(-math.huge, 1) end, "finite")
end)

T.test("format_number, format_bytes, format_seconds", function()
    local cases = { { 0, "0" }, { 1, "1" }, { 2.3456, "2.35" }, { 0.01234, "0.0123" }, { 3e-5, "3e-05" },
        { 1234, "1.23k" }, { 12345, "12.3k" }, { 1.5e6, "1.5M" }, { 1e9, "1G" }, { -2500, "-2.5k" },
        { 0 / 0, "NaN" }, { math.huge, "inf" }, { -math.huge, "-inf" }, { 999, "999" } }
    for _, c in ipairs(cases) do T.eq(report.format_number(c[1]), c[2], tostring(c[1])) end
    T.eq(report.format_number(2.3456, 5), "2.3456")
    local bytes = { { 0, "0 B" }, { 100, "100 B" }, { 1024, "1 KiB" }, { 1536, "1.5 KiB" },
        { 256 * 2 ^ 20, "256 MiB" }, { 1.5 * 2 ^ 30, "1.5 GiB" }, { 80 * 2 ^ 30, "80 GiB" } }
    for _, c in ipairs(bytes) do T.eq(report.format_bytes(c[1]), c[2], tostring(c[1])) end
    local secs = { { 0.1234, "123 ms" }, { 2.5, "2.5 s" }, { 4.2e-5, "42 µs" }, { 0.05, "50 ms" } }
    for _, c in ipairs(secs) do T.eq(report.format_seconds(c[1]), c[2], tostring(c[1])) end
    T.raises(function() report.format_bytes("12") end, "expected a number")
end)

T.test("axis tick labels use one unit: a memory axis reads MiB/GiB", function()
    local svg = report.bar_chart{ id = "mem", title = "Peak memory", y_format = "bytes",
        bars = { { label = "r=4", value = 900 * 2 ^ 20 }, { label = "r=64", value = 1.4 * 2 ^ 30 } } }
    local labels = {}
    for t in svg:match('<g class="lt%-ticks".-</g>'):gmatch(">([^<]+)</text>") do labels[#labels + 1] = t end
    T.ok(#labels >= 3, "tick labels: " .. table.concat(labels, ", "))
    for _, l in ipairs(labels) do
        T.ok(l == "0" or l:match("^[%d%.]+ GiB$"), "label " .. l .. " among " .. table.concat(labels, ", "))
    end
    T.ok(svg:find(">1.4 GiB<", 1, true), "the bar's value is printed")
    local line = report.line_chart{ id = "steps", series = { { name = "a", points = { { 0, 0 }, { 12000, 1 } } } } }
    T.ok(line:find(">12k<", 1, true) or line:find(">10k<", 1, true), "SI suffix on the x axis")
end)

-- ---- escaping -----------------------------------------------------------------------------

T.test("escape: markup characters, control characters and bad UTF-8", function()
    T.eq(report.escape([[a<b & "c" 'd'>]]), "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;")
    T.eq(report.escape("r=8\0\1\27x"), "r=8x")
    T.eq(report.escape("tab\tnl\n"), "tab\tnl\n")
    T.eq(report.escape("α β"), "α β")
    T.eq(report.escape("bad\255\192byte"), "bad\239\191\189\239\191\189byte")
    T.eq(report.escape("\237\160\128"), ("\239\191\189"):rep(3), "an encoded surrogate is not UTF-8")
    T.eq(report.escape(42), "42")
end)

T.test("names with markup are escaped in every chart and the page", function()
    local nasty = [[r=8 <b>&"quoted"' ]] .. "\1\255"
    local svg = report.line_chart{ id = "x", title = nasty, x_label = nasty, y_label = nasty,
        series = { { name = nasty, points = { { 1, 1 }, { 2, 2 } } }, { name = "plain", points = { { 1, 2 } } } } }
    xml_check(svg)
    T.ok(not svg:find("<b>", 1, true), "raw markup leaked")
    local poly = elements(svg, "polyline")[1]
    T.eq(poly.attrs["data-series"], "r=8 <b>&\"quoted\"' \239\191\189")
    xml_check(report.bar_chart{ title = nasty, bars = { { label = nasty, value = 1 } } })
    xml_check(report.scatter_chart{ title = nasty, points = { { 1, 2, label = nasty } }, value_labels = true })
    local page = report.html_page{ title = nasty, subtitle = nasty, notes = { nasty },
        charts = { { id = nasty, title = nasty, svg = svg, caption = nasty } },
        table = { columns = { nasty }, rows = { { nasty } } } }
    xml_check(page)
    T.ok(not page:find("<b>", 1, true), "raw markup leaked into the page")
end)

-- ---- files --------------------------------------------------------------------------------

-- An RFC 4180 reader: quoted fields may hold commas, doubled quotes and line breaks.
local function parse_csv(text)
    local rows, row, field = {}, {}, {}
    local i, n = 1, #text
    local quoted = false
    while i <= n do
        local c = text:sub(i, i)
        if quoted then
            if c == '"' then
                if text:sub(i + 1, i + 1) == '"' then
                    field[#field + 1] = '"'
                    i = i + 1
                else
                    quoted = false
                end
            else
                field[#field + 1] = c
            end
        elseif c == '"' then
            quoted = true
        elseif c == "," then
            row[#row + 1] = table.concat(field)
            field = {}
        elseif c == "\r" and text:sub(i + 1, i + 1) == "\n" then
            row[#row + 1] = table.concat(field)
            rows[#rows + 1] = row
            row, field = {}, {}
            i = i + 1
        else
            assert(c ~= "\n", "bare LF outside quotes at byte " .. i)
            field[#field + 1] = c
        end
        i = i + 1
    end
    assert(not quoted and #field == 0 and #row == 0, "CSV does not end with CRLF")
    return rows
end

T.test("write_csv: RFC 4180 quoting reads back exactly", function()
    local dir = tmpdir()
    local path = dir .. "/sub/dir/results.csv"
    local columns = { "name", { key = "peak_bytes", title = "peak memory", format = "bytes" }, "loss", "note" }
    local rows = {
        { "r=4", 3 * 2 ^ 30, 2.3456789012345678, "plain" },
        { 'say "hi", then\nleave', 123, 0.1, "a,b" },
        { "crlf\r\nin field", 0, 0 / 0, '""' },
        { name = "keyed", peak_bytes = 1e15, loss = -1 / 3, note = "" },
        { "missing", nil, math.huge, nil },
    }
    report.write_csv(path, columns, rows)
    local got = parse_csv(T.slurp(path))
    T.eq(got[1], { "name", "peak_bytes", "loss", "note" })
    T.eq(got[2][2], "3221225472")
    T.eq(tonumber(got[2][3]), 2.3456789012345678, "full precision")
    T.eq(got[3], { 'say "hi", then\nleave', "123", "0.1", "a,b" })
    T.eq(got[4], { "crlf\r\nin field", "0", "nan", '""' })
    T.eq(got[5][1], "keyed")
    T.eq(tonumber(got[5][3]), -1 / 3)
    T.eq(got[6], { "missing", "", "inf", "" })
    T.eq(#got, 6)
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("write_jsonl: one object per line; NaN and inf become null", function()
    local dir = tmpdir()
    local path = dir .. "/runs.jsonl"
    report.write_jsonl(path, { { rank = 4, loss = 2.5, losses = { 3, 2.5 } }, { rank = 8, loss = 0 / 0, name = "a\nb" },
        { rank = 16, peak = math.huge } })
    local recs = {}
    for line in io.lines(path) do recs[#recs + 1] = json.decode(line) end
    T.eq(#recs, 3)
    T.eq(recs[1].rank, 4)
    T.eq(recs[1].losses[2], 2.5)
    T.eq(recs[2].loss, json.null)
    T.eq(recs[2].name, "a\nb")
    T.eq(recs[3].peak, json.null)
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("format_table: aligned, numbers right, text left, formats applied", function()
    local text = report.format_table(
        { "rank", { key = "peak", title = "peak memory", format = "bytes" }, "loss", "name" },
        { { 4, 2 ^ 30, 2.345678, "r=4 run" }, { 16, 1.5 * 2 ^ 30, 2.2, "α" }, { 128, nil, 0 / 0, "x" } })
    local lines = {}
    for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
    T.eq(lines[1], "rank  peak memory     loss  name")
    T.eq(lines[2], "----  -----------  -------  -------")
    T.eq(lines[3], "   4        1 GiB  2.34568  r=4 run")
    T.eq(lines[4], "  16      1.5 GiB      2.2  α")
    T.eq(lines[5], " 128                   NaN  x")
    local f = io.tmpfile()
    report.print_table({ "a" }, { { 1 } }, f)
    f:seek("set")
    T.eq(f:read("*a"), "a\n-\n1\n", "print_table writes format_table's text")
    f:close()
    T.raises(function() report.format_table({ { key = "a", best = "lowest" } }, {}) end, "best must be")
    T.raises(function() report.format_table({ "a" }, { 5 }) end, "row 1 is a number")
end)

-- ---- thinning -----------------------------------------------------------------------------

T.test("thin keeps the first, last, min and max of every column", function()
    local pts, state, y = {}, 3, 0
    for i = 1, 100000 do
        state = (state * 1103515245 + 12345) % 2147483648
        y = y + (state / 2147483648 - 0.5)
        if i == 54321 then y = y + 500 end -- a spike the thinned line must still reach
        pts[i] = { i, y }
    end
    local cols = 500
    local thin = report.thin(pts, cols)
    T.ok(#thin <= 4 * cols and #thin >= cols, "thinned to " .. #thin)
    T.eq(thin[1], pts[1])
    T.eq(thin[#thin], pts[#pts])
    for k = 2, #thin do T.ok(thin[k][1] > thin[k - 1][1], "order kept") end
    -- Per bucket, the extremes of the original are in the thinned set.
    local span = pts[#pts][1] - pts[1][1]
    local function bucket(x) return math.min(cols - 1, math.floor((x - pts[1][1]) / span * cols)) end
    local omin, omax, tmin, tmax = {}, {}, {}, {}
    for _, p in ipairs(pts) do
        local b = bucket(p[1])
        omin[b] = math.min(omin[b] or math.huge, p[2])
        omax[b] = math.max(omax[b] or -math.huge, p[2])
    end
    for _, p in ipairs(thin) do
        local b = bucket(p[1])
        tmin[b] = math.min(tmin[b] or math.huge, p[2])
        tmax[b] = math.max(tmax[b] or -math.huge, p[2])
    end
    for b = 0, cols - 1 do
        T.eq(tmin[b], omin[b], "min of column " .. b)
        T.eq(tmax[b], omax[b], "max of column " .. b)
    end
    local short = { { 1, 1 }, { 2, 5 }, { 3, 2 } }
    T.ok(report.thin(short, 500) == short, "short inputs are left alone")
end)

T.test("a 20000-point series is drawn thinned, its extremes kept", function()
    local pts = loss_curve(20000, 1.2, 0.001, 11)
    pts[777][2] = 40 -- a loss spike
    local svg = report.line_chart{ id = "long", series = { { name = "long", points = pts } }, width = 800 }
    xml_check(svg)
    local poly = elements(svg, "polyline")[1]
    local n, top = 0, math.huge
    for _, y in poly.attrs.points:gmatch("([%d%.%-]+),([%d%.%-]+)") do
        n = n + 1
        top = math.min(top, tonumber(y))
    end
    T.ok(n > 100 and n <= 4 * 800, "points drawn: " .. n)
    local ys = {}
    for t in svg:match('<g class="lt%-ticks".-</g>'):gmatch('dominant%-baseline="middle">([^<]+)<') do ys[#ys + 1] = t end
    T.eq(ys[#ys], "40", "the y axis reaches the spike")
    T.ok(top < 60, "the spike is drawn near the top of the plot, y=" .. top)
end)

-- ---- charts for awkward data --------------------------------------------------------------

local function svg_ok(svg, kind, id)
    local root = xml_check(svg)
    T.eq(root, "svg")
    local s = elements(svg, "svg")[1].attrs
    T.eq(s.xmlns, "http://www.w3.org/2000/svg")
    T.ok(s.viewBox and s.width and s.height, "viewBox, width and height")
    T.eq(s.class, "lt-chart")
    T.eq(s["data-kind"], kind)
    if id then T.eq(s["data-chart"], id) end
    T.ok(not svg:find("href", 1, true) and not svg:find("url%(http"), "no external resources")
    for _, el in ipairs(elements(svg)) do
        for _, k in ipairs({ "x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "width", "height", "points", "transform" }) do
            local v = (el.attrs[k] or ""):lower()
            T.ok(not v:find("nan", 1, true) and not v:find("inf", 1, true), ("<%s %s=%q>"):format(el.name, k, v))
        end
    end
    return svg
end

local function series_polylines(svg)
    local out = {}
    for _, el in ipairs(elements(svg, "polyline")) do
        if classes(el)["lt-series"] then out[el.attrs["data-series"]] = el.attrs.points end
    end
    return out
end

T.test("line chart edge cases are well-formed and never raise", function()
    local cases = {
        { name = "no series", series = {} },
        { name = "empty series", series = { { name = "a", points = {} } } },
        { name = "single point", series = { { name = "a", points = { { 3, 2.5 } } } } },
        { name = "flat", series = { { name = "a", points = { { 1, 2 }, { 2, 2 }, { 3, 2 } } } } },
        { name = "all zero", series = { { name = "a", points = { { 0, 0 }, { 0, 0 } } } } },
        { name = "non-finite", series = { { name = "a", points = { { 1, 0 / 0 }, { 2, 1 }, { 3, math.huge },
            { 0 / 0, 2 }, { 5, 3 } } } } },
        { name = "only NaN", series = { { name = "a", points = { { 1, 0 / 0 } } } } },
        { name = "log with zeros", log_y = true, series = { { name = "a", points = { { 1, 0 }, { 2, 1e-3 }, { 3, 10 } } } } },
        { name = "log flat", log_y = true, series = { { name = "a", points = { { 1, 5 }, { 2, 5 } } } } },
        { name = "huge", series = { { name = "a", points = { { 0, 1e300 }, { 1, -1e300 } } } } },
        { name = "tiny", series = { { name = "a", points = { { 0, 1e-12 }, { 1, 3e-12 } } } } },
        { name = "negative x", series = { { name = "a", points = { { -5, 1 }, { -1, 2 } } } } },
        { name = "unsorted x", series = { { name = "a", points = { { 3, 1 }, { 1, 2 }, { 2, 0 } } } } },
        { name = "clipped", y_min = 0, y_max = 1, series = { { name = "a", points = { { 0, -5 }, { 1, 5 } } } } },
        { name = "twelve series", series = (function()
            local s = {}
            for i = 1, 12 do s[i] = { name = "series number " .. i, points = { { 0, i }, { 1, i + 1 } } } end
            return s
        end)() },
        { name = "small", width = 160, height = 120, series = { { name = "a", points = { { 0, 1 }, { 1, 2 } } } } },
    }
    for _, c in ipairs(cases) do
        c.id, c.title, c.x_label, c.y_label = "edge", c.name, "step", "loss"
        local ok, svg = pcall(report.line_chart, c)
        T.ok(ok, c.name .. ": " .. tostring(svg))
        local good, err = pcall(svg_ok, svg, "line", "edge")
        T.ok(good, c.name .. ": " .. tostring(err))
    end
    local function drawn(c) return series_polylines(report.line_chart(c)) end
    T.ok(report.line_chart{ series = {} }:find("no data", 1, true), "empty chart says so")
    T.ok(report.line_chart{ series = { { name = "a", points = { { 1, 0 / 0 } } } } }:find("no data", 1, true))
    local one = report.line_chart{ series = { { name = "a", points = { { 3, 2.5 } } } } }
    T.ok(one:find("<circle", 1, true), "a single point gets a marker")
    local nf = report.line_chart{ series = { { name = "a", points = { { 1, 0 / 0 }, { 2, 1 }, { 3, math.huge }, { 5, 3 } } } } }
    T.ok(nf:find("2 points not drawn", 1, true), "dropped points are counted")
    local _, pairs_ = drawn({ series = { { name = "a", points = { { 1, 0 / 0 }, { 2, 1 }, { 5, 3 } } } } }).a:gsub(",", "")
    T.eq(pairs_, 2, "the finite points are drawn")
    local multi = report.line_chart{ series = { { name = "a", points = { { 0, 1 } } }, { name = "b", points = {} },
        { name = "c", points = { { 0, 1 }, { 1, 2 } } } } }
    T.ok(multi:find("b (no data)", 1, true), "an empty series is marked in the legend")
    local colors = {}
    for _, el in ipairs(elements(multi, "polyline")) do colors[#colors + 1] = el.attrs.stroke end
    T.ok(colors[1] ~= colors[2], "series colours differ")
end)

T.test("bad chart input is an error that names the problem", function()
    T.raises(function() report.line_chart{ series = { { name = "a", points = { { 1, "2" } } } } } end, "point 1 needs numbers")
    T.raises(function() report.line_chart{ series = { { name = "a" } } } end, "points table")
    T.raises(function() report.line_chart{ series = "x" } end, "opts.series")
    T.raises(function() report.line_chart{ series = {}, width = 10 } end, "at least 160")
    T.raises(function() report.bar_chart{ bars = { { label = "a" } } } end, "bar 1 needs a number")
    T.raises(function() report.line_chart{ series = { { name = "a", points = { { 1, 2 } } } }, y_format = "furlongs" } end,
        "unknown format")
end)

T.test("bar and scatter charts: edge cases and identifying attributes", function()
    svg_ok(report.bar_chart{ id = "b", bars = {} }, "bar", "b")
    local neg = svg_ok(report.bar_chart{ id = "b", title = "delta", bars = { { label = "a", value = -2 },
        { label = "b", value = 3 }, { label = "c", value = 0 / 0 }, { label = "d", value = 0 } } }, "bar")
    local bars = {}
    for _, el in ipairs(elements(neg, "rect")) do
        if classes(el)["lt-bar"] then bars[el.attrs["data-label"]] = el.attrs end
    end
    T.ok(bars.a and bars.b and bars.d and not bars.c, "bars drawn for finite values only")
    T.ok(tonumber(bars.a.y) >= tonumber(bars.b.y) + tonumber(bars.b.height) - 1, "a negative bar hangs below zero")
    T.ok(neg:find(">n/a<", 1, true) and neg:find("1 value is NaN or inf", 1, true))
    local eq = svg_ok(report.bar_chart{ bars = { { label = "a", value = 0 }, { label = "b", value = 0 } } }, "bar")
    T.ok(eq:find('class="lt-bar"', 1, true))
    local many = {}
    for i = 1, 40 do many[i] = { label = "a very long label " .. i, value = i } end
    svg_ok(report.bar_chart{ bars = many }, "bar")

    local sc = svg_ok(report.scatter_chart{ id = "step-time", log_x = true, y_format = "seconds", value_labels = true,
        series = { { name = "step time", points = { { 4, 0.1 }, { 8, 0.11 }, { 16, 0.13 }, { 32, 0.2 }, { 64, 0.31 },
            { 0, 1 }, { 128, 0 / 0 } } } } }, "scatter", "step-time")
    T.ok(series_polylines(sc)["step time"], "connected scatter has a series polyline")
    local xt = {}
    for t in sc:match('<g class="lt%-ticks".-</g>'):gmatch('text%-anchor="middle">([^<]+)<') do xt[#xt + 1] = t end
    T.eq(xt, { "4", "8", "16", "32", "64" }, "log x ticks at the ranks")
    T.ok(sc:find(">310 ms<", 1, true), "value labels in the y format")
    T.ok(sc:find("2 points not drawn", 1, true))
    svg_ok(report.scatter_chart{ points = {} }, "scatter")
    svg_ok(report.scatter_chart{ points = { { 8, 1 } }, connect = false }, "scatter")
    svg_ok(report.scatter_chart{ log_x = true, points = { { 8, 1 }, { 8, 2 } } }, "scatter")
end)

T.test("clip path ids are unique across charts on one page", function()
    local a = report.line_chart{ id = "same", series = { { name = "a", points = { { 0, 1 }, { 1, 2 } } } } }
    local b = report.line_chart{ id = "same", series = { { name = "a", points = { { 0, 1 }, { 1, 2 } } } } }
    T.ok(a:match('clipPath id="([^"]+)"') ~= b:match('clipPath id="([^"]+)"'))
end)

-- ---- the page in a browser ----------------------------------------------------------------

local RANKS = { 4, 16, 64 }
local SERIES_NAMES = { "r=4", "r=16", 'r=64 <"wide" & deep>' }

local function sweep_page()
    local series = {}
    for i in ipairs(RANKS) do
        local pts = loss_curve(3000, 1.6 - 0.12 * i, 0.002 + 0.0005 * i, 100 + i)
        pts[1500 + i] = { 1500 + i, 0 / 0 } -- a NaN the chart must step over
        series[i] = { name = SERIES_NAMES[i], points = pts }
    end
    local step_t = { 0.182, 0.197, 0.262 }
    local peak = { 5.1 * 2 ^ 30, 5.4 * 2 ^ 30, 6.6 * 2 ^ 30 }
    local final = { 1.52, 1.39, 1.31 }
    local st, pk, fl, rows = {}, {}, {}, {}
    for i, r in ipairs(RANKS) do
        st[i] = { r, step_t[i], label = "r=" .. r }
        pk[i] = { label = "r=" .. r, value = peak[i], color = report.color(i) }
        fl[i] = { r, final[i] }
        rows[i] = { r, step_t[i], peak[i], final[i], 4096 / step_t[i] }
    end
    local charts = {
        { id = "loss-curves", title = "Training loss", wide = true, svg = report.line_chart{ id = "loss-curves",
            title = "Training loss by LoRA rank", x_label = "step", y_label = "loss", series = series, smooth = 0.95 } },
        { id = "step-time", title = "Step time", svg = report.scatter_chart{ id = "step-time",
            title = "Step time vs rank", x_label = "LoRA rank", y_label = "step time", y_format = "seconds",
            log_x = true, y_zero = true, value_labels = true, series = { { name = "step time", points = st } } } },
        { id = "peak-memory", title = "Peak memory", svg = report.bar_chart{ id = "peak-memory",
            title = "Peak memory vs rank", x_label = "LoRA rank", y_label = "peak memory", y_format = "bytes", bars = pk } },
        { id = "final-loss", title = "Final loss", svg = report.scatter_chart{ id = "final-loss",
            title = "Final loss vs rank", x_label = "LoRA rank", y_label = "loss (last 100 steps)", log_x = true,
            value_labels = true, series = { { name = "final loss", points = fl } } } },
    }
    return report.html_page{ title = "LoRA rank sweep", subtitle = "tiny Llama, 3000 steps per rank, synthetic data",
        charts = charts,
        table = { columns = { "rank", { key = "step_s", title = "step time", format = "seconds", best = "min" },
            { key = "peak", title = "peak memory", format = "bytes", best = "min" },
            { key = "loss", title = "final loss", format = "%.4f", best = "min" },
            { key = "tps", title = "tokens/s", format = "number", best = "max" } }, rows = rows },
        notes = { "Step time is the median over steps 10-3000.", "Peak memory is the caching allocator's peak." } }
end

T.test("a run's report.html: its log's steps over time, a resumed step's later record, the end and the settings", function()
    local dir = tmpdir()
    local recs = {}
    for step = 1, 4 do
        recs[#recs + 1] = { step = step, loss = 5 - step, lr = 1e-3 * step, grad_norm = 2, current_bytes = 2 ^ 20,
            peak_bytes = 3 * 2 ^ 20, tokens_per_s = 1000, eval_loss = step == 2 and 4.5 or nil }
    end
    -- resumed from step 2: steps 3 and 4 logged again, the later ones winning
    recs[#recs + 1] = { step = 3, loss = 1.25, lr = 3e-3, grad_norm = 2, current_bytes = 2 ^ 20,
        peak_bytes = 5 * 2 ^ 20, tokens_per_s = 900 }
    recs[#recs + 1] = { step = 4, loss = 0.75, lr = 4e-3, grad_norm = 2, current_bytes = 2 ^ 20,
        peak_bytes = 5 * 2 ^ 20, tokens_per_s = 900, loss_scale = 1024 }
    recs[#recs + 1] = { event = "end", steps = 4, eval_loss = 0.5, eval_loss_before = 6, accuracy = 0.75,
        accuracy_before = 0, train_time = 2.5 }
    report.write_jsonl(dir .. "/log.jsonl", recs)
    report.write_text(dir .. "/run_config.json", json.encode({ recipe = "recipes/qlora_llama.lua", luatrain = "9.9",
        started = "2026-12-07T00:00:00Z", settings = { model = "my/model", r = 8 },
        machine = { cpu = "Test CPU", threads = 2 } }))
    local path = report.write_run_report(dir)
    T.eq(path, dir .. "/report.html")
    local f = assert(io.open(path, "rb"))
    local html = f:read("*a")
    f:close()
    for _, id in ipairs({ "loss", "lr", "grad-norm", "memory", "throughput", "loss-scale" }) do
        T.ok(html:find(('data-chart="%s"'):format(id), 1, true), "chart " .. id)
    end
    T.ok(html:find('data-series="held-out"', 1, true), "the held-out loss is a series of the loss chart")
    T.ok(html:find("0.7500", 1, true), "final training loss is the later record of step 4")
    T.ok(html:find("5.00 MiB", 1, true), "peak memory over the run")
    T.ok(html:find("75.0%", 1, true) and html:find("0.5000", 1, true), "the end record's numbers")
    T.ok(html:find("Test CPU", 1, true) and html:find("r=8", 1, true) and html:find("luatrain 9.9", 1, true)
        and html:find("2026-12-07T00:00:00Z", 1, true),
        "machine, settings and version")
    -- the loss line: four points (steps 1-4), not six
    local loss_svg = html:match('data%-chart="loss".-</svg>')
    local pts = loss_svg:match('data%-series="training"[^>]-points="([^"]*)"')
        or loss_svg:match('points="([^"]*)"[^>]-data%-series="training"')
    T.ok(pts, "the training series is drawn")
    local n = 0
    for _ in pts:gmatch("[%d.]+,[%d.]+") do n = n + 1 end
    T.eq(n, 4, "one point per step")
    T.raises(function() report.write_run_report(dir .. "/nothing") end, "cannot read", true)
    os.execute("rm -rf " .. dir)
end)

T.test("a log axis says so in its label", function()
    local s = report.scatter_chart{ title = "t", x_label = "LoRA rank", y_label = "loss", log_x = true,
        points = { { 8, 1 }, { 128, 2 }, { 256, 3 } } }
    T.ok(s:find("LoRA rank (log scale)", 1, true), "the log x axis is marked")
    T.ok(s:find(">loss</text>", 1, true), "the linear y axis is not")
end)

T.test("the page is well-formed and self-contained", function()
    local page = sweep_page()
    T.eq(xml_check(page), "html")
    T.ok(page:sub(1, 15) == "<!DOCTYPE html>", "HTML5 doctype")
    T.ok(not page:find("<script", 1, true), "no scripts")
    local stripped = page:gsub('xmlns="http://www.w3.org/2000/svg"', "")
    T.ok(not stripped:find("https?://") and not page:find("<link", 1, true) and not page:find("%ssrc=")
        and not page:find("url%(%s*[^#%s]") and not page:find("@import", 1, true), "no external resources")
    T.eq(count(page, '<svg xmlns="http://www.w3.org/2000/svg" class="lt-chart"'), 4)
    T.eq(count(page, "<tr>"), 4, "header and three rows")
    T.ok(page:find('<td class="lt-num lt-best" data-value="1.31">1.3100</td>', 1, true), "best final loss marked")
end)

local function browser_test()
    local keep = os.getenv("LT_REPORT_OUT")
    local dir = keep or tmpdir()
    local page = sweep_page()
    report.write_text(dir .. "/report.html", page)
    report.write_text(dir .. "/loss-curves.svg", page:match('<svg xmlns.-</svg>'))

    local t0 = os.time()
    -- where the browser laid out each chart, series and bar (a probe script in a copy)
    local lay = B.layout(page, dir)
    local dom = lay.dom
    local boxes = {}
    for _, id in ipairs({ "loss-curves", "step-time", "peak-memory", "final-loss" }) do
        local bx = lay.charts[id]
        T.ok(bx, "chart " .. id .. " is in the rendered DOM and was measured")
        local x, _, w, h = bx[1], bx[2], bx[3], bx[4]
        T.ok(w >= 400 and h >= 200, ("chart %s laid out at %dx%d"):format(id, w, h))
        T.ok(x >= 0 and x + w <= 1280, "chart " .. id .. " fits the window's width")
        boxes[id] = bx
    end
    local seen = {}
    for _, sr in ipairs(lay.series) do
        T.ok(sr.points >= 2, "series " .. tostring(sr.name) .. " has points")
        T.ok(sr.box[3] > 50, ("series %s spans %s px"):format(tostring(sr.name), tostring(sr.box[3])))
        seen[sr.name] = true
    end
    for label, bx in pairs(lay.bars) do
        T.ok(bx[4] > 20, "bar " .. label .. " has height " .. bx[4])
        seen["bar " .. label] = true
    end
    for _, name in ipairs(SERIES_NAMES) do T.ok(seen[name], "loss series " .. name .. " rendered") end
    T.ok(seen["step time"] and seen["final loss"], "metric series rendered")
    for _, r in ipairs(RANKS) do T.ok(seen["bar r=" .. r], "bar r=" .. r .. " rendered") end
    T.ok(not dom:find("parsererror", 1, true), "no parse error")

    -- The standalone SVG file parses as XML in the browser (an error shows as parsererror).
    local sdom, scode = chromium("--dump-dom", "file://" .. dir .. "/loss-curves.svg")
    T.eq(scode, 0, "chromium on the SVG file failed")
    T.ok(sdom:find("lt-series", 1, true) and not sdom:find("parsererror", 1, true),
        "standalone SVG renders without XML errors:\n" .. sdom:sub(1, 500))

    local shot = dir .. "/report.png"
    os.remove(shot)
    local out, scode2 = chromium("--screenshot=" .. T.shell_quote(shot), "file://" .. dir .. "/report.html")
    T.eq(scode2, 0, "chromium --screenshot failed:\n" .. out)
    local w, h, ch, px = decode_png(T.slurp(shot))
    T.eq({ w, h }, { 1280, 2000 }, "screenshot size")

    -- Most common colour = the page background; a blank render would be nearly all of it.
    local hist, best_n = {}, 0
    for i = 0, w * h - 1 do
        local o = i * ch
        local k = (px[o] * 256 + px[o + 1]) * 256 + px[o + 2]
        local c = (hist[k] or 0) + 1
        hist[k] = c
        if c > best_n then best_n = c end
    end
    local other = 1 - best_n / (w * h)
    T.ok(other > 0.05, ("only %.1f%% of pixels differ from the background"):format(other * 100))

    -- Every loss series' colour appears inside the loss chart's box on screen.
    for i, name in ipairs(SERIES_NAMES) do
        local n = B.count_colour(w, h, ch, px, boxes["loss-curves"], report.color(i))
        -- The legend swatch alone gives under 100; the drawn line gives well over a thousand.
        T.ok(n >= 400, ("series %s: %d pixels of %s in the loss chart"):format(name, n, report.color(i)))
    end
    local elapsed = os.time() - t0
    if keep then
        print(("browser test: %d s; page, DOM and screenshot in %s"):format(elapsed, dir))
    else
        os.execute("rm -rf " .. T.shell_quote(dir))
    end
end

if which("chromium") then
    T.test("Chromium renders the page: every chart, series and bar, in colour", browser_test)
else
    print("skipped: chromium not found (the browser test needs Debian's chromium package)")
end

T.done()
