#!/usr/bin/env bash
# Benchmark (prints numbers, asserts nothing): the engine's CPU path vs
# llama.cpp on the real Gemma 3 270M Q4_K_M GGUF, same prompt ids, same
# machine, same run, the two sides alternating.
#
#   scripts/bench-270m.sh [PROMPT_TOKENS=512] [NEW_TOKENS=64] [RUNS=3]
#
# ACTIVATIONS (f32, q8_prompt or q8; default f32) is our side's
# engine.cpu_activations; the summary names the mode that ran.
# Our side is the release build of `model/examples/cpu_bench.rs` (the same
# load, prefill and greedy decode the daemon runs); THREADS (default: all
# cores) sets rayon's pool and llama.cpp's threads alike. The llama.cpp side
# needs llama-cpp-python, built from source once by
# scripts/bench/setup-llamacpp-venv.sh (10-40 minutes on 2 cores; cached).
# Run on an idle machine: both sides slow down under contention, and
# llama.cpp's threads collapse when a core is taken. The load average at
# the start is printed with the results; the summary takes each side's best
# run (the least disturbed), and the ratio is ours / llama.cpp's.
set -euo pipefail
cd "$(dirname "$0")/.."
prompt=${1:-512}
new=${2:-64}
runs=${3:-3}
threads=${THREADS:-$(nproc)}
activations=${ACTIVATIONS:-f32}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/medgemma-target}"
assets="$(scripts/fetch-assets.sh | tail -n 1)"
assets="${assets:-${MEDGEMMA_ASSETS:-$HOME/.cache/medgemma-assets}}"
gguf="${GGUF:-$assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf}"
cargo build -q --release --locked -p medgemma-model --example cpu_bench
bin="$CARGO_TARGET_DIR/release/examples/cpu_bench"
venv="$(scripts/bench/setup-llamacpp-venv.sh | tail -n 1)"

load=$(cut -d' ' -f1-3 /proc/loadavg)
ours=()
theirs=()
for _ in $(seq "$runs"); do
  ours+=("$(RAYON_NUM_THREADS="$threads" "$bin" --model "$gguf" --prompt-tokens "$prompt" --new-tokens "$new" \
    --activations "$activations" --json)")
  theirs+=("$("$venv/bin/python" scripts/bench/llamacpp_bench.py --model "$gguf" \
    --prompt-tokens "$prompt" --new-tokens "$new" --threads "$threads")")
done

python3 - "$(basename "$gguf")" "$load" "$runs" "${ours[@]}" "${theirs[@]}" <<'PY'
import json, sys
name, load, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
rest = [json.loads(x) for x in sys.argv[4:]]
ours, theirs = rest[:runs], rest[runs:]
for b in theirs:
    b.setdefault("peak_rss_mib", b.get("peak_rss_mb"))
rows = [("load (s)", "load_s", min), ("prefill (tokens/s)", "prefill_tokens_per_s", max),
        ("decode (tokens/s)", "decode_tokens_per_s", max), ("peak RSS (MiB)", "peak_rss_mib", min)]
a0 = ours[0]
print(f"{name}, {a0['prompt_tokens']} prompt tokens, {a0['new_tokens']} new tokens, "
      f"{a0['threads']} threads, {runs} alternating runs, load average at start {load}, "
      f"our activations {a0.get('activations', 'f32')}")
for i, (a, b) in enumerate(zip(ours, theirs)):
    print(f"  run {i + 1}: ours prefill {a['prefill_tokens_per_s']:.1f} decode {a['decode_tokens_per_s']:.2f} "
          f"RSS {a['peak_rss_mib']:.0f} | llama.cpp prefill {b['prefill_tokens_per_s']:.1f} "
          f"decode {b['decode_tokens_per_s']:.2f} RSS {b['peak_rss_mib']:.0f}")
print(f"{'best of each':22}{'ours':>12}{'llama.cpp':>12}{'ratio':>10}")
for label, key, best in rows:
    x = best(r[key] for r in ours)
    y = best(r[key] for r in theirs)
    r = (x / y) if (x and y) else float('nan')
    print(f"{label:22}{x:12.2f}{y:12.2f}{r:10.2f}")
for label, key, n_key in [("prefill CPU ms/token", "prefill_cpu_s", "prompt_tokens"),
                          ("decode CPU ms/token", "decode_cpu_s", "decode_steps")]:
    x = min(r[key] * 1e3 / max(r[n_key], 1) for r in ours)
    y = min(r[key] * 1e3 / max(r[n_key], 1) for r in theirs)
    print(f"{label:22}{x:12.2f}{y:12.2f}{x / y:10.2f}")
print("ratio = ours / llama.cpp (CPU ms/token: all threads' CPU time, lower is better;"
      " it does not grow while another process holds a core)")
PY
