#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls it).
# Installs what the tests need, fetches the real test assets from the package
# registries, then runs format, lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse a build directory outside the clone when it exists (CI on the same
# machine, developers); a cold build of Burn takes tens of minutes on 2 cores.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/medgemma-target}"
mkdir -p "$CARGO_TARGET_DIR"
export CARGO_TERM_COLOR=never

scripts/setup-system.sh
MEDGEMMA_ASSETS="$(scripts/fetch-assets.sh | tail -n 1)"
export MEDGEMMA_ASSETS

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked 2>&1
