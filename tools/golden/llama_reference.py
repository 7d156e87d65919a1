#!/usr/bin/python3
"""Independent float64 PyTorch reference of Hugging Face's Llama, and the golden
fixture generator for luatrain's model tests.

Rerun (from the repository root; needs Debian's torch, so use /usr/bin/python3,
not a pyenv `python3`):

    /usr/bin/python3 tools/golden/llama_reference.py --out tests/fixtures

The output is deterministic (fixed seeds, float64 math on the CPU). The script
first runs its own sanity checks (finite differences, RoPE/GQA/causality
cross-checks, tied vs untied gradients, its own AdamW vs torch.optim.AdamW,
loss decrease) and then re-reads every file it wrote with its own safetensors
reader. `--skip-checks` skips the model checks (the file re-read always runs).

What it writes under --out:

  llama_tiny_gqa/                  config A: V=131, C=64, I=176, L=2, H=8, KV=2,
                                   head_dim 8 (derived: not in config.json),
                                   rope "llama3" scaling, tied embeddings
      config.json                  Hugging Face LlamaConfig format (sorted keys)
      model.safetensors            F32 weights, Hugging Face tensor names
      golden.safetensors           reference outputs, see below
  llama_tiny_mha/                  config B: V=97, C=48, I=100, L=2, H=KV=4,
                                   explicit head_dim 16 (q_proj (64,48),
                                   o_proj (48,64)), no rope scaling, untied
      config.json, model.safetensors, golden.safetensors
  llama_tiny_mha_sharded_bf16/     config B's weights rounded to BF16
                                   (round-to-nearest-even from the F32 values),
                                   split over two shards + index json
      config.json ("torch_dtype": "bfloat16")
      model-00001-of-00002.safetensors, model-00002-of-00002.safetensors
      model.safetensors.index.json {"metadata": {"total_size": N},
                                    "weight_map": {name: shard file}}
  README.md

golden.safetensors (F32 unless noted; B=2, T=20):
  input_ids (B,T) I64            token ids in [0, V)
  targets (B,T) I64              target of each position (already aligned: no
                                 shift inside the loss); -100 = ignored
                                 (row 0 positions 0..4, row 1 positions 17..19)
  logits (B,T,V)                 lm_head output
  loss ()                        mean cross-entropy over targets != -100
  hidden.layer0 (B,T,C)          residual stream after decoder layer 0
  hidden.final (B,T,C)           output of model.norm (input of lm_head)
  rope.inv_freq (D/2,)           inverse frequencies after rope scaling
  rope.cos, rope.sin (T, D/2)    cos/sin(pos * inv_freq), pos = 0..T-1
  grad.<param> (param shape)     d loss / d param at the initial weights (tied:
                                 one summed gradient under
                                 model.embed_tokens.weight; no lm_head entry)
  train.losses (10,)             loss at the start of each AdamW step
  train.grad_norms (10,)         pre-clip global L2 grad norm of each step
  train.final_loss ()            loss after the 10th update
  final.<param> (param shape)    every parameter after the 10th update
The safetensors __metadata__ holds the hyper-parameters as strings.

Math (checked against transformers' modeling_llama.py / modeling_rope_utils.py):
  RMSNorm(x) = w * x * rsqrt(mean(x^2, -1) + eps)
  inv_freq[i] = 1 / theta^(2i/D), i = 0..D/2-1, D = head_dim
    "linear":  inv_freq / factor (HF: equivalent to positions / factor)
    "llama3":  wavelen = 2*pi/inv_freq; lo_wl = orig/low_freq_factor,
               hi_wl = orig/high_freq_factor;
               wavelen > lo_wl: inv_freq/factor; wavelen < hi_wl: unchanged;
               else s = (orig/wavelen - low)/(high - low),
                    inv_freq = (1-s)*inv_freq/factor + s*inv_freq
  cos/sin = cos/sin(cat(pos*inv_freq, pos*inv_freq)); q' = q*cos + rotate_half(q)*sin,
  rotate_half(x) = cat(-x[D/2:], x[:D/2]); query head h uses kv head h // (H/KV);
  softmax(q k^T / sqrt(D) + causal mask) v -> o_proj; x += attn; x += down(silu(gate(n)) * up(n));
  logits = norm(x) @ lm_head^T (lm_head = embed_tokens when tied).
Training: torch.optim.AdamW(lr 3e-3, betas (0.9, 0.95), eps 1e-8), weight decay 0.1
for 2-D weights and 0.0 for the 1-D norm weights; before each step
torch.nn.utils.clip_grad_norm_(params, 1.0). All in float64, starting from the
F32-rounded weights stored in model.safetensors.
"""

import argparse
import json
import math
import os
import struct
import sys

import torch

# ----------------------------------------------------------------------------------
# Hyper-parameters of the fixtures
# ----------------------------------------------------------------------------------

BATCH = 2
SEQ = 20
STEPS = 10
LR = 3e-3
BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.1
NORM_WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0
INIT_STD = 0.2
NORM_INIT_STD = 0.1
IGNORE_INDEX = -100

CONFIG_A = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 176,
    "max_position_embeddings": 64,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 8,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 16,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "transformers_version": "4.46.0",
    "use_cache": True,
    "vocab_size": 131,
}

