// Generation: greedy or sampled continuation of prompts (DecoderOnlyLM) or translation of sources
// (the encoder-decoder Transformer), batched, on the KV cache, with stop tokens, a token budget
// and a callback per token for streaming.
//
//   Rng rng(seed);
//   GenerateOptions opt;
//   opt.sample = true, opt.temperature = 0.8, opt.top_p = 0.95, opt.max_new_tokens = 100;
//   opt.stop_tokens = {eot};
//   generate(lm, {tokenizer.encode("Once upon a time")}, opt, rng, [&](const TokenEvent& e) {
//     std::cout << tokenizer.decode({e.token}) << std::flush;
//     return true;  // false ends the sequence here
//   });
//
// How each token is chosen: decode/sampling.hpp (choose_token; repetition penalty over the prompt
// and the generated tokens, then argmax or temperature, top-k, top-p and a draw).
//
// Inference mode. Generation runs with every dropout off whatever the model's train flag, and puts
// each flag back afterwards, also when it throws (model/eval_mode.hpp): tokens never depend on
// whether eval() was called.
//
// Prompts of different lengths (decoder-only). No padding: every token of every sequence sits at
// its own position, so a batch computes what its rows would compute alone. The first step runs
// the shortest prompt's length of every prompt through the model at once; after that each step
// feeds one token per sequence: the next prompt token of a sequence still in its prompt (its
// logits are not used), or the token it chose last. A sequence that has ended keeps being fed (its
// last token, outputs ignored) until every sequence has, so each step has one fixed shape; the
// KV cache holds the longest prompt plus max_new_tokens - 1 positions, at most max_len: beyond it
// rotary and relative positions slide a window over the cache (DecoderOnlyLM::slide_window). The
// cost: a prompt's tokens beyond the shortest prompt's length go through one per step, so a batch
// of prompts of similar lengths runs fastest.
//
// Randomness. Each sequence draws from a generator of its own, seeded by one rng.split() per
// sequence in order at the start of a sampling call (greedy calls draw nothing). So the same seed
// gives the same tokens, a sequence's tokens do not depend on how long the others run, and a batch
// gives the tokens that generating its sequences one at a time, in order, from the same rng gives
// (up to rounding differences between batched and single products, which can flip a draw or an
// argmax only at a near-tie).
#pragma once

#include <algorithm>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/precompiled.hpp"
#include "../core/random.hpp"
#include "../model/decode_state.hpp"
#include "../model/eval_mode.hpp"
#include "../model/language_models.hpp"
#include "../model/transformer.hpp"
#include "sampling.hpp"

namespace eigenformer {

/// What generate() does: how tokens are chosen (SamplingOptions: sample, temperature, top_k,
/// top_p, repetition_penalty), when a sequence ends, and the encoder-decoder's first token.
struct GenerateOptions : SamplingOptions {
  Index max_new_tokens = 64;       // >= 1: most tokens generated per sequence (stop token included)
  std::vector<Index> stop_tokens;  // ids in [0, vocab): a sequence ends with the first it generates
  Index bos = 1;                   // encoder-decoder: the decoder's first input (decoder-only: unused)
};

/// Why a sequence ended.
enum class StopReason {
  stop_token,      // it generated one of options.stop_tokens (the last token of its output)
  max_new_tokens,  // it generated options.max_new_tokens tokens
  callback,        // the callback returned false
};

/// One generated token, as the callback sees it.
struct TokenEvent {
  Index row = 0;      // the sequence: row of the prompts / sources
  Index token = 0;    // the id chosen
  Index index = 0;    // how many tokens the sequence generated before this one
  bool last = false;  // the sequence ends with this token (a stop token, or max_new_tokens)
};

/// Called once per generated token, in order: step by step, and within a step by row. Return true
/// to let the sequence go on, false to end it after this token (StopReason::callback; ignored when
/// event.last). An exception from it leaves generate() (the model's flags restored) and is
/// rethrown to the caller.
using TokenCallback = std::function<bool(const TokenEvent&)>;

struct GenerateResult {
  /// Per sequence: the generated ids, without the prompt (or BOS), ending with the stop token when
  /// one ended it.
  std::vector<std::vector<Index>> tokens;
  std::vector<StopReason> reasons;  // per sequence: why it ended
};

namespace detail {

/// Throws unless opt is in range for a model of vocabulary vocab (bos only when uses_bos).
inline void check_generate_options(std::string_view func, const GenerateOptions& opt, Index vocab,
                                   bool uses_bos) {
  check_sampling_options(func, opt);
  require(opt.max_new_tokens >= 1, func, "options.max_new_tokens",
          [&] { return "is " + std::to_string(opt.max_new_tokens) + ", expected at least 1"; });
  check_token_ids(func, "options.stop_tokens", opt.stop_tokens, vocab);
  if (uses_bos)
    require(opt.bos >= 0 && opt.bos < vocab, func, "options.bos", [&] {
      return "is " + std::to_string(opt.bos) + ", expected an id in [0, " + std::to_string(vocab) +
             ")";
    });
}

/// The per-sequence bookkeeping of one generate() call: histories (what the repetition penalty
/// sees), outputs, who is done, and the per-sequence generators.
class Generation {
 public:
  Generation(const GenerateOptions& opt, const TokenCallback& on_token,
             std::vector<std::vector<Index>> histories, Rng& rng);

