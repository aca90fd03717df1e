#!/usr/bin/env bash
# Run the appliance on this machine without systemd: the README's main command.
#
#   scripts/dev.sh                 # the real Gemma 3 270M demo model (fetched once)
#   scripts/dev.sh MODEL           # a MedGemma directory or .gguf file you have
#   PORT=6007 scripts/dev.sh       # another loopback port
#   MEDGEMMAD=path scripts/dev.sh  # use an already built binary (skips the build)
#
# Fetches the test assets (scripts/fetch-assets.sh), builds the release
# binaries, sets the appliance up in a private runtime folder with the same
# `medgemmactl setup` an administrator runs (plus a drop-in with the
# development settings), starts `medgemmad serve` there and `medgemmad
# forward` from 127.0.0.1:$PORT to its socket, then waits; Ctrl-C stops both.
#
# The daemon runs the way the package runs it: started as root it drops to
# an unprivileged user (`medgemma`, created like the package does when it is
# missing, else `nobody`), then Landlock and seccomp are enforced; started as
# another user it stays that user, sandboxed. The status page shows it green.
# The demo model is a small base model that would ramble: its answers are
# capped at 128 tokens so a whole answer appears in seconds.
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

# Who the daemon runs as.
user=""
if [ "$(id -u)" = 0 ]; then
  if ! getent passwd medgemma >/dev/null; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin medgemma 2>/dev/null || true
  fi
  if getent passwd medgemma >/dev/null; then user=medgemma; else user=nobody; fi
fi
tokenizer=""
[ "$demo" = true ] && tokenizer="$assets/tokenizer/tokenizer.json"
# The service user must be able to read the model: files under root's home
# are not, so they are linked (or copied) into the runtime folder.
if [ -n "$user" ] && ! runuser -u "$user" -- test -r "$model"; then
  mkdir -p "$run/model"
  for f in "$model" ${tokenizer:+"$tokenizer"}; do
    ln "$f" "$run/model/" 2>/dev/null || cp -r "$f" "$run/model/"
  done
  model="$run/model/$(basename "$model")"
  [ -n "$tokenizer" ] && tokenizer="$run/model/$(basename "$tokenizer")"
  chmod -R a+rX "$run/model"
fi

# Keys, pins, audit directory and the configuration: `medgemmactl setup`, as an
# administrator runs it; the development settings go into a drop-in.
ctl="${MEDGEMMACTL:-$(dirname "$bin")/medgemmactl}"
setup_args=(--config "$run/medgemmad.toml" setup --model "$model" --state-dir "$run/state" --run-dir "$run" --label "$label")
[ "$demo" = true ] && setup_args+=(--demo --tokenizer "$tokenizer")
# Clinicians log in (auth.mode = "accounts", as installed): the demo makes
# one account, "demo", with a password made for this run and shown once
# (there is no default password anywhere).
password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')"
setup_args+=(--user demo --password-stdin)
printf '%s\n' "$password" | "$ctl" "${setup_args[@]}"
mkdir -p "$run/medgemmad.d"
max_new=1024
[ "$demo" = true ] && max_new=128
{
  echo "# scripts/dev.sh: the loopback port, the demo's answer cap, the service user."
  echo "[engine]"
  echo "max_new_tokens = $max_new"
  echo "[server]"
  echo "listen_port = $port"
  if [ -n "$user" ]; then
    echo "[sandbox]"
    echo "user = \"$user\""
  fi
} >"$run/medgemmad.d/90-dev.toml"
# The daemon's user owns its runtime folder (sockets, audit log, keys).
[ -n "$user" ] && chown -R "$user:" "$run" && chmod 755 "$run"
"$ctl" --config "$run/medgemmad.toml" config show >/dev/null

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT INT TERM

"$bin" serve --config "$run/medgemmad.toml" &
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
echo "dev.sh: log in as demo with the password $password (made for this run only)" >&2
wait -n "${pids[@]}"
