#!/usr/bin/env bash
# Runs the file I/O tests (test_safetensors, test_checkpoint, test_training_state) of an existing
# build under valgrind memcheck: any invalid read/write, use of uninitialised memory or leak fails.
#
#   tools/valgrind.sh BUILD_DIR      e.g. build/test; builds the programs there first
#
# One OpenMP thread (OMP_NUM_THREADS=1), so libgomp's thread pool adds no noise. Valgrind 3.19
# does not decode AVX-512: on an AVX-512 machine a -march=native build (EIGENFORMER_NATIVE, ON by
# default) dies of SIGILL at its first AVX-512 instruction, so give it a build configured with
# -DEIGENFORMER_NATIVE=OFF, as tools/test.sh's is (with -DEIGENFORMER_ARCH="-mavx2;-mfma", which
# valgrind decodes).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -ne 1 ]]; then
  echo "usage: tools/valgrind.sh BUILD_DIR" >&2
  exit 2
fi
build="$(cd "$1" && pwd)"
programs=(test_safetensors test_checkpoint test_training_state)
# A build with -DEIGENFORMER_TEST_GROUPS=ON (tools/test.sh's) has the three in one program,
# tests_io, which runs one file's cases with doctest's --source-file.
targets=("${programs[@]}")
grouped=0
if grep -Eqi '^EIGENFORMER_TEST_GROUPS:BOOL=(ON|1|TRUE|YES|Y)$' "$build/CMakeCache.txt" 2>/dev/null
then
  grouped=1
  targets=(tests_io)
fi
command -v valgrind >/dev/null || { echo "tools/valgrind.sh: valgrind not installed" >&2; exit 1; }

if ! cmake --build "$build" --target "${targets[@]}" >"$build/valgrind-build.log" 2>&1; then
  cat "$build/valgrind-build.log" >&2
  exit 1
fi
export OMP_NUM_THREADS=1
status=0
for program in "${programs[@]}"; do
  exe="$build/tests/$program"
  select=()
  if (( grouped )); then
    exe="$build/tests/tests_io"
    select=("--source-file=*/$program.cpp")
  fi
  [[ -x "$exe" ]] || { echo "tools/valgrind.sh: $exe not found" >&2; exit 1; }
  # A filter that selects nothing would pass silently under --minimal: count the cases first.
  cases=$("$exe" "${select[@]}" --count --no-intro=true 2>&1 | grep -o 'current filters: [0-9]*' |
          grep -o '[0-9]*$' || true)
  if [[ -z "$cases" || "$cases" -eq 0 ]]; then
    echo "!! valgrind $program: no test case selected in $exe" >&2
    exit 1
  fi
  log="$build/valgrind-$program.log"
  start=$SECONDS
  # No suppressions: definite and indirect leaks are errors, "still reachable" statics are not.
  # --quiet: the log stays empty unless valgrind finds something.
  rc=0
  (cd "$here" && valgrind --error-exitcode=1 --leak-check=full --show-leak-kinds=definite,indirect \
      --errors-for-leak-kinds=definite,indirect --track-origins=yes --quiet --log-file="$log" \
      "$exe" "${select[@]}" --no-intro=true --minimal=true) || rc=$?
  if [[ $rc -eq 0 && ! -s "$log" ]]; then
    echo "== valgrind $program: clean ($((SECONDS - start)) s)"
  else
    echo "!! valgrind $program FAILED (exit $rc, $((SECONDS - start)) s); log: $log" >&2
    head -60 "$log" >&2
    status=1
  fi
done
exit $status
