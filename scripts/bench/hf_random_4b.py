#!/usr/bin/env python3
"""Hugging Face transformers baseline for `medgemmad bench --random-4b`.

A Gemma3ForCausalLM with the MedGemma 1.5 4B text shapes (shared/spec/model.md
§1: hidden 2560, intermediate 10240, 34 layers, 8/4 heads, head_dim 256,
window 1024, 5:1 local/global, vocab 262208), random weights, bf16 on
cuda:0. No download: the model is built from a Gemma3TextConfig. Measures

- prefill: one forward over a 512-token prompt (ms, tokens/s), batch 1;
- decode: greedy steps with a static KV cache at batch 1, 8 and 32
  (tokens/s summed over the batch, and ms per step),

in eager mode and with torch.compile (mode "reduce-overhead": CUDA graphs,
as the decode loop of a serving stack would use). Prints one JSON object:

  {"engine": "transformers", "version": ..., "torch": ..., "gpu": ...,
   "modes": {"eager": {"prefill": {"tokens": 512, "ms": ..., "tokens_per_s": ...},
                       "decode": [{"batch": 1, "tokens_per_s": ..., "ms_per_step": ...}, ...]},
             "compile": {...}}}

Usage: hf_random_4b.py [--prompt-tokens 512] [--new-tokens 64]
                       [--batches 1,8,32] [--modes eager,compile]
Exit 2 when torch/transformers or a CUDA GPU is missing (gpu-check.sh then
skips the comparison).
"""

import argparse
import json
import sys
import time


def fail(msg):
    print(f"hf_random_4b: {msg}", file=sys.stderr)
    sys.exit(2)


try:
    import torch
    import transformers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
except Exception as e:  # noqa: BLE001 - any import failure means "skip"
    fail(f"torch/transformers not importable ({e})")


def config_4b():
    c = Gemma3TextConfig(
        vocab_size=262208,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        max_position_embeddings=131072,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh",
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        tie_word_embeddings=True,
    )
    # transformers >= 4.5x derives the pattern from layer_types when given.
    if hasattr(c, "layer_types"):
        c.layer_types = [
            "full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
            for i in range(34)
        ]
    c._attn_implementation = "sdpa"
    return c


def sync():
    torch.cuda.synchronize()


def build_model():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Gemma3ForCausalLM(config_4b()).to(torch.bfloat16)
    model.eval()
    return model


def static_cache(model, batch, max_len):
    from transformers import StaticCache

    try:
        return StaticCache(
            config=model.config,
            max_batch_size=batch,
            max_cache_len=max_len,
            device="cuda",
            dtype=torch.bfloat16,
        )
    except TypeError:  # transformers 5.x: fewer arguments
        return StaticCache(config=model.config, max_cache_len=max_len)


@torch.inference_mode()
def prefill(model, fwd, prompt_tokens, repeats=3):
    ids = torch.randint(10, 200_000, (1, prompt_tokens), device="cuda")
    best = None
    for _ in range(repeats + 1):  # the first run warms up (and compiles)
        cache = static_cache(model, 1, prompt_tokens + 8)
        pos = torch.arange(prompt_tokens, device="cuda")
        sync()
        t0 = time.perf_counter()
        fwd(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True,
            logits_to_keep=1)
        sync()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return {"tokens": prompt_tokens, "ms": best * 1e3, "tokens_per_s": prompt_tokens / best}


@torch.inference_mode()
def decode(model, step_fwd, batch, prompt_tokens, new_tokens):
    cache = static_cache(model, batch, prompt_tokens + new_tokens + 8)
    ids = torch.randint(10, 200_000, (batch, prompt_tokens), device="cuda")
    pos = torch.arange(prompt_tokens, device="cuda")
    out = model(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True,
                logits_to_keep=1)
    nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
    warm = 3  # compile / graph capture happens on these
    times = []
    for i in range(new_tokens + warm):
        p = torch.tensor([prompt_tokens + i], device="cuda")
        sync()
        t0 = time.perf_counter()
        out = step_fwd(input_ids=nxt, past_key_values=cache, cache_position=p, use_cache=True)
        nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
        sync()
        if i >= warm:
            times.append(time.perf_counter() - t0)
    per_step = sum(times) / len(times)
    return {"batch": batch, "tokens_per_s": batch / per_step, "ms_per_step": per_step * 1e3}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--modes", default="eager,compile")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        fail("no CUDA GPU visible to torch")
    batches = [int(b) for b in a.batches.split(",") if b]
    model = build_model()
    result = {
        "engine": "transformers",
        "version": transformers.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "shapes": "MedGemma 1.5 4B text decoder, random weights, bf16",
        "modes": {},
    }
    for mode in [m for m in a.modes.split(",") if m]:
        t0 = time.perf_counter()
        try:
            if mode == "eager":
                fwd = step = model.forward
            elif mode == "compile":
                step = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
                fwd = model.forward  # prefill shapes vary; compile the decode step only
            else:
                fail(f"unknown mode {mode}")
            r = {"prefill": prefill(model, fwd, a.prompt_tokens), "decode": []}
            for b in batches:
                r["decode"].append(decode(model, step, b, a.prompt_tokens, a.new_tokens))
                torch.cuda.empty_cache()
            r["wall_s"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - report and go on with the next mode
            r = {"error": f"{type(e).__name__}: {e}"[:500]}
        result["modes"][mode] = r
        print(f"hf_random_4b: {mode} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
