#!/usr/bin/env bash
# tools/gpu/run.sh - everything a GPU session checks, in as few device calls as possible.
#
# Before the session, HERE: tools/gpu/prepare.sh (makes .gpu-deps, the Debian libraries the
# GPU image lacks; name ".gpu-deps" in the device tool's `carry`). On the GPU machine:
#
#   tools/gpu/run.sh quick   ONE call from a bare machine, about 7 minutes on 16 cores:
#     1 preflight   nvidia-smi, nvcc, compute-sanitizer, the Python packages; after the
#                   build, ldd of the binary and the libraries with no "not found", and
#                   no CUDA library in libluatrain.so's (the backend is loaded on use)
#     2 build       only what the phases need, for sm_90 only (LT_CUDA_ARCHS=90)
#     3 tests       every GPU test: ctest -R 'cuda|nccl' (the C op tests, the Lua GPU test, NCCL's 1-rank bring-up)
#     4 sanitize    compute-sanitizer memcheck of the CUDA C tests and of the op table's device
#                   rows (small shapes) with LT_CUDA_NO_CACHE=1 (every allocation a real
#                   cudaMalloc, so overruns are seen), attention with ATTN_QUICK=1; racecheck
#                   of attention with ATTN_QUICK=1
#     5 flash       FlashAttention against PyTorch SDPA (flash, cuDNN): T 1k, 4k, 16k, D 128,
#                   causal and not, forward and backward TFLOP/s (tools/bench/flash_attn.sh)
#     6 lora        one LoRA step at the Llama-3.2-1B shape, 4 x 2048 tokens, r 16, all
#                   linear layers: luatrain bf16 and NF4 against PyTorch + PEFT (and
#                   bitsandbytes where installed) (tools/bench/gpu_lora_step.sh)
#     7 interop     adapters and models across luatrain, transformers and PEFT
#                   (tools/gpu/interop.py)
#     Phases 3, 4 and 7 run side by side (none is timed); 5 and 6 run alone after them.
#   tools/gpu/run.sh more    a warm follow-up call (builds first if the build is gone): full
#                   memcheck and racecheck of every CUDA C test, the Llama-3-8B-shape LoRA and
#                   QLoRA step, the training-step memory against sequence length, and the
#                   planner's prediction against the measured peak on three configurations.
#
# Each phase has a time limit drawn from one budget (LT_GPU_BUDGET_S, default 440 s for
# quick and 540 s for more), so the call ends inside the device's 10-minute command limit
# with its summary. The summary (printed as it goes, with timestamps, and kept in
# $OUT/summary.txt) says for each phase what ran and what it found. At most 6 files go to
# $OUT: summary.txt, build.log, tests.log, sanitizer.log, bench.txt, interop.txt.
# Exit status 0 when every phase was green.
#
# Without a GPU the script stops after the preflight, unless LT_GPU_DRY_RUN=1 (for trying
# the script itself out: every phase runs and reports what it could not do).
set -uo pipefail
cd "$(dirname "$0")/../.."
what="${1:-quick}"
case "$what" in
quick | more) ;;
*) echo "usage: tools/gpu/run.sh quick|more" >&2; exit 2 ;;
esac
source tools/gpu/env.sh || exit 1
out="${OUT:-/tmp/lt_gpu_out}"
mkdir -p "$out"
build="${LT_GPU_BUILD:-build-gpu}"
jobs="$(nproc)"
t_start="$(date +%s)"
if [ "$what" = quick ]; then budget="${LT_GPU_BUDGET_S:-440}"; else budget="${LT_GPU_BUDGET_S:-540}"; fi
summary="$out/summary.txt"
: > "$summary"
problems=()

now() { date +%s; }
note() { printf '[%s +%4ds] %s\n' "$(date -u +%H:%M:%S)" $(($(now) - t_start)) "$*" | tee -a "$summary"; }
# limit DEFAULT RESERVE: the seconds a phase may run: DEFAULT, or less so that RESERVE seconds
# of the budget stay for the phases after it (never under 20)
limit() {
    local d="$1" l
    l=$((budget - ($(now) - t_start) - $2))
    [ "$l" -lt "$d" ] && d="$l"
    [ "$d" -lt 20 ] && d=20
    echo "$d"
}
problem() { problems+=("$1"); }
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2> /dev/null || true)"

