#!/usr/bin/env bash
# Crash survival of an example's `train`: a run killed with SIGKILL at random moments and resumed
# each time from its latest training checkpoint (--save-every, --resume) must end with a model file
# byte-identical to that of a run that was never interrupted: the same weights, bit for bit. One
# thread. Then a resume with other flags, from a missing file or from a damaged file must fail
# with a clear message.
#   kill_resume_test.sh WORK_DIR PROGRAM [TRAIN FLAGS...]   (without --out, --save-every, --resume)
set -euo pipefail
work="$1"; exe="$2"; shift 2
flags=("$@")
rm -rf "$work"; mkdir -p "$work"
export OMP_NUM_THREADS=1

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# The uninterrupted run (saving its state too: saving must not change the training).
start=$(now_ms)
"$exe" train --out "$work/straight.safetensors" --save-every 5 "${flags[@]}" \
  > "$work/straight.out" 2> "$work/straight.err" || true
took=$(( $(now_ms) - start ))
[ -f "$work/straight.safetensors" ] || { cat "$work/straight.err"; exit 1; }

# Killed at a uniformly random moment of an uninterrupted run's time, three times, each run
# resuming from the state the last one left (or starting afresh if it left none); then to the end.
out="$work/killed.safetensors"
for attempt in 1 2 3 4; do
  resume=()
  [ -f "$out.state" ] && resume=(--resume "$out.state")
  "$exe" train --out "$out" --save-every 5 "${flags[@]}" "${resume[@]}" \
    > "$work/run$attempt.out" 2> "$work/run$attempt.err" &
  pid=$!
  if [ "$attempt" -lt 4 ]; then
    delay=$(( RANDOM * 32768 + RANDOM ))
    delay=$(( delay % (took > 0 ? took : 1) ))
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    if kill -KILL "$pid" 2> /dev/null; then
      echo "run $attempt: killed after ${delay} ms of ~${took} ms"
    else
      echo "run $attempt: finished before the kill at ${delay} ms"
    fi
  fi
  wait "$pid" || true
  grep -h "resuming from" "$work/run$attempt.err" || true
done
if ! cmp "$work/straight.safetensors" "$out"; then
  echo "FAIL: the killed and resumed run ended with other weights than the uninterrupted one"
  exit 1
fi
echo "killed and resumed: the same model file, byte for byte"

# Clear errors: other flags (exit status 2), a missing or damaged state file (exit status 1).
set +e
"$exe" train --out "$work/x.safetensors" "${flags[@]}" --seed 77 \
  --resume "$work/straight.safetensors.state" > /dev/null 2> "$work/other.err"
[ $? -eq 2 ] && grep -q "was saved by a run with seed" "$work/other.err" \
  || { echo "FAIL: resuming with another --seed"; cat "$work/other.err"; exit 1; }
"$exe" train --out "$work/x.safetensors" "${flags[@]}" --resume "$work/missing.state" \
  > /dev/null 2> "$work/missing.err"
[ $? -eq 1 ] && grep -q "missing.state" "$work/missing.err" \
  || { echo "FAIL: resuming from a missing file"; cat "$work/missing.err"; exit 1; }
head -c 2000 "$work/straight.safetensors.state" > "$work/cut.state"
"$exe" train --out "$work/x.safetensors" "${flags[@]}" --resume "$work/cut.state" \
  > /dev/null 2> "$work/cut.err"
[ $? -eq 1 ] && grep -q "cut.state" "$work/cut.err" \
  || { echo "FAIL: resuming from a truncated file"; cat "$work/cut.err"; exit 1; }
echo "kill and resume test passed"
