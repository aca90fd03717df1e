#!/usr/bin/env bash
# GPU check, for one machine with an NVIDIA GPU (made for: H200, 16 cores, no
# internet, 10 minutes per command). One run does, in order, each step with
# its own time limit inside an overall budget, writing everything to $OUT:
#
#   info      nvidia-smi, driver, libdevice (kernels with exp/tanh need it),
#             `medgemmad --version` must list the cuda backend
#   fidelity  the model's fidelity tests on GPU 0 (MEDGEMMA_TEST_DEVICE=cuda):
#             tests/reference_tiny (f32 within 1e-3, bf16 compute within 0.15
#             of torch bf16 with the same argmax, greedy tokens equal) and,
#             when the 270M GGUF is there ($MEDGEMMA_ASSETS), tests/real_270m
#             in f32 (greedy tokens equal transformers) and, for information
#             only, in bf16; tests/batched_decode (batched = one at a time,
#             chunked prefill between decode steps, greedy argmax on the GPU)
#   bench     medgemmad bench --random-4b --backend cuda --batch 1,8,32 --json
#   hf        scripts/bench/hf_random_4b.py (transformers, same shapes, eager
#             and torch.compile), when python3 imports torch and transformers
#   table     one table: medgemmad vs transformers, with ratios
#
# Binaries: MEDGEMMA_PREBUILT=DIR holds medgemmad, reference_tiny,
# real_270m and batched_decode (each may be .zst-compressed), made on a build machine with
#   scripts/gpu-check.sh --prepare DIR
# Without MEDGEMMA_PREBUILT it builds them here (scripts/build-release.sh and
# cargo test --no-run; needs the offline LLVM of scripts/setup-llvm-cuda.sh and
# a filled cargo registry: nothing is downloaded).
#
# Environment: OUT (results; default /tmp/gpu-check), GPU_CHECK_BUDGET_S
# (overall seconds, default 540), GPU_CHECK_STEPS (default
# info,fidelity,bench,hf,table), MEDGEMMA_ASSETS (270M GGUF), CUDA_PATH.
# Exit: 0 every step that ran passed; 1 a step failed; 2 usage/prerequisite.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

die() { echo "gpu-check: $*" >&2; exit 2; }

# ---- --prepare DIR: build the binaries for MEDGEMMA_PREBUILT (build machine)
if [ "${1:-}" = "--prepare" ]; then
  dest="${2:?usage: scripts/gpu-check.sh --prepare DIR}"
  mkdir -p "$dest"
  rel=$(scripts/build-release.sh) || die "release build failed"
  # The release build's own environment: any difference (SOURCE_DATE_EPOCH,
  # locale) would rebuild the shared CUDA stack for the next release build.
  MEDGEMMA_FEATURES=medgemmad/cuda
  # shellcheck source=scripts/release-env.sh
  source scripts/release-env.sh
  tests=$(cargo test --release --locked --workspace --features medgemmad/cuda --no-run \
      --test reference_tiny --test real_270m --test batched_decode --message-format=json 2>/dev/null \
    | jq -r 'select(.reason=="compiler-artifact" and .profile.test==true and .executable!=null) | .executable') \
    || die "test build failed"
  for f in "$rel/medgemmad" $tests; do
    name=$(basename "$f"); name=${name%%-*}
    cp "$f" "$dest/$name" && strip "$dest/$name" 2>/dev/null
    zstd -q -f -T0 -19 --rm "$dest/$name" -o "$dest/$name.zst" || die "zstd failed"
  done
  ls -l "$dest"
  exit 0
fi

out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
budget="${GPU_CHECK_BUDGET_S:-540}"
deadline=$((SECONDS + budget))
steps=",${GPU_CHECK_STEPS:-info,fidelity,bench,hf,table},"
summary="$out/summary.txt"
: >"$summary"
failed=0

note() { echo "$*" | tee -a "$summary" >&2; }
want() { [[ "$steps" == *",$1,"* ]]; }

# step NAME LIMIT_S CMD...: runs CMD with stdout to $out/NAME.out and stderr to
# $out/NAME.log, within LIMIT_S and the overall budget.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 20 ]; then
    note "$name: SKIPPED (overall budget of ${budget}s spent)"
    return 99
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >"$out/$name.out" 2>"$out/$name.log"
  local rc=$?
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT after ${limit}s"
  elif [ $rc -ne 0 ]; then status="FAILED (exit $rc)"; fi
  note "$name: $status in $((SECONDS - t0))s"
  return $rc
}

# ---- binaries
bin="$out/bin"
mkdir -p "$bin"
if [ -n "${MEDGEMMA_PREBUILT:-}" ]; then
  for n in medgemmad reference_tiny real_270m batched_decode; do
    if [ -f "$MEDGEMMA_PREBUILT/$n.zst" ]; then
      zstd -q -d -f "$MEDGEMMA_PREBUILT/$n.zst" -o "$bin/$n" || die "cannot unpack $n"
    elif [ -f "$MEDGEMMA_PREBUILT/$n" ]; then
      cp "$MEDGEMMA_PREBUILT/$n" "$bin/$n"
    fi
    [ -f "$bin/$n" ] && chmod +x "$bin/$n"
  done
else
  step build 480 "$0" --prepare "$out/prebuilt" || die "build failed (see $out/build.log)"
  MEDGEMMA_PREBUILT="$out/prebuilt" exec "$0"
fi
[ -x "$bin/medgemmad" ] || die "no medgemmad in ${MEDGEMMA_PREBUILT}"

