#!/usr/bin/env bash
# Browser tests of the web UI: headless Debian Chromium driven over the
# DevTools Protocol from Python.
#
#   tests/browser/run.sh                         # against the built-in mock server
#   tests/browser/run.sh --base-url http://127.0.0.1:6006   # against a running medgemmad
#   tests/browser/run.sh --legacy-mock           # the mock as a daemon of before the conversation API
#
# Installs what it needs: Debian's chromium (apt, when root) and a venv under
# ~/.cache with a pinned websockets. Screenshots land in artifacts/browser/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Debian's chromium" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        # CJK glyphs for the Chinese screenshots; the tests pass without them.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk >/dev/null 2>&1 || true
    else
        echo "chromium is missing: apt-get install -y chromium" >&2
        exit 1
    fi
fi

venv="${XDG_CACHE_HOME:-$HOME/.cache}/medgemma-browser-tests-venv"
websockets_version="15.0.1"
if ! "$venv/bin/python" -c "import websockets, sys; sys.exit(websockets.__version__ != '$websockets_version')" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "websockets==$websockets_version"
fi

# Bounded: the tests keep their own budget (120 s on the mock, 300 s against a
# daemon, whose model takes seconds per answer); this is the backstop.
backstop=180
case " $* " in *" --base-url"*) backstop=360 ;; esac
exec timeout -k 5 "$backstop" "$venv/bin/python" "$here/test_ui.py" "$@"
