#!/usr/bin/env bash
# bench_dist in the three layouts of issue 16, on one machine: 1 process x 1 thread,
# 2 processes x 1 thread, 1 process x 2 threads; the same global batch in each.
#   bench/run_dist.sh BUILD_DIR [extra bench_dist flags...]     each layout once, in turn
#   bench/run_dist.sh --rounds N BUILD_DIR [rounds.py flags...]  N alternated rounds (rounds.py):
#       each layout once per round, compared with 1 process x 1 thread within the round; the
#       tightest intervals of the median speed-ups: --rounds 40 BUILD_DIR --repetitions 1
#       (--save FILE keeps the rounds, to pool sets later with rounds.py --load)
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
# The layouts: label, OMP_NUM_THREADS, --bind-to, ranks.
labels=("1 process x 1 thread" "2 processes x 1 thread" "1 process x 2 threads")
threads=(1 1 2)
binds=(core core none)
ranks=(1 2 1)
if [[ -n "$rounds" ]]; then
  runs=()
  for i in 0 1 2; do
    runs+=("${labels[i]}=OMP_NUM_THREADS=${threads[i]} ${mpirun[*]} -x OMP_NUM_THREADS \
--bind-to ${binds[i]} -np ${ranks[i]} $(printf %q "$program")")
  done
  exec /usr/bin/env python3 "$(dirname "$0")/rounds.py" --rounds "$rounds" "$@" "${runs[@]}"
fi
for i in 0 1 2; do
  echo "== ${labels[i]}"
  OMP_NUM_THREADS=${threads[i]} "${mpirun[@]}" --bind-to "${binds[i]}" -x OMP_NUM_THREADS \
    -np "${ranks[i]}" "$program" "$@"
done
