#!/usr/bin/env bash
# Create (or reuse) the venv that runs the llama.cpp baseline (scripts/bench/llamacpp_bench.py)
# and the llama.cpp half of scripts/fixtures/ref_270m.py.
#
#   scripts/bench/setup-llamacpp-venv.sh      # -> ${MEDGEMMA_BENCH_VENV:-/root/.cache/medgemma-bench-venv}
#
# llama-cpp-python is built from source (it vendors llama.cpp): ~10-40 minutes on 2 cores.
# Prints the venv path.
#
# Build flags: every x86 SIMD extension llama.cpp uses up to AVX-512 (VBMI, VNNI, BF16) and
# AVX-VNNI, but not AMX. A native build (-march=native) on a Sapphire Rapids guest that
# advertises AMX segfaults in ggml_backend_amx_mul_mat on the first llama_decode of the 270M
# (llama-cpp-python 0.3.36, seen under gdb), so the AMX tile path is left out. The flags are
# recorded in the venv; a venv built with other flags (or pip's cached native wheel) is rebuilt.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
NUMPY_VERSION=2.4.6
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
-DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
venv="${MEDGEMMA_BENCH_VENV:-/root/.cache/medgemma-bench-venv}"
stamp="$venv/llama-cpp-build-flags"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup-llamacpp-venv: creating $venv" >&2
  python3 -m venv "$venv"
fi

have=$("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)
want="$LLAMA_CPP_PYTHON_VERSION $CMAKE_FLAGS"
if [ "$have" != "$LLAMA_CPP_PYTHON_VERSION" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup-llamacpp-venv: building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (slow: compiles llama.cpp)" >&2
  CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/pip" install --quiet \
    --no-cache-dir --force-reinstall --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" "numpy==$NUMPY_VERSION" >&2
  echo "$want" > "$stamp"
fi
"$venv/bin/python" -c 'import llama_cpp, numpy' >&2
echo "$venv"