CONFIG_B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 48,
    "initializer_range": 0.02,
    "intermediate_size": 100,
    "max_position_embeddings": 32,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 4,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.46.0",
    "use_cache": True,
    "vocab_size": 97,
}

# Mistral's Hugging Face config: the Llama math with GQA, rope_theta 1e6, no biases, and a
# sliding window (keys more than sliding_window - 1 positions back are masked). luatrain
# refuses sequences longer than the window, so the window (32) is above T = 20 here; the
# reference implements it anyway (checked in check_model against a per-position loop).
CONFIG_C = {
    "architectures": ["MistralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 48,
    "initializer_range": 0.02,
    "intermediate_size": 96,
    "max_position_embeddings": 64,
    "model_type": "mistral",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": 32,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.46.0",
    "use_cache": True,
    "vocab_size": 89,
}

SEED_A = 20240601
SEED_B = 20240602
SEED_C = 20240603
SEED_D = 20240604
SEED_E = 20240605

# Qwen2 / Qwen2.5: the Llama math with q, k and v biases, GQA, rope_theta 1e6, untied;
# its sliding window is off (use_sliding_window false)
CONFIG_E = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 48,
    "initializer_range": 0.02,
    "intermediate_size": 112,
    "max_position_embeddings": 64,
    "max_window_layers": 2,
    "model_type": "qwen2",
    "num_attention_heads": 6,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 32,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.46.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 83,
}

# Qwen3: per-head RMSNorm of q and k (q_norm, k_norm), explicit head_dim, no biases, tied
# embeddings; its sliding_window is off (use_sliding_window false)
CONFIG_D = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 80,
    "max_position_embeddings": 64,
    "max_window_layers": 2,
    "model_type": "qwen3",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 101,
}

# ----------------------------------------------------------------------------------
# safetensors: writer and reader (plain Python)
# ----------------------------------------------------------------------------------

_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
             "I8": 1, "U8": 1, "BOOL": 1}


def f32_bits(values):
    """list of floats (already f32-representable or not) -> list of u32 bit patterns."""
    n = len(values)
    return list(struct.unpack("<%dI" % n, struct.pack("<%df" % n, *values)))


def bf16_bits_rne(values):
    """f32 values -> BF16 bit patterns, round to nearest, ties to even (finite inputs)."""
    out = []
    for u in f32_bits(values):
        if (u & 0x7F800000) == 0x7F800000:  # inf / nan: truncate, keep nan quiet
            hi = u >> 16
            if (u & 0x007FFFFF) and not (hi & 0x7F):
                hi |= 0x40
            out.append(hi)
            continue
        lsb = (u >> 16) & 1
        out.append(((u + 0x7FFF + lsb) >> 16) & 0xFFFF)
    return out


def bf16_bits_to_float(bits):
    n = len(bits)
    return list(struct.unpack("<%df" % n, struct.pack("<%dI" % n, *[b << 16 for b in bits])))


def encode_tensor(t, dtype):
    """torch tensor -> (bytes, shape) in the given safetensors dtype."""
    shape = list(t.shape)
    flat = t.detach().reshape(-1).tolist()
    n = len(flat)
    if dtype == "F32":
        data = struct.pack("<%df" % n, *flat)
    elif dtype == "F64":
        data = struct.pack("<%dd" % n, *flat)
    elif dtype == "I64":
        data = struct.pack("<%dq" % n, *[int(v) for v in flat])
    elif dtype == "BF16":
        data = struct.pack("<%dH" % n, *bf16_bits_rne(flat))
    else:
        raise ValueError("unsupported dtype " + dtype)
    return data, shape


def write_safetensors(path, items, metadata=None):
    """items: list of (name, tensor, dtype) in file order. Returns the data size."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, t, dtype in items:
        if name in header:
            raise ValueError("duplicate tensor name " + name)
        data, shape = encode_tensor(t, dtype)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    return offset


def read_safetensors(path):
    """Strict reader. Returns (metadata, {name: (dtype, shape, python list of values)}).
    Checks: header length, padding, JSON, dtype x shape = bytes, offsets tile the buffer."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("file too short")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if hlen % 8 != 0 or 8 + hlen > len(raw):
        raise ValueError("bad header length %d" % hlen)
    htext = raw[8:8 + hlen].decode("utf-8")
    header = json.loads(htext)
    if not htext.startswith("{"):
        raise ValueError("header does not start with {")
    buf = raw[8 + hlen:]
    meta = header.pop("__metadata__", None)
    if meta is not None:
        for k, v in meta.items():
            if not isinstance(v, str):
                raise ValueError("metadata value not a string: " + k)
    spans = []
    out = {}
    for name, info in header.items():
        dtype, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        n = 1
        for s in shape:
            n *= s
        if e - b != n * _ST_SIZES[dtype]:
            raise ValueError("%s: %d bytes for %s %s" % (name, e - b, dtype, shape))
        spans.append((b, e, name))
        chunk = buf[b:e]
        if dtype == "F32":
            vals = list(struct.unpack("<%df" % n, chunk))
        elif dtype == "F64":
            vals = list(struct.unpack("<%dd" % n, chunk))
        elif dtype == "I64":
            vals = list(struct.unpack("<%dq" % n, chunk))
        elif dtype == "BF16":
            vals = bf16_bits_to_float(list(struct.unpack("<%dH" % n, chunk)))
        else:
            raise ValueError("reader: unsupported dtype " + dtype)
        out[name] = (dtype, shape, vals)
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise ValueError("offsets do not tile the buffer at %s (%d != %d)" % (name, b, pos))
        pos = e
    if pos != len(buf):
        raise ValueError("buffer has %d bytes, tensors cover %d" % (len(buf), pos))
    return meta, out


