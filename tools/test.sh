#!/usr/bin/env bash
# Builds and runs every unit test: a Release build with Eigen's own matrix products, valgrind on the
# I/O tests (in a portable build), the fuzz targets for a bounded time, then every test again under
# AddressSanitizer + UndefinedBehaviorSanitizer with OpenBLAS doing the matrix products, so the BLAS
# path is tested without a third compile of the two large test groups (they dominate CI's time).
# Installs missing Debian packages first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

echo "== Release build and tests"
tools/setup.sh build/release -DCMAKE_BUILD_TYPE=Release -DEIGENFORMER_BUILD_TESTS=ON \
  -DEIGENFORMER_BUILD_EXAMPLES=ON -DEIGENFORMER_BUILD_BENCH=OFF
ctest --test-dir build/release --output-on-failure -j "$(nproc)"

echo "== valgrind memcheck of the I/O tests, in a portable build (valgrind 3.19 decodes no AVX-512)"
EIGENFORMER_TARGETS=tests_io tools/setup.sh build/valgrind -DCMAKE_BUILD_TYPE=Release \
  -DEIGENFORMER_NATIVE=OFF -DEIGENFORMER_BUILD_TESTS=ON -DEIGENFORMER_BUILD_EXAMPLES=OFF \
  -DEIGENFORMER_BUILD_BENCH=OFF
tools/valgrind.sh build/valgrind

echo "== libFuzzer: the safetensors reader and the translate input parser, 30 s each"
tools/fuzz.sh 30

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build and tests, products through OpenBLAS"
tools/setup.sh build/sanitize -DCMAKE_BUILD_TYPE=Release -DEIGENFORMER_SANITIZE=ON \
  -DEIGENFORMER_USE_BLAS=ON -DEIGENFORMER_BUILD_TESTS=ON -DEIGENFORMER_BUILD_EXAMPLES=OFF \
  -DEIGENFORMER_BUILD_BENCH=OFF
ctest --test-dir build/sanitize --output-on-failure -j "$(nproc)"
