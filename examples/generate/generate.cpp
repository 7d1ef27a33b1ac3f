// generate: continues a prompt with a GPT-2-layout checkpoint (Hugging Face's model.safetensors
// and config.json), printing each token as it is chosen.
//
//   generate --model DIR_OR_FILE --prompt TEXT [--max-new N] [--temperature T] [--top-k K]
//            [--top-p P] [--repetition-penalty R] [--greedy] [--seed S]
//            [--encoder encoder.json --vocab vocab.bpe]
//
// The tokenizer files sit next to the model unless given (see ../common/gpt2_files.hpp).
// Sampling stops at <|endoftext|> or after N tokens.
#include <cstdint>
#include <eigenformer/eigenformer.hpp>
#include <eigenformer/io/huggingface.hpp>
#include <eigenformer/text/gpt2_tokenizer.hpp>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "../common/cli.hpp"
#include "../common/gpt2_files.hpp"

namespace {

namespace ef = eigenformer;

const char* const kUsage =
    "usage: generate --model DIR_OR_FILE --prompt TEXT [--max-new N] [--temperature T]\n"
    "                [--top-k K] [--top-p P] [--repetition-penalty R] [--greedy] [--seed S]\n"
    "                [--encoder encoder.json --vocab vocab.bpe]\n"
    "  --model    a directory with model.safetensors and config.json (Hugging Face's GPT-2\n"
    "             layout), or the .safetensors file with config.json beside it\n"
    "  --max-new  most tokens to generate (default 50); sampling also stops at <|endoftext|>\n"
    "  --temperature 1, --top-k 0 (all), --top-p 1 (all), --repetition-penalty 1 (none):\n"
    "             the defaults; --greedy takes the most likely token instead of sampling\n"
    "  --seed     the sampling seed (default 0): the same seed gives the same text\n"
    "  --encoder, --vocab   the tokenizer files (default: encoder.json and vocab.bpe, or\n"
    "             vocab.json and merges.txt, next to the model)\n";

int run(int argc, char** argv) {
  const cli::Flags flags(std::vector<std::string>(argv + 1, argv + argc),
                         {"model", "prompt", "max-new", "temperature", "top-k", "top-p",
                          "repetition-penalty", "seed", "encoder", "vocab"},
                         {"greedy"}, {});
  if (flags.help()) {
    std::cout << kUsage;
    return 0;
  }
  const std::string model_path = flags.required("model");
  const std::string prompt = flags.required("prompt");
  ef::GenerateOptions opt;
  opt.max_new_tokens = flags.integer("max-new", 50, 1, 1 << 20);
  opt.sample = !flags.has("greedy");
  opt.temperature = flags.number("temperature", 1.0, 1e-6, 1e6);
  opt.top_k = flags.integer("top-k", 0, 0, 1 << 30);
  opt.top_p = flags.number("top-p", 1.0, 1e-9, 1.0);
  opt.repetition_penalty = flags.number("repetition-penalty", 1.0, 1e-6, 1e6);
  const std::uint64_t seed = flags.unsigned_integer("seed", 0);

  const ef::Gpt2Tokenizer tokenizer = cli::load_gpt2_tokenizer(flags, model_path);
  ef::DecoderOnlyLM<float> model = ef::load_gpt2(model_path);
  if (model.vocab_size() < tokenizer.vocab_size())
    throw cli::UsageError("the model has " + std::to_string(model.vocab_size()) +
                          " tokens, the tokenizer " + std::to_string(tokenizer.vocab_size()) +
                          ": they do not belong together");
  const std::vector<ef::Index> ids = tokenizer.encode(prompt);
  if (ids.empty()) throw cli::UsageError("--prompt is empty");
  const ef::Index room = model.config().max_len - static_cast<ef::Index>(ids.size());
  if (room < 1)
    throw cli::UsageError("the prompt has " + std::to_string(ids.size()) +
                          " tokens, the model holds " + std::to_string(model.config().max_len));
  if (opt.max_new_tokens > room) {
    std::cerr << "generate: --max-new " << opt.max_new_tokens << " lowered to " << room
              << " (the model's " << model.config().max_len << " positions)\n";
    opt.max_new_tokens = room;
  }
  try {
    opt.stop_tokens = {tokenizer.id_of("<|endoftext|>")};
  } catch (const ef::ArgumentError&) {
    // a vocabulary without GPT-2's end-of-text token: stop on the budget alone
  }

  std::cout << prompt << std::flush;
  ef::Rng rng(seed);
  ef::generate(model, {ids}, opt, rng, [&](const ef::TokenEvent& e) {
    if (opt.stop_tokens.empty() || e.token != opt.stop_tokens[0])
      std::cout << tokenizer.bytes_of(e.token) << std::flush;
    return true;
  });
  std::cout << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return cli::main_of("generate", kUsage, run, argc, argv); }
