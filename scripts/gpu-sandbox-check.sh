#!/usr/bin/env bash
# GPU sandbox check, for a machine with an NVIDIA GPU: starts `medgemmad
# serve` with the CUDA backend under the FULL sandbox (root dropping to the
# service user, Landlock, seccomp) in `--seccomp-log` mode (or, with
# `--enforce`, exactly as systemd starts it: seccomp enforced), asks it one
# short question, stops it, and reports:
#   - whether the GPU initialised (the daemon said "ready" with backend cuda
#     and answered);
#   - the syscalls outside the allow-lists it made (kernel log, audit
#     `type=1326`: in log mode they are allowed and logged, so one run lists
#     them all; add them to sandbox/src/seccomp.rs ENGINE with the reason);
#   - the Landlock denials it hit: Landlock's own audit records (`type=1423`,
#     Linux 6.15+ with audit), failed file calls with EACCES/EPERM under strace
#     (when strace is installed), and the daemon's own error lines. Add the
#     missing paths to daemon/src/lockdown.rs `cuda_paths()`.
#
# It needs a build with the `cuda` feature (`medgemmad --version` lists
# "backends: ... cuda"); CUDA is not built yet, so today it says so and exits 2.
#
# Usage (as root):
#   scripts/gpu-sandbox-check.sh --model PATH --keys DIR [--tokenizer PATH]
#       [--bin PATH] [--user NAME] [--no-strace] [--timeout SECONDS] [--enforce]
#   --model      the model directory or .gguf file
#   --keys       a directory with the audit keys `current` and `content`
#                (from `medgemmactl setup`); copied, never modified
#   --bin        medgemmad (default: $MEDGEMMAD or target/release/medgemmad)
#   --user       the user the daemon drops to (default: medgemma, else nobody)
#   --enforce    seccomp enforced (a call outside the lists kills the daemon)
#                instead of logged; the last line says PASS or FAIL
#
# Exit: 0 the GPU initialised and nothing was denied or logged; 1 the GPU did
# not initialise or something was denied/logged (see the report); 2 a
# prerequisite is missing (not root, no CUDA build, no GPU, bad arguments).
set -euo pipefail

die() { echo "gpu-sandbox-check: $*" >&2; exit 2; }

bin="${MEDGEMMAD:-target/release/medgemmad}"
model="" tokenizer="" keys="" user="" use_strace=1 timeout=600 enforce=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --tokenizer) tokenizer="$2"; shift 2 ;;
    --keys) keys="$2"; shift 2 ;;
    --user) user="$2"; shift 2 ;;
    --no-strace) use_strace=0; shift ;;
    --enforce) enforce=1; shift ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root: the daemon must drop root itself, and the kernel log is root's"
[ -x "$bin" ] || die "no medgemmad at $bin; build it or pass --bin"
if ! "$bin" --version 2>/dev/null | grep -Eq '^backends:.*\bcuda\b'; then
  die "$bin was built without CUDA ('$("$bin" --version 2>/dev/null | tr '\n' ' ')'): this check needs a build with the \`cuda\` feature (cargo build --release -p medgemmad --features cuda)"
fi
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: is the NVIDIA driver installed?"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi sees no GPU"
[ -n "$model" ] && [ -e "$model" ] || die "--model PATH (a model directory or .gguf file) is required"
[ -n "$keys" ] && [ -f "$keys/current" ] && [ -f "$keys/content" ] \
  || die "--keys DIR with the audit keys 'current' and 'content' (medgemmactl setup) is required"
if [ -z "$user" ]; then
  if id medgemma >/dev/null 2>&1; then user=medgemma; else user=nobody; fi
fi
id "$user" >/dev/null 2>&1 || die "no user $user"
command -v curl >/dev/null || die "curl is needed to ask the daemon a question"
if [ "$use_strace" = 1 ] && ! command -v strace >/dev/null; then
  echo "gpu-sandbox-check: strace not installed: Landlock denials are read from the kernel log and the daemon's errors only" >&2
  use_strace=0
fi

work="$(mktemp -d /tmp/medgemma-gpu-check.XXXXXX)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
mkdir -p "$work/audit" "$work/audit-key" "$work/cache"
cp "$keys/current" "$keys/content" "$work/audit-key/"
tok_line=""
[ -n "$tokenizer" ] && tok_line="tokenizer_path = \"$tokenizer\""
cat > "$work/medgemmad.toml" <<TOML
[model]
path = "$model"
$tok_line
label = "GPU sandbox check"
demo = true

[engine]
backend = "cuda"
context_length = 512
max_new_tokens = 16

[server]
ui_socket = "$work/ui.sock"

[audit]
dir = "$work/audit"
key_file = "$work/audit-key/current"
content_key_file = "$work/audit-key/content"

[sandbox]
user = "$user"
cache_dir = "$work/cache"
TOML
chown -R "$user:" "$work"
chmod 755 "$work"

# Everything the kernel logs after this marker belongs to this run.
marker="medgemma-gpu-sandbox-check-$$-$(date +%s)"
echo "$marker" > /dev/kmsg 2>/dev/null || true

cmd=("$bin" serve --config "$work/medgemmad.toml")
[ "$enforce" = 1 ] || cmd+=(--seccomp-log)
if [ "$use_strace" = 1 ]; then
  # -f: the engine thread and the driver's threads; failed file and socket calls only.
  cmd=(strace -f -qq -o "$work/strace.log" -e trace=%file,%network,%desc -Z "${cmd[@]}")
