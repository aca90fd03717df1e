#!/usr/bin/env bash
# Benchmark (prints numbers, asserts nothing): medgemmad vs llama.cpp on the
# real Gemma 3 270M GGUF, CPU, same prompt ids, same machine, same run.
#
#   scripts/bench-270m.sh [PROMPT_TOKENS=512] [NEW_TOKENS=64]
#
# The llama.cpp side needs llama-cpp-python, built from source once by
# scripts/bench/setup-llamacpp-venv.sh (10-40 minutes on 2 cores; cached).
# Run on an idle machine: llama.cpp's threads collapse under contention.
set -euo pipefail
cd "$(dirname "$0")/.."
prompt=${1:-512}
new=${2:-64}
threads=$(nproc)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/medgemma-target}"
assets="$(scripts/fetch-assets.sh | tail -n 1)"
gguf="$assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
cargo build -q -p medgemmad
bin="$CARGO_TARGET_DIR/debug/medgemmad"
venv="$(scripts/bench/setup-llamacpp-venv.sh | tail -n 1)"

ours=$("$bin" bench --model "$gguf" --prompt-tokens "$prompt" --new-tokens "$new" --json)
theirs=$("$venv/bin/python" scripts/bench/llamacpp_bench.py --model "$gguf" \
  --prompt-tokens "$prompt" --new-tokens "$new" --threads "$threads")

python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
b.setdefault("peak_rss_mib", b.get("peak_rss_mb"))
rows = [("load (s)", "load_s", False), ("prefill (tokens/s)", "prefill_tokens_per_s", True),
        ("decode (tokens/s)", "decode_tokens_per_s", True), ("peak RSS (MiB)", "peak_rss_mib", False)]
print(f"Gemma 3 270M Q4_K_M GGUF, {a['prompt_tokens']} prompt tokens, {a['new_tokens']} new tokens, {a['threads']} threads")
print(f"{'':22}{'medgemmad':>12}{'llama.cpp':>12}{'ratio':>10}")
for label, key, higher_better in rows:
    x, y = a.get(key), b.get(key)
    r = (x / y) if (x and y) else float('nan')
    print(f"{label:22}{x:12.2f}{y:12.2f}{r:10.2f}")
print("ratio = medgemmad / llama.cpp")
PY
