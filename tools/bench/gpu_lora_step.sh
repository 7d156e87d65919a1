#!/usr/bin/env bash
# tools/bench/gpu_lora_step.sh - the GPU LoRA benchmark, in one job on the GPU machine:
# for the Llama-3.2-1B and Llama-3-8B shapes (random weights), one LoRA training step
# (bf16 base, r=16 on every linear layer, batch 4 x 2048 tokens, gradient checkpointing)
# in luatrain and in PyTorch + PEFT, and luatrain's QLoRA step (NF4 base). Prints tokens/s,
# peak memory and MFU (model FLOPs per token over the bf16 matmul ceiling PyTorch measures
# in the same job), and the ratios luatrain / PyTorch.
#   LT_BUILD_DIR  the CUDA build of luatrain (default build-gpu)
#   SHAPES        default "llama-3.2-1b llama-3-8b"
set -uo pipefail
cd "$(dirname "$0")/../.."
bin="${LT_BUILD_DIR:-build-gpu}/luatrain"
shapes="${SHAPES:-llama-3.2-1b llama-3-8b}"
tmp="$(mktemp -d)"
echo "# tools/bench/gpu_lora_step.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
for s in $shapes; do
    python3 tools/bench/gpu_lora_step_torch.py --shape "$s" --json "$tmp/torch_$s.json" > "$tmp/torch_$s.log" 2>&1 ||
        { echo "pytorch $s failed:"; tail -5 "$tmp/torch_$s.log"; }
    "$bin" tools/bench/gpu_lora_step.lua shape="$s" json="$tmp/lt_$s.json" > "$tmp/lt_$s.log" 2>&1 ||
        { echo "luatrain $s failed:"; tail -5 "$tmp/lt_$s.log"; }
    "$bin" tools/bench/gpu_lora_step.lua shape="$s" base=nf4 json="$tmp/ltq_$s.json" > "$tmp/ltq_$s.log" 2>&1 ||
        { echo "luatrain QLoRA $s failed:"; tail -5 "$tmp/ltq_$s.log"; }
done
python3 - "$tmp" $shapes <<'PY'
import json, os, sys
tmp, shapes = sys.argv[1], sys.argv[2:]
def load(name):
    p = os.path.join(tmp, name)
    return json.load(open(p)) if os.path.exists(p) else None
print(f"{'shape':14} {'engine':22} {'tokens/s':>10} {'peak GiB':>9} {'MFU':>6}   vs PyTorch+PEFT")
for s in shapes:
    t, l, q = load(f"torch_{s}.json"), load(f"lt_{s}.json"), load(f"ltq_{s}.json")
    ceiling = t["matmul_ceiling_flops"] if t else None
    for name, r in (("pytorch+peft bf16", t), ("luatrain bf16", l), ("luatrain qlora nf4", q)):
        if not r:
            print(f"{s:14} {name:22} {'(no result)':>10}")
            continue
        mfu = r["tokens_per_s"] * r["flops_per_token"] / ceiling if ceiling else float("nan")
        ratio = ""
        if t and r is not t:
            ratio = f"   {r['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s, {r['peak_bytes'] / t['peak_bytes']:.2f}x memory"
        print(f"{s:14} {name:22} {r['tokens_per_s']:10.0f} {r['peak_bytes'] / 2**30:9.2f} {mfu:6.1%}{ratio}")
    if ceiling:
        print(f"{'':14} bf16 matmul ceiling measured in this job: {ceiling / 1e12:.0f} TFLOP/s")
PY
rm -rf "$tmp"
