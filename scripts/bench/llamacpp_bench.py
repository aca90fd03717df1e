#!/usr/bin/env python3
"""llama.cpp baseline benchmark (via llama-cpp-python) for a GGUF model.

Prints ONE JSON line: load_s, prefill_tokens_per_s, decode_tokens_per_s, peak_rss_mb,
prefill_cpu_s, decode_cpu_s (+ details).

The prompt is a fixed id sequence: <bos> followed by the ids of one real sentence (Gemma 3
tokenizer, see SENTENCE) repeated until --prompt-tokens ids. Decoding is greedy (argmax over the
returned logits, eos ignored) for --new-tokens steps, one token per llama_decode call.

    scripts/bench/setup-llamacpp-venv.sh   # once
    ${MEDGEMMA_BENCH_VENV:-/root/.cache/medgemma-bench-venv}/bin/python scripts/bench/llamacpp_bench.py \
        --model ~/.cache/medgemma-assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf \
        --prompt-tokens 512 --new-tokens 64 --threads 2
"""

import argparse
import json
import resource
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama

SENTENCE = ("Diabetic nephropathy is a chronic complication of diabetes mellitus in which persistent "
            "hyperglycaemia damages the glomeruli, leading to albuminuria, a progressive decline in glomerular "
            "filtration rate and, eventually, end-stage kidney disease. ")
# SENTENCE encoded with the Gemma 3 tokenizer.json, add_special_tokens=False (45 ids)
SENTENCE_IDS = [12689, 34154, 65723, 128616, 563, 496, 17044, 77645, 529, 15886, 98310, 528, 837, 33086,
                170855, 3284, 11226, 19607, 506, 75143, 9548, 236764, 5830, 531, 63958, 37692, 236764, 496,
                23288, 16670, 528, 165025, 40330, 3136, 532, 236764, 10734, 236764, 1345, 236772, 17585,
                29491, 5933, 236761, 236743]
BOS = 2


def last_logits(llm):
    """Logits of the last evaluated token, straight from the llama.cpp context
    (with logits_all=False llama-cpp-python does not copy them into llm.scores)."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def prompt_ids(n):
    ids = [BOS]
    while len(ids) < n:
        ids.extend(SENTENCE_IDS)
    return ids[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="n_batch for prefill (default: prompt length)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed 8-token warm-up eval")
    args = ap.parse_args()

    ids = prompt_ids(args.prompt_tokens)
    n_ctx = args.prompt_tokens + args.new_tokens + 16
    n_batch = args.batch or args.prompt_tokens

    t0 = time.perf_counter()
    llm = Llama(model_path=args.model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                n_threads=args.threads, n_threads_batch=args.threads, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0

    if not args.no_warmup:
        llm.reset()
        llm.eval(ids[:8])

    llm.reset()
    t0 = time.perf_counter()
    c0 = time.process_time()
    llm.eval(ids)
    row = last_logits(llm)
    prefill_s = time.perf_counter() - t0
    prefill_cpu_s = time.process_time() - c0

    out = []
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(args.new_tokens):
        tok = int(np.argmax(row))
        out.append(tok)
        llm.eval([tok])
        row = last_logits(llm)
    decode_s = time.perf_counter() - t0
    decode_cpu_s = time.process_time() - c0

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({
        "runtime": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "model": args.model,
        "threads": args.threads,
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "load_s": round(load_s, 4),
        "prefill_s": round(prefill_s, 4),
        "prefill_tokens_per_s": round(len(ids) / prefill_s, 2),
        "decode_s": round(decode_s, 4),
        "decode_tokens_per_s": round(args.new_tokens / decode_s, 2) if args.new_tokens else None,
        "peak_rss_mb": round(peak_rss_mb, 1),
        # CPU time of all threads (process_time): grows with work, not with
        # waiting for a core, though llama.cpp's threads also spin while they wait.
        "prefill_cpu_s": round(prefill_cpu_s, 4),
        "decode_cpu_s": round(decode_cpu_s, 4),
        "decode_steps": args.new_tokens,
        "first_generated_ids": out[:8],
    }))


if __name__ == "__main__":
    sys.exit(main())