# ---- info
if want info; then
  {
    nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,memory.free --format=csv 2>&1
    echo "--- medgemmad --version"; "$bin/medgemmad" --version
    echo "--- libdevice (needed by kernels using exp/tanh/erf)"
    found=""
    for d in "${CUDA_PATH:-}" /usr/local/cuda /opt/cuda /usr/lib/cuda /usr; do
      [ -n "$d" ] && [ -f "$d/nvvm/libdevice/libdevice.10.bc" ] && found="$d/nvvm/libdevice/libdevice.10.bc" && break
    done
    echo "${found:-NOT FOUND: set CUDA_PATH to a CUDA toolkit, or GELU/softmax kernels will fail}"
  } >"$out/info.txt" 2>&1
  cat "$out/info.txt" >&2
  grep -Eq '^backends:.*\bcuda\b' "$out/info.txt" || { note "info: medgemmad has no cuda backend"; failed=1; }
fi

# ---- fidelity
if want fidelity; then
  export MEDGEMMA_FIXTURES="$root/tests/fixtures" MEDGEMMA_TEST_DEVICE=cuda
  if [ -x "$bin/reference_tiny" ]; then
    step fidelity-tiny 180 "$bin/reference_tiny" --test-threads=1 --nocapture || failed=1
    grep -E 'max \|Δlogit\||test result' "$out/fidelity-tiny.log" "$out/fidelity-tiny.out" | tee -a "$summary" >&2
  else
    note "fidelity-tiny: no reference_tiny binary"; failed=1
  fi
  gguf="${MEDGEMMA_ASSETS:-$HOME/.cache/medgemma-assets}/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
  if [ -x "$bin/real_270m" ] && [ -f "$gguf" ]; then
    step fidelity-270m-f32 150 "$bin/real_270m" --test-threads=1 || failed=1
    grep -E 'test result' "$out/fidelity-270m-f32.out" | tee -a "$summary" >&2
    MEDGEMMA_TEST_DTYPE=bf16 step fidelity-270m-bf16 120 "$bin/real_270m" --test-threads=1 \
      || note "fidelity-270m-bf16: differences in bf16 are reported, not failed (see $out/fidelity-270m-bf16.out)"
  else
    note "fidelity-270m: skipped (no real_270m binary or no GGUF at $gguf)"
  fi
  if [ -x "$bin/batched_decode" ]; then
    # The 270M case needs the GGUF; the tiny fixtures travel with the tree.
    skip=(); [ -f "$gguf" ] || skip=(--skip real_270m)
    step fidelity-batched 150 "$bin/batched_decode" --test-threads=1 --nocapture "${skip[@]}" || failed=1
    grep -E 'max \|Δlogit\||test result' "$out/fidelity-batched.log" "$out/fidelity-batched.out" | tee -a "$summary" >&2
  else
    note "fidelity-batched: no batched_decode binary"; failed=1
  fi
  unset MEDGEMMA_TEST_DEVICE
fi

# ---- bench
if want bench; then
  step bench 240 "$bin/medgemmad" bench --random-4b --backend cuda --batch 1,8,32 --json || failed=1
  cp "$out/bench.out" "$out/medgemmad.json" 2>/dev/null
fi

# ---- hf
if want hf; then
  if python3 -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
    step hf 300 python3 scripts/bench/hf_random_4b.py || failed=1
    cp "$out/hf.out" "$out/transformers.json" 2>/dev/null
  else
    note "hf: skipped (python3 cannot import torch and transformers with CUDA)"
  fi
fi

# ---- table
if want table; then
  python3 - "$out/medgemmad.json" "$out/transformers.json" <<'PY' | tee -a "$summary" >&2
import json, sys

def load(p):
    try:
        text = open(p).read().strip()
        # the last JSON object on stdout
        return json.loads(text.splitlines()[-1]) if text else None
    except Exception:
        return None

def prefill(d):
    if not isinstance(d, dict): return None
    p = d.get("prefill")
    if isinstance(p, dict):
        return p.get("tokens_per_s") or (p.get("tokens", 0) / (p["ms"] / 1e3) if p.get("ms") else None)
    return d.get("prefill_tokens_per_s")

def decode(d):
    if not isinstance(d, dict): return {}
    # medgemmad bench: "batches": [{"batch", "aggregate_tokens_per_s", ...}]
    if isinstance(d.get("batches"), list):
        return {r.get("batch"): r.get("aggregate_tokens_per_s") for r in d["batches"] if isinstance(r, dict)}
    rows = d.get("decode")
    if isinstance(rows, list):
        return {r.get("batch"): r.get("tokens_per_s") for r in rows if isinstance(r, dict)}
    if d.get("decode_tokens_per_s") is not None:
        return {1: d["decode_tokens_per_s"]}
    return {}

ours, hf = load(sys.argv[1]), load(sys.argv[2])
cols = [("medgemmad", ours)]
for mode, r in ((hf or {}).get("modes") or {}).items():
    cols.append((f"hf {mode}", r))
def fmt(x): return "-" if x is None else f"{x:,.1f}"
rows = [("prefill 512 tok/s", [prefill(c) for _, c in cols])]
for b in (1, 8, 32):
    rows.append((f"decode b{b} tok/s", [decode(c).get(b) for _, c in cols]))
head = ["", *[n for n, _ in cols], *[f"ours/{n}" for n, _ in cols[1:]]]
print(" | ".join(f"{h:>18}" for h in head))
for name, vals in rows:
    ratios = [(vals[0] / v) if vals[0] and v else None for v in vals[1:]]
    print(" | ".join(f"{x:>18}" for x in [name, *map(fmt, vals), *[("-" if r is None else f"{r:.2f}x") for r in ratios]]))
if ours is None:
    print("(no medgemmad bench JSON: see bench.log)")
PY
fi

note "results in $out; overall $((SECONDS))s of ${budget}s"
exit $failed
