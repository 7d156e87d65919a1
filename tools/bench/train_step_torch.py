"""train_step_torch.py - the PyTorch peer of tools/bench/train_step.lua.

The same training step on the same stories15M-shaped Llama (tied embeddings, f32 on the
CPU): forward with materialised logits and F.cross_entropy, backward, clip_grad_norm_,
torch.optim.AdamW. This is how a PyTorch user writes it; PyTorch is given every core
(torch.set_num_threads) and its fused attention when the version has one.

    /usr/bin/python3 tools/bench/train_step_torch.py [--mode full|lora|qlora --bf16 --batch 8 --seq 256
        --steps 5 --json out.json]

--mode lora freezes the model and trains r=16 adapters (alpha 32) on every linear layer of the
decoder, as PEFT does (A (r, in), B (out, r)); --mode qlora does the same over NF4 weights with
double quantization, stored packed two codes a byte with one absmax per 64 weights (itself an
8-bit code per block, with one f32 scale per 256 blocks), dequantized in the forward and again
in the backward, as bitsandbytes' 4-bit matmul does on devices where it has no fused kernel.
--bf16 runs forward and backward under torch.autocast("cpu", torch.bfloat16).
"""
import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    """A frozen base (an nn.Linear, or an NF4Linear) plus PEFT's B @ A adapter."""

    def __init__(self, base, r=16, alpha=32):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features) / base.in_features ** 0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def nf4_values():
    """The 16 NF4 levels as the QLoRA paper builds them: normal quantiles, scaled to [-1, 1]."""
    normal = torch.distributions.Normal(0.0, 1.0)
    offset = 0.9677083
    pos = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (v / v.abs().max()).float()


class Dequant4(torch.autograd.Function):
    """x @ W^T with W dequantized from NF4 in the forward and again in the backward."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return x @ layer.weight().to(x.dtype).t()

    @staticmethod
    def backward(ctx, dy):
        return dy @ ctx.layer.weight().to(dy.dtype), None


class NF4Linear(nn.Module):
    def __init__(self, linear, block=64, block2=256):
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.shape = w.shape
        levels = nf4_values()
        flat = w.reshape(-1, block)
        absmax = flat.abs().amax(1).clamp_min(1e-12)
        codes = (flat / absmax[:, None]).unsqueeze(-1).sub(levels).abs().argmin(-1).to(torch.uint8)
        self.register_buffer("levels", levels)
        self.register_buffer("packed", (codes[:, 0::2] << 4 | codes[:, 1::2]).contiguous())
        # double quantization: the absmax values as 8-bit codes around their mean, per 256 blocks
        mean = absmax.mean()
        a = (absmax - mean).reshape(-1, block2) if absmax.numel() % block2 == 0 else (absmax - mean).reshape(1, -1)
        scale2 = a.abs().amax(1).clamp_min(1e-12)
        self.register_buffer("mean", mean)
        self.register_buffer("scale2", scale2)
        self.register_buffer("acodes", torch.round(a / scale2[:, None] * 127).to(torch.int8))

    def weight(self):
        absmax = (self.acodes.float() / 127 * self.scale2[:, None]).reshape(-1) + self.mean
        hi, lo = self.packed >> 4, self.packed & 15
        codes = torch.stack([hi, lo], -1).reshape(hi.shape[0], -1).long()
        return (self.levels[codes] * absmax[:, None]).reshape(self.shape)

    def forward(self, x):
        return Dequant4.apply(x, self)


def add_adapters(model, quantize):
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.blocks:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            base = getattr(block, name)
            setattr(block, name, LoRALinear(NF4Linear(base) if quantize else base))


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, ffn, eps):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)
        self.gate_proj = nn.Linear(dim, ffn, bias=False)
        self.up_proj = nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)
        self.norm1 = RMSNorm(dim, eps)
        self.norm2 = RMSNorm(dim, eps)

    def attention(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if hasattr(F, "scaled_dot_product_attention"):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            s = s.masked_fill(mask, float("-inf"))
            o = torch.softmax(s, dim=-1) @ v
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.norm1(x), cos, sin, mask)
        h = self.norm2(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, vocab, dim, layers, heads, kv_heads, ffn, seq, eps=1e-5, theta=10000.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads, ffn, eps) for _ in range(layers))
        self.norm = RMSNorm(dim, eps)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight
        hd = dim // heads
        inv = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))
        freqs = torch.outer(torch.arange(seq).float(), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos()[None, None], persistent=False)
        self.register_buffer("sin", emb.sin()[None, None], persistent=False)
        self.register_buffer("mask", torch.ones(seq, seq, dtype=torch.bool).triu(1), persistent=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.embed(ids)
        cos, sin, mask = self.cos[:, :, :T], self.sin[:, :, :T], self.mask[:T, :T]
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        return self.lm_head(self.norm(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="")
    ap.add_argument("--mode", default="full", choices=["full", "lora", "qlora"])
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vocab, dim, layers, heads, kv, ffn = 32000, 288, 6, 6, 6, 768
    model = Llama(vocab, dim, layers, heads, kv, ffn, args.seq)
    if args.mode != "full":
        add_adapters(model, args.mode == "qlora")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, vocab, (args.batch, args.seq))
    targets = torch.randint(0, vocab, (args.batch, args.seq))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(ids)
            loss = F.cross_entropy(logits.view(-1, vocab).float(), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item(), time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    times = []
    for i in range(args.steps):
        loss, dt = step()
        times.append(dt)
        print(f"step {i + 1}: {dt * 1000:.1f} ms, loss {loss:.4f}", flush=True)
    med = statistics.median(times)
    tokens = args.batch * args.seq
    summary = {"impl": "pytorch", "version": torch.__version__, "threads": threads, "mode": args.mode,
               "bf16": args.bf16,
               "batch": args.batch, "seq": args.seq, "step_ms": med * 1000,
               "tokens_per_s": tokens / med}
    print(f"pytorch {torch.__version__} {args.mode}{' bf16' if args.bf16 else ''}: "
          f"{summary['tokens_per_s']:.0f} tokens/s "
          f"(median step {med * 1000:.1f} ms, {threads} threads)")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(summary, f)
            f.write("\n")
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
