// char_lm: a character-level (byte-level) GPT-style language model trained on the Debian
// `fortunes` corpus, compared against a count-based bigram model on held-out fortunes.
//
//   char_lm train  --out FILE [--corpus PATH]... [--steps N] [--seed S] [--context T] ...
//   char_lm sample --model FILE [--prompt TEXT] [--length N] [--temperature T] [--seed S]
//
// Threads: the matrix products use OpenMP through Eigen; set OMP_NUM_THREADS to choose how many.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <eigenformer/eigenformer.hpp>
#include <exception>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "../common/cli.hpp"
#include "../common/parallel.hpp"
#include "../common/training.hpp"
#include "../common/curves.hpp"
#include "corpus.hpp"
#include "model.hpp"

namespace char_lm {

namespace ef = eigenformer;
using Scalar = float;
using Model = ef::DecoderOnlyLM<Scalar>;

constexpr const char* kUsage =
    "usage:\n"
    "  char_lm train --out FILE [options]\n"
    "      --corpus PATH     strfile text file or directory; repeatable\n"
    "                        (default /usr/share/games/fortunes, from the Debian package\n"
    "                        'fortunes': sudo apt-get install fortunes)\n"
    "      --steps N         optimizer steps (default 2000)\n"
    "      --seed S          seed for initialisation and batches (default 1)\n"
    "      --context T       characters of context (default 64)\n"
    "      --batch B         sequences per step (default 16)\n"
    "      --layers L        decoder layers (default 3)\n"
    "      --d-model D       model width, d_ff = 4 D (default 96)\n"
    "      --heads H         attention heads, must divide D (default 4)\n"
    "      --lr LR           peak learning rate, warm-up then cosine decay (default 4e-3)\n"
    "      --log-every N     progress line every N steps when stderr is not a terminal\n"
    "                        (default 100)\n"
    "      --save-every K    keep the latest training checkpoint at FILE.state, written every\n"
    "                        K steps and at the end (default 0: none)\n"
    "      --resume STATE    continue the run that wrote STATE (give the same options): it ends\n"
    "                        with the weights it would have had uninterrupted (same threads)\n"
    "      --plot PNG        also evaluate on held-out text at 20 points of training and\n"
    "                        write the training and validation loss curves to PNG\n"
    "  char_lm sample --model FILE [options]\n"
    "      --prompt TEXT     text to continue (default: the start of a new fortune)\n"
    "      --length N        characters to generate (default 400)\n"
    "      --temperature T   softmax temperature, 0 = greedy (default 0.8)\n"
    "      --seed S          sampling seed (default 1)\n"
    "  char_lm --help\n"
    "Threads: set OMP_NUM_THREADS (e.g. OMP_NUM_THREADS=1).\n"
    "Exit status: 0 ok, 1 error, 2 bad command line, 3 trained but did not beat the bigram.\n";

// ---------------------------------------------------------------------------------------------
// Small helpers

constexpr double kLn2 = 0.69314718055994530942;

/// Throws IoError now, rather than after training, if `path` cannot be created.
void check_writable(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw ef::IoError("output directory '" + dir.string() + "' does not exist (for --out '" +
                      path + "')");
  if (::access(dir.c_str(), W_OK) != 0)
    throw ef::IoError("output directory '" + dir.string() + "' is not writable");
  if (fs::is_directory(path, ec)) throw ef::IoError("--out '" + path + "' is a directory");
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: eigenformer::save_model / load_model keep the model kind and config in the
// safetensors metadata; char_lm adds its vocabulary and training record under "char_lm.*".

/// The model and vocabulary of a checkpoint written by `char_lm train`; IoError if it is not one.
Model load_checkpoint(const std::string& path, ByteVocab& vocab) {
  std::map<std::string, std::string> meta;
  Model model = ef::load_model<Model>(path, &meta);
  const auto it = meta.find("char_lm.vocab");
  if (it == meta.end())
    throw ef::IoError("checkpoint '" + path +
                      "' has no metadata 'char_lm.vocab' (not written by char_lm train?)");
  try {
    vocab = ByteVocab::from_hex(it->second);
  } catch (const std::invalid_argument& e) {
    throw ef::IoError("checkpoint '" + path + "': bad metadata 'char_lm.vocab': " + e.what());
  }
  if (vocab.size() != model.config().vocab)
    throw ef::IoError("checkpoint '" + path + "': the vocabulary has " +
                      std::to_string(vocab.size()) + " ids but the model " +
                      std::to_string(model.config().vocab));
  return model;
}

// ---------------------------------------------------------------------------------------------
// Evaluation and sampling

/// Mean bits per character of the model on ids[1..n): every position predicted once, from
/// consecutive windows of `context` characters (the last one moved back to end at the text's end;
/// it scores only what the others did not), as nanoGPT evaluates. A prediction sees 0 to
/// context - 1 earlier characters, context/2 on average.
double model_bits_per_char(Model& model, const std::vector<Index>& ids, Index context,
                           Index batch) {
  const Index n = static_cast<Index>(ids.size());
  const Index L = std::min(context, n - 1);
  if (L < 1) return 0.0;
  struct Window {
    Index start, first;  // inputs ids[start, start+L); score targets j >= first
  };
  std::vector<Window> windows;
  Index next = 1;  // the next target position to score
  for (Index s = 0;;) {
    windows.push_back({s, next - (s + 1)});
    next = s + L + 1;
    if (next > n - 1) break;
    s = std::min(s + L, n - 1 - L);
  }
  model.eval();
  double nats = 0.0;
  Index counted = 0;
  Model::Cache cache;
  ef::CrossEntropyCache<Scalar> ce;
  for (size_t w0 = 0; w0 < windows.size(); w0 += static_cast<size_t>(batch)) {
    const Index B = std::min<Index>(batch, static_cast<Index>(windows.size() - w0));
    ef::IdMatrix x(B, L), y(B, L);
    for (Index b = 0; b < B; ++b) {
      const Window& w = windows[w0 + static_cast<size_t>(b)];
      for (Index j = 0; j < L; ++j) {
        x(b, j) = ids[static_cast<size_t>(w.start + j)];
        y(b, j) = j >= w.first ? ids[static_cast<size_t>(w.start + j + 1)] : -1;
      }
    }
    const ef::Matrix<Scalar> logits = model.forward(x, cache);
    const double loss = ef::cross_entropy_forward(ce, logits, y, {-1, 0.0});
    nats += loss * static_cast<double>(ce.count);
    counted += ce.count;
  }
  if (counted != n - 1)
    throw std::logic_error("model_bits_per_char scored " + std::to_string(counted) + " of " +
                           std::to_string(n - 1) + " positions");
  return nats / static_cast<double>(counted) / kLn2;
}

/// Appends `length` sampled characters to `context_ids`, writing each one to `out` as it comes.
void generate(Model& model, const ByteVocab& vocab, std::vector<Index> context_ids, Index length,
              double temperature, ef::Rng& rng, std::ostream& out) {
  model.eval();
  const Index T = model.config().max_len;
  const Index V = vocab.size();
  Model::Cache cache;
  std::vector<double> p(static_cast<size_t>(V));
  for (Index step = 0; step < length; ++step) {
    const Index len = std::min<Index>(T, static_cast<Index>(context_ids.size()));
    ef::IdMatrix x(1, len);
    for (Index j = 0; j < len; ++j)
      x(0, j) = context_ids[context_ids.size() - static_cast<size_t>(len - j)];
    const ef::Matrix<Scalar> logits = model.forward(x, cache);
    Index next = 0;
    if (temperature == 0.0) {
      double best = -std::numeric_limits<double>::infinity();
      for (Index v = 0; v < V; ++v)
        if (v != vocab.unk() && logits(len - 1, v) > best) {
          best = logits(len - 1, v);
          next = v;
        }
    } else {
      double max = -std::numeric_limits<double>::infinity();
      for (Index v = 0; v < V; ++v) max = std::max(max, double(logits(len - 1, v)));
      double sum = 0.0;
      for (Index v = 0; v < V; ++v) {
        // unk stands for no particular byte: never sample it.
        const double e =
            v == vocab.unk() ? 0.0 : std::exp((double(logits(len - 1, v)) - max) / temperature);
        p[static_cast<size_t>(v)] = e;
        sum += e;
      }
      double u = rng.uniform() * sum;
      next = V - 2;  // the last known byte, should rounding leave u > 0 at the end
      for (Index v = 0; v < V; ++v) {
        u -= p[static_cast<size_t>(v)];
        if (u < 0.0 && p[static_cast<size_t>(v)] > 0.0) {
          next = v;
          break;
        }
      }
    }
    context_ids.push_back(next);
    out << vocab.byte(next);
    if (vocab.byte(next) == '\n') out.flush();
  }
  out.flush();
}

/// --plot: at about 20 points of training, the mean training loss since the last point and the
/// loss on the first 16,384 held-out characters, in bits per character; drawn as a PNG at the end.
class TrainingCurves {
 public:
  TrainingCurves(long steps, const std::vector<Index>& held_ids, Index context)
      : curves_(steps),
        valid_(held_ids.begin(), held_ids.begin() + std::min<size_t>(held_ids.size(), 16384)),
        context_(context) {}

  /// Takes a step's training loss (nats); at a point, evaluates the model and returns what to add
  /// to the progress line.
  std::string after_step(Model& model, long step, double loss) {
    curves_.add_step_loss(loss);
    if (!curves_.due(step)) return last_;
    curves_.record_train(step, 1.0 / kLn2);
    const double valid = model_bits_per_char(model, valid_, context_, 32);
    model.train();
    curves_.record("validation", step, valid);
    char text[48];
    std::snprintf(text, sizeof text, "  valid %.3f bits/char", valid);
    return last_ = text;
  }

  /// Both losses on one pair of axes, 900 x 500 pixels.
  void write(const std::string& path) const {
    const std::string valid =
        "validation (first " + std::to_string(valid_.size()) + " held-out characters)";
    plot::write_png(
        path, "char_lm: loss", "step", "bits per character",
        curves_.series({{"training", "training (mean since last point)"}, {"validation", valid}}),
        900, 500);
  }

 private:
  plot::Curves curves_;
  std::vector<Index> valid_;
  Index context_;
  std::string last_;
};

// ---------------------------------------------------------------------------------------------
// Commands

/// One training step on the global batch (x, y) (TrainStep): forward and backward on this
/// process's rows (all of them without MPI), the gradients summed over the processes, checked by
/// guard, clipped at 1, and opt steps. Returns the batch's loss; throws std::runtime_error if the
/// step diverges.
double train_step(cli::TrainStep<Model>& step, Model& model, ef::Optimizer<Scalar>& opt,
                  ef::StepGuard<Scalar>& guard, long step_number, const ef::IdMatrix& x,
                  const ef::IdMatrix& y) {
  return step(opt, guard, step_number, y, {-1, 0.0},
              [&](Index begin, Index count, Model::Cache& cache) -> const ef::Matrix<Scalar>& {
                return model.forward(x.middleRows(begin, count), cache);
              });
}

int cmd_train(const cli::Flags& f, const cli::Processes& procs) {
  const std::string out_path = f.required("out");
  const std::vector<std::string> corpus_paths = f.all("corpus", {default_corpus_dir()});
  const long steps = f.integer("steps", 2000, 1, 10000000);
  const std::uint64_t seed = f.unsigned_integer("seed", 1);
  const Index context = f.integer("context", 64, 2, 4096);
  const Index batch = f.integer("batch", 16, 1, 4096);
  const Index layers = f.integer("layers", 3, 1, 64);
  const Index d_model = f.integer("d-model", 96, 8, 4096);
  const Index heads = f.integer("heads", 4, 1, 256);
  const long log_every = f.integer("log-every", 100, 1, 10000000);
  const double peak_lr = f.number("lr", 4e-3, 1e-6, 1.0);
  if (d_model % heads != 0)
    throw cli::UsageError("--heads " + std::to_string(heads) + " must divide --d-model " +
                     std::to_string(d_model));
  check_writable(out_path);
  const cli::StateFlags state_flags = cli::state_flags(f, out_path);
  if (f.has("plot")) plot::check_ready(f.text("plot"));

  // Data.
  const std::vector<std::string> files = corpus_files(corpus_paths);
  std::vector<std::string> entries;
  for (const std::string& f : files)
    for (std::string& e : split_strfile(read_file(f))) entries.push_back(std::move(e));
  const Split split = split_entries(entries, 10);
  if (split.held_out_entries == 0)
    throw CorpusError("the corpus has " + std::to_string(entries.size()) +
                      " entries; at least 10 are needed for a held-out split (every 10th entry)");
  const ByteVocab vocab = ByteVocab::from_text(split.train);
  const std::vector<Index> train_ids = vocab.encode(split.train);
  const std::vector<Index> held_ids = vocab.encode(split.held_out);
  if (static_cast<Index>(train_ids.size()) < context + 2)
    throw CorpusError("the training text has " + std::to_string(train_ids.size()) +
                      " characters, fewer than --context + 2 = " + std::to_string(context + 2));
  std::printf("corpus: %zu files, %zu entries; train %ld entries (%zu chars), held-out every "
              "10th: %ld entries (%zu chars)\n",
              files.size(), entries.size(), static_cast<long>(split.train_entries),
              train_ids.size(), static_cast<long>(split.held_out_entries), held_ids.size());

  // Model.
  const ef::TransformerConfig c = model_config(vocab.size(), d_model, heads, layers, context);
  Model model = make_model(c, seed);
  const ef::ParamList<Scalar> params = model.parameters();
  std::printf("vocabulary: %ld distinct bytes + unknown; model: %ld layers, d_model %ld, %ld "
              "heads, d_ff %ld, context %ld: %ld parameters\n",
              static_cast<long>(vocab.size() - 1), static_cast<long>(layers),
              static_cast<long>(d_model), static_cast<long>(heads), static_cast<long>(c.d_ff),
              static_cast<long>(context), static_cast<long>(ef::count_params(params)));
  std::printf("training: %ld steps x %ld sequences x %ld chars, AdamW, peak lr %g, threads %d\n",
              steps, static_cast<long>(batch), static_cast<long>(context), peak_lr,
              ef::max_threads());
  std::fflush(stdout);

  // Training.
  std::optional<TrainingCurves> curves;
  if (f.has("plot")) curves.emplace(steps, held_ids, context);
  ef::AdamW<Scalar> opt(params, Scalar(peak_lr), Scalar(0.9), Scalar(0.95), Scalar(1e-8),
                        Scalar(0.01));
  const long warmup = std::min<long>(100, std::max<long>(1, steps / 10));
  const ef::CosineSchedule<Scalar> schedule(Scalar(peak_lr), warmup, steps,
                                            Scalar(peak_lr / 10));
  ef::TrainingProgress start;
  start.rng = ef::Rng(seed ^ 0x9e3779b97f4a7c15ULL);  // the batches' start positions
  cli::RunSettings settings = cli::config_settings(ef::config_to_metadata(c));
  settings["steps"] = std::to_string(steps);
  settings["seed"] = std::to_string(seed);
  settings["batch"] = std::to_string(batch);
  settings["lr"] = cli::number_text(peak_lr);
  settings["vocab"] = vocab.to_hex();
  settings["train_chars"] = std::to_string(train_ids.size());
  model.train();
  cli::TrainStep<Model> step_on_all(procs, model);  // rank 0's weights on every process
  ef::TrainingProgress state = cli::start_or_resume(state_flags, model, opt, start, settings);
  ef::Rng& data_rng = state.rng;
  const long first_step = state.step + 1;  // > 1 when resumed: speeds count this process's steps
  cli::Progress progress(steps, log_every);
  progress.resumed_after(state.step);
  ef::StepGuard<Scalar> guard;
  ef::IdMatrix x(batch, context), y(batch, context);
  const Index n_starts = static_cast<Index>(train_ids.size()) - context;  // starts 0..n-T-1
  const auto saved_ema = state.extra.find("char_lm.loss_ema");  // the progress line's average
  double ema =
      saved_ema == state.extra.end() ? 0.0 : std::strtod(saved_ema->second.c_str(), nullptr);
  for (long step = first_step; step <= steps; ++step) {
    for (Index b = 0; b < batch; ++b) {
      const Index s = data_rng.index(n_starts);
      for (Index j = 0; j < context; ++j) {
        x(b, j) = train_ids[static_cast<size_t>(s + j)];
        y(b, j) = train_ids[static_cast<size_t>(s + j + 1)];
      }
    }
    const Scalar lr = ef::apply_schedule(opt, schedule);
    const double loss = train_step(step_on_all, model, opt, guard, step, x, y);
    ema = step == 1 ? loss : 0.98 * ema + 0.02 * loss;
    state.step = step;
    state.extra["char_lm.loss_ema"] = cli::number_text(ema);
    cli::save_state_if_due(procs, state_flags, step, steps, model, opt, state);
    char detail[64];
    std::snprintf(detail, sizeof detail, "loss %.3f (%.2f bits/char)  lr %.2e", ema, ema / kLn2,
                  double(lr));
    if (procs.is_root())
      progress.update(step, static_cast<double>((step - first_step + 1) * batch * context),
                      detail + (curves ? curves->after_step(model, step, loss) : ""));
  }
  if (!procs.is_root()) {  // rank 0 evaluates, writes and samples; the others wait for it
    procs.barrier();
    return 0;
  }
  const double train_seconds = progress.seconds();
  const long steps_run = steps - first_step + 1;
  const double tokens_per_s = static_cast<double>(steps_run * batch * context) / train_seconds;
  std::printf("trained %ld steps in %s (%.1f s, %.0f tokens/s)\n", steps_run,
              cli::format_seconds(train_seconds).c_str(), train_seconds, tokens_per_s);

  // Held-out comparison.
  Bigram bigram(vocab.size(), 1.0);
  bigram.fit(train_ids);
  const double bigram_bpc = bigram.bits_per_char(held_ids);
  const cli::Stopwatch eval_clock;
  const double model_bpc = model_bits_per_char(model, held_ids, context, 32);
  std::printf("held-out: %ld fortunes, %zu characters (evaluated in %.1f s)\n",
              static_cast<long>(split.held_out_entries), held_ids.size(), eval_clock.seconds());
  std::printf("  bigram (add-one, counted on train)  %.3f bits/char\n", bigram_bpc);
  std::printf("  transformer                         %.3f bits/char\n", model_bpc);
  const bool wins = model_bpc < bigram_bpc;
  if (wins)
    std::printf("verdict: the transformer beats the bigram by %.3f bits/char (%.0f%% fewer bits)\n",
                bigram_bpc - model_bpc, 100.0 * (bigram_bpc - model_bpc) / bigram_bpc);
  else
    std::printf("verdict: FAIL, the transformer does not beat the bigram (train longer: --steps)\n");

  if (curves) {
    curves->write(f.text("plot"));
    std::printf("plotted the training curves to %s\n", f.text("plot").c_str());
  }
  std::map<std::string, std::string> meta;
  meta["char_lm.vocab"] = vocab.to_hex();
  meta["char_lm.steps"] = std::to_string(steps);
  meta["char_lm.seed"] = std::to_string(seed);
  meta["char_lm.heldout_bits_per_char"] = std::to_string(model_bpc);
  meta["char_lm.bigram_bits_per_char"] = std::to_string(bigram_bpc);
  ef::save_model(out_path, model, meta);
  std::printf("saved %s\n", out_path.c_str());

  std::printf("sample (temperature 0.8):\n");
  std::fflush(stdout);
  ef::Rng sample_rng(seed);
  generate(model, vocab, vocab.encode("%\n"), 240, 0.8, sample_rng, std::cout);
  std::cout << '\n';
  procs.barrier();  // the other processes wait here under MPI
  return wins ? 0 : 3;
}

int cmd_sample(const cli::Flags& f) {
  const std::string path = f.required("model");
  const std::string prompt = f.text("prompt");
  const Index length = f.integer("length", 400, 0, 1000000);
  const double temperature = f.number("temperature", 0.8, 0.0, 100.0);
  const std::uint64_t seed = f.unsigned_integer("seed", 1);

  ByteVocab vocab;
  Model model = load_checkpoint(path, vocab);

  for (unsigned char ch : prompt)
    if (!vocab.known(ch))
      std::fprintf(stderr, "char_lm: warning: the prompt byte 0x%02x never occurs in the training "
                           "text\n", ch);
  // The context starts like a fortune file, at the separator before a new entry.
  std::vector<Index> ids = vocab.encode("%\n" + prompt);
  std::cout << prompt;
  ef::Rng rng(seed);
  generate(model, vocab, ids, length, temperature, rng, std::cout);
  std::cout << '\n';
  return 0;
}

int run(int argc, char** argv, const cli::Processes& procs) {
  if (argc < 2) throw cli::UsageError("missing command: train or sample");
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  if (cmd != "train" && cmd != "sample")
    throw cli::UsageError("unknown command '" + cmd + "' (expected train or sample)");
  const std::vector<std::string> args(argv + 2, argv + argc);
  const cli::Flags flags =
      cmd == "train" ? cli::Flags(args,
                                  {"out", "steps", "seed", "context", "batch", "layers", "d-model",
                                   "heads", "lr", "log-every", "save-every", "resume",
                                   "plot"},
                                  {}, {"corpus"})
                     : cli::Flags(args, {"model", "prompt", "length", "temperature", "seed"});
  if (flags.help()) {
    std::cout << kUsage;
    return 0;
  }
  return cmd == "train" ? cmd_train(flags, procs) : cmd_sample(flags);
}

}  // namespace char_lm

int main(int argc, char** argv) {
  const cli::Processes procs(argc, argv);  // MPI, under mpirun, when built with it
  try {
    return char_lm::run(argc, argv, procs);
  } catch (const cli::UsageError& e) {
    procs.end_all_on_error(std::string("char_lm: ") + e.what());
    std::cerr << "char_lm: " << e.what() << "\n" << char_lm::kUsage;
    return 2;
  } catch (const std::exception& e) {  // eigenformer::ArgumentError / IoError, CorpusError, ...
    procs.end_all_on_error(std::string("char_lm: ") + e.what());
    std::cerr << "char_lm: " << e.what() << "\n";
    return 1;
  } catch (...) {
    procs.end_all_on_error("char_lm: unknown error");
    std::cerr << "char_lm: unknown error\n";
    return 1;
  }
}
