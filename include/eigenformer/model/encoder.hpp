// Encoder layer and encoder stack.
//
// EncoderLayer: self-attention, then feed-forward, each inside a residual block with LayerNorm
// (post-norm: x = LN(x + drop(f(x))); pre-norm: x = x + drop(f(LN(x)))).
// With a causal mask the same layer is a GPT block: the decoder-only model reuses it.
// The attention's scoring (dot-product or additive) and its positions (rotary, relative, or none
// when the input carries absolute positions) come from LayerConfig (layers/attention.hpp).
//
// Encoder: token input (embedding + positions), N layers, and a final LayerNorm for pre-norm.
//   ids (B, S) -> memory (B*S, d_model)
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "../core/precompiled.hpp"
#include "../layers/attention.hpp"
#include "../layers/dropout.hpp"
#include "../layers/feed_forward.hpp"
#include "../layers/kv_cache.hpp"
#include "../layers/layernorm.hpp"
#include "../layers/residual.hpp"
#include "config.hpp"
#include "token_input.hpp"

namespace eigenformer {

template <class Scalar = float>
class EncoderLayer {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename Residual<Scalar>::Cache attn_block, ffn_block;
    typename Attention<Scalar>::Cache attn;
    typename Dropout<Scalar>::Cache attn_drop, ffn_drop;
    typename FeedForward<Scalar>::Cache ffn;
  };

  Attention<Scalar> self_attn;
  FeedForward<Scalar> ffn;
  Residual<Scalar> attn_block, ffn_block;  // hold norm1 and norm2
  Dropout<Scalar> attn_drop, ffn_drop;

  EncoderLayer() = default;
  /// Self-attention (with c's positions), feed-forward, two residual blocks and their dropouts,
  /// drawing weights and dropout seeds from rng. Throws ArgumentError naming
  /// EncoderLayer::EncoderLayer and the field unless c is valid (LayerConfig::validate).
  EncoderLayer(const LayerConfig& c, Rng& rng)
      : self_attn(c.checked("EncoderLayer::EncoderLayer").d_model, c.n_heads, rng,
                  c.attention_options(/*self=*/true)),
        ffn(c.d_model, c.d_ff, c.activation, Scalar(c.dropout), rng),
        attn_block(c.d_model, c.norm, Scalar(c.eps)),
        ffn_block(c.d_model, c.norm, Scalar(c.eps)),
        attn_drop(Scalar(c.dropout), rng.split()),
        ffn_drop(Scalar(c.dropout), rng.split()) {}

  /// x (B*T, d) -> (B*T, d), a buffer of cache valid until its next forward (x must not be it).
  /// mask is the self-attention's (key padding; causal for a GPT block). Fills cache for backward;
  /// in training mode draws new dropout masks. Throws ArgumentError from the sub-layers
  /// (Attention::forward, Residual::forward) for a B, x or mask that does not fit.
  const Mat& forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask, Cache& cache);

  /// dy (B*T, d) -> dx (B*T, d), a buffer of this layer valid until its next backward; parameter
  /// gradients added. cache comes from forward. Throws ArgumentError from the sub-layers for a dy
  /// or cache that does not fit.
  const Mat& backward(ConstRef<Scalar> dy, const Cache& cache);

  /// Incremental decoding with causal self-attention (the decoder-only model's block), inference
  /// only: x_new (B*t, d), the next t positions, attends over cache (which it extends) and
  /// returns (B*t, d). new_key_padding (B, t) marks padded new positions (empty: none).
  /// Throws as Attention::forward_step, with cache unchanged.
  Mat decode_step(ConstRef<Scalar> x_new, Index B, KVCache<Scalar>& cache,
                  const BoolMatrix& new_key_padding = BoolMatrix()) const;

  /// Dropout on (training) or off in every sub-layer.
  void train(bool on) {
    ffn.train(on);
    attn_drop.training = on;
    ffn_drop.training = on;
  }

  /// Names follow PyTorch's nn.TransformerEncoderLayer where it has the same piece.
  ParamList<Scalar> parameters();

  /// Sets every parameter gradient to zero: once per step, as backward adds into them.
  void zero_grad() { eigenformer::zero_grad(parameters()); }
};

