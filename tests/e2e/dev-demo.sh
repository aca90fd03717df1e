#!/usr/bin/env bash
# The README's main command as a new user meets it: `scripts/dev.sh` with the
# demo model. Checks, from outside, that the daemon runs the way the package
# runs it (dropped from root to an unprivileged user, Landlock and seccomp
# enforced, shown green by /api/status) and that a question gets a whole,
# capped answer through the loopback port.
#
#   MEDGEMMAD=target/debug/medgemmad tests/e2e/dev-demo.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
: "${MEDGEMMAD:?set MEDGEMMAD to a built medgemmad (scripts/test.sh does)}"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
log="$(mktemp)"
PORT="$port" MEDGEMMAD="$MEDGEMMAD" "$root/scripts/dev.sh" >"$log" 2>&1 &
dev=$!
stop() { kill "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true; }
trap 'stop; rm -f "$log"' EXIT
fail() { echo "dev-demo: FAIL: $*" >&2; cat "$log" >&2; exit 1; }

ready=""
for _ in $(seq 1 600); do
  grep -q "medgemmad: ready:" "$log" && grep -q "forward: http://" "$log" && { ready=1; break; }
  kill -0 "$dev" 2>/dev/null || fail "scripts/dev.sh exited"
  sleep 0.5
done
[ -n "$ready" ] || fail "not ready after 300 s"

password="$(sed -n 's/^dev.sh: log in as demo with the password \([^ ]*\) .*/\1/p' "$log" | head -n 1)"
[ -n "$password" ] || fail "dev.sh did not show the demo account's password"
python3 - "$port" "$password" <<'PY' || fail "status, login or answer"
import json, sys, time, urllib.error, urllib.request
port, password = sys.argv[1], sys.argv[2]
base = f"http://localhost:{port}"
status = json.load(urllib.request.urlopen(f"{base}/api/status"))
sb = status["sandbox"]
assert sb["enforced"] is True, sb
assert sb["insecure_no_sandbox"] is False, sb
assert sb["uid"][1] != 0, f"still root: {sb['uid']}"
assert status["model"]["demo"] is True
assert status["model"]["max_new_tokens"] == 128, status["model"]
def post(path, body, cookie=None):
    headers = {"Content-Type": "application/json", "Origin": base}
    if cookie:
        headers["Cookie"] = cookie
    return urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers=headers)
# Without logging in, no answer: the demo runs with accounts, as installed.
try:
    urllib.request.urlopen(post("/api/chat", {"conversation_id": None, "message": "What is a fever?"}))
    raise AssertionError("answered without a login")
except urllib.error.HTTPError as e:
    assert e.code == 401, e.code
login = urllib.request.urlopen(post("/api/login", {"user": "demo", "password": password}))
cookie = login.headers["Set-Cookie"].split(";", 1)[0]
req = post("/api/chat", {"conversation_id": None, "message": "What is a fever?"}, cookie)
t0 = time.time()
events = urllib.request.urlopen(req, timeout=300).read().decode()
last = [b for b in events.split("\n\n") if b.strip()][-1]
assert last.startswith("event: done"), last
done = json.loads(last.split("data: ", 1)[1])
assert done["completion_tokens"] <= 129, done
print(f"dev-demo: sandbox enforced as uid {sb['uid'][1]}; {done['completion_tokens']} tokens answered in {time.time() - t0:.1f} s")
PY
grep -q "sandbox: dropped root to user" "$log" || [ "$(id -u)" != 0 ] || fail "no privilege drop in the log"
grep -q "insecure-no-sandbox" "$log" && fail "the demo ran without the sandbox"
echo "dev-demo: PASS"
