// An EncoderOnlyModel with a task head, as one model: forward, backward, parameters(), train/eval,
// and save_model / load_model (io/checkpoint.hpp) keep the head with the encoder.
//  - EncoderClassifier (BERT's sequence classifier): ids (B, T) -> logits (B, n_classes)
//  - MaskedLM (BERT's masked-token pre-training): ids (B, T) -> logits (B*T, vocab)
// The encoder is built with a tied output projection, so that its own per-token head holds no
// parameters; the task head replaces it. To fine-tune a pre-trained encoder, copy its parts:
//   clf.encoder.input = mlm.encoder.input; clf.encoder.stack = mlm.encoder.stack;
// To compose a head of your own instead, use EncoderOnlyModel::hidden / backward_hidden with the
// heads of model/heads.hpp.
#pragma once

#include <string>

#include "../core/precompiled.hpp"
#include "heads.hpp"
#include "language_models.hpp"

namespace eigenformer {

namespace detail {

/// c with a tied output projection: the task models' encoder, whose own head is unused.
inline TransformerConfig encoder_body_config(const TransformerConfig& c) {
  TransformerConfig body = c;
  body.tie_output = true;
  return body;
}

}  // namespace detail

/// EncoderOnlyModel + ClassificationHead: ids (B, T) -> logits (B, n_classes).
template <class Scalar = float>
class EncoderClassifier {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename EncoderOnlyModel<Scalar>::Cache encoder;
    typename ClassificationHead<Scalar>::Cache head;
  };

  EncoderOnlyModel<Scalar> encoder;
  ClassificationHead<Scalar> head;

  EncoderClassifier() = default;
  /// An encoder from c (its tie_output ignored) and a head from h, weights drawn from rng.
  /// Throws ArgumentError naming EncoderOnlyModel::EncoderOnlyModel or
  /// ClassificationHead::ClassificationHead and the field unless c and h are valid.
  EncoderClassifier(const TransformerConfig& c, const ClassifierConfig& h, Rng& rng)
      : encoder(detail::encoder_body_config(c), rng), head(c.d_model, h, rng), config_(c) {}

  /// The configs the model was built with.
  const TransformerConfig& config() const { return config_; }
  const ClassifierConfig& head_config() const { return head.config(); }

  /// ids (B, T) -> logits (B, n_classes); mean pooling skips config().pad_id tokens. Fills cache;
  /// draws dropout masks in training mode. Throws ArgumentError as EncoderOnlyModel::forward.
  Mat forward(const IdMatrix& ids, Cache& cache);

  /// dlogits (B, n_classes): adds the gradient of every parameter, the encoder's included.
  /// Throws ArgumentError naming ClassificationHead::backward, changing nothing, for a dlogits
  /// that does not fit the cache.
  void backward(ConstRef<Scalar> dlogits, const Cache& cache) {
    encoder.backward_hidden(head.backward(dlogits, cache.head), cache.encoder);
  }

  /// Dropout on (training) or off (eval(): inference).
  void train(bool on = true) {
    encoder.train(on);
    head.train(on);
  }
  void eval() { train(false); }

  EIGENFORMER_REJECT_FOREIGN_IDS(forward)

  /// The encoder's ("embedding.weight", "layers.<i>.*", ...), then "pooler.dense.*" (with a
  /// pooler) and "classifier.*".
  ParamList<Scalar> parameters();

  /// Sets every parameter gradient to zero.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  TransformerConfig config_;
};

/// EncoderOnlyModel + MaskedLMHead: ids (B, T) -> logits (B*T, vocab). The projection is tied to
/// the token embedding when config().tie_output (as BERT's).
template <class Scalar = float>
class MaskedLM {
 public:
  using Mat = Matrix<Scalar>;
  struct Cache {
    typename EncoderOnlyModel<Scalar>::Cache encoder;
    typename MaskedLMHead<Scalar>::Cache head;
  };

  EncoderOnlyModel<Scalar> encoder;
  MaskedLMHead<Scalar> head;

  MaskedLM() = default;
  /// An encoder from c and BERT's head (transform per h, activation c.activation, LayerNorm
  /// epsilon c.eps, tied when c.tie_output), weights drawn from rng. Throws ArgumentError naming
  /// EncoderOnlyModel::EncoderOnlyModel and the field unless c is valid.
  MaskedLM(const TransformerConfig& c, const MaskedLMConfig& h, Rng& rng)
      : encoder(detail::encoder_body_config(c), rng),
        head(c.d_model, c.vocab, c.tie_output, h, c.activation, c.eps, rng),
        config_(c) {}
  /// MaskedLM(c, MaskedLMConfig{}, rng): with BERT's transform.
  MaskedLM(const TransformerConfig& c, Rng& rng) : MaskedLM(c, MaskedLMConfig{}, rng) {}

  /// The configs the model was built with.
  const TransformerConfig& config() const { return config_; }
  const MaskedLMConfig& head_config() const { return head.config(); }
  /// The vocabulary: the width of the logits.
  Index vocab_size() const { return config_.vocab; }

  /// ids (B, T) -> logits (B*T, vocab) at every position (the loss picks the masked ones, e.g.
  /// cross_entropy_forward with ignore_id). Fills cache. Throws as EncoderOnlyModel::forward.
  /// The logits are a buffer of cache, valid until its next forward.
  const Mat& forward(const IdMatrix& ids, Cache& cache) {
    const Mat& h = encoder.hidden(ids, cache.encoder);
    return head.forward(h, encoder.input.embedding, cache.head);
  }

  /// dlogits (B*T, vocab): adds the gradient of every parameter, the encoder's included.
  /// Throws ArgumentError naming MaskedLMHead::backward, changing nothing, for a dlogits that
  /// does not fit the cache.
  void backward(ConstRef<Scalar> dlogits, const Cache& cache) {
    encoder.backward_hidden(head.backward(dlogits, cache.head, encoder.input.embedding),
                            cache.encoder);
  }

  /// Dropout on (training) or off (eval(): inference).
  void train(bool on = true) { encoder.train(on); }
  void eval() { train(false); }

  EIGENFORMER_REJECT_FOREIGN_IDS(forward)

  /// The encoder's ("embedding.weight", "layers.<i>.*", ...), then "mlm.*" (MaskedLMHead's names).
  ParamList<Scalar> parameters() {
    ParamList<Scalar> out = encoder.parameters();
    append_params(out, "mlm", head.parameters());
    return out;
  }

  /// Sets every parameter gradient to zero.
  void zero_grad() { eigenformer::zero_grad(parameters()); }

 private:
  TransformerConfig config_;
};

template <class Scalar>
auto EncoderClassifier<Scalar>::forward(const IdMatrix& ids, Cache& cache) -> Mat {
  const Mat& h = encoder.hidden(ids, cache.encoder);
  return head.forward(h, ids.rows(), key_padding_mask(ids, config_.pad_id), cache.head);
}

template <class Scalar>
auto EncoderClassifier<Scalar>::parameters() -> ParamList<Scalar> {
  ParamList<Scalar> out = encoder.parameters();
  for (const auto& p : head.parameters()) out.push_back(p);
  return out;
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
EIGENFORMER_CLASS_TEMPLATES(EncoderClassifier)
EIGENFORMER_CLASS_TEMPLATES(MaskedLM)

}  // namespace eigenformer
