#!/usr/bin/env bash
# Builds and runs every unit test:
#  1. a Release build for AVX2 + FMA (EIGENFORMER_ARCH), not -march=native, so that
#     valgrind (3.19, which decodes AVX2 but no AVX-512) can run its I/O tests, and so that the
#     float GEMM kernel (core/gemm_kernel.hpp, its AVX2 form) does the products of every test;
#     and its tests, with MPI (-DEIGENFORMER_MPI=ON: Open MPI, and the data-parallel tests under
#     mpirun). test_gemm_avx512f tests the kernel's AVX-512 form there, on a CPU that has it;
#  2. valgrind memcheck on the I/O tests of that build;
#  3. the fuzz targets for a bounded time;
#  4. every test again built by clang with -march=native, AddressSanitizer +
#     UndefinedBehaviorSanitizer, and OpenBLAS doing the matrix products, so that the native and
#     BLAS paths, and a second compiler, are tested too, the data-parallel tests under mpirun
#     among them (their buckets lend memory to the gradients). (Clang: at -O0 a test file
#     compiles in a third of GCC 12's time, 6.7 s against 19.4 s; the build took 114 s instead
#     of 225.) Its programs load clang's OpenMP runtime (libomp) and OpenBLAS's (libgomp);
#     OpenBLAS's calls bind to libomp, which the link lists first, and the tests run one thread
#     each. GCC with OpenBLAS is what bench/ builds, not this script.
# Installs missing Debian packages first. Each build compiles the models once, into
# eigenformer::precompiled, and the test files of a label together (-DEIGENFORMER_TEST_GROUPS=ON:
# Eigen's templates, which every test file instantiates, compiled once per group of files): quick
# from clean, but an edit recompiles its whole group. For edit-compile-test, build without it:
# every test file is then a program of its own.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

# Debian packages: the Release build's first; valgrind, clang and OpenBLAS, needed only after it,
# install (download and unpack, little CPU) while it compiles.
EIGENFORMER_BUILD_ONLY=1 tools/setup.sh --packages-only -DEIGENFORMER_MPI=ON
mkdir -p build
tools/setup.sh --packages-only -DEIGENFORMER_MPI=ON -DEIGENFORMER_USE_BLAS=ON \
  >build/packages.log 2>&1 &
packages_pid=$!

echo "== Release build (AVX2) and tests"
EIGENFORMER_BUILD_ONLY=1 tools/setup.sh build/test -DCMAKE_BUILD_TYPE=Release \
  -DEIGENFORMER_NATIVE=OFF -DEIGENFORMER_ARCH="-mavx2;-mfma" -DEIGENFORMER_MPI=ON \
  -DEIGENFORMER_BUILD_PRECOMPILED=ON -DEIGENFORMER_TEST_GROUPS=ON -DEIGENFORMER_BUILD_TESTS=ON \
  -DEIGENFORMER_BUILD_EXAMPLES=ON -DEIGENFORMER_BUILD_BENCH=OFF
ctest --test-dir build/test --output-on-failure -j "$(nproc)"

if ! wait "$packages_pid"; then
  cat build/packages.log >&2
  echo "!! tools/test.sh: installing valgrind, clang, libomp and OpenBLAS failed" >&2
  exit 1
fi
cat build/packages.log

# valgrind (one core) runs while the fuzz targets compile, its report printed after the fuzzing.
echo "== valgrind memcheck of the I/O tests, beside the libFuzzer targets' build"
tools/valgrind.sh build/test >build/test/valgrind.out 2>&1 &
valgrind_pid=$!
echo "== libFuzzer: the safetensors reader and the translate input parser, 30 s each, side by side"
fuzz_status=0
tools/fuzz.sh 30 || fuzz_status=$?
valgrind_status=0
wait "$valgrind_pid" || valgrind_status=$?
cat build/test/valgrind.out
if (( fuzz_status != 0 || valgrind_status != 0 )); then
  echo "!! tools/test.sh: valgrind exit $valgrind_status, fuzzing exit $fuzz_status" >&2
  exit 1
fi

echo "== clang, -march=native, AddressSanitizer + UndefinedBehaviorSanitizer, OpenBLAS products"
clangxx="$(command -v clang++-14 || command -v clang++ || true)"
if [[ -z "$clangxx" ]]; then
  echo "!! tools/test.sh: clang++ not found (apt-get install clang libomp-dev)" >&2
  exit 1
fi
# A build directory configured with another compiler is started afresh: CMake would otherwise
# drop its cache on the compiler change and, silently, every -D option given below with it.
if [[ -f build/sanitize/CMakeCache.txt ]] &&
   ! grep -qx "CMAKE_CXX_COMPILER:[A-Z]*=$clangxx" build/sanitize/CMakeCache.txt; then
  rm -rf build/sanitize
fi
tools/setup.sh build/sanitize -DCMAKE_CXX_COMPILER="$clangxx" -DCMAKE_BUILD_TYPE=Release \
  -DEIGENFORMER_SANITIZE=ON -DEIGENFORMER_USE_BLAS=ON -DEIGENFORMER_MPI=ON \
  -DEIGENFORMER_TEST_GROUPS=ON -DEIGENFORMER_BUILD_TESTS=ON -DEIGENFORMER_BUILD_EXAMPLES=OFF \
  -DEIGENFORMER_BUILD_BENCH=OFF
ctest --test-dir build/sanitize --output-on-failure -j "$(nproc)"
