// Single-stack models built from the encoder's layers:
//  - DecoderOnlyLM (GPT-style): causal self-attention, no cross-attention.
//      ids (B, T) -> next-token logits (B*T, vocab)
//  - EncoderOnlyModel (BERT-style): bidirectional self-attention with key padding, and a
//    per-token output projection (e.g. for masked-token prediction).
//      ids (B, T) -> logits (B*T, vocab)
// Both take their vocabulary from config.vocab and their depth from config.n_layers.
#pragma once

#include <string>

#include "../core/precompiled.hpp"
#include "config.hpp"
#include "decode_state.hpp"
#include "encoder.hpp"
#include "output_head.hpp"

namespace eigenformer {

namespace detail {

/// Token input + encoder stack + output head, with the mask each model chooses.
template <class Scalar>
class SingleStackModel {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename TokenInput<Scalar>::Cache input;
    typename EncoderStack<Scalar>::Cache stack;
    typename OutputHead<Scalar>::Cache head;
    AttentionMask mask;  // the self-attention's, kept so that its buffers serve the next forward
  };

  TokenInput<Scalar> input;
  EncoderStack<Scalar> stack;
  OutputHead<Scalar> head;

  /// The config the model was built with.
  const TransformerConfig& config() const { return config_; }
  /// The vocabulary: config().vocab, the width of the logits.
  Index vocab_size() const { return config_.vocab; }

  /// ids (B, T) at positions start_pos.. -> logits (B*T, vocab).
  /// Masks keys whose id is pad_id, and later keys too in DecoderOnlyLM (causal). Fills cache for
  /// backward; in training mode draws new dropout masks. The logits are a buffer of cache, valid
  /// until its next forward (so a training loop allocates them once). Throws ArgumentError naming
  /// <Model>::forward for empty ids or an id outside [0, vocab); and from the token input for
  /// start_pos + T beyond max_len.
  const Mat& forward(const IdMatrix& ids, Cache& cache, Index start_pos = 0) {
    return forward(ids, IdMatrix(), cache, start_pos);
  }

  /// The same with token types (B, T) (BERT's segment ids; empty: all 0), for a model built with
  /// config.type_vocab > 0. Throws ArgumentError as TokenInput::forward for token types that do
  /// not fit, before anything changes.
  const Mat& forward(const IdMatrix& ids, const IdMatrix& token_types, Cache& cache,
                     Index start_pos = 0);

  /// forward without the output head: ids (B, T) -> the last layer's hidden states (B*T, d_model)
  /// (after the final LayerNorm with pre-norm), for a task head of your own (model/heads.hpp).
  /// Fills cache.input and cache.stack for backward_hidden; the result is a buffer of cache.stack,
  /// valid until its next forward. Throws as forward.
  const Mat& hidden(const IdMatrix& ids, Cache& cache, Index start_pos = 0) {
    return hidden(ids, IdMatrix(), cache, start_pos);
  }
  /// The same with token types (B, T), as forward.
  const Mat& hidden(const IdMatrix& ids, const IdMatrix& token_types, Cache& cache,
                    Index start_pos = 0);

  /// dhidden (B*T, d_model), the gradient of hidden()'s output: adds the gradients of the token
  /// input's and the stack's parameters (not the output head's). cache comes from hidden or
  /// forward. ready, when set, is called as in backward (layers last to first, token input).
  /// Throws ArgumentError from the layers for a dhidden or cache that does not fit.
  void backward_hidden(ConstRef<Scalar> dhidden, const Cache& cache,
                       const GradReady<Scalar>& ready = nullptr) {
    input.backward(stack.backward(dhidden, cache.stack, ready), cache.input);
    if (ready) ready(input.parameters());
  }

