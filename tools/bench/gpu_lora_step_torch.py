"""gpu_lora_step_torch.py - the peer for tools/bench/gpu_lora_step.lua: one LoRA training step
of a Llama in PyTorch + Hugging Face transformers + PEFT, the stack users run today.

    python3 tools/bench/gpu_lora_step_torch.py --shape llama-3.2-1b [--steps 10] [--batch 4]
        [--seq 2048] [--rank 16] [--checkpointing 1] [--base bf16|nf4] [--json out.json]

Same work as luatrain's side: random weights of the named shape in bf16 on the GPU, LoRA
r=16 (alpha 32, no dropout) on every linear layer but lm_head, AdamW on the adapters,
batch x seq tokens of random ids, attention through scaled_dot_product_attention
(attn_implementation="sdpa"), gradient checkpointing as asked. Timed with CUDA events over
`steps` steps after 3 warm-up steps (median); peak memory is
torch.cuda.max_memory_allocated over the timed steps. Also measures the bf16 matmul ceiling
(8192^3 products, median of 20) in the same process, for MFU.
Prints one JSON line (and writes it to --json).

--base nf4 is QLoRA as users run it: every linear layer but lm_head becomes a bitsandbytes
Linear4bit (NF4, double quantization, bf16 compute) before PEFT wraps it. Where bitsandbytes
is not installed it prints {"engine": ..., "unavailable": "..."} and exits 0.
"""
import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hfcompat import llama_config  # noqa: E402

SHAPES = {
    # Llama-3.2-1B
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=8192, rope_theta=500000.0,
                         tie_word_embeddings=True),
    # Llama-3-8B
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=8192, rope_theta=500000.0,
                       tie_word_embeddings=False),
}


def matmul_ceiling():
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    return 2 * n ** 3 / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--checkpointing", type=int, default=1)
    ap.add_argument("--base", default="bf16", choices=["bf16", "nf4"])
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    engine = "pytorch+peft" if args.base == "bf16" else "pytorch+peft+bnb nf4"

    def emit(rec):
        line = json.dumps(rec)
        print(line)
        if args.json:
            with open(args.json, "w") as f:
                f.write(line + "\n")

    if args.base == "nf4":
        try:
            import bitsandbytes as bnb
        except Exception as e:
            emit(dict(engine=engine, shape=args.shape, unavailable=f"bitsandbytes not importable ({e})"))
            return 0

    from transformers import LlamaForCausalLM
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    ceiling = matmul_ceiling()
    cfg = llama_config(**SHAPES[args.shape])
    cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    if args.base == "nf4":
        # each linear but lm_head becomes NF4 (double-quantized absmax), quantized on the
        # move to the device, as from_pretrained(quantization_config=BitsAndBytesConfig(...)) does
        def quantize(parent):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear) and name != "lm_head":
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                          compute_dtype=torch.bfloat16, compress_statistics=True,
                                          quant_type="nf4")
                    q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False,
                                                 compress_statistics=True, quant_type="nf4")
                    setattr(parent, name, q.cuda())
                else:
                    quantize(child)
        quantize(model)
        torch.cuda.empty_cache()
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    # adapters in f32 (master weights), as luatrain keeps them
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    model.train()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(args.steps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        loss = step()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000)
        losses.append(loss.item())
    t = statistics.median(times)
    tokens = args.batch * args.seq
    c = SHAPES[args.shape]
    # model FLOPs per token (recomputation not counted): 4N (forward 2N, backward through
    # the frozen base 2N, activation gradients only; the adapters' own weight gradients are
    # negligible) plus causal attention: QK^T and PV are 4*T*d per token per layer, halved
    # by the mask, and the backward is twice the forward: 6*T*d per layer
    attn = 6 * c["num_hidden_layers"] * args.seq * c["hidden_size"]
    flops_per_token = 4 * n_params + attn
    rec = dict(engine=engine, base=args.base, torch=torch.__version__, shape=args.shape,
               device=torch.cuda.get_device_name(), batch=args.batch, seq=args.seq, rank=args.rank,
               checkpointing=bool(args.checkpointing), params=n_params, trainable=trainable,
               step_s=t, tokens_per_s=tokens / t, peak_bytes=torch.cuda.max_memory_allocated(),
               matmul_ceiling_flops=ceiling, flops_per_token=flops_per_token,
               mfu=tokens / t * flops_per_token / ceiling, loss_first=losses[0], loss_last=losses[-1])
    emit(rec)


if __name__ == "__main__":
    sys.exit(main())
