"""flash_attn_sdpa.py - the peer for tools/bench/flash_attn.lua: forward and backward TFLOP/s
of PyTorch's scaled_dot_product_attention on the same grid and shapes, through its flash
and cuDNN back ends, each pinned with torch.nn.attention.sdpa_kernel.

    python3 tools/bench/flash_attn_sdpa.py [--seqs 512,1024,2048,4096,8192,16384]
        [--dims 64,128] [--dtype bfloat16] [--total-tokens 16384] [--reps 20] [--json FILE]
        [--device cuda] [--backends flash,cudnn] [--check 1]

Shapes as luatrain's side: B = max(1, total_tokens / T), H = hidden / D heads (hidden 2048),
as many key/value heads as query heads. q, k, v, dout are allocated (B, T, H, D), random
normal, and handed to scaled_dot_product_attention as their (B, H, T, D) transposes: views,
not copies, so both engines read the same memory layout (the one a Llama's projections
produce, and the one Hugging Face passes to SDPA). Each q, k, v is a leaf requiring grad.

FLOPs as FlashAttention counts them: forward 4 * B * H * T * T * D, halved when causal;
backward 2.5x the forward.

Timing with CUDA events: three warm-up calls, then `reps` samples, each one event pair
around a group of back-to-back calls sized (once, after the warm-up) to about
--sample-ms of work, so the launch latency between the start event and the first kernel
stays near 1% of a sample; per call = sample / group; the median is reported. Calls
alternate between two input sets, as luatrain's side does. The forward is timed with
autograd recording (a training forward: the back ends then also save the log-sum-exp);
the backward alone is torch.autograd.grad(out, (q, k, v), dout, retain_graph=True) on a
forward made beforehand, which returns fresh gradients (out.backward would add them into
.grad, an extra pass over q, k, v that is no part of attention).

A back end that raises on the first call of a point (not built, not supported on this GPU
or shape) is recorded as unavailable with the error's first line and skipped.

With --check 1 each back end's out, dq, dk, dv on one input set are compared (relative L2)
against the memory-efficient back end in float32 on the same values, so a fast but wrong
kernel shows in the record (err_*); it is recorded, not enforced: this is the reference.

Also measures the bf16 matmul ceiling once (8192^3 torch.matmul, median of 20).
Writes JSON lines (engine "torch-flash", "torch-cudnn", and one "ceiling" record) to
--json, rewritten after every point, and prints a table.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

import torch

HIDDEN = 2048


def parse_ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


class Timer:
    """Seconds of device work between start() and stop(): CUDA events on the GPU, the host
    clock on the CPU (for trying the script out)."""

    def __init__(self, device):
        self.cuda = device == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def start(self):
        if self.cuda:
            self.s, self.e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.s.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.e.record()
            self.e.synchronize()
            return self.s.elapsed_time(self.e) / 1000
        return time.perf_counter() - self.t0


def time_calls(fn, timer, reps, sample_ms):
    """Median and fastest seconds per call of fn(i) (i the input set, 0 or 1), and the group size."""
    for i in range(3):
        fn(i % 2)
    timer.sync()
    timer.start()
    fn(0)
    one = max(timer.stop(), 1e-7)
    group = max(1, min(200, math.ceil(sample_ms * 1e-3 / one)))
    samples, k = [], 0
    for _ in range(reps):
        timer.sync()
        timer.start()
        for _ in range(group):
            k += 1
            fn(k % 2)
        samples.append(timer.stop() / group)
    return statistics.median(samples), min(samples), group


def matmul_ceiling(device, dtype, timer, reps=20):
    n = 8192 if device == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(reps):
        timer.sync()
        timer.start()
        torch.matmul(a, b)
        times.append(timer.stop())
    t = statistics.median(times)
    return dict(engine="ceiling", n=n, dtype=str(dtype).replace("torch.", ""), s=t,
                tflops=2 * n ** 3 / t / 1e12)


def first_line(x):
    """The first non-empty line of an exception or warning message, with its type for errors."""
    text = str(x).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(x).__name__}: {line}" if isinstance(x, BaseException) else line


def rel_err(x, ref):
    """||x - ref|| / ||ref|| in float32; NaN when x holds NaN."""
    x, ref = x.float(), ref.float()
    return ((x - ref).norm() / ref.norm()).item()


def reference(s, causal):
    """out, dq, dk, dv (B, H, T, D) float32 for input set s from the memory-efficient back end
    on the same values in float32, or None (with the reason on stderr) where it cannot run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    q, k, v = (s[n].detach().float().requires_grad_() for n in ("q", "k", "v"))
    try:
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            grads = torch.autograd.grad(out, (q, k, v), s["dout"].float())
        return (out.detach(),) + grads
    except Exception as e:
        print(f"# T={q.shape[2]} D={q.shape[3]} causal={causal}: no float32 reference: {first_line(e)}",
              file=sys.stderr)
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--total-tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sample-ms", type=float, default=2.0)
    ap.add_argument("--backends", default="flash,cudnn")
    ap.add_argument("--check", type=int, default=1)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    dev, dtype = args.device, getattr(torch, args.dtype)
    if dev == "cuda" and not torch.cuda.is_available():
        print("flash_attn_sdpa: no CUDA device", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    timer = Timer(dev)
    torch.manual_seed(0)

    records = []

    def emit(rec):
        records.append(json.dumps(rec))
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                f.write("\n".join(records) + "\n")
            os.replace(args.json + ".tmp", args.json)

    ceil = matmul_ceiling(dev, dtype if dev == "cuda" else torch.float32, timer)
    ceil.update(device=device_name, torch=torch.__version__)
    emit(ceil)
    print(f"# torch {torch.__version__}, {device_name}; {ceil['dtype']} matmul {ceil['n']}^3: "
          f"{ceil['tflops']:.1f} TFLOP/s")
    print(f"{'T':>6} {'D':>4} {'causal':>6} {'backend':>8} {'fwd ms':>9} {'fwd TF/s':>8} "
          f"{'bwd ms':>9} {'bwd TF/s':>8} {'err':>9}")

    for T in parse_ints(args.seqs):
        for D in parse_ints(args.dims):
            for causal in (True, False):
                B, H = max(1, args.total_tokens // T), HIDDEN // D
                flops_fwd = 4 * B * H * T * T * D * (0.5 if causal else 1)

                def leaf():
                    # (B, T, H, D) memory seen as (B, H, T, D): a transposed view, made a leaf
                    return torch.randn(B, T, H, D, device=dev, dtype=dtype).transpose(1, 2).detach().requires_grad_()

                sets = [dict(q=leaf(), k=leaf(), v=leaf(),
                             dout=torch.randn(B, T, H, D, device=dev, dtype=dtype).transpose(1, 2))
                        for _ in range(2)]

                ref = reference(sets[0], causal) if args.check else None

                for name in args.backends.split(","):
                    rec = dict(engine=f"torch-{name}", device=device_name, torch=torch.__version__,
                               dtype=args.dtype, layout="(B,T,H,D) storage, transposed view",
                               seq=T, dim=D, causal=causal, batch=B, heads=H, kv_heads=H,
                               flops_fwd=flops_fwd, flops_bwd=2.5 * flops_fwd)

                    def fwd(i):
                        s = sets[i]
                        return F.scaled_dot_product_attention(s["q"], s["k"], s["v"], is_causal=causal)

                    # the first calls tell whether the back end runs here; SDPA gives its
                    # reasons for refusing as warnings before it raises, so keep those
                    failure, outs = None, None
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        try:
                            with sdpa_kernel([backends[name]]):
                                outs = [fwd(0), fwd(1)]  # (B, H, T, D) each, with their graphs
                        except Exception as e:
                            failure = e
                    if failure is not None:
                        why = [first_line(failure)] + [first_line(w.message) for w in caught]
                        rec.update(unavailable="; ".join(dict.fromkeys(w for w in why if w)))
                        emit(rec)
                        print(f"{T:6d} {D:4d} {str(causal):>6} {name:>8}   unavailable: {rec['unavailable'][:100]}")
                        continue

                    def bwd(i):
                        s = sets[i]
                        return torch.autograd.grad(outs[i], (s["q"], s["k"], s["v"]), s["dout"],
                                                   retain_graph=True)

                    try:
                        with sdpa_kernel([backends[name]]):
                            if ref is not None:
                                got = (outs[0].detach(),) + bwd(0)
                                for n, x, r in zip(("out", "dq", "dk", "dv"), got, ref):
                                    e = rel_err(x, r)
                                    rec["err_" + n] = e if e == e else "nan"
                                del got
                            fm, fb, fg = time_calls(fwd, timer, args.reps, args.sample_ms)
                            bm, bb, bg = time_calls(bwd, timer, args.reps, args.sample_ms)
                    except Exception as e:  # out of memory, a launch failure: say so, go on
                        rec.update(failed=first_line(e))
                        emit(rec)
                        print(f"{T:6d} {D:4d} {str(causal):>6} {name:>8}   failed: {rec['failed'][:100]}")
                        continue
                    finally:
                        outs = None  # frees both graphs before the next back end
                    rec.update(fwd_s=fm, fwd_min_s=fb, fwd_group=fg, bwd_s=bm, bwd_min_s=bb, bwd_group=bg,
                               fwd_tflops=flops_fwd / fm / 1e12, bwd_tflops=2.5 * flops_fwd / bm / 1e12)
                    errs = [rec[k] for k in ("err_out", "err_dq", "err_dk", "err_dv") if k in rec]
                    worst = ("nan" if "nan" in errs else f"{max(errs):9.2e}") if errs else "-"
                    emit(rec)
                    print(f"{T:6d} {D:4d} {str(causal):>6} {name:>8} {fm * 1e3:9.3f} {rec['fwd_tflops']:8.1f} "
                          f"{bm * 1e3:9.3f} {rec['bwd_tflops']:8.1f} {worst:>9}", flush=True)
                del sets, ref
                if dev == "cuda":
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