  /// The same with a custom self-attention mask for every layer (nn.TransformerEncoder's mask):
  /// attn_mask / attn_bias of shape (T, T), (B*T, T) or (B*H*T, T) (ops/attention.hpp), e.g. a
  /// prefix LM or ALiBi. mask.causal replaces the model's default (set it for a GPT with extra
  /// masks; leave it false for a prefix LM's own attn_mask); pad_id's key padding still applies.
  /// decode_step stays causal. Throws as the other forward, and naming <Model>::forward for a
  /// mask that does not fit.
  const Mat& forward(const IdMatrix& ids, const AttentionMask& mask, Cache& cache,
                     Index start_pos = 0);

  /// Starts incremental decoding (inference only, causal models only) of B sequences of up to
  /// max_len positions: one empty self-attention cache per layer.
  /// Throws ArgumentError naming <Model>::begin_decode for an EncoderOnlyModel (not causal),
  /// B <= 0, or max_len outside 1..config().max_len.
  DecodeState<Scalar> begin_decode(Index B, Index max_len) const;

  /// Incremental forward, inference only: ids (B, t) at positions state.position.. (a prompt,
  /// then one token per step) -> logits (B*t, vocab), equal up to rounding to the last t rows per
  /// sequence of forward() over the whole sequence. Extends the caches, advances state.position.
  /// The layers apply no dropout; call eval() first so that the token input's dropout is off too.
  /// Throws ArgumentError naming <Model>::decode_step, with state unchanged, unless ids is
  /// (state.B, t > 0) with every id in [0, vocab), state comes from begin_decode of this model and
  /// t more positions fit.
  Mat decode_step(const IdMatrix& ids, DecodeState<Scalar>& state);

  /// Sliding window for decoding past max_len: forgets the n oldest positions of every
  /// self-attention cache (KVCache::drop_front), making room for n more; later tokens attend to
  /// the positions left. Rotary and relative positions (and none) allow it: their positions act in
  /// the attention and need no table. Throws ArgumentError naming <Model>::slide_window, with
  /// state unchanged, for learned or sinusoidal positions (a table of max_len rows), or unless
  /// 0 <= n <= the positions cached.
  void slide_window(DecodeState<Scalar>& state, Index n) const;

  /// dlogits (B*T, vocab): adds every parameter's gradient. ready, when set, is called with each
  /// layer's parameters as soon as their gradients are final (output head, layers last to first,
  /// token input), as Transformer::backward.
  /// cache comes from forward. Throws ArgumentError from the layers for a dlogits or cache that
  /// does not fit (OutputHead::backward checks dlogits before any gradient changes).
  void backward(ConstRef<Scalar> dlogits, const Cache& cache,
                const GradReady<Scalar>& ready = nullptr);

  /// Dropout on (training) or off (eval(): inference and decoding).
  void train(bool on = true) {
    input.train(on);
    stack.train(on);
  }
  void eval() { train(false); }

  // Token ids of another type (Eigen::MatrixXi, std::vector): a short compile error naming to_ids.
  EIGENFORMER_REJECT_FOREIGN_IDS(forward)
  EIGENFORMER_REJECT_FOREIGN_IDS(hidden)
  EIGENFORMER_REJECT_FOREIGN_IDS(decode_step)

  /// "embedding.weight" ("position.weight" when learned), "layers.<i>.*", "norm.*" (pre-norm), and
  /// "output.*" unless tied: pointers into this model.
  ParamList<Scalar> parameters();

  /// Sets every parameter gradient to zero: once per step, as backward adds into them.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 protected:
  SingleStackModel() = default;
  SingleStackModel(const TransformerConfig& c, Index n_layers, bool causal, std::string name,
                   Rng& rng);

 private:
  TransformerConfig config_;
  bool causal_ = true;

