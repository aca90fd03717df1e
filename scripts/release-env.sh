# Sourced, not run: the environment of every release-profile cargo command
# (scripts/build-release.sh, and the CUDA test binaries of
# scripts/gpu-check.sh --prepare). Build scripts track these variables, so
# two commands that differ in any of them rebuild each other's CUDA stack in
# the shared target folder (~20 min on 2 cores).
#
# In: MEDGEMMA_FEATURES (default "medgemmad/cuda"; "" for CPU only).
# Out: CARGO_TARGET_DIR, features, MEDGEMMA_CUDA_SUPPORT (CUDA builds: the
# folder holding nvvm/libdevice/libdevice.10.bc), and the variables below.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/medgemma-target}"
export CARGO_TERM_COLOR=never
features="${MEDGEMMA_FEATURES-medgemmad/cuda}"
if [[ "$features" == *cuda* ]]; then
  # Its last line names the folder with NVIDIA's libdevice, which the CUDA
  # build ships (scripts/build-release.sh stages it beside the binaries).
  MEDGEMMA_CUDA_SUPPORT="$(scripts/setup-llvm-cuda.sh | sed -n 's/^MEDGEMMA_CUDA_SUPPORT=//p')"
  export MEDGEMMA_CUDA_SUPPORT
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