template <class Scalar>
auto EncoderLayer<Scalar>::forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask,
                                   Cache& cache) -> const Mat& {
  // Each sub-layer's output is a buffer of its cache, dropped out in place.
  const Mat& h = attn_block.forward(x, cache.attn_block, [&](ConstRef<Scalar> in) -> const Mat& {
    Mat& a = self_attn.forward(in, B, mask, cache.attn);
    attn_drop.forward_in_place(a, cache.attn_drop);
    return a;
  });
  return ffn_block.forward(h, cache.ffn_block, [&](ConstRef<Scalar> in) -> const Mat& {
    Mat& f = ffn.forward(in, cache.ffn);
    ffn_drop.forward_in_place(f, cache.ffn_drop);
    return f;
  });
}

template <class Scalar>
auto EncoderLayer<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache) -> const Mat& {
  detail::require_filled_cache("EncoderLayer::backward", cache.attn.dims.B > 0);
  // d is the residual block's own copy of the gradient: dropout's backward runs in place on it.
  const Mat& dh = ffn_block.backward(dy, cache.ffn_block, [&](Mat& d) -> const Mat& {
    ffn_drop.backward_in_place(d, cache.ffn_drop);
    return ffn.backward(d, cache.ffn);
  });
  return attn_block.backward(dh, cache.attn_block, [&](Mat& d) -> const Mat& {
    attn_drop.backward_in_place(d, cache.attn_drop);
    return self_attn.backward(d, cache.attn);
  });
}

template <class Scalar>
auto EncoderLayer<Scalar>::decode_step(ConstRef<Scalar> x_new, Index B, KVCache<Scalar>& cache,
                                       const BoolMatrix& new_key_padding) const -> Mat {
  const Mat h = attn_block.forward(x_new, [&](ConstRef<Scalar> in) {
    return self_attn.forward_step(in, B, cache, new_key_padding);
  });
  return ffn_block.forward(h, [&](ConstRef<Scalar> in) { return ffn.forward(in); });
}

template <class Scalar>
auto EncoderLayer<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  append_params(out, "self_attn", self_attn.parameters());
  for (const auto& p : ffn.parameters()) out.push_back(p);  // linear1.*, linear2.*
  append_params(out, "norm1", attn_block.norm.parameters());
  append_params(out, "norm2", ffn_block.norm.parameters());
  return out;
}

/// N encoder layers with a final LayerNorm when the layers are pre-norm (their output is not
/// normalised otherwise). Used by the encoder and the decoder-only model.
template <class Scalar = float>
class EncoderStack {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    std::vector<typename EncoderLayer<Scalar>::Cache> layers;
    typename LayerNorm<Scalar>::Cache final_norm;
    Mat out;  // (B*T, d) the output of a post-norm stack without layers (its input)
  };

  std::vector<EncoderLayer<Scalar>> layers;
  LayerNorm<Scalar> final_norm;  // empty for post-norm

  EncoderStack() = default;
  /// n_layers layers from c, drawn from rng in order, and a final LayerNorm when c.norm is pre
  /// (no layers for n_layers <= 0). Throws ArgumentError naming EncoderLayer::EncoderLayer and
  /// the field unless c is valid (checked by the layers, so only when n_layers > 0).
  EncoderStack(const LayerConfig& c, Index n_layers, Rng& rng);

  /// x (B*T, d) -> (B*T, d) through every layer with the same mask, then the final norm
  /// (pre-norm); fills cache. The result is a buffer of cache, valid until its next forward (x
  /// must not be it). Throws as EncoderLayer::forward.
  const Mat& forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask, Cache& cache);

  /// dy (B*T, d) -> dx (B*T, d), a buffer of the stack valid until its next backward; parameter
  /// gradients added. cache comes from forward. ready, when set, gets the final norm's
  /// parameters, then each layer's, last to first.
  const Mat& backward(ConstRef<Scalar> dy, const Cache& cache,
                      const GradReady<Scalar>& ready = nullptr);

  /// Empty self-attention caches for B sequences of up to max_len positions, one per layer.
  /// Throws ArgumentError unless B and max_len are positive (when there is a layer).
  std::vector<KVCache<Scalar>> make_caches(Index B, Index max_len) const;

  /// Incremental causal forward, inference only: x_new (B*t, d) -> (B*t, d), extending caches
  /// (one per layer, from make_caches). new_key_padding (B, t): padded new positions, or empty.
  /// Throws ArgumentError unless caches has one entry per layer, and as EncoderLayer::decode_step.
  Mat decode_step(ConstRef<Scalar> x_new, Index B, std::vector<KVCache<Scalar>>& caches,
                  const BoolMatrix& new_key_padding = BoolMatrix()) const;

  /// Dropout on (training) or off in every layer.
  void train(bool on) {
    for (auto& l : layers) l.train(on);
  }

  /// "layers.<i>.*" per layer, then "norm.*" (pre-norm only): pointers into this stack.
  ParamList<Scalar> parameters();

 private:
  bool pre_norm_ = false;
  struct BackwardBuffers {
    Mat dx;  // (B*T, d) the gradient of a post-norm stack without layers
  };
  detail::Scratch<BackwardBuffers> scratch_;
};