  // hidden() with token types (empty: none) and a custom mask (none: the model's own).
  const Mat& run_hidden(const IdMatrix& ids, const IdMatrix& token_types,
                        const AttentionMask* custom, Cache& cache, Index start_pos);
  std::string name_;
  std::string forward_func_, decode_step_func_;  // built once: messages name them on failure
};

template <class Scalar>
auto SingleStackModel<Scalar>::forward(const IdMatrix& ids, const IdMatrix& token_types,
                                       Cache& cache, Index start_pos) -> const Mat& {
  const Mat& h = run_hidden(ids, token_types, nullptr, cache, start_pos);
  return head.forward(h, input.embedding, cache.head);
}

template <class Scalar>
auto SingleStackModel<Scalar>::forward(const IdMatrix& ids, const AttentionMask& mask, Cache& cache,
                                       Index start_pos) -> const Mat& {
  const Mat& h = run_hidden(ids, IdMatrix(), &mask, cache, start_pos);
  return head.forward(h, input.embedding, cache.head);
}

template <class Scalar>
auto SingleStackModel<Scalar>::hidden(const IdMatrix& ids, const IdMatrix& token_types,
                                      Cache& cache, Index start_pos) -> const Mat& {
  return run_hidden(ids, token_types, nullptr, cache, start_pos);
}

template <class Scalar>
auto SingleStackModel<Scalar>::run_hidden(const IdMatrix& ids, const IdMatrix& token_types,
                                          const AttentionMask* custom, Cache& cache,
                                          Index start_pos) -> const Mat& {
  const std::string& func = forward_func_;
  detail::require(ids.rows() > 0 && ids.cols() > 0, func, "ids",
                  [&] { return "has shape " + shape_of(ids) + ", expected a non-empty (B, T)"; });
  check_embedding_ids(func, "ids", ids, config_.vocab);
  const Index B = ids.rows(), T = ids.cols(), H = config_.n_heads;
  check_model_mask(func, custom, {B, T, T, H, config_.d_model / H});
  const Mat& x = input.forward(ids, token_types, cache.input, start_pos);
  model_mask(cache.mask, custom, causal_, key_padding_mask(ids, config_.pad_id));
  return stack.forward(x, ids.rows(), cache.mask, cache.stack);
}

template <class Scalar>
auto SingleStackModel<Scalar>::begin_decode(Index B, Index max_len) const -> DecodeState<Scalar> {
  const std::string func = name_ + "::begin_decode";
  detail::require(causal_, func, "this",
                  "is not causal: incremental decoding needs a causal model");
  detail::check_positive(func, "B", B);
  detail::require(max_len > 0 && max_len <= config_.max_len, func, "max_len", [&] {
    return "is " + std::to_string(max_len) + ", expected 1.." + std::to_string(config_.max_len) +
           " (the model's max_len)";
  });
  DecodeState<Scalar> state;
  state.B = B;
  state.max_len = max_len;
  state.self = stack.make_caches(B, max_len);
  return state;
}

template <class Scalar>
auto SingleStackModel<Scalar>::decode_step(const IdMatrix& ids, DecodeState<Scalar>& state) -> Mat {
  const std::string& func = decode_step_func_;
  detail::require(ids.rows() == state.B && ids.cols() > 0, func, "ids", [&] {
    return "has shape " + shape_of(ids) + ", expected (" + std::to_string(state.B) + ", t > 0)";
  });
  detail::require(state.self.size() == stack.layers.size(), func, "state",
                  "is not from begin_decode of this model");
  check_embedding_ids(func, "ids", ids, config_.vocab);
  for (const auto& c : state.self) c.check_room(func, "ids", ids.cols());
  const detail::SerialIfSmall serial(
      detail::decode_step_work(ids.size(), config_.n_layers, config_.d_model, config_.d_ff,
                               state.self_keys_after(ids.cols()), 0, config_.vocab));
  typename TokenInput<Scalar>::Cache scratch;
  // Past a sliding window's drops the input sees window positions (only attention positions
  // allow a window, and the input adds no table for them).
  const Mat x = input.forward(ids, scratch, state.position - state.dropped);
  const Mat h = stack.decode_step(x, ids.rows(), state.self, key_padding_mask(ids, config_.pad_id));
  state.position += ids.cols();
  return head.forward(h, input.embedding);
}

template <class Scalar>
void SingleStackModel<Scalar>::slide_window(DecodeState<Scalar>& state, Index n) const {
  const std::string func = name_ + "::slide_window";
  detail::require(config_.attention_positions() || config_.positional == PositionalKind::none,
                  func, "config.positional", [&] {
                    return "is " + positional_kind_name(config_.positional) +
                           ": a table of max_len = " + std::to_string(config_.max_len) +
                           " positions, so decoding cannot go past max_len (rotary or relative "
                           "positions can: they act inside the attention)";
                  });
  const Index cached = state.position - state.dropped;
  detail::require(n >= 0 && n <= cached, func, "n", [&] {
    return "is " + std::to_string(n) + ", expected 0 <= n <= " + std::to_string(cached) +
           " (the positions cached)";
  });
  for (auto& c : state.self) c.drop_front(n);
  state.dropped += n;
}

template <class Scalar>
void SingleStackModel<Scalar>::backward(ConstRef<Scalar> dlogits, const Cache& cache,
                                        const GradReady<Scalar>& ready) {
  detail::require_filled_cache(name_ + "::backward", cache.head.h.cols() != 0);
  const Mat& dh = head.backward(dlogits, cache.head, input.embedding);
  if (ready) ready(head.parameters());
  backward_hidden(dh, cache, ready);
}

template <class Scalar>
auto SingleStackModel<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out = input.parameters();
  for (const auto& p : stack.parameters()) out.push_back(p);  // layers.*, norm.*
  append_params(out, "output", head.parameters());
  return out;
}

