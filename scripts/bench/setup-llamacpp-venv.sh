#!/usr/bin/env bash
# Create (or reuse) the venv that runs the llama.cpp baseline (scripts/bench/llamacpp_bench.py)
# and the llama.cpp half of scripts/fixtures/ref_270m.py.
#
#   scripts/bench/setup-llamacpp-venv.sh      # -> ${MEDGEMMA_BENCH_VENV:-/root/.cache/medgemma-bench-venv}
#
# llama-cpp-python is built from source (it vendors llama.cpp): ~10-40 minutes on 2 cores.
# pip caches the built wheel, so re-creating the venv later is quick. Prints the venv path.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
NUMPY_VERSION=2.4.6
venv="${MEDGEMMA_BENCH_VENV:-/root/.cache/medgemma-bench-venv}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup-llamacpp-venv: creating $venv" >&2
  python3 -m venv "$venv"
fi

have=$("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)
if [ "$have" != "$LLAMA_CPP_PYTHON_VERSION" ]; then
  echo "setup-llamacpp-venv: building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (slow: compiles llama.cpp)" >&2
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/pip" install --quiet \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" "numpy==$NUMPY_VERSION" >&2
fi
"$venv/bin/python" -c 'import llama_cpp, numpy' >&2
echo "$venv"
