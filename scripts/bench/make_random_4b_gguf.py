#!/usr/bin/env python3
"""Writes a GGUF with MedGemma 4B's text-decoder shapes and random weights, quantized like a
Q4_K_M file, so llama.cpp and this engine can be benchmarked on the 4B's sizes without the
checkpoint (the tokens it produces are noise; never use it to answer anything).

    ${MEDGEMMA_BENCH_VENV:-/root/.cache/medgemma-bench-venv}/bin/pip install gguf==0.19.0
    .../bin/python scripts/bench/make_random_4b_gguf.py --out /var/tmp/random-4b-q4_k_m.gguf

Shapes (spec model.md section 1): 34 layers (global every 6th), d 2560, GeGLU 10240, 8 query and
4 KV heads of 256, window 1024, RoPE 1e6 with linear factor 8 on global layers. The vocabulary
and tokenizer metadata are copied from the real 270M GGUF (262 144 pieces; the 4B's embedding
has 64 more rows for image tokens, left out here so llama.cpp's vocabulary check passes).

Types as llama.cpp's Q4_K_M mix: token_embd, attn_v and ffn_down Q6_K, the other matrices Q4_K,
norms F32 (stored as 1 + w with w = 0). Quants are random bytes; each block's f16 scales are set
so the weights have a spread near 0.02 (as model/src/cpu/random.rs does).
"""

import argparse

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

STD = 0.02
LAYERS, D, F, H, KV, HD, V = 34, 2560, 10240, 8, 4, 256, 262144


def blocks(rows, cols, qtype, rng):
    """Random blocks of `qtype` for a [rows, cols] matrix as uint8 [rows, bytes per row]."""
    if qtype == GGMLQuantizationType.Q4_K:
        size, n = 144, 256
    elif qtype == GGMLQuantizationType.Q6_K:
        size, n = 210, 256
    else:
        raise ValueError(qtype)
    nb = rows * cols // n
    b = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    if qtype == GGMLQuantizationType.Q4_K:
        d = np.float16(STD / (31.5 * 4.6))
        b[:, 0:2] = np.frombuffer(np.array([d], dtype="<f2").tobytes(), dtype=np.uint8)
        b[:, 2:4] = np.frombuffer(np.array([np.float16(float(d) * 7.5)], dtype="<f2").tobytes(), dtype=np.uint8)
    else:
        d = np.float16(STD / (18.5 * 73.9))
        b[:, 208:210] = np.frombuffer(np.array([d], dtype="<f2").tobytes(), dtype=np.uint8)
    return b.reshape(rows, cols // n * size)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer-from", default="/root/.cache/medgemma-assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf")
    args = ap.parse_args()
    rng = np.random.default_rng(4)

    src = GGUFReader(args.tokenizer_from)
    w = GGUFWriter(args.out, "gemma3")
    w.add_name("random MedGemma 4B shapes (benchmark only)")
    w.add_uint32("gemma3.context_length", 131072)
    w.add_uint32("gemma3.embedding_length", D)
    w.add_uint32("gemma3.block_count", LAYERS)
    w.add_uint32("gemma3.feed_forward_length", F)
    w.add_uint32("gemma3.attention.head_count", H)
    w.add_uint32("gemma3.attention.head_count_kv", KV)
    w.add_uint32("gemma3.attention.key_length", HD)
    w.add_uint32("gemma3.attention.value_length", HD)
    w.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("gemma3.rope.freq_base", 1e6)
    w.add_string("gemma3.rope.scaling.type", "linear")
    w.add_float32("gemma3.rope.scaling.factor", 8.0)
    w.add_uint32("gemma3.attention.sliding_window", 1024)
    w.add_uint32("general.file_type", 15)  # MOSTLY_Q4_K_M
    w.add_uint32("general.quantization_version", 2)
    for key, field in src.fields.items():
        if not key.startswith("tokenizer."):
            continue
        t = field.types[0]
        if t == GGUFValueType.ARRAY:
            w.add_array(key, field.contents())
        elif t == GGUFValueType.STRING:
            w.add_string(key, field.contents())
        elif t == GGUFValueType.BOOL:
            w.add_bool(key, field.contents())
        elif t == GGUFValueType.UINT32:
            w.add_uint32(key, field.contents())
        else:
            raise ValueError(f"{key}: {t}")

    q4k, q6k = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K
    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731 (GGUF stores 1 + w)
    w.add_tensor("token_embd.weight", blocks(V, D, q6k, rng), raw_dtype=q6k)
    for i in range(LAYERS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(D))
        w.add_tensor(p + "attn_q.weight", blocks(H * HD, D, q4k, rng), raw_dtype=q4k)
        w.add_tensor(p + "attn_k.weight", blocks(KV * HD, D, q4k, rng), raw_dtype=q4k)
        w.add_tensor(p + "attn_v.weight", blocks(KV * HD, D, q6k, rng), raw_dtype=q6k)
        w.add_tensor(p + "attn_output.weight", blocks(D, H * HD, q4k, rng), raw_dtype=q4k)
        w.add_tensor(p + "attn_q_norm.weight", ones(HD))
        w.add_tensor(p + "attn_k_norm.weight", ones(HD))
        w.add_tensor(p + "post_attention_norm.weight", ones(D))
        w.add_tensor(p + "ffn_norm.weight", ones(D))
        w.add_tensor(p + "ffn_gate.weight", blocks(F, D, q4k, rng), raw_dtype=q4k)
        w.add_tensor(p + "ffn_up.weight", blocks(F, D, q4k, rng), raw_dtype=q4k)
        w.add_tensor(p + "ffn_down.weight", blocks(D, F, q6k, rng), raw_dtype=q6k)
        w.add_tensor(p + "post_ffw_norm.weight", ones(D))
    w.add_tensor("output_norm.weight", ones(D))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(args.out)


if __name__ == "__main__":
    main()
