// Tests of text/gpt2_tokenizer.hpp: the ids of the JavaScript reference (the npm package
// gpt-3-encoder) on a corpus of about 500 KB, exact round trips of any bytes, the merge rule on
// small vocabularies, and the errors.
//
// The reference data is made in EIGENFORMER_GPT2_DIR by tools/bpe_reference.sh, which ctest runs
// first (fixture gpt2_reference). Without it the cases that need GPT-2's files (test suite
// gpt2_files) fail, saying how to make them; the cases on small vocabularies need nothing, and
// ctest runs them on their own.
#include <eigenformer/core/tensor.hpp>
#include <eigenformer/text/gpt2_tokenizer.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "test_util.hpp"

using namespace eigenformer;
using eftest::check_throws_with;
using eftest::read_bytes;
namespace fs = std::filesystem;

namespace {

const std::string kDir = EIGENFORMER_GPT2_DIR;
const std::string kPackage = kDir + "/node_modules/gpt-3-encoder";

/// A file of the reference data; fails the test case, naming the script, when it is missing.
std::string reference_file(const std::string& path) {
  INFO("missing " << path << ": run tools/bpe_reference.sh " << kDir
                  << " (ctest does; it needs node, npm and the npm registry)");
  REQUIRE(fs::exists(path));
  return path;
}

/// GPT-2's tokenizer, from the files of the reference package; loaded once.
const Gpt2Tokenizer& gpt2() {
  const std::string encoder = reference_file(kPackage + "/encoder.json");
  const std::string merges = reference_file(kPackage + "/vocab.bpe");
  static const Gpt2Tokenizer tokenizer = Gpt2Tokenizer::from_files(encoder, merges);
  return tokenizer;
}

/// The cases that need GPT-2's files; ctest runs them after tools/bpe_reference.sh.
const auto kNeedsGpt2 = doctest::test_suite("gpt2_files");

std::vector<Index> ids_of(std::initializer_list<Index> ids) { return ids; }

/// Control characters as escapes, everything else as it is (so that Chinese stays readable).
std::string printable(const std::string& bytes) {
  std::ostringstream s;
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    if (c == '\n') s << "\\n";
    else if (c == '\t') s << "\\t";
    else if (b < 0x20 || b == 0x7F) s << "\\x" << std::hex << int(b) << std::dec;
    else s << c;
  }
  return s.str();
}

/// i moved back to the first byte of the UTF-8 character it is in (for cutting text to show).
std::size_t char_start(const std::string& text, std::size_t i) {
  while (i > 0 && i < text.size() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
  return i;
}

/// ids[from, from + 8) with their tokens: "[12] 995 'Ġworld', ...".
std::string id_run(const Gpt2Tokenizer& tok, const std::vector<Index>& ids, std::size_t from) {
  std::ostringstream s;
  for (std::size_t i = from; i < std::min(ids.size(), from + 8); ++i)
    s << (i > from ? ", " : "") << '[' << i << "] " << ids[i] << " '" << tok.token_of(ids[i])
      << "'";
  return s.str();
}

/// Where two id sequences first differ, with the text there and both runs of ids from it.
std::string first_difference(const Gpt2Tokenizer& tok, const std::string& text,
                             const std::vector<Index>& ours,
                             const std::vector<Index>& reference) {
  const auto k = static_cast<std::size_t>(
      std::mismatch(ours.begin(), ours.end(), reference.begin(), reference.end()).first -
      ours.begin());
  // The ids before k agree, so their bytes are the text's first bytes.
  const std::size_t at = tok.decode(std::vector<Index>(ours.begin(), ours.begin() + k)).size();
  const std::size_t from = char_start(text, at > 60 ? at - 60 : 0);
  const std::size_t to = char_start(text, std::min(at + 60, text.size()));
  const std::size_t back = k > 2 ? 2 : k;
  std::ostringstream s;
  s << "first difference at id " << k << " (ours " << ours.size() << " ids, the reference's "
    << reference.size() << "), byte " << at << " of the corpus:\n  text: \""
    << printable(text.substr(from, at - from)) << "[HERE]" << printable(text.substr(at, to - at))
    << "\"\n  ours:      " << id_run(tok, ours, k - back)
    << "\n  reference: " << id_run(tok, reference, k - back);
  return s.str();
}

/// A vocabulary of the 256 bytes (id b for byte b) and `merges` (raw bytes), in rank order; the
/// concatenations get the ids from 256 on.
std::pair<std::string, std::string> tiny_files(
    const std::vector<std::pair<std::string, std::string>>& merges) {
  nlohmann::json encoder = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) encoder[Gpt2Tokenizer::spelling(std::string(1, char(b)))] = b;
  std::string bpe = "#version: 0.2\n";
  for (const auto& [left, right] : merges) {
    const std::string merged = Gpt2Tokenizer::spelling(left + right);
    if (!encoder.contains(merged)) encoder[merged] = encoder.size();
    bpe += Gpt2Tokenizer::spelling(left) + " " + Gpt2Tokenizer::spelling(right) + "\n";
  }
  return {encoder.dump(), bpe};
}

