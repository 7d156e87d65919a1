#!/usr/bin/env bash
# cpu_train_step.sh - luatrain vs PyTorch on one CPU training step, in one job.
#
#   tools/bench/cpu_train_step.sh [steps]      (default 5 timed steps after 2 warm-up)
#
# Times the stories15M-shaped training step (batch 8 x 256 tokens, AdamW, grad clipping)
# in luatrain and in Debian's PyTorch on the same machine, and the machine's sgemm rate
# in luatrain's process (OpenBLAS, split across the OpenMP threads). PyTorch runs twice,
# with its default threading and with OMP_WAIT_POLICY=passive, and its better run is the
# peer. Prints tokens/s for both, their ratio, and luatrain's achieved GFLOP/s as a
# fraction of the sgemm ceiling. Installs python3-torch from Debian if it is missing.
#
# Then the fine-tuning rows: LoRA (r=16 on every decoder linear) and QLoRA (the same over an
# NF4 base with double quantization), luatrain against PyTorch (passive waiting; QLoRA as
# dequantize-then-matmul, forward and backward), in f32 and in bf16: luatrain's bf16 rounds
# every matmul's operands to bf16 and accumulates in f32 (oneDNN; activations stay f32),
# PyTorch's runs under torch.autocast; luatrain's ceiling is then the bf16 GEMM's rate.
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-5}"
tools/run.sh build > /dev/null
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-torch > /dev/null
fi
build="${LT_BUILD_DIR:-build}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "flags:   $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512.*|amx.*)$' | tr '\n' ' ')"
echo "kernel:  $(uname -r); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; $(luajit -v | cut -d' ' -f1-2)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
echo
"$build/luatrain" tools/bench/train_step.lua steps="$steps" json="$out/luatrain.json"
echo
/usr/bin/python3 tools/bench/train_step_torch.py --steps "$steps" --json "$out/torch_default.json"
echo
OMP_WAIT_POLICY=passive /usr/bin/python3 tools/bench/train_step_torch.py --steps "$steps" --json "$out/torch_passive.json"
for mode in lora qlora; do
    echo
    "$build/luatrain" tools/bench/train_step.lua mode=$mode steps="$steps" json="$out/luatrain_$mode.json"
    echo
    OMP_WAIT_POLICY=passive /usr/bin/python3 tools/bench/train_step_torch.py --mode $mode --steps "$steps" --json "$out/torch_$mode.json"
done
for mode in full lora qlora; do
    echo
    "$build/luatrain" tools/bench/train_step.lua mode=$mode precision=bf16 steps="$steps" json="$out/luatrain_${mode}_bf16.json"
    echo
    OMP_WAIT_POLICY=passive /usr/bin/python3 tools/bench/train_step_torch.py --mode $mode --bf16 --steps "$steps" --json "$out/torch_${mode}_bf16.json"
done
echo
"$build/luatrain" tools/bench/summarize.lua "$out"