# ----------------------------------------------------------------------------------
# The reference model (float64, functional)
# ----------------------------------------------------------------------------------

class Cfg:
    def __init__(self, d):
        self.raw = d
        self.V = d["vocab_size"]
        self.C = d["hidden_size"]
        self.I = d["intermediate_size"]
        self.L = d["num_hidden_layers"]
        self.H = d["num_attention_heads"]
        self.KV = d.get("num_key_value_heads") or self.H
        self.D = d.get("head_dim") or self.C // self.H
        self.eps = d["rms_norm_eps"]
        self.theta = d["rope_theta"]
        self.rope_scaling = d.get("rope_scaling")
        self.tied = d.get("tie_word_embeddings", True)
        # Mistral's sliding window; Qwen configs carry one that use_sliding_window turns off
        self.window = d.get("sliding_window") if d.get("use_sliding_window", True) else None
        # Qwen3: RMSNorm over each head's D values of q and k (weights (D)), before RoPE
        self.qk_norm = d.get("model_type") == "qwen3"
        # Qwen2 / Qwen2.5: biases on q, k and v (not o)
        self.qkv_bias = d.get("model_type") == "qwen2"
        assert self.H % self.KV == 0 and self.D % 2 == 0


def param_shapes(cfg):
    """Hugging Face parameter names and shapes, in state_dict order."""
    shapes = [("model.embed_tokens.weight", (cfg.V, cfg.C))]
    for i in range(cfg.L):
        p = "model.layers.%d." % i
        shapes += [
            (p + "self_attn.q_proj.weight", (cfg.H * cfg.D, cfg.C)),
            (p + "self_attn.k_proj.weight", (cfg.KV * cfg.D, cfg.C)),
            (p + "self_attn.v_proj.weight", (cfg.KV * cfg.D, cfg.C)),
            (p + "self_attn.o_proj.weight", (cfg.C, cfg.H * cfg.D)),
        ]
        if cfg.qk_norm:
            shapes += [(p + "self_attn.q_norm.weight", (cfg.D,)), (p + "self_attn.k_norm.weight", (cfg.D,))]
        if cfg.qkv_bias:
            shapes += [(p + "self_attn.q_proj.bias", (cfg.H * cfg.D,)), (p + "self_attn.k_proj.bias", (cfg.KV * cfg.D,)),
                       (p + "self_attn.v_proj.bias", (cfg.KV * cfg.D,))]
        shapes += [
            (p + "mlp.gate_proj.weight", (cfg.I, cfg.C)),
            (p + "mlp.up_proj.weight", (cfg.I, cfg.C)),
            (p + "mlp.down_proj.weight", (cfg.C, cfg.I)),
            (p + "input_layernorm.weight", (cfg.C,)),
            (p + "post_attention_layernorm.weight", (cfg.C,)),
        ]
    shapes.append(("model.norm.weight", (cfg.C,)))
    if not cfg.tied:
        shapes.append(("lm_head.weight", (cfg.V, cfg.C)))
    return shapes


def init_params(cfg, seed):
    """Random weights, rounded to f32 (what is stored), returned as f64 leaves."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in param_shapes(cfg):
        if name.endswith(".bias"):
            w = INIT_STD * torch.randn(shape, generator=g, dtype=torch.float64)
        elif len(shape) == 1:
            w = 1.0 + NORM_INIT_STD * torch.randn(shape, generator=g, dtype=torch.float64)
        else:
            w = INIT_STD * torch.randn(shape, generator=g, dtype=torch.float64)
        params[name] = w.to(torch.float32).to(torch.float64)
    return params


def rope_inv_freq(cfg):
    """Inverse frequencies (D/2,), float64, with HF's rope_scaling rules."""
    D = cfg.D
    idx = torch.arange(0, D, 2, dtype=torch.float64)
    inv_freq = 1.0 / (cfg.theta ** (idx / D))
    rs = cfg.rope_scaling
    if rs is None:
        return inv_freq
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / rs["factor"]
    if kind == "llama3":
        factor = rs["factor"]
        low = rs["low_freq_factor"]
        high = rs["high_freq_factor"]
        orig = rs["original_max_position_embeddings"]
        low_wl = orig / low
        high_wl = orig / high
        out = []
        for f in inv_freq.tolist():
            wl = 2.0 * math.pi / f
            if wl < high_wl:
                out.append(f)
            elif wl > low_wl:
                out.append(f / factor)
            else:
                s = (orig / wl - low) / (high - low)
                out.append((1.0 - s) * f / factor + s * f)
        return torch.tensor(out, dtype=torch.float64)
    raise ValueError("rope type not covered by this reference: %s" % kind)


def rope_tables(cfg, T):
    inv = rope_inv_freq(cfg)
    pos = torch.arange(T, dtype=torch.float64)
    ang = pos[:, None] * inv[None, :]  # (T, D/2)
    return inv, torch.cos(ang), torch.sin(ang)


