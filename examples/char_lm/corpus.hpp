// Data for the character-level language model example: a strfile text corpus (the Debian
// `fortunes` files), a deterministic train / held-out split, a byte vocabulary and a count-based
// bigram baseline.
//
// "Character" means byte here: the model reads and writes raw bytes, so any text (UTF-8 included)
// round-trips, and bits per character are bits per byte.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace char_lm {

using Index = std::ptrdiff_t;

/// A corpus path that does not exist or cannot be read.
class CorpusError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Where Debian's `fortunes` and `fortunes-min` packages put their strfile sources.
inline const char* default_corpus_dir() { return "/usr/share/games/fortunes"; }

/// Splits strfile text into its entries: the text between lines holding only "%". Entries that
/// are empty or whitespace only are dropped; each kept entry keeps its final newline.
inline std::vector<std::string> split_strfile(const std::string& text) {
  std::vector<std::string> entries;
  std::string entry;
  auto finish = [&] {
    if (entry.find_first_not_of(" \t\r\n") != std::string::npos) entries.push_back(entry);
    entry.clear();
  };
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    const bool has_newline = end != std::string::npos;
    if (!has_newline) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    if (line == "%" || line == "%\r") {
      finish();
    } else {
      entry += line;
      entry += '\n';  // a last line without newline gets one, so every entry ends alike
    }
    pos = has_newline ? end + 1 : end;
  }
  finish();
  return entries;
}

/// The files a list of corpus paths names: a file stands for itself; a directory for its regular
/// files in name order, except hidden ones and strfile's index (.dat) and UTF-8 alias (.u8) files.
/// Throws CorpusError for a missing path or a directory without usable files.
inline std::vector<std::string> corpus_files(const std::vector<std::string>& paths) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  for (const std::string& path : paths) {
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    if (ec || !fs::exists(st))
      throw CorpusError("corpus path '" + path + "' does not exist" +
                        (path == default_corpus_dir()
                             ? " (install the text: sudo apt-get install fortunes)"
                             : ""));
    if (fs::is_regular_file(st)) {
      files.push_back(path);
      continue;
    }
    if (!fs::is_directory(st))
      throw CorpusError("corpus path '" + path + "' is neither a file nor a directory");
    std::vector<std::string> found;
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
      const fs::path p = it->path();
      const std::string name = p.filename().string();
      const std::string ext = p.extension().string();
      if (name.empty() || name[0] == '.' || ext == ".dat" || ext == ".u8") continue;
      std::error_code ec2;
      if (fs::is_regular_file(p, ec2)) found.push_back(p.string());
    }
    if (ec) throw CorpusError("cannot list corpus directory '" + path + "': " + ec.message());
    if (found.empty())
      throw CorpusError("corpus directory '" + path + "' holds no text files" +
                        (path == default_corpus_dir()
                             ? " (install the text: sudo apt-get install fortunes)"
                             : ""));
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CorpusError("cannot open corpus file '" + path + "'");
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw CorpusError("cannot read corpus file '" + path + "'");
  return s.str();
}

/// The corpus as two texts in strfile form ("entry%\n" repeated): entry number i (counting over
/// all files in order) goes to held_out when i % holdout_every == holdout_every - 1.
struct Split {
  std::string train, held_out;
  Index train_entries = 0, held_out_entries = 0;
};

inline Split split_entries(const std::vector<std::string>& entries, Index holdout_every = 10) {
  if (holdout_every < 2) throw std::invalid_argument("split_entries: holdout_every must be >= 2");
  Split s;
  for (size_t i = 0; i < entries.size(); ++i) {
    const bool held = static_cast<Index>(i % static_cast<size_t>(holdout_every)) ==
                      holdout_every - 1;
    std::string& out = held ? s.held_out : s.train;
    out += entries[i];
    out += "%\n";
    ++(held ? s.held_out_entries : s.train_entries);
  }
  return s;
}

/// Bytes seen in the training text, in byte order, as ids 0..n-1, and one more id (n) for any
/// other byte. size() = n + 1.
class ByteVocab {
 public:
  ByteVocab() { id_.fill(-1); }