template <class Scalar>
EncoderStack<Scalar>::EncoderStack(const LayerConfig& c, Index n_layers, Rng& rng)
    : pre_norm_(c.norm == NormPlacement::pre) {
  for (Index i = 0; i < n_layers; ++i) layers.emplace_back(c, rng);
  if (pre_norm_) final_norm = LayerNorm<Scalar>(c.d_model, Scalar(c.eps));
}

template <class Scalar>
auto EncoderStack<Scalar>::forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask,
                                   Cache& cache) -> const Mat& {
  cache.layers.resize(layers.size());
  // h: the last output, a buffer of the cache (null: x itself).
  const Mat* h = nullptr;
  for (size_t i = 0; i < layers.size(); ++i)
    h = &layers[i].forward(h ? ConstRef<Scalar>(*h) : x, B, mask, cache.layers[i]);
  if (pre_norm_) return final_norm.forward(h ? ConstRef<Scalar>(*h) : x, cache.final_norm);
  if (h) return *h;
  cache.out = x;
  return cache.out;
}

template <class Scalar>
auto EncoderStack<Scalar>::backward(ConstRef<Scalar> dy, const Cache& cache,
                                    const GradReady<Scalar>& ready) -> const Mat& {
  detail::require_filled_cache("EncoderStack::backward", cache.layers.size() == layers.size());
  // d: the last gradient, a buffer of a layer (null: dy itself).
  const Mat* d = pre_norm_ ? &final_norm.backward(dy, cache.final_norm) : nullptr;
  if (ready && pre_norm_) ready(final_norm.parameters());
  for (size_t i = layers.size(); i-- > 0;) {
    d = &layers[i].backward(d ? ConstRef<Scalar>(*d) : dy, cache.layers[i]);
    if (ready) ready(layers[i].parameters());
  }
  if (d) return *d;
  scratch_.buffers.dx = dy;
  return scratch_.buffers.dx;
}

template <class Scalar>
auto EncoderStack<Scalar>::make_caches(Index B, Index max_len) const
    -> std::vector<KVCache<Scalar>> {
  std::vector<KVCache<Scalar>> caches;
  for (const auto& l : layers) caches.push_back(l.self_attn.make_cache(B, max_len));
  return caches;
}

template <class Scalar>
auto EncoderStack<Scalar>::decode_step(ConstRef<Scalar> x_new, Index B,
                                       std::vector<KVCache<Scalar>>& caches,
                                       const BoolMatrix& new_key_padding) const -> Mat {
  detail::require(caches.size() == layers.size(), "EncoderStack::decode_step", "caches", [&] {
    return "has " + std::to_string(caches.size()) + " entries, expected one per layer (" +
           std::to_string(layers.size()) + ")";
  });
  Mat h = x_new;
  for (size_t i = 0; i < layers.size(); ++i)
    h = layers[i].decode_step(h, B, caches[i], new_key_padding);
  if (pre_norm_) h = final_norm.forward(h);
  return h;
}

template <class Scalar>
auto EncoderStack<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out;
  for (size_t i = 0; i < layers.size(); ++i)
    append_params(out, "layers." + std::to_string(i), layers[i].parameters());
  if (pre_norm_) append_params(out, "norm", final_norm.parameters());
  return out;
}

