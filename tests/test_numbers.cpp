#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../examples/translate/numbers.hpp"

using namespace translate;

namespace {

/// Independent, strict reader for Chinese numerals. Each term (digit + unit 十百千, or a last
/// bare digit) must sit one place below the previous term unless a single 零 stands between
/// them; a bare 十 counts as 一十; 万 closes the high group. Returns -1 for a malformed numeral,
/// so a missing or extra 零 fails the round trip.
long parse_chinese(const std::string& s) {
  static const std::map<std::string, long> digits = {{"零", 0}, {"一", 1}, {"二", 2}, {"三", 3},
                                                     {"四", 4}, {"五", 5}, {"六", 6}, {"七", 7},
                                                     {"八", 8}, {"九", 9}};
  static const std::map<std::string, int> places = {{"十", 1}, {"百", 2}, {"千", 3}};
  if (s == "零") return 0;
  long total = 0, group = 0, digit = 0;
  bool have_digit = false, zero = false;
  int last_place = -1;  // -1: nothing yet, any place may come first
  auto place_ok = [&](int p) {
    return last_place == -1 || (zero ? p < last_place - 1 : p == last_place - 1);
  };
  auto close_group = [&] {
    if (have_digit && !place_ok(0)) return false;
    group += digit;
    return !(zero && !have_digit);
  };
  for (size_t i = 0; i < s.size(); i += 3) {
    const std::string c = s.substr(i, 3);
    if (c == "零") {
      if (zero || have_digit || last_place == -1) return -1;
      zero = true;
    } else if (digits.count(c)) {
      if (have_digit) return -1;
      digit = digits.at(c);
      have_digit = true;
    } else if (places.count(c)) {
      const int p = places.at(c);
      if (!place_ok(p) || (!have_digit && last_place != -1)) return -1;
      long value = 1;
      for (int k = 0; k < p; ++k) value *= 10;
      group += (have_digit ? digit : 1) * value;
      digit = 0;
      have_digit = zero = false;
      last_place = p;
    } else if (c == "万" && total == 0) {
      if (!close_group()) return -1;
      total = group * 10000;
      group = digit = 0;
      have_digit = zero = false;
      last_place = 4;
    } else {
      return -1;
    }
  }
  if (!close_group()) return -1;
  return total + group;
}

/// Independent reader for the English words: numbers add up, "hundred" multiplies the current
/// part, "thousand" closes it.
long parse_english(const std::string& s) {
  static const std::map<std::string, long> values = {
      {"zero", 0},     {"one", 1},      {"two", 2},        {"three", 3},     {"four", 4},
      {"five", 5},     {"six", 6},      {"seven", 7},      {"eight", 8},     {"nine", 9},
      {"ten", 10},     {"eleven", 11},  {"twelve", 12},    {"thirteen", 13}, {"fourteen", 14},
      {"fifteen", 15}, {"sixteen", 16}, {"seventeen", 17}, {"eighteen", 18}, {"nineteen", 19},
      {"twenty", 20},  {"thirty", 30},  {"forty", 40},     {"fifty", 50},    {"sixty", 60},
      {"seventy", 70}, {"eighty", 80},  {"ninety", 90}};
  std::string spaced = s;
  for (char& c : spaced) {
    if (c == '-') c = ' ';
  }
  std::istringstream in(spaced);
  long total = 0, part = 0;
  std::string w;
  while (in >> w) {
    if (w == "hundred") {
      part *= 100;
    } else if (w == "thousand") {
      total = part * 1000;
      part = 0;
    } else if (values.count(w)) {
      part += values.at(w);
    } else {
      return -1;
    }
  }
  return total + part;
}

/// Canonical-form checks the value parser cannot see.
void check_chinese_form(long n, const std::string& s) {
  INFO(n << " -> " << s);
  if (n == 0) return;
  CHECK(s.find("零零") == std::string::npos);
  CHECK(s.rfind("零") != s.size() - 3);
  CHECK(s.rfind("一十", 0) != 0);
}

void check_english_form(long n, const std::string& s) {
  INFO(n << " -> " << s);
  CHECK(s.find("  ") == std::string::npos);
  CHECK(s.find(" and ") == std::string::npos);
  if (n != 0) CHECK(s.find("zero") == std::string::npos);
  // A hyphen only ever joins twenty..ninety to one..nine: one for each of the two three-digit
  // groups whose last two digits are 21..99 and not a multiple of ten.
  auto hyphenated = [](long r) { return r > 20 && r % 10 != 0 ? 1 : 0; };
  const long hyphens = static_cast<long>(std::count(s.begin(), s.end(), '-'));
  CHECK(hyphens == hyphenated(n / 1000 % 100) + hyphenated(n % 100));
}

void check_round_trip(long n) {
  const std::string zh = chinese_numeral(n);
  const std::string en = english_words(n);
  CHECK(parse_chinese(zh) == n);
  CHECK(parse_english(en) == n);
  check_chinese_form(n, zh);
  check_english_form(n, en);
  CHECK(decode_target(encode_target(n)) == zh);
  std::string error;
  CHECK(encode_source(en, &error).size() > 0);
  CHECK(error.empty());
}

}  // namespace

