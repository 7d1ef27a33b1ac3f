#!/usr/bin/env bash
# The default char_lm model learns: 500 steps on Debian's fortunes (about 12 s on one core) must
# beat the count-based bigram on the held-out fortunes by at least 0.1 bits per character (0.21 on
# an AVX-512 machine). A model that trains but learns badly passes every other test: with its
# position table drawn 50 times larger than its tokens, it did not beat the bigram at all here
# (exit status 3), and nothing noticed that for 200 commits.
#   learns_test.sh PATH_TO_CHAR_LM WORK_DIR
set -euo pipefail
exe="$1"; work="$2"
corpus=/usr/share/games/fortunes
if [ ! -d "$corpus" ]; then
  echo "skipped: no $corpus (sudo apt-get install fortunes)"
  exit 77
fi
rm -rf "$work"; mkdir -p "$work"
status=0
OMP_NUM_THREADS=1 "$exe" train --out "$work/m.safetensors" --steps 500 > "$work/out" 2>&1 ||
  status=$?
verdict="$(grep '^verdict:' "$work/out" || true)"
echo "exit status $status, $verdict"
[ "$status" -eq 0 ] || { cat "$work/out"; exit 1; }
# "verdict: the transformer beats the bigram by 0.208 bits/char (6% fewer bits)"
margin="$(sed -n 's/^verdict: the transformer beats the bigram by \([0-9.]*\) bits.*/\1/p' "$work/out")"
awk -v m="$margin" 'BEGIN { exit !(m != "" && m + 0 >= 0.1) }' || {
  echo "the margin over the bigram is '$margin' bits/char, below 0.1"
  exit 1
}
echo "char_lm learns: $margin bits/char better than the bigram"
