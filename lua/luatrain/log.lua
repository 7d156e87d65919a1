--[[
log.lua - run logs: JSONL records on disk and one compact line per step on the console.

    local log = lt.log.open("runs/x/log.jsonl")   -- nil path: console only
    log:write({ step = 1, loss = 2.3 })           -- one JSON object per line, flushed
    log:close()
]]
local json = require "luatrain.json"

local M = {}
local Log = {}
Log.__index = Log

-- append: keep what the file holds (a resumed run continues its log).
function M.open(path, append)
    local self = setmetatable({ path = path }, Log)
    if path then
        local dir = path:match("^(.*)/[^/]*$")
        if dir and dir ~= "" then require("luatrain.fs").make_dirs(dir) end
        local f, err = io.open(path, append and "a" or "w")
        if not f then error(("cannot open log %s: %s"):format(path, err), 0) end
        self.file = f
    end
    return self
end

-- A failed write, flush or close of the log (a full disk, a lost mount) is an error naming
-- the file: a run must not go on, or end with status 0, while its log is lost.
local function failed(self, what, err)
    local f = self.file
    self.file = nil
    if f then pcall(f.close, f) end
    error(("log %s: %s failed: %s"):format(self.path, what, tostring(err)), 0)
end

function Log:write(record)
    local f = self.file
    if f then
        local ok, err = f:write(json.encode(record), "\n")
        if not ok then failed(self, "write", err) end
        ok, err = f:flush()
        if not ok then failed(self, "write", err) end
    end
end

function Log:close()
    local f = self.file
    if f then
        self.file = nil
        local ok, err = f:flush()
        if not ok then
            pcall(f.close, f)
            error(("log %s: close failed: %s"):format(self.path, tostring(err)), 0)
        end
        ok, err = f:close()
        if not ok then error(("log %s: close failed: %s"):format(self.path, tostring(err)), 0) end
    end
end

-- "step   10 | loss 2.3456 | lr 3.00e-04 | ..." from ordered {label, value, format} triples.
function M.line(fields)
    local parts = {}
    for i, f in ipairs(fields) do
        parts[i] = f[1] .. " " .. string.format(f[3] or "%s", f[2])
    end
    return table.concat(parts, " | ")
end

-- ---- progress bars -----------------------------------------------------------------------

local Progress = {}
Progress.__index = Progress

local function isatty()
    local ok, host = pcall(require, "luatrain.host")
    return ok and host.isatty and host.isatty(2) or false
end

local function clock() return require("luatrain.fs").now() end

-- The terminal's width in columns (stderr's; COLUMNS, else 80 when it cannot be asked).
local ffi = require "ffi"
pcall(ffi.cdef, [[
typedef struct lt_winsize { unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel; } lt_winsize;
int ioctl(int fd, unsigned long request, ...);
]])
local winsize = ffi.new("lt_winsize")
local function columns()
    local ok, r = pcall(ffi.C.ioctl, 2, 0x5413, winsize) -- TIOCGWINSZ
    if ok and r == 0 and winsize.ws_col > 0 then return winsize.ws_col end
    return tonumber(os.getenv("COLUMNS") or "") or 80
end
M.columns = columns

local function hms(s)
    s = math.max(0, math.floor(s + 0.5))
    if s >= 3600 then return ("%d:%02d:%02d"):format(s / 3600, s % 3600 / 60, s % 60) end
    return ("%d:%02d"):format(s / 60, s % 60)
end

-- A progress bar on stderr: redrawn in place on a terminal, fitted to its width; a plain
-- line per 10% otherwise.
-- bar:update(fraction, "extra text"); bar:finish("summary").
function M.progress(label)
    return setmetatable({ label = label, start = clock(), last = -1, tty = isatty(), last_draw = 0 }, Progress)
end

function Progress:update(fraction, extra)
    fraction = math.max(0, math.min(1, fraction))
    local now = clock()
    local elapsed = now - self.start
    local eta = fraction > 0 and elapsed * (1 - fraction) / fraction or 0
    -- on a terminal the line fits its width: the bar shrinks (down to 10), then the text is cut
    local width = self.tty and columns() - 1 or math.huge
    local tail = ("%5.1f%% %s ETA %s"):format(100 * fraction, extra or "", hms(eta))
    local bar = 30
    if self.tty then bar = math.max(10, math.min(30, width - #self.label - #tail - 4)) end
    local filled = math.floor(fraction * bar)
    local text = ("%s [%s%s] %s"):format(self.label, string.rep("#", filled), string.rep(".", bar - filled), tail)
    if self.tty then
        if #text > width then text = text:sub(1, width) end
        if now - self.last_draw >= 0.1 or fraction >= 1 then
            io.stderr:write("\r", text, "\27[K")
            self.last_draw = now
        end
    elseif math.floor(fraction * 10) > self.last then
        self.last = math.floor(fraction * 10)
        io.stderr:write(text, "\n")
    end
end

function Progress:finish(summary)
    if self.tty then io.stderr:write("\r\27[K") end
    if summary then io.stderr:write(("%s: %s (%s)\n"):format(self.label, summary, hms(clock() - self.start))) end
end

return M
