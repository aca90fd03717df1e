#!/usr/bin/env bash
# GPU check, for one machine with an NVIDIA GPU and no internet (made for: an
# H200, 16 cores, at most 8 minutes for the whole run). Binaries come from
# the build machine as ONE xz archive (that machine has no zstd; Python's
# lzma unpacks it); nothing is built or downloaded there.
#
#   Build machine:  scripts/gpu-check.sh --prepare DIR
#     builds (release, `cuda`) medgemmad, the fidelity test binaries
#     reference_tiny and batched_decode, and reference_tiny_window_mutant:
#     reference_tiny built from a copy of the tree whose sliding window is
#     one key wider (keys j >= i - W instead of j > i - W, in the host mask
#     and in the prefill mask built on the device), which must FAIL on the GPU
#     (built first; medgemma-model is then cleaned, so that the tree's own
#     build never takes the mutant's for fresh); stages NVIDIA's libdevice as
#     lib/medgemma/cuda (where medgemmad looks for it) and packs all of it
#     into DIR/gpu-check.tar.xz
#     (`xz --lzma2=preset=9,dict=400MiB`: the binaries share most bytes).
#   GPU machine:    MEDGEMMA_PREBUILT=DIR/gpu-check.tar.xz scripts/gpu-check.sh
#   Prepared for a machine reached with a copy of the checkout: DIR under the
#   ignored artifacts/ (e.g. artifacts/gpu), carried with the tree (archive
#   ~40-45 MB + the tree's ~9 MB, under 64 MiB), then in ONE call, as root:
#     OUT=<results dir> MEDGEMMA_PREBUILT=artifacts/gpu/gpu-check.tar.xz scripts/gpu-check.sh
#   (about 8 minutes at most; GPU_CHECK_BUDGET_S=470 leaves room under 540 s).
#
# Steps (each with its own time limit inside GPU_CHECK_BUDGET_S, default 470):
#   info      nvidia-smi, driver, `medgemmad --version` lists cuda, the
#             shipped libdevice, which toolkits this machine has (not used)
#   sandbox   scripts/gpu-sandbox-check.sh --enforce: `medgemmad serve` as
#             systemd starts it (root dropping to the service user, Landlock
#             and seccomp ENFORCED) on CUDA, asked one question through the UI
#             socket; the model is tests/fixtures/tiny_a_bf16 with its
#             embedding grown to the real 262 208-token vocabulary (random
#             rows) and the real tokenizer.json from the payload; PASS or FAIL
#   kernels   medgemmad bench --kernels: each decode kernel against the Burn
#             ops it replaces and its bandwidth floor, 1/8/32 rows, 4B shapes;
#             and a 64-row f32 product, ours and Burn's, each against an f64
#             product on the host (TF32 would show as ~1e-2, f32 as ~1e-5)
#   fidelity  on GPU 0 (MEDGEMMA_TEST_DEVICE=cuda): reference_tiny (f32 in
#             f32, no TF32: within 1e-3; bf16 compute within 0.15 of torch
#             bf16, same argmax; greedy equal); after the bench (so that the
#             budget never skips the bench): batched_decode, and the window
#             mutant, which must fail
#   bench     medgemmad bench --random-4b --backend cuda --batch 1,8,32 --image
#             (with one image through a real-shape tower: encode, TTFT), our
#             kernels; its warm-up's routing of each decode product and each
#             512-row prompt-chunk product (Burn's matmul against cubek's
#             faster routines, TFLOP/s each); after the extras
#             MEDGEMMA_PLAIN_BURN=1 (Burn ops only)
#   serve     medgemmad bench --serve 8,32: the engine as `serve` drives it
#             (warm-up, turns of staggered lengths, a new one joining as each
#             ends, taking over its row of the decode graph) against the bench's
#             lockstep batch 8 and 32 of the same run: tokens/s, captures
#   kcache    the on-disk kernel cache: `medgemmad serve` (sandbox enforced,
#             as the sandbox step) started twice on one sandbox.cache_dir;
#             the GPU warm-up of each start (the daemon's "warm-up N s" line),
#             the cubecl database file's size after each, how many more
#             seconds the first start took (the second loads PTX from disk),
#             and whether the warm-up turned the decode graph on
#   hf        scripts/bench/hf_random_4b.py (transformers, same shapes), when
#             python3 imports torch and transformers with CUDA
#   table     one table of all the above, with ratios
# Every step that runs medgemmad or a test binary does so with CUDA_PATH set
# to an empty folder (medgemmad replaces it with its own libdevice folder;
# the test binaries get the payload's lib/medgemma/cuda, as the daemon would)
# and no toolkit on PATH or LD_LIBRARY_PATH: a server with only the driver.
#
# Environment: OUT (results only, a few hundred kB; default /tmp/gpu-check),
# GPU_CHECK_WORK (unpacked payload, ~0.5 GB; default /tmp/gpu-check-work),
# GPU_CHECK_BUDGET_S,
# GPU_CHECK_STEPS (default info,sandbox,kernels,fidelity,bench,kcache,hf,serve,table;
# they run in the order above: serve right after bench).
# Exit: 0 every step that ran passed; 1 a step failed; 2 usage/prerequisite.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

