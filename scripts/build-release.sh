#!/usr/bin/env bash
# Builds the shipped binaries: release profile, CUDA backend included (the
# .deb ships this build; without a GPU or driver the daemon falls back to the
# CPU at run time). Prints the folder that holds medgemmad and medgemmactl.
# A CUDA build also stages NVIDIA's libdevice where the binaries look for it
# (model/src/backend.rs `cuda_support_dir`: <bin>/../lib/medgemma/cuda), i.e.
# $CARGO_TARGET_DIR/lib/medgemma/cuda/nvvm/libdevice/libdevice.10.bc; the
# .deb installs that folder as /usr/lib/medgemma/cuda.
#
# MEDGEMMA_FEATURES overrides the feature list ("" builds CPU-only).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release-env.sh
source scripts/release-env.sh
cargo build --release --locked ${features:+--features "$features"} \
  --bin medgemmad --bin medgemmactl >&2
if [ -n "${MEDGEMMA_CUDA_SUPPORT:-}" ]; then
  dest="$CARGO_TARGET_DIR/lib/medgemma/cuda/nvvm/libdevice"
  mkdir -p "$dest"
  cmp -s "$MEDGEMMA_CUDA_SUPPORT/nvvm/libdevice/libdevice.10.bc" "$dest/libdevice.10.bc" \
    || cp "$MEDGEMMA_CUDA_SUPPORT/nvvm/libdevice/libdevice.10.bc" "$dest/libdevice.10.bc"
fi
echo "$CARGO_TARGET_DIR/release"