  /// The vocabulary of the bytes in text.
  static ByteVocab from_text(const std::string& text) {
    bool seen[256] = {};
    for (unsigned char c : text) seen[c] = true;
    std::vector<unsigned char> bytes;
    for (int b = 0; b < 256; ++b)
      if (seen[b]) bytes.push_back(static_cast<unsigned char>(b));
    return ByteVocab(bytes);
  }

  /// The vocabulary written by to_hex(); throws std::invalid_argument if malformed (odd length,
  /// non-hex digits, bytes not strictly increasing).
  static ByteVocab from_hex(const std::string& hex) {
    if (hex.size() % 2 != 0) throw std::invalid_argument("vocabulary has an odd number of digits");
    auto digit = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      throw std::invalid_argument(std::string("vocabulary has a bad hex digit '") + c + "'");
    };
    std::vector<unsigned char> bytes;
    for (size_t i = 0; i < hex.size(); i += 2) {
      const int b = digit(hex[i]) * 16 + digit(hex[i + 1]);
      if (!bytes.empty() && b <= bytes.back())
        throw std::invalid_argument("vocabulary bytes are not strictly increasing");
      bytes.push_back(static_cast<unsigned char>(b));
    }
    return ByteVocab(bytes);
  }

  std::string to_hex() const {
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned char b : bytes_) {
      out += digits[b >> 4];
      out += digits[b & 15];
    }
    return out;
  }

  Index size() const { return static_cast<Index>(bytes_.size()) + 1; }
  Index unk() const { return static_cast<Index>(bytes_.size()); }
  bool known(unsigned char c) const { return id_[c] >= 0; }
  Index id(unsigned char c) const { return id_[c] >= 0 ? id_[c] : unk(); }
  /// The byte of a known id; '?' for unk (which the sampler never emits).
  char byte(Index id) const {
    return id >= 0 && id < unk() ? static_cast<char>(bytes_[static_cast<size_t>(id)]) : '?';
  }

  std::vector<Index> encode(const std::string& text) const {
    std::vector<Index> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = id(static_cast<unsigned char>(text[i]));
    return ids;
  }
  std::string decode(const std::vector<Index>& ids) const {
    std::string out;
    for (Index i : ids) out += byte(i);
    return out;
  }

 private:
  explicit ByteVocab(std::vector<unsigned char> bytes) : bytes_(std::move(bytes)) {
    id_.fill(-1);
    for (size_t i = 0; i < bytes_.size(); ++i) id_[bytes_[i]] = static_cast<Index>(i);
  }
  std::vector<unsigned char> bytes_;
  std::array<Index, 256> id_;
};

/// P(next | prev) from counts with add-k smoothing: (c(prev, next) + k) / (c(prev) + k V).
class Bigram {
 public:
  Bigram(Index vocab, double k = 1.0)
      : V_(vocab), k_(k), counts_(static_cast<size_t>(vocab * vocab), 0.0),
        totals_(static_cast<size_t>(vocab), 0.0) {
    if (vocab <= 0) throw std::invalid_argument("Bigram: vocab must be positive");
    if (!(k > 0.0)) throw std::invalid_argument("Bigram: k must be positive");
  }

  /// Counts every adjacent pair of ids.
  void fit(const std::vector<Index>& ids) {
    for (size_t i = 1; i < ids.size(); ++i) {
      counts_[static_cast<size_t>(ids[i - 1] * V_ + ids[i])] += 1.0;
      totals_[static_cast<size_t>(ids[i - 1])] += 1.0;
    }
  }

  double prob(Index prev, Index next) const {
    return (counts_[static_cast<size_t>(prev * V_ + next)] + k_) /
           (totals_[static_cast<size_t>(prev)] + k_ * static_cast<double>(V_));
  }

  /// Mean -log2 P(ids[i] | ids[i-1]) over i = 1..n-1: bits per character; 0 for n < 2.
  double bits_per_char(const std::vector<Index>& ids) const {
    if (ids.size() < 2) return 0.0;
    double bits = 0.0;
    for (size_t i = 1; i < ids.size(); ++i) bits -= std::log2(prob(ids[i - 1], ids[i]));
    return bits / static_cast<double>(ids.size() - 1);
  }

 private:
  Index V_;
  double k_;
  std::vector<double> counts_;  // (V, V) row-major: counts_[prev * V + next]
  std::vector<double> totals_;  // (V) pairs starting with prev
};

}  // namespace char_lm
