// Configuration of the models: one struct each for a layer and for a whole model.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../layers/activation.hpp"
#include "../layers/attention.hpp"
#include "../layers/attention_positions.hpp"
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
  AttentionScoring attention = AttentionScoring::dot_product;  // of every attention sub-layer
  Index additive_dim = 0;  // the additive score network's width d_attn; 0: head_dim
  /// Positions inside the self-attention (rotary or relative); kind none when the model adds
  /// absolute encodings to its input instead. Cross-attention never has any.
  AttentionPositions positions;

  /// Throws ArgumentError naming func and the field unless every field is in range; names: what
  /// the messages call the position settings.
  void validate(std::string_view func,
                const PositionArgNames& names = layer_position_names()) const {
    detail::check_positive(func, "config.d_model", d_model);
    detail::check_positive(func, "config.n_heads", n_heads);
    detail::check_positive(func, "config.d_ff", d_ff);
    detail::require(d_model % n_heads == 0, func, "config.n_heads", [&] {
      return "must divide d_model: d_model " + std::to_string(d_model) + ", n_heads " +
             std::to_string(n_heads);
    });
    detail::require(
        attention == AttentionScoring::dot_product || attention == AttentionScoring::additive, func,
        "config.attention", [&] {
          return "is " + std::to_string(static_cast<int>(attention)) + ", not an AttentionScoring";
        });
    detail::require(additive_dim >= 0, func, "config.additive_dim", [&] {
      return "must be >= 0 (0: head_dim), got " + std::to_string(additive_dim);
    });
    positions.validate(func, d_model / n_heads, names);
    detail::require(dropout >= 0.0 && dropout < 1.0, func, "config.dropout",
                    [&] { return "must be in [0, 1), got " + std::to_string(dropout); });
    detail::require(eps > 0.0, func, "config.eps", "must be positive");
  }

  /// validate(func), then *this: for constructors' member-initialiser lists.
  const LayerConfig& checked(std::string_view func) const {
    validate(func);
    return *this;
  }

  /// The options of the layer's self-attention (with its positions) or cross-attention (none).
  AttentionOptions attention_options(bool self) const {
    AttentionOptions o;
    o.scoring = attention;
    o.additive_dim = additive_dim;
    if (self) o.positions = positions;
    return o;
  }

  /// What validate calls the position settings by default: "config.positions.kind" and so on.
  static PositionArgNames layer_position_names() {
    return {"config.positions.kind", "config.positions.rotary_base", "config.positions.num_buckets",
            "config.positions.max_distance"};
  }
};

/// A whole model. The encoder-decoder (Transformer) takes its vocabularies and depths from
/// src_vocab / tgt_vocab and n_encoder_layers / n_decoder_layers; a decoder-only or encoder-only
/// model (DecoderOnlyLM, EncoderOnlyModel) from vocab and n_layers. Each model checks only the
/// fields it uses and names them when one is missing. The other defaults are the paper's base
/// model (width 512, 8 heads, d_ff 2048, dropout 0.1).
struct TransformerConfig {
  Index src_vocab = 0;  // encoder-decoder: source vocabulary
  Index tgt_vocab = 0;  // encoder-decoder: target vocabulary
  Index vocab = 0;      // decoder-only and encoder-only models: the vocabulary
  Index d_model = 512;
  Index n_heads = 8;
  Index n_encoder_layers = 6;  // encoder-decoder
  Index n_decoder_layers = 6;  // encoder-decoder
  Index n_layers = 6;          // decoder-only and encoder-only models: the depth
  Index d_ff = 2048;
  double dropout = 0.1;
  Activation activation = Activation::relu;
  NormPlacement norm = NormPlacement::post;
  /// sinusoidal and learned add an encoding to the embeddings; relative (T5's bucketed bias) and
  /// rotary (RoPE) act inside every self-attention layer instead (layers/attention_positions.hpp);
  /// none gives no positional signal at all.
  PositionalKind positional = PositionalKind::sinusoidal;
  Index max_len = 512;            // longest sequence (the positional table's length)
  bool scale_embeddings = true;   // multiply embeddings by sqrt(d_model), as in the paper
  bool tie_output = false;        // the output projection shares the target embedding matrix
  /// The id of padding: masked as a key, no embedding gradient. -1 (the default): no id is
  /// padding, so every id is an ordinary token unless you choose one.
  Index pad_id = -1;
  double eps = 1e-5;
  AttentionScoring attention = AttentionScoring::dot_product;  // scaled dot-product or additive
  Index additive_dim = 0;              // additive attention's score width d_attn; 0: head_dim
  Index relative_buckets = 32;         // relative: T5's buckets (half per direction in
                                       // bidirectional stacks); every self-attention layer
                                       // has its own table, where T5 shares one per stack
  Index relative_max_distance = 128;   // relative: distances beyond share the last bucket
  double rotary_base = 10000.0;        // rotary: RoPE's theta
  /// Token types (BERT's segment ids): a (type_vocab, d_model) table added to the input
  /// embeddings, type 0 unless the forward is given types. 0 (the default): no table.
  Index type_vocab = 0;
  /// A LayerNorm (eps) on the summed input embeddings, before dropout, as BERT has.
  bool input_norm = false;