/// Token input + encoder stack: source ids (B, S) -> memory (B*S, d_model). Padded source
/// positions (id == pad_id) are masked as keys.
template <class Scalar = float>
class Encoder {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename TokenInput<Scalar>::Cache input;
    typename EncoderStack<Scalar>::Cache stack;
  };

  TokenInput<Scalar> input;
  EncoderStack<Scalar> stack;

  Encoder() = default;
  /// Token input over vocab ids and n_layers bidirectional layers, from c and rng. Throws
  /// ArgumentError from the parts for a setting out of range (TransformerConfig::validate checks
  /// them all at once).
  Encoder(Index vocab, Index n_layers, const TransformerConfig& c, Rng& rng)
      : input(vocab, c, rng), stack(c.layer(/*causal=*/false), n_layers, rng) {}

  /// mask: usually key_padding_mask(ids, pad_id).
  /// ids (B, S) -> memory (B*S, d_model), a buffer of cache valid until its next forward; fills
  /// cache. Throws ArgumentError for an id outside [0, vocab), an S beyond max_len or a mask that
  /// does not fit.
  const Mat& forward(const IdMatrix& ids, const AttentionMask& mask, Cache& cache);

  /// dmemory (B*S, d_model): adds every parameter's gradient (ids have none). cache comes from
  /// forward. ready, when set, gets each part's parameters when their gradients are final (the
  /// stack's as EncoderStack::backward, then the token input's).
  void backward(ConstRef<Scalar> dmemory, const Cache& cache,
                const GradReady<Scalar>& ready = nullptr) {
    detail::require_filled_cache("Encoder::backward", cache.input.ids.size() != 0);
    input.backward(stack.backward(dmemory, cache.stack, ready), cache.input);
    if (ready) ready(input.parameters());
  }

  /// Dropout on (training) or off in the input and every layer.
  void train(bool on) {
    input.train(on);
    stack.train(on);
  }

  /// The token input's ("embedding.weight", "position.weight" when learned), then the stack's.
  ParamList<Scalar> parameters();
};

template <class Scalar>
auto Encoder<Scalar>::forward(const IdMatrix& ids, const AttentionMask& mask, Cache& cache)
    -> const Mat& {
  return stack.forward(input.forward(ids, cache.input), ids.rows(), mask, cache.stack);
}

template <class Scalar>
auto Encoder<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out = input.parameters();
  for (const auto& p : stack.parameters()) out.push_back(p);
  return out;
}

/// (B, T) true where ids == pad_id: the key padding mask of a padded batch (empty if pad_id < 0).
inline BoolMatrix key_padding_mask(const IdMatrix& ids, Index pad_id) {
  if (pad_id < 0) return BoolMatrix();
  return (ids.array() == pad_id).matrix();
}

/// Throws ArgumentError naming func unless custom is null or fits d, the attention's sizes with
/// its heads (ops/attention.hpp's shapes).
inline void check_model_mask(std::string_view func, const AttentionMask* custom,
                             const AttentionDims& d) {
  if (custom) detail::check_mask(func, *custom, d);
}

/// The mask of one attention of a model, written into out: the model's own (causal as
/// default_causal, key padding pad (B, Tk) or empty) without a custom mask (null); else *custom
/// (its causal flag replacing the default) with pad or-ed into its key padding. custom must have
/// passed check_model_mask. out's buffers are reused when it held masks of the same shapes (a
/// model keeps it in its cache, so that a per-head bias is not allocated every step).
inline void model_mask(AttentionMask& out, const AttentionMask* custom, bool default_causal,
                       const BoolMatrix& pad) {
  if (custom) {
    out = *custom;
  } else {
    out.causal = default_causal;
    out.key_padding.resize(0, 0);
    out.attn_mask.resize(0, 0);
    out.attn_bias.resize(0, 0);
  }
  if (out.key_padding.size() == 0)
    out.key_padding = pad;
  else if (pad.size() != 0)
    out.key_padding = (out.key_padding.array() || pad.array()).matrix();
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(EncoderLayer)
EIGENFORMER_CLASS_TEMPLATES(EncoderStack)
EIGENFORMER_CLASS_TEMPLATES(Encoder)

}  // namespace eigenformer
