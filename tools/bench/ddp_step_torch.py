"""ddp_step_torch.py - the PyTorch peer of tools/bench/ddp_step.lua: the same data-parallel
training step of the same stories15M-shaped Llama (tied embeddings, f32 on the CPU),
through torch.nn.parallel.DistributedDataParallel over the gloo back end, one process per
rank started here (torch.multiprocessing), each with its share of the cores.

    /usr/bin/python3 tools/bench/ddp_step_torch.py [--ranks 2 --threads 1 --mode full|lora
        --batch 4 --seq 256 --steps 5 --warmup 2 --json out.json]

--batch is the sequences per rank. mode=lora freezes the model and trains r=16 adapters on
every linear layer but the head (PEFT's layout: A (r, in), B (out, r), scale alpha / r).
Each step: forward with F.cross_entropy, backward (DDP's bucketed all-reduce overlaps it),
clip_grad_norm_, AdamW. Rank 0 prints one JSON line: tokens/s of the job (median step).
"""
import argparse
import json
import os
import queue
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step_torch import Llama  # noqa: E402


class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features) / base.in_features ** 0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def add_lora(model, r=16, alpha=32):
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.blocks:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            setattr(block, name, LoRALinear(getattr(block, name), r, alpha))


def worker(rank, args, port, out):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab, dim, layers, heads, kv, ffn = 32000, 288, 6, 6, 6, 768
    model = Llama(vocab, dim, layers, heads, kv, ffn, args.seq)
    if args.mode == "lora":
        add_lora(model)
    # The buffers (rope tables, the causal mask) are made alike on every rank and gloo cannot
    # broadcast the mask's bool: DDP is told to leave them alone.
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [name for name, _ in model.named_buffers()])
    ddp = nn.parallel.DistributedDataParallel(model)
    params = [p for p in ddp.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    torch.manual_seed(1000 + rank)
    ids = torch.randint(0, vocab, (args.batch, args.seq))
    targets = torch.randint(0, vocab, (args.batch, args.seq))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = ddp(ids)
        loss = F.cross_entropy(logits.view(-1, vocab), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    times = sorted(step() for _ in range(args.steps))
    t = torch.tensor([statistics.median(times)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        tokens = args.batch * args.seq * args.ranks
        out.put(dict(engine="pytorch-ddp-gloo", torch=torch.__version__, mode=args.mode, ranks=args.ranks,
                     threads=args.threads, batch_per_rank=args.batch, seq=args.seq, step_s=t.item(),
                     tokens_per_s=tokens / t.item(),
                     trainable=sum(p.numel() for p in params)))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", default="full", choices=["full", "lora"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--port", type=int, default=29517)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args, args.port, out)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    rec = None
    deadline = time.monotonic() + 1800
    while rec is None:
        try:
            rec = out.get(timeout=5)
        except queue.Empty:
            # a rank that died leaves the others waiting in a collective: stop them all
            if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                sys.exit("ddp_step_torch: a rank failed or the run took over 30 minutes")
    for p in procs:
        p.join(timeout=120)
    line = json.dumps(rec)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