# ---- 1 preflight -----------------------------------------------------------------------------
{
    echo "== preflight $(date -u +%FT%TZ)"
    nvidia-smi 2>&1 | head -20
    nvcc --version 2>&1 | tail -2
    [ -n "$sanitizer" ] && "$sanitizer" --version 2>&1 | head -2
    cmake --version | head -1
} > "$out/build.log" 2>&1
gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null | head -1)"
nvcc_v="$(nvcc --version 2> /dev/null | grep -o 'release [0-9.]*' | head -1)"
pyv="$(python3 - 2>&1 <<'PY'
import importlib
out = []
for name in ("torch", "transformers", "peft", "safetensors", "bitsandbytes"):
    try:
        out.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception:
        out.append(f"{name} absent")
print(", ".join(out))
PY
)"
note "1 preflight: GPU ${gpu:-NONE}; nvcc ${nvcc_v:-absent}; compute-sanitizer ${sanitizer:-absent}; $pyv; $jobs cores; $(uname -r)"
if [ -z "$gpu" ]; then
    problem "preflight: nvidia-smi sees no GPU"
    if [ "${LT_GPU_DRY_RUN:-0}" != 1 ]; then
        note "stopping: no GPU (LT_GPU_DRY_RUN=1 runs the phases anyway)"
        exit 1
    fi
fi

# ---- 2 build ---------------------------------------------------------------------------------
cuda_tests=(test_cuda_attention test_cuda_elementwise test_cuda_gemm test_cuda_loss_optim test_cuda_quant)
# the libraries tests/lua/test_cuda_loader.lua (in ctest -R cuda) loads and must refuse
loader_fakes=(fake_cuda_backend_old_version fake_cuda_backend_no_entry)
build_phase() {
    local gen=() t0
    t0="$(now)"
    command -v ninja > /dev/null 2>&1 && gen=(-G Ninja)
    # a build dir configured otherwise (other architectures, another generator) starts afresh
    if [ -f "$build/CMakeCache.txt" ] && { ! grep -q "^LT_CUDA_ARCHS:STRING=90$" "$build/CMakeCache.txt" ||
        ! grep -q "^CMAKE_GENERATOR:INTERNAL=${gen[1]:-Unix Makefiles}$" "$build/CMakeCache.txt"; }; then
        rm -rf "$build"
    fi
    echo "== configure" >> "$out/build.log"
    if ! lt_gpu_configure "$build" "${gen[@]}" -DLT_CUDA=ON -DLT_CUDA_ARCHS=90 >> "$out/build.log" 2>&1; then
        note "2 build: configure FAILED (build.log)"
        problem "build: configure failed"
        return 1
    fi
    echo "== build" >> "$out/build.log"
    if ! timeout "$(limit 300 200)" cmake --build "$build" -j "$jobs" --target luatrain-host "${cuda_tests[@]}" "${loader_fakes[@]}" \
        >> "$out/build.log" 2>&1; then
        note "2 build: FAILED after $(($(now) - t0)) s: $(grep -m1 -E 'error|Error' "$out/build.log" | cut -c1-200)"
        problem "build failed"
        return 1
    fi
    note "2 build: luatrain and ${#cuda_tests[@]} CUDA tests for sm_90 in $(($(now) - t0)) s (${gen[*]:-make}, $jobs jobs)"
    # 1 preflight, continued: every library the binary needs is found
    local nf=""
    for b in "$build/luatrain" "$build/libluatrain.so" "$build/libluatrain_cuda.so"; do
        { echo "== ldd $b"; ldd "$b"; } >> "$out/build.log" 2>&1
        nf="$nf$(ldd "$b" 2>&1 | grep 'not found' | tr -s ' \t' ' ')"
    done
    # the core loads the CUDA backend on first use: it must not need the CUDA libraries
    local eager
    eager="$(ldd "$build/libluatrain.so" 2>&1 | grep -oE 'lib(cudart|cublas|cublasLt|cuda)\.so[^ ]*' | tr '\n' ' ')"
    if [ -n "$nf" ]; then
        note "1 preflight (ldd): NOT FOUND:$nf"
        problem "ldd: libraries not found"
    elif [ -n "$eager" ]; then
        note "1 preflight (ldd): libluatrain.so links CUDA libraries: $eager"
        problem "ldd: libluatrain.so links CUDA libraries"
    else
        note "1 preflight (ldd): luatrain, libluatrain.so and libluatrain_cuda.so find every library ($(ldd "$build/libluatrain_cuda.so" | grep -o 'libcudart[^ ]* => [^ ]*' | head -1))"
    fi
}
if [ "$what" = more ] && [ -x "$build/luatrain" ]; then
    note "2 build: kept from the last call ($build)"
