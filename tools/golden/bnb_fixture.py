#!/usr/bin/python3
"""bitsandbytes 4-bit checkpoint fixtures for luatrain's quantization tests, made by an
independent NumPy reference of bitsandbytes' blockwise quantization (bitsandbytes itself is
not installable here; this follows its published layout and algorithms, listed below).

Rerun from the repository root (Debian's python3, which has torch 1.13 and numpy):

    /usr/bin/python3 tools/golden/bnb_fixture.py --out tests/fixtures/bnb_4bit

The output is deterministic (fixed seed; the quantizer is plain f32 NumPy arithmetic). The
script re-reads what it wrote and re-checks the dequantized values before it exits.

What it writes under --out:

  config.json            a tiny Llama (V=64, C=48, I=64, L=2, H=4, KV=2, head_dim 12,
                         bf16) with the quantization_config transformers writes for
                         BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                         bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=bfloat16)
  model.safetensors      the checkpoint as transformers + bitsandbytes save it: for each of
                         q/k/v/o_proj and gate/up/down_proj of both layers (prefix P =
                         model.layers.{i}.self_attn.q_proj, ...):
                           P.weight                   U8 (numel/2, 1) packed codes
                           P.weight.absmax            U8 (blocks) double-quantized scales
                           P.weight.quant_map         F32 (16) the NF4 code book
                           P.weight.nested_absmax     F32 (ceil(blocks/256))
                           P.weight.nested_quant_map  F32 (256) create_dynamic_map()
                           P.weight.quant_state.bitsandbytes__nf4
                                                      U8 JSON bytes: {"quant_type", "blocksize",
                                                      "dtype", "shape", "nested_blocksize",
                                                      "nested_dtype", "nested_offset"} in
                                                      QuantState.as_dict order
                         and unquantized BF16 model.embed_tokens.weight, lm_head.weight,
                         model.norm.weight, input/post_attention_layernorm.weight
  standalone.safetensors two more quantized weights in the same layout:
                           fp4_plain (37, 19) FP4, block size 64, no double quantization
                             (703 elements: a partial last block and an odd count, so the
                             last low nibble is padding), absmax F32
                           nf4_bs32 (129, 65) NF4, block size 32, double quantization: 263
                             blocks, so 2 nested blocks, the last one partial
  expected.safetensors   F32, for every quantized weight P: P.weight = its dequantized
                         values (the logical shape), computed here;
                         source.<P>.weight = the weight before quantization for layer 0's
                         linears (BF16) and the two standalone ones (F32 / BF16), so that a
                         quantizer can be checked byte for byte against this one

bitsandbytes semantics followed (bitsandbytes/functional.py, csrc/kernels.cu):
  - blocks of `blocksize` consecutive elements of the flattened weight; absmax per block in
    f32; x = w * (1/absmax) in f32 (w / absmax where 1/absmax overflows; a zero block -> 0);
  - NF4: the nearest of get_4bit_type("nf4"), boundaries the dQuantizeNF4 constants (exact
    midpoints written as 16-digit decimals, read as f32 the way a C compiler reads them),
    a value at a boundary takes the lower code;
  - FP4: sign bit 8 for x < 0, magnitude by the dQuantizeFP4 thresholds on |x|, the 3-bit
    codes of the magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1 being 0,1,6,7,4,5,2,3;
    code book get_4bit_type("fp4") = [0, .0625, 8, 12, 4, 6, 2, 3, 0, -.0625, ...] / 12;
  - two codes per byte, the first element in the high nibble; an odd count pads with the
    code of 0.0;
  - double quantization (compress_statistics): offset = mean(absmax) (f64 sum, f32), then
    absmax - offset in blocks of 256, each scaled by its f32 absmax and mapped to the
    nearest entry of create_dynamic_map(signed=True) (f32 midpoints, ties to the lower);
  - dequantization: absmax = f32(f32(map[q] * absmax2) + offset), w = code[nibble] * absmax.
"""

import argparse
import fractions
import json
import os
import struct

import numpy as np
import torch

SEED = 20240917
F32 = np.float32

