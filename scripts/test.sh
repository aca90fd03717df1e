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
# Same package set as the tests: `-p medgemmad` alone would unify dependency
# features differently and rebuild Burn from scratch.
cargo clippy --workspace --all-targets --features medgemmad/test-engine --locked -- -D warnings

# One test run for the whole workspace. `test-engine` (debug builds only)
# adds the scripted test double that the daemon's HTTP tests use for
# deterministic reasoning/answer streams; the real-model e2e tests run too.
step "cargo test (workspace)"
cargo test --workspace --features medgemmad/test-engine --locked 2>&1

# The CUDA path without a GPU: our CubeCL kernels (model/src/kernels) on
# CubeCL's CPU runtime against the plain Burn ops, the f32 matmul without
# TF32, the prefill mask built on the device against the host mask
# (gemma3::), the on-disk kernel cache found by a second process, and the
# libdevice the package ships linking into PTX for sm_90 (and an empty
# CUDA_PATH failing). Needs the offline LLVM of
# scripts/setup-llvm-cuda.sh, which also stages libdevice.
step "kernels on CubeCL's CPU runtime, PTX for sm_90 (medgemma-model, cuda + cube-cpu)"
MEDGEMMA_CUDA_SUPPORT="$(scripts/setup-llvm-cuda.sh | sed -n 's/^MEDGEMMA_CUDA_SUPPORT=//p')"
CUDARC_CUDA_VERSION=13000 MEDGEMMA_CUDA_SUPPORT="$MEDGEMMA_CUDA_SUPPORT" \
  cargo test -p medgemma-model --features cuda,cube-cpu --locked --lib -- kernels:: backend:: gemma3:: 2>&1

export MEDGEMMAD="$CARGO_TARGET_DIR/debug/medgemmad"

step "e2e: official openai client through the loopback forwarder"
tests/e2e/run.sh

step "e2e: the README's main command (scripts/dev.sh) runs sandboxed and answers"
tests/e2e/dev-demo.sh

step "browser: headless Chromium against the mock server (scripted answers, XSS)"
tests/browser/run.sh

step "browser: headless Chromium against the real daemon"
tests/browser/run-daemon.sh

step "browser: an image question against the real daemon on a vision model"
tests/browser/run-daemon-vision.sh

step "package: release binaries and the .deb (scripts/build-deb.sh)"
deb="$(scripts/build-deb.sh | tail -n 1)"
ls -l "$deb"

step "package: reproducible, lintian-clean, installs, upgrades, removes and purges in Debian 12 (scripts/test-package.sh)"
scripts/test-package.sh