else
    build_phase || { note "stopping: nothing to test without a build"; exit 1; }
fi

# ---- 3, 4, 7: tests, sanitizers and interop side by side ---------------------------------
tests_phase() { # $1: time limit
    local t0 rc
    t0="$(now)"
    (cd "$build" && timeout "$1" ctest -R 'cuda|nccl' --output-on-failure --timeout "$1" -j 3) > "$out/tests.log" 2>&1
    rc=$?
    local line ran skipped failed
    line="$(grep -E 'tests passed' "$out/tests.log" | tail -1)"
    # a skip on a GPU machine is a failure: ctest's (the C tests exit 77) and the Lua test's
    # GPU part (its output is in ctest's full log, not in tests.log when it passes)
    local s1 s2
    s1="$(grep -c '\*\*\*Skipped' "$out/tests.log")"
    s2="$(grep -c 'skipped: GPU part' "$build/Testing/Temporary/LastTest.log" 2> /dev/null)"
    skipped=$((${s1:-0} + ${s2:-0}))
    failed="$(sed -n '/The following tests FAILED/,$p' "$out/tests.log" | grep -E '^\s+[0-9]+ - ' | sed 's/^ *[0-9]* - //' | tr '\n' ';')"
    ran="$(grep -E 'Test +#[0-9]+: ' "$out/tests.log" | sed -E 's/.*Test +#[0-9]+: ([a-z_]+) .* ([0-9.]+) sec.*/\1 \2s/' | tr '\n' ',' | sed 's/,$//')"
    if [ "$rc" = 0 ] && [ "$skipped" = 0 ] && [ -n "$line" ]; then
        echo "3 tests: ${line} (${ran}) in $(($(now) - t0)) s"
    else
        [ "$rc" = 124 ] && line="timed out after $1 s; $line"
        echo "3 tests: FAILED: ${line:-no result}; failed: ${failed:-none}; skipped on a GPU machine: $skipped (tests.log)"
    fi
}

# one compute-sanitizer run: $1 tool, $2 test (a C test's name, or a tests/lua/*.lua file
# that the luatrain host runs), $3 time limit, $4 log, then VAR=value settings
sanitize_one() {
    local tool="$1" t="$2" lim="$3" log="$4" t0 rc found cmd
    shift 4
    t0="$(now)"
    case "$t" in
    *.lua) cmd=("$build/luatrain" "$t") ;;
    *) cmd=("$build/tests/$t") ;;
    esac
    env "$@" timeout "$lim" "$sanitizer" --tool "$tool" --error-exitcode 9 --print-limit 30 \
        "${cmd[@]}" > "$log" 2>&1
    rc=$?
    found="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 | sed 's/^========= //')"
    case "$rc" in
    0) echo "$tool $t${1:+ ($*)}: ${found:-clean} ($(($(now) - t0)) s)" ;;
    124) echo "$tool $t${1:+ ($*)}: TIMED OUT after $lim s (${found:-no summary yet})" ;;
    *) echo "$tool $t${1:+ ($*)}: FAILED, exit $rc: ${found:-$(tail -2 "$log" | tr '\n' ' ' | cut -c1-200)}" ;;
    esac
}