die() { echo "gpu-check: $*" >&2; exit 2; }

# ---- --prepare DIR (build machine)
if [ "${1:-}" = "--prepare" ]; then
  dest="${2:?usage: scripts/gpu-check.sh --prepare DIR}"
  mkdir -p "$dest"
  dest="$(cd "$dest" && pwd)"
  # The release build's own environment, so nothing rebuilds the CUDA stack.
  MEDGEMMA_FEATURES=medgemmad/cuda
  # shellcheck source=scripts/release-env.sh
  source scripts/release-env.sh
  test_bins() { # (tree) prints the test executables
    (cd "$1" && cargo test --release --locked --workspace --features medgemmad/cuda --no-run \
        --test reference_tiny --test batched_decode --message-format=json 2>/dev/null) \
      | jq -r 'select(.reason=="compiler-artifact" and .profile.test==true and .executable!=null) | .executable'
  }
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/bin" "$stage/tests"
  # Cargo gives a workspace crate's build the same file names wherever the
  # tree lies, and judges it fresh by the sources of the tree it runs in. A
  # copy of the tree built into this target folder therefore writes the very
  # files the tree's own build wrote, and leaves them looking fresh to the
  # tree. (Seen: the archive's reference_tiny was the mutant, and its daemon
  # linked an older medgemma-model.) So the mutant is built first and its
  # binary copied out at once. Then medgemma-model's release build is
  # cleaned, so the tree rebuilds it from its own sources.
  # 1. The mutant: the same tree with the sliding window one key wider.
  mutant="$CARGO_TARGET_DIR/gpu-check-mutant"
  rm -rf "$mutant" && mkdir -p "$mutant"
  git ls-files -z | xargs -0 cp --parents -t "$mutant"
  grep -q '(kind == LayerType::Global || j + window > i)' "$mutant/model/src/gemma3.rs" \
    || die "the window condition moved: update the mutant in scripts/gpu-check.sh"
  sed -i 's/(kind == LayerType::Global || j + window > i)/(kind == LayerType::Global || j + window >= i)/' \
    "$mutant/model/src/gemma3.rs"
  # The prefill mask built on the device (gemma3.rs `device_mask`).
  grep -q 'k.add_scalar(as_i64(w)).greater(q)' "$mutant/model/src/gemma3.rs" \
    || die "the device mask's window condition moved: update the mutant in scripts/gpu-check.sh"
  sed -i 's/k.add_scalar(as_i64(w)).greater(q)/k.add_scalar(as_i64(w)).greater_equal(q)/' \
    "$mutant/model/src/gemma3.rs"
  cargo clean --release -p medgemma-model >&2 || die "cargo clean failed"
  mutant_tiny=$(test_bins "$mutant" | grep '/reference_tiny-') || die "mutant build failed"
  cp "$mutant_tiny" "$stage/tests/reference_tiny_window_mutant"
  # 2. The tree itself, from a clean medgemma-model: the test binaries, then
  #    the daemon (relinked against the library the tests just built).
  cargo clean --release -p medgemma-model >&2 || die "cargo clean failed"
  tests=$(test_bins "$root") || die "test build failed"
  [ -n "$tests" ] || die "no test binaries built"
  for f in $tests; do n=$(basename "$f"); cp "$f" "$stage/tests/${n%%-*}"; done
  rel=$(scripts/build-release.sh | tail -n 1) || die "release build failed"
  cp "$rel/medgemmad" "$stage/bin/"
  cmp -s "$stage/tests/reference_tiny" "$stage/tests/reference_tiny_window_mutant" \
    && die "the staged reference_tiny is the mutant"
  # The real Gemma 3 tokenizer for the sandbox step (3.5 MB in the archive).
  assets="${MEDGEMMA_ASSETS:-$HOME/.cache/medgemma-assets}"
  mkdir -p "$stage/assets"
  cp "$assets/tokenizer/tokenizer.json" "$stage/assets/" || die "no tokenizer.json under $assets"
  cp -r "$rel/../lib" "$stage/lib"
  [ -f "$stage/lib/medgemma/cuda/nvvm/libdevice/libdevice.10.bc" ] || die "no libdevice staged"
  strip "$stage"/bin/* "$stage"/tests/* 2>/dev/null
  tar -C "$stage" -cf - bin lib tests assets \
    | xz -T1 --lzma2=preset=9,dict=400MiB >"$dest/gpu-check.tar.xz" || die "xz failed"
  ls -l "$dest/gpu-check.tar.xz"
  size=$(stat -c %s "$dest/gpu-check.tar.xz")
  [ "$size" -le $((60 * 1024 * 1024)) ] || die "the archive is $size bytes, over 60 MiB"
  exit 0
fi

out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
budget="${GPU_CHECK_BUDGET_S:-470}"
deadline=$((SECONDS + budget))
steps=",${GPU_CHECK_STEPS:-info,sandbox,kernels,fidelity,bench,kcache,hf,serve,table},"
summary="$out/summary.txt"
: >"$summary"
failed=0

note() { echo "$*" | tee -a "$summary" >&2; }
want() { [[ "$steps" == *",$1,"* ]]; }

# step NAME LIMIT_S CMD...: runs CMD with stdout to $out/NAME.out and stderr
# to $out/NAME.log, within LIMIT_S and the overall budget.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 15 ]; then
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

# ---- the payload
[ -n "${MEDGEMMA_PREBUILT:-}" ] || die "set MEDGEMMA_PREBUILT to the archive of scripts/gpu-check.sh --prepare"
# Unpacked binaries and the sandbox step's model stay out of $OUT (only
# results go there: a caller may copy that folder back).
work="${GPU_CHECK_WORK:-/tmp/gpu-check-work}"
mkdir -p "$work"
pay="$work/payload"
rm -rf "$pay" && mkdir -p "$pay"
python3 - "$MEDGEMMA_PREBUILT" "$pay" <<'PY' || die "cannot unpack $MEDGEMMA_PREBUILT"
import lzma, sys, tarfile
with lzma.open(sys.argv[1]) as f, tarfile.open(fileobj=f) as t:
    t.extractall(sys.argv[2])
PY
chmod +x "$pay"/bin/* "$pay"/tests/*
bin="$pay/bin"
[ -x "$bin/medgemmad" ] || die "no medgemmad in the payload"

# A server with only the driver: CUDA_PATH names an empty folder, no toolkit
# on the search paths (medgemmad must bring its own libdevice).
empty="$work/empty-cuda-path"
mkdir -p "$empty"
export CUDA_PATH="$empty"
PATH=$(echo "$PATH" | tr ':' '\n' | grep -v -i cuda | paste -sd: -)
LD_LIBRARY_PATH=$(echo "${LD_LIBRARY_PATH:-}" | tr ':' '\n' | grep -v -i 'cuda-\|/cuda/\|cuda$' | paste -sd: -)
export PATH LD_LIBRARY_PATH
shipped="$pay/lib/medgemma/cuda"

# ---- info
if want info; then
  {
    nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,memory.free --format=csv 2>&1
    echo "--- medgemmad --version"; "$bin/medgemmad" --version
    echo "--- libdevice shipped in the payload"
    sha256sum "$shipped/nvvm/libdevice/libdevice.10.bc" 2>&1
    echo "--- toolkits on this machine (NOT used: CUDA_PATH=$CUDA_PATH)"
    ls -d /usr/local/cuda* /opt/cuda 2>/dev/null || echo none
    echo "PATH=$PATH"; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  } >"$out/info.txt" 2>&1
  cat "$out/info.txt" >&2
  grep -Eq '^backends:.*\bcuda\b' "$out/info.txt" || { note "info: medgemmad has no cuda backend"; failed=1; }
fi

# ---- sandbox (issue: the GPU path works where the appliance is installed)
if want sandbox; then
  sb="$work/sandbox"
  rm -rf "$sb" && mkdir -p "$sb/model" "$sb/keys"
  # The tiny bf16 fixture with the real vocabulary (tied embedding grown to
  # 262 208 rows: its 320 rows, then random ones of about ±0.01), and audit
  # keys in the audit crate's formats (a throwaway chain key and content key).
  python3 - "$root/tests/fixtures/tiny_a_bf16" "$sb" <<'PY' || { note "sandbox: cannot write the model"; failed=1; }
import hashlib, json, os, struct, sys
src, dst = sys.argv[1], sys.argv[2]
VOCAB = 262208
cfg = json.load(open(os.path.join(src, "config.json")))
cfg["text_config"]["vocab_size"] = VOCAB
json.dump(cfg, open(os.path.join(dst, "model", "config.json"), "w"), indent=1)
f = open(os.path.join(src, "model.safetensors"), "rb")
n = struct.unpack("<Q", f.read(8))[0]
header = json.loads(f.read(n)); body = f.read()
meta = header.pop("__metadata__", None)
out_header, chunks, off = {}, [], 0
for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    data = body[t["data_offsets"][0]:t["data_offsets"][1]]
    if name.endswith("embed_tokens.weight"):
        rows, dim = t["shape"]
        extra = bytearray(os.urandom(2 * (VOCAB - rows) * dim))
        table = bytes((0x3C | (b & 0x80)) for b in range(256))  # sign kept, exponent 2^-7..2^-6
        extra[1::2] = bytes(extra[1::2]).translate(table)
        data = data + bytes(extra)
        t = dict(t, shape=[VOCAB, dim])
    out_header[name] = dict(dtype=t["dtype"], shape=t["shape"], data_offsets=[off, off + len(data)])
    chunks.append(data); off += len(data)
if meta is not None:
    out_header["__metadata__"] = meta
h = json.dumps(out_header).encode(); h += b" " * (-len(h) % 8)
with open(os.path.join(dst, "model", "model.safetensors"), "wb") as o:
    o.write(struct.pack("<Q", len(h))); o.write(h)
    for c in chunks: o.write(c)
s = "medgemma-audit key file v1\nnext_seq=0\nkey=%s\nhead=%s\n" % (os.urandom(32).hex(), "00" * 32)
s += "check=%s\n" % hashlib.sha256(s.encode()).digest()[:8].hex()
for name, text in (("current", s), ("content", "medgemma-audit content key v1\nkey=%s\n" % os.urandom(32).hex())):
    fd = os.open(os.path.join(dst, "keys", name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, text.encode()); os.close(fd)
PY
  chmod -R a+rX "$sb/model" "$pay/assets" "$pay/lib"
  if [ "$(id -u)" != 0 ]; then
    note "sandbox: FAIL: not root (the daemon must drop root itself)"; failed=1
  elif step sandbox 150 scripts/gpu-sandbox-check.sh --enforce --no-strace --timeout 120 \
      --bin "$bin/medgemmad" --model "$sb/model" --tokenizer "$pay/assets/tokenizer.json" --keys "$sb/keys"; then
    grep -E '^(PASS|FAIL)' "$out/sandbox.out" | tee -a "$summary" >&2
  else
    grep -E '^(PASS|FAIL)' "$out/sandbox.out" | tee -a "$summary" >&2
    grep -q '^FAIL' "$out/sandbox.out" \
      || note "FAIL: sandboxed daemon on CUDA: $(tail -n 1 "$out/sandbox.log" | cut -c1-300) (see $out/sandbox.out)"
    failed=1
  fi
fi

# ---- kernels
if want kernels; then
  step kernels 90 "$bin/medgemmad" bench --kernels --backend cuda --batch 1,8,32 || failed=1
fi

# ---- fidelity (reference_tiny: f32 within 1e-3, bf16 within 0.15 of torch)
run_fidelity() { # NAME LIMIT: one fidelity test binary on GPU 0
  local t=$1 limit=$2
  if [ -x "$pay/tests/$t" ]; then
    MEDGEMMA_FIXTURES="$root/tests/fixtures" MEDGEMMA_TEST_DEVICE=cuda CUDA_PATH="$shipped" \
      step "fidelity-$t" "$limit" "$pay/tests/$t" --test-threads=1 --nocapture --skip real_270m || failed=1
    grep -hE 'max \|Δlogit\||test result|panicked|FAILED' "$out/fidelity-$t.log" "$out/fidelity-$t.out" \
      | tee -a "$summary" >&2
  else
    note "fidelity-$t: no binary"; failed=1
  fi
}
if want fidelity; then
  run_fidelity reference_tiny 120
fi

# ---- bench (before the extras below, so the budget never skips it; 210 s:
# its warm-up now also compiles and times cubek's chunk routines, 7 per
# weight shape, whose compile time no machine here can measure)
if want bench; then
  step bench 210 "$bin/medgemmad" bench --random-4b --backend cuda --batch 1,8,32 --image --json || failed=1
fi

# ---- serve: the engine's own path (continuous batching, a new turn joining
# as each ends and taking over its row of the decode graph) against the
# bench's lockstep batch of the same size, in one run (right after the
# bench: it measures a target, so the budget must not skip it)
if want serve; then
  step serve 120 "$bin/medgemmad" bench --random-4b --backend cuda --batch 8,32 --serve 8,32 \
    --new-tokens 32 --prompt-tokens 64 --bandwidth-mib 256 \
    --tokenizer "$pay/assets/tokenizer.json" --json || true
fi

# ---- extras: batched = alone on the GPU, the window mutant (must fail),
# the bench with Burn's ops only
if want fidelity; then
  run_fidelity batched_decode 90
  if [ -x "$pay/tests/reference_tiny_window_mutant" ]; then
    if MEDGEMMA_FIXTURES="$root/tests/fixtures" MEDGEMMA_TEST_DEVICE=cuda CUDA_PATH="$shipped" \
        step fidelity-mutant 90 "$pay/tests/reference_tiny_window_mutant" --test-threads=1 --nocapture; then
      note "fidelity-mutant: FAIL: a sliding window one key wider passed the GPU fidelity tests"
      failed=1
    else
      note "fidelity-mutant: PASS: the window moved by one fails $(grep -c '^test .* FAILED$' "$out/fidelity-mutant.out") GPU tests"
      grep -hE '^test .* FAILED$|differ' "$out/fidelity-mutant.out" "$out/fidelity-mutant.log" | head -8 | tee -a "$summary" >&2
    fi
  fi
fi
if want bench; then
  MEDGEMMA_PLAIN_BURN=1 step bench-plain 120 "$bin/medgemmad" bench --random-4b --backend cuda \
    --batch 1,8,32 --new-tokens 32 --json || true
fi

# ---- kcache: first start (compiles every kernel, fills the cache) against a
# second start of the same binary on the same cache_dir (loads them).
# Reuses the sandbox step's model and keys.
kcache_serve() { # RUN: one sandboxed start, warm-up and one answer
  local run=$1 w="$work/kcache" pid ready=0
  mkdir -p "$w/cache" "$w/audit-$run" "$w/key-$run"
  cp "$work/sandbox/keys/current" "$work/sandbox/keys/content" "$w/key-$run/"
  cat >"$w/medgemmad-$run.toml" <<TOML
[model]
path = "$work/sandbox/model"
tokenizer_path = "$pay/assets/tokenizer.json"
label = "kernel cache check"
demo = true

[engine]
backend = "cuda"
context_length = 512
max_new_tokens = 8

[server]
ui_socket = "$w/ui-$run.sock"

[audit]
dir = "$w/audit-$run"
key_file = "$w/key-$run/current"
content_key_file = "$w/key-$run/content"

[sandbox]
user = "nobody"
cache_dir = "$w/cache"
TOML
  chown -R nobody: "$w" && chmod 755 "$w"
  local t0=$SECONDS
  "$bin/medgemmad" serve --config "$w/medgemmad-$run.toml" 2>"$out/kcache-$run.log" &
  pid=$!
  for _ in $(seq 1 600); do
    grep -q "medgemmad: ready:" "$out/kcache-$run.log" && { ready=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  local t_ready=$((SECONDS - t0))
  [ "$ready" = 1 ] && curl -sS --max-time 60 --unix-socket "$w/ui-$run.sock" \
    -H 'Host: localhost:6006' -H 'Origin: http://localhost:6006' -H 'Content-Type: application/json' \
    -d '{"conversation_id":null,"message":"Say hello.","max_new_tokens":8}' \
    http://localhost/api/chat >"$w/chat-$run.txt" 2>&1
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  local warm db size
  warm=$(grep -oE 'warm-up [0-9.]+ s' "$out/kcache-$run.log" | grep -oE '[0-9.]+' | head -1)
  db=$(find "$w/cache/cubecl" -name '*.db' 2>/dev/null | head -1)
  size=$( [ -n "$db" ] && stat -c %s "$db" || echo 0)
  echo "$run: ready=$ready in ${t_ready}s, warm-up ${warm:-?} s, answered=$(cat "$w/chat-$run.txt" 2>/dev/null | grep -c '^event: done'), cubecl db ${db:-none} ${size} bytes"
  grep -E 'kernels are kept|cubecl|Unable to cache|decode graph' "$out/kcache-$run.log" | head -4
}
if want kcache; then
  if [ "$(id -u)" != 0 ] || [ ! -f "$work/sandbox/model/config.json" ]; then
    note "kcache: skipped (needs root and the sandbox step's model)"
  else
    rm -rf "$work/kcache"
    step kcache 260 bash -c "$(declare -f kcache_serve); work='$work' pay='$pay' bin='$bin' out='$out'; \
      kcache_serve first && kcache_serve second" || failed=1
    cat "$out/kcache.out" | tee -a "$summary" >&2
    python3 - "$out/kcache.out" <<'PY' | tee -a "$summary" >&2
import re, sys
w = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(first|second): .*?warm-up ([0-9.]+) s", open(sys.argv[1]).read(), re.M)}
if len(w) == 2:
    print(f"kcache: warm-up first start {w['first']:.1f} s, second start {w['second']:.1f} s "
          f"({w['first'] - w['second']:+.1f} s saved by the on-disk kernel cache)")
else:
    print("kcache: FAIL: no warm-up figure for both starts (see kcache-*.log)")
PY
  fi
fi

# ---- hf
if want hf; then
  if python3 -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
    step hf 180 python3 scripts/bench/hf_random_4b.py --new-tokens 32 || true
  else
    note "hf: skipped (python3 cannot import torch and transformers with CUDA)"
  fi
fi

# ---- table
if want table; then
  python3 - "$out" <<'PY' | tee -a "$summary" >&2
import json, os, sys
out = sys.argv[1]

def last_json(name):
    try:
        lines = [l for l in open(os.path.join(out, name + ".out")).read().splitlines() if l.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except Exception:
        return None

k = last_json("kernels")
if k:
    bw = k.get("bandwidth_bytes_per_s") or 0
    print(f"kernels (bandwidth probe {bw / 1e12:.2f} TB/s): median µs, floor = bytes / bandwidth")
    print(f"{'kernel':40} {'ours':>9} {'burn':>9} {'floor':>9} {'floor/ours':>10} {'burn/ours':>9} {'max|Δ|':>9}")
    for r in k.get("kernels", []):
        ours, burn, floor = r["kernel_us"], r["burn_us"], r["floor_us"]
        print(f"{r['name']:40} {ours:9.1f} {burn:9.1f} {floor:9.1f} {floor / ours:10.2f} {burn / ours:9.2f} {r['max_abs_diff']:9.2e}")
        if r.get("burn_max_abs_diff") is not None:
            ok = r["max_abs_diff"] < 1e-3
            print(f"  f32 against an f64 product: ours {r['max_abs_diff']:.2e}, Burn's {r['burn_max_abs_diff']:.2e} "
                  f"(TF32 shows as ~1e-2 here): {'PASS' if ok else 'FAIL'}: f32 products without TF32")
else:
    print("(no kernel micro-benchmark: see kernels.log)")

def decode(d):
    if not isinstance(d, dict): return {}
    if isinstance(d.get("batches"), list):
        return {r.get("batch"): r.get("aggregate_tokens_per_s") for r in d["batches"]}
    rows = d.get("decode")
    if isinstance(rows, list):
        return {r.get("batch"): r.get("tokens_per_s") for r in rows}
    return {}

def ttft_ms(d):
    if not isinstance(d, dict): return None
    if d.get("time_to_first_token_s") is not None: return d["time_to_first_token_s"] * 1e3
    p = d.get("prefill")
    return p.get("ms") if isinstance(p, dict) else None

bench = last_json("bench")
# The same bench's decode with the step replayed as one CUDA graph.
graph = {"batches": [{"batch": r.get("batch"), "aggregate_tokens_per_s": (r.get("graph") or {}).get("aggregate_tokens_per_s")}
                     for r in (bench or {}).get("batches") or []]}
cols = [("medgemmad", bench), ("medgemmad graph", graph), ("plain burn", last_json("bench-plain"))]
hf = last_json("hf")
for mode, r in ((hf or {}).get("modes") or {}).items():
    cols.append((f"hf {mode}", r))
def fmt(x): return "-" if x is None else f"{x:,.1f}"
print()
print(" | ".join(f"{h:>16}" for h in ["", *[n for n, _ in cols], *[f"ours/{n}" for n, _ in cols[1:]]]))
rows = [("ttft 512 ms", [ttft_ms(c) for _, c in cols], True)]
for b in (1, 8, 32):
    rows.append((f"decode b{b} tok/s", [decode(c).get(b) for _, c in cols], False))
for name, vals, lower_better in rows:
    ratios = []
    for v in vals[1:]:
        if vals[0] and v:
            ratios.append(f"{(v / vals[0]) if lower_better else (vals[0] / v):.2f}x")
        else:
            ratios.append("-")
    print(" | ".join(f"{x:>16}" for x in [name, *map(fmt, vals), *ratios]))
for r in (bench or {}).get("batches") or []:
    g = r.get("graph")
    if isinstance(g, dict):
        print(f"graph b{r.get('batch')}: hardware {g.get('hardware_graph')}, capture {g.get('capture_ms', 0):.1f} ms, "
              f"step {g.get('step_ms', 0):.2f} ms against {r.get('step_ms', 0):.2f} ms launched; "
              f"first 3 steps vs launched: max|Δ| {g.get('max_abs_diff_vs_launched', float('nan')):.2e}, "
              f"same greedy tokens {g.get('same_greedy_tokens_as_launched')}")
        if g.get("graph_refused"):
            print(f"graph b{r.get('batch')}: the runtime refused the recording: {g['graph_refused']}")
for r in (last_json("serve") or {}).get("serve") or []:
    print(f"serve {r.get('in_flight')} in flight: {r.get('aggregate_tokens_per_s', 0):,.1f} tok/s in all "
          f"({r.get('aggregate_tokens_per_s_outside_begin', 0):,.1f} outside the new turns' prefill), "
          f"{r.get('fraction_of_bench', float('nan')):.2f} of the bench's batch {r.get('in_flight')} "
          f"({r.get('bench_batch_tokens_per_s', float('nan')):,.1f}); mean batch {r.get('mean_batch', 0):.1f}, "
          f"{r.get('turns')} turns, {r.get('captures')} captures "
          f"({r.get('ghosts_let_go')} let go for ghost memory), {r.get('products_off_skinny')} product routes off the skinny kernel, graph {r.get('decode_graph')} "
          f"(hardware {r.get('hardware_graph')}); target: within 10% of the bench")
# How the bench's warm-up routed each decode product (skinny or tiled
# kernel, Burn's matmul, or from 16 rows one of cubek's other routines),
# with their times and the weights' bandwidth floor.
bw = (bench or {}).get("bandwidth_bytes_per_s") or 0
for t in (bench or {}).get("products") or []:
    n, k = (int(v) for v in t["shape"].split("x"))
    floor = n * k * 2 / bw * 1e6 if bw else float("nan")
    route = t["route"]
    if isinstance(route, dict):  # {"cubek": name}: one of cubek's other routines
        route = "cubek " + str(route.get("cubek"))
    others = "".join(f", {r['routine']} " + ("declined" if r["us"] is None else f"{r['us']:8.1f} us")
                     for r in t.get("routines") or [])
    print(f"product {t['shape']:>12} ({t['layers']:>2} layers) x{t['rows']:<2}: skinny {t['skinny_us']:8.1f} us, "
          f"tiled {t['tiled_us']:8.1f} us (agrees {t['tiled_agrees']}), burn {t['burn_us']:8.1f} us "
          f"(agrees {t['burn_agrees']}){others}, floor {floor:7.1f} us: {route}")
# How the bench's warm-up routed each prompt-chunk product (Burn's matmul
# or one of cubek's routines), each routine's time and its TFLOP/s.
for t in (bench or {}).get("chunk_products") or []:
    n, k = (int(v) for v in t["shape"].split("x"))
    flop = 2 * t["rows"] * n * k
    def rate(us): return "declined" if us is None else f"{us:8.1f} us {flop / us / 1e6:6.1f} TF/s"
    routines = ", ".join(f"{r['routine']} {rate(r['us'])}" for r in t.get("routines") or [])
    print(f"chunk {t['shape']:>12} ({t['layers']:>2} layers) x{t['rows']}: burn {rate(t['burn_us'])}; "
          f"{routines}: {t['route']}")
if isinstance(bench, dict) and bench.get("chunk_products"):
    ts = bench["chunk_products"]
    burn = sum(t["burn_us"] * t["layers"] for t in ts) / 1e3
    def chosen(t):
        return next((r["us"] for r in t.get("routines") or [] if r["routine"] == t["route"] and r["us"]), t["burn_us"])
    tuned = sum(chosen(t) * t["layers"] for t in ts) / 1e3
    print(f"chunk products of one {ts[0]['rows']}-token chunk: {burn:.2f} ms on Burn's matmul, {tuned:.2f} ms as routed "
          f"(tuning took {bench.get('chunk_products_tuning_s', 0):.1f} s; decode routes {bench.get('products_tuning_s', 0):.1f} s)")
b = cols[0][1]
if isinstance(b, dict):
    print(f"batch-1 bandwidth fraction: {b.get('bandwidth_fraction_batch1', 0):.3f} "
          f"(probe {b.get('bandwidth_bytes_per_s', 0) / 1e12:.2f} TB/s); targets: b1 >= 400, b8 >= 2500, "
          f"b32 >= 6000 tok/s, ttft <= 20 ms")
PY
fi

note "results in $out; overall $SECONDS s of ${budget}s"
exit $failed