TEST_CASE("chinese_numeral follows the mainland standard") {
  // clang-format off
  const std::vector<std::pair<long, std::string>> cases = {
      // Required.
      {0, "零"}, {10, "十"}, {15, "十五"}, {110, "一百一十"}, {105, "一百零五"},
      {1005, "一千零五"}, {1010, "一千零一十"}, {1050, "一千零五十"}, {10000, "一万"},
      {10005, "一万零五"}, {10010, "一万零一十"}, {10100, "一万零一百"}, {100000, "十万"},
      {100010, "十万零一十"}, {110000, "十一万"}, {101010, "十万一千零一十"},
      {200001, "二十万零一"}, {999999, "九十九万九千九百九十九"},
      // More of our own.
      {1, "一"}, {20, "二十"}, {21, "二十一"}, {100, "一百"}, {101, "一百零一"}, {1000, "一千"},
      {1001, "一千零一"}, {10001, "一万零一"}, {11000, "一万一千"}, {120000, "十二万"},
      {100100, "十万零一百"}, {1100, "一千一百"}, {1011, "一千零一十一"},
      {10110, "一万零一百一十"}, {210000, "二十一万"}, {101000, "十万一千"},
      {500050, "五十万零五十"}, {30003, "三万零三"}};
  // clang-format on
  for (const auto& [number, expected] : cases) {
    const auto n = number;  // INFO's lambda cannot capture a structured binding
    INFO(n);
    CHECK(chinese_numeral(n) == expected);
  }
}

TEST_CASE("english_words spells numbers in American style") {
  const std::vector<std::pair<long, std::string>> cases = {
      {0, "zero"},
      {7, "seven"},
      {13, "thirteen"},
      {20, "twenty"},
      {21, "twenty-one"},
      {45, "forty-five"},
      {99, "ninety-nine"},
      {100, "one hundred"},
      {101, "one hundred one"},
      {110, "one hundred ten"},
      {342, "three hundred forty-two"},
      {1000, "one thousand"},
      {12345, "twelve thousand three hundred forty-five"},
      {20020, "twenty thousand twenty"},
      {58067, "fifty-eight thousand sixty-seven"},
      {100000, "one hundred thousand"},
      {100001, "one hundred thousand one"},
      {999999, "nine hundred ninety-nine thousand nine hundred ninety-nine"}};
  for (const auto& [number, expected] : cases) {
    const auto n = number;  // INFO's lambda cannot capture a structured binding
    INFO(n);
    CHECK(english_words(n) == expected);
  }
  for (int t = 2; t <= 9; ++t) {
    for (int u = 1; u <= 9; ++u) {
      const std::string w = english_words(10 * t + u);
      INFO(w);
      CHECK(w.find('-') != std::string::npos);
      CHECK(w.find(' ') == std::string::npos);
    }
  }
}

TEST_CASE("numbers outside 0..999999 are rejected") {
  for (long n : {-1L, 1000000L, 12345678L}) {
    CHECK_THROWS_AS(english_words(n), std::invalid_argument);
    CHECK_THROWS_AS(chinese_numeral(n), std::invalid_argument);
    CHECK_THROWS_AS(encode_target(n), std::invalid_argument);
  }
}

TEST_CASE("both spellings parse back to the number") {
  for (long n = 0; n < 2000; ++n) check_round_trip(n);
  std::uint64_t state = 12345;
  for (int i = 0; i < 20000; ++i) {
    check_round_trip(static_cast<long>(splitmix64(state) % 1000000));
  }
  check_round_trip(kMaxNumber);
}

