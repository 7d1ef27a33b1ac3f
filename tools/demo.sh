#!/usr/bin/env bash
# The main job: builds the translate example, trains it (or reuses build/translate.safetensors
# from an earlier run), and translates a few English phrases into Chinese numerals.
# Installs missing Debian packages first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

# only the example: a newcomer should not wait for every test program to compile
EIGENFORMER_TARGETS=translate tools/setup.sh build/release -DCMAKE_BUILD_TYPE=Release -DEIGENFORMER_BUILD_TESTS=ON \
  -DEIGENFORMER_BUILD_EXAMPLES=ON -DEIGENFORMER_BUILD_BENCH=OFF
translate=build/release/examples/translate/translate
model=build/translate.safetensors

if [ -f "$model" ]; then
  echo "== Reusing $model (delete it to train again)"
else
  echo "== Training (about a minute on 2 cores)"
  "$translate" train --out "$model"
fi

echo "== Translating"
phrases="twelve thousand three hundred forty-five
one hundred five
ten thousand ten
two hundred thousand one
nine hundred ninety-nine thousand nine hundred ninety-nine
fourty-two"
echo "$phrases" | "$translate" run --model "$model" | paste <(echo "$phrases") - |
  while IFS=$'\t' read -r english chinese; do printf '  %-58s %s\n' "$english" "$chinese"; done

echo "== Cross-attention of one phrase -> build/attention.png"
echo "one hundred five thousand forty-two" |
  "$translate" run --model "$model" --attention build/attention.png