  Index size() const { return static_cast<Index>(result_.tokens.size()); }
  bool done(Index b) const { return done_[size_t(b)]; }
  bool all_done() const { return n_done_ == size(); }
  /// The token sequence b ends with so far (its prompt's last, BOS, or its last choice).
  Index last_token(Index b) const { return history_[size_t(b)].back(); }

  /// Chooses sequence b's next token from its logits row, records it and tells the callback.
  template <class Scalar>
  void choose(Index b, const RowVector<Scalar>& logits);

  GenerateResult take() { return std::move(result_); }

 private:
  const GenerateOptions& opt_;
  const TokenCallback& on_token_;
  std::vector<std::vector<Index>> history_;
  std::vector<Rng> rngs_;  // one per sequence when sampling
  Rng no_draws_;           // what greedy choice is handed: it draws nothing
  std::vector<bool> done_;
  Index n_done_ = 0;
  GenerateResult result_;
};

inline Generation::Generation(const GenerateOptions& opt, const TokenCallback& on_token,
                              std::vector<std::vector<Index>> histories, Rng& rng)
    : opt_(opt), on_token_(on_token), history_(std::move(histories)) {
  const size_t B = history_.size();
  if (opt.sample) {
    rngs_.reserve(B);
    for (size_t b = 0; b < B; ++b) rngs_.emplace_back(rng.split());
  }
  done_.assign(B, false);
  result_.tokens.resize(B);
  result_.reasons.assign(B, StopReason::max_new_tokens);
}

template <class Scalar>
void Generation::choose(Index b, const RowVector<Scalar>& logits) {
  const size_t i = size_t(b);
  const Index token = choose_token(logits, opt_, history_[i], opt_.sample ? rngs_[i] : no_draws_);
  history_[i].push_back(token);
  std::vector<Index>& out = result_.tokens[i];
  out.push_back(token);
  bool last = true;
  if (std::find(opt_.stop_tokens.begin(), opt_.stop_tokens.end(), token) != opt_.stop_tokens.end())
    result_.reasons[i] = StopReason::stop_token;
  else if (static_cast<Index>(out.size()) == opt_.max_new_tokens)
    result_.reasons[i] = StopReason::max_new_tokens;
  else
    last = false;
  const TokenEvent event{b, token, static_cast<Index>(out.size()) - 1, last};
  if (on_token_ && !on_token_(event) && !last) {
    result_.reasons[i] = StopReason::callback;
    last = true;
  }
  if (last) {
    done_[i] = true;
    ++n_done_;
  }
}

}  // namespace detail

/// Decoder-only generation: continues each prompt (prompts[b], B >= 1 of them, each non-empty, of
/// any lengths) by up to options.max_new_tokens tokens, chosen as options say, calling on_token
/// (if set) for each. Returns per prompt the new tokens and why it stopped. Requires options in
/// range (GenerateOptions, SamplingOptions; bos unused), prompt ids in [0, vocab), prompts of at
/// most max_len tokens, and, for learned or sinusoidal positions, the longest prompt plus
/// max_new_tokens within max_len. Rotary and relative positions (and none) go on past max_len
/// with a sliding window: once a sequence fills max_len positions, each step drops its oldest
/// cached positions (DecoderOnlyLM::slide_window), so a token attends to the max_len positions
/// before it, itself included. Throws ArgumentError naming "generate"
/// and the argument otherwise, before it changes anything (rng included). Runs with dropout off
/// (model/eval_mode.hpp). Prompts are not padded (the header says how the batch runs), so
/// config.pad_id masks only prompt tokens that equal it, as a forward pass would.
template <class Scalar>
GenerateResult generate(DecoderOnlyLM<Scalar>& model, const std::vector<std::vector<Index>>& prompts,
                        const GenerateOptions& options, Rng& rng,
                        const TokenCallback& on_token = nullptr) {
  const char* func = "generate";
  const Index V = model.vocab_size();
  detail::check_generate_options(func, options, V, /*uses_bos=*/false);
  const Index B = static_cast<Index>(prompts.size());
  detail::require(B >= 1, func, "prompts", "is empty, expected at least one prompt");
  Index shortest = 0, longest = 0;
  for (Index b = 0; b < B; ++b) {
    const std::vector<Index>& p = prompts[size_t(b)];
    detail::require(!p.empty(), func, "prompts",
                    [&] { return "has an empty prompt at row " + std::to_string(b); });
    for (size_t t = 0; t < p.size(); ++t)
      detail::require(p[t] >= 0 && p[t] < V, func, "prompts", [&] {
        return "has id " + std::to_string(p[t]) + " at row " + std::to_string(b) + ", position " +
               std::to_string(t) + ", expected ids in [0, " + std::to_string(V) + ")";
      });
    const Index P = static_cast<Index>(p.size());
    shortest = b == 0 ? P : std::min(shortest, P);
    longest = std::max(longest, P);
  }
  const TransformerConfig& c = model.config();
  detail::require(longest <= c.max_len, func, "prompts", [&] {
    return "has a prompt of " + std::to_string(longest) +
           " tokens, more than the model's max_len " + std::to_string(c.max_len);
  });
  const bool window = options.max_new_tokens > c.max_len - longest;
  detail::require(!window || c.attention_positions() || c.positional == PositionalKind::none, func,
                  "options.max_new_tokens", [&] {
                    return "is " + std::to_string(options.max_new_tokens) +
                           ": with the longest prompt (" + std::to_string(longest) +
                           " tokens) that exceeds the model's max_len " +
                           std::to_string(c.max_len) + ", and its " +
                           positional_kind_name(c.positional) +
                           " positions are a table of max_len rows (rotary or relative positions "
                           "go on past max_len with a sliding window)";
                  });

  ScopedEval eval(model);
  DecodeState<Scalar> state =
      model.begin_decode(B, std::min(longest + options.max_new_tokens - 1, c.max_len));
  detail::Generation gen(options, on_token, prompts, rng);
  IdMatrix input(B, shortest);  // the first step: the shortest prompt's length of every prompt
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < shortest; ++t) input(b, t) = prompts[size_t(b)][size_t(t)];
  for (;;) {
    const Index fed = state.position + input.cols();  // tokens per sequence after this step
    const Index overflow = fed - state.dropped - state.max_len;
    if (overflow > 0) model.slide_window(state, overflow);  // past max_len (window is true)
    const Matrix<Scalar> logits = model.decode_step(input, state);  // (B*input.cols(), V)
    for (Index b = 0; b < B; ++b) {
      const Index P = static_cast<Index>(prompts[size_t(b)].size());
      if (fed >= P && !gen.done(b))
        gen.choose(b, RowVector<Scalar>(logits.row(b * input.cols() + input.cols() - 1)));
    }
    if (gen.all_done()) break;
    input.resize(B, 1);
    for (Index b = 0; b < B; ++b) {
      const std::vector<Index>& p = prompts[size_t(b)];
      input(b, 0) = fed < static_cast<Index>(p.size()) ? p[size_t(fed)] : gen.last_token(b);
    }
  }
  return gen.take();
}