NF4_CODE = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
NF4_THRESHOLDS = [
    "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906",
    "-0.33967943489551544", "-0.23460740596055984", "-0.13791173323988914",
    "-0.045525018125772476", "0.03979014977812767", "0.1202552504837513",
    "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
    "0.5016634166240692", "0.6427869200706482", "0.8614784181118011",
]
FP4_THRESHOLDS = ["0.00260417", "0.0859375", "0.20833333", "0.29166667", "0.4166667",
                  "0.583333", "0.8333333"]
FP4_RANK_CODE = np.array([0, 1, 6, 7, 4, 5, 2, 3], dtype=np.uint8)

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 48,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "quantization_config": {
        "_load_in_4bit": True,
        "_load_in_8bit": False,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": None,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": True,
        "load_in_8bit": False,
        "quant_method": "bitsandbytes",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.0",
    "use_cache": True,
    "vocab_size": 64,
}


def f32_from_decimal(text):
    """The f32 nearest to a decimal string, rounded once (as a C compiler reads 0.1f);
    np.float32(float(text)) would round twice and can land on the other neighbour."""
    exact = fractions.Fraction(text)
    guess = F32(float(text))
    cands = [np.nextafter(guess, F32(-np.inf)), guess, np.nextafter(guess, F32(np.inf))]
    return min(cands, key=lambda c: abs(fractions.Fraction(float(c)) - exact))


NF4_BOUNDS = np.array([f32_from_decimal(t) for t in NF4_THRESHOLDS], dtype=F32)
FP4_BOUNDS = np.array([f32_from_decimal(t) for t in FP4_THRESHOLDS], dtype=F32)


def get_4bit_code(qtype):
    """bitsandbytes' get_4bit_type: the table divided by its largest magnitude in f32."""
    if qtype == "nf4":
        data = torch.tensor(NF4_CODE)
    else:
        data = torch.tensor([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                             0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0])
    data.div_(data.abs().max())
    return data.numpy().astype(F32)


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes' create_dynamic_map, the same torch f32 steps (its checkpoints store
    this map as nested_quant_map)."""
    data = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    data.sort()
    return np.array(data, dtype=F32)


def normalise(blocks, amax):
    """blocks (nb, bs) f32, amax (nb) -> x = blocks * (1/amax) in f32, per bitsandbytes."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = F32(1.0) / amax
        x = blocks * inv[:, None]
        over = ~np.isfinite(inv) & (amax > 0)
        x[over] = blocks[over] / amax[over, None]
    x[amax == 0] = 0
    return x.astype(F32)