  /// The layers' config. causal: the stack's self-attention is causal (decoders, decoder-only
  /// models), which T5's relative buckets distinguish (bidirectional = !causal).
  LayerConfig layer(bool causal = false) const {
    LayerConfig c;
    c.d_model = d_model;
    c.n_heads = n_heads;
    c.d_ff = d_ff;
    c.dropout = dropout;
    c.activation = activation;
    c.norm = norm;
    c.eps = eps;
    c.attention = attention;
    c.additive_dim = additive_dim;
    c.positions.kind = acts_in_attention(positional) ? positional : PositionalKind::none;
    c.positions.rotary_base = rotary_base;
    c.positions.num_buckets = relative_buckets;
    c.positions.max_distance = relative_max_distance;
    c.positions.bidirectional = !causal;
    return c;
  }

  /// True when positions act inside the self-attention rather than at the input.
  bool attention_positions() const { return acts_in_attention(positional); }

  /// Throws ArgumentError naming func and the field unless every field the model uses is in range:
  /// src_vocab, tgt_vocab and the two depths for an encoder-decoder (encoder_decoder), vocab and
  /// n_layers for a single-stack model. The relative rules are checked for a bidirectional and a
  /// causal stack alike, so every model accepts a config that one accepts.
  void validate(std::string_view func, bool encoder_decoder) const {
    detail::require(
        positional == PositionalKind::none || positional == PositionalKind::sinusoidal ||
            positional == PositionalKind::learned || positional == PositionalKind::relative ||
            positional == PositionalKind::rotary,
        func, "config.positional", [&] {
          return "is " + std::to_string(static_cast<int>(positional)) + ", not a PositionalKind";
        });
    const PositionArgNames names{"config.positional", "config.rotary_base",
                                 "config.relative_buckets", "config.relative_max_distance"};
    layer(false).validate(func, names);
    layer(true).validate(func, names);
    detail::check_positive(func, "config.max_len", max_len);
    detail::require(type_vocab >= 0, func, "config.type_vocab", [&] {
      return "must be >= 0 (0: no token types), got " + std::to_string(type_vocab);
    });
    if (encoder_decoder) {
      detail::check_positive(func, "config.src_vocab", src_vocab);
      detail::check_positive(func, "config.tgt_vocab", tgt_vocab);
      detail::require(n_encoder_layers >= 0 && n_decoder_layers >= 0, func, "config.n_*_layers",
                      "must not be negative");
    } else {
      detail::require(vocab > 0, func, "config.vocab", [&] {
        return "must be positive, got " + std::to_string(vocab) +
               " (decoder-only and encoder-only models take their vocabulary from vocab and "
               "their depth from n_layers; src_vocab, tgt_vocab and n_*_layers are the "
               "encoder-decoder's)";
      });
      detail::require(n_layers >= 0, func, "config.n_layers", "must not be negative");
    }
    const Index smallest_vocab = encoder_decoder ? std::min(src_vocab, tgt_vocab) : vocab;
    detail::require(pad_id >= -1 && pad_id < smallest_vocab, func, "config.pad_id",
                    [&] { return "must be -1 or a valid id, got " + std::to_string(pad_id); });
  }
};

}  // namespace eigenformer