def rms_norm(x, w, eps):
    var = (x * x).mean(dim=-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x, cos_half, sin_half):
    # x: (B, heads, T, D); tables (T, D/2) -> (T, D) = cat(t, t)
    cos = torch.cat((cos_half, cos_half), dim=-1)
    sin = torch.cat((sin_half, sin_half), dim=-1)
    return x * cos + rotate_half(x) * sin


def attention(cfg, p, prefix, h, cos_half, sin_half):
    B, T, _ = h.shape
    H, KV, D = cfg.H, cfg.KV, cfg.D
    def proj(name):
        y = h @ p[prefix + name + ".weight"].t()
        return y + p[prefix + name + ".bias"] if cfg.qkv_bias else y
    q = proj("q_proj").view(B, T, H, D).transpose(1, 2)
    k = proj("k_proj").view(B, T, KV, D).transpose(1, 2)
    if cfg.qk_norm:
        q = rms_norm(q, p[prefix + "q_norm.weight"], cfg.eps)
        k = rms_norm(k, p[prefix + "k_norm.weight"], cfg.eps)
    v = proj("v_proj").view(B, T, KV, D).transpose(1, 2)
    q = apply_rope(q, cos_half, sin_half)
    k = apply_rope(k, cos_half, sin_half)
    rep = H // KV
    if rep > 1:  # HF repeat_kv: kv head j serves query heads j*rep .. j*rep+rep-1
        k = k[:, :, None].expand(B, KV, rep, T, D).reshape(B, H, T, D)
        v = v[:, :, None].expand(B, KV, rep, T, D).reshape(B, H, T, D)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    if cfg.window is not None:  # query i sees keys j with i - window < j <= i
        future = future | torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-cfg.window)
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    o = (probs @ v).transpose(1, 2).reshape(B, T, H * D)
    return o @ p[prefix + "o_proj.weight"].t()


def mlp(p, prefix, h):
    g = h @ p[prefix + "gate_proj.weight"].t()
    u = h @ p[prefix + "up_proj.weight"].t()
    a = g * torch.sigmoid(g) * u  # silu(g) * u
    return a @ p[prefix + "down_proj.weight"].t()


def forward(cfg, p, input_ids):
    """Returns logits (B,T,V), hidden after layer 0, final-norm output."""
    B, T = input_ids.shape
    _, cos_half, sin_half = rope_tables(cfg, T)
    x = p["model.embed_tokens.weight"][input_ids]
    layer0 = None
    for i in range(cfg.L):
        pre = "model.layers.%d." % i
        h = rms_norm(x, p[pre + "input_layernorm.weight"], cfg.eps)
        x = x + attention(cfg, p, pre + "self_attn.", h, cos_half, sin_half)
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], cfg.eps)
        x = x + mlp(p, pre + "mlp.", h)
        if i == 0:
            layer0 = x
    hf = rms_norm(x, p["model.norm.weight"], cfg.eps)
    head = p["model.embed_tokens.weight"] if cfg.tied else p["lm_head.weight"]
    logits = hf @ head.t()
    return logits, layer0, hf


def ce_loss(logits, targets):
    """Mean cross-entropy over positions whose target != -100 (no shifting)."""
    V = logits.shape[-1]
    lf = logits.reshape(-1, V)
    tf = targets.reshape(-1)
    keep = tf != IGNORE_INDEX
    lf = lf[keep]
    tf = tf[keep]
    m = lf.max(dim=-1, keepdim=True).values.detach()
    lse = (lf - m).exp().sum(dim=-1).log() + m.squeeze(-1)
    picked = lf.gather(1, tf[:, None]).squeeze(1)
    return (lse - picked).mean()


def loss_fn(cfg, p, ids, tgt):
    return ce_loss(forward(cfg, p, ids)[0], tgt)


def make_batch(cfg, seed):
    g = torch.Generator().manual_seed(seed + 7)
    ids = torch.randint(0, cfg.V, (BATCH, SEQ), generator=g, dtype=torch.int64)
    tgt = torch.randint(0, cfg.V, (BATCH, SEQ), generator=g, dtype=torch.int64)
    tgt[0, :5] = IGNORE_INDEX
    tgt[1, -3:] = IGNORE_INDEX
    return ids, tgt


def leaves(params):
    return {k: v.clone().requires_grad_(True) for k, v in params.items()}


def gradients(cfg, params, ids, tgt):
    p = leaves(params)
    loss = loss_fn(cfg, p, ids, tgt)
    grads = torch.autograd.grad(loss, [p[k] for k in p])
    return loss.detach(), {k: g for k, g in zip(p, grads)}


def param_groups(p):
    decay = [v for k, v in p.items() if v.dim() == 2]
    no_decay = [v for k, v in p.items() if v.dim() == 1]
    return [{"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": NORM_WEIGHT_DECAY}]


def train(cfg, params, ids, tgt, steps=STEPS):
    p = leaves(params)
    opt = torch.optim.AdamW(param_groups(p), lr=LR, betas=BETAS, eps=ADAM_EPS)
    losses, norms = [], []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(cfg, p, ids, tgt)
        loss.backward()
        total = torch.nn.utils.clip_grad_norm_(list(p.values()), MAX_GRAD_NORM)
        losses.append(loss.item())
        norms.append(total.item())
        opt.step()
    with torch.no_grad():
        final_loss = loss_fn(cfg, p, ids, tgt).item()
    return losses, norms, {k: v.detach().clone() for k, v in p.items()}, final_loss