Gpt2Tokenizer tiny(const std::vector<std::pair<std::string, std::string>>& merges) {
  const auto [encoder, bpe] = tiny_files(merges);
  return Gpt2Tokenizer::from_strings(encoder, bpe);
}

/// The raw bytes of each token of encode(text).
std::vector<std::string> pieces(const Gpt2Tokenizer& tok, const std::string& text) {
  std::vector<std::string> out;
  for (const Index id : tok.encode(text)) out.push_back(tok.bytes_of(id));
  return out;
}

/// decode(encode(text)) == text, with every id in range.
void check_round_trip(const Gpt2Tokenizer& tok, const std::string& text) {
  const std::vector<Index> ids = tok.encode(text);
  const bool in_range = std::all_of(ids.begin(), ids.end(),
                                    [&](Index id) { return id >= 0 && id < tok.vocab_size(); });
  INFO("text (" << text.size() << " bytes): \"" << printable(text.substr(0, 200)) << "\"");
  CHECK(in_range);
  CHECK(tok.decode(ids) == text);
}

/// `count` strings of up to `max_length` pieces from a seeded generator: random bytes, ASCII
/// letters and spaces, multi-byte characters, and broken UTF-8.
std::vector<std::string> random_texts(std::uint64_t seed, int count, int max_length) {
  static const std::string kPieces[] = {
      " ", "  ", "\n", "\t", "a", "Z", "7", "'s", "!", "é", "中", "😀", "\u00a0", "\u3000",
      "\xff", "\xfe", "\x80", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe4\xb8",
      "\xf0\x9f\x98", std::string(1, '\0')};
  std::mt19937_64 rng(seed);  // raw outputs only: the same numbers with every standard library
  std::vector<std::string> texts;
  for (int t = 0; t < count; ++t) {
    std::string text;
    const int length = static_cast<int>(rng() % (max_length + 1));
    for (int i = 0; i < length; ++i) {
      if (rng() % 2) text.push_back(static_cast<char>(rng() & 0xFF));
      else text += kPieces[rng() % std::size(kPieces)];
    }
    texts.push_back(text);
  }
  return texts;
}

}  // namespace

TEST_CASE("encode gives the ids of the JavaScript reference (gpt-3-encoder) on the corpus" *
          kNeedsGpt2) {
  const Gpt2Tokenizer& tok = gpt2();
  const std::string text = read_bytes(reference_file(kDir + "/corpus.txt"));
  std::vector<Index> reference;
  std::istringstream in(read_bytes(reference_file(kDir + "/corpus.ids")));
  for (Index id; in >> id;) reference.push_back(id);
  REQUIRE(text.size() > 300000);  // the corpus as tools/bpe_reference.sh builds it
  REQUIRE(reference.size() > 50000);

  const std::vector<Index> ids = tok.encode(text);
  if (ids != reference) FAIL(first_difference(tok, text, ids, reference));
  MESSAGE("the same " << ids.size() << " ids as gpt-3-encoder for " << text.size()
                      << " bytes of text");
  CHECK(tok.decode(ids) == text);
}

