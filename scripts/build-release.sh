#!/usr/bin/env bash
# Builds the shipped binaries: release profile, CUDA backend included (the
# .deb ships this build; without a GPU or driver the daemon falls back to the
# CPU at run time). Prints the folder that holds medgemmad and medgemmactl.
#
# MEDGEMMA_FEATURES overrides the feature list ("" builds CPU-only).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/medgemma-target}"
export CARGO_TERM_COLOR=never
features="${MEDGEMMA_FEATURES-medgemmad/cuda}"
if [[ "$features" == *cuda* ]]; then
  scripts/setup-llvm-cuda.sh >/dev/null
  # cudarc fixes its bindings version at build time; CUDA 13.0 matches the
  # newest PTX ISA that LLVM 22 emits (spec burn.md). Pinned, never probed.
  export CUDARC_CUDA_VERSION=13000
fi
# Reproducible output: fixed timestamps for anything that embeds one. The
# date of the package's latest changelog entry, not of the last commit: the
# `cc` crate tells cargo to rerun build scripts when SOURCE_DATE_EPOCH changes
# (ring, liblzma-sys, cubecl-llvm), and a per-commit value rebuilt the whole
# cubecl/burn-cuda stack (~20 min on 2 cores) after every commit.
changelog_date="$(sed -n 's/^ -- .*>  //p' packaging/debian/changelog | head -n 1)"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(date -d "$changelog_date" +%s)}"
# The same environment whoever calls (test-package.sh sets a locale,
# build-deb.sh a time zone): build scripts that track either would rebuild.
export LC_ALL=C.UTF-8
unset TZ
cargo build --release --locked ${features:+--features "$features"} \
  --bin medgemmad --bin medgemmactl >&2
echo "$CARGO_TARGET_DIR/release"