fi
"${cmd[@]}" 2> "$work/daemon.log" &
pid=$!

ready=0
for _ in $(seq 1 $((timeout * 5))); do
  if grep -q "medgemmad: ready:" "$work/daemon.log"; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done

answered=0
if [ "$ready" = 1 ]; then
  if curl -sS --max-time "$timeout" --unix-socket "$work/ui.sock" \
      -H 'Host: localhost:6006' -H 'Origin: http://localhost:6006' \
      -H 'Content-Type: application/json' \
      -d '{"conversation_id":null,"message":"Say hello.","max_new_tokens":8}' \
      http://localhost/api/chat > "$work/chat.txt" 2>&1 \
      && grep -q '^event: done' "$work/chat.txt"; then
    answered=1
  fi
  curl -sS --max-time 10 --unix-socket "$work/ui.sock" -H 'Host: localhost:6006' \
    http://localhost/api/status > "$work/status.json" 2>/dev/null || true
fi
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
pid=""

kernel_log() { dmesg 2>/dev/null | sed -n "/$marker/,\$p" || true; }
seccomp_lines="$(kernel_log | grep 'type=1326' | grep -E 'comm="(medgemmad|strace)' || true)"
landlock_lines="$(kernel_log | grep -E 'type=14(23|24)' || true)"
strace_lines=""
[ -f "$work/strace.log" ] && strace_lines="$(grep -E 'E(ACCES|PERM)' "$work/strace.log" || true)"
daemon_errors="$(grep -Ei 'denied|EACCES|EPERM|cannot|error' "$work/daemon.log" || true)"

# Syscall numbers to names, from the kernel headers when present.
unistd=""
for h in /usr/include/x86_64-linux-gnu/asm/unistd_64.h /usr/include/asm/unistd_64.h \
         /usr/include/asm-generic/unistd.h; do
  [ -f "$h" ] && { unistd="$h"; break; }
done
syscall_name() {
  local n="$1"
  if [ -n "$unistd" ]; then
    awk -v n="$n" '$1=="#define" && $3==n && $2 ~ /^__NR(3264)?_/ { sub(/^__NR(3264)?_/, "", $2); print $2; exit }' "$unistd"
  fi
}

echo "=== medgemma GPU sandbox check ($(date -u +%FT%TZ)) ==="
echo "binary:  $bin ($("$bin" --version | tr '\n' ' '))"
echo "GPU:     $(nvidia-smi -L | head -1)"
echo "driver:  $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)"
echo "user:    $user; seccomp $([ "$enforce" = 1 ] && echo enforced || echo 'in log mode'); strace: $([ "$use_strace" = 1 ] && echo yes || echo no)"
echo
if [ "$ready" = 1 ] && grep -q "backend cuda" "$work/daemon.log" && [ "$answered" = 1 ]; then
  gpu_ok=1
  echo "GPU initialised under the sandbox: YES (ready with backend cuda, answered a question)"
else
  gpu_ok=0
  echo "GPU initialised under the sandbox: NO (ready=$ready answered=$answered); daemon log:"
  sed 's/^/  | /' "$work/daemon.log" | tail -40
fi
echo
echo "--- syscalls outside the allow-lists (logged, type=1326) ---"
if [ -n "$seccomp_lines" ]; then
  echo "$seccomp_lines" | grep -o 'syscall=[0-9]*' | cut -d= -f2 | sort -n | uniq -c |
    while read -r count nr; do
      printf '  %-24s nr %-4s x%s\n' "$(syscall_name "$nr")" "$nr" "$count"
    done
else
  echo "  none"
fi
echo
echo "--- Landlock denials (kernel audit type=1423/1424) ---"
[ -n "$landlock_lines" ] && echo "$landlock_lines" | sed 's/^/  /' | head -50 || echo "  none logged (needs Linux 6.15+ with audit enabled)"
echo
echo "--- failed file/socket calls with EACCES/EPERM (strace) ---"
if [ "$use_strace" = 0 ]; then
  echo "  (strace not used)"
elif [ -n "$strace_lines" ]; then
  echo "$strace_lines" | sed 's/^[0-9]* *//' | sort | uniq -c | sort -rn | head -50 | sed 's/^/  /'
else
  echo "  none"
fi
echo
echo "--- daemon error lines ---"
[ -n "$daemon_errors" ] && echo "$daemon_errors" | sed 's/^/  /' | head -30 || echo "  none"
echo
[ -f "$work/status.json" ] && echo "status.sandbox: $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["sandbox"]; print({k: s.get(k) for k in ("enforced","problems","seccomp_filters")})' "$work/status.json" 2>/dev/null || echo '?')"

if [ "$gpu_ok" = 1 ] && [ -z "$seccomp_lines" ] && [ -z "$landlock_lines" ] && [ -z "$strace_lines" ]; then
  echo "RESULT: OK: the CUDA engine runs under the full sandbox with nothing logged or denied"
  [ "$enforce" = 1 ] && echo "PASS: sandboxed daemon (Landlock and seccomp enforced) answered on CUDA"
  exit 0
fi
echo "RESULT: NEEDS WORK: see the lists above"
if [ "$enforce" = 1 ]; then
  reason="$(grep -m1 -Ei 'cannot|falling back|denied|error' "$work/daemon.log" 2>/dev/null || true)"
  echo "FAIL: sandboxed daemon on CUDA: ready=$ready answered=$answered${reason:+; daemon: $reason}"
fi
exit 1
