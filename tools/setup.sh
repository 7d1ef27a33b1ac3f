#!/usr/bin/env bash
# Installs what eigenformer's build needs (Debian 12 packages) when it is missing, then configures
# and builds into the given directory with the given extra CMake arguments; EIGENFORMER_TARGETS
# (space-separated) builds only those targets instead of everything.
#   [EIGENFORMER_TARGETS="a b"] tools/setup.sh BUILD_DIR [cmake args...]
#   tools/setup.sh --packages-only [cmake args...]   only installs what those arguments need
# EIGENFORMER_BUILD_ONLY=1 leaves out valgrind and clang, which only tools/test.sh needs (it
# installs them while its first build compiles).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$1"; shift

# compiler and build tools, Eigen (the library), doctest (tests), Google Benchmark (bench/),
# nlohmann-json (checkpoint headers), stb and a CJK font (the translate example's attention map
# with Chinese labels), PLplot and its cairo PNG driver (the examples' --plot training curves),
# PCRE2 (the GPT-2 tokenizer's pattern; its test also needs node and npm), Debian's fortunes (the
# char_lm example's corpus, and its learning test), and for tools/test.sh:
# valgrind, clang with its libFuzzer runtime (tools/fuzz.sh) and its OpenMP runtime (the sanitizer
# build).
packages=(g++ cmake ninja-build libeigen3-dev doctest-dev libbenchmark-dev nlohmann-json3-dev
          libstb-dev fonts-wqy-zenhei libplplot-dev plplot-driver-cairo libpcre2-dev fortunes)
[ "${EIGENFORMER_BUILD_ONLY:-0}" = 1 ] || packages+=(valgrind clang libclang-rt-14-dev libomp-dev)
# OpenBLAS for -DEIGENFORMER_USE_BLAS=ON, in its OpenMP build: called from inside the library's
# OpenMP loops it runs on the calling thread, where the pthread build would start threads of its own.
# Open MPI (headers and mpirun) for -DEIGENFORMER_MPI=ON: eigenformer::mpi, data-parallel training.
for arg in "$@"; do
  [ "$arg" = "-DEIGENFORMER_USE_BLAS=ON" ] && packages+=(libopenblas-openmp-dev)
  [ "$arg" = "-DEIGENFORMER_MPI=ON" ] && packages+=(libopenmpi-dev openmpi-bin)
done
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "eigenformer: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ "$build_dir" != --packages-only ] || exit 0
cmake -S "$here" -B "$build_dir" -G Ninja "$@" >/dev/null
targets=()
for t in ${EIGENFORMER_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$build_dir" -j "$(nproc)" "${targets[@]}"
