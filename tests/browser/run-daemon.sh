#!/usr/bin/env bash
# Browser tests against the REAL daemon: `medgemmad serve` with the Gemma 3
# 270M demo model behind `medgemmad forward` on a loopback port (the same
# start-up as tests/e2e/run.sh), driven by headless Chromium. The tests that
# need scripted answers (XSS payloads, context_full) run against the mock
# server in tests/browser/run.sh; here: load, CSP, streamed answer from the
# real model, reasoning switch and block handling, Stop and Esc, language
# switch, dark mode, status bar, screenshots (artifacts/browser/). The tests
# marked new_api (conversation list, export, regenerate, edit, styles,
# language) run once the daemon's /api/status has a "state" field; pass
# --new-api on to run them regardless.
#
#   MEDGEMMAD=/path/to/medgemmad tests/browser/run-daemon.sh [--new-api on]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../e2e/daemon.sh"
e2e_start 4 48
echo "browser: medgemmad ready behind $E2E_URL" >&2
status=0
"$here/run.sh" --base-url "$E2E_URL" "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "browser: daemon log:" >&2
  cat "$E2E_DIR/daemon.log" >&2
fi
exit "$status"
