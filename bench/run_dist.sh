#!/usr/bin/env bash
# bench_dist in the three layouts of issue 16, on one machine: 1 process x 1 thread,
# 2 processes x 1 thread, 1 process x 2 threads; the same global batch in each.
#   bench/run_dist.sh BUILD_DIR [extra bench_dist flags...]
# (BUILD_DIR configured with -DEIGENFORMER_MPI=ON -DEIGENFORMER_BUILD_BENCH=ON.)
# --bind-to none for the threaded layout: Open MPI binds one process to one core by default, which
# would put both threads on it. --allow-run-as-root --oversubscribe: for root in a container.
set -euo pipefail
build="$1"; shift
program="$build/bench/bench_dist"
mpirun=(mpirun --allow-run-as-root --oversubscribe)
echo "== 1 process x 1 thread"
OMP_NUM_THREADS=1 "${mpirun[@]}" --bind-to core -x OMP_NUM_THREADS -np 1 "$program" "$@"
echo "== 2 processes x 1 thread"
OMP_NUM_THREADS=1 "${mpirun[@]}" --bind-to core -x OMP_NUM_THREADS -np 2 "$program" "$@"
echo "== 1 process x 2 threads"
OMP_NUM_THREADS=2 "${mpirun[@]}" --bind-to none -x OMP_NUM_THREADS -np 1 "$program" "$@"
