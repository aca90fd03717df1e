#!/usr/bin/env bash
# End-to-end tests in Python: the official `openai` client (pinned in
# requirements.txt, installed into a venv under ~/.cache) talks to
# `medgemmad serve` (real Gemma 3 270M demo model, accounts on) through the
# loopback forwarder, with a personal API token. scripts/test.sh calls this;
# extra arguments go to pytest.
#
#   tests/e2e/run.sh [-k PATTERN]
#   MEDGEMMAD=/path/to/medgemmad tests/e2e/run.sh   # use a built binary
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/daemon.sh"

venv="${MEDGEMMA_E2E_VENV:-$HOME/.cache/medgemma-e2e-venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "e2e: installing the pinned openai client into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

# With accounts: the OpenAI client authenticates with a personal API token.
E2E_AUTH=accounts e2e_start 4 64
echo "e2e: medgemmad ready behind $E2E_URL" >&2
status=0
MEDGEMMA_BASE_URL="$E2E_URL/v1" MEDGEMMA_API_TOKEN="$E2E_TOKEN" MEDGEMMACTL="$E2E_CTL" \
  MEDGEMMA_CONFIG="$E2E_CONFIG" MEDGEMMA_E2E_DIR="$E2E_DIR" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here" "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "e2e: daemon log:" >&2
  cat "$E2E_DIR/daemon.log" >&2
fi
exit "$status"
