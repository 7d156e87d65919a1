#!/usr/bin/env bash
# tools/bench/flash_attn.sh - the FlashAttention speed benchmark (issue 6), in one job on the
# GPU machine: forward and backward TFLOP/s of luatrain's attention kernel
# (tools/bench/flash_attn.lua) next to PyTorch's scaled_dot_product_attention through its
# flash and cuDNN back ends (tools/bench/flash_attn_sdpa.py), on the same grid and shapes:
# T = 512 .. 16k, head dims 64 and 128, causal and not, bf16, B * T = 16k tokens, hidden 2048,
# MHA. Prints each engine's own table (times, errors against f32), then the merged table
# with the ratios luatrain / best PyTorch back end, the bf16 matmul ceiling measured in the
# same job, and the goal check at T = 4096, D = 128, causal: forward above 450 TFLOP/s,
# backward above 300. The raw JSON lines go to $OUT/flash_attn.jsonl when OUT is set.
#   LT_BUILD_DIR  the CUDA build of luatrain (default build-gpu)
#   SEQS, DIMS    default "512,1024,2048,4096,8192,16384" and "64,128"
#   REPS          timed samples per measurement (default 20)
#   FA_TIMEOUT    seconds each engine may run (default 300)
#   LT_COMMIT     the commit to print where the checkout has no .git
# Exits 1 when an engine failed or a luatrain point failed its check against f32.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin="${LT_BUILD_DIR:-build-gpu}/luatrain"
seqs="${SEQS:-512,1024,2048,4096,8192,16384}"
dims="${DIMS:-64,128}"
reps="${REPS:-20}"
limit="${FA_TIMEOUT:-300}"
tmp="$(mktemp -d)"
status=0
echo "# tools/bench/flash_attn.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit ${LT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}"
echo "# device: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null)"
echo "# seqs $seqs, dims $dims, bf16, B*T = 16384 tokens, hidden 2048 (H = 2048 / D, Hkv = H), median of $reps samples"

echo
echo "## PyTorch scaled_dot_product_attention"
timeout "$limit" python3 tools/bench/flash_attn_sdpa.py --seqs "$seqs" --dims "$dims" --reps "$reps" \
    --json "$tmp/torch.json" > "$tmp/torch.log" 2>&1 || { echo "(pytorch exited with status $?)"; status=1; }
cat "$tmp/torch.log"

echo
echo "## luatrain"
timeout "$limit" "$bin" tools/bench/flash_attn.lua seqs="$seqs" dims="$dims" reps="$reps" dtype=bf16 \
    json="$tmp/lt.json" > "$tmp/lt.log" 2>&1 || { echo "(luatrain exited with status $?)"; status=1; }
cat "$tmp/lt.log"

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    cat "$tmp/torch.json" "$tmp/lt.json" > "$OUT/flash_attn.jsonl" 2>/dev/null
fi

echo
python3 - "$tmp" <<'PY'
import json, os, sys
tmp = sys.argv[1]

def load(name):
    p = os.path.join(tmp, name)
    if not os.path.exists(p):
        return []
    return [json.loads(l) for l in open(p) if l.strip()]

torch_recs, lt_recs = load("torch.json"), load("lt.json")
ceiling = next((r for r in torch_recs if r["engine"] == "ceiling"), None)
by = {}  # (seq, dim, causal) -> {engine: record}
for r in torch_recs + lt_recs:
    if r["engine"] != "ceiling":
        by.setdefault((r["seq"], r["dim"], r["causal"]), {})[r["engine"]] = r

def tf(r, key):
    """TFLOP/s of one record, or None where it was not measured."""
    return r.get(key) if r else None

def cell(v, width=8):
    return f"{v:{width}.1f}" if v is not None else f"{'-':>{width}}"

dev = (ceiling or {}).get("device") or next((r["device"] for r in lt_recs), "?")
ctext = f"{ceiling['tflops']:.0f} TFLOP/s" if ceiling else "not measured"
cname = f"{ceiling['dtype']} matmul {ceiling['n']}^3" if ceiling else "matmul"
print(f"# {dev}; {cname} ceiling (torch) {ctext}; "
      f"TFLOP/s, FlashAttention's count (fwd 4BHT^2D, /2 causal; bwd 2.5x)")
print(f"{'T':>6} {'D':>4} {'causal':>6} | {'luatrain':>17} | {'sdpa flash':>17} | "
      f"{'sdpa cudnn':>17} | {'lt / best sdpa':>15}")
print(f"{'':>6} {'':>4} {'':>6} | {'fwd':>8} {'bwd':>8} | {'fwd':>8} {'bwd':>8} | {'fwd':>8} {'bwd':>8} | "
      f"{'fwd':>7} {'bwd':>7}")
unavailable = {}
for key in sorted(by, key=lambda k: (k[0], k[1], not k[2])):
    e = by[key]
    lt, fl, cu = e.get("luatrain"), e.get("torch-flash"), e.get("torch-cudnn")
    for name, r in (("flash", fl), ("cudnn", cu)):
        if r and (r.get("unavailable") or r.get("failed")):
            unavailable.setdefault(name, (r.get("unavailable") or r.get("failed")))
    row = []
    ratios = []
    for col in ("fwd_tflops", "bwd_tflops"):
        mine = tf(lt, col)
        peers = [v for v in (tf(fl, col), tf(cu, col)) if v is not None]
        ratios.append(f"{mine / max(peers):7.2f}" if mine is not None and peers else f"{'-':>7}")
    lt_cells = (f"{'FAILED':>8} {'check':>8}" if lt and not lt.get("check_ok", True)
                else f"{cell(tf(lt, 'fwd_tflops'))} {cell(tf(lt, 'bwd_tflops'))}")
    print(f"{key[0]:6d} {key[1]:4d} {str(key[2]):>6} | {lt_cells} | "
          f"{cell(tf(fl, 'fwd_tflops'))} {cell(tf(fl, 'bwd_tflops'))} | "
          f"{cell(tf(cu, 'fwd_tflops'))} {cell(tf(cu, 'bwd_tflops'))} | {ratios[0]} {ratios[1]}")
for name, why in unavailable.items():
    print(f"# torch-{name} not measured at some points: {why[:160]}")

g = by.get((4096, 128, True), {}).get("luatrain")
if g and g.get("fwd_tflops") is not None:
    f, b = g["fwd_tflops"], g["bwd_tflops"]
    verdict = lambda v, goal: "met" if v > goal else "MISSED"
    share = f" ({f / ceiling['tflops']:.0%} and {b / ceiling['tflops']:.0%} of the matmul ceiling)" if ceiling else ""
    print(f"goal at T=4096, D=128, causal, {g['dtype']} on {g['device']}: forward {f:.0f} TFLOP/s vs 450: "
          f"{verdict(f, 450)}; backward {b:.0f} TFLOP/s vs 300: {verdict(b, 300)}{share}")
else:
    print("goal at T=4096, D=128, causal: no luatrain measurement (see above)")
PY
rm -rf "$tmp"
exit $status