def blockwise(v, bs):
    """v (n) f32 -> (blocks (nb, bs) zero-padded, amax (nb))."""
    n = v.size
    nb = -(-n // bs)
    pad = np.zeros(nb * bs, dtype=F32)
    pad[:n] = v
    blocks = pad.reshape(nb, bs)
    return blocks, np.abs(blocks).max(axis=1).astype(F32)


def quantize_4bit(w, qtype, bs):
    """w: f32 array (any shape). Returns packed u8 (ceil(n/2),), absmax f32 (nb,)."""
    v = np.ascontiguousarray(w, dtype=F32).reshape(-1)
    n = v.size
    blocks, amax = blockwise(v, bs)
    x = normalise(blocks, amax).reshape(-1)[:n]
    if qtype == "nf4":
        codes = np.searchsorted(NF4_BOUNDS, x, side="left").astype(np.uint8)
        zero = np.searchsorted(NF4_BOUNDS, F32(0), side="left")
    else:
        rank = np.searchsorted(FP4_BOUNDS, np.abs(x), side="left")
        codes = FP4_RANK_CODE[rank] | np.where(x < 0, 8, 0).astype(np.uint8)
        zero = 0
    if n % 2:
        codes = np.concatenate([codes, np.array([zero], dtype=np.uint8)])
    packed = (codes[0::2] << 4) | codes[1::2]
    return packed.astype(np.uint8), amax


def double_quantize(amax, nested_bs=256):
    """amax f32 (nb) -> (codes u8 (nb), absmax2 f32 (ceil(nb/256)), map f32 (256), offset)."""
    offset = F32(amax.astype(np.float64).mean())
    v = (amax - offset).astype(F32)
    dmap = create_dynamic_map()
    bounds = ((dmap[:-1].astype(np.float64) + dmap[1:]) / 2).astype(F32)
    blocks, a2 = blockwise(v, nested_bs)
    x = normalise(blocks, a2).reshape(-1)[: v.size]
    codes = np.searchsorted(bounds, x, side="left").astype(np.uint8)
    return codes, a2, dmap, offset


def dequantize(packed, absmax, code, bs, n, nested=None):
    """The values bitsandbytes' dequantize_4bit gives, in f32."""
    if nested is not None:
        a2, dmap, offset, nbs = nested
        idx = np.arange(absmax.size) // nbs
        absmax = ((dmap[absmax] * a2[idx]).astype(F32) + offset).astype(F32)
    codes = np.empty(packed.size * 2, dtype=np.uint8)
    codes[0::2] = packed >> 4
    codes[1::2] = packed & 15
    codes = codes[:n]
    return (code[codes] * absmax[np.arange(n) // bs]).astype(F32)


def bnb_entries(prefix, w, qtype, bs, nested, dtype_name):
    """The state-dict entries Linear4bit._save_to_state_dict writes for weight w, and the
    dequantized values."""
    n = w.size
    packed, amax = quantize_4bit(w, qtype, bs)
    code = get_4bit_code(qtype)
    qs = {"quant_type": qtype, "blocksize": bs, "dtype": dtype_name, "shape": list(w.shape)}
    out = {prefix + ".weight": ("U8", packed.reshape(-1, 1)),
           prefix + ".weight.quant_map": ("F32", code)}
    if nested:
        codes, a2, dmap, offset = double_quantize(amax)
        out[prefix + ".weight.absmax"] = ("U8", codes)
        out[prefix + ".weight.nested_absmax"] = ("F32", a2)
        out[prefix + ".weight.nested_quant_map"] = ("F32", dmap)
        qs.update({"nested_blocksize": 256, "nested_dtype": "float32",
                   "nested_offset": float(offset)})
        deq = dequantize(packed, codes, code, bs, n, (a2, dmap, offset, 256))
    else:
        out[prefix + ".weight.absmax"] = ("F32", amax)
        deq = dequantize(packed, amax, code, bs, n)
    js = np.frombuffer(json.dumps(qs).encode("utf-8"), dtype=np.uint8)
    out[prefix + ".weight.quant_state.bitsandbytes__" + qtype] = ("U8", js)
    return out, deq.reshape(w.shape)


# ---- safetensors ---------------------------------------------------------------------

DT_SIZE = {"F32": 4, "BF16": 2, "U8": 1, "I8": 1}


def to_bytes(dtype, arr):
    if dtype == "BF16":  # arr: torch bf16 tensor
        return arr.contiguous().view(torch.int16).numpy().astype("<i2").tobytes(), list(arr.shape)
    npdt = {"F32": "<f4", "U8": "u1", "I8": "i1"}[dtype]
    a = np.ascontiguousarray(arr).astype(npdt)
    return a.tobytes(), list(a.shape)


def write_safetensors(path, entries):
    """entries: name -> (dtype, array). Order as safetensors' writer: dtype size
    descending, then name. Metadata {"format": "pt"}."""
    names = sorted(entries, key=lambda k: (-DT_SIZE[entries[k][0]], k))
    header = {"__metadata__": {"format": "pt"}}
    blobs, off = [], 0
    for name in names:
        dtype, arr = entries[name]
        data, shape = to_bytes(dtype, arr)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((-len(h)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    buf = raw[8 + hlen:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, c = e["data_offsets"]
        dt = {"F32": "<f4", "U8": "u1", "I8": "i1", "BF16": "<u2"}[e["dtype"]]
        a = np.frombuffer(buf[b:c], dtype=dt).reshape(e["shape"])
        if e["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(F32)
        out[name] = a
    return out


# ---- the fixtures -------------------------------------------------------------------------

def bf16(shape, std, gen):
    return (torch.randn(*shape, generator=gen, dtype=torch.float32) * std).to(torch.bfloat16)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    cfg = LLAMA
    C, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = C // H
    shapes = {"self_attn.q_proj": (H * D, C), "self_attn.k_proj": (KV * D, C),
              "self_attn.v_proj": (KV * D, C), "self_attn.o_proj": (C, H * D),
              "mlp.gate_proj": (I, C), "mlp.up_proj": (I, C), "mlp.down_proj": (C, I)}
    model, expected = {}, {}
    model["model.embed_tokens.weight"] = ("BF16", bf16((V, C), 0.02, gen))
    model["lm_head.weight"] = ("BF16", bf16((V, C), 0.02, gen))
    norm = (1 + 0.1 * torch.randn(C, generator=gen)).to(torch.bfloat16)
    model["model.norm.weight"] = ("BF16", norm)
    for layer in range(cfg["num_hidden_layers"]):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            w = (1 + 0.1 * torch.randn(C, generator=gen)).to(torch.bfloat16)
            model["model.layers.%d.%s.weight" % (layer, norm)] = ("BF16", w)
        for name, shape in shapes.items():
            prefix = "model.layers.%d.%s" % (layer, name)
            w = bf16(shape, 0.02, gen)
            # a zero row and an outlier, so that some blocks are all zero or dominated
            if name == "mlp.down_proj":
                w[3, :] = 0
                w[5, 7] = 0.5
            entries, deq = bnb_entries(prefix, w.float().numpy(), "nf4", 64, True, "bfloat16")
            model.update(entries)
            expected[prefix + ".weight"] = ("F32", deq)
            if layer == 0:
                expected["source." + prefix + ".weight"] = ("BF16", w)
    standalone = {}
    w = (torch.randn(37, 19, generator=gen) * 0.3).numpy().astype(F32)
    entries, deq = bnb_entries("fp4_plain", w, "fp4", 64, False, "float32")
    standalone.update(entries)
    expected["fp4_plain.weight"] = ("F32", deq)
    expected["source.fp4_plain.weight"] = ("F32", w)
    wb = (torch.randn(129, 65, generator=gen) * 0.05)
    wb[:, 10] *= 40  # columns of larger scale spread the block absmax
    wb = wb.to(torch.bfloat16)
    entries, deq = bnb_entries("nf4_bs32", wb.float().numpy(), "nf4", 32, True, "bfloat16")
    standalone.update(entries)
    expected["nf4_bs32.weight"] = ("F32", deq)
    expected["source.nf4_bs32.weight"] = ("BF16", wb)

    write_safetensors(os.path.join(args.out, "model.safetensors"), model)
    write_safetensors(os.path.join(args.out, "standalone.safetensors"), standalone)
    write_safetensors(os.path.join(args.out, "expected.safetensors"), expected)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")

    # Re-read and re-check: every quantized weight dequantizes to its expected values.
    exp = read_safetensors(os.path.join(args.out, "expected.safetensors"))
    total = 0
    for fname in ("model.safetensors", "standalone.safetensors"):
        st = read_safetensors(os.path.join(args.out, fname))
        for key in st:
            if ".quant_state.bitsandbytes__" not in key:
                continue
            prefix = key.split(".weight.quant_state.")[0]
            qs = json.loads(bytes(st[key]).decode("utf-8"))
            n = int(np.prod(qs["shape"]))
            code = st[prefix + ".weight.quant_map"]
            nested = None
            if "nested_offset" in qs:
                nested = (st[prefix + ".weight.nested_absmax"],
                          st[prefix + ".weight.nested_quant_map"], F32(qs["nested_offset"]),
                          qs["nested_blocksize"])
            deq = dequantize(st[prefix + ".weight"].reshape(-1), st[prefix + ".weight.absmax"],
                             code, qs["blocksize"], n, nested)
            want = exp[prefix + ".weight"].reshape(-1)
            assert np.array_equal(deq.view(np.uint32), want.view(np.uint32)), prefix
            src = exp.get("source." + prefix + ".weight")
            if src is not None:
                err = np.abs(deq - src.reshape(-1)).max()
                assert err <= 0.2 * np.abs(src).max(), (prefix, err)
            total += 1
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print("wrote %d quantized weights to %s (%d bytes)" % (total, args.out, size))


if __name__ == "__main__":
    main()
