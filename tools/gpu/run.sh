#!/usr/bin/env bash
# tools/gpu/run.sh - on the GPU machine (device tool, carry .gpu-deps made by prepare.sh):
# build luatrain for sm_80/sm_90 against the carried Debian packages, then
#   test      the whole ctest suite (GPU tests included);
#   sanitize  compute-sanitizer memcheck on every CUDA op test, racecheck on attention;
#   bench     the GPU benchmarks (LoRA step against PyTorch + PEFT, FlashAttention against
#             scaled_dot_product_attention, training-step memory against sequence
#             length), writing their tables under $OUT;
#   all       all three (longer than one device command may run).
# Output that matters is copied under $OUT (the device tool brings it back). One device
# command may run 10 minutes: call `test`, `sanitize` and `bench` separately (the build is kept between
# calls on a warm machine). A sanitizer run that passes SANITIZER_TIMEOUT (240 s) counts as
# failed, with its log so far.
set -uo pipefail
cd "$(dirname "$0")/../.."
what="${1:-all}"
root="$PWD/.gpu-deps/root"
out="${OUT:-/tmp/lt_out}"
mkdir -p "$out"
export PATH="$root/usr/bin:$PATH"
export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/openblas-pthread:${LD_LIBRARY_PATH:-}"
export PKG_CONFIG_PATH="$root/usr/lib/x86_64-linux-gnu/pkgconfig:$root/usr/lib/x86_64-linux-gnu/openblas-pthread/pkgconfig:$root/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$root"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DLT_CUDA=ON \
      -DLUAJIT_EXECUTABLE="$root/usr/bin/luajit" -DCMAKE_PREFIX_PATH="$root/usr" \
      -DZLIB_ROOT="$root/usr" > "$out/configure.log" 2>&1 ||
    { tail -40 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j 16 > "$out/build.log" 2>&1 || { tail -60 "$out/build.log"; exit 1; }

status=0
if [ "$what" = test ] || [ "$what" = all ]; then
    (cd build-gpu && ctest --output-on-failure --timeout 900 -j 4 2>&1 | tee "$out/ctest.log" | tail -25) || status=1
fi
if [ "$what" = sanitize ] || [ "$what" = all ]; then
    : > "$out/sanitizer.log"
    for t in build-gpu/tests/test_cuda_*; do
        [ -x "$t" ] || continue
        echo "== memcheck $t" | tee -a "$out/sanitizer.log"
        timeout "${SANITIZER_TIMEOUT:-240}" compute-sanitizer --tool memcheck --error-exitcode 9 "$t" \
            >> "$out/sanitizer.log" 2>&1 ||
            { echo "memcheck FAILED: $t" | tee -a "$out/sanitizer.log"; status=1; }
    done
    if [ -x build-gpu/tests/test_cuda_attention ]; then
        echo "== racecheck test_cuda_attention" | tee -a "$out/sanitizer.log"
        timeout "${SANITIZER_TIMEOUT:-240}" compute-sanitizer --tool racecheck --error-exitcode 9 \
            build-gpu/tests/test_cuda_attention \
            >> "$out/sanitizer.log" 2>&1 || { echo "racecheck FAILED" | tee -a "$out/sanitizer.log"; status=1; }
    fi
    grep -E "FAILED|ERROR SUMMARY" "$out/sanitizer.log" | tail -20
fi
# BENCH picks the benchmarks (default all three; each fits one device command alone):
#   lora    tools/bench/gpu_lora_step.sh       flash   tools/bench/flash_attn.sh
#   memory  tools/bench/attention_memory.lua device=cuda
benches=" ${BENCH:-lora flash memory} "
if [ "$what" = bench ] || [ "$what" = all ]; then
    if [[ "$benches" == *" lora "* ]]; then
        LT_BUILD_DIR=build-gpu bash tools/bench/gpu_lora_step.sh > "$out/gpu_lora_step.txt" 2>&1 || status=1
        tail -20 "$out/gpu_lora_step.txt"
    fi
    if [[ "$benches" == *" memory "* ]]; then
        build-gpu/luatrain tools/bench/attention_memory.lua device=cuda seqs=1024,2048,4096,8192 \
            out="$out/attention_memory_gpu.txt" > "$out/attention_memory_gpu.log" 2>&1 || status=1
        tail -8 "$out/attention_memory_gpu.txt" 2>/dev/null || tail -20 "$out/attention_memory_gpu.log"
    fi
    if [[ "$benches" == *" flash "* ]]; then
        LT_BUILD_DIR=build-gpu bash tools/bench/flash_attn.sh > "$out/flash_attn.txt" 2>&1 || status=1
        tail -30 "$out/flash_attn.txt"
    fi
fi
exit $status
