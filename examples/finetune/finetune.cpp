// finetune: fine-tunes a GPT-2-layout checkpoint (Hugging Face's model.safetensors and
// config.json) on a text file, and saves the result in the same layout.
//
//   finetune --model DIR_OR_FILE --data TEXT_FILE --out DIR [--steps N] [--batch B]
//            [--context T] [--lr LR] [--min-lr LR] [--warmup W] [--clip C] [--weight-decay WD]
//            [--val-fraction F] [--eval-every E] [--seed S] [--encoder FILE --vocab FILE]
//
// The text is tokenised with GPT-2's tokenizer (files next to the model unless given); its last
// --val-fraction is held out. Each step trains on B random windows of T + 1 tokens (next-token
// cross-entropy) with AdamW (weight decay on the weight matrices only), a linear warm-up and a
// cosine decay of the learning rate, and gradient-norm clipping. The validation loss and
// perplexity are printed before training, every E steps and at the end. DIR receives the model
// and copies of the tokenizer files, so that `generate --model DIR` runs on it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <eigenformer/eigenformer.hpp>
#include <eigenformer/io/huggingface.hpp>
#include <eigenformer/text/gpt2_tokenizer.hpp>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "../common/cli.hpp"
#include "../common/gpt2_files.hpp"

namespace {

namespace ef = eigenformer;
using Model = ef::DecoderOnlyLM<float>;

const char* const kUsage =
    "usage: finetune --model DIR_OR_FILE --data TEXT_FILE --out DIR [--steps N] [--batch B]\n"
    "                [--context T] [--lr LR] [--min-lr LR] [--warmup W] [--clip C]\n"
    "                [--weight-decay WD] [--val-fraction F] [--eval-every E] [--seed S]\n"
    "                [--encoder encoder.json --vocab vocab.bpe]\n"
    "  --model   a GPT-2-layout checkpoint: a directory with model.safetensors and config.json\n"
    "  --data    the text to fine-tune on; its last --val-fraction (default 0.1) is held out\n"
    "  --out     where the fine-tuned model goes (model.safetensors, config.json, tokenizer)\n"
    "  --steps 200 --batch 8 --context 64 (at most the model's positions): the defaults\n"
    "  --lr 3e-4 peak, after --warmup 20 steps, cosine down to --min-lr (default lr / 10)\n"
    "  --clip 1 (gradient norm), --weight-decay 0.1 (AdamW, weight matrices only)\n"
    "  --eval-every 50: validation loss and perplexity every so many steps\n";

struct Settings {
  long steps, batch, context, warmup, eval_every;
  double lr, min_lr, clip, weight_decay, val_fraction;
  std::uint64_t seed;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw cli::UsageError("cannot read --data '" + path + "'");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// B windows of T + 1 tokens from tokens, at random starts: inputs (B, T) and targets (B, T).
void random_batch(const std::vector<ef::Index>& tokens, ef::Index B, ef::Index T, ef::Rng& rng,
                  ef::IdMatrix& inputs, ef::IdMatrix& targets) {
  inputs.resize(B, T);
  targets.resize(B, T);
  const ef::Index starts = static_cast<ef::Index>(tokens.size()) - T;  // >= 1, checked by run
  for (ef::Index b = 0; b < B; ++b) {
    const ef::Index s = rng.index(starts);
    for (ef::Index t = 0; t < T; ++t) {
      inputs(b, t) = tokens[size_t(s + t)];
      targets(b, t) = tokens[size_t(s + t + 1)];
    }
  }
}

/// Mean next-token loss over consecutive windows of T + 1 tokens of tokens (up to 64 windows),
/// without dropout.
double validation_loss(Model& model, const std::vector<ef::Index>& tokens, ef::Index T) {
  ef::ScopedEval eval(model);
  double sum = 0.0;
  long count = 0;
  for (size_t s = 0; s + size_t(T) < tokens.size() && count < 64 * T; s += size_t(T)) {
    ef::IdMatrix in(1, T), target(1, T);
    for (ef::Index t = 0; t < T; ++t) {
      in(0, t) = tokens[s + size_t(t)];
      target(0, t) = tokens[s + size_t(t) + 1];
    }
    Model::Cache cache;
    const ef::Matrix<float> logits = model.forward(in, cache);
    ef::CrossEntropyCache<float> ce;
    sum += ef::cross_entropy_forward<float>(ce, logits, target) * T;
    count += T;
  }
  return sum / double(count);
}

void report(const char* when, double loss) {
  std::cout << when << ": validation loss " << std::fixed << std::setprecision(4) << loss
            << ", perplexity " << std::setprecision(2) << std::exp(loss) << std::endl;
}

int run(int argc, char** argv) {
  const cli::Flags flags(
      std::vector<std::string>(argv + 1, argv + argc),
      {"model", "data", "out", "steps", "batch", "context", "lr", "min-lr", "warmup", "clip",
       "weight-decay", "val-fraction", "eval-every", "seed", "encoder", "vocab"},
      {}, {});
  if (flags.help()) {
    std::cout << kUsage;
    return 0;
  }
  const std::string model_path = flags.required("model");
  const std::string data_path = flags.required("data");
  const std::string out = flags.required("out");
  Settings s;
  s.steps = flags.integer("steps", 200, 1, 100000000);
  s.batch = flags.integer("batch", 8, 1, 1 << 16);
  s.context = flags.integer("context", 64, 1, 1 << 20);
  s.lr = flags.number("lr", 3e-4, 0.0, 10.0);
  s.min_lr = flags.number("min-lr", s.lr / 10, 0.0, s.lr);
  s.warmup = flags.integer("warmup", std::min(20L, s.steps), 0, s.steps);
  s.clip = flags.number("clip", 1.0, 1e-9, 1e9);
  s.weight_decay = flags.number("weight-decay", 0.1, 0.0, 10.0);
  s.val_fraction = flags.number("val-fraction", 0.1, 0.01, 0.9);
  s.eval_every = flags.integer("eval-every", 50, 1, 100000000);
  s.seed = flags.unsigned_integer("seed", 0);

  const ef::Gpt2Tokenizer tokenizer = cli::load_gpt2_tokenizer(flags, model_path);
  Model model = ef::load_gpt2(model_path);
  if (model.vocab_size() < tokenizer.vocab_size())
    throw cli::UsageError("the model has " + std::to_string(model.vocab_size()) +
                          " tokens, the tokenizer " + std::to_string(tokenizer.vocab_size()));
  const ef::Index T = std::min<ef::Index>(s.context, model.config().max_len);
  const std::vector<ef::Index> tokens = tokenizer.encode(read_file(data_path));
  const auto n_val = static_cast<size_t>(double(tokens.size()) * s.val_fraction);
  const std::vector<ef::Index> train(tokens.begin(), tokens.end() - long(n_val));
  const std::vector<ef::Index> val(tokens.end() - long(n_val), tokens.end());
  if (train.size() < size_t(T) + 1 || val.size() < size_t(T) + 1)
    throw cli::UsageError("--data has " + std::to_string(tokens.size()) + " tokens: too few for " +
                          "training and validation windows of " + std::to_string(T + 1) +
                          " (lower --context or give more text)");
  std::cout << "finetune: " << tokens.size() << " tokens (" << train.size() << " training, "
            << val.size() << " validation), context " << T << ", "
            << ef::count_params(model.parameters()) << " parameters" << std::endl;
  report("before", validation_loss(model, val, T));

  model.train();
  const ef::ParamList<float> params = model.parameters();
  ef::AdamW<float> opt(ef::weight_decay_groups(params, s.weight_decay), s.lr);
  const ef::CosineSchedule<float> schedule(float(s.lr), s.warmup, s.steps, float(s.min_lr));
  ef::Rng rng(s.seed);
  ef::IdMatrix inputs, targets;
  double train_sum = 0.0;
  long train_count = 0;
  for (long step = 1; step <= s.steps; ++step) {
    random_batch(train, s.batch, T, rng, inputs, targets);
    opt.zero_grad();
    Model::Cache cache;
    const ef::Matrix<float> logits = model.forward(inputs, cache);
    ef::CrossEntropyCache<float> ce;
    train_sum += ef::cross_entropy_forward<float>(ce, logits, targets);
    ++train_count;
    model.backward(ef::cross_entropy_backward(ce), cache);
    ef::clip_grad_norm(params, float(s.clip));
    std::string bad;
    if (!ef::grads_finite(params, &bad)) {
      std::cerr << "finetune: step " << step << ": non-finite gradient in " << bad
                << ", step skipped\n";
      continue;
    }
    const float lr = ef::apply_schedule(opt, schedule);
    opt.step();
    if (step % s.eval_every == 0 || step == s.steps) {
      std::cout << "step " << step << "  lr " << std::scientific << std::setprecision(2) << lr
                << "  train loss " << std::fixed << std::setprecision(4)
                << train_sum / double(train_count) << std::endl;
      train_sum = 0.0, train_count = 0;
      report(step == s.steps ? "after" : "  now", validation_loss(model, val, T));
    }
  }

  model.eval();
  ef::save_gpt2(out, model);
  namespace fs = std::filesystem;
  const fs::path from = cli::model_dir(model_path);
  for (const char* name : {"encoder.json", "vocab.bpe", "vocab.json", "merges.txt"})
    if (fs::exists(from / name) && !fs::equivalent(from, out))
      fs::copy_file(from / name, fs::path(out) / name, fs::copy_options::overwrite_existing);
  for (const char* flag : {"encoder", "vocab"})
    if (flags.has(flag)) {
      const fs::path file(flags.text(flag));
      const char* name = std::string(flag) == "encoder" ? "encoder.json" : "vocab.bpe";
      fs::copy_file(file, fs::path(out) / name, fs::copy_options::overwrite_existing);
    }
  std::cout << "saved " << out << " (model.safetensors, config.json, tokenizer files)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return cli::main_of("finetune", kUsage, run, argc, argv); }
