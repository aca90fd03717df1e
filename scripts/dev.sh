#!/usr/bin/env bash
# Run the appliance on this machine without systemd: the README's main command.
#
#   scripts/dev.sh                 # the real Gemma 3 270M demo model (fetched once)
#   scripts/dev.sh MODEL           # a MedGemma directory or .gguf file you have
#   PORT=6007 scripts/dev.sh       # another loopback port
#   MEDGEMMAD=path scripts/dev.sh  # use an already built binary (skips the build)
#
# Fetches the test assets (scripts/fetch-assets.sh), builds the release
# binary, writes a development configuration into a private runtime folder,
# starts `medgemmad serve` on a Unix socket there and `medgemmad forward`
# from 127.0.0.1:$PORT to it, then waits; Ctrl-C stops both. No sandbox is
# applied in this mode (the status page says so).
set -euo pipefail
cd "$(dirname "$0")/.."

port="${PORT:-6006}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/medgemma-target}"

scripts/setup-system.sh
assets="$(scripts/fetch-assets.sh | tail -n 1)"
if [ $# -ge 1 ]; then
  model="$(realpath "$1")"
  label="MedGemma ($(basename "$model"))"
  demo=false
  tokenizer_line=""
else
  model="$assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
  label="Gemma 3 270M"
  demo=true
  tokenizer_line="tokenizer_path = \"$assets/tokenizer/tokenizer.json\""
fi
[ -e "$model" ] || { echo "dev.sh: $model does not exist" >&2; exit 2; }

if [ -n "${MEDGEMMAD:-}" ]; then
  bin="$MEDGEMMAD"
else
  echo "dev.sh: building medgemmad (release; the first build of Burn takes a while)" >&2
  cargo build --release --locked -p medgemmad -p medgemmactl
  bin="$CARGO_TARGET_DIR/release/medgemmad"
fi

run="$(mktemp -d "${XDG_RUNTIME_DIR:-/tmp}/medgemmad-dev.XXXXXX")"
chmod 700 "$run"
# Audit keys, pins and the audit directory: the same `medgemmactl setup` an
# admin runs (its configuration output is replaced by the dev one below).
ctl="${MEDGEMMACTL:-$(dirname "$bin")/medgemmactl}"
setup_args=(--model "$model" --state-dir "$run/state" --config-out "$run/setup.toml" --run-dir "$run" --label "$label")
[ "$demo" = true ] && setup_args+=(--demo --tokenizer "$assets/tokenizer/tokenizer.json")
"$ctl" setup "${setup_args[@]}"
cat > "$run/medgemmad.toml" <<TOML
# Written by scripts/dev.sh; see packaging/medgemmad.example.toml.
[model]
path = "$model"
$tokenizer_line
label = "$label"
demo = $demo

[engine]
backend = "auto"
context_length = 8192
queue_length = 8
max_new_tokens = 1024

[server]
ui_socket = "$run/ui.sock"
listen_port = $port

[audit]
dir = "$run/state/audit"
key_file = "$run/state/audit-key/current"
content_key_file = "$run/state/audit-key/content"
TOML

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT INT TERM

# As root the daemon would drop to the `medgemma` service user, which a
# development machine may lack: run it unsandboxed there (loudly). As any
# other user it runs sandboxed (Landlock and seccomp, no drop).
sandbox_args=()
[ "$(id -u)" = 0 ] && sandbox_args=(--insecure-no-sandbox)
"$bin" serve --config "$run/medgemmad.toml" "${sandbox_args[@]}" &
pids+=($!)
# The socket appears once the daemon binds it; it serves once the model is loaded.
for _ in $(seq 1 600); do
  [ -S "$run/ui.sock" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "dev.sh: medgemmad exited" >&2; exit 1; }
  sleep 0.1
done
"$bin" forward --listen "127.0.0.1:$port" --to "$run/ui.sock" &
pids+=($!)

echo "dev.sh: open http://localhost:$port/ once medgemmad says ready (Ctrl-C stops both)" >&2
wait -n "${pids[@]}"
