#!/usr/bin/env bash
# Builds and runs every unit test: a Release build, the tests of the matrix products again with
# OpenBLAS doing them, valgrind on the I/O tests, the fuzz targets for a bounded time, then the
# tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
# Installs missing Debian packages first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

echo "== Release build and tests"
tools/setup.sh build/release -DCMAKE_BUILD_TYPE=Release -DEIGENFORMER_BUILD_TESTS=ON \
  -DEIGENFORMER_BUILD_EXAMPLES=ON -DEIGENFORMER_BUILD_BENCH=OFF
ctest --test-dir build/release --output-on-failure -j "$(nproc)"

echo "== The matrix products through OpenBLAS (-DEIGENFORMER_USE_BLAS=ON), on the tests that cover them"
blas_tests="test_linear test_multihead_attention test_flash_attention test_pytorch_reference"
EIGENFORMER_TARGETS="$blas_tests" tools/setup.sh build/blas -DCMAKE_BUILD_TYPE=Release \
  -DEIGENFORMER_USE_BLAS=ON -DEIGENFORMER_BUILD_TESTS=ON -DEIGENFORMER_BUILD_EXAMPLES=OFF \
  -DEIGENFORMER_BUILD_BENCH=OFF
ctest --test-dir build/blas --output-on-failure -j "$(nproc)" -R "^(${blas_tests// /|})(_2threads)?\$"

echo "== valgrind memcheck of the I/O tests"
tools/valgrind.sh build/release

echo "== libFuzzer: the safetensors reader and the translate input parser, 30 s each"
tools/fuzz.sh 30

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build and tests"
tools/setup.sh build/sanitize -DCMAKE_BUILD_TYPE=Release -DEIGENFORMER_SANITIZE=ON \
  -DEIGENFORMER_BUILD_TESTS=ON -DEIGENFORMER_BUILD_EXAMPLES=OFF -DEIGENFORMER_BUILD_BENCH=OFF
ctest --test-dir build/sanitize --output-on-failure -j "$(nproc)"
