#!/usr/bin/env bash
# Builds the shipped binaries: release profile, CUDA backend included (the
# .deb ships this build; without a GPU or driver the daemon falls back to the
# CPU at run time). Prints the folder that holds medgemmad and medgemmactl.
#
# MEDGEMMA_FEATURES overrides the feature list ("" builds CPU-only).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release-env.sh
source scripts/release-env.sh
cargo build --release --locked ${features:+--features "$features"} \
  --bin medgemmad --bin medgemmactl >&2
echo "$CARGO_TARGET_DIR/release"
