// Configuration of the models: one struct each for a layer and for a whole model.
#pragma once

#include <string>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../layers/activation.hpp"
#include "../layers/positional.hpp"
#include "../layers/residual.hpp"

namespace eigenformer {

/// What an encoder or decoder layer needs.
struct LayerConfig {
  Index d_model = 512;
  Index n_heads = 8;
  Index d_ff = 2048;
  double dropout = 0.1;  // on each sub-layer's output and inside the feed-forward block
  Activation activation = Activation::relu;
  NormPlacement norm = NormPlacement::post;  // post: the paper's LN(x + f(x)); pre: x + f(LN(x))
  double eps = 1e-5;                         // LayerNorm epsilon

  void validate(const std::string& func) const {
    detail::check_positive(func, "config.d_model", d_model);
    detail::check_positive(func, "config.n_heads", n_heads);
    detail::check_positive(func, "config.d_ff", d_ff);
    detail::require(d_model % n_heads == 0, func, "config.n_heads",
                    "must divide d_model: d_model " + std::to_string(d_model) + ", n_heads " +
                        std::to_string(n_heads));
    detail::require(dropout >= 0.0 && dropout < 1.0, func, "config.dropout",
                    "must be in [0, 1), got " + std::to_string(dropout));
    detail::require(eps > 0.0, func, "config.eps", "must be positive");
  }

  /// validate(func), then *this: for constructors' member-initialiser lists.
  const LayerConfig& checked(const std::string& func) const {
    validate(func);
    return *this;
  }
};

/// A whole model. The encoder-decoder uses every field; a decoder-only or encoder-only model uses
/// vocab (src_vocab is ignored) and the layer count of its one stack.
struct TransformerConfig {
  Index src_vocab = 0;
  Index tgt_vocab = 0;  // also the vocabulary of the decoder-only and encoder-only models
  Index d_model = 512;
  Index n_heads = 8;
  Index n_encoder_layers = 6;
  Index n_decoder_layers = 6;
  Index d_ff = 2048;
  double dropout = 0.1;
  Activation activation = Activation::relu;
  NormPlacement norm = NormPlacement::post;
  PositionalKind positional = PositionalKind::sinusoidal;
  Index max_len = 512;            // longest sequence the positional encoding covers
  bool scale_embeddings = true;   // multiply embeddings by sqrt(d_model), as in the paper
  bool tie_output = false;        // the output projection shares the target embedding matrix
  Index pad_id = 0;               // padded positions (masked, no embedding gradient); -1: none
  double eps = 1e-5;

  LayerConfig layer() const {
    LayerConfig c;
    c.d_model = d_model;
    c.n_heads = n_heads;
    c.d_ff = d_ff;
    c.dropout = dropout;
    c.activation = activation;
    c.norm = norm;
    c.eps = eps;
    return c;
  }

  void validate(const std::string& func, bool needs_source) const {
    layer().validate(func);
    if (needs_source) detail::check_positive(func, "config.src_vocab", src_vocab);
    detail::check_positive(func, "config.tgt_vocab", tgt_vocab);
    detail::check_positive(func, "config.max_len", max_len);
    detail::require(n_encoder_layers >= 0 && n_decoder_layers >= 0, func, "config.n_*_layers",
                    "must not be negative");
    detail::require(pad_id >= -1 && pad_id < tgt_vocab && (!needs_source || pad_id < src_vocab),
                    func, "config.pad_id", "must be -1 or a valid id, got " +
                                               std::to_string(pad_id));
  }
};

}  // namespace eigenformer