TEST_CASE("vocabularies are fixed and round-trip every token") {
  const Vocab& src = source_vocab();
  const Vocab& tgt = target_vocab();
  CHECK(src.size() == 4 + 20 + 8 + 3);
  CHECK(tgt.size() == 4 + 14);
  for (const Vocab* v : {&src, &tgt}) {
    CHECK(v->token(Vocab::kPad) == "<pad>");
    CHECK(v->token(Vocab::kBos) == "<bos>");
    CHECK(v->token(Vocab::kEos) == "<eos>");
    CHECK(v->token(Vocab::kUnk) == "<unk>");
    for (Index i = 0; i < v->size(); ++i) CHECK(v->id(v->token(i)) == i);
    CHECK(v->id("nonsense") == Vocab::kUnk);
    CHECK_THROWS_AS(v->token(v->size()), std::out_of_range);
    CHECK_THROWS_AS(v->token(-1), std::out_of_range);
  }
  CHECK(src.id("zero") == 4);
  CHECK(src.id("-") == src.size() - 1);
  CHECK(tgt.id("零") == 4);
  CHECK(tgt.id("万") == tgt.size() - 1);
  CHECK_THROWS_AS(Vocab({"a", "a"}), std::invalid_argument);
}

TEST_CASE("encode_source tokenises words and hyphens") {
  const Vocab& v = source_vocab();
  std::string error = "stale";
  const std::vector<long> ids = encode_source("forty-five", &error);
  CHECK(error.empty());
  CHECK(ids == std::vector<long>{v.id("forty"), v.id("-"), v.id("five")});
  CHECK(encode_source("  Twelve   THOUSAND three hundred Forty-Five ", &error) ==
        encode_source(english_words(12345), nullptr));
  CHECK(encode_source(english_words(12345), nullptr).size() == 7);
}

TEST_CASE("encode_source reports bad input") {
  std::string error;
  CHECK(encode_source("fourty-five", &error).empty());
  CHECK(error == "unknown word 'fourty'");
  CHECK(encode_source("one hundred and one", &error).empty());
  CHECK(error == "unknown word 'and'");
  CHECK(encode_source("   ", &error).empty());
  CHECK(error.find("empty") != std::string::npos);
  CHECK(encode_source("", nullptr).empty());
}

TEST_CASE("encode_target and decode_target") {
  const Vocab& v = target_vocab();
  CHECK(encode_target(101010) == std::vector<long>{v.id("十"), v.id("万"), v.id("一"), v.id("千"),
                                                   v.id("零"), v.id("一"), v.id("十")});
  std::vector<long> ids = encode_target(305);
  ids.insert(ids.begin(), Vocab::kBos);
  ids.push_back(Vocab::kEos);
  ids.push_back(v.id("九"));
  CHECK(decode_target(ids) == "三百零五");
  CHECK(decode_target({Vocab::kPad, v.id("七"), Vocab::kUnk}) == "七");
  CHECK(decode_target({}) == "");
}

TEST_CASE("about 5% of numbers are held out, deterministically") {
  long held = 0;
  for (long n = 0; n <= kMaxNumber; ++n) held += is_held_out(n) ? 1 : 0;
  const double fraction = static_cast<double>(held) / (kMaxNumber + 1);
  CHECK(fraction > 0.04);
  CHECK(fraction < 0.06);
  for (long n = 0; n < 20; ++n) CHECK_FALSE(is_held_out(n));
  long short_held = 0;
  for (long n = 0; n < 1000; ++n) short_held += is_held_out(n) ? 1 : 0;
  CHECK(short_held > 20);
  CHECK(short_held < 90);
}

TEST_CASE("sample_number respects the split and favours short numbers") {
  std::uint64_t state = 7;
  int below_1000 = 0;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    const long n = sample_number(state, false);
    REQUIRE(n >= 0);
    REQUIRE(n <= kMaxNumber);
    CHECK_FALSE(is_held_out(n));
    below_1000 += n < 1000 ? 1 : 0;
  }
  // 30% plus the 0.1% of the full range; the held-out filter barely moves it.
  CHECK(below_1000 > draws * 0.27);
  CHECK(below_1000 < draws * 0.33);
  for (int i = 0; i < 1000; ++i) CHECK(is_held_out(sample_number(state, true)));

  std::uint64_t a = 99, b = 99;
  for (int i = 0; i < 100; ++i) CHECK(sample_number(a, false) == sample_number(b, false));
}

TEST_CASE("special tokens typed literally are unknown words") {
  for (const char* phrase : {"<pad>", "one <eos> two", "<bos>", "<unk>"}) {
    std::string error;
    CHECK(translate::encode_source(phrase, &error).empty());
    CHECK(error.find("unknown word '<") != std::string::npos);
  }
}
