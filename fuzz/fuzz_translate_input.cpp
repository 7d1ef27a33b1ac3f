// libFuzzer target: the translate example's parser of typed input, translate::encode_source, on
// arbitrary bytes.
//
// It must return either ids, all in the source vocabulary, with the error cleared, or no ids and
// an error message. Writing the ids' tokens back out, separated by spaces, must encode to the same
// ids. No crash, leak, sanitizer report or exception.
//
// Build and run: tools/fuzz.sh (see fuzz/README.md).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "translate/numbers.hpp"

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& input) {
  std::fprintf(stderr, "fuzz_translate_input: %s (input of %zu bytes)\n", what.c_str(),
               input.size());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string phrase(reinterpret_cast<const char*>(data), size);
  const translate::Vocab& vocab = translate::source_vocab();
  std::string error = "not cleared";
  const std::vector<long> ids = translate::encode_source(phrase, &error);
  if (ids.empty()) {
    if (error.empty() || error == "not cleared") fail("no ids and no error message", phrase);
    // Without an error pointer it must still not crash.
    if (!translate::encode_source(phrase, nullptr).empty()) fail("ids differ without error", phrase);
    return 0;
  }
  if (!error.empty()) fail("ids and an error message '" + error + "'", phrase);
  std::string again;
  for (long id : ids) {
    if (id < 0 || id >= vocab.size()) fail("id " + std::to_string(id) + " outside the vocabulary", phrase);
    if (translate::Vocab::is_special(id)) fail("special token " + std::to_string(id) + " accepted", phrase);
    again += (again.empty() ? "" : " ") + vocab.token(id);
  }
  if (translate::encode_source(again, &error) != ids || !error.empty())
    fail("re-encoding the tokens '" + again + "' gives other ids", phrase);
  return 0;
}
