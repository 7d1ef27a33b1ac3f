#!/usr/bin/env bash
# Builds and runs every unit test: a Release build, valgrind on the I/O tests, the fuzz targets for
# a bounded time, then the tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
# Installs missing Debian packages first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

echo "== Release build and tests"
tools/setup.sh build/release -DCMAKE_BUILD_TYPE=Release -DEIGENFORMER_BUILD_TESTS=ON \
  -DEIGENFORMER_BUILD_EXAMPLES=ON -DEIGENFORMER_BUILD_BENCH=OFF
ctest --test-dir build/release --output-on-failure -j "$(nproc)"

echo "== valgrind memcheck of the I/O tests"
tools/valgrind.sh build/release

echo "== libFuzzer: the safetensors reader and the translate input parser, 30 s each"
tools/fuzz.sh 30

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build and tests"
tools/setup.sh build/sanitize -DCMAKE_BUILD_TYPE=Release -DEIGENFORMER_SANITIZE=ON \
  -DEIGENFORMER_BUILD_TESTS=ON -DEIGENFORMER_BUILD_EXAMPLES=OFF -DEIGENFORMER_BUILD_BENCH=OFF
ctest --test-dir build/sanitize --output-on-failure -j "$(nproc)"
