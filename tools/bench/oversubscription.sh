#!/usr/bin/env bash
# oversubscription.sh - the QLoRA recipe at threads=0, its OpenMP threads waiting actively
# and passively, on CPUs it has to itself and beside a busy process on the same CPUs.
#
#   tools/bench/oversubscription.sh [steps] [repeats]    (default 30 steps, 2 repeats)
#   tools/bench/oversubscription.sh > tools/bench/results/oversubscription.txt
#
# "active" is libgomp's default, which luatrain ran with before the host chose passive
# waiting: GOMP_SPINCOUNT=300000 spins 300000 rounds at a barrier before sleeping (100 when
# it has more threads than CPUs), exactly what an unset OMP_WAIT_POLICY gives, and the host
# leaves a policy the user set alone. "passive" is what the host sets when the user set
# neither (src/main.c). The busy process is `yes > /dev/null`. threads=1 is the reference:
# one thread cannot wait on another. Each line: wall seconds, CPU seconds (user + sys) of
# the run, the recipe's own training time, and the 1-minute load average when it started
# (other users of the machine show there). Configurations are interleaved, repeat by repeat.
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-30}"
reps="${2:-2}"
build="${LT_BUILD_DIR:-build}"
[ -x "$build/luatrain" ] || tools/run.sh build > /dev/null
out="$(mktemp -d)"
busy=""
cleanup() {
    [ -n "$busy" ] && kill "$busy" 2> /dev/null
    rm -rf "$out"
}
trap cleanup EXIT

cpu_flags="$(sed -n 's/^flags[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "# tools/bench/oversubscription.sh $steps $reps: recipes/qlora_llama.lua steps=$steps"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc --all) CPUs online, $(nproc) in this process's affinity mask"
echo "flags:   $cpu_flags"
echo "build:   $("$build/luatrain" -e 'print(require("luatrain").version)' 2> /dev/null || echo '?'), $(cc --version | head -1), $(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$build/CMakeCache.txt")"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD 2> /dev/null || echo none)"
echo
printf '%-8s %-9s %-7s %4s %9s %9s %10s %7s\n' repeat waiting others threads "wall s" "CPU s" "train s" load
one() { # repeat, waiting (active|passive), others (free|busy), threads
    local env=(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT)
    [ "$2" = active ] && env+=(GOMP_SPINCOUNT=300000)
    if [ "$3" = busy ]; then
        yes > /dev/null &
        busy=$!
    fi
    local load
    load="$(cut -d' ' -f1 /proc/loadavg)"
    local TIMEFORMAT="%R %U %S"
    { time "${env[@]}" "$build/luatrain" recipes/qlora_llama.lua steps="$steps" threads="$4" \
        output_dir="$out/adapter" > "$out/log" 2>&1; } 2> "$out/time" ||
        { cat "$out/log" >&2; exit 1; }
    if [ -n "$busy" ]; then
        kill "$busy"
        wait "$busy" 2> /dev/null || true
        busy=""
    fi
    local wall user sys train
    read -r wall user sys < "$out/time"
    train="$(sed -n 's/.*training *[0-9]* steps in \([0-9.]*\) s.*/\1/p' "$out/log")"
    printf '%-8s %-9s %-7s %4s %9.1f %9.1f %10s %7s\n' "$1" "$2" "$3" "$4" "$wall" \
        "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "${train:-?}" "$load"
}
for r in $(seq 1 "$reps"); do
    for others in free busy; do
        one "$r" active "$others" 0
        one "$r" passive "$others" 0
        one "$r" passive "$others" 1
    done
done
