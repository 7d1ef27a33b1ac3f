// Encodes a text file with the npm package gpt-3-encoder (OpenAI's GPT-2 encoder ported to
// JavaScript) and writes its token ids, whitespace-separated, for tests/test_gpt2_tokenizer.cpp.
//   node tools/bpe_reference.js PACKAGE_DIR CORPUS_TXT OUT_IDS
'use strict';
const fs = require('fs');
const [packageDir, corpusPath, idsPath] = process.argv.slice(2);
const { encode } = require(require('path').resolve(packageDir));

// JavaScript strings cannot hold invalid UTF-8, and on three characters JavaScript's \s is not
// OpenAI's Python's, which the C++ tokenizer follows (its header says how): refuse them all.
const text = new TextDecoder('utf-8', { fatal: true }).decode(fs.readFileSync(corpusPath));
const odd = text.match(/[\u0085\u180e\ufeff]/u);
if (odd) {
  const cp = odd[0].codePointAt(0).toString(16).toUpperCase();
  throw new Error(`${corpusPath}: U+${cp} at character ${odd.index}: the engines disagree on it`);
}

// Encoder.js appends each word's ids with Array.concat, which makes one call over the whole
// corpus quadratic (84 s for 290 KB). So the text goes in pieces, cut only at a '\n' between two
// non-space characters, where the pattern's matches cannot differ: no match crosses such a '\n',
// it is a word alone in both cases, and nothing looks behind it.
const pieces = text.split(/(?<=\S\n)(?=\S)/u);
const ids = [];
for (const piece of pieces) {
  for (const id of encode(piece)) {
    if (!Number.isInteger(id)) {
      throw new Error(`gpt-3-encoder gave id ${id} in ${JSON.stringify(piece)}`);
    }
    ids.push(id);
  }
}
fs.writeFileSync(idsPath, ids.join(' ') + '\n');
console.log(`${idsPath}: ${ids.length} ids for ${Buffer.byteLength(text)} bytes`);