sanitize_phase() { # $1: time limit; $2: quick|full
    if [ -z "$sanitizer" ]; then
        echo "4 sanitize: FAILED: compute-sanitizer not found"
        return
    fi
    local dir tests attn_env=() pids=() i=0 res
    dir="$(mktemp -d)"
    [ "$2" = quick ] && attn_env=(ATTN_QUICK=1)
    for t in test_cuda_elementwise test_cuda_gemm test_cuda_loss_optim test_cuda_quant test_cuda_attention; do
        if [ "$t" = test_cuda_attention ]; then
            sanitize_one memcheck "$t" "$1" "$dir/m$i.log" LT_CUDA_NO_CACHE=1 "${attn_env[@]}" > "$dir/r$i" &
        else
            sanitize_one memcheck "$t" "$1" "$dir/m$i.log" LT_CUDA_NO_CACHE=1 > "$dir/r$i" &
        fi
        pids+=($!)
        i=$((i + 1))
    done
    sanitize_one racecheck test_cuda_attention "$1" "$dir/m$i.log" "${attn_env[@]}" > "$dir/r$i" &
    pids+=($!)
    # the op table's device rows (most of the CUDA comparisons), at their small shapes
    i=$((i + 1))
    sanitize_one memcheck tests/lua/test_op_table_cuda.lua "$1" "$dir/m$i.log" LT_CUDA_NO_CACHE=1 \
        LT_OP_TABLE_SMALL=1 > "$dir/r$i" &
    pids+=($!)
    wait "${pids[@]}"
    : > "$out/sanitizer.log"
    res=""
    for j in $(seq 0 "$i"); do
        { echo "==== $(cat "$dir/r$j")"; tail -c 20000 "$dir/m$j.log"; } >> "$out/sanitizer.log"
        res="$res; $(cat "$dir/r$j")"
    done
    rm -rf "$dir"
    if grep -qE 'FAILED|TIMED OUT' <<< "$res"; then
        echo "4 sanitize: PROBLEMS${res}"
    else
        echo "4 sanitize: clean${res}"
    fi
}

interop_phase() { # $1: time limit
    local t0
    t0="$(now)"
    timeout "$1" python3 tools/gpu/interop.py --luatrain "$build/luatrain" > "$out/interop.txt" 2>&1
    local rc=$? last
    last="$(grep '^# interop:' "$out/interop.txt" | tail -1 | sed 's/^# interop: //')"
    if [ "$rc" = 0 ]; then
        echo "7 interop: ${last} ($(($(now) - t0)) s)"
    else
        [ "$rc" = 124 ] && last="timed out after $1 s; $last"
        local why
        why="$(grep -E 'FAIL' "$out/interop.txt" | head -3 | cut -c1-160 | tr '\n' ' ')"
        [ -n "$why" ] || why="$(tail -1 "$out/interop.txt" | cut -c1-200)"
        echo "7 interop: FAILED: ${last:-no result}: $why (interop.txt)"
    fi
}

record() { # a phase's one-line result: into the summary, and a problem when it failed
    local line
    line="$(cat "$1")"
    note "$line"
    if grep -qE 'FAILED|PROBLEMS|TIMED OUT' <<< "$line"; then problem "${line%%:*}"; fi
}

par="$(mktemp -d)"
if [ "$what" = quick ]; then
    # tests, sanitizers and interop together, leaving ~150 s for the two benchmarks
    lim="$(limit 170 150)"
    note "3, 4, 7: tests, sanitizers (quick) and interop side by side, $lim s at most"
    tests_phase "$lim" > "$par/3" &
    p3=$!
    sanitize_phase "$lim" quick > "$par/4" &
    p4=$!
    interop_phase "$lim" > "$par/7" &
    p7=$!
    wait "$p3" "$p4" "$p7"
    record "$par/3"
    record "$par/4"
    record "$par/7"
else
    lim="$(limit 300 200)"
    note "4: full memcheck and racecheck, $lim s at most"
    sanitize_phase "$lim" full > "$par/4"
    record "$par/4"
fi
rm -rf "$par"

