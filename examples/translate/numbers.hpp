// The data side of the translate example: integers 0..999,999 written as English words (source)
// and as Chinese numerals (target), their token vocabularies, and a reproducible train /
// held-out split.
//
// Token sequences returned here carry no special tokens; the model code adds <bos> / <eos>.
#pragma once

#include <cctype>
#include <cstdint>
#include <eigenformer/core/tensor.hpp>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace translate {

using eigenformer::Index;

constexpr long kMaxNumber = 999999;

namespace detail {

inline void check_range(long n, const char* who) {
  if (n < 0 || n > kMaxNumber) {
    throw std::invalid_argument(std::string("translate::") + who + ": " + std::to_string(n) +
                                " is outside 0..999999");
  }
}

inline const std::vector<std::string>& small_words() {
  static const std::vector<std::string> words = {
      "zero",     "one",     "two",     "three",     "four",     "five",    "six",
      "seven",    "eight",   "nine",    "ten",       "eleven",   "twelve",  "thirteen",
      "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
  return words;
}

inline const std::vector<std::string>& tens_words() {
  static const std::vector<std::string> words = {"twenty", "thirty",  "forty",  "fifty",
                                                 "sixty",  "seventy", "eighty", "ninety"};
  return words;
}

/// 1..999 in words, e.g. "three hundred forty-five".
inline std::string words_below_1000(long n) {
  std::string out;
  if (n >= 100) {
    out = small_words()[static_cast<size_t>(n / 100)] + " hundred";
    n %= 100;
    if (n == 0) return out;
    out += ' ';
  }
  if (n < 20) return out + small_words()[static_cast<size_t>(n)];
  out += tens_words()[static_cast<size_t>(n / 10 - 2)];
  if (n % 10 != 0) out += "-" + small_words()[static_cast<size_t>(n % 10)];
  return out;
}

inline const std::vector<std::string>& chinese_digits() {
  static const std::vector<std::string> digits = {"零", "一", "二", "三", "四",
                                                  "五", "六", "七", "八", "九"};
  return digits;
}

/// 1..9999 in Chinese: a run of inner zeros is one 零, trailing zeros are dropped. `leading`
/// says this group starts the whole number, where 一十 is written 十.
inline std::string chinese_below_10000(long n, bool leading) {
  static const char* const units[] = {"", "十", "百", "千"};
  const long powers[] = {1, 10, 100, 1000};
  std::string out;
  bool started = false;
  bool pending_zero = false;
  for (int pos = 3; pos >= 0; --pos) {
    const long digit = n / powers[pos] % 10;
    if (digit == 0) {
      pending_zero = started;
      continue;
    }
    if (pending_zero) out += "零";
    const bool bare_ten = leading && !started && pos == 1 && digit == 1;
    if (!bare_ten) out += chinese_digits()[static_cast<size_t>(digit)];
    out += units[pos];
    started = true;
    pending_zero = false;
  }
  return out;
}

/// Splits a UTF-8 string into its code points.
inline std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const auto lead = static_cast<unsigned char>(s[i]);
    const size_t len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

/// Splits on whitespace, lowercases, and splits each word on hyphens keeping "-" as a token.
inline std::vector<std::string> source_tokens(const std::string& phrase) {
  std::vector<std::string> out;
  std::string word;
  auto flush = [&] {
    if (!word.empty()) out.push_back(word);
    word.clear();
  };
  for (char c : phrase) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      flush();
    } else if (c == '-') {
      flush();
      out.push_back("-");
    } else {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  flush();
  return out;
}

/// The splitmix64 output function: a fixed, well-mixed 64-bit hash.
inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace detail

/// 0..999999 in lowercase American English, no "and", hyphens for 21..99:
/// 12345 -> "twelve thousand three hundred forty-five". Throws std::invalid_argument otherwise.
inline std::string english_words(long n) {
  detail::check_range(n, "english_words");
  if (n == 0) return "zero";
  const long high = n / 1000;
  const long low = n % 1000;
  std::string out;
  if (high > 0) out = detail::words_below_1000(high) + " thousand";
  if (low > 0) out += (out.empty() ? "" : " ") + detail::words_below_1000(low);
  return out;
}

/// 0..999999 as a mainland-standard Chinese numeral in UTF-8: 101010 -> "十万一千零一十".
/// Throws std::invalid_argument outside the range.
inline std::string chinese_numeral(long n) {
  detail::check_range(n, "chinese_numeral");
  if (n == 0) return "零";
  const long high = n / 10000;
  const long low = n % 10000;
  if (high == 0) return detail::chinese_below_10000(low, true);
  std::string out = detail::chinese_below_10000(high, true) + "万";
  if (low == 0) return out;
  if (low < 1000) out += "零";  // zeros across the 万 boundary
  return out + detail::chinese_below_10000(low, false);
}

/// Token <-> id table: <pad>=0, <bos>=1, <eos>=2, <unk>=3, then the given words in order.
class Vocab {
 public:
  static constexpr Index kPad = 0;
  static constexpr Index kBos = 1;
  static constexpr Index kEos = 2;
  static constexpr Index kUnk = 3;

  explicit Vocab(const std::vector<std::string>& words) {
    for (const char* special : {"<pad>", "<bos>", "<eos>", "<unk>"}) add(special);
    for (const auto& w : words) add(w);
  }

  /// The token's id, or kUnk when the token is not in the table.
  Index id(const std::string& token) const {
    const auto it = ids_.find(token);
    return it == ids_.end() ? kUnk : it->second;
  }

  bool contains(const std::string& token) const { return ids_.count(token) != 0; }

  /// Throws std::out_of_range for an id outside 0..size()-1.
  const std::string& token(Index id) const {
    if (id < 0 || id >= size()) {
      throw std::out_of_range("translate::Vocab::token: id " + std::to_string(id) + " outside 0.." +
                              std::to_string(size() - 1));
    }
    return tokens_[static_cast<size_t>(id)];
  }

  Index size() const { return static_cast<Index>(tokens_.size()); }

  static bool is_special(Index id) { return id >= kPad && id <= kUnk; }

 private:
  void add(const std::string& token) {
    if (!ids_.emplace(token, size()).second) {
      throw std::invalid_argument("translate::Vocab: duplicate token '" + token + "'");
    }
    tokens_.push_back(token);
  }

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, Index> ids_;
};

/// zero..nineteen, twenty..ninety, hundred, thousand, "-".
inline const Vocab& source_vocab() {
  static const Vocab vocab = [] {
    std::vector<std::string> words = detail::small_words();
    words.insert(words.end(), detail::tens_words().begin(), detail::tens_words().end());
    words.insert(words.end(), {"hundred", "thousand", "-"});
    return Vocab(words);
  }();
  return vocab;
}

/// 零一二三四五六七八九十百千万, one token per character.
inline const Vocab& target_vocab() {
  static const Vocab vocab(detail::utf8_chars("零一二三四五六七八九十百千万"));
  return vocab;
}

/// Source ids for a typed phrase. Case and extra spaces are ignored; "forty-five" gives
/// "forty", "-", "five". On an empty phrase or unknown word returns {} and sets *error (if
/// given), e.g. "unknown word 'fourty'".
inline std::vector<long> encode_source(const std::string& phrase, std::string* error) {
  const std::vector<std::string> tokens = detail::source_tokens(phrase);
  auto fail = [&](const std::string& message) {
    if (error) *error = message;
    return std::vector<long>{};
  };
  if (tokens.empty()) return fail("empty input: type a number in English words");
  std::vector<long> ids;
  for (const auto& t : tokens) {
    // Special tokens typed literally ("<pad>", "<eos>") are not words either.
    if (!source_vocab().contains(t) || Vocab::is_special(source_vocab().id(t)))
      return fail("unknown word '" + t + "'");
    ids.push_back(static_cast<long>(source_vocab().id(t)));
  }
  if (error) error->clear();
  return ids;
}

/// Target ids for n: one per character of chinese_numeral(n).
inline std::vector<long> encode_target(long n) {
  std::vector<long> ids;
  for (const auto& c : detail::utf8_chars(chinese_numeral(n))) {
    ids.push_back(static_cast<long>(target_vocab().id(c)));
  }
  return ids;
}

/// The text of target ids, stopping at <eos> and skipping the other special tokens.
inline std::string decode_target(const std::vector<long>& ids) {
  std::string out;
  for (long id : ids) {
    if (id == Vocab::kEos) break;
    if (!Vocab::is_special(id)) out += target_vocab().token(id);
  }
  return out;
}

/// True for about 5% of 0..999999 (splitmix64 hash of n, mod 20 == 0), never used in training.
/// 0..19 are never held out: each is its own word, which no other example could teach.
inline bool is_held_out(long n) {
  if (n < 20) return false;
  return detail::mix64(static_cast<std::uint64_t>(n) + 0x9E3779B97F4A7C15ULL) % 20 == 0;
}

/// splitmix64: advances state and returns the next 64 random bits.
inline std::uint64_t splitmix64(std::uint64_t& state) {
  state += 0x9E3779B97F4A7C15ULL;
  return detail::mix64(state);
}

/// Draws a number whose is_held_out() equals held_out. Short numbers get extra weight: 30% from
/// 0..999, 20% from 1000..99999, 50% from 0..999999 (each uniform). Then a quarter of them are
/// rounded, their last 1 to 5 digits set to zero, because people type round numbers ("ten
/// thousand") far more often than a uniform draw produces them. Redrawn until the split matches.
inline long sample_number(std::uint64_t& state, bool held_out) {
  for (;;) {
    const std::uint64_t bucket = splitmix64(state) % 10;
    const std::uint64_t r = splitmix64(state);
    long n;
    if (bucket < 3) {
      n = static_cast<long>(r % 1000);
    } else if (bucket < 5) {
      n = 1000 + static_cast<long>(r % 99000);
    } else {
      n = static_cast<long>(r % 1000000);
    }
    const std::uint64_t round = splitmix64(state);
    if (round % 4 == 0) {
      long unit = 1;
      for (std::uint64_t k = 0; k < 1 + (round >> 2) % 5; ++k) unit *= 10;
      n -= n % unit;
    }
    if (is_held_out(n) == held_out) return n;
  }
}

}  // namespace translate
