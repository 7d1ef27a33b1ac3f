#!/usr/bin/env bash
# Builds tests/consumer three ways: add_subdirectory, find_package after installing the project's
# own build (with eigenformer::precompiled when it was configured with
# EIGENFORMER_BUILD_PRECOMPILED=ON, as tools/test.sh does, so the package is checked with it), and a
# plain compiler call with -I include (and Eigen's include directory). With MPI=ON (the project's
# EIGENFORMER_MPI) the first two also build and run consumer_mpi, which links eigenformer::mpi.
#   check.sh SOURCE_DIR BUILD_DIR WORK_DIR CXX [MPI]
set -euo pipefail
src="$1"; build="$2"; work="$3"; cxx="$4"; mpi="${5:-OFF}"
rm -rf "$work"; mkdir -p "$work"
here="$src/tests/consumer"

cmake -S "$here" -B "$work/sub" -DEIGENFORMER_CONSUME=subdirectory -DEIGENFORMER_SOURCE="$src" \
  -DEIGENFORMER_MPI="$mpi" >/dev/null
cmake --build "$work/sub" >/dev/null
"$work/sub/consumer"
[ "$mpi" != ON ] || "$work/sub/consumer_mpi"

cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$here" -B "$work/pkg" -DEIGENFORMER_CONSUME=package -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/pkg" >/dev/null
"$work/pkg/consumer"
# Installed only from a build configured with EIGENFORMER_BUILD_PRECOMPILED=ON (tools/test.sh's).
if [[ -x "$work/pkg/consumer_precompiled" ]]; then "$work/pkg/consumer_precompiled"; fi
[ "$mpi" != ON ] || "$work/pkg/consumer_mpi"

"$cxx" -std=c++17 -O1 -Wall -Wextra -Wpedantic -Werror -I "$src/include" -I /usr/include/eigen3 \
  "$here/main.cpp" -o "$work/plain"
"$work/plain"