TEST_CASE("GPT-2's ids of short texts" * kNeedsGpt2) {
  const Gpt2Tokenizer& tok = gpt2();
  CHECK(tok.vocab_size() == 50257);
  CHECK(tok.encode("Hello world") == ids_of({15496, 995}));
  CHECK(tok.encode("").empty());
  CHECK(tok.encode(" ") == ids_of({220}));
  CHECK(tok.encode("Hello, world!") == ids_of({15496, 11, 995, 0}));
  CHECK(tok.encode("GPT-2 was released in 2019.") ==
        ids_of({38, 11571, 12, 17, 373, 2716, 287, 13130, 13}));
  CHECK(tok.encode("I'm here") == ids_of({40, 1101, 994}));
  CHECK(tok.encode("  indented\n") == ids_of({220, 773, 4714, 198}));
  CHECK(tok.encode("中文") == ids_of({40792, 23877, 229}));
  CHECK(tok.encode("👍") == ids_of({41840, 235}));
  // Text is never split into special tokens, as in the references.
  CHECK(tok.encode("<|endoftext|>") == ids_of({27, 91, 437, 1659, 5239, 91, 29}));
  CHECK(tok.id_of("<|endoftext|>") == 50256);
  CHECK(tok.id_of("Ġworld") == 995);
  CHECK(tok.token_of(995) == "Ġworld");
  CHECK(tok.bytes_of(995) == " world");
  CHECK(tok.decode({15496, 995, 50256}) == "Hello world<|endoftext|>");
}

TEST_CASE("whitespace where the regex engines disagree (the header's 'Agreement' paragraph)" *
          kNeedsGpt2) {
  const Gpt2Tokenizer& tok = gpt2();
  // U+0085 is whitespace to OpenAI's Python and to PCRE2, not to JavaScript (which gives
  // 64, 1587, 227, 0): the ids are Python's.
  CHECK(tok.encode("a \u0085!") == ids_of({64, 220, 126, 227, 0}));
  // U+180E is whitespace to PCRE2 only; Python and JavaScript give 64, 28053, 254, 236, 0.
  CHECK(tok.encode("a \u180e!") == ids_of({64, 220, 157, 254, 236, 0}));
}

TEST_CASE("decode(encode(s)) == s for any bytes: random, broken UTF-8, long runs" * kNeedsGpt2) {
  const Gpt2Tokenizer& tok = gpt2();
  for (const std::string& text : random_texts(20240519, 300, 400)) check_round_trip(tok, text);
  for (const char* text : {"\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\xe4\xb8",
                           "\xf0\x9f\x98", " \xff ", "\x80\x80\x80 word", "\xef\xbb\xbf BOM"})
    check_round_trip(tok, text);
  check_round_trip(tok, std::string("nul\0inside", 10));
  // One word of 200 KB: the merge loop is O(n log n), where the reference's is quadratic.
  for (const char c : {'a', ' ', '7', '!', '\n', '\xff'})
    check_round_trip(tok, std::string(200000, c));
  CHECK(tok.encode(std::string(200000, 'a')).size() < 200000 / 2);
}

