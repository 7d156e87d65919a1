#!/usr/bin/env bash
# startup.sh - what `luatrain -e ''` costs to start: wall time and peak resident memory.
#
#   tools/bench/startup.sh [runs] [label=build_dir ...]      (default 200 runs per build)
#
# With no build folders named it measures the CUDA-enabled build in ${LT_BUILD_DIR:-build}
# and the CPU-only build in ${LT_CPU_BUILD_DIR:-<that>/cpu-only} (configured and built
# when missing, as tools/run.sh test does). ARCHITECTURE.md contract 12: a run that uses
# no GPU starts in milliseconds and holds a few MB, CUDA build or not.
#
# Each run is spawned by LuaJIT (posix_spawn) and reaped with wait4, so the wall time is
# the spawn-to-exit interval of the process alone (no shell or timer process in it) and
# the peak resident set is the kernel's ru_maxrss of that child. The builds are measured
# interleaved, run by run, so a change in the machine's load shifts all of them alike.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=200
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then runs="$1"; shift; fi

builds=()
if [[ $# -gt 0 ]]; then
    builds=("$@")
else
    cuda_dir="${LT_BUILD_DIR:-build}"
    cpu_dir="${LT_CPU_BUILD_DIR:-$cuda_dir/cpu-only}"
    if [[ ! -f "$cuda_dir/CMakeCache.txt" ]]; then
        echo "startup.sh: no build in $cuda_dir (tools/run.sh build makes one)" >&2
        exit 1
    fi
    if [[ ! -f "$cpu_dir/CMakeCache.txt" ]]; then
        mkdir -p "$cpu_dir"
        cmake -S . -B "$cpu_dir" -DCMAKE_BUILD_TYPE=Release -DLT_CUDA=OFF > "$cpu_dir/configure.log"
    fi
    cmake --build "$cuda_dir" -j "$(nproc)" > /dev/null
    cmake --build "$cpu_dir" -j "$(nproc)" > /dev/null
    label="cuda-enabled"
    grep -q '^CMAKE_CUDA_COMPILER:' "$cuda_dir/CMakeCache.txt" 2>/dev/null ||
        label="cuda-enabled? (no CUDA compiler in its cache)"
    builds=("$label=$cuda_dir" "cpu-only=$cpu_dir")
fi

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "flags:   $(grep -m1 '^flags' /proc/cpuinfo | sed 's/^flags[[:space:]]*: //')"
echo "kernel:  $(uname -r); $(luajit -v | cut -d' ' -f1-2); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
for b in "${builds[@]}"; do
    dir="${b#*=}"
    cache="$dir/CMakeCache.txt"
    if [[ -f "$cache" ]]; then
        conf="$(sed -n 's/^\(CMAKE_BUILD_TYPE\|LT_CUDA\|LT_CUDA_ARCHS\|LT_NATIVE\):[A-Z]*=/\1=/p' "$cache" | tr '\n' ' ')"
    else
        conf="(no CMakeCache.txt)"
    fi
    libs="$(ldd "$dir/luatrain" | awk '/=>/ {print $1}' | grep -E 'cuda|cublas' | tr '\n' ' ' || true)"
    echo "build:   ${b%%=*}: $dir: $conf; CUDA libraries the binary loads at start: ${libs:-none}"
done
echo "command: luatrain -e '', $runs runs per build, interleaved"
echo

luajit - "$runs" "${builds[@]}" <<'LUA'
local ffi = require "ffi"
ffi.cdef [[
typedef struct { long tv_sec, tv_nsec; } lt_bench_timespec;
typedef struct { long tv_sec, tv_usec; } lt_bench_timeval;
typedef struct { lt_bench_timeval ru_utime, ru_stime; long ru_maxrss, rest[13]; } lt_bench_rusage;
int clock_gettime(int clk, lt_bench_timespec *ts);
int posix_spawn(int *pid, const char *path, const void *file_actions, const void *attr,
                char *const argv[], char *const envp[]);
int wait4(int pid, int *status, int options, lt_bench_rusage *ru);
extern char **environ;
]]
local CLOCK_MONOTONIC = 1
local runs = tonumber(arg[1])
local builds = {}
for i = 2, #arg do
    local label, dir = arg[i]:match("^(.-)=(.*)$")
    local exe = dir .. "/luatrain"
    local argv = ffi.new("char *[4]")
    local keep = { ffi.new("char[?]", #exe + 1, exe), ffi.new("char[3]", "-e"), ffi.new("char[1]", "") }
    for j = 1, 3 do argv[j - 1] = keep[j] end
    builds[#builds + 1] = { label = label, exe = exe, argv = argv, keep = keep, ms = {}, kb = {} }
end

local t0, t1 = ffi.new("lt_bench_timespec"), ffi.new("lt_bench_timespec")
local pid, status, ru = ffi.new("int[1]"), ffi.new("int[1]"), ffi.new("lt_bench_rusage")
local function once(b)
    ffi.C.clock_gettime(CLOCK_MONOTONIC, t0)
    if ffi.C.posix_spawn(pid, b.exe, nil, nil, b.argv, ffi.C.environ) ~= 0 then
        error("cannot start " .. b.exe)
    end
    if ffi.C.wait4(pid[0], status, 0, ru) ~= pid[0] then error("wait4 failed") end
    ffi.C.clock_gettime(CLOCK_MONOTONIC, t1)
    if status[0] ~= 0 then error(b.exe .. " -e '' exited with wait status " .. status[0]) end
    return tonumber(t1.tv_sec - t0.tv_sec) * 1e3 + tonumber(t1.tv_nsec - t0.tv_nsec) * 1e-6,
        tonumber(ru.ru_maxrss)
end

for _, b in ipairs(builds) do once(b) end -- warm the page cache
for _ = 1, runs do
    for _, b in ipairs(builds) do
        local ms, kb = once(b)
        b.ms[#b.ms + 1], b.kb[#b.kb + 1] = ms, kb
    end
end

local function q(t, p)
    local s = {}
    for i, v in ipairs(t) do s[i] = v end
    table.sort(s)
    return s[math.max(1, math.min(#s, math.floor(p * (#s - 1) + 1.5)))]
end
print(("%-34s %10s %10s %10s %14s"):format("build", "median ms", "min ms", "p90 ms", "peak RSS MB"))
for _, b in ipairs(builds) do
    print(("%-34s %10.2f %10.2f %10.2f %14.1f"):format(b.label, q(b.ms, 0.5), q(b.ms, 0), q(b.ms, 0.9),
        q(b.kb, 1) / 1024))
end
LUA
