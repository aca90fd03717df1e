#!/usr/bin/env bash
# Load test (prints numbers, judges nothing): medgemmad with the real Gemma 3
# 270M demo model behind the loopback forwarder, then
#   held:  N concurrent conversations (default queue + 1), 2 turns each:
#          requests answered, time to first token p50/p99;
#   limit: a burst of 3 x (queue + 1) new chats: counts of 200 and 503.
# Loopback only; bounded in requests (N x 2 + burst) and time (LOAD_TEST_TIMEOUT).
#
#   scripts/load-test.sh [QUEUE_LENGTH] [MAX_NEW_TOKENS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../tests/e2e/daemon.sh"

queue="${1:-4}"
max_new="${2:-16}"
e2e_start "$queue" 1024
timeout "${LOAD_TEST_TIMEOUT:-900}" python3 "$here/load_test_client.py" \
  --url "$E2E_URL" --queue "$queue" --max-new-tokens "$max_new"
grep -c "medgemmad: turn" "$E2E_DIR/daemon.log" | sed 's/^/daemon: turns logged: /'
