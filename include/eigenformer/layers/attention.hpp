// The attention sub-layer of the models, with its scoring chosen at run time:
//   dot_product  MultiHeadAttention, scaled dot-product scores (the paper's)
//   additive     AdditiveAttention, Bahdanau's score network per head
// Attention<Scalar> holds one of the two and forwards every call (forward, backward, incremental
// decoding, parameters) to it. A runtime choice rather than a template parameter of the encoder
// and decoder layers: every model type is compiled once, whatever the scoring.
//
// Both layers share one Cache type (AdditiveAttention's, which extends MultiHeadAttention's), so
// code that reads a cache's dims and probs works for either, and parameter names are the chosen
// layer's own: a dot-product model's checkpoints keep the names PyTorch's nn.MultiheadAttention
// maps to (q_proj.*, k_proj.*, v_proj.*, out_proj.*).
#pragma once

#include <string>

#include "../core/error.hpp"
#include "../decode/kv_cache.hpp"
#include "additive_attention.hpp"
#include "multihead_attention.hpp"

namespace eigenformer {

enum class AttentionScoring { dot_product, additive };

/// "dot" or "additive": the name parse_attention_scoring accepts and checkpoints store.
inline std::string attention_scoring_name(AttentionScoring scoring) {
  switch (scoring) {
    case AttentionScoring::dot_product: return "dot";
    case AttentionScoring::additive: return "additive";
  }
  detail::throw_argument("attention_scoring_name", "scoring",
                         "is " + std::to_string(static_cast<int>(scoring)) +
                             ", not an AttentionScoring");
}

/// The same as attention_scoring_name (the overload set of the other config enums).
inline std::string to_string(AttentionScoring scoring) { return attention_scoring_name(scoring); }

/// "dot" or "additive"; anything else throws ArgumentError.
inline AttentionScoring parse_attention_scoring(const std::string& name) {
  if (name == "dot") return AttentionScoring::dot_product;
  if (name == "additive") return AttentionScoring::additive;
  detail::throw_argument("parse_attention_scoring", "name",
                         "is '" + name + "', expected 'dot' or 'additive'");
}

template <class Scalar = float>
class Attention {
 public:
  using Mat = Matrix<Scalar>;
  /// MultiHeadAttention's cache plus the additive score projections (empty for dot_product).
  using Cache = typename AdditiveAttention<Scalar>::Cache;

  MultiHeadAttention<Scalar> dot;      // the layer when scoring() == dot_product, else empty
  AdditiveAttention<Scalar> additive;  // the layer when scoring() == additive, else empty

  Attention() = default;

  /// H heads over d_model features, each layer initialised by its own constructor (a dot-product
  /// Attention draws exactly what MultiHeadAttention(d_model, n_heads, rng, true, positions)
  /// draws). d_attn: the additive score network's width, 0 for head_dim; unused by dot_product.
  Attention(Index d_model, Index n_heads, Rng& rng,
            AttentionScoring scoring = AttentionScoring::dot_product, Index d_attn = 0,
            const AttentionPositions& positions = {})
      : scoring_(scoring) {
    const char* func = "Attention::Attention";
    detail::require(
        scoring == AttentionScoring::dot_product || scoring == AttentionScoring::additive, func,
        "scoring", [&] {
          return "is " + std::to_string(static_cast<int>(scoring)) + ", not an AttentionScoring";
        });
    detail::require(d_attn >= 0, func, "d_attn",
                    [&] { return "must be >= 0 (0: head_dim), got " + std::to_string(d_attn); });
    if (scoring == AttentionScoring::dot_product) {
      dot = MultiHeadAttention<Scalar>(d_model, n_heads, rng, true, positions);
    } else {
      detail::check_positive(func, "n_heads", n_heads);
      additive = AdditiveAttention<Scalar>(d_model, d_attn > 0 ? d_attn : d_model / n_heads,
                                           n_heads, rng, true, positions);
    }
  }

  AttentionScoring scoring() const { return scoring_; }
  Index d_model() const { return is_dot() ? dot.d_model() : additive.d_model(); }
  Index n_heads() const { return is_dot() ? dot.n_heads() : additive.n_heads(); }
  const AttentionPositions& positions() const {
    return is_dot() ? dot.positions() : additive.positions();
  }

  /// Self-attention over x (B*T, d); see MultiHeadAttention::forward.
  Mat forward(ConstRef<Scalar> x, Index B, const AttentionMask& mask, Cache& cache) const {
    return is_dot() ? dot.forward(x, B, mask, cache) : additive.forward(x, B, mask, cache);
  }

  /// Cross-attention: queries from query (B*Tq, d), keys and values from memory (B*Tk, d).
  Mat forward(ConstRef<Scalar> query, ConstRef<Scalar> memory, Index B, const AttentionMask& mask,
              Cache& cache) const {
    return is_dot() ? dot.forward(query, memory, B, mask, cache)
                    : additive.forward(query, memory, B, mask, cache);
  }

  /// See MultiHeadAttention::backward.
  Mat backward(ConstRef<Scalar> dy, const Cache& cache, Mat* dmemory = nullptr) {
    return is_dot() ? dot.backward(dy, cache, dmemory) : additive.backward(dy, cache, dmemory);
  }

  /// Attention weights of head h for sequence b from a forward's cache of either scoring: (Tq, Tk).
  static Mat attention_weights(const Cache& cache, Index b, Index h) {
    // An additive cache has probs and no lse, which MultiHeadAttention's reader handles.
    return MultiHeadAttention<Scalar>::attention_weights(cache, b, h);
  }

  // Incremental decoding (inference only), as MultiHeadAttention's; caches come from make_cache.

  /// An empty self-attention cache for B sequences of up to max_len positions.
  KVCache<Scalar> make_cache(Index B, Index max_len) const {
    return is_dot() ? KVCache<Scalar>(B, max_len, dot.d_model()) : additive.make_cache(B, max_len);
  }

  Mat forward_step(ConstRef<Scalar> x_new, Index B, KVCache<Scalar>& cache,
                   const BoolMatrix& new_key_padding = BoolMatrix()) const {
    return is_dot() ? dot.forward_step(x_new, B, cache, new_key_padding)
                    : additive.forward_step(x_new, B, cache, new_key_padding);
  }

  void cache_memory(ConstRef<Scalar> memory, Index B, const BoolMatrix& key_padding,
                    KVCache<Scalar>& cache) const {
    if (is_dot())
      dot.cache_memory(memory, B, key_padding, cache);
    else
      additive.cache_memory(memory, B, key_padding, cache);
  }

  Mat forward_cached_memory(ConstRef<Scalar> query, Index B, const KVCache<Scalar>& cache) const {
    return is_dot() ? dot.forward_cached_memory(query, B, cache)
                    : additive.forward_cached_memory(query, B, cache);
  }

  /// The chosen layer's parameters under its own names.
  ParamList<Scalar> parameters() { return is_dot() ? dot.parameters() : additive.parameters(); }

  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  AttentionScoring scoring_ = AttentionScoring::dot_product;

  bool is_dot() const { return scoring_ == AttentionScoring::dot_product; }
};

}  // namespace eigenformer