def train_manual(cfg, params, ids, tgt, steps=STEPS):
    """Same run with a hand-written clip + AdamW (the formula torch 1.13 uses)."""
    p = {k: v.clone() for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    s = {k: torch.zeros_like(v) for k, v in p.items()}
    b1, b2 = BETAS
    losses, norms = [], []
    for t in range(1, steps + 1):
        loss, g = gradients(cfg, p, ids, tgt)
        total = math.sqrt(sum(float((gi * gi).sum()) for gi in g.values()))
        coef = min(MAX_GRAD_NORM / (total + 1e-6), 1.0)
        losses.append(loss.item())
        norms.append(total)
        for k in p:
            gk = g[k] * coef
            wd = WEIGHT_DECAY if p[k].dim() == 2 else NORM_WEIGHT_DECAY
            p[k] = p[k] * (1.0 - LR * wd)
            m[k] = b1 * m[k] + (1.0 - b1) * gk
            s[k] = b2 * s[k] + (1.0 - b2) * gk * gk
            bc1 = 1.0 - b1 ** t
            bc2 = 1.0 - b2 ** t
            p[k] = p[k] - (LR / bc1) * m[k] / (s[k].sqrt() / math.sqrt(bc2) + ADAM_EPS)
    return losses, norms, p


# ----------------------------------------------------------------------------------
# Sanity checks of the reference itself
# ----------------------------------------------------------------------------------

def log(msg):
    print(msg, flush=True)


def check_model(cfg, params, ids, tgt, name):
    torch.manual_seed(0)
    # 1. gradients vs central finite differences
    loss, g = gradients(cfg, params, ids, tgt)
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
             "model.layers.0.self_attn.o_proj.weight", "model.layers.1.mlp.gate_proj.weight",
             "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
             "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"]
    if not cfg.tied:
        names.append("lm_head.weight")
    worst = 0.0
    gen = torch.Generator().manual_seed(1)
    for n in names:
        w = params[n]
        for _ in range(3):
            j = int(torch.randint(0, w.numel(), (1,), generator=gen))
            if n == "model.embed_tokens.weight" and _ == 0:
                j = int(ids[0, 7]) * cfg.C + 3  # an entry that is looked up (and used as lm_head)
            h = 1e-5
            pp = dict(params)
            wp = w.clone().view(-1); wp[j] += h; pp[n] = wp.view(w.shape)
            lp = loss_fn(cfg, pp, ids, tgt).item()
            wm = w.clone().view(-1); wm[j] -= h; pp[n] = wm.view(w.shape)
            lm = loss_fn(cfg, pp, ids, tgt).item()
            fd = (lp - lm) / (2 * h)
            an = g[n].reshape(-1)[j].item()
            err = abs(fd - an) / max(1e-6, abs(fd) + abs(an))
            worst = max(worst, err)
    log("  [%s] finite-difference gradient check: worst rel err %.2e" % (name, worst))
    assert worst < 1e-6, worst

    # 2. rotate_half RoPE == complex rotation of pairs (i, i + D/2)
    T = ids.shape[1]
    _, ch, sh = rope_tables(cfg, T)
    x = torch.randn(2, 3, T, cfg.D, dtype=torch.float64)
    y = apply_rope(x, ch, sh)
    hd = cfg.D // 2
    z = torch.complex(x[..., :hd], x[..., hd:]) * torch.polar(torch.ones_like(ch), torch.atan2(sh, ch))
    y2 = torch.cat((z.real, z.imag), dim=-1)
    assert torch.allclose(y, y2, atol=1e-12)

    # 3. GQA: repeat_kv mapping == per-head loop with kv head h // rep (and the sliding
    # window, when there is one, as a slice of the keys)
    p = params
    B = ids.shape[0]
    hin = torch.randn(B, T, cfg.C, dtype=torch.float64)
    pre = "model.layers.0.self_attn."
    ref = attention(cfg, p, pre, hin, ch, sh)
    rep = cfg.H // cfg.KV
    Wq = p[pre + "q_proj.weight"].view(cfg.H, cfg.D, cfg.C)
    Wk = p[pre + "k_proj.weight"].view(cfg.KV, cfg.D, cfg.C)
    Wv = p[pre + "v_proj.weight"].view(cfg.KV, cfg.D, cfg.C)
    outs = []
    for hh in range(cfg.H):
        qh, kh, vh = hin @ Wq[hh].t(), hin @ Wk[hh // rep].t(), hin @ Wv[hh // rep].t()
        if cfg.qkv_bias:  # head hh's slice of each bias
            qh = qh + p[pre + "q_proj.bias"].view(cfg.H, cfg.D)[hh]
            kh = kh + p[pre + "k_proj.bias"].view(cfg.KV, cfg.D)[hh // rep]
            vh = vh + p[pre + "v_proj.bias"].view(cfg.KV, cfg.D)[hh // rep]
        if cfg.qk_norm:  # per head, per position: x / rms(x) * w
            qh = qh / torch.sqrt((qh * qh).mean(-1, keepdim=True) + cfg.eps) * p[pre + "q_norm.weight"]
            kh = kh / torch.sqrt((kh * kh).mean(-1, keepdim=True) + cfg.eps) * p[pre + "k_norm.weight"]
        q = apply_rope(qh[:, None], ch, sh)[:, 0]
        k = apply_rope(kh[:, None], ch, sh)[:, 0]
        v = vh
        o = torch.zeros(B, T, cfg.D, dtype=torch.float64)
        for t in range(T):
            s0 = 0 if cfg.window is None else max(0, t - cfg.window + 1)  # the window's first key
            sc = (q[:, t:t + 1] @ k[:, s0:t + 1].transpose(1, 2)) / math.sqrt(cfg.D)
            o[:, t] = (torch.softmax(sc, -1) @ v[:, s0:t + 1])[:, 0]
        outs.append(o)
    ref2 = torch.cat(outs, dim=-1) @ p[pre + "o_proj.weight"].t()
    assert torch.allclose(ref, ref2, atol=1e-10), (ref - ref2).abs().max()

    # 4. causality: changing the last token changes only the last position's logits
    l1 = forward(cfg, params, ids)[0]
    ids2 = ids.clone(); ids2[:, -1] = (ids2[:, -1] + 1) % cfg.V
    l2 = forward(cfg, params, ids2)[0]
    assert torch.equal(l1[:, :-1], l2[:, :-1]) and not torch.equal(l1[:, -1], l2[:, -1])

    # 5. own CE == torch's cross_entropy
    ce = torch.nn.functional.cross_entropy(l1.reshape(-1, cfg.V), tgt.reshape(-1), ignore_index=-100)
    assert abs(ce.item() - ce_loss(l1, tgt).item()) < 1e-12

    # 6. tied weights: gradient == (grad as embedding) + (grad as lm_head), via an untied copy
    if cfg.tied:
        import copy
        raw = copy.deepcopy(cfg.raw); raw["tie_word_embeddings"] = False
        ucfg = Cfg(raw)
        up = dict(params); up["lm_head.weight"] = params["model.embed_tokens.weight"].clone()
        _, ug = gradients(ucfg, up, ids, tgt)
        s = ug["model.embed_tokens.weight"] + ug["lm_head.weight"]
        assert torch.allclose(s, g["model.embed_tokens.weight"], atol=1e-13)
        log("  [%s] tied grad = embedding grad + lm_head grad: ok" % name)

    # 7. torch.optim.AdamW + clip_grad_norm_ == the hand-written formula
    la, na, pa, _ = train(cfg, params, ids, tgt, steps=3)
    lb, nb, pb = train_manual(cfg, params, ids, tgt, steps=3)
    dl = max(abs(a - b) for a, b in zip(la + na, lb + nb))
    dp = max((pa[k] - pb[k]).abs().max().item() for k in pa)
    log("  [%s] AdamW vs hand-written: max |dloss,dnorm| %.1e, max |dparam| %.1e" % (name, dl, dp))
    assert dl < 1e-12 and dp < 1e-12
    log("  [%s] RoPE, GQA, causality, cross-entropy checks: ok" % name)


def hf_f32_inv_freq(cfg):
    """HF's inv_freq as float32 arithmetic, for the report only (how far f64 is)."""
    D = cfg.D
    inv = 1.0 / (cfg.theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = cfg.rope_scaling
    if rs is not None and rs.get("rope_type", rs.get("type")) == "llama3":
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        orig = rs["original_max_position_embeddings"]
        wl = 2 * math.pi / inv
        il = torch.where(wl > orig / low, inv / factor, inv)
        sm = (orig / wl - low) / (high - low)
        smi = (1 - sm) * il / factor + sm * il
        med = ~(wl < orig / high) * ~(wl > orig / low)
        inv = torch.where(med, smi, il)
    return inv


# ----------------------------------------------------------------------------------
# Fixture generation
# ----------------------------------------------------------------------------------

def write_config(folder, d):
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(json.dumps(d, indent=2, sort_keys=True) + "\n")


def metadata(cfg, seed, name):
    return {
        "format": "pt",
        "fixture": name,
        "generator": "tools/golden/llama_reference.py",
        "torch_version": torch.__version__,
        "seed": str(seed),
        "batch_size": str(BATCH),
        "seq_len": str(SEQ),
        "vocab_size": str(cfg.V),
        "head_dim": str(cfg.D),
        "ignore_index": str(IGNORE_INDEX),
        "loss": "mean cross-entropy over positions with targets != ignore_index; targets already aligned (no shift)",
        "optimizer": "torch.optim.AdamW",
        "lr": repr(LR),
        "beta1": repr(BETAS[0]),
        "beta2": repr(BETAS[1]),
        "eps": repr(ADAM_EPS),
        "weight_decay": repr(WEIGHT_DECAY),
        "weight_decay_1d": repr(NORM_WEIGHT_DECAY),
        "weight_decay_rule": "weight_decay for every 2-D weight, weight_decay_1d for the 1-D norm weights",
        "max_grad_norm": repr(MAX_GRAD_NORM),
        "clip": "torch.nn.utils.clip_grad_norm_: total=L2 of all grads; grads *= min(1, max_norm/(total+1e-6))",
        "steps": str(STEPS),
        "compute_dtype": "float64 from the F32 weights in model.safetensors",
    }


def model_items(cfg, params, dtype):
    return [(n, params[n], dtype) for n, _ in param_shapes(cfg)]


def generate(cfg_dict, seed, folder_name, out, do_checks, written):
    cfg = Cfg(cfg_dict)
    folder = os.path.join(out, folder_name)
    os.makedirs(folder, exist_ok=True)
    params = init_params(cfg, seed)
    ids, tgt = make_batch(cfg, seed)
    log("%s: V=%d C=%d I=%d L=%d H=%d KV=%d D=%d tied=%s rope=%s" % (
        folder_name, cfg.V, cfg.C, cfg.I, cfg.L, cfg.H, cfg.KV, cfg.D, cfg.tied,
        (cfg.rope_scaling or {}).get("rope_type", "default")))
    if do_checks:
        check_model(cfg, params, ids, tgt, folder_name)

    write_config(folder, cfg_dict)
    write_safetensors(os.path.join(folder, "model.safetensors"), model_items(cfg, params, "F32"),
                      {"format": "pt"})

    with torch.no_grad():
        logits, layer0, hfinal = forward(cfg, params, ids)
    loss, grads = gradients(cfg, params, ids, tgt)
    inv, cos_h, sin_h = rope_tables(cfg, SEQ)
    losses, norms, final, final_loss = train(cfg, params, ids, tgt)
    assert abs(losses[0] - loss.item()) < 1e-12
    log("  loss %.6f" % loss.item())
    log("  train.losses     " + " ".join("%.5f" % v for v in losses))
    log("  train.grad_norms " + " ".join("%.4f" % v for v in norms))
    log("  train.final_loss %.6f" % final_loss)
    log("  rope.inv_freq (f64) " + " ".join("%.9g" % v for v in inv.tolist()))
    d32 = (hf_f32_inv_freq(cfg).double() - inv).abs().div(inv).max().item()
    log("  max rel diff of HF-style f32 inv_freq vs f64: %.1e" % d32)
    if do_checks:
        assert all(b < a for a, b in zip(losses, losses[1:])), "loss does not decrease monotonically"
        assert final_loss < losses[-1]

    items = [("input_ids", ids, "I64"), ("targets", tgt, "I64"),
             ("logits", logits, "F32"), ("loss", loss.reshape(()), "F32"),
             ("hidden.layer0", layer0, "F32"), ("hidden.final", hfinal, "F32"),
             ("rope.inv_freq", inv, "F32"), ("rope.cos", cos_h, "F32"), ("rope.sin", sin_h, "F32")]
    items += [("grad." + n, grads[n], "F32") for n, _ in param_shapes(cfg)]
    items += [("train.losses", torch.tensor(losses, dtype=torch.float64), "F32"),
              ("train.grad_norms", torch.tensor(norms, dtype=torch.float64), "F32"),
              ("train.final_loss", torch.tensor(final_loss, dtype=torch.float64), "F32")]
    items += [("final." + n, final[n], "F32") for n, _ in param_shapes(cfg)]
    write_safetensors(os.path.join(folder, "golden.safetensors"), items, metadata(cfg, seed, folder_name))

    written.append((os.path.join(folder, "model.safetensors"), model_items(cfg, params, "F32")))
    written.append((os.path.join(folder, "golden.safetensors"), items))
    return cfg, params


def generate_sharded_bf16(cfg, params, folder_name, out, written):
    folder = os.path.join(out, folder_name)
    os.makedirs(folder, exist_ok=True)
    d = dict(cfg.raw)
    d["torch_dtype"] = "bfloat16"
    write_config(folder, d)
    names = [n for n, _ in param_shapes(cfg)]
    split = names.index("model.layers.1.self_attn.q_proj.weight")
    shards = [names[:split], names[split:]]
    weight_map = {}
    total = 0
    for i, group in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        items = [(n, params[n], "BF16") for n in group]
        total += write_safetensors(os.path.join(folder, fname), items, {"format": "pt"})
        for n in group:
            weight_map[n] = fname
        written.append((os.path.join(folder, fname), items))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    log("%s: %d tensors in %d shards, total_size %d bytes" % (folder_name, len(names), len(shards), total))


def verify_written(written, out):
    """Re-read every file with the strict reader and compare values exactly."""
    for path, items in written:
        meta, tensors = read_safetensors(path)
        assert meta is not None and meta.get("format") == "pt", path
        assert list(tensors.keys()) == [n for n, _, _ in items], path
        for name, t, dtype in items:
            fd, shape, vals = tensors[name]
            assert fd == dtype and shape == list(t.shape), (path, name)
            flat = t.detach().reshape(-1)
            if dtype == "I64":
                want = [int(v) for v in flat.tolist()]
            elif dtype == "F32":
                want = flat.to(torch.float32).tolist()
            elif dtype == "BF16":
                want = flat.to(torch.float32).to(torch.bfloat16).to(torch.float32).tolist()
            assert vals == want, (path, name)  # BF16: own RNE == torch's rounding
    # sharded index vs shard contents
    for root, _, files in os.walk(out):
        if "model.safetensors.index.json" in files:
            with open(os.path.join(root, "model.safetensors.index.json")) as f:
                idx = json.load(f)
            total = 0
            seen = set()
            for fname in sorted(set(idx["weight_map"].values())):
                _, ts = read_safetensors(os.path.join(root, fname))
                for n, (dt, shape, vals) in ts.items():
                    assert idx["weight_map"][n] == fname
                    total += len(vals) * _ST_SIZES[dt]
                    seen.add(n)
            assert seen == set(idx["weight_map"]) and total == idx["metadata"]["total_size"]
    log("re-read %d safetensors files: headers, offsets and values ok" % len(written))


README = """# Golden fixtures

Made by an independent float64 PyTorch reference of Hugging Face's Llama
(`tools/golden/llama_reference.py`, which documents the math). Regenerate with:

    /usr/bin/python3 tools/golden/llama_reference.py --out tests/fixtures

(Debian's torch; plain `python3` may be a Python without torch.) Output is deterministic.

| folder | model |
| --- | --- |
| `llama_tiny_gqa/` | V=131, C=64, I=176, 2 layers, 8 heads, 2 KV heads, head_dim 8 (derived, not in config.json), rope_theta 5e5 with `llama3` rope scaling (factor 8, low 1, high 4, original 16), tied embeddings, eps 1e-5 |
| `llama_tiny_mha/` | V=97, C=48, I=100, 2 layers, 4 heads = 4 KV heads, explicit head_dim 16 (q_proj (64,48), o_proj (48,64)), rope_theta 1e4, no rope scaling, untied lm_head, eps 1e-6 |
| `mistral_tiny/` | Mistral: V=89, C=48, I=96, 2 layers, 4 heads, 2 KV heads, rope_theta 1e6, untied, eps 1e-5, `sliding_window` 32 (above T=20: luatrain refuses longer sequences) |
| `qwen3_tiny/` | Qwen3: V=101, C=32, I=80, 2 layers, 4 heads, 2 KV heads, explicit head_dim 16 (q_proj (64,32)), per-head `q_norm`/`k_norm` RMSNorm before RoPE, rope_theta 1e6, tied, eps 1e-6 |
| `qwen2_tiny/` | Qwen2: V=83, C=48, I=112, 2 layers, 6 heads, 2 KV heads, head_dim 8, q/k/v biases (o_proj none), rope_theta 1e6, untied, eps 1e-6 |
| `llama_tiny_mha_sharded_bf16/` | `llama_tiny_mha`'s weights rounded to BF16 (nearest even), in 2 shards + `model.safetensors.index.json`; no golden outputs |

Each model folder has `config.json` (Hugging Face format) and `model.safetensors`
(F32, Hugging Face names). The first two also have `golden.safetensors` (F32 unless
noted; B=2, T=20; computed in float64 from exactly the stored F32 weights), as does
`mistral_tiny/`, `qwen3_tiny/` and `qwen2_tiny/`:

- `input_ids` (B,T) I64, `targets` (B,T) I64: target of each position, already
  aligned (no shift in the loss); -100 = ignored (row 0 t<5, row 1 t>=17)
- `logits` (B,T,V); `loss` (): mean cross-entropy over targets != -100
- `hidden.layer0` (B,T,C): residual stream after decoder layer 0;
  `hidden.final` (B,T,C): output of `model.norm` (input of lm_head)
- `rope.inv_freq` (D/2), `rope.cos`, `rope.sin` (T, D/2): cos/sin(pos * scaled inv_freq)
- `grad.<param>`: d loss / d param for every parameter (tied: one summed gradient
  under `model.embed_tokens.weight`)
- 10 steps of `torch.optim.AdamW` (lr 3e-3, betas (0.9, 0.95), eps 1e-8, weight decay
  0.1 on 2-D weights, 0 on norm weights) on that batch, each step after
  `clip_grad_norm_(params, 1.0)`: `train.losses` (10) loss before each update,
  `train.grad_norms` (10) pre-clip global norm, `train.final_loss` () loss after the
  10th update, `final.<param>` every parameter after the 10th update
- `__metadata__`: the hyper-parameters as strings (lr, beta1, beta2, eps,
  weight_decay, weight_decay_1d, max_grad_norm, steps, seed, ...)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--only", help="write this one model folder (e.g. mistral_tiny), leaving the others")
    a = ap.parse_args()
    if a.only:
        torch.set_num_threads(1)
        table = {"llama_tiny_gqa": (CONFIG_A, SEED_A), "llama_tiny_mha": (CONFIG_B, SEED_B),
                 "mistral_tiny": (CONFIG_C, SEED_C), "qwen3_tiny": (CONFIG_D, SEED_D),
                 "qwen2_tiny": (CONFIG_E, SEED_E)}
        written = []
        generate(table[a.only][0], table[a.only][1], a.only, a.out, not a.skip_checks, written)
        verify_written(written, a.out)
        return 0
    torch.set_num_threads(1)  # bitwise reproducible reductions
    os.makedirs(a.out, exist_ok=True)
    written = []
    generate(CONFIG_A, SEED_A, "llama_tiny_gqa", a.out, not a.skip_checks, written)
    cfg_b, params_b = generate(CONFIG_B, SEED_B, "llama_tiny_mha", a.out, not a.skip_checks, written)
    generate(CONFIG_C, SEED_C, "mistral_tiny", a.out, not a.skip_checks, written)
    generate(CONFIG_D, SEED_D, "qwen3_tiny", a.out, not a.skip_checks, written)
    generate(CONFIG_E, SEED_E, "qwen2_tiny", a.out, not a.skip_checks, written)
    generate_sharded_bf16(cfg_b, params_b, "llama_tiny_mha_sharded_bf16", a.out, written)
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(README)
    verify_written(written, a.out)
    for root, _, files in sorted(os.walk(a.out)):
        for fn in sorted(files):
            pth = os.path.join(root, fn)
            log("  %8d  %s" % (os.path.getsize(pth), pth))


if __name__ == "__main__":
    sys.exit(main())