/// generate() for prompts of one length: prompts (B, P), row b the prompt of sequence b. (Ids is
/// IdMatrix: a template parameter, so that a braced list such as {{1, 2}} goes to the overload
/// above instead of being ambiguous.)
template <class Scalar, class Ids, class = std::enable_if_t<std::is_same_v<Ids, IdMatrix>>>
GenerateResult generate(DecoderOnlyLM<Scalar>& model, const Ids& prompts,
                        const GenerateOptions& options, Rng& rng,
                        const TokenCallback& on_token = nullptr) {
  std::vector<std::vector<Index>> rows(static_cast<size_t>(prompts.rows()));
  for (Index b = 0; b < prompts.rows(); ++b)
    rows[size_t(b)].assign(prompts.row(b).data(), prompts.row(b).data() + prompts.cols());
  return generate(model, rows, options, rng, on_token);
}

/// Token ids of another type (Eigen::MatrixXi, std::vector<std::vector<int>>) as prompts or
/// source: a short compile error that names eigenformer::to_ids, instead of a list of candidates.
template <class Model, class Ids, class... Rest,
          std::enable_if_t<detail::foreign_ids<Ids> &&
                               !std::is_same_v<Ids, std::vector<std::vector<Index>>>,
                           int> = 0>
GenerateResult generate(Model&, const Ids&, const Rest&...) {
  static_assert(detail::always_false<Ids>,
                "eigenformer: token ids are an eigenformer::IdMatrix (row-major, Eigen::Index) or "
                "std::vector<std::vector<Index>> prompts; convert yours with eigenformer::to_ids");
  return {};
}