template <class Scalar>
SingleStackModel<Scalar>::SingleStackModel(const TransformerConfig& c, Index n_layers, bool causal,
                                           std::string name, Rng& rng)
    : config_(c),
      causal_(causal),
      name_(std::move(name)),
      forward_func_(name_ + "::forward"),
      decode_step_func_(name_ + "::decode_step") {
  c.validate(name_ + "::" + name_, false);
  input = TokenInput<Scalar>(c.vocab, c, rng);
  stack = EncoderStack<Scalar>(c.layer(causal), n_layers, rng);
  head = OutputHead<Scalar>(c.d_model, c.vocab, c.tie_output, rng);
}

}  // namespace detail

template <class Scalar = float>
class DecoderOnlyLM : public detail::SingleStackModel<Scalar> {
 public:
  DecoderOnlyLM() = default;
  /// c.n_layers causal layers over c.vocab (src_vocab, tgt_vocab and n_*_layers are the
  /// encoder-decoder's, ignored here), weights drawn from rng. Throws ArgumentError naming
  /// DecoderOnlyLM::DecoderOnlyLM and the field unless c is valid (TransformerConfig::validate,
  /// without a source).
  DecoderOnlyLM(const TransformerConfig& c, Rng& rng)
      : detail::SingleStackModel<Scalar>(c, c.n_layers, true, "DecoderOnlyLM", rng) {}
};

template <class Scalar = float>
class EncoderOnlyModel : public detail::SingleStackModel<Scalar> {
 public:
  EncoderOnlyModel() = default;
  /// c.n_layers bidirectional layers over c.vocab (src_vocab, tgt_vocab and n_*_layers are the
  /// encoder-decoder's, ignored here), weights drawn from rng. Throws ArgumentError naming
  /// EncoderOnlyModel::EncoderOnlyModel and the field unless c is valid (without a source).
  EncoderOnlyModel(const TransformerConfig& c, Rng& rng)
      : detail::SingleStackModel<Scalar>(c, c.n_layers, false, "EncoderOnlyModel", rng) {}
};

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(detail::SingleStackModel)
EIGENFORMER_CLASS_TEMPLATES(DecoderOnlyLM)
EIGENFORMER_CLASS_TEMPLATES(EncoderOnlyModel)

}  // namespace eigenformer