TEST_CASE("decode takes any range of ids and checks each one" * kNeedsGpt2) {
  const Gpt2Tokenizer& tok = gpt2();
  IdMatrix ids(2, 2);
  ids << 15496, 995, 40, 1101;
  CHECK(tok.decode(ids.row(0)) == "Hello world");
  CHECK(tok.decode(std::vector<int>{40, 1101}) == "I'm");
  CHECK(tok.decode(std::vector<Index>{}).empty());
  check_throws_with([&] { tok.decode({15496, 50257}); },
                    {"eigenformer::Gpt2Tokenizer::decode: argument 'ids' has id 50257 at position "
                     "1, expected 0 <= id < 50257 (the vocabulary size)"});
  check_throws_with([&] { tok.decode(std::vector<int>{-1}); },
                    {"Gpt2Tokenizer::decode", "'ids'", "id -1 at position 0", "50257"});
  check_throws_with([&] { tok.token_of(50257); }, {"Gpt2Tokenizer::token_of", "'id'", "50257"});
  check_throws_with([&] { tok.bytes_of(-3); }, {"Gpt2Tokenizer::bytes_of", "'id'", "-3"});
  check_throws_with([&] { tok.id_of(" world"); },
                    {"Gpt2Tokenizer::id_of", "'token'", "' world' is not in the vocabulary"});
}

TEST_CASE("several threads encode with one tokenizer" * kNeedsGpt2) {
  const Gpt2Tokenizer& tok = gpt2();
  const std::vector<std::string> texts = random_texts(7, 40, 2000);
  std::vector<std::vector<Index>> expected;
  for (const std::string& text : texts) expected.push_back(tok.encode(text));
  const Gpt2Tokenizer copy = tok;  // shares the cache, which has words of the texts now
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      const Gpt2Tokenizer& user = t % 2 ? copy : tok;
      for (std::size_t i = 0; i < texts.size(); ++i)
        wrong[t] += user.encode(texts[(i + t * 7) % texts.size()]) !=
                    expected[(i + t * 7) % texts.size()];
    });
  for (std::thread& thread : threads) thread.join();
  CHECK(wrong == std::vector<int>(4, 0));
}

TEST_CASE("BPE merges the lowest rank first, and each occurrence of it in one pass") {
  const Gpt2Tokenizer by_rank = tiny({{"b", "c"}, {"a", "b"}});
  CHECK(pieces(by_rank, "abc") == std::vector<std::string>{"a", "bc"});
  CHECK(pieces(tiny({{"a", "b"}, {"b", "c"}}), "abc") == std::vector<std::string>{"ab", "c"});

  const Gpt2Tokenizer pairs = tiny({{"a", "a"}});
  CHECK(pieces(pairs, "aaa") == std::vector<std::string>{"aa", "a"});
  CHECK(pieces(pairs, "aaaaa") == std::vector<std::string>{"aa", "aa", "a"});
  // Ranks out of learning order: "aa a" outranks "a a", which makes it. GPT-2 merges every
  // "a a" before it looks again, so "aaaa" is "aa aa"; merging one pair at a time would give
  // "aaa a".
  CHECK(pieces(tiny({{"aa", "a"}, {"a", "a"}}), "aaaa") == std::vector<std::string>{"aa", "aa"});
  // Words: " a" and " aa" are words of their own.
  CHECK(pieces(tiny({{" ", "a"}, {"a", "a"}}), "aa aaa") ==
        std::vector<std::string>{"aa", " a", "aa"});
  for (const std::string& text : random_texts(3, 50, 200)) check_round_trip(by_rank, text);
}

