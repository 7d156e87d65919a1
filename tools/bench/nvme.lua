--[[
nvme.lua - the offloaded optimizer state's file I/O (src/io/aio.c: worker threads, 4 MiB
aligned transfers, O_DIRECT where the file system takes it) against dd with O_DIRECT on the
same disk, writing then reading `mib` MiB.

    luatrain tools/bench/nvme.lua [dir=/tmp] [mib=1024] [threads=2] [depth=8]

Prints both rates in MB/s and their ratios, and the machine.
]]
local lt = require "luatrain"
local ffi = require "ffi"
local C = require("luatrain.core").C
local check = require("luatrain.core").check

local cfg = lt.config {
    dir = { "/tmp", "a folder on the disk to measure" },
    mib = { 1024, "MiB to write and read", type = "int", min = 4 },
    threads = { 2, "aio worker threads", type = "int", min = 1, max = 16 },
    depth = { 8, "transfers in flight", type = "int", min = 1 },
}

local CHUNK = 4 * 2 ^ 20
local n = math.floor(cfg.mib * 2 ^ 20 / CHUNK)
local path = cfg.dir .. "/lt_aio_bench.bin"
local out = ffi.new("lt_aio *[1]")
check(C.lt_aio_open(out, path, cfg.threads))
local a = out[0]
local bufs = {}
for i = 1, cfg.depth do bufs[i] = lt.randn(CHUNK / 4) end
local ticket = ffi.new("int64_t[1]")

local function pass(write)
    local pending = {}
    local t0 = lt.fs.now()
    for i = 0, n - 1 do
        local slot = i % cfg.depth + 1
        if pending[slot] then check(C.lt_aio_wait(a, pending[slot], 600)) end
        check((write and C.lt_aio_write or C.lt_aio_read)(a, i * CHUNK, bufs[slot], ticket))
        pending[slot] = tonumber(ticket[0])
    end
    for _, t in pairs(pending) do check(C.lt_aio_wait(a, t, 600)) end
    return n * CHUNK / (lt.fs.now() - t0) / 1e6
end

local w = pass(true)
local r = pass(false)
local direct = C.lt_aio_direct(a) ~= 0
check(C.lt_aio_close(a))

local function dd(args)
    local p = io.popen(("dd %s bs=4M count=%d 2>&1"):format(args, n))
    local text = p:read("*a")
    p:close()
    local v, unit = text:match("([%d.,]+) ([KMG]?B)/s")
    if not v then return nil, text end
    v = tonumber((v:gsub(",", ".")))
    return v * ({ B = 1e-6, KB = 1e-3, MB = 1, GB = 1e3 })[unit]
end
local ddw = dd(("if=/dev/zero of=%s/lt_dd_bench.bin oflag=direct"):format(cfg.dir))
local ddr = dd(("if=%s/lt_dd_bench.bin of=/dev/null iflag=direct"):format(cfg.dir))
os.remove(cfg.dir .. "/lt_dd_bench.bin")

package.path = "tools/bench/?.lua;" .. package.path
local machine = require("benchutil").cpu_description()
print(("machine: %s; disk of %s (%s)"):format(machine, cfg.dir,
    io.popen("df --output=source " .. cfg.dir .. " | tail -1"):read("*l") or "?"))
print(("luatrain aio: %d MiB, %d threads, %d in flight, O_DIRECT %s"):format(cfg.mib, cfg.threads, cfg.depth,
    tostring(direct)))
print(("  write %8.0f MB/s   dd oflag=direct %8.0f MB/s   ratio %.2f"):format(w, ddw or 0, ddw and w / ddw or 0))
print(("  read  %8.0f MB/s   dd iflag=direct %8.0f MB/s   ratio %.2f"):format(r, ddr or 0, ddr and r / ddr or 0))
