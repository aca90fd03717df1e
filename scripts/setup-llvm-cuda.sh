#!/usr/bin/env bash
# Makes burn's `cuda` feature build offline (../shared/spec/burn.md, "Building
# offline"): cubecl-llvm's build script downloads an LLVM 23 bundle from GitHub
# unless `$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed`
# exists; it then only runs `<dir>/bin/llvm-config --link-static ...`. We point
# that folder at Debian 12's LLVM 22 (bookworm-security) through a wrapper that
# rewrites the absolute libz3 path, which the bundler cannot parse, to -lz3.
#
# It also stages the one CUDA file the kernels need at run time: NVIDIA's
# libdevice (nvvm/libdevice/libdevice.10.bc, the math functions exp, tanh,
# erf... that cubecl's PTX compiler links into kernels). It comes verbatim
# from NVIDIA's `nvidia-nvvm` wheel on PyPI (pinned by SHA-256; NVIDIA's CUDA
# EULA, Attachment A, lists libdevice.10.bc as redistributable, see
# packaging/debian/copyright); the package installs it in
# /usr/lib/medgemma/cuda, where the daemon points CUDA_PATH.
#
# Idempotent; needs root or sudo for apt and pip for the wheel. Prints the
# LLVM folder it prepared, then `MEDGEMMA_CUDA_SUPPORT=<folder>`: the folder
# holding nvvm/libdevice/libdevice.10.bc and NVIDIA's license text.
set -euo pipefail

llvm=/usr/lib/llvm-22
if [ ! -x "$llvm/bin/llvm-config" ] || ! dpkg -s libpolly-22-dev libzstd-dev >/dev/null 2>&1; then
  echo "setup-llvm-cuda: installing llvm-22-dev libpolly-22-dev libzstd-dev" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq llvm-22-dev libpolly-22-dev libzstd-dev >/dev/null
fi

data="${XDG_DATA_HOME:-$HOME/.local/share}"
dir="$data/tracel/tracel-llvm-23.1.0-4"
mkdir -p "$dir/bin"
cat >"$dir/bin/llvm-config.new" <<WRAP
#!/bin/sh
# Forwards to Debian's LLVM 22 (written by scripts/setup-llvm-cuda.sh).
out=\$($llvm/bin/llvm-config "\$@") || exit \$?
printf '%s\n' "\$out" | sed -E 's#(^| )/[^ ]*/libz3\.so[^ ]*#\1-lz3#g'
WRAP
chmod 0755 "$dir/bin/llvm-config.new"
# Replace the wrapper and create the sentinel only when they change: the
# bundler's build script reruns when they do, and that rebuilt the whole
# LLVM/cubecl/burn stack (8 minutes on 2 cores) at every release build.
if cmp -s "$dir/bin/llvm-config.new" "$dir/bin/llvm-config"; then
  rm "$dir/bin/llvm-config.new"
else
  mv "$dir/bin/llvm-config.new" "$dir/bin/llvm-config"
fi
[ -e "$dir/.tracel-llvm-installed" ] || touch "$dir/.tracel-llvm-installed"

# Check the wrapper answers the way the bundler asks.
"$dir/bin/llvm-config" --version >/dev/null
if "$dir/bin/llvm-config" --link-static --system-libs | grep -q '/libz3'; then
  echo "setup-llvm-cuda: the llvm-config wrapper still prints a libz3 path" >&2
  exit 1
fi
# cudarc fixes its CUDA bindings version at build time: pin it (CUDA 13.0,
# the newest PTX ISA LLVM 22 emits) instead of asking a toolkit we do not have.
echo "$dir"

# ---- libdevice, from the CUDA 13.0 NVVM wheel (the PTX ISA LLVM 22 targets).
nvvm_wheel="nvidia_nvvm-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl"
nvvm_wheel_sha256=c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
libdevice_sha256=91334d6e12748f6cb5bbf0a1cd965a56bcd93dc4f496d2e5c5f8c6e523094356
support="$data/medgemma/cuda-support"
libdevice="$support/nvvm/libdevice/libdevice.10.bc"
if ! echo "$libdevice_sha256  $libdevice" | sha256sum -c --status 2>/dev/null \
  || [ ! -s "$support/NVIDIA-CUDA-EULA.txt" ]; then
  echo "setup-llvm-cuda: fetching libdevice from NVIDIA's nvidia-nvvm 13.0.88 wheel (PyPI)" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  printf 'nvidia-nvvm==13.0.88 --hash=sha256:%s\n' "$nvvm_wheel_sha256" >"$tmp/req.txt"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    --platform manylinux2010_x86_64 --python-version 3.11 -r "$tmp/req.txt" -d "$tmp" >&2
  [ -f "$tmp/$nvvm_wheel" ] || { echo "setup-llvm-cuda: pip did not fetch $nvvm_wheel" >&2; exit 1; }
  mkdir -p "$(dirname "$libdevice")"
  python3 - "$tmp/$nvvm_wheel" "$libdevice" "$support/NVIDIA-CUDA-EULA.txt" <<'PY'
import sys, zipfile
wheel, libdevice, eula = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    open(libdevice, "wb").write(z.read("nvidia/cu13/nvvm/libdevice/libdevice.10.bc"))
    open(eula, "wb").write(z.read("nvidia_nvvm-13.0.88.dist-info/licenses/License.txt"))
PY
  echo "$libdevice_sha256  $libdevice" | sha256sum -c --status \
    || { echo "setup-llvm-cuda: libdevice.10.bc does not have the pinned SHA-256" >&2; exit 1; }
fi
echo "MEDGEMMA_CUDA_SUPPORT=$support"
