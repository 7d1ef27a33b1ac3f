#!/usr/bin/env bash
# bench_dist in the three layouts of issue 16, on one machine: 1 process x 1 thread,
# 2 processes x 1 thread, 1 process x 2 threads; the same global batch in each.
#   bench/run_dist.sh BUILD_DIR [extra bench_dist flags...]     each layout once, in turn
#   bench/run_dist.sh --rounds N BUILD_DIR [rounds.py flags...]  N alternated rounds (rounds.py):
#       each layout once per round, compared with 1 process x 1 thread within the round
# (BUILD_DIR configured with -DEIGENFORMER_MPI=ON -DEIGENFORMER_BUILD_BENCH=ON.)
# --bind-to none for the threaded layout: Open MPI binds one process to one core by default, which
# would put both threads on it. --allow-run-as-root --oversubscribe: for root in a container.
set -euo pipefail
usage="usage: bench/run_dist.sh [--rounds N] BUILD_DIR [flags...]"
rounds=""
if [[ "${1:-}" == "--rounds" ]]; then
  rounds="${2:?$usage}"
  shift 2
fi
build="${1:?$usage}"; shift
program="$build/bench/bench_dist"
mpirun=(mpirun --allow-run-as-root --oversubscribe)
if [[ -n "$rounds" ]]; then
  run="${mpirun[*]} -x OMP_NUM_THREADS"
  quoted="$(printf %q "$program")"
  exec /usr/bin/env python3 "$(dirname "$0")/rounds.py" --rounds "$rounds" "$@" \
    "1 process x 1 thread=OMP_NUM_THREADS=1 $run --bind-to core -np 1 $quoted" \
    "2 processes x 1 thread=OMP_NUM_THREADS=1 $run --bind-to core -np 2 $quoted" \
    "1 process x 2 threads=OMP_NUM_THREADS=2 $run --bind-to none -np 1 $quoted"
fi
echo "== 1 process x 1 thread"
OMP_NUM_THREADS=1 "${mpirun[@]}" --bind-to core -x OMP_NUM_THREADS -np 1 "$program" "$@"
echo "== 2 processes x 1 thread"
OMP_NUM_THREADS=1 "${mpirun[@]}" --bind-to core -x OMP_NUM_THREADS -np 2 "$program" "$@"
echo "== 1 process x 2 threads"
OMP_NUM_THREADS=2 "${mpirun[@]}" --bind-to none -x OMP_NUM_THREADS -np 1 "$program" "$@"