# ---- 5, 6: benchmarks, one at a time ---------------------------------------------------------
: > "$out/bench.txt"
commit="$(git rev-parse --short HEAD 2> /dev/null || echo '?')"
if [ "$what" = quick ]; then
    lim="$(limit 75 85)"
    t0="$(now)"
    { echo "######## FlashAttention (tools/bench/flash_attn.sh), commit $commit"; } >> "$out/bench.txt"
    OUT= SEQS=1024,4096,16384 DIMS=128 REPS=10 FA_TIMEOUT="$((lim / 2))" LT_BUILD_DIR="$build" LT_COMMIT="$commit" \
        timeout "$lim" bash tools/bench/flash_attn.sh >> "$out/bench.txt" 2>&1
    rc=$?
    goal="$(grep '^goal at' "$out/bench.txt" | tail -1)"
    if [ "$rc" = 0 ] && [ -n "$goal" ]; then
        note "5 flash: $goal ($(($(now) - t0)) s; table in bench.txt)"
    else
        note "5 flash: FAILED (exit $rc): ${goal:-no goal line} (bench.txt)"
        problem "flash"
    fi

    lim="$(limit 110 5)"
    t0="$(now)"
    { echo; echo "######## LoRA step (tools/bench/gpu_lora_step.sh), commit $commit"; } >> "$out/bench.txt"
    SHAPES=llama-3.2-1b LT_BUILD_DIR="$build" timeout "$lim" bash tools/bench/gpu_lora_step.sh >> "$out/bench.txt" 2>&1
    rc=$?
    rows="$(grep -E '^llama-3.2-1b +(luatrain|pytorch)' "$out/bench.txt" | tr -s ' ' | tr '\n' ';')"
    if [ "$rc" = 0 ] && grep -q 'luatrain bf16 *[0-9]' <<< "$rows"; then
        note "6 lora: $rows ($(($(now) - t0)) s)"
    else
        note "6 lora: FAILED (exit $rc): ${rows:-no rows} (bench.txt)"
        problem "lora"
    fi
else
    lim="$(limit 240 90)"
    t0="$(now)"
    { echo "######## LoRA and QLoRA step, Llama-3-8B shape (tools/bench/gpu_lora_step.sh), commit $commit"; } >> "$out/bench.txt"
    SHAPES=llama-3-8b LT_BUILD_DIR="$build" timeout "$lim" bash tools/bench/gpu_lora_step.sh >> "$out/bench.txt" 2>&1
    rc=$?
    rows="$(grep -E '^llama-3-8b +(luatrain|pytorch)' "$out/bench.txt" | tr -s ' ' | tr '\n' ';')"
    if [ "$rc" = 0 ] && grep -q 'luatrain bf16 *[0-9]' <<< "$rows"; then
        note "6 lora 8b: $rows ($(($(now) - t0)) s)"
    else
        note "6 lora 8b: FAILED (exit $rc): ${rows:-no rows} (bench.txt)"
        problem "lora 8b"
    fi
    lim="$(limit 90 5)"
    t0="$(now)"
    { echo; echo "######## training-step memory against T (tools/bench/attention_memory.lua device=cuda)"; } >> "$out/bench.txt"
    timeout "$lim" "$build/luatrain" tools/bench/attention_memory.lua device=cuda seqs=1024,2048,4096,8192 \
        >> "$out/bench.txt" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then
        note "8 memory: $(grep -iE 'ratio|measured/predicted' "$out/bench.txt" | tail -1 | cut -c1-200) (bench.txt)"
    else
        note "8 memory: FAILED (exit $rc) (bench.txt)"
        problem "memory"
    fi
    # the planner against the device's measured tensors, three configurations (issue: within 3%)
    lim="$(limit 60 5)"
    { echo; echo "######## lt.plan against the GPU (tests/lua/plan_child.lua device=cuda)"; } >> "$out/bench.txt"
    plan_rows=""
    for cfgs in "" "r=64 optim=paged_adamw" "ck=false batch=4"; do
        row="$(timeout "$lim" "$build/luatrain" tests/lua/plan_child.lua device=cuda $cfgs 2>&1 | tail -1)"
        echo "${cfgs:-default}: $row" >> "$out/bench.txt"
        plan_rows+="${cfgs:-default}: $row; "
    done
    note "9 plan: $plan_rows(bench.txt)"
fi

if [ "${#problems[@]}" = 0 ]; then
    note "$what: every phase green in $(($(now) - t_start)) s"
    exit 0
fi
note "$what: ${#problems[@]} phase(s) found problems: $(printf '%s; ' "${problems[@]}")"
exit 1
