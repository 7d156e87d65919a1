#!/usr/bin/env bash
# ddp_cpu.sh - data parallelism on this machine's CPUs, luatrain against PyTorch, in one job.
#
#   tools/bench/ddp_cpu.sh [steps]      (default 5 timed steps after 2 warm-up)
#
# The stories15M-shaped training step (8 sequences x 256 tokens per job step, AdamW, grad
# clipping), trained in full and with LoRA r=16 on every linear layer, in four ways:
#   luatrain  1 rank x 2 threads             (tools/bench/ddp_step.lua, batch 8)
#   luatrain  2 ranks x 1 thread, mpirun     (the same, batch 4 per rank: DDP)
#   PyTorch   2 ranks x 1 thread, DDP/gloo   (tools/bench/ddp_step_torch.py, Debian's torch)
# and the all-reduce of the full model's gradients alone, in luatrain's comm layer and as a
# bare MPI_Allreduce of the same bytes (tools/bench/mpi_allreduce.c, built here with mpicc).
# Prints tokens/s of each, luatrain's ratio to PyTorch DDP, and the achieved all-reduce
# bandwidth against the bare one's. Installs python3-torch and Open MPI if missing.
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
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# one core per rank: mpirun's default binding for 2 ranks
mpi=(mpirun -np 2 --bind-to core --timeout 1800)

flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_tile)$' | tr '\n' ' ')
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "flags:   ${flags:-none of avx2 fma avx512f avx512_bf16 avx512_vnni amx}"
echo "kernel:  $(uname -r); $(mpirun --version | head -1); torch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)')"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
echo

for mode in full lora; do
    "$build/luatrain" tools/bench/ddp_step.lua mode=$mode batch=8 threads=2 steps="$steps" json="$out/lt1_$mode.json" > /dev/null
    "${mpi[@]}" "$build/luatrain" tools/bench/ddp_step.lua mode=$mode batch=4 threads=1 steps="$steps" json="$out/lt2_$mode.json" > /dev/null
    /usr/bin/python3 tools/bench/ddp_step_torch.py --ranks 2 --threads 1 --mode $mode --batch 4 --steps "$steps" --json "$out/pt2_$mode.json" > /dev/null
done
bytes=$(sed -n 's/.*"grad_bytes":\([0-9]*\).*/\1/p' "$out/lt2_full.json")
mpicc -O2 -o "$out/mpi_allreduce" tools/bench/mpi_allreduce.c
"${mpi[@]}" "$out/mpi_allreduce" $((bytes / 4)) > "$out/bare.json"

"$build/luatrain" tools/bench/ddp_cpu_summary.lua "$out"
