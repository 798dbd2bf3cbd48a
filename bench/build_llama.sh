#!/usr/bin/env bash
# Build llama.cpp's llama-bench, llama-server and llama-perplexity for the side-by-side
# benchmarks (bench.engine, bench.fidelity), from the sources vendored in the released
# llama-cpp-python sdist on PyPI. Portable flags: GGML_NATIVE=OFF (no -march=native),
# AVX2 and AVX-512 on, AMX off (these VMs advertise AMX, but a program that uses its
# tiles without asking the kernel first dies with a general protection fault).
#   bench/build_llama.sh [PYTHON]    -> bench/llama.cpp/bin/
set -euo pipefail
PY=${1:-python3}
# a relative interpreter path (make passes .venv/bin/python) must survive the cd below
if [[ "$PY" == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; fi
VERSION=0.3.16
ROOT=$(cd "$(dirname "$0")" && pwd)/llama.cpp
mkdir -p "$ROOT/src"
cd "$ROOT/src"
if [ ! -f "llama_cpp_python-$VERSION.tar.gz" ]; then
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d .
fi
rm -rf "llama_cpp_python-$VERSION"
tar xzf "llama_cpp_python-$VERSION.tar.gz"
cd "llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
  -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
  -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF > "$ROOT/cmake.log"
cmake --build build -j "$(nproc)" --target llama-bench llama-server llama-perplexity > "$ROOT/build.log"
mkdir -p "$ROOT/bin"
cp build/bin/llama-bench build/bin/llama-server build/bin/llama-perplexity "$ROOT/bin/"
echo "llama.cpp $VERSION (vendored in llama-cpp-python) built: $ROOT/bin"
