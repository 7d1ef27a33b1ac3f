#!/usr/bin/env bash
# End-to-end check of the translate program: a short training run writes a checkpoint, and `run`
# prints exactly one line per input line, with 'error:' lines for what it cannot translate.
#   smoke_test.sh PATH_TO_TRANSLATE WORK_DIR
set -euo pipefail
exe="$1"; work="$2"
rm -rf "$work"; mkdir -p "$work"
OMP_NUM_THREADS=1 "$exe" train --out "$work/m.safetensors" --steps 20 --eval 10 --d-model 16 \
  --d-ff 32 --layers 1 > "$work/train.out" 2> "$work/train.err"
grep -q "held-out exact match" "$work/train.out"
grep -q "step 20/20" "$work/train.err"
! ls "$work" | grep -q tmp   # no temporary file left behind

printf 'twelve\n\nfourty two\nseven hundred\n' | "$exe" run --model "$work/m.safetensors" > "$work/run.out"
[ "$(wc -l < "$work/run.out")" -eq 4 ]
sed -n 2p "$work/run.out" | grep -q '^error: '
sed -n 3p "$work/run.out" | grep -q "^error: unknown word 'fourty'"

echo "seven hundred" | "$exe" run --model "$work/m.safetensors" --attention "$work/a.png" > /dev/null 2>&1
[ "$(head -c 4 "$work/a.png" | tail -c 3)" = "PNG" ]

# Another positional scheme and scoring: the checkpoint keeps them, so run needs no flag.
OMP_NUM_THREADS=1 "$exe" train --out "$work/r.safetensors" --steps 3 --eval 4 --d-model 16 \
  --d-ff 32 --layers 1 --positional relative --attention additive > /dev/null 2> "$work/r.err"
grep -q "relative positions, additive attention" "$work/r.err"
printf 'twelve\nfourty\n' | "$exe" run --model "$work/r.safetensors" > "$work/r.out"
[ "$(wc -l < "$work/r.out")" -eq 2 ]
echo "seven" | "$exe" run --model "$work/r.safetensors" --attention "$work/r.png" > /dev/null 2>&1
[ "$(head -c 4 "$work/r.png" | tail -c 3)" = "PNG" ]

# Bad command lines: usage and exit status 2; a missing model file: exit status 1.
set +e
"$exe" train --steps 5 > /dev/null 2>&1; [ $? -eq 2 ] || exit 1
"$exe" frobnicate > /dev/null 2>&1; [ $? -eq 2 ] || exit 1
"$exe" train --out "$work/x" --positional absolute 2> "$work/bad.err" > /dev/null; [ $? -eq 2 ] || exit 1
grep -q "flag --positional takes sinusoidal, learned, relative or rotary, got 'absolute'" "$work/bad.err" || exit 1
grep -q "^usage:" "$work/bad.err" || exit 1
"$exe" train --out "$work/x" --attention mlp > /dev/null 2>&1; [ $? -eq 2 ] || exit 1
"$exe" run --model "$work/missing" < /dev/null > /dev/null 2>&1; [ $? -eq 1 ] || exit 1
echo "translate smoke test passed"
