#!/usr/bin/env bash
# tools/bench/gpu_lora_step.sh - the GPU LoRA benchmark, in one job on the GPU machine:
# for the Llama-3.2-1B and Llama-3-8B shapes (random weights), one LoRA training step
# (bf16 base, r=16 on every linear layer, batch 4 x 2048 tokens, gradient checkpointing)
# in luatrain and in PyTorch + PEFT, and the QLoRA step (NF4 base) in luatrain and, where the
# image has bitsandbytes, in PyTorch + PEFT + bitsandbytes. Prints tokens/s,
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
    python3 tools/bench/gpu_lora_step_torch.py --shape "$s" --base nf4 --json "$tmp/torchq_$s.json" > "$tmp/torchq_$s.log" 2>&1 ||
        { echo "pytorch + bitsandbytes $s failed:"; tail -5 "$tmp/torchq_$s.log"; }
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
print(f"{'shape':14} {'engine':22} {'tokens/s':>10} {'peak GiB':>9} {'MFU':>6}   vs the peer")
for s in shapes:
    t, tq = load(f"torch_{s}.json"), load(f"torchq_{s}.json")
    l, q = load(f"lt_{s}.json"), load(f"ltq_{s}.json")
    if tq and tq.get("unavailable"):
        print(f"{s:14} {'pytorch+peft+bnb nf4':22} not measured: {tq['unavailable']}")
        tq = None
    ceiling = (t or tq or {}).get("matmul_ceiling_flops")
    # each luatrain row against the peer with the same base: bf16 against PEFT, NF4 against
    # PEFT + bitsandbytes where it ran (else against bf16 PEFT, as the table says)
    rows = (("pytorch+peft bf16", t, None), ("pytorch+peft+bnb nf4", tq, None),
            ("luatrain bf16", l, t), ("luatrain qlora nf4", q, tq or t))
    for name, r, peer in rows:
        if not r:
            if name != "pytorch+peft+bnb nf4":
                print(f"{s:14} {name:22} {'(no result)':>10}")
            continue
        mfu = r["tokens_per_s"] * r["flops_per_token"] / ceiling if ceiling else float("nan")
        ratio = ""
        if peer:
            who = "PEFT+bnb" if peer is tq else "PEFT bf16"
            ratio = (f"   {r['tokens_per_s'] / peer['tokens_per_s']:.2f}x tokens/s, "
                     f"{r['peak_bytes'] / peer['peak_bytes']:.2f}x memory vs {who}")
        print(f"{s:14} {name:22} {r['tokens_per_s']:10.0f} {r['peak_bytes'] / 2**30:9.2f} {mfu:6.1%}{ratio}")
    if ceiling:
        print(f"{'':14} bf16 matmul ceiling measured in this job: {ceiling / 1e12:.0f} TFLOP/s")
PY
rm -rf "$tmp"
