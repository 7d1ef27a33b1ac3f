#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang++ (ASan + UBSan) into build/fuzz/ and runs each
# for SECONDS (default 60). Fails if a target crashes, leaks, hangs, trips a sanitizer or throws
# an unexpected exception; the input is saved as fuzz/crashes/<target>-<kind>-<hash>.
#
#   tools/fuzz.sh [SECONDS]          build, then fuzz each target for SECONDS
#   tools/fuzz.sh --merge [SECONDS]  the same, then minimise the committed seed corpus
#                                    fuzz/corpus/<target>/ together with what this run found
#
# New inputs go to build/fuzz/corpus/<target>/ (kept between runs, not committed); the committed
# corpus fuzz/corpus/<target>/ is only read, except by --merge. Installs the libFuzzer runtime
# (Debian libclang-rt-14-dev) if it is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

merge=0
if [[ "${1:-}" == "--merge" ]]; then
  merge=1
  shift
fi
seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || (( seconds < 1 )); then
  echo "usage: tools/fuzz.sh [--merge] [SECONDS]" >&2
  exit 2
fi
targets=(fuzz_safetensors fuzz_translate_input)

cxx="${CLANGXX:-}"
if [[ -z "$cxx" ]]; then
  for c in clang++-14 clang++; do
    if command -v "$c" >/dev/null; then cxx="$c"; break; fi
  done
fi
if [[ -z "$cxx" ]]; then
  echo "tools/fuzz.sh: clang++ not found (apt-get install clang-14)" >&2
  exit 1
fi

out=build/fuzz
mkdir -p "$out"
flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=all -Wall -Wextra -Wpedantic -Werror
       -I include -I examples -I /usr/include/eigen3)

# The libFuzzer runtime ships separately from clang on Debian.
probe="$out/probe.cpp"
printf 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }\n' >"$probe"
if ! "$cxx" -fsanitize=fuzzer "$probe" -o "$out/probe" 2>/dev/null; then
  ver="$("$cxx" -dumpversion | cut -d. -f1)"
  echo "== installing the libFuzzer runtime (libclang-rt-$ver-dev)"
  if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get install -y "libclang-rt-$ver-dev" >/dev/null ||
    { "${sudo[@]}" apt-get update >/dev/null &&
      "${sudo[@]}" apt-get install -y "libclang-rt-$ver-dev" >/dev/null; }
fi
rm -f "$probe" "$out/probe"

# Rebuilds a target only when a source it may include is newer than the binary. The targets
# compile side by side, one per core.
pids=()
for t in "${targets[@]}"; do
  if [[ -x "$out/$t" && -z "$(find include examples/translate "fuzz/$t.cpp" tools/fuzz.sh \
        -newer "$out/$t" -type f | head -1)" ]]; then
    echo "== $out/$t is up to date"
    continue
  fi
  ( start=$SECONDS
    "$cxx" "${flags[@]}" "fuzz/$t.cpp" -o "$out/$t"
    echo "== built $out/$t ($((SECONDS - start)) s)" ) &
  pids+=($!)
done
built=0
for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid" || built=1; done
(( built == 0 )) || exit 1

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Each target fuzzes single-threaded: they run side by side, one per core, for SECONDS each.
# A target's report follows once all have ended.
fuzz_one() {
  local t="$1" dict="fuzz/${1#fuzz_}.dict"
  [[ "$t" == fuzz_translate_input ]] && dict=fuzz/translate.dict
  "$out/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -dict="$dict" -artifact_prefix="fuzz/crashes/$t-" -print_final_stats=1 \
    "$out/corpus/$t" "fuzz/corpus/$t" >"$out/$t.log" 2>&1
}
pids=()
mkdir -p fuzz/crashes
start=$SECONDS
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t"
  echo "== fuzzing $t for $seconds s"
  fuzz_one "$t" &
  pids+=($!)
done
status=0
for i in "${!targets[@]}"; do
  t="${targets[$i]}"
  work="$out/corpus/$t"
  if ! wait "${pids[$i]}"; then
    status=1
    echo "!! $t FAILED; log: $out/$t.log; input(s):" >&2
    ls -1 fuzz/crashes/"$t"-* >&2 || true
    grep -E "ERROR|SUMMARY|runtime error|fuzz_.*:" "$out/$t.log" | head -20 >&2 || true
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$out/$t.log" | tr '\n' ' '
    echo "($t: $((SECONDS - start)) s, $(ls "$work" | wc -l) inputs in $work)"
  fi
done
rmdir fuzz/crashes 2>/dev/null || true

if (( merge && status == 0 )); then
  # Adds to the committed corpus only the found inputs of at most 1 KB that reach new edges
  # (hit counts ignored, which keeps the set small; libFuzzer prefers the smaller of equivalent
  # inputs). The hand-made seeds stay.
  for t in "${targets[@]}"; do
    before=$(ls "fuzz/corpus/$t" | wc -l)
    "$out/$t" -merge=1 -use_counters=0 -max_len=1024 "fuzz/corpus/$t" "$out/corpus/$t" >"$out/$t.merge.log" 2>&1
    echo "== merged $t: $before -> $(ls "fuzz/corpus/$t" | wc -l) inputs," \
      "$(cat "fuzz/corpus/$t"/* | wc -c) bytes"
  done
fi
exit $status
