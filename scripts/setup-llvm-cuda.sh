#!/usr/bin/env bash
# Makes burn's `cuda` feature build offline (../shared/spec/burn.md, "Building
# offline"): cubecl-llvm's build script downloads an LLVM 23 bundle from GitHub
# unless `$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed`
# exists; it then only runs `<dir>/bin/llvm-config --link-static ...`. We point
# that folder at Debian 12's LLVM 22 (bookworm-security) through a wrapper that
# rewrites the absolute libz3 path, which the bundler cannot parse, to -lz3.
#
# Idempotent; needs root or sudo for apt. Prints the folder it prepared.
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