TEST_CASE("a malformed encoder.json or vocab.bpe is an IoError that says what is wrong") {
  // Not a structured binding: the lambdas below capture them (C++17 forbids that; clang says so).
  const auto files = tiny_files({{"a", "b"}});
  const std::string& encoder = files.first;
  const std::string& bpe = files.second;
  const auto bad_encoder = [&](const std::string& text, const std::string& what) {
    check_throws_with<IoError>([&] { Gpt2Tokenizer::from_strings(text, bpe); },
                               {"eigenformer::Gpt2Tokenizer::from_strings: argument "
                                "'encoder_json' " + what});
  };
  bad_encoder("", "is not valid JSON");
  bad_encoder(R"({"a": 0)", "is not valid JSON");
  bad_encoder("[1, 2]", "must be a JSON object of token -> id, got a JSON array");
  bad_encoder(R"({"a": "0"})", "gives token 'a' the id \"0\", expected an integer");
  bad_encoder(R"({"a": 1.5})", "gives token 'a' the id 1.5, expected an integer");
  bad_encoder(R"({"a": 1})", "gives token 'a' the id 1, expected 0 <= id < 1 (its token count)");
  bad_encoder(R"({"a": 0, "b": 0})", "gives the id 0 to two tokens, 'a' and 'b'");
  bad_encoder(R"({"a b": 0})",
              "has token 'a b', which has a character outside GPT-2's byte alphabet");
  nlohmann::json no_newline = nlohmann::json::parse(encoder);
  no_newline["zz"] = no_newline["Ċ"];  // the spelling of '\n'
  no_newline.erase("Ċ");
  bad_encoder(no_newline.dump(), "has no token for the byte 10, so it cannot encode every text");

  const auto bad_merges = [&](const std::string& text, const std::string& what) {
    check_throws_with<IoError>([&] { Gpt2Tokenizer::from_strings(encoder, text); },
                               {"eigenformer::Gpt2Tokenizer::from_strings: argument 'vocab_bpe' " +
                                what});
  };
  bad_merges("#version: 0.2\na\n", "line 2 'a': expected two tokens separated by one space");
  bad_merges("#version: 0.2\na  b\n", "line 2 'a  b': expected two tokens separated by one");
  bad_merges("a b c\n", "line 1 'a b c': expected two tokens separated by one space");
  bad_merges("#version: 0.2\na zz\n", "line 2 'a zz': token 'zz' is not in the vocabulary");
  bad_merges("#version: 0.2\nb c\n",
             "line 2 'b c': their concatenation 'bc' is not in the vocabulary");
  bad_merges("#version: 0.2\na b\na b\n",
             "line 3 'a b': the same merge appears on an earlier line");
  // Accepted: no version line, CRLF line ends, blank lines, no merges at all.
  for (const char* merges : {"a b", "#version: 0.2\r\na b\r\n\r\n", "\n\na b\n\n"})
    CHECK(pieces(Gpt2Tokenizer::from_strings(encoder, merges), "abc") ==
          std::vector<std::string>{"ab", "c"});
  CHECK(pieces(Gpt2Tokenizer::from_strings(encoder, ""), "ab") ==
        std::vector<std::string>{"a", "b"});
}

TEST_CASE("from_files reads the files and names one it cannot read or parse") {
  const fs::path dir =
      fs::temp_directory_path() / ("eigenformer-gpt2-" + std::to_string(std::random_device()()));
  fs::create_directories(dir);
  const std::string encoder = (dir / "encoder.json").string();
  const std::string merges = (dir / "vocab.bpe").string();
  const std::string bad = (dir / "bad.bpe").string();
  const std::string missing = (dir / "missing.json").string();
  const auto [encoder_text, merges_text] = tiny_files({{"a", "b"}});
  std::ofstream(encoder, std::ios::binary) << encoder_text;
  std::ofstream(merges, std::ios::binary) << merges_text;
  std::ofstream(bad, std::ios::binary) << merges_text << "a\n";

  CHECK(pieces(Gpt2Tokenizer::from_files(encoder, merges), "abc") ==
        std::vector<std::string>{"ab", "c"});
  check_throws_with<IoError>([&] { Gpt2Tokenizer::from_files(missing, merges); },
                             {"eigenformer::Gpt2Tokenizer::from_files: file '" + missing +
                              "' cannot be opened: No such file or directory"});
  check_throws_with<IoError>([&] { Gpt2Tokenizer::from_files(encoder, bad); },
                             {"eigenformer::Gpt2Tokenizer::from_files: file '" + bad +
                              "' line 3 'a': expected two tokens"});
  check_throws_with<IoError>([&] { Gpt2Tokenizer::from_files(merges, merges); },
                             {"file '" + merges + "' is not valid JSON"});
  fs::remove_all(dir);
}
