# Sourced by tests/e2e/run.sh and scripts/load-test.sh: builds medgemmad (or
# uses $MEDGEMMAD), starts `medgemmad serve` with the real Gemma 3 270M demo
# model on a private Unix socket and `medgemmad forward` on a free loopback
# port, and stops both on exit.
#
# The daemon has the packaged answer-style presets and the terminology
# fixtures of tests/fixtures/terms (imported with `medgemmactl terms
# import`). Accounts: E2E_AUTH=open (the default: nobody logs in) or
# E2E_AUTH=accounts, which creates the clinician account e2e-clinician with a
# personal API token before the daemon starts.
#
# After `e2e_start [queue_length] [max_new_tokens]`:
#   E2E_PORT   the loopback port    E2E_URL   http://127.0.0.1:$E2E_PORT
#   E2E_DIR    the private folder (config, socket, daemon.log)
#   E2E_CTL    medgemmactl          E2E_CONFIG the daemon's configuration
#   E2E_TOKEN  e2e-clinician's API token (E2E_AUTH=accounts)

e2e_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

e2e_build() {
  if [ -n "${MEDGEMMAD:-}" ]; then
    E2E_BIN="$MEDGEMMAD"
    return
  fi
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/medgemma-target}"
  (cd "$e2e_root" && cargo build --locked -p medgemmad -p medgemmactl >&2)
  E2E_BIN="$CARGO_TARGET_DIR/debug/medgemmad"
}

e2e_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

e2e_pids=()
e2e_stop() {
  for pid in "${e2e_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${e2e_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  e2e_pids=()
  [ -n "${E2E_DIR:-}" ] && rm -rf "$E2E_DIR"
}

e2e_start() {
  local queue="${1:-4}" max_new="${2:-64}"
  local assets
  assets="${MEDGEMMA_ASSETS:-$("$e2e_root/scripts/fetch-assets.sh" | tail -n 1)}"
  e2e_build
  E2E_DIR="$(mktemp -d "${TMPDIR:-/tmp}/medgemmad-e2e.XXXXXX")"
  chmod 700 "$E2E_DIR"
  # The audit keys, pins and log directory come from the real admin path:
  # `medgemmactl setup` (its own config output is not used here).
  local ctl="${MEDGEMMACTL:-$(dirname "$E2E_BIN")/medgemmactl}"
  # E2E_MODEL / E2E_LABEL: another model (the browser's image test serves a
  # vision fixture); the real 270M GGUF by default.
  local model="${E2E_MODEL:-$assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf}"
  local label="${E2E_LABEL:-Gemma 3 270M}"
  "$ctl" setup --model "$model" \
    --tokenizer "$assets/tokenizer/tokenizer.json" --state-dir "$E2E_DIR/state" \
    --config-out "$E2E_DIR/setup.toml" --run-dir "$E2E_DIR" --demo --label "$label" \
    > "$E2E_DIR/setup.log" 2>&1 || { cat "$E2E_DIR/setup.log" >&2; echo "e2e: medgemmactl setup failed" >&2; return 1; }
  E2E_PORT="$(e2e_free_port)"
  E2E_URL="http://127.0.0.1:$E2E_PORT"
  cat > "$E2E_DIR/medgemmad.toml" <<TOML
[model]
path = "$model"
tokenizer_path = "$assets/tokenizer/tokenizer.json"
label = "$label"
demo = true

[engine]
backend = "cpu"
context_length = 2048
queue_length = $queue
max_new_tokens = $max_new

[server]
ui_socket = "$E2E_DIR/ui.sock"
admin_socket = "$E2E_DIR/admin.sock"
listen_port = $E2E_PORT

[audit]
dir = "$E2E_DIR/state/audit"
key_file = "$E2E_DIR/state/audit-key/current"
content_key_file = "$E2E_DIR/state/audit-key/content"

[answers]
styles_dir = "$e2e_root/packaging/styles"
terms_dir = "$E2E_DIR/state/terms"

[auth]
mode = "${E2E_AUTH:-open}"
accounts_dir = "$E2E_DIR/state/accounts"
TOML
  E2E_CTL="$ctl"
  E2E_CONFIG="$E2E_DIR/medgemmad.toml"
  local fixtures="$e2e_root/tests/fixtures/terms"
  "$ctl" --config "$E2E_CONFIG" terms import icd10 "$fixtures/icd10cm-codes-2025.txt" >> "$E2E_DIR/setup.log" 2>&1 &&
    "$ctl" --config "$E2E_CONFIG" terms import icd11 "$fixtures/SimpleTabulation-ICD-11-MMS-en.txt" >> "$E2E_DIR/setup.log" 2>&1 &&
    "$ctl" --config "$E2E_CONFIG" terms import synonyms "$fixtures/synonyms.tsv" >> "$E2E_DIR/setup.log" 2>&1 ||
    { cat "$E2E_DIR/setup.log" >&2; echo "e2e: medgemmactl terms import failed" >&2; return 1; }
  E2E_TOKEN=""
  if [ "${E2E_AUTH:-open}" = accounts ]; then
    # No default password exists: the test makes its own, and a token.
    python3 -c 'import secrets; print(secrets.token_urlsafe(18))' |
      "$ctl" --config "$E2E_CONFIG" user add e2e-clinician --password-stdin >> "$E2E_DIR/setup.log" 2>&1 ||
      { cat "$E2E_DIR/setup.log" >&2; echo "e2e: medgemmactl user add failed" >&2; return 1; }
    E2E_TOKEN="$("$ctl" --config "$E2E_CONFIG" --json user token create e2e-clinician --label e2e |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"
  fi
  trap e2e_stop EXIT
  # As root the daemon would drop to the `medgemma` user; these tests test
  # HTTP, daemon/tests/e2e_sandbox.rs tests the sandbox.
  local sandbox_args=()
  [ "$(id -u)" = 0 ] && sandbox_args=(--insecure-no-sandbox)
  "$E2E_BIN" serve --config "$E2E_DIR/medgemmad.toml" "${sandbox_args[@]}" 2> "$E2E_DIR/daemon.log" &
  e2e_pids+=($!)
  local i
  for i in $(seq 1 3000); do
    grep -q "medgemmad: ready:" "$E2E_DIR/daemon.log" && break
    if ! kill -0 "${e2e_pids[0]}" 2>/dev/null; then
      cat "$E2E_DIR/daemon.log" >&2
      echo "e2e: medgemmad exited before it was ready" >&2
      return 1
    fi
    sleep 0.1
  done
  grep -q "medgemmad: ready:" "$E2E_DIR/daemon.log" || { cat "$E2E_DIR/daemon.log" >&2; echo "e2e: medgemmad not ready after 300 s" >&2; return 1; }
  "$E2E_BIN" forward --listen "127.0.0.1:$E2E_PORT" --to "$E2E_DIR/ui.sock" 2>> "$E2E_DIR/daemon.log" &
  e2e_pids+=($!)
  for i in $(seq 1 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $E2E_PORT), 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "e2e: the forwarder did not open 127.0.0.1:$E2E_PORT" >&2
  return 1
}