/// Encoder-decoder generation: translates each source (src (B, S), padded with config.pad_id,
/// which masks it) from options.bos by up to options.max_new_tokens tokens, chosen as options say
/// (the repetition penalty sees BOS and the generated tokens), calling on_token (if set) for each.
/// Returns per source the new tokens without BOS and why it stopped. The source is encoded once;
/// each step runs the decoder on one token per sequence over the KV caches. Requires options in
/// range (GenerateOptions, SamplingOptions), bos in [0, tgt_vocab), max_new_tokens within the
/// model's max_len, and src non-empty with ids in [0, src_vocab) and at most max_len columns.
/// Throws ArgumentError naming "generate" and the argument otherwise, before it changes anything
/// (rng included). Runs with dropout off (model/eval_mode.hpp).
template <class Scalar>
GenerateResult generate(Transformer<Scalar>& model, const IdMatrix& src,
                        const GenerateOptions& options, Rng& rng,
                        const TokenCallback& on_token = nullptr) {
  const char* func = "generate";
  const TransformerConfig& c = model.config();
  detail::check_generate_options(func, options, model.vocab_size(), /*uses_bos=*/true);
  detail::require(options.max_new_tokens <= c.max_len, func, "options.max_new_tokens", [&] {
    return "is " + std::to_string(options.max_new_tokens) + ", more than the model's max_len " +
           std::to_string(c.max_len);
  });
  detail::require(src.rows() > 0 && src.cols() > 0 && src.cols() <= c.max_len, func, "src", [&] {
    return "has shape " + detail::shape_of(src) + ", expected (B, S) with B > 0 and 0 < S <= " +
           std::to_string(c.max_len) + " (max_len)";
  });
  detail::check_embedding_ids(func, "src", src, c.src_vocab);

  ScopedEval eval(model);
  const Index B = src.rows();
  DecodeState<Scalar> state = model.begin_decode(src, options.max_new_tokens);  // encodes src
  detail::Generation gen(options, on_token,
                         std::vector<std::vector<Index>>(static_cast<size_t>(B), {options.bos}),
                         rng);
  IdMatrix input = IdMatrix::Constant(B, 1, options.bos);
  for (;;) {
    const Matrix<Scalar> logits = model.decode_step(input, state);  // (B, V)
    for (Index b = 0; b < B; ++b)
      if (!gen.done(b)) gen.choose(b, RowVector<Scalar>(logits.row(b)));
    if (gen.all_done()) break;
    for (Index b = 0; b < B; ++b) input(b, 0) = gen.last_token(b);
  }
  return gen.take();
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_GENERATE_TEMPLATES(S)                                                          \
  EIGENFORMER_FOR(S, GenerateResult generate<S>(DecoderOnlyLM<S>& model,                           \
                                                const std::vector<std::vector<Index>>& prompts,    \
                                                const GenerateOptions& options, Rng& rng,          \
                                                const TokenCallback& on_token))                    \
  EIGENFORMER_FOR(S, GenerateResult generate<S, IdMatrix, void>(DecoderOnlyLM<S>& model,         \
                                                const IdMatrix& prompts,                           \
                                                const GenerateOptions& options, Rng& rng,          \
                                                const TokenCallback& on_token))                    \
  EIGENFORMER_FOR(S, GenerateResult generate<S>(Transformer<S>& model, const IdMatrix& src,        \
                                                const GenerateOptions& options, Rng& rng,          \
                                                const TokenCallback& on_token))                    \
  EIGENFORMER_FOR(S, void detail::Generation::choose<S>(Index b, const RowVector<S>& logits))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_GENERATE_TEMPLATES)
// clang-format on

}  // namespace eigenformer
