// Greedy decoding: at each step take the most likely next token.
//
// Encoder-decoder: encode the source once, then grow the target from BOS one token at a time until
// every sequence has produced EOS or max_len tokens. Batched and deterministic. Runs with dropout
// off whatever the model's train flag, which it restores (model/eval_mode.hpp). Each step runs the decoder on the new token only,
// over key/value caches of the earlier positions and of the source (layers/kv_cache.hpp), so the
// cost grows linearly with the output length.
#pragma once

#include <string>
#include <vector>

#include "../core/precompiled.hpp"
#include "../model/decode_state.hpp"
#include "../model/eval_mode.hpp"
#include "../model/language_models.hpp"
#include "../model/transformer.hpp"

namespace eigenformer {

struct GreedyOptions {
  Index bos = 1;
  Index eos = 2;
  Index max_len = 64;  // most tokens generated per sequence (EOS included)
};

namespace detail {

template <class Scalar>
Index argmax_row(const Matrix<Scalar>& logits, Index row) {
  return first_max_index(logits.row(row));
}

inline void check_greedy_options(std::string_view func, const GreedyOptions& opt, Index vocab,
                                 Index max_positions) {
  require(opt.bos >= 0 && opt.bos < vocab, func, "options.bos", [&] {
    return "is " + std::to_string(opt.bos) + ", expected an id in [0, " + std::to_string(vocab) +
           ")";
  });
  require(opt.eos >= 0 && opt.eos < vocab, func, "options.eos", [&] {
    return "is " + std::to_string(opt.eos) + ", expected an id in [0, " + std::to_string(vocab) +
           ")";
  });
  require(opt.max_len > 0 && opt.max_len < max_positions, func, "options.max_len", [&] {
    return "is " + std::to_string(opt.max_len) + ", expected 1.." +
           std::to_string(max_positions - 1) + " (the model's max_len less one for BOS)";
  });
}

}  // namespace detail

/// src (B, S) -> generated ids (B, L) with L <= max_len, without BOS. A sequence that ended early
/// is filled with EOS after its EOS. If last is given it receives the caches of a final full
/// decoder pass over the decoder input of the last step (BOS and all generated tokens but the
/// last), as decode() fills them: its cross-attention weights show which source tokens each
/// output token looked at. That pass costs one full decode; without last, none is run.
/// Runs with dropout off whatever the model's mode (ScopedEval). Throws
/// ArgumentError naming greedy_decode unless opt.bos and opt.eos are in [0, tgt_vocab) and
/// 1 <= opt.max_len < the model's max_len; and as Transformer::encode for a bad src.
template <class Scalar>
IdMatrix greedy_decode(Transformer<Scalar>& model, const IdMatrix& src, const GreedyOptions& opt,
                       typename Transformer<Scalar>::Cache* last = nullptr) {
  detail::check_greedy_options("greedy_decode", opt, model.vocab_size(), model.config().max_len);
  ScopedEval eval(model);
  typename Encoder<Scalar>::Cache encoder_cache;
  typename Encoder<Scalar>::Cache& enc = last ? last->encoder : encoder_cache;
  const Matrix<Scalar> memory = model.encode(src, enc);  // (B*S, d)
  DecodeState<Scalar> state = model.begin_decode(src, memory, opt.max_len);
  const Index B = src.rows();
  IdMatrix prefix = IdMatrix::Constant(B, 1, opt.bos);  // (B, t + 1)
  std::vector<bool> done(static_cast<size_t>(B), false);
  Index n_done = 0;
  for (Index t = 0; t < opt.max_len && n_done < B; ++t) {
    const Matrix<Scalar> logits = model.decode_step(prefix.col(t), state);  // (B, V)
    prefix.conservativeResize(B, t + 2);
    for (Index b = 0; b < B; ++b) {
      const Index next = done[size_t(b)] ? opt.eos : detail::argmax_row(logits, b);
      prefix(b, t + 1) = next;
      if (!done[size_t(b)] && next == opt.eos) {
        done[size_t(b)] = true;
        ++n_done;
      }
    }
  }
  if (last) model.decode(prefix.leftCols(prefix.cols() - 1), src, memory, *last);
  return prefix.rightCols(prefix.cols() - 1);
}

/// Decoder-only: extends prompt (B, P) by up to n_new greedy tokens, stopping a sequence at
/// eos (pass -1 for none). Returns (B, P + generated).
/// generated <= n_new: it stops when every sequence has produced eos, and fills a finished
/// sequence with eos until then. Runs with dropout off whatever the model's mode, as
/// greedy_decode; decode/generate.hpp's generate() does this and more (sampling, prompts of
/// different lengths). Throws ArgumentError naming greedy_generate unless 0 <= n_new,
/// P + n_new <= max_len, eos is -1 or in [0, vocab), and (n_new > 0) prompt is non-empty; and as
/// DecoderOnlyLM::decode_step for ids outside [0, vocab).
template <class Scalar>
IdMatrix greedy_generate(DecoderOnlyLM<Scalar>& model, const IdMatrix& prompt, Index n_new,
                         Index eos = -1) {
  detail::require(n_new >= 0 && prompt.cols() + n_new <= model.config().max_len, "greedy_generate",
                  "n_new", [&] {
                    return "is " + std::to_string(n_new) +
                           "; prompt length + n_new must be <= " + "max_len " +
                           std::to_string(model.config().max_len);
                  });
  const Index V = model.vocab_size();
  detail::require(eos == -1 || (eos >= 0 && eos < V), "greedy_generate", "eos", [&] {
    return "is " + std::to_string(eos) + ", expected -1 (none) or an id in [0, " +
           std::to_string(V) + ")";
  });
  IdMatrix seq = prompt;
  const Index B = prompt.rows();
  std::vector<bool> done(static_cast<size_t>(B), false);
  if (n_new == 0) return seq;
  detail::require(prompt.rows() > 0 && prompt.cols() > 0, "greedy_generate", "prompt", [&] {
    return "has shape " + detail::shape_of(prompt) + ", expected a non-empty (B, P)";
  });
  ScopedEval eval(model);
  // The prompt in one step, then one token per step over the caches. The last token is never fed.
  DecodeState<Scalar> state = model.begin_decode(B, prompt.cols() + n_new - 1);
  for (Index step = 0; step < n_new; ++step) {
    const Index T = seq.cols();
    const IdMatrix input = step == 0 ? seq : IdMatrix(seq.col(T - 1));
    const Matrix<Scalar> logits = model.decode_step(input, state);  // (B*input.cols(), V)
    seq.conservativeResize(B, T + 1);
    bool all_done = true;
    for (Index b = 0; b < B; ++b) {
      const Index row = b * input.cols() + input.cols() - 1;
      const Index next = done[size_t(b)] ? eos : detail::argmax_row(logits, row);
      seq(b, T) = next;
      if (eos >= 0 && next == eos) done[size_t(b)] = true;
      all_done = all_done && done[size_t(b)];
    }
    if (all_done) break;
  }
  return seq;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_GREEDY_TEMPLATES(S)                                                            \
  EIGENFORMER_FOR(S, IdMatrix greedy_decode<S>(Transformer<S>& model, const IdMatrix& src,        \
                                               const GreedyOptions& opt,                           \
                                               typename Transformer<S>::Cache* last))              \
  EIGENFORMER_FOR(S, IdMatrix greedy_generate<S>(DecoderOnlyLM<S>& model, const IdMatrix& prompt, \
                                                 Index n_new, Index eos))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_GREEDY_TEMPLATES)
// clang-format on

}  // namespace eigenformer
